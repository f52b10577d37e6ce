"""The table and the figure of docs/shapesworld.md "Recaptioning", redrawn from the results file
that scripts/shapes_recaption.py writes.

    python scripts/shapes_recaption_report.py docs/results/shapesworld-recaption.json \\
        [--figure docs/shapes_recaption.png]

Prints the markdown table (per arm: each seed's overall score per bench style, their mean, and
dense prompts' entity / attribute / relation means), then the verdict: the recaptioned
connector's gain over alt-text on dense prompts against the seed-to-seed spread (the largest
difference between two seeds of one arm, over all arms).
"""

from __future__ import annotations

import argparse
import json
import statistics

NOISE = {"recap": 0.0, "recap-p0.1": 0.1, "recap-p0.3": 0.3}  # the captioner's error rate P of each arm


def scores(result: dict, arm: str, style: str, key: str = "overall") -> list[float]:
    return [seed[style][key] for seed in result["arms"][arm]["seeds"].values() if style in seed]


def spread(result: dict, style: str) -> float:
    """The largest difference between two seeds of one arm, over all arms."""
    return max((max(v) - min(v) for arm in result["arms"] if len(v := scores(result, arm, style)) > 1), default=0.0)


def table(result: dict, styles: list[str]) -> str:
    head = ["trained on"] + [f"{s} (per seed: mean)" for s in styles] + ["dense: entity / attribute / relation"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, info in result["arms"].items():
        cells = [f"`{arm}` ({info['captions']})"]
        for style in styles:
            v = scores(result, arm, style)
            cells.append(" / ".join(f"{x:.2f}" for x in v) + (f": **{statistics.fmean(v):.2f}**" if v else "-"))
        cells.append(" / ".join(f"{statistics.fmean(scores(result, arm, 'dense', k)):.1f}"
                                for k in ("entity", "attribute", "relation")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(result: dict, styles: list[str]) -> str:
    lines = []
    for style in styles:
        gain = statistics.fmean(scores(result, "recap", style)) - statistics.fmean(scores(result, "alt", style))
        s = spread(result, style)
        ratio = f"{gain / s:.1f}x the spread" if s else "no spread measured (one seed)"
        lines.append(f"{style}: recap - alt = {gain:+.2f} points; seed-to-seed spread {s:.2f}; {ratio}")
    return "\n".join(lines)


def figure(result: dict, styles: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(styles), figsize=(4 * len(styles), 3.6), sharey=True)
    for ax, style in zip([axes] if len(styles) == 1 else axes, styles):
        arms = [a for a in NOISE if a in result["arms"]]
        xs = [NOISE[a] for a in arms]
        ys = [scores(result, a, style) for a in arms]
        ax.errorbar(xs, [statistics.fmean(v) for v in ys], marker="o", capsize=4, label="recaptioned, error rate P",
                    yerr=[[statistics.fmean(v) - min(v) for v in ys], [max(v) - statistics.fmean(v) for v in ys]])
        for a, color in (("alt", "tab:red"), ("mix", "tab:green")):
            if a in result["arms"]:
                v = scores(result, a, style)
                ax.axhspan(min(v), max(v), color=color, alpha=0.2)
                ax.axhline(statistics.fmean(v), color=color, label={"alt": "alt-text", "mix": "95 % recap / 5 % alt"}[a])
        ax.set_title(f"{style} prompts")
        ax.set_xlabel("captioner error rate P")
        ax.grid(alpha=0.3)
    (axes if len(styles) == 1 else axes[0]).set_ylabel("ella bench shapes, overall (seeds: bar / band)")
    (axes if len(styles) == 1 else axes[0]).legend(fontsize=8)
    fig.suptitle(f"Recaptioning on ShapesWorld: {result['steps']} steps x 32, {result['prompts']} held-out prompts x 4",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="the JSON scripts/shapes_recaption.py wrote")
    parser.add_argument("--figure", default=None, help="write the figure to this PNG")
    args = parser.parse_args()
    with open(args.results) as f:
        result = json.load(f)
    styles = [s for s in ("dense", "brief", "relative") if any(scores(result, a, s) for a in result["arms"])]
    print(table(result, styles))
    print()
    print(verdict(result, styles))
    if args.figure:
        figure(result, styles, args.figure)


if __name__ == "__main__":
    main()

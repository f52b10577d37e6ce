"""The tables and the figure of docs/shapesworld.md "Recaptioning", redrawn from the results files
that scripts/shapes_recaption.py writes (one per training length).

    python scripts/shapes_recaption_report.py docs/results/shapesworld-recaption.json \\
        docs/results/shapesworld-recaption-3000.json [--figure docs/shapes_recaption.png] \\
        [--reference docs/results/shapesworld-bench50-dense.json:base]

For each file: the markdown table (per arm: each seed's overall score per bench style, their
mean, and dense prompts' entity / attribute / relation means), then the verdict: the recaptioned
connector's gain over alt-text against the seed-to-seed spread (the largest difference between
two seeds of one arm, over all arms), overall in each style and per category on dense prompts;
then each other recaptioned arm (the mix, the noisy captioners) against the exact recaptions.
The figure: each arm's score against training steps, one panel per style (points: the mean of the
seeds, bars: their range), with `--reference` models' scores on the same dense prompts as lines;
and the noise curve, dense score against the captioner's error rate P at each training length.
"""

from __future__ import annotations

import argparse
import json
import statistics

LABELS = {"alt": "alt-text", "recap": "recaptioned (P = 0)", "mix": "95 % recap / 5 % alt",
          "recap-p0.1": "recaptioned, P = 0.1", "recap-p0.3": "recaptioned, P = 0.3"}
COLORS = {"alt": "tab:red", "recap": "tab:blue", "mix": "tab:green", "recap-p0.1": "tab:purple",
          "recap-p0.3": "tab:gray"}


def scores(result: dict, arm: str, style: str, key: str = "overall") -> list[float]:
    return [seed[style][key] for seed in result["arms"].get(arm, {}).get("seeds", {}).values() if style in seed]


def spread(result: dict, style: str, key: str = "overall", arms=None) -> float:
    """The largest difference between two seeds of one arm, over `arms` (all by default)."""
    return max((max(v) - min(v) for arm in arms or result["arms"] if len(v := scores(result, arm, style, key)) > 1),
               default=0.0)


def table(result: dict, styles: list[str]) -> str:
    head = ["trained on"] + [f"{s} (per seed: mean)" for s in styles] + ["dense: entity / attribute / relation"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, info in sorted(result["arms"].items(), key=lambda item: list(LABELS).index(item[0])):
        cells = [f"`{arm}` ({info['captions']})"]
        for style in styles:
            v = scores(result, arm, style)
            cells.append(" / ".join(f"{x:.2f}" for x in v) + (f": **{statistics.fmean(v):.2f}**" if v else "-"))
        cells.append(" / ".join(f"{statistics.fmean(v):.1f}" if (v := scores(result, arm, "dense", k)) else "-"
                                for k in ("entity", "attribute", "relation")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versus(result: dict, style: str, arm: str, base: str, key: str = "overall") -> str:
    """`arm` - `base` on the seeds' means, against the spread (over all arms for the overall score;
    over the two arms' seeds for a category, where the other arms' are not the question)."""
    a, b = scores(result, arm, style, key), scores(result, base, style, key)
    if not (a and b):
        return f"{style} {key}: {arm} or {base} not benched"
    g = statistics.fmean(a) - statistics.fmean(b)
    s = spread(result, style, key, None if key == "overall" else (arm, base))
    ratio = f"{abs(g) / s:.1f}x the spread" if s else "no spread measured (one seed)"
    return f"{style} {key}: {arm} - {base} = {g:+.2f} points; seed-to-seed spread {s:.2f}; {ratio}"


def verdict(result: dict, styles: list[str]) -> str:
    """What recaptioning buys (recap against alt, per style and per dense category), then what the
    alt-text share and the captioner's mistakes cost (each other recaptioned arm against recap)."""
    lines = [versus(result, style, "recap", "alt") for style in styles]
    lines += [versus(result, "dense", "recap", "alt", key) for key in ("entity", "attribute", "relation")]
    lines += [versus(result, style, arm, "recap") for arm in LABELS if arm not in ("alt", "recap")
              for style in styles if scores(result, arm, style)]
    return "\n".join(lines)


def read(path: str) -> dict:
    """A JSON file, or the one-line reason it cannot be read (a missing or damaged file)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"cannot read {path}: {e}") from None


def reference(spec: str) -> tuple[str, float]:
    """`FILE:MODEL`: that model's overall score in an `ella bench shapes --json` output (or a file
    that keeps such outputs under "summaries")."""
    path, _, model = spec.rpartition(":")
    if not (path and model):
        raise SystemExit(f"--reference {spec}: give FILE:MODEL")
    summaries = read(path)
    summaries = summaries.get("summaries", summaries)
    if model not in summaries:
        raise SystemExit(f"{path} has no model {model!r}; it has {', '.join(summaries)}")
    return model, summaries[model]["overall"]


def seed_range(means: list[float], points: list[tuple]) -> list[list[float]]:
    """matplotlib's asymmetric error bars from each point's seeds (`points`: (x, the seeds' scores)):
    below and above the mean to the lowest and the highest seed."""
    return [[m - min(v) for m, (_, v) in zip(means, points)], [max(v) - m for m, (_, v) in zip(means, points)]]


def figure(results: list[dict], styles: list[str], path: str, references: list[tuple[str, float]] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = sorted(results, key=lambda r: r["steps"])
    fig, axes = plt.subplots(1, len(styles) + 1, figsize=(4.2 * (len(styles) + 1), 4.4), sharey=True, squeeze=False)
    arms = [a for a in LABELS if any(a in r["arms"] for r in results)]
    for ax, style in zip(axes[0], styles):
        for i, arm in enumerate(arms):
            points = [(r["steps"], v) for r in results if (v := scores(r, arm, style))]
            xs = [s + 0.012 * results[-1]["steps"] * (i - len(arms) / 2) for s, _ in points]  # side by side, not on top
            means = [statistics.fmean(v) for _, v in points]
            ax.errorbar(xs, means, yerr=seed_range(means, points),
                        marker="o", capsize=3, color=COLORS[arm], label=LABELS[arm])
        for j, (model, score) in enumerate(references if style == "dense" else ()):
            ax.axhline(score, color="black", alpha=0.6, linestyle=("--", ":", "-.")[j % 3], linewidth=1,
                       label=f"{model} (reference)")
        ax.set_title(f"{style} prompts")
        ax.set_xlabel("training steps (x 32)")
        ax.set_xticks([r["steps"] for r in results])
        ax.grid(alpha=0.3)
    noise_curve(axes[0][-1], results)
    axes[0][0].set_ylabel("ella bench shapes, overall\n(mean of the seeds, bars: their range)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"Recaptioning on ShapesWorld: {results[-1]['prompts']} held-out prompts x 4 per style", fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 1))  # the legend below the panels, off the curves
    fig.savefig(path, dpi=110)


NOISE = {"recap": 0.0, "recap-p0.1": 0.1, "recap-p0.3": 0.3}  # the captioner's per-object error rate P


def noise_curve(ax, results: list[dict]) -> None:
    """Dense score against the captioner's error rate P, one line per training length (points: the
    mean of the seeds, bars: their range), alt-text's mean as that length's dashed line."""
    for i, result in enumerate(results):
        color = str(0.7 * (1 - i / max(len(results) - 1, 1)))  # grey to black as training goes on: not an arm's colour
        points = [(p, v) for arm, p in NOISE.items() if (v := scores(result, arm, "dense"))]
        if not points:
            continue
        means = [statistics.fmean(v) for _, v in points]
        ax.errorbar([p for p, _ in points], means, yerr=seed_range(means, points), marker="s", capsize=3, color=color,
                    label=f"{result['steps']} steps")
        if alt := scores(result, "alt", "dense"):
            ax.axhline(statistics.fmean(alt), color=color, linestyle="--", linewidth=1, alpha=0.7)
    ax.set_title("dense prompts: captioner errors\n(dashed: alt-text at that length)", fontsize=9)
    ax.set_xlabel("captioner's per-object error rate P")
    ax.set_xticks(list(NOISE.values()))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="the JSON files scripts/shapes_recaption.py wrote")
    parser.add_argument("--figure", default=None, help="write the figure to this PNG")
    parser.add_argument("--reference", action="append", default=[], metavar="FILE:MODEL",
                        help="a model's dense score from a bench output, a line on the dense panel (repeatable)")
    args = parser.parse_args()
    references = [reference(spec) for spec in args.reference]
    results = [read(path) for path in args.results]
    if bad := [path for path, r in zip(args.results, results) if not {"steps", "arms"} <= set(r)]:
        raise SystemExit(f"{', '.join(bad)}: not a results file of scripts/shapes_recaption.py (no steps or arms)")
    styles = [s for s in ("dense", "brief", "relative") if any(scores(r, a, s) for r in results for a in r["arms"])]
    for path, result in zip(args.results, results):
        print(f"## {path}: {result['steps']} steps\n")
        print(table(result, styles))
        print()
        print(verdict(result, styles))
        print()
    if args.figure:
        figure(results, styles, args.figure, references)


if __name__ == "__main__":
    main()

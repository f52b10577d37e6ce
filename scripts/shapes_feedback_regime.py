"""`ella feedback` in the regime feedback is for, measured per round and per style.

Runs `configs/shapes/ella-tsc-feedback-regime.yaml` once per method (DPO and SFT, both with the
strict judge), each benched after every round on one held-out CSV of N scenes in six styles:
dense, brief, relative, paraphrase, and the feedback lexicon's used and held-out words (the run
keeps the best round by the overall score over all of them). Then, per round: each style's
score and categories (re-scored from the round's answers), double drawing on the README prompt
(seeds 1001-1008), the round's stop reason and training CPU-minutes.

    python scripts/shapes_feedback_regime.py [--methods dpo,sft] [--scenes 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from shapes_double_drawing import FIRST, SECOND, count  # noqa: E402

from ella.bench.dpg import CSV_COLUMNS, load_csv  # noqa: E402
from ella.bench.runner import score_run  # noqa: E402
from ella.feedback import load_feedback_config, run_feedback  # noqa: E402
from ella.shapes.bench import write_questions  # noqa: E402
from ella.shapes.catalog import MAIN_PROMPT  # noqa: E402
from ella.shapes.data import HELDOUT_SEED, ShapesSceneDataset  # noqa: E402
from ella.shapes.judge import ShapesBackend  # noqa: E402

STYLES = ("dense", "brief", "relative", "paraphrase", "lexicon", "lexicon-heldout")


def write_bench_csv(scenes: int, path: str) -> str:
    """The held-out scenes in every style, items named STYLE.i, in one question CSV."""
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows = []
    for style in STYLES:
        part = f"{path}.{style}.csv"
        write_questions(ShapesSceneDataset(scenes, seed=HELDOUT_SEED, captions=style), f"{style}.", part)
        with open(part, newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
        os.remove(part)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def per_style(bench_csv: str, round_dir: str) -> dict:
    """{style: {overall, categories}} of one round's bench, re-scored per style from its images."""
    items, out = load_csv(bench_csv), {}
    for style in STYLES:
        subset = {i: item for i, item in items.items() if i.rsplit(".", 1)[0] == style}
        summary = score_run(subset, os.path.join(round_dir, "bench", "images"), ShapesBackend(),
                            os.path.join(round_dir, "bench", f"scores-{style}"))
        out[style] = {"overall": summary["overall"], **summary["l1"]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/shapes/ella-tsc-feedback-regime.yaml")
    parser.add_argument("--methods", default="dpo,sft")
    parser.add_argument("--scenes", type=int, default=20, help="held-out scenes per style (4 images each)")
    parser.add_argument("--prompts", type=int, default=None, help="feedback prompts (default: the config's)")
    parser.add_argument("--set", default="{}", help='more config overrides, as JSON: \'{"steps_per_round": 30}\'')
    parser.add_argument("--work", default="runs/feedback-regime")
    parser.add_argument("--out", default="docs/results/shapesworld-feedback-regime.json")
    args = parser.parse_args()
    bench_csv = write_bench_csv(args.scenes, os.path.join(args.work, "bench", "questions.csv"))
    result = {"command": "python scripts/shapes_feedback_regime.py " + " ".join(sys.argv[1:]),
              "config": args.config, "machine": "2-core development CPU, beside other runs",
              "bench": f"{args.scenes} held-out scenes x {len(STYLES)} styles x 4 images, seed 0", "methods": {}}
    for method in args.methods.split(","):
        overrides = {**json.loads(args.set), "method": method, "bench_csv": bench_csv,
                     "output_dir": os.path.join(args.work, method)}
        if args.prompts:
            overrides["prompts"] = f"shapes:{args.prompts}:lexicon+relative"
        config = load_feedback_config(args.config, overrides)
        rounds = run_feedback(config)
        for summary in rounds:
            if "connector" not in summary:
                continue
            summary["styles"] = per_style(bench_csv, os.path.join(config.output_dir, f"round-{summary['round']:02d}"))
            summary["double_drawing"] = count(summary["connector"], MAIN_PROMPT, FIRST, SECOND, 8)
            summary["connector"] = config.record(summary["connector"])
            summary.pop("connector_in", None)
            print(method, summary["round"], {s: round(v["overall"], 2) for s, v in summary["styles"].items()},
                  "relation (dense)", round(summary["styles"]["dense"].get("relation", float("nan")), 1),
                  "double drawing", summary["double_drawing"]["second's colour in more than one cell"], flush=True)
        result["methods"][method] = rounds
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

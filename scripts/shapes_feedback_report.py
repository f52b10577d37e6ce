"""`ella feedback` on ShapesWorld against its control, from the run folders, into one results file.

For every round of the feedback run (round 0 = the starting connector): the held-out bench
(`rounds.json`), the same 30 scenes as brief and relative prompts (`ella bench shapes`) and the
double-drawing count on the README's main prompt (`scripts/shapes_double_drawing.py`'s judge, 8
seeds). The control is `ella train` from the same
connector on the recipe's ground-truth renders, taken at the checkpoints whose CPU time is closest
to the feedback run's after each round (its process CPU time, all stages: `ps -o cputime`); it is
exported and benched on the same held-out prompts, seeds and settings.

    python scripts/shapes_feedback_report.py --feedback runs/feedback \
        --control runs/control --feedback-cpu-minutes 17.3 34.6 --out docs/results/shapesworld-feedback.json
"""

from __future__ import annotations

import argparse
import json
import os

from shapes_double_drawing import FIRST, SECOND, count

from ella.feedback import FrozenOnce, bench_round, load_feedback_config, round_train_config
from ella.shapes.bench import run_shapes_bench
from ella.shapes.catalog import MAIN_PROMPT
from ella.train.checkpoint import list_checkpoints, load_training_state


def export_checkpoint(run_dir: str, target_minutes: float) -> tuple[str, dict]:
    """Export the checkpoint of `run_dir` whose CPU time is closest to `target_minutes`. Exports
    made before (`exports/step-N/record.json`) count too: training keeps only its last checkpoints."""
    import yaml

    from ella import ELLA

    exports = os.path.join(run_dir, "exports")
    candidates = {}
    for path in list_checkpoints(run_dir):
        state = load_training_state(path)
        candidates[os.path.basename(path)] = (path, state, {"step": int(state["step"]),
                                                            "cpu_minutes": float(state["cpu_seconds"]) / 60})
    for name in os.listdir(exports) if os.path.isdir(exports) else ():
        record = os.path.join(exports, name, "record.json")  # written last: an export without it is redone
        if name not in candidates and os.path.isfile(record):
            with open(record, encoding="utf-8") as f:
                candidates[name] = (None, None, json.load(f))
    if not candidates:
        raise SystemExit(f"{run_dir}: no checkpoint")
    name, (path, state, record) = min(candidates.items(), key=lambda c: abs(c[1][2]["cpu_minutes"] - target_minutes))
    out = os.path.join(exports, name)
    if not os.path.isfile(os.path.join(out, "record.json")):
        with open(os.path.join(path, "config.yaml"), encoding="utf-8") as f:
            connector = ELLA.from_pretrained(yaml.safe_load(f)["init_connector"])
        connector.load_state_dict(state["ella"])
        connector.save_pretrained(out)
        with open(os.path.join(out, "record.json"), "w", encoding="utf-8") as f:
            json.dump(record, f)
    return out, dict(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes/ella-tsc-feedback.yaml")
    parser.add_argument("--feedback", default="runs/feedback", help="the feedback run's output_dir")
    parser.add_argument("--bench-csv", default="runs/heldout30/questions.csv")
    parser.add_argument("--control", default="runs/control", help="an ella train output folder")
    parser.add_argument("--feedback-cpu-minutes", type=float, nargs="+", required=True,
                        help="the feedback run's cumulative CPU time after each round (its process clock), to match"
                             " the control to")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--styles-dir", default="runs/feedback-styles",
                        help="where the brief and relative benches of every connector go (one folder per style)")
    parser.add_argument("--out", default="docs/results/shapesworld-feedback.json")
    args = parser.parse_args()

    config = load_feedback_config(args.config, {"output_dir": args.feedback, "bench_csv": args.bench_csv})
    with open(os.path.join(args.feedback, "rounds.json"), encoding="utf-8") as f:
        rounds = json.load(f)
    def other_styles(connector: str) -> dict:  # the same held-out scenes as brief and relative prompts
        styles = {}
        for style in ("brief", "relative"):
            summary = run_shapes_bench(30, [connector], f"{args.styles_dir}-{style}", captions=style)[connector]
            styles[style] = {"overall": summary["overall"], **summary["l1"]}
        return styles

    for summary in rounds:
        summary["connector"] = config.path(summary["connector"])  # rounds.json: relative to the run
        summary["double_drawing"] = count(summary["connector"], MAIN_PROMPT, FIRST, SECOND, args.seeds)
        summary["styles"] = other_styles(summary["connector"])
    controls = []
    for minutes in args.feedback_cpu_minutes:  # one control per round, at that round's cumulative CPU time
        control, record = export_checkpoint(args.control, minutes)
        frozen = FrozenOnce(round_train_config(config, args.control, control))
        bench = os.path.join(args.control, "bench", os.path.basename(control))
        record.update(feedback_cpu_minutes=minutes, connector=control, bench=bench_round(config, frozen, control, bench),
                      double_drawing=count(control, MAIN_PROMPT, FIRST, SECOND, args.seeds), styles=other_styles(control))
        controls.append(record)
    result = {"what": f"ella feedback {args.config} --output_dir {args.feedback} --bench_csv HELDOUT (the first 30"
                      " held-out dense prompts, 4 images each, seed 0)",
              "machine": "2-core development CPU, beside other runs (one thread each)",
              "rounds": rounds,
              "control": {"what": "ella train configs/shapes/ella-tsc.yaml from the default connector on the recipe's"
                                  " ground-truth renders, lr 1e-4, the checkpoints closest to the feedback run's"
                                  " cumulative CPU time after each round", "checkpoints": controls},
              "command": "python scripts/shapes_feedback_report.py --feedback-cpu-minutes "
                         + " ".join(map(str, args.feedback_cpu_minutes))}
    if os.path.isfile(args.out):  # earlier runs kept beside the new one
        with open(args.out, encoding="utf-8") as f:
            earlier = json.load(f)
        result["earlier_runs"] = earlier.get("earlier_runs") or earlier
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({r["round"]: (r["bench"]["overall"], r["bench"]["relation"],
                                   r["double_drawing"]["second's colour in more than one cell"]) for r in rounds}))
    for c in controls:
        print("control", c["step"], c["cpu_minutes"], c["bench"]["overall"], c["bench"]["relation"],
              c["double_drawing"]["second's colour in more than one cell"])

if __name__ == "__main__":
    main()

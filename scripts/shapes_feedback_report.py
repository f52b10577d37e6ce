"""`ella feedback` on ShapesWorld against its control, from the run folders, into one results file.

For every round of the feedback run (round 0 = the starting connector): the held-out bench
(`rounds.json`) and the double-drawing count on the README's main prompt
(`scripts/shapes_double_drawing.py`'s judge, 8 seeds). The control is `ella train` from the same
connector on the recipe's ground-truth renders, taken at the checkpoint whose CPU time is closest
to the feedback run's (its process CPU time, all stages: `ps -o cputime` at its end); it is
exported and benched on the same held-out prompts, seeds and settings.

    python scripts/shapes_feedback_report.py --feedback runs/feedback --control runs/control \
        --feedback-cpu-minutes 33 --out docs/results/shapesworld-feedback.json
"""

from __future__ import annotations

import argparse
import json
import os

from shapes_double_drawing import FIRST, SECOND, count

from ella.feedback import FrozenOnce, bench_round, load_feedback_config, round_train_config
from ella.shapes.catalog import MAIN_PROMPT
from ella.train.checkpoint import list_checkpoints, load_training_state


def export_checkpoint(run_dir: str, target_minutes: float) -> tuple[str, dict]:
    """Export the checkpoint of `run_dir` whose CPU time is closest to `target_minutes`."""
    from ella import ELLA

    states = [(path, load_training_state(path)) for path in list_checkpoints(run_dir)]
    if not states:
        raise SystemExit(f"{run_dir}: no checkpoint")
    path, state = min(states, key=lambda ps: abs(float(ps[1]["cpu_seconds"]) / 60 - target_minutes))
    out = os.path.join(run_dir, "exports", os.path.basename(path))
    if not os.path.isdir(out):
        with open(os.path.join(path, "config.yaml"), encoding="utf-8") as f:
            import yaml

            init = yaml.safe_load(f)["init_connector"]
        connector = ELLA.from_pretrained(init)
        connector.load_state_dict(state["ella"])
        connector.save_pretrained(out)
    return out, {"step": int(state["step"]), "cpu_minutes": float(state["cpu_seconds"]) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes/feedback.yaml")
    parser.add_argument("--feedback", default="runs/feedback", help="the feedback run's output_dir")
    parser.add_argument("--bench-csv", default="runs/heldout30/questions.csv")
    parser.add_argument("--control", default="runs/control", help="an ella train output folder")
    parser.add_argument("--feedback-cpu-minutes", type=float, required=True,
                        help="the feedback run's CPU time (its process clock), to match the control to")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", default="docs/results/shapesworld-feedback.json")
    args = parser.parse_args()

    config = load_feedback_config(args.config, {"output_dir": args.feedback, "bench_csv": args.bench_csv})
    with open(os.path.join(args.feedback, "rounds.json"), encoding="utf-8") as f:
        rounds = json.load(f)
    for summary in rounds:
        summary["double_drawing"] = count(summary["connector"], MAIN_PROMPT, FIRST, SECOND, args.seeds)
    control, record = export_checkpoint(args.control, args.feedback_cpu_minutes)
    frozen = FrozenOnce(round_train_config(config, args.control, control))
    record.update(connector=control, bench=bench_round(config, frozen, control, os.path.join(args.control, "bench")),
                  double_drawing=count(control, MAIN_PROMPT, FIRST, SECOND, args.seeds))
    result = {"what": f"ella feedback {args.config} --output_dir {args.feedback} --bench_csv HELDOUT (the first 30"
                      " held-out dense prompts, 4 images each, seed 0)",
              "machine": "2-core development CPU, beside other runs (one thread each)",
              "feedback_cpu_minutes": args.feedback_cpu_minutes, "rounds": rounds,
              "control": {"what": "ella train configs/shapes/ella-tsc.yaml from the default connector on the recipe's"
                                  " ground-truth renders, lr 1e-4, the checkpoint closest to the feedback run's CPU time",
                          **record},
              "command": "python scripts/shapes_feedback_report.py --feedback-cpu-minutes "
                         f"{args.feedback_cpu_minutes}"}
    if os.path.isfile(args.out):  # earlier runs kept beside the new one
        with open(args.out, encoding="utf-8") as f:
            earlier = json.load(f)
        result["earlier_runs"] = earlier.get("earlier_runs") or earlier
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({r["round"]: (r["bench"]["overall"], r["bench"]["relation"],
                                   r["double_drawing"]["second's colour in more than one cell"]) for r in rounds}))
    print("control", record["cpu_minutes"], record["bench"]["overall"], record["bench"]["relation"],
          record["double_drawing"]["second's colour in more than one cell"])


if __name__ == "__main__":
    main()

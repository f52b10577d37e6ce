"""Connectors fine-tuned with different levers, benched side by side on each prompt style, with
the CPU-minutes their training spent (from each run's last resume state).

    python scripts/shapes_levers.py --runs plain=runs/lever-plain,noise=runs/lever-noise \
        --shipped tsc --styles paraphrase,brief --out docs/results/shapesworld-levers.json

Every run is `ella train`'s output folder (its `export/` is benched, `checkpoints/` give the
CPU time); the bench is `ella bench shapes` (50 held-out scenes x 4 images, seed 0, one folder
per style under --bench-dir, so a run benched before is only scored again). Run one invocation
per connector in parallel, then one with all of them to collect the table (nothing is drawn twice).
"""

from __future__ import annotations

import argparse
import json
import os

from ella.fileio import write_text_atomic
from ella.shapes.bench import run_shapes_bench
from ella.train.checkpoint import latest_checkpoint, load_training_state


def training_record(run_dir: str) -> dict:
    """The run's levers (its config's text regularisers, steps, lr) and its training CPU-minutes."""
    import yaml

    path = latest_checkpoint(run_dir)
    if path is None:
        raise SystemExit(f"{run_dir}: no checkpoint (train with checkpoint_every <= max_steps)")
    state = load_training_state(path)
    with open(os.path.join(path, "config.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    keys = ("init_connector", "max_steps", "lr", "text_noise", "token_dropout", "train_data")
    return {"cpu_minutes": float(state["cpu_seconds"]) / 60, "step": int(state["step"]),
            **{k: config.get(k) for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="", help="NAME=RUN_DIR,... (ella train output folders)")
    parser.add_argument("--shipped", default="", help="shipped connectors benched beside them (tsc,tsc-smollm2)")
    parser.add_argument("--styles", default="paraphrase,brief")
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--bench-dir", default="runs/levers-bench")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = {name: (os.path.join(run_dir, "export"), {"run": run_dir, **training_record(run_dir)})
            for name, run_dir in (item.split("=", 1) for item in args.runs.split(",") if item)}
    rows.update({name: (name, {"shipped": True}) for name in args.shipped.split(",") if name})
    table = {}
    for name, (model, row) in rows.items():
        for style in args.styles.split(","):
            summary = run_shapes_bench(args.prompts, [model], os.path.join(args.bench_dir, style, name),
                                       captions=style)[model]
            row[style] = {"overall": summary["overall"], **summary["l1"]}
            print(f"{name:12s} {style:10s} {summary['overall']:6.2f}", flush=True)
        table[name] = row
    table["_meta"] = {"command": "python scripts/shapes_levers.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "bench": f"ella bench shapes --prompts {args.prompts} (seed 0, 25 steps, guidance 5)",
        "machine": "2-core development CPU, runs side by side (one thread each)"}
    write_text_atomic(args.out, json.dumps(table, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()

"""Threads per run against runs per core, for a research loop of many ShapesWorld trainings (the
recaptioning experiment trains ten connectors): the recipe's step (`loop.train_step`, batch 32 from
the feature cache) timed in P processes at once with T torch threads each, P x T = the CPU's cores,
on the plain path (`--mixed-precision no`) and on `ella train`'s default fast path; the total
samples/s of all processes. Each process times `--steps` steps after two warm-up steps. The
research loop's speed-up: the fast path in its best layout against what a user ran before, the
plain path as one run on every core.

    python benchmarks/train_runs_per_core.py --cache /tmp/shapes-cache [--out benchmarks/results/train_runs_per_core_cpu.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))

STEPS = """
import os, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from train_step_profile import recipe_run
from ella.train import loop
cache, precision, steps = sys.argv[1], sys.argv[3], int(sys.argv[4])
config, run, batches, encoder, empty = recipe_run(cache, f"/tmp/ella-runs-per-core-{precision}-{os.getpid()}", mixed_precision=precision)
for step in range(steps + 2):
    if step == 2:
        start = time.perf_counter()
    loop.train_step(run, batches, encoder, empty, None)
print(steps * config.batch_size / (time.perf_counter() - start))
"""
PATHS = {"plain": "no", "fast": "auto"}


def total_samples_per_s(cache: str, processes: int, threads: int, precision: str, steps: int) -> float:
    runs = [subprocess.Popen([sys.executable, "-c", STEPS, cache, str(threads), precision, str(steps)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=os.path.dirname(__file__))
            for _ in range(processes)]
    outputs = [r.communicate()[0].split() for r in runs]
    if any(r.returncode or not out for r, out in zip(runs, outputs)):
        raise SystemExit(f"a timing process failed ({processes} x {threads} threads, {precision}); run it alone to see why")
    return sum(float(out[-1]) for out in outputs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--load", default="nothing else running", help="what else the machine ran, for the record")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from startup import report

    cores = os.cpu_count() or 1
    layouts = sorted({(cores // t, t) for t in range(1, cores + 1) if cores % t == 0})
    totals = {path: {f"{p} run(s) x {t} thread(s)": total_samples_per_s(args.cache, p, t, precision, args.steps)
                     for p, t in layouts} for path, precision in PATHS.items()}
    before = totals["plain"][f"1 run(s) x {cores} thread(s)"]
    best = max(totals["fast"], key=totals["fast"].get)
    report({"machine": f"{platform.machine()}, {cores} CPUs, {args.load}",
            "total samples/s": totals,
            "best layout against one run on every core": {path: max(t.values()) / t[f"1 run(s) x {cores} thread(s)"]
                                                          for path, t in totals.items()},
            f"research loop: fast path, {best}, against the plain path, one run on every core": totals["fast"][best] / before},
           args.out)


if __name__ == "__main__":
    main()

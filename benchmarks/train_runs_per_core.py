"""Threads per run against runs per core, for a research loop of many ShapesWorld trainings (the
recaptioning experiment trains ten connectors): the recipe's step (batch 32 from the feature
cache) timed in P processes at once with T torch threads each, P x T = the CPU's cores; the total
samples/s of all processes. Each process times `--steps` steps after two warm-up steps.

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
import sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from ella.train import loop
from ella.train.config import load_config
config = load_config("configs/shapes/ella-tsc.yaml", dict(model="src/ella/assets/shapes",
    init_connector="src/ella/assets/shapes/ella-tsc", cache_dir=sys.argv[1], output_dir="/tmp/ella-runs-per-core",
    train_data="shapes:2048:dense+brief+relative+varied+varied", validate_every=0))
run = loop.build(config, None)
loop.resume(run)
batches = loop.open_data(config, run.parts, 0, 1, run.position)
encoder = run.parts.encoder(config)
empty = loop._EmptyPrompt(config, encoder)
steps = int(sys.argv[3])
for step in range(steps + 2):
    if step == 2:
        start = time.perf_counter()
    g = loop.step_generator(0, 0, step, 0)
    latents, text, mask, _ = loop.make_batch_tensors(next(batches), config, run.parts, encoder, empty, g, "cpu")
    loop.diffusion_loss(run.model, run.parts, latents, text, mask, g, True, config).backward()
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
print(steps * config.batch_size / (time.perf_counter() - start))
"""


def total_samples_per_s(cache: str, processes: int, threads: int, steps: int) -> float:
    runs = [subprocess.Popen([sys.executable, "-c", STEPS, cache, str(threads), str(steps)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True) for _ in range(processes)]
    return sum(float(r.communicate()[0].split()[-1]) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from startup import report

    cores = os.cpu_count() or 1
    layouts = sorted({(cores // t, t) for t in range(1, cores + 1) if cores % t == 0})
    totals = {f"{p} run(s) x {t} thread(s)": total_samples_per_s(args.cache, p, t, args.steps) for p, t in layouts}
    one = total_samples_per_s(args.cache, 1, 1, args.steps)
    report({"machine": f"{platform.machine()}, {cores} CPUs, nothing else running",
            "total samples/s": totals, "one run, one thread (the rest idle)": one,
            "best against one run on every core": max(totals.values()) / totals[f"1 run(s) x {cores} thread(s)"]},
           args.out)


if __name__ == "__main__":
    main()

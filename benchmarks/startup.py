"""Start-up cost, side by side in one run: `ella --help`, the main job's whole command, and the
pipeline call inside it (what the model itself costs), each the best and worst of N runs.

    python benchmarks/startup.py [--runs 5] [--out benchmarks/results/startup_cpu.json]

Goals (issue "product shape"): `ella --help` at most 0.3 s; the main job's whole command at most
2x its pipeline call. The import breakdown (`python -X importtime`) says where the rest goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from ella.shapes.catalog import MAIN_PROMPT as PROMPT

PIPELINE_CALL = """
import time, torch
from ella.shapes.models import load_shapes_pipeline
pipe = load_shapes_pipeline()
times = []
for i in range({runs} + 1):  # the first call warms up
    start = time.perf_counter()
    pipe({prompt!r}, num_inference_steps=25, guidance_scale=5.0, generator=[torch.Generator().manual_seed(1001)])
    times.append(time.perf_counter() - start)
print(min(times[1:]), max(times[1:]))
"""
IMPORTS = "import time; s = time.perf_counter(); {statement}; print(time.perf_counter() - s)"
# What any diffusers pipeline class costs to import: the floor of a command that runs one.
IMPORT_STATEMENTS = {"torch": "import torch", "diffusers": "import diffusers", "transformers": "import transformers",
                     "torch + diffusers' DiffusionPipeline": "from diffusers import DiffusionPipeline"}


def timed(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    ella = [sys.executable, "-m", "ella.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        help_times = timed(ella + ["--help"], args.runs)
        job_times = timed(ella + ["generate", PROMPT, "--out", os.path.join(tmp, "x.png")], args.runs)
    out = subprocess.run([sys.executable, "-c", PIPELINE_CALL.format(runs=args.runs, prompt=PROMPT)], check=True,
                         capture_output=True, text=True).stdout.split()
    call = float(out[0]), float(out[1])
    imports = {name: min(float(subprocess.run([sys.executable, "-c", IMPORTS.format(statement=statement)], check=True,
                                              capture_output=True, text=True).stdout) for _ in range(args.runs))
               for name, statement in IMPORT_STATEMENTS.items()}
    floor = imports["torch + diffusers' DiffusionPipeline"]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
        "ella --help (s, best/worst)": [min(help_times), max(help_times)],
        "ella generate, whole command (s, best/worst)": [min(job_times), max(job_times)],
        "pipeline call, 25 steps + CFG (s, best/worst)": list(call),
        "whole command / pipeline call (best/best)": min(job_times) / call[0],
        "import alone, best of N runs (s)": imports,
        "(DiffusionPipeline import + pipeline call) / pipeline call": (floor + call[0]) / call[0],
    }
    report(result, args.out)


def report(result: dict, out: str | None) -> None:
    """Print a benchmark's results, one per line, and write them as JSON to `out` if given."""
    for key, value in result.items():
        print(f"{key}: {value}")
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

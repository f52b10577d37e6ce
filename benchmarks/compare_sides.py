"""`ella generate --compare` on the CPU: the base model's side and ELLA's drawn at the same time,
a Python thread each with torch's threads shared out (what `ella.generate.render` does), against
one after the other with all of torch's threads (what it did before). Main prompt, the shipped
model, 25 steps with CFG; in pairs (one way, then the other) so both see the machine in the same
state; compares the images, at the same thread count and with all threads (a thread count can
change float rounding).

    python benchmarks/compare_sides.py [--runs 5] [--out benchmarks/results/compare_sides_cpu.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from startup import report

    from ella.generate import COMPARE, render
    from ella.shapes.catalog import MAIN_PROMPT
    from ella.shapes.models import SHIPPED

    pipe = SHIPPED.load("tsc")
    pipe.set_progress_bar_config(disable=True)
    steps, guidance, threads = SHIPPED.defaults["steps"], SHIPPED.defaults["guidance"], torch.get_num_threads()

    def one_after_the_other(seed: int, per_side_threads: int) -> tuple[float, dict]:
        torch.set_num_threads(per_side_threads)
        try:
            start = time.perf_counter()
            rows = {c: render(pipe, MAIN_PROMPT, (c,), seed, 1, steps, guidance)[c] for c in COMPARE}
            return time.perf_counter() - start, rows
        finally:
            torch.set_num_threads(threads)

    def at_once(seed: int) -> tuple[float, dict]:
        start = time.perf_counter()
        rows = render(pipe, MAIN_PROMPT, COMPARE, seed, 1, steps, guidance)
        return time.perf_counter() - start, rows

    def differences(a: dict, b: dict) -> list[int]:
        """Per pixel channel, 0-255: the largest difference and how many differ, over both sides."""
        diff = np.concatenate([np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).ravel()
                               for c in COMPARE for x, y in zip(a[c], b[c])])
        return [int(diff.max()), int((diff > 0).sum())]

    at_once(1000)  # warm-up
    sequential, concurrent, all_threads = [], [], [0, 0]
    for i in range(args.runs):
        seconds, before = one_after_the_other(1001 + i, threads)
        sequential.append(seconds)
        seconds, now = at_once(1001 + i)
        concurrent.append(seconds)
        largest, count = differences(before, now)
        all_threads = [max(all_threads[0], largest), all_threads[1] + count]
    _, alone = one_after_the_other(1001, max(1, threads // len(COMPARE)))
    _, together = at_once(1001)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {threads}",
        "one after the other, all threads (s, best/median/worst)": [
            min(sequential), statistics.median(sequential), max(sequential)],
        "at the same time, a thread each (s, best/median/worst)": [
            min(concurrent), statistics.median(concurrent), max(concurrent)],
        "speed-up, pair by pair (median)": statistics.median(s / c for s, c in zip(sequential, concurrent)),
        "against one after the other at the same thread count: largest 8-bit difference, values that differ":
            differences(alone, together),
        "against one after the other with all threads, all pairs: largest 8-bit difference, values that differ":
            all_threads,
        "values compared per pair": 2 * np.asarray(now[COMPARE[0]][0]).size,
        "runs": args.runs,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()

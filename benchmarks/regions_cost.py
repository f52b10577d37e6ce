"""What regions cost: seconds per image of the shipped ShapesWorld model with 1, 2 and 4 regions
against the same prompt without regions (the main prompt, its default steps and CFG, 4 images a
call). Each round times every setting once, in turn, so that all see the machine in the same
state; the ratios are per round, then the median.

    python benchmarks/regions_cost.py [--rounds 5] [--out benchmarks/results/regions_cost_cpu.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))


def layouts() -> dict:
    """{name: layout or None}: regions in grid cells, each with its own one-object prompt."""
    from ella.regions import Layout, Region
    from ella.shapes.catalog import MAIN_PROMPT
    from ella.shapes.planner import cell_box, plan

    prompts = ["a large red circle", "a small blue square", "a large green triangle", "a small yellow circle"]
    settings = {"no regions": None}
    for count in (1, 2, 4):
        settings[f"{count} region{'s' * (count > 1)}"] = Layout(
            [Region(prompts[k], cell_box(2 * k)) for k in range(count)], MAIN_PROMPT)
    planned = plan(MAIN_PROMPT)
    settings[f"the shapes planner's layout ({len(planned.segments())} segments)"] = planned
    return settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from startup import report

    from ella.shapes.catalog import MAIN_PROMPT
    from ella.shapes.models import SHIPPED

    pipe = SHIPPED.load(SHIPPED.default_connector)
    pipe.set_progress_bar_config(disable=True)
    settings = layouts()

    def seconds_per_image(layout) -> float:
        start = time.perf_counter()
        pipe(MAIN_PROMPT, num_images_per_prompt=args.images, num_inference_steps=SHIPPED.defaults["steps"],
             guidance_scale=SHIPPED.defaults["guidance"], regions=layout, generator=torch.Generator().manual_seed(0))
        return (time.perf_counter() - start) / args.images

    for layout in settings.values():  # warm-up
        seconds_per_image(layout)
    times = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, layout in settings.items():
            times[name].append(seconds_per_image(layout))
    plain = times["no regions"]
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
              "model": f"the shipped ShapesWorld default, {SHIPPED.defaults['steps']} steps, CFG",
              "images per call": args.images, "rounds": args.rounds,
              "seconds per image (median)": {name: statistics.median(t) for name, t in times.items()},
              "against no regions (median of per-round ratios)": {
                  name: statistics.median(a / b for a, b in zip(t, plain)) for name, t in times.items()}}
    report(result, args.out)


if __name__ == "__main__":
    main()

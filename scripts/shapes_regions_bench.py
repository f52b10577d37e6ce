"""Regions on ShapesWorld: held-out scenes drawn without regions and with the layouts of each
planner, judged exactly, per style; each planner's accuracy (the share of prompts whose layout
is exactly the scene) and where it fails; the main prompt's seeds 1001-1008; seconds per image.

    python scripts/shapes_regions_bench.py --planners shapes,llm:smollm2 [--prompts 50] [--out result.json]

A prompt an LLM planner cannot plan (its answer is no layout) is drawn without regions and counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ella.planning import load_planner, plan_regions
from ella.regions import Layout, LayoutError, Region
from ella.shapes.bench import bench_prompts, write_heldout
from ella.shapes.catalog import DEFAULT_CONNECTOR, MAIN_PROMPT, SHAPES_DEFAULTS
from ella.shapes.judge import analyse
from ella.shapes.models import load_shapes_pipeline
from ella.shapes.planner import layout_scene
from ella.shapes.reader import compare, read_text


def plan_all(planner, prompts: dict[str, str], scenes: dict) -> tuple[dict, dict]:
    """({item: layout}, accuracy record) of one planner over the prompts."""
    layouts, failures, exact = {}, {}, 0
    for item, prompt in prompts.items():
        try:
            layout = plan_regions(prompt, planner)
        except LayoutError as err:
            failures[item] = str(err)
            continue
        layouts[item] = layout
        truth = scenes[item]
        cells = [None] * 9
        for o in truth.objects:
            cells[o.cell] = (o.color, o.size, o.shape)
        planned = layout_scene(layout)
        exact += planned == cells
        if planned != cells:
            failures[item] = f"planned {planned}, scene {cells}"
    return layouts, {"prompts": len(prompts), "layouts": len(layouts), "exact": exact,
                     "exact_share": exact / len(prompts), "failures": dict(list(failures.items())[:10])}


def main_prompt(pipe, layout) -> dict:
    wanted = read_text(MAIN_PROMPT, background=False)
    images = pipe(MAIN_PROMPT, num_images_per_prompt=8, num_inference_steps=SHAPES_DEFAULTS["steps"],
                  guidance_scale=SHAPES_DEFAULTS["guidance"], regions=layout,
                  generator=[torch.Generator().manual_seed(1001 + i) for i in range(8)]).images
    seen = [compare(wanted, analyse(image)) for image in images]
    return {"exact": sum(s["exact"] for s in seen), "drawn_twice": sum(bool(s["drawn_twice"]) for s in seen),
            "with_extras": sum(bool(s["extras"]) for s in seen),
            **{f"object {k + 1} right": sum(s["objects"][k]["right"] for s in seen) for k in range(2)}}


def seconds_per_image(pipe, layout, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(MAIN_PROMPT, num_images_per_prompt=4, num_inference_steps=SHAPES_DEFAULTS["steps"],
             guidance_scale=SHAPES_DEFAULTS["guidance"], regions=layout, generator=torch.Generator().manual_seed(0))
        best = min(best, (time.perf_counter() - start) / 4)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planners", default="shapes", help="comma-separated planner specs (none is always run)")
    parser.add_argument("--styles", default="dense,brief,relative")
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--ella", default=DEFAULT_CONNECTOR)
    parser.add_argument("--work", default="runs/regions-bench", help="images and scores (reused on a rerun)")
    parser.add_argument("--base-ratio", type=float, default=None, help="override the planners' base ratio")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    pipe = load_shapes_pipeline(connector=args.ella)
    pipe.set_progress_bar_config(disable=True)
    planners = [p for p in args.planners.split(",") if p]
    result = {"command": "python scripts/shapes_regions_bench.py " + " ".join(sys.argv[1:]), "machine": "2-core CPU",
              "base_ratio": args.base_ratio,
              "connector": args.ella, "prompts": args.prompts, "planners": {}, "styles": {}}
    loaded = {name: load_planner(name) for name in planners}
    settings = {"connector": args.ella}
    for style in args.styles.split(","):
        work = os.path.join(args.work, style)
        questions, prompts, scenes = write_heldout(args.prompts, work, captions=style)
        rows = {}
        summary = bench_prompts(pipe, prompts, questions, work, "none", settings)
        rows["none"] = {"overall": summary["overall"], **summary["l1"]}
        for name in planners:
            layouts, accuracy = plan_all(loaded[name], prompts, scenes)
            if args.base_ratio is not None:
                for layout in layouts.values():
                    layout.base_ratio = args.base_ratio
            result["planners"].setdefault(name, {})[style] = accuracy
            # an unplanned prompt is drawn as one region over the whole image with its own prompt (no regions)
            planned = {i: layouts.get(i) or Layout([Region(prompts[i], (0.0, 0.0, 1.0, 1.0))]) for i in prompts}
            tag = name.replace(":", "-").replace("/", "-") + ("" if args.base_ratio is None else f"-r{args.base_ratio:g}")
            summary = bench_prompts(pipe, prompts, questions, work, tag, {**settings, "planner": name},
                                    layouts=planned)
            rows[name] = {"overall": summary["overall"], **summary["l1"]}
            print(f"{style:9s} {name:14s} {rows[name]['overall']:6.2f} (none {rows['none']['overall']:6.2f});"
                  f" layouts exact {accuracy['exact']}/{accuracy['prompts']}", flush=True)
        result["styles"][style] = rows
    result["main_prompt"] = {"none": main_prompt(pipe, None)}
    result["seconds_per_image"] = {"none": seconds_per_image(pipe, None)}
    for name in planners:
        try:
            layout = plan_regions(MAIN_PROMPT, loaded[name])
            layout.base_ratio = layout.base_ratio if args.base_ratio is None else args.base_ratio
        except LayoutError as err:
            result["main_prompt"][name] = {"planner failed": str(err)}
            continue
        result["main_prompt"][name] = main_prompt(pipe, layout)
        result["seconds_per_image"][f"{name} ({len(layout.segments())} regions)"] = seconds_per_image(pipe, layout)
    print(json.dumps({k: result[k] for k in ("main_prompt", "seconds_per_image")}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

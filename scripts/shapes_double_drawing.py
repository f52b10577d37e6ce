"""Does a shipped connector draw the relatively placed object twice?

For prompts "<object A> at <place>, <object B> <relative phrase>" (the README's main prompt by
default), `ella generate`'s settings and seeds 1001..1000+N, the exact judge's view of each image:
A in its cell, B where the phrase puts it, and how many cells hold an object of B's colour
(more than one: B drawn twice).

    python scripts/shapes_double_drawing.py --connectors tsc,tsc-relative,tsc-dense [--seeds 8]
"""

from __future__ import annotations

import argparse
import json

import torch

from ella.shapes.catalog import CONNECTORS, MAIN_PROMPT, SHAPES_DEFAULTS
from ella.shapes.judge import analyse
from ella.shapes.models import load_shapes_pipeline

# (cell, colour, shape) of the prompt's two objects: the top-left cell, and the one below it
FIRST, SECOND = (0, "red", "circle"), (3, "blue", "square")


def count(connector: str, prompt: str, first, second, seeds: int) -> dict:
    pipe = load_shapes_pipeline(connector=connector)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompt, num_images_per_prompt=seeds, num_inference_steps=SHAPES_DEFAULTS["steps"],
                  guidance_scale=SHAPES_DEFAULTS["guidance"],
                  generator=[torch.Generator().manual_seed(1001 + i) for i in range(seeds)]).images
    stats = dict.fromkeys(("first right", "second in its cell, its colour", "second fully right",
                           "second's colour in more than one cell"), 0)
    for image in images:
        cells = analyse(image)[1]
        a, b = cells[first[0]], cells[second[0]]
        stats["first right"] += a is not None and (a.color, a.shape) == first[1:]
        stats["second in its cell, its colour"] += b is not None and b.color == second[1]
        stats["second fully right"] += b is not None and (b.color, b.shape) == second[1:]
        stats["second's colour in more than one cell"] += sum(c is not None and c.color == second[1] for c in cells) > 1
    return {"seeds": seeds, **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connectors", default="tsc,tsc-relative,tsc-dense", help=", ".join(CONNECTORS))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", default=None, help="also write the counts as JSON here")
    args = parser.parse_args()
    prompt, first, second = MAIN_PROMPT, FIRST, SECOND
    result = {"prompt": prompt, "settings": "ella generate's: 25 DPM-Solver++ steps, guidance 5, seeds from 1001",
              "command": f"python scripts/shapes_double_drawing.py --connectors {args.connectors} --seeds {args.seeds}",
              "connectors": {c: count(c, prompt, first, second, args.seeds) for c in args.connectors.split(",") if c}}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

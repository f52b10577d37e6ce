"""Does a ShapesWorld model follow one-object prompts? 64 prompts ("a large red circle at the top
left"), one image each (25 steps, CFG 5), judged per cell.

    python scripts/shapes_follow.py [MODEL_DIR]                      the base, its own short captions
    python scripts/shapes_follow.py [MODEL_DIR] --connector tsc --dense   ELLA, one-object dense prompts

MODEL_DIR defaults to the shipped models.

Prints how often an object sits in the named cell (and with the named colour / shape / size
there), how often the named colour appears anywhere, and the objects per image: with k objects
scattered at random, the named cell holds one in about k/9 of the images (chance).
"""

from __future__ import annotations

import argparse
import random

import torch

from ella.shapes.catalog import CONNECTORS
from ella.shapes.judge import analyse
from ella.shapes.models import load_shapes_pipeline
from ella.shapes.world import COLORS, SHAPES, SIZES, place_phrase


def prompt(size: str, color: str, shape: str, cell: int | None, dense: bool) -> str:
    """The one-object prompt; `cell=None` leaves the place out."""
    short = f"a {size} {color} {shape}" + ("" if cell is None else f" {place_phrase(cell)}")
    if not dense:
        return short
    return f"An image with one object on a gray background. It shows {short}. In total: one {shape}. The background is gray."


def main(model_dir: str | None = None, connector: str | None = None, dense: bool = False, n: int = 64) -> None:
    rng = random.Random(5)
    objects = [(rng.choice(list(SIZES)), rng.choice(list(COLORS)), rng.choice(SHAPES), rng.randrange(9)) for _ in range(n)]
    pipe = load_shapes_pipeline(model_dir, connector=connector)
    images = pipe([prompt(*o, dense) for o in objects], num_inference_steps=25, guidance_scale=5.0,
                  conditioning="ella" if connector else "clip", generator=torch.Generator().manual_seed(0)).images
    at_cell = {"object": 0, "colour": 0, "shape": 0, "size": 0}
    colour_anywhere = n_objects = 0
    for (size, color, shape, cell), image in zip(objects, images):
        _, cells = analyse(image)
        present = [seen for seen in cells if seen is not None]
        n_objects += len(present)
        colour_anywhere += any(seen.color == color for seen in present)
        seen = cells[cell]
        if seen is not None:
            at_cell["object"] += 1
            at_cell["colour"] += seen.color == color
            at_cell["shape"] += seen.shape == shape
            at_cell["size"] += seen.size == size
    per_image = n_objects / n
    print("in the named cell: " + ", ".join(f"{k} {v}/{n}" for k, v in at_cell.items())
          + f" (chance for 'object': about {per_image / 9 * n:.0f}/{n})")
    print(f"named colour anywhere: {colour_anywhere}/{n}; objects per image: {per_image:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default=None)
    parser.add_argument("--connector", choices=list(CONNECTORS), default=None, help="ELLA instead of the base")
    parser.add_argument("--dense", action="store_true", help="one-object dense prompts instead of short captions")
    args = parser.parse_args()
    main(args.model_dir, args.connector, args.dense)

"""Does a ShapesWorld ELLA model place an object relative to the one named before it? 32
two-object prompts per direction ("a large red circle at the top left, a small blue square below
it"), one image each (25 steps, CFG 5), judged per cell; as a control, the same scenes with the
second object's place named ("... a small blue square on the left").

    python scripts/shapes_relative.py [MODEL_DIR] [--connector tsc]

MODEL_DIR defaults to the shipped models. Prints, per direction, how often the second object
(its colour) sits in the cell the phrase names, and where it went instead (row, column offsets
from the first object's cell).
"""

from __future__ import annotations

import argparse
import collections
import random

import torch

from ella.shapes.catalog import CONNECTORS, DEFAULT_CONNECTOR
from ella.shapes.judge import analyse
from ella.shapes.models import load_shapes_pipeline
from ella.shapes.world import COLORS, RELATIVE_STEPS, SHAPES, SIZES, Obj, place_phrase, relative_phrase


def pairs(phrase: str, n: int, rng: random.Random) -> list[tuple[Obj, Obj]]:
    """n (anchor, object) pairs, the object next to the anchor as `phrase` says, colours distinct."""
    dr, dc = RELATIVE_STEPS[phrase]
    anchors = [c for c in range(9) if 0 <= c // 3 + dr < 3 and 0 <= c % 3 + dc < 3]
    out = []
    for _ in range(n):
        cell = rng.choice(anchors)
        c1, c2 = rng.sample(list(COLORS), 2)
        a = Obj(rng.choice(SHAPES), c1, rng.choice(list(SIZES)), cell)
        b = Obj(rng.choice(SHAPES), c2, rng.choice(list(SIZES)), cell + 3 * dr + dc)
        assert relative_phrase(a, b) == phrase
        out.append((a, b))
    return out


def main(model_dir: str | None = None, connector: str = "tsc", n: int = 32) -> None:
    rng = random.Random(7)
    pipe = load_shapes_pipeline(model_dir, connector=connector)
    for phrase in RELATIVE_STEPS:
        scenes = pairs(phrase, n, rng)
        for named in (False, True):
            prompts = [f"a {a.noun()} {place_phrase(a.cell)}, a {b.noun()} {place_phrase(b.cell) if named else phrase}"
                       for a, b in scenes]
            images = pipe(prompts, num_inference_steps=25, guidance_scale=5.0, conditioning="ella",
                          generator=torch.Generator().manual_seed(0)).images
            hits, offsets = 0, collections.Counter()
            for (a, b), image in zip(scenes, images):
                cells = analyse(image)[1]
                found = [c for c, seen in enumerate(cells) if seen is not None and seen.color == b.color]
                hits += b.cell in found
                offsets.update((c // 3 - a.row, c % 3 - a.col) for c in found if c != b.cell)
            label = f"'{phrase}'" if not named else "  named place"
            misses = ", ".join(f"{off}: {k}" for off, k in offsets.most_common(3)) or "none"
            print(f"{label:16s} second object in its cell {hits}/{n}; elsewhere at offsets {misses}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default=None)
    parser.add_argument("--connector", default=DEFAULT_CONNECTOR, choices=list(CONNECTORS), help="a shipped connector")
    args = parser.parse_args()
    main(args.model_dir, args.connector)

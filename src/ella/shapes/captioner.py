"""ShapesWorld's captioner for `ella caption --captioner shapes[:P]`: it reads the image with the
exact judge's parser (`judge.analyse`) and writes a dense caption of what is there, and only
that, in the training captions' dense form. With error rate P it plays an imperfect captioner:
each object it found is, with probability P, left out or given a wrong colour, size or shape
(a per-image generator seeded by the image's pixels, so a rerun writes the same caption)."""

from __future__ import annotations

import hashlib
import random

import numpy as np

from ..caption.captioners import Captioner
from .judge import analyse
from .world import COLORS, NUMBERS, SHAPES, SIZES, Obj, Scene, dense_caption, pick_relations

ATTRIBUTES = {"color": tuple(COLORS), "size": tuple(SIZES), "shape": SHAPES}


class ShapesCaptioner(Captioner):
    def __init__(self, error_rate: float = 0.0):
        if not 0 <= error_rate <= 1:
            raise ValueError(f"the shapes captioner's error rate must be in [0, 1], got {error_rate}")
        super().__init__(name="shapes", revision="exact-parser-1", prompt="(reads the image with the exact judge)",
                         settings={"error_rate": error_rate})
        self.error_rate = error_rate

    @classmethod
    def from_arg(cls, arg: str) -> "ShapesCaptioner":
        """`shapes` or `shapes:P` (P: the error rate)."""
        try:
            return cls(float(arg) if arg else 0.0)
        except ValueError:
            raise ValueError(f"the shapes captioner takes an error rate, shapes:P with P in [0, 1]; got {arg!r}") from None

    def caption(self, images, originals):
        return [self.describe_image(image) for image in images]

    def describe_image(self, image) -> str:
        rng = random.Random(hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).digest())
        background, cells = analyse(image)
        objects = []
        for cell, seen in enumerate(cells):
            if seen is None:
                continue
            obj = Obj(seen.shape, seen.color, seen.size, cell)
            if rng.random() < self.error_rate:
                obj = self._mistake(obj, rng)
            if obj is not None:
                objects.append(obj)
        if len(objects) >= len(NUMBERS):  # not a ShapesWorld scene: a photo, noise, a grid of samples
            raise ValueError(f"{len(objects)} objects: more than a ShapesWorld scene holds ({len(NUMBERS) - 1})")
        if not objects:
            return f"A plain {background} background with nothing on it."
        scene = Scene(tuple(objects), background)
        return dense_caption(scene, rng, pick_relations(scene, rng))

    @staticmethod
    def _mistake(obj: Obj, rng: random.Random) -> Obj | None:
        """Leave the object out, or swap one of its attributes for another value."""
        kind = rng.choice(["drop", *ATTRIBUTES])
        if kind == "drop":
            return None
        value = getattr(obj, kind)
        fields = {"shape": obj.shape, "color": obj.color, "size": obj.size, kind: rng.choice(
            [v for v in ATTRIBUTES[kind] if v != value])}
        return Obj(fields["shape"], fields["color"], fields["size"], obj.cell)

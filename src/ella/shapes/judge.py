"""The exact ShapesWorld judge: answers DPG-style questions by measuring the image.

No learned model: the background is the background palette colour that most pixels are close
to; each 3x3 grid cell is examined for an object (pixels far from the background), whose colour
is the nearest palette colour of its most saturated pixels, whose size is its soft extent and
whose shape is its fill ratio (square ~1, circle ~pi/4, triangle ~1/2 to 0.7 once anti-aliased).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..bench.vqa import VQABackend
from .world import BACKGROUNDS, CELL_BY_PHRASE, COLORS, NUMBERS, SHAPES, place_phrase

_BG = {k: np.array(v, dtype=np.float32) for k, v in BACKGROUNDS.items()}
_FG = {k: np.array(v, dtype=np.float32) for k, v in COLORS.items()}


@dataclass
class Seen:
    color: str
    size: str
    shape: str


def _nearest(color: np.ndarray, palette: dict[str, np.ndarray]) -> str:
    return min(palette, key=lambda k: float(np.sum((palette[k] - color) ** 2)))


def analyse(image: Image.Image) -> tuple[str, list[Seen | None]]:
    """(background name, what each of the 9 cells holds, row-major)."""
    px = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    flat = px.reshape(-1, 3)
    votes = {k: int(np.sum(np.linalg.norm(flat - v, axis=1) < 40)) for k, v in _BG.items()}
    bg_name = max(votes, key=votes.get)
    bg = _BG[bg_name]
    h, w = px.shape[:2]
    cells: list[Seen | None] = []
    for cell in range(9):
        r, c = divmod(cell, 3)
        y0, y1 = round(r * h / 3), round((r + 1) * h / 3)
        x0, x1 = round(c * w / 3), round((c + 1) * w / 3)
        patch = px[y0:y1, x0:x1]
        dist = np.linalg.norm(patch - bg, axis=-1)  # (h, w)
        if dist.max() < 60 or np.sum(dist > 60) < 3:
            cells.append(None)
            continue
        core = patch[dist >= 0.8 * dist.max()]
        color_name = _nearest(core.mean(0), _FG)
        direction = _FG[color_name] - bg
        alpha = np.clip(((patch - bg) @ direction) / float(direction @ direction), 0, 1)  # soft mask
        area = float(alpha.sum())
        width = float(alpha.max(axis=0).sum())  # soft extent along x
        height = float(alpha.max(axis=1).sum())
        extent = max(width, height)
        size = "large" if extent > 0.69 * (w / 3) else "small"
        fill = area / max(width * height, 1e-6)
        shape = "square" if fill > 0.9 else "circle" if fill > 0.755 else "triangle"  # measured: see tests
        cells.append(Seen(color_name, size, shape))
    return bg_name, cells


_PLACE = "|".join(sorted(map(re.escape, CELL_BY_PHRASE), key=len, reverse=True))
_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_RELS = ("to the left of", "to the right of", "above", "below")
PATTERNS = [
    ("background", re.compile(rf"is the background ({'|'.join(BACKGROUNDS)})\?")),
    ("entity", re.compile(rf"is there an object ({_PLACE})\?")),
    ("color", re.compile(rf"is the object ({_PLACE}) ({_COLOR})\?")),
    ("size", re.compile(rf"is the object ({_PLACE}) (large|small)\?")),
    ("shape", re.compile(rf"is the object ({_PLACE}) an? ({_SHAPE})\?")),
    ("relation", re.compile(rf"is the ({_COLOR}) ({_SHAPE}) ({'|'.join(_RELS)}) the ({_COLOR}) ({_SHAPE})\?")),
    ("count", re.compile(rf"(?:is|are) there ({'|'.join(NUMBERS)}) ({_SHAPE})s?\?")),
]


def _related(a: int, b: int, rel: str) -> bool:
    (ra, ca), (rb, cb) = divmod(a, 3), divmod(b, 3)
    return {"to the left of": ca < cb, "to the right of": ca > cb, "above": ra < rb, "below": ra > rb}[rel]


def answer(analysis: tuple[str, list[Seen | None]], question: str) -> str:
    """'yes' or 'no' for one question about an analysed image."""
    bg, cells = analysis
    q = question.strip().lower()
    for kind, pattern in PATTERNS:
        m = pattern.fullmatch(q)
        if not m:
            continue
        g = m.groups()
        if kind == "background":
            ok = bg == g[0]
        elif kind == "count":
            ok = sum(1 for s in cells if s and s.shape == g[1]) == NUMBERS.index(g[0])
        elif kind == "relation":
            a = [i for i, s in enumerate(cells) if s and (s.color, s.shape) == (g[0], g[1])]
            b = [i for i, s in enumerate(cells) if s and (s.color, s.shape) == (g[3], g[4])]
            ok = any(_related(i, j, g[2]) for i in a for j in b if i != j)
        else:
            seen = cells[CELL_BY_PHRASE[g[0]]]
            ok = seen is not None and (kind == "entity" or getattr(seen, kind) == g[1])
        return "yes" if ok else "no"
    raise ValueError(f"the shapes judge cannot parse the question {question!r}")


class ShapesJudge:
    """VQA backend `shapes`: exact answers for ShapesWorld questions."""

    name = "shapes"

    def answer(self, image: Image.Image, questions: list[str]) -> list[str]:
        analysis = analyse(image)
        return [answer(analysis, q) for q in questions]


class ShapesBackend(VQABackend):
    """The exact judge as a DPG-Bench VQA backend (`--vqa shapes`)."""

    name = "shapes"

    def __init__(self):
        self.judge = ShapesJudge()

    def answer(self, image, questions, *, item_id, crop):
        return self.judge.answer(image, questions)

    def scene_problems(self, image, item) -> list[str]:
        """The objects drawn in cells the item's questions never ask about (an extra object, or an
        asked one drawn a second time): the scene is read off the item's entity questions, so it
        holds for prompts in any words."""
        asked = set()
        for q in item.questions:
            if q.l2 == "entity - whole":
                where = q.tuple.split("(", 1)[1].rstrip(")").removeprefix("object ").strip()
                if where not in CELL_BY_PHRASE:
                    raise ValueError(f"the shapes judge cannot read the place of {q.tuple!r}")
                asked.add(CELL_BY_PHRASE[where])
        _, cells = analyse(image)
        return [f"an extra {s.size} {s.color} {s.shape} {place_phrase(i)}" for i, s in enumerate(cells)
                if s is not None and i not in asked]

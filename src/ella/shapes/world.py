"""ShapesWorld scenes: sampling, anti-aliased rendering, dense and short captions, and
DPG-Bench-format questions.

A scene is 1-4 flat-coloured objects (circle, square, triangle; 5 colours; large or small), each
centred in its own cell of a 3x3 grid, on one of 3 background colours. Object and background
palettes are disjoint, so every question has one exact answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

RESOLUTION = 32
SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (240, 210, 40),
          "purple": (150, 60, 200)}
BACKGROUNDS = {"black": (15, 15, 15), "gray": (128, 128, 128), "white": (245, 245, 245)}
SIZES = {"large": 0.86, "small": 0.52}  # object extent as a fraction of a grid cell
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")
NUMBERS = ("zero", "one", "two", "three", "four")
PLACE_PROBABILITY = 0.6  # how often a short caption names a mentioned object's place (by default)


def cell_name(cell: int) -> str:
    """0..8 (row-major) -> 'top left', 'top', 'center', 'bottom right', ..."""
    r, c = divmod(cell, 3)
    if r == 1 and c == 1:
        return "center"
    if r == 1:
        return COLS[c]
    if c == 1:
        return ROWS[r]
    return f"{ROWS[r]} {COLS[c]}"


def place_phrase(cell: int) -> str:
    if cell == 4:
        return "in the center"
    return f"on the {cell_name(cell)}" if cell in (3, 5) else f"at the {cell_name(cell)}"


CELL_BY_PHRASE = {place_phrase(c): c for c in range(9)}


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    cell: int  # 0..8, row-major on the 3x3 grid

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def col(self) -> int:
        return self.cell % 3

    def noun(self, with_size: bool = True) -> str:
        return f"{self.size} {self.color} {self.shape}" if with_size else f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str


def sample_scene(rng: random.Random, max_objects: int = 4) -> Scene:
    n = rng.randint(1, max_objects)
    cells = rng.sample(range(9), n)
    objs = tuple(
        Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)), cell) for cell in sorted(cells)
    )
    return Scene(objs, rng.choice(list(BACKGROUNDS)))


# ---- rendering ------------------------------------------------------------------------------


def render(scene: Scene, resolution: int = RESOLUTION, supersample: int = 8):
    """Draw at `supersample` x the size, then box-filter down: anti-aliased edges (a PIL image)."""
    from PIL import Image, ImageDraw

    big = resolution * supersample
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cell = big / 3
    for o in scene.objects:
        cx, cy = (o.col + 0.5) * cell, (o.row + 0.5) * cell
        h = SIZES[o.size] * cell / 2  # half extent
        color = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=color)
        elif o.shape == "square":
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=color)
        else:  # an upward triangle filling the same box
            draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=color)
    return image.resize((resolution, resolution), Image.BOX)


# ---- captions -------------------------------------------------------------------------------


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def relation(a: Obj, b: Obj) -> list[str]:
    """The true spatial relations of a to b: 'to the left of', 'above', ..."""
    rels = []
    if a.col < b.col:
        rels.append("to the left of")
    if a.col > b.col:
        rels.append("to the right of")
    if a.row < b.row:
        rels.append("above")
    if a.row > b.row:
        rels.append("below")
    return rels


def unique_pairs(scene: Scene) -> list[tuple[Obj, Obj]]:
    """Pairs whose colour+shape names pick out one object each (relations can name them)."""
    names = [o.noun(False) for o in scene.objects]
    unique = [o for o, n in zip(scene.objects, names) if names.count(n) == 1]
    return [(a, b) for i, a in enumerate(unique) for b in unique[i + 1 :]]


def pick_relations(scene: Scene, rng: random.Random, k: int = 2) -> list[tuple[Obj, Obj, str]]:
    """Up to k true relations between objects that colour+shape name uniquely."""
    pairs = unique_pairs(scene)
    rng.shuffle(pairs)
    return [(a, b, rng.choice(relation(a, b))) for a, b in pairs[:k]]


def dense_caption(scene: Scene, rng: random.Random, relations: list[tuple[Obj, Obj, str]]) -> str:
    """Every object with all its attributes and place, counts, the given relations, the background."""
    objs = list(scene.objects)
    n = len(objs)
    intro = rng.choice([
        f"An image with {NUMBERS[n]} {_plural('object', n)} on a {scene.background} background.",
        f"On a plain {scene.background} background there {'is' if n == 1 else 'are'} {NUMBERS[n]} {_plural('shape', n)}.",
        f"A simple picture of {NUMBERS[n]} flat {_plural('shape', n)} over a {scene.background} background.",
    ])
    groups: dict[tuple[str, str], list[Obj]] = {}
    for o in objs:
        groups.setdefault((o.color, o.shape), []).append(o)
    parts = []
    for (color, shape), members in groups.items():
        if len(members) == 1:
            o = members[0]
            parts.append(f"a {o.size} {color} {shape} {place_phrase(o.cell)}")
        else:
            each = _join([f"a {o.size} one {place_phrase(o.cell)}" for o in members])
            parts.append(f"{NUMBERS[len(members)]} {color} {shape}s, {each}")
    body = rng.choice(["It shows ", "We see ", "Drawn here: "]) + _join(parts) + "."
    counts = {s: sum(o.shape == s for o in objs) for s in SHAPES}
    count_text = _join([f"{NUMBERS[k]} {_plural(s, k)}" for s, k in counts.items() if k])
    sentences = [intro, body, f"In total: {count_text}."]
    for a, b, rel in relations:
        sentences.append(f"The {a.noun(False)} is {rel} the {b.noun(False)}.")
    sentences.append(rng.choice([f"The background is {scene.background}.", f"Everything sits on {scene.background}."]))
    return " ".join(sentences)


def short_caption(scene: Scene, rng: random.Random, max_words: int = 10,
                  place_probability: float = PLACE_PROBABILITY) -> str:
    """Alt-text style: one or two objects, a random subset of their attributes, <= max_words;
    each object's place is named with `place_probability`."""
    objs = rng.sample(list(scene.objects), min(len(scene.objects), rng.choice([1, 1, 2])))
    phrases = []
    for o in objs:
        words = ["a"]
        if rng.random() < 0.5:
            words.append(o.size)
        if rng.random() < 0.8:
            words.append(o.color)
        words.append(o.shape if rng.random() < 0.9 else "shape")
        if rng.random() < place_probability:
            words.append(place_phrase(o.cell))
        phrases.append(" ".join(words))
    text = " and ".join(phrases)
    if len(text.split()) > max_words:  # two long phrases: keep the first object only
        text = phrases[0]
    if rng.random() < 0.3 and len(text.split()) + 2 <= max_words:
        text += f" on {scene.background}"
    return text


# relative place -> (row, column) step from the object named before
RELATIVE_STEPS = {"below it": (1, 0), "above it": (-1, 0), "to its right": (0, 1), "to its left": (0, -1)}


def relative_phrase(anchor: Obj, o: Obj) -> str | None:
    """Where `o` sits seen from `anchor`, when it is the next cell over ("below it", "to its
    right"); None otherwise (then only the grid name places it exactly)."""
    step = (o.row - anchor.row, o.col - anchor.col)
    return next((phrase for phrase, s in RELATIVE_STEPS.items() if s == step), None)


def brief_caption(scene: Scene, rng: random.Random) -> str:
    """A prompt as a user types it: every object with all its attributes, in any order, each
    placed by its grid name or, when it is the next cell over from the object named before it,
    relative to that one ("a large red circle at the top left, a small blue square below it");
    the background in most. 7-37 words (over 20,000 scenes), none of the dense captions' framing
    sentences."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    return _brief_text(scene, objs, rng, relative_probability=0.6)


def relative_caption(scene: Scene, rng: random.Random) -> str:
    """A brief prompt that places by relative phrases wherever it can: the objects are named in a
    chain that steps to a neighbour of the object just named whenever one is left, and every
    object next to the one before it is placed relative to it. Training data for what brief
    prompts hold too rarely for a connector to learn (a neighbour follows in a third of pairs)."""
    left = list(scene.objects)
    rng.shuffle(left)
    objs = [left.pop()] if left else []
    while left:
        near = [o for o in left if relative_phrase(objs[-1], o)]
        objs.append(near[0] if near else left[0])
        left.remove(objs[-1])
    return _brief_text(scene, objs, rng, relative_probability=1.0)


def _brief_text(scene: Scene, objs: list[Obj], rng: random.Random, relative_probability: float) -> str:
    phrases = []
    for i, o in enumerate(objs):
        near = relative_phrase(objs[i - 1], o) if i else None
        where = near if near and rng.random() < relative_probability else place_phrase(o.cell)
        phrases.append(f"a {o.noun()} {where}")
    text = ", ".join(phrases) if rng.random() < 0.5 else _join(phrases)
    background = rng.choice([f" on a {scene.background} background", f", {scene.background} background",
                             f" on {scene.background}", ""])
    return text + background


# ---- questions (DPG-Bench CSV rows) -----------------------------------------------------------


def questions(scene: Scene, item_id: str, text: str, relations: list[tuple[Obj, Obj, str]]) -> list[dict]:
    """The item's questions as official-format CSV rows: global (background), entity (an
    object at a place), attributes (colour, size, shape; each depends on its entity), relations
    (depend on both entities), counts ('other')."""
    rows: list[dict] = []

    def add(tuple_text: str, question: str, parents: list[int]) -> int:
        pid = len(rows) + 1
        l2 = tuple_text.split(" (")[0]
        rows.append({
            "item_id": item_id, "text": text, "keywords": "", "proposition_id": str(pid),
            "dependency": ",".join(map(str, parents)) or "0", "category_broad": l2.split(" -")[0],
            "category_detailed": l2, "tuple": tuple_text, "question_natural_language": question,
        })
        return pid

    add(f"global - ({scene.background} background)", f"Is the background {scene.background}?", [])
    entity: dict[Obj, int] = {}
    for o in scene.objects:
        place = place_phrase(o.cell)
        e = entity[o] = add(f"entity - whole (object {place})", f"Is there an object {place}?", [])
        add(f"attribute - color (object {place}, {o.color})", f"Is the object {place} {o.color}?", [e])
        add(f"attribute - size (object {place}, {o.size})", f"Is the object {place} {o.size}?", [e])
        add(f"attribute - shape (object {place}, {o.shape})", f"Is the object {place} a {o.shape}?", [e])
    for a, b, rel in relations:
        add(f"relation - spatial ({a.noun(False)}, {b.noun(False)}, {rel})",
            f"Is the {a.noun(False)} {rel} the {b.noun(False)}?", [entity[a], entity[b]])
    for s in SHAPES:
        k = sum(o.shape == s for o in scene.objects)
        if k:
            verb = "Is" if k == 1 else "Are"
            add(f"other - count ({s}, =={k})", f"{verb} there {NUMBERS[k]} {_plural(s, k)}?", [])
    return rows

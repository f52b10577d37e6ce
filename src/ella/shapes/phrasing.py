"""ShapesWorld prompts in many phrasings: one generator, two disjoint lexicons.

`VARIED` is training data: synonyms for sizes, colours, shapes, places and the background, the
colour after the noun, the place before the object, imperative, list and count forms, filler
words and typos. `PARAPHRASE` is held out by construction: a benchmark style whose words and
forms no training caption uses (`tests/test_shapes.py` checks the two vocabularies are disjoint
over thousands of captions), so its score measures whether the connector learned the language
through the frozen LLM rather than our templates. Every prompt names every object with its
colour, size, shape and grid place, and the background: it determines the scene, as brief prompts do.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .world import Obj, Scene


@dataclass(frozen=True)
class Lexicon:
    """Word choices, each a tuple to draw from; `places[cell]` are full place phrases
    ("in the upper left corner"); `object_forms` place `{n}` (the noun phrase) and `{p}` (the
    place); `object_forms_colour_after` take `{size}`, `{shape}`, `{color}`, `{p}`."""

    sizes: dict[str, tuple[str, ...]]
    colors: dict[str, tuple[str, ...]]
    shapes: dict[str, tuple[tuple[str, str], ...]]  # (singular, plural)
    backgrounds: dict[str, tuple[str, ...]]
    places: tuple[tuple[str, ...], ...]
    object_forms: tuple[str, ...]
    object_forms_colour_after: tuple[str, ...]
    joiners: tuple[str, ...]  # between object phrases (the last pair may use `last_joiners`)
    last_joiners: tuple[str, ...]
    openers: tuple[str, ...]  # "" or an imperative / framing before the objects
    background_forms: tuple[str, ...]  # with `{bg}`; placed after the objects
    background_first_forms: tuple[str, ...]  # with `{bg}`; placed before the objects
    list_forms: tuple[str, ...]  # one object as a list entry: `{p}`, `{n}`
    count_forms: tuple[str, ...]  # objects of one colour and shape grouped: `{k}`, `{color}`, `{shapes}`, `{each}`
    fillers: tuple[str, ...] = ()
    typo_rate: float = 0.0


_ARTICLE = re.compile(r"\ba ([aeiou])")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")

VARIED = Lexicon(
    sizes={"large": ("large", "big", "huge", "giant", "big"), "small": ("small", "little", "tiny", "mini", "small")},
    colors={"red": ("red", "crimson", "scarlet", "red"), "green": ("green", "emerald", "lime", "green"),
            "blue": ("blue", "navy", "sapphire", "blue"), "yellow": ("yellow", "golden", "gold", "yellow"),
            "purple": ("purple", "violet", "mauve", "purple")},
    shapes={"circle": (("circle", "circles"), ("disc", "discs"), ("dot", "dots"), ("round shape", "round shapes"),
                       ("ball", "balls")),
            "square": (("square", "squares"), ("box", "boxes"), ("block", "blocks"), ("square shape", "square shapes")),
            "triangle": (("triangle", "triangles"), ("triangular shape", "triangular shapes"),
                         ("pyramid", "pyramids"), ("wedge", "wedges"))},
    backgrounds={"black": ("black", "dark", "black"), "gray": ("gray", "grey", "gray"), "white": ("white", "bright white")},
    places=(
        ("at the top left", "in the upper left", "in the top-left corner", "in the upper left corner", "top left"),
        ("at the top", "at the top center", "at the top middle", "in the upper middle", "top middle"),
        ("at the top right", "in the upper right", "in the top-right corner", "in the upper right corner", "top right"),
        ("on the left", "on the left side", "at the middle left", "at the center left", "middle left"),
        ("in the center", "in the middle", "in the centre", "in the very middle", "center"),
        ("on the right", "on the right side", "at the middle right", "at the center right", "middle right"),
        ("at the bottom left", "in the lower left", "in the bottom-left corner", "in the lower left corner",
         "bottom left"),
        ("at the bottom", "at the bottom center", "at the bottom middle", "in the lower middle", "bottom middle"),
        ("at the bottom right", "in the lower right", "in the bottom-right corner", "in the lower right corner",
         "bottom right"),
    ),
    object_forms=("a {n} {p}", "a {n} {p}", "{p}, a {n}", "{p} there is a {n}", "there is a {n} {p}", "one {n} {p}"),
    object_forms_colour_after=("a {size} {shape} in {color} {p}", "a {size} {color} colored {shape} {p}",
                               "a {size} {shape}, {color}, {p}", "a {size} {shape} that is {color} {p}",
                               "{p}, a {size} {shape} colored {color}"),
    joiners=(", ", "; ", ", ", ". "),
    last_joiners=(" and ", ", and ", ", ", "; "),
    openers=("", "", "", "draw ", "paint ", "show ", "make ", "create ", "an image of ", "a picture with ",
             "a simple drawing: ", "generate "),
    background_forms=(" on a {bg} background", ", {bg} background", " on {bg}", ". the background is {bg}",
                      " against a {bg} backdrop", ", background: {bg}", " over {bg}", ""),
    background_first_forms=("on a {bg} background: ", "{bg} background, ", "a {bg} backdrop with "),
    list_forms=("{p}: a {n}", "{p} - {n}", "{n} ({p})"),
    count_forms=("{k} {color} {shapes}, {each}", "{k} {shapes}, each {color}, {each}",
                 "{k} {color} {shapes}: {each}"),
    fillers=("", "", "", "", "simple ", "flat ", "clean ", "minimal "),
    typo_rate=0.03,
)

# Held out: none of these words or forms appears in a training caption.
PARAPHRASE = Lexicon(
    sizes={"large": ("enormous", "massive", "oversized"), "small": ("petite", "miniature", "teeny")},
    colors={"red": ("ruby", "cherry"), "green": ("jade", "olive"), "blue": ("azure", "cobalt"),
            "yellow": ("lemon", "canary"), "purple": ("lavender", "plum")},
    shapes={"circle": (("disk", "disks"), ("orb", "orbs")),
            "square": (("tile", "tiles"), ("rectangle", "rectangles")),
            "triangle": (("three-sided figure", "three-sided figures"), ("arrowhead", "arrowheads"))},
    backgrounds={"black": ("jet", "ebony"), "gray": ("ash", "slate"), "white": ("snowy", "ivory")},
    places=(
        ("high up on the left", "in the northwest corner"),
        ("high up in the middle", "along the upper edge, halfway across"),
        ("high up on the right", "in the northeast corner"),
        ("halfway down the left edge", "at the west edge"),
        ("right at the heart of the frame", "smack in the heart of the scene"),
        ("halfway down the right edge", "at the east edge"),
        ("low down on the left", "in the southwest corner"),
        ("low down in the middle", "along the lower edge, halfway across"),
        ("low down on the right", "in the southeast corner"),
    ),
    object_forms=("a {n} sitting {p}", "a {n} located {p}", "{p} rests a {n}", "a {n} positioned {p}"),
    object_forms_colour_after=("a {size} {shape} of {color} tone {p}", "a {size} {shape} tinted {color}, {p}"),
    joiners=(", plus ", ", as well as "),
    last_joiners=(", along with ", " plus "),
    openers=("please render ", "could you sketch ", "i would like ", "include "),
    background_forms=(", all over a {bg} canvas", ", set against {bg} surroundings", " with {bg} surroundings"),
    background_first_forms=("across a {bg} canvas, ",),
    list_forms=("{n} -> {p}",),
    count_forms=("a set of {k} {color} {shapes}, namely {each}", "a collection of {k} {shapes} of {color} tone: {each}"),
)


# The feedback lexicon (`ella feedback`'s regime: words no training caption uses, which the judge
# reads anyway, since it reads the scene, not the words). Each attribute has two words: the first
# is used in feedback prompts ("lexicon" style), the second never is ("lexicon-heldout", benchmark
# only), so a connector fed the first half shows whether what it learned transfers to words it was
# never fed. Disjoint from the training captions and from PARAPHRASE (`tests/test_shapes.py`).
FEEDBACK_WORDS = {
    "red": ("vermilion", "rust"), "green": ("mint", "moss"), "blue": ("indigo", "cerulean"),
    "yellow": ("mustard", "saffron"), "purple": ("lilac", "amethyst"),
    "large": ("jumbo", "colossal"), "small": ("wee", "compact"),
    "circle": ("sphere", "bubble"), "square": ("cube", "crate"), "triangle": ("delta", "pennant"),
}
_PLURALS = {"sphere": "spheres", "bubble": "bubbles", "cube": "cubes", "crate": "crates", "delta": "deltas",
            "pennant": "pennants"}


def lexicon_caption(caption: str, held_out: bool = False) -> str:
    """A dense caption with every colour, size and shape word swapped for the feedback lexicon's
    (its used half, or with `held_out` the other): the same scene and grammar in new words."""
    half = int(held_out)

    def swap(match: re.Match) -> str:
        word = match.group(0)
        singular = word[:-1] if word.endswith("s") and word[:-1] in FEEDBACK_WORDS else word
        new = FEEDBACK_WORDS[singular][half]
        return _PLURALS.get(new, new + "s") if singular != word else new

    words = "|".join(sorted(FEEDBACK_WORDS, key=len, reverse=True))
    text = re.sub(rf"\b(?:{words})s?\b", swap, caption)
    return re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", text)


def _typo(word: str, rng: random.Random) -> str:
    """Swap two neighbouring letters or drop one: what a hurried user types."""
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :] if rng.random() < 0.5 else word[:i] + word[i + 1 :]


def _phrase(o: Obj, lex: Lexicon, rng: random.Random, place: str) -> str:
    size, color = rng.choice(lex.sizes[o.size]), rng.choice(lex.colors[o.color])
    shape = rng.choice(lex.shapes[o.shape])[0]
    filler = rng.choice(lex.fillers) if lex.fillers else ""
    if rng.random() < 0.3:
        return rng.choice(lex.object_forms_colour_after).format(size=filler + size, shape=shape, color=color, p=place)
    return rng.choice(lex.object_forms).format(n=f"{filler}{size} {color} {shape}", p=place)


def _group(members: list[Obj], lex: Lexicon, rng: random.Random) -> str:
    """Objects of one colour and shape as a count: 'two red circles, a big one at the top left
    and a small one in the center'."""
    o = members[0]
    each = " and ".join(f"a {rng.choice(lex.sizes[m.size])} one {rng.choice(lex.places[m.cell])}"
                        for m in members)  # "a enormous" becomes "an enormous" with the whole caption
    form = rng.choice(lex.count_forms)
    return form.format(k=NUMBER_WORDS[len(members)], color=rng.choice(lex.colors[o.color]),
                       shapes=rng.choice(lex.shapes[o.shape])[1], each=each)


def phrased_caption(scene: Scene, rng: random.Random, lex: Lexicon = VARIED) -> str:
    """A prompt for `scene` in `lex`'s words: every object (colour, size, shape, grid place),
    the background; objects in random order, as sentences, a list or counts."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    if rng.random() < 0.15:  # a list: "top left: a big red circle; center: ..."
        parts = [rng.choice(lex.list_forms).format(p=rng.choice(lex.places[o.cell]), n=" ".join(
            [rng.choice(lex.sizes[o.size]), rng.choice(lex.colors[o.color]), rng.choice(lex.shapes[o.shape])[0]]))
            for o in objs]
        text = "; ".join(parts)
    else:
        groups: dict[tuple[str, str], list[Obj]] = {}
        for o in objs:
            groups.setdefault((o.color, o.shape), []).append(o)
        parts = [_group(m, lex, rng) if len(m) > 1 and rng.random() < 0.7
                 else ", ".join(_phrase(o, lex, rng, rng.choice(lex.places[o.cell])) for o in m)
                 for m in groups.values()]
        text = parts[0]
        for i, part in enumerate(parts[1:], start=1):
            text += (rng.choice(lex.last_joiners) if i == len(parts) - 1 else rng.choice(lex.joiners)) + part
    text = _ARTICLE.sub(r"an \1", rng.choice(lex.openers) + text)
    bg = rng.choice(lex.backgrounds[scene.background])
    if rng.random() < 0.25:
        text = rng.choice(lex.background_first_forms).format(bg=bg) + text
    else:
        text += rng.choice(lex.background_forms).format(bg=bg)
    if lex.typo_rate:
        text = " ".join(_typo(w, rng) if rng.random() < lex.typo_rate else w for w in text.split(" "))
    return text


def varied_caption(scene: Scene, rng: random.Random) -> str:
    return phrased_caption(scene, rng, VARIED)


def paraphrase_caption(scene: Scene, rng: random.Random) -> str:
    return phrased_caption(scene, rng, PARAPHRASE)

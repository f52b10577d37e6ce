"""The words ShapesWorld's connectors were trained on: `ella generate` names the words of a prompt
outside them, so that a prompt this miniature cannot draw ("a fluffy orange cat") says so."""

from __future__ import annotations

import functools
import random
import re

WORD = re.compile(r"[a-z]+")


@functools.cache
def known_words() -> frozenset[str]:
    """Every word of the training caption styles: the dense, brief and relative grammars (read off
    generated captions) and the varied lexicon (read off its word lists, without typos)."""
    from .phrasing import VARIED
    from .styles import make_item
    from .world import sample_scene

    words: set[str] = set()
    rng = random.Random(0)
    for i in range(600):
        words |= set(WORD.findall(make_item(sample_scene(rng), rng, "v", ("dense", "brief", "relative")[i % 3])[0].lower()))
    texts = [*VARIED.openers, *VARIED.joiners, *VARIED.last_joiners, *VARIED.object_forms,
             *VARIED.object_forms_colour_after, *VARIED.background_forms, *VARIED.background_first_forms,
             *VARIED.list_forms, *VARIED.count_forms, *VARIED.fillers]
    texts += [w for table in (VARIED.sizes, VARIED.colors, VARIED.backgrounds) for ws in table.values() for w in ws]
    texts += [w for pairs in VARIED.shapes.values() for pair in pairs for w in pair]
    texts += [p for places in VARIED.places for p in places]
    for text in texts:
        words |= set(WORD.findall(re.sub(r"\{\w+\}", " ", text.lower())))
    return frozenset(words)


def unknown_words(prompt: str) -> list[str]:
    """The prompt's words ShapesWorld has never seen, in order, each once."""
    known, seen = known_words(), []
    for word in WORD.findall(prompt.lower()):
        if word not in known and word not in seen:
            seen.append(word)
    return seen

"""The words ShapesWorld's connectors were trained on: every word (`known_words`; `ella generate`
names a prompt's words outside them, each with the trained phrase its LLM reads it most like) and
every attribute phrase with its meaning (`phrase_table`, what the judge's text side reads)."""

from __future__ import annotations

import functools
import random
import re

from .phrasing import NUMBER_WORDS, VARIED
from .world import BACKGROUNDS, COLORS, RELATIVE_STEPS, SHAPES, SIZES, cell_name, place_phrase

WORD = re.compile(r"[a-z]+")


@functools.cache
def known_words() -> frozenset[str]:
    """Every word of the training caption styles: the dense, brief and relative grammars (read off
    generated captions) and the varied lexicon (read off its word lists, without typos)."""
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


_LEADING = {"at", "in", "on", "the", "very"}  # dropped from place phrases: "at the top left" reads as "top left"
RELATIONS = ("to the left of", "to the right of", "above", "below")  # the judge's relation questions


def _words(text: str) -> list[str]:
    return WORD.findall(text.lower())


@functools.cache
def phrase_table() -> dict[tuple[str, ...], tuple[str, object]]:
    """{words: (kind, value)} for every attribute phrase of the training captions."""
    table: dict[tuple[str, ...], set] = {}

    def add(phrase: str, kind: str, value) -> None:
        table.setdefault(tuple(_words(phrase)), set()).add((kind, value))

    for name in COLORS:
        for w in (name, *VARIED.colors[name]):
            add(w, "color", name)
    for name in SIZES:
        for w in (name, *VARIED.sizes[name]):
            add(w, "size", name)
    for name in BACKGROUNDS:
        for w in (name, *VARIED.backgrounds[name]):
            add(w, "background", name)
    for name in SHAPES:
        for singular, plural in ((name, name + "s"), *VARIED.shapes[name]):
            add(singular, "shape", name)
            add(plural, "plural", name)
    for cell in range(9):
        for phrase in (place_phrase(cell), cell_name(cell), *VARIED.places[cell]):
            words = _words(phrase)
            while len(words) > 1 and words[0] in _LEADING:
                words = words[1:]
            add(" ".join(words), "place", cell)
    for phrase, step in RELATIVE_STEPS.items():
        add(phrase, "relative", step)
    for relation in RELATIONS:
        add(relation, "relation", relation)
    for k, w in enumerate(NUMBER_WORDS[2:], start=2):
        add(w, "number", k)
    add("one", "one", 1)
    # A phrase with two meanings could not be read: it is left out (the training lexicon has none).
    return {words: next(iter(meanings)) for words, meanings in table.items() if len(meanings) == 1}


def unknown_words(prompt: str) -> list[str]:
    """The prompt's words ShapesWorld has never seen, in order, each once."""
    known, seen = known_words(), []
    for word in WORD.findall(prompt.lower()):
        if word not in known and word not in seen:
            seen.append(word)
    return seen


def nearest_trained_words(prompt: str, words: list[str], text_encoder, tokenizer, device=None) -> dict[str, str]:
    """For each of `words` (words of `prompt` no training caption uses): the training caption's
    attribute phrase (a colour, size, shape, background or place) the frozen LLM reads most like
    it, in this very prompt. The word's first occurrence is swapped for each trained phrase, every
    variant is encoded in one batch, and the features over the swapped span are compared (cosine)
    with the word's own. What it measures is the LLM's reading, which is all a connector trained on
    these phrases sees: "maroon" read most like "green" is drawn green (docs/shapesworld.md, "Words
    no caption taught", measures how often the nearest trained word is of the right class). It
    compares one reading of the prompt; a connector that reads an echo (a second reading) sees
    features close to it, not the same. `device`: where the LLM runs (the pipeline's execution
    device when offloading hooks keep its weights elsewhere)."""
    import torch

    from ..text_encoders import span_features

    candidates = [" ".join(w) for w, (kind, _) in phrase_table().items()
                  if kind in ("color", "size", "shape", "background", "place")]
    out = {}
    for word in words:
        match = re.search(rf"(?<![a-z]){re.escape(word)}(?![a-z])", prompt.lower())
        if match is None:
            continue
        head, tail = prompt[: match.start()], prompt[match.end() :]
        items = [(head + p + tail, len(head), len(head) + len(p)) for p in (word, *candidates)]
        span = span_features(text_encoder, tokenizer, items, device=device)  # (1 + candidates, D)
        similarity = torch.nn.functional.cosine_similarity(span[:1], span[1:], dim=-1)  # (candidates,)
        out[word] = candidates[int(similarity.argmax())]
    return out

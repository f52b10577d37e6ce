"""The exact judge's text side: what a caption says about a ShapesWorld scene, read with the
words ShapesWorld's training captions use (the `dense`/`brief`/`relative` grammar and the
`varied` lexicon), never the held-out `paraphrase` words.

`read_text` returns what `judge.analyse` returns for an image: (background, the object in each
of the 9 cells). So a caption is true to an image exactly when the two readings are equal: the
judge's every question (background, each object's place, colour, size and shape, counts,
relations) gets the same answer from the text as from the pixels. `ella caption --check shapes`
keeps an LLM's rewrite only then.

How a caption is read. Each shape noun is an object (the anchor of its words); "two red circles,
a big one ... and a small one ..." gives one object per "one", each a red circle. The words
between two anchors are split between them at one point; every split is tried, and a split is a
reading when each object gets exactly one colour, size and place (a place may be relative:
"below it" is the next cell down from the object named before). A caption is read only when all
its readings agree: a text with two readings is not read, whatever its words. Statements about
the objects named, counts ("in total: one circle and two squares") and relations ("the red circle
is above the blue square"), name no new object: each must hold for the reading, or nothing is read.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from .judge import Seen, analyse, answer
from .vocabulary import known_words, phrase_table
from .world import NUMBERS

MAX_OBJECTS = 9


@dataclass(frozen=True)
class Mention:
    start: int  # word index
    kind: str  # color, size, shape, plural, background, place, relative, relation, number, one
    value: object
    sentence: int = 0


def _sentences(text: str) -> tuple[list[str], list[int]]:
    """The words, and the sentence each is in (sentences end at '.')."""
    words, sentence_of, sentence = [], [], 0
    for token in re.findall(r"[a-z]+|\.", text.lower()):
        if token == ".":
            sentence += 1
        else:
            words.append(token)
            sentence_of.append(sentence)
    return words, sentence_of


def mentions(text: str) -> list[Mention] | None:
    """The caption's attribute phrases, longest first at each word, in order; None when a place
    phrase has a word ShapesWorld does not know beside it ("bttom right", "the far left"): that
    word may change the place, so the place cannot be read."""
    (words, sentence_of), table, known = _sentences(text), phrase_table(), known_words()
    longest = max(map(len, table))
    out, i = [], 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            hit = table.get(tuple(words[i : i + n]))
            if hit:
                beside = words[max(0, i - 1) : i] + words[i + n : i + n + 1]
                if hit[0] == "place" and any(w not in known for w in beside):
                    return None
                out.append(Mention(i, *hit, sentence_of[i]))
                i += n
                break
        else:
            i += 1
    return out


def _group_number(found: list[Mention], i: int) -> int | None:
    """Where the count of the plural noun found[i] is: a number word at most two phrases before it."""
    return next((j for j in range(i - 1, max(-1, i - 4), -1) if found[j].kind == "number"), None)


def _group_colours(found: list[Mention], i: int) -> list[Mention]:
    """The colour of the group the plural noun found[i] names: between its number and it ("two red
    circles"), or right after it ("two circles, each red")."""
    j = _group_number(found, i)
    return [] if j is None else [p for p in found[j + 1 : i] + found[i + 1 : i + 2] if p.kind == "color"]


def _is_count(found: list[Mention], i: int) -> bool:
    """Whether found[i] is a shape counted, not named: a number right before it and no colour
    ("in total: one circle and two squares"), where "two red circles, ..." names a group."""
    m = found[i]
    counted = m.kind in ("shape", "plural") and i > 0 and found[i - 1].kind in ("number", "one") \
        and found[i - 1].start == m.start - 1
    return counted and not (m.kind == "plural" and _group_colours(found, i))


def _anchors(found: list[Mention]) -> tuple[list[tuple[int, str, str | None]], set[int]] | None:
    """(word index, shape, colour fixed by a count group or None) per object, in order, and the
    word indices of the count groups' colours (theirs, no object's own). Count groups ("two red
    circles, a big one ... and a small one ...") give one object per "one"."""
    anchors, group, grouped = [], None, set()  # group: [shape, colour, objects left]
    for i, m in enumerate(found):
        if _is_count(found, i):
            continue  # "one circle", "two squares": a count statement (`_statements`), no new object
        if m.kind == "shape":
            anchors.append((m.start, m.value, None))
        elif m.kind == "plural":
            j, colours = _group_number(found, i), _group_colours(found, i)
            if j is None or len({p.value for p in colours}) != 1 or (group and group[2]):
                return None  # "circles" without a count, a group without one colour, or the last group unfinished
            group = [m.value, colours[0].value, found[j].value]
            grouped |= {p.start for p in colours}
        elif m.kind == "one" and group and group[2]:
            anchors.append((m.start, group[0], group[1]))
            group[2] -= 1
    if group and group[2]:
        return None  # "two circles" and fewer "one"s
    return anchors, grouped


def _read_span(found: list[Mention], fixed_colour: str | None) -> tuple | None:
    """(colour, size, place) said by one object's mentions, each exactly once (a place may be a
    relative step); None if any is missing or said two ways."""
    values = {}
    for kind in ("color", "size", "place"):
        said = {m.value for m in found if m.kind == kind or (kind == "place" and m.kind == "relative")}
        if kind == "color" and fixed_colour is not None:
            said |= {fixed_colour}
        if len(said) != 1:
            return None
        values[kind] = said.pop()
    return values["color"], values["size"], values["place"]


def _cell(place, previous: int | None) -> int | None:
    if isinstance(place, int):
        return place
    if previous is None:
        return None  # "below it" with nothing named before
    row, col = divmod(previous, 3)
    row, col = row + place[0], col + place[1]
    return row * 3 + col if 0 <= row < 3 and 0 <= col < 3 else None


def _reading(anchors, attributes: list[Mention], cuts: tuple[int, ...]) -> tuple | None:
    """The objects one split of the words gives: cut k (a word index) ends object k's words."""
    bounds = [-1, *cuts, 10**9]
    cells: list[tuple | None] = [None] * 9  # (colour, size, shape): hashable, to compare readings
    previous = None
    for k, (_, shape, fixed_colour) in enumerate(anchors):
        span = [m for m in attributes if bounds[k] < m.start <= bounds[k + 1]]
        said = _read_span(span, fixed_colour)
        if said is None:
            return None
        cell = _cell(said[2], previous)
        if cell is None or cells[cell] is not None:
            return None
        cells[cell], previous = (said[0], said[1], shape), cell
    return tuple(cells)


def _statements(found: list[Mention]) -> tuple[list[str], list[Mention]]:
    """The judge's questions the caption's statements ask ("In total: one circle and two squares.",
    "The red circle is above the blue square."), and the mentions left, which name the objects.
    A sentence with a relation is a statement about objects named elsewhere."""
    questions, left = [], []
    relation_sentences = {m.sentence for m in found if m.kind == "relation"}
    for sentence in sorted(relation_sentences):
        said = [m for m in found if m.sentence == sentence]
        if [m.kind for m in said] != ["color", "shape", "relation", "color", "shape"]:
            questions.append("unreadable")  # a relation between objects it does not name by colour and shape
            continue
        a_color, a_shape, rel, b_color, b_shape = (m.value for m in said)
        questions.append(f"is the {a_color} {a_shape} {rel} the {b_color} {b_shape}?")
    for i, m in enumerate(found):
        if m.sentence in relation_sentences:
            continue
        if _is_count(found, i):
            k = found[i - 1].value
            questions.append(f"{'is' if k == 1 else 'are'} there {NUMBERS[k]} {m.value}{'' if k == 1 else 's'}?")
        left.append(m)
    return questions, left


def read_text(text: str, background: bool = True) -> tuple[str | None, list[Seen | None]] | None:
    """(background, what each of the 9 cells holds), as `judge.analyse` gives for an image; None
    when the caption does not say it all in words ShapesWorld knows, or says it two ways.
    `background=False` reads a prompt, which may leave the background unsaid (then None: any)."""
    found = mentions(text)
    if found is None:
        return None
    questions, found = _statements(found)
    backgrounds = {m.value for m in found if m.kind == "background"}
    grouped = _anchors(found)
    if len(backgrounds) > 1 or (background and not backgrounds):
        return None
    if not grouped or not grouped[0] or len(grouped[0]) > MAX_OBJECTS:
        return None
    anchors = grouped[0]
    attributes = [m for m in found if m.kind in ("color", "size", "place", "relative") and m.start not in grouped[1]]
    # Object k's words end at its own anchor or at any attribute phrase before the next anchor:
    # those cuts give every distinct split.
    choices = [[anchors[k][0], *(m.start for m in attributes if anchors[k][0] < m.start < anchors[k + 1][0])]
               for k in range(len(anchors) - 1)]
    readings = set()
    for cuts in itertools.product(*choices):
        reading = _reading(anchors, attributes, cuts)
        if reading is not None:
            readings.add(reading)
            if len(readings) > 1:
                return None  # two readings: the text is ambiguous
    if not readings:
        return None
    analysis = (backgrounds.pop() if backgrounds else None), [None if c is None else Seen(*c) for c in readings.pop()]
    if any(q == "unreadable" or answer(analysis, q) != "yes" for q in questions):
        return None  # a count or a relation the objects named do not bear out
    return analysis


def compare(wanted: tuple[str | None, list[Seen | None]], seen: tuple[str, list[Seen | None]]) -> dict:
    """How an image (`judge.analyse`) draws a prompt's scene (`read_text(prompt, background=False)`):
    per object asked for, what its cell holds and whether that is exactly it; the objects drawn
    where none was asked (extras); the asked objects whose colour stands in more cells than asked
    (drawn twice: the cells of those asked); the background, when asked; and `exact`: all of it right, nothing else drawn."""
    (want_bg, want), (seen_bg, cells) = wanted, seen
    objects = [{"cell": i, "wanted": w, "seen": cells[i], "right": cells[i] == w}
               for i, w in enumerate(want) if w is not None]
    extras = [{"cell": i, "seen": s} for i, s in enumerate(cells) if s is not None and want[i] is None]
    def colour_cells(colour, objects_in):
        return sum(s is not None and s.color == colour for s in objects_in)

    # an asked object's colour in more cells than the prompt asks for it: drawn twice (or more)
    twice = [o["cell"] for o in objects if colour_cells(o["wanted"].color, cells) > colour_cells(o["wanted"].color, want)]
    background_right = want_bg is None or want_bg == seen_bg
    return {"objects": objects, "extras": extras, "drawn_twice": twice, "background_right": background_right,
            "exact": background_right and not extras and all(o["right"] for o in objects)}


def agrees(image, text: str) -> bool:
    """Whether `text` says exactly what the judge sees in `image` (`ella caption --check shapes`)."""
    return read_text(text) == analyse(image)

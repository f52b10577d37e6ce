"""The judge's text side (`ella.shapes.reader`): a caption is read as the judge reads an image,
and `agrees` is true exactly when the two readings are the same scene."""

import random

import pytest

from ella.shapes.judge import analyse
from ella.shapes.reader import agrees, read_text
from ella.shapes.styles import make_item
from ella.shapes.vocabulary import unknown_words
from ella.shapes.world import Obj, Scene, render, sample_scene


def _says_everything(text: str) -> bool:
    """Every word known (no typo) and a background named: what a caption needs to be read."""
    return not unknown_words(text) and any(w in text for w in ("black", "dark", "gray", "grey", "white"))


@pytest.mark.parametrize("style", ["dense", "brief", "relative", "varied"])
def test_every_training_caption_that_says_the_whole_scene_reads_as_its_image(style):
    rng, read = random.Random(7), 0
    for _ in range(300):
        scene = sample_scene(rng)
        text, _ = make_item(scene, rng, "x", style)
        if not _says_everything(text):
            continue
        assert read_text(text) == analyse(render(scene)), text
        read += 1
    assert read > 150  # the filter left most captions in


def test_the_held_out_words_are_never_read():
    """The judge reads with the training words only: a paraphrase (words no training caption uses)
    says nothing it can check, so no LLM rewrite in those words can pass as checked."""
    rng = random.Random(3)
    for _ in range(100):
        text, _ = make_item(sample_scene(rng), rng, "x", "paraphrase")
        assert read_text(text) is None, text


SCENE = Scene((Obj("circle", "red", "large", 0), Obj("square", "blue", "small", 4)), "white")


@pytest.mark.parametrize("text, true", [
    ("a large red circle at the top left and a small blue square in the center on a white background", True),
    ("on a bright white backdrop: in the upper left, a huge crimson disc; a tiny box in navy in the middle", True),
    ("a big red circle top left, a small blue square below it, over white", False),  # below it: cell 3, not 4
    ("a big red circle at the top left, a small blue square to its right, white background", False),
    ("a big red circle at the top left, a small blue square diagonally below it, white background", False),
    ("two red circles: a big one at the top left and a small one in the center, white background", False),
    ("a large red circle at the top left and a small green square in the center on a white background", False),
    ("a large red circle at the top left on a white background", False),  # the square left out
    ("a large red circle at the top left and a small blue square in the center", False),  # no background
    ("a large red circle at the far top left and a small blue square in the center on white", False),  # unknown beside a place
    ("a large red circle at the top left and a small blue square in the center on white. In total: one circle"
     " and one square. The red circle is above the blue square.", True),
    ("a large red circle at the top left and a small blue square in the center on white. In total: two circles.",
     False),  # a count the objects named do not bear out
    ("a large red circle at the top left and a small blue square in the center on white. The red circle is below"
     " the blue square.", False),
])
def test_a_caption_agrees_with_its_image_only_when_it_says_exactly_what_is_there(text, true):
    assert agrees(render(SCENE), text) is true


def test_count_groups_name_one_object_per_one():
    text = ("two red circles, a big one at the top left and a small one in the center, and a small blue square"
            " at the bottom right on black")
    background, cells = read_text(text)
    assert background == "black"
    assert [(c.color, c.size, c.shape) if c else None for c in cells] == [
        ("red", "large", "circle"), None, None, None, ("red", "small", "circle"), None, None, None,
        ("blue", "small", "square")]
    assert read_text(text.replace("a small one in the center", "")) is None  # two circles, one named


def test_each_new_word_is_named_with_the_trained_phrase_its_llm_reads_it_most_like():
    from ella.shapes.vocabulary import nearest_trained_words
    from ella.text_encoders import load_text_encoder

    model, tokenizer = load_text_encoder("minilm")
    prompt = "a huge crimson triangular shape in the upper left corner on a grey background"
    trained = ["huge", "crimson", "triangular shape", "upper left corner", "grey"]
    # A trained phrase put in its own place is read most like itself: the span compared is the swapped one.
    for phrase in trained:
        assert nearest_trained_words(prompt, [phrase], model, tokenizer) == {phrase: phrase}
    assert nearest_trained_words(prompt, ["absent"], model, tokenizer) == {}  # not in the prompt: nothing to say


def test_a_prompt_is_compared_with_an_image_object_by_object():
    """`compare` (the main-prompt table and its test): the exact scene is exact; a wrong shape, an
    extra object, an asked colour drawn twice and a wrong background are each named."""
    from ella.shapes.reader import compare

    prompt = "a large red circle at the top left, a small blue square below it"
    wanted = read_text(prompt, background=False)
    assert wanted[0] is None and read_text(prompt) is None  # no background said: a prompt, not a caption
    asked = (Obj("circle", "red", "large", 0), Obj("square", "blue", "small", 3))
    exact = compare(wanted, analyse(render(Scene(asked, "white"))))
    assert exact["exact"] and not exact["extras"] and not exact["drawn_twice"]
    assert [(o["cell"], o["right"]) for o in exact["objects"]] == [(0, True), (3, True)]

    extra = compare(wanted, analyse(render(Scene((*asked, Obj("square", "blue", "small", 6)), "gray"))))
    assert not extra["exact"] and [e["cell"] for e in extra["extras"]] == [6] and extra["drawn_twice"] == [3]
    wrong = compare(wanted, analyse(render(Scene((Obj("square", "red", "large", 0), asked[1]), "black"))))
    assert not wrong["exact"] and [o["right"] for o in wrong["objects"]] == [False, True] and not wrong["extras"]
    with_bg = read_text(prompt + ", white background", background=False)
    assert not compare(with_bg, analyse(render(Scene(asked, "black"))))["background_right"]

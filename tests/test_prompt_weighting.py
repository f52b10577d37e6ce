"""Prompt weighting: the parser, and the weights acting on the LLM's features only."""

import numpy as np
import pytest
import torch

from ella import ELLAStableDiffusionPipeline
from ella.prompt_weighting import apply_weights, parse_prompt_weights
from ella.testing import tiny_components


def weights_of(prompt: str) -> list[tuple[str, float]]:
    """(word, weight) for each space-separated word of the parsed text."""
    parsed = parse_prompt_weights(prompt)
    out, start = [], 0
    for word in parsed.text.split(" "):
        if word:
            out.append((word, round(parsed.weights[start], 6)))
        start += len(word) + 1
    return out


@pytest.mark.parametrize("prompt, expected", [
    ("a red circle", [("a", 1), ("red", 1), ("circle", 1)]),
    ("a (red:1.3) circle", [("a", 1), ("red", 1.3), ("circle", 1)]),
    ("a (red) circle", [("a", 1), ("red", 1.1), ("circle", 1)]),
    ("a ((red)) circle", [("a", 1), ("red", 1.21), ("circle", 1)]),
    ("a [red] circle", [("a", 1), ("red", round(1 / 1.1, 6)), ("circle", 1)]),
    ("(a [red] circle:2)", [("a", 2), ("red", round(2 / 1.1, 6)), ("circle", 2)]),
    ("((big red:1.5) circle:2)", [("big", 3), ("red", 3), ("circle", 2)]),
    ("a ( red : 0.5 ) circle", [("a", 1), ("red", 0.5), ("circle", 1)]),
    (r"a \(red\) circle", [("a", 1), ("(red)", 1), ("circle", 1)]),
    (r"\[x\] \\ y", [("[x]", 1), ("\\", 1), ("y", 1)]),
    ("[ratio 1:2] box", [("ratio", round(1 / 1.1, 6)), ("1:2", round(1 / 1.1, 6)), ("box", 1)]),
])
def test_parser(prompt, expected):
    assert weights_of(prompt) == expected


@pytest.mark.parametrize("prompt, message", [
    ("a (red circle", "'\\(' at character 3 .* never closed"),
    ("a red) circle", "unbalanced '\\)' at character 6"),
    ("a [red) circle", "unbalanced '\\)'"),
    ("(red:-1)", "not a positive number"),
    ("(red:0)", "not a positive number"),
    ("(red:fast)", "not a positive number"),
    ("(red:)", "not a positive number"),
    ("(red:inf)", "not a positive number"),
])
def test_parser_errors(prompt, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt_weights(prompt)


def make(text_mode):
    pipe = ELLAStableDiffusionPipeline(**tiny_components(with_clip=True), text_mode=text_mode)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("text_mode", ["flexible", "fixed"])
@pytest.mark.parametrize("mode", ["anchor", "scale"])
def test_weights_change_only_the_weighted_tokens_features_in_both_branches(text_mode, mode):
    pipe = make(text_mode)
    plain = pipe.encode_prompt("a big red circle", negative_prompt="a blue square")
    weighted = pipe.encode_prompt("a big (red:1.5) circle", negative_prompt="a [blue] square", prompt_weighting=mode)
    for p, w, token in ((plain[0], weighted[0], 2), (plain[2], weighted[2], 1)):
        changed = (p != w).any(-1)[0]  # (L,): which token positions differ
        assert changed.nonzero().flatten().tolist() == [token]
    if text_mode == "flexible":
        assert torch.equal(plain[1], weighted[1]) and torch.equal(plain[3], weighted[3])


@pytest.mark.parametrize("text_mode", ["flexible", "fixed"])
def test_attention_weights_ride_on_the_mask_of_the_weighted_tokens_in_both_branches(text_mode):
    pipe = make(text_mode)
    plain = pipe.encode_prompt("a big red circle", negative_prompt="a blue square")
    weighted = pipe.encode_prompt("a big (red:1.5) circle", negative_prompt="a [blue] square",
                                  prompt_weighting="attention")
    assert torch.equal(plain[0], weighted[0]) and torch.equal(plain[2], weighted[2])  # features untouched
    for mask, token, value in ((weighted[1], 2, 1.5), (weighted[3], 1, 1 / 1.1)):
        expected = torch.ones(mask.shape[1])
        expected[token] = value
        assert torch.allclose(mask[0], expected)
    # the connector sees it: its output moves, and a weight of 1 everywhere leaves it exactly as it was
    t = torch.tensor([500])
    out = pipe.ella(plain[0], t, plain[1])
    assert not torch.allclose(out, pipe.ella(weighted[0], t, weighted[1]))
    assert torch.equal(out, pipe.ella(plain[0], t, torch.ones(plain[0].shape[:2]) if plain[1] is None
                                      else plain[1].float()))


def test_attention_weighting_refuses_a_connector_without_attention():
    from ella import ELLA

    components = tiny_components()
    components["ella"] = ELLA.from_preset("tiny", connector_type="mlp")
    pipe = ELLAStableDiffusionPipeline(**components, text_mode="flexible")
    with pytest.raises(ValueError, match="MLP"):
        pipe.encode_prompt("a (red:2) circle", prompt_weighting=True)
    pipe.encode_prompt("a (red:2) circle", prompt_weighting="anchor")


@pytest.mark.parametrize("text_mode", ["flexible", "fixed"])
def test_weight_one_equals_no_weighting_exactly(text_mode):
    pipe = make(text_mode)
    kw = dict(num_inference_steps=2, output_type="np", negative_prompt="a blue square")
    plain = pipe("a big red circle", generator=torch.Generator().manual_seed(0), **kw).images
    ones = pipe("a (big:1.0) ((red:1):1) circle", generator=torch.Generator().manual_seed(0), prompt_weighting=True,
                **kw).images
    weighted = pipe("a big (red:1.5) circle", generator=torch.Generator().manual_seed(0), prompt_weighting=True,
                    **kw).images
    assert np.array_equal(plain, ones)
    assert not np.array_equal(plain, weighted)


def test_clip_reads_the_prompt_without_the_syntax():
    pipe = make("flexible")
    kw = dict(num_inference_steps=2, output_type="np", conditioning="clip")
    plain = pipe("a big red circle", generator=torch.Generator().manual_seed(0), **kw).images
    syntax = pipe("a big (red:1.3) circle", generator=torch.Generator().manual_seed(0), prompt_weighting=True,
                  **kw).images
    assert np.array_equal(plain, syntax)


def test_apply_weights_modes():
    from ella.text_encoders import TextFeatures

    features = TextFeatures(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), None)
    weights = torch.tensor([[1.0, 2.0]])
    assert apply_weights(features, weights, "scale").hidden_states.tolist() == [[[1.0, 2.0], [6.0, 8.0]]]
    empty = torch.tensor([1.0, 1.0])
    assert apply_weights(features, weights, "anchor", empty).hidden_states.tolist() == [[[1.0, 2.0], [5.0, 7.0]]]
    attention = apply_weights(features, weights, "attention")
    assert attention.hidden_states is features.hidden_states and attention.attention_mask.tolist() == [[1.0, 2.0]]
    with pytest.raises(ValueError, match="mode must be one of"):
        apply_weights(features, weights, "loud")


def test_weighting_needs_a_fast_tokenizer():
    from ella.prompt_weighting import token_weights

    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="fast tokenizer"):
        token_weights(Slow(), [parse_prompt_weights("(a:2)")], 8, 8)


def test_cli_weighting_syntax_errors_are_one_line_before_loading(tmp_path, capsys):
    from ella.cli import main

    assert main(["generate", "a (red circle", "--prompt-weighting", "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never closed" in err[0] and not (tmp_path / "o.png").exists()


def test_cli_weighted_prompt_with_an_int8_llm_on_the_shipped_model(tmp_path, capsys):
    from PIL import Image

    from ella.cli import main

    out = tmp_path / "o.png"
    assert main(["generate", "a large (red:1.5) circle at the top left", "--prompt-weighting", "--llm-precision",
                 "int8", "--steps", "4", "--out", str(out), "-q"]) == 0
    assert Image.open(out).size == (32, 32)
    assert "warning" not in capsys.readouterr().err  # the weighting syntax is no unknown word

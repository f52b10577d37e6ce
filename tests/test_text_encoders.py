import logging

import pytest
import torch

from ella.text_encoders import LLMEncoder, load_text_encoder, pad_features
from ella.tiny import TINY_WORDS, tiny_t5, word_tokenizer


def test_fixed_mode_pads_to_max_length_without_mask():
    model, tok = tiny_t5()
    f = LLMEncoder(model, tok, max_length=12, mode="fixed")(["a red circle", "two cats"])
    assert f.hidden_states.shape == (2, 12, 32) and f.attention_mask is None


def test_flexible_mode_masks_and_batch_equals_single():
    model, tok = tiny_t5()
    enc = LLMEncoder(model, tok, max_length=32, mode="flexible")
    f = enc(["a red circle", "a big blue square to the left of a tree"])
    assert f.attention_mask.sum(1).tolist() == [4, 11]  # words + </s>
    alone = enc(["a red circle"])
    assert alone.hidden_states.shape[1] == 4  # no padding within a prompt
    torch.testing.assert_close(f.hidden_states[0, :4], alone.hidden_states[0], atol=1e-5, rtol=1e-5)


def test_truncation_warning_names_the_cut(caplog):
    model, tok = tiny_t5()
    with caplog.at_level(logging.WARNING, logger="ella.text_encoders"):
        LLMEncoder(model, tok, max_length=5)(["a red circle and a blue square and a tree"])
    assert "prompt 0 is 11 tokens long: 6 tokens were cut (max_length=5)" in caplog.text


def test_decoder_only_llm_right_padded_last_hidden_state():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer(TINY_WORDS)
    tok.pad_token = None  # like most decoder-only tokenizers
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)).eval()
    enc = LLMEncoder(model, tok, max_length=16, mode="flexible")
    f = enc(["a cat", "a big red car on the street"])
    assert f.hidden_states.shape == (2, 8, 32)
    alone = enc(["a cat"])
    torch.testing.assert_close(f.hidden_states[0, :3], alone.hidden_states[0], atol=1e-5, rtol=1e-5)


def test_load_saved_t5_and_the_offline_minilm(tmp_path):
    model, tok = tiny_t5()
    model.save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    loaded, _ = load_text_encoder(str(tmp_path / "t5"))
    assert type(loaded).__name__ == "T5EncoderModel" and not loaded.training
    minilm, mtok = load_text_encoder("minilm")
    f = LLMEncoder(minilm, mtok, max_length=16, mode="flexible")(["a large red circle"])
    assert f.hidden_states.shape[-1] == 384
    with pytest.raises(ValueError, match="not found"):
        load_text_encoder(str(tmp_path / "nope"))


def test_pad_features_mixes_lengths():
    model, tok = tiny_t5()
    enc = LLMEncoder(model, tok, max_length=32, mode="flexible")
    both = pad_features([enc(["a cat"]), enc(["a big red car on the street"])])
    assert both.hidden_states.shape[:2] == (2, 8) and both.attention_mask.sum().item() == 3 + 8

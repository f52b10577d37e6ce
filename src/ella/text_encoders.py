"""Frozen language models as ELLA text encoders.

One interface for every family: `LLMEncoder(model, tokenizer)(prompts) -> TextFeatures` with
`hidden_states` (B, L, D) and `attention_mask` (B, L) or None.

- T5 / FLAN-T5 (the faithful default, `google/flan-t5-xl`, fp16 on GPU as ELLA was trained):
  the encoder's last hidden state.
- Decoder-only LLMs (Llama, SmolLM2, TinyLlama...): the last hidden state, right-padded so the
  real tokens never see padding through the causal mask. `echo=True` reads each prompt twice and
  keeps the second reading, so that every token has seen the whole prompt, not only its left.
- Any other HF encoder (BERT, all-MiniLM-L6-v2...): the last hidden state.

Two length modes (the ELLA repository's `inference.py` at 3c228f1 runs both):
- "fixed": pad and truncate to `max_length` (default 128). The padding positions are part of the
  conditioning, exactly as when the released connector was trained, so no mask is returned.
- "flexible": no padding within a prompt; a batch is padded to its longest prompt and the mask
  is returned, so the connector ignores padding and a batch equals its prompts run one by one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch

from . import devices
from .devices import LLM_PRECISIONS
from .offline_llms import MINILM, OFFLINE_LLMS, SMOLLM2, resolve_model_path  # noqa: F401 (re-exported)
from .paths import require_local_folder
from .published import FLAN_T5_XL

logger = logging.getLogger(__name__)

TEXT_MODES = ("fixed", "flexible")
DEFAULT_LLM = FLAN_T5_XL  # the LLM the released connector was trained on
QUANTIZATIONS = ("int8",)
@dataclass
class TextFeatures:
    hidden_states: torch.Tensor  # (B, L, D)
    attention_mask: torch.Tensor | None  # (B, L), 1 = real token; None = attend every position


def load_text_encoder(
    name_or_path: str, device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None,
    quantization: str | None = None,
):
    """Load (model, tokenizer) for any HF LLM: an encoder-decoder's encoder, a decoder-only LLM's
    base model, or an encoder; a hub id, a folder, or a `.gguf` file (dequantized by transformers).
    Frozen and in eval mode. `quantization="int8"` stores the linear layers' weights in int8
    (`Int8Linear`), computing in `torch_dtype`: a quarter of fp32's memory for those weights, half
    of fp16's."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS} or None, got {quantization!r}")
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

    path = resolve_model_path(name_or_path)
    kwargs, convert_to = {}, None
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise ValueError(f"GGUF file not found: {path}")
        converted = gguf_cache_folder(path)
        if os.path.isfile(os.path.join(converted, "config.json")):
            path = converted
        else:  # dequantized once (slow: transformers parses the file for each part), then cached
            path, kwargs["gguf_file"] = os.path.split(os.path.abspath(path))
            convert_to = converted if torch_dtype in (None, torch.float32) else None
    else:
        require_local_folder(path, "text encoder folder")
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path} is not a text encoder folder: it has no config.json")
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model_cls = T5EncoderModel if config.model_type in ("t5", "mt5", "umt5") else AutoModel
        model = model_cls.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except (OSError, ImportError) as err:  # ImportError: a GGUF file without the `gguf` package
        raise ValueError(f"cannot load text encoder {name_or_path!r}: {str(err).splitlines()[0]}") from err
    if convert_to:
        save_converted_gguf(model, tokenizer, convert_to)
    if config.is_encoder_decoder and hasattr(model, "get_encoder"):
        model = model.get_encoder()
    model.requires_grad_(False).eval().to(device)
    if quantization == "int8":
        quantize_int8(model)
    return model, tokenizer


def gguf_cache_folder(gguf_path: str) -> str:
    """Where the dequantized copy of a GGUF file lives: `$ELLA_CACHE` (default
    `~/.cache/ella`)/gguf/<file>-<digest of its path, size and time>, so a changed file is
    converted again."""
    import hashlib

    stat = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = os.environ.get("ELLA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ella")
    return os.path.join(root, "gguf", f"{os.path.basename(gguf_path)[:-5]}-{key}")


def save_converted_gguf(model, tokenizer, folder: str) -> None:
    """The fp32 model and its tokenizer as a plain folder, written whole or not at all: loading a
    GGUF file parses it once per part (SmolLM2-135M: 73.5 s on the 2-core development CPU), the
    folder in 0.7 s (docs/pipeline.md). A cache that cannot be written costs only the speed."""
    import shutil

    tmp = f"{folder}.tmp-{os.getpid()}"
    try:
        from safetensors.torch import save_model

        os.makedirs(tmp)
        # Not `model.save_pretrained`: transformers refuses it for a model loaded from GGUF, although
        # its weights are plain dequantized tensors by now.
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the folder holds plain fp32 weights
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        save_model(model, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
        logger.info("cached the dequantized GGUF model in %s", folder)
    except OSError as err:
        logger.warning("could not cache the dequantized GGUF model in %s (%s); it is converted again next time",
                       folder, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Int8Linear(torch.nn.Module):
    """A frozen linear layer with int8 weights: one absmax scale per output channel (the scheme of
    torchao's and bitsandbytes' weight-only int8), dequantized to the input's dtype at each call.
    Plain torch, so the same on the CPU and on any GPU; no dependency, no custom kernel (the
    saving is memory, not time)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()  # (out, in)
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127  # (out, 1)
        # `weight` itself is the int8 tensor: models that read `layer.weight.dtype` (T5 keeps its
        # activations out of an int8 layer's dtype) see what bitsandbytes' int8 layers show them.
        self.register_buffer("weight", torch.round(weight / scale).to(torch.int8))
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) * self.scale.to(x.dtype)
        return torch.nn.functional.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Every nn.Linear of `model` as an Int8Linear, in place (embeddings and norms stay as they are)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, Int8Linear(child))
    return model


def convert_llm(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """A loaded LLM in another precision, in place: its dtype, or int8 weights."""
    dtype, quantization = llm_precision_args(precision, next(model.parameters()).dtype)
    model.to(dtype)
    return quantize_int8(model) if quantization else model


def llm_precision_args(precision: str | None, default_dtype: torch.dtype) -> tuple[torch.dtype, str | None]:
    """(torch_dtype, quantization) for `load_text_encoder` from a precision name (None = the
    pipeline's dtype); int8 computes in the pipeline's dtype."""
    if precision is None:
        return default_dtype, None
    if precision not in LLM_PRECISIONS:
        raise ValueError(f"LLM precision must be one of {', '.join(LLM_PRECISIONS)}, got {precision!r}")
    if precision == "int8":
        return default_dtype, "int8"
    return devices.torch_dtype(precision), None


class LLMEncoder:
    """Encode prompts with a frozen LLM. Each prompt is encoded once per call."""

    def __init__(self, model, tokenizer, max_length: int = 128, mode: str = "fixed", echo: bool = False,
                 device: torch.device | None = None):
        if mode not in TEXT_MODES:
            raise ValueError(f"text mode must be one of {TEXT_MODES}, got {mode!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.mode, self.echo = max_length, mode, echo
        # Where the token ids go: the model's device, or the pipeline's execution device when
        # offloading hooks keep the weights elsewhere (on "meta") until the model runs.
        self.device = device
        if tokenizer.pad_token is None:  # decoder-only LLMs usually have none
            tokenizer.pad_token = tokenizer.eos_token
        # Right padding: with a causal LLM, left padding would shift every real token's position.
        tokenizer.padding_side = "right"

    def _warn_truncation(self, prompts: list[str], mask: torch.Tensor) -> None:
        """Only prompts that fill all `max_length` positions can have been cut: only those are
        tokenized again, untruncated, to count what was lost."""
        full = [i for i, n in enumerate(mask.sum(1).tolist()) if n >= self.max_length]
        if not full:
            return
        lengths = [len(ids) for ids in self.tokenizer([prompts[i] for i in full], truncation=False)["input_ids"]]
        for i, n in zip(full, lengths):
            if n > self.max_length:
                logger.warning(
                    "prompt %d is %d tokens long: %d tokens were cut (max_length=%d)",
                    i, n, n - self.max_length, self.max_length,
                )

    @torch.no_grad()
    def _encode(self, prompts: str | list[str], padding: str) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a string or a non-empty list of strings")
        tokens = self.tokenizer(
            prompts, padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        if tokens["input_ids"].shape[1] == 0:
            # Only empty prompts, and a tokenizer that adds no special token (SmolLM2, Llama without
            # BOS): one masked padding position, so the connector reads no text, as it does for ""
            # inside a batch of longer prompts.
            tokens = self.tokenizer(prompts, padding="max_length", max_length=1, return_tensors="pt")
        self._warn_truncation(prompts, tokens["attention_mask"])
        device = self.device or self.model.device
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        return (self._echo_hidden_state if self.echo else self._last_hidden_state)(ids, mask), mask

    def _echo_hidden_state(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Echo (Springer et al., 2024, "Repetition improves language model embeddings"): a causal
        LLM reads each prompt twice and we keep the second reading, where every token has seen the
        whole prompt. Row b is [its n_b real tokens; its full row of L tokens], right-padded to
        max(n) + L; the features are the L positions that follow its first reading."""
        lengths = mask.sum(1)  # (B,)
        b, length = ids.shape
        second = lengths[:, None] + torch.arange(length, device=ids.device)  # (B, L) second reading
        width = int(lengths.max()) + length
        echo_ids = ids.new_full((b, width), self.tokenizer.pad_token_id)
        echo_mask = mask.new_zeros((b, width))
        echo_ids[:, :length], echo_mask[:, :length] = ids, mask  # right-padded: the first reading, then padding
        echo_ids.scatter_(1, second, ids)  # the second reading overwrites that padding
        echo_mask.scatter_(1, second, mask)
        hidden = self._last_hidden_state(echo_ids, echo_mask)  # (B, max(n) + L, D)
        return hidden.gather(1, second[..., None].expand(-1, -1, hidden.shape[-1]))

    def _last_hidden_state(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:  # *ForCausalLM outputs carry only the per-layer hidden states
            hidden = out.hidden_states[-1]
        return hidden

    def __call__(self, prompts: list[str]) -> TextFeatures:
        if self.mode == "fixed":
            return TextFeatures(self._encode(prompts, "max_length")[0], None)
        return TextFeatures(*self._encode(prompts, "longest"))

    def encode_padded(self, prompts: list[str]) -> TextFeatures:
        """Features padded to `max_length` with their mask, whatever the mode: what training and
        the feature cache store (the mask is then used or not according to the mode). In flexible
        mode the LLM reads only up to the batch's longest prompt and the rest is zero padding,
        which the mask hides from the connector: the LLM's work at padding positions (most of it,
        for short captions) is skipped. Fixed mode feeds the padding positions' features to the
        connector, so there the LLM reads all `max_length` positions."""
        if self.mode == "fixed":
            return TextFeatures(*self._encode(prompts, "max_length"))
        hidden, mask = self._encode(prompts, "longest")
        pad = self.max_length - hidden.shape[1]
        return TextFeatures(torch.nn.functional.pad(hidden, (0, 0, 0, pad)), torch.nn.functional.pad(mask, (0, pad)))


@torch.no_grad()
def span_features(model, tokenizer, items: list[tuple[str, int, int]], layer: int | str = -1,
                  device: torch.device | None = None) -> torch.Tensor:
    """The LLM's hidden state over a character span of each text, averaged over the span's
    tokens: items are (text, start, end). `layer` picks the hidden state (-1: the last, which
    connectors read; "all": every one, embeddings first). (B, D), or (layers + 1, B, D)."""
    tokens = tokenizer([t for t, _, _ in items], padding=True, return_offsets_mapping=True, return_tensors="pt")
    offsets = tokens.pop("offset_mapping")  # (B, L, 2) characters of each token
    device = device or next(model.parameters()).device
    states = model(**{k: v.to(device) for k, v in tokens.items()}, output_hidden_states=True).hidden_states
    hidden = torch.stack(states) if layer == "all" else states[layer]  # ([layers,] B, L, D)
    starts = torch.tensor([s for _, s, _ in items])[:, None]
    ends = torch.tensor([e for _, _, e in items])[:, None]
    inside = (offsets[..., 0] < ends) & (offsets[..., 1] > starts) & (offsets[..., 1] > offsets[..., 0])
    inside &= tokens["attention_mask"].bool()
    weights = inside.float() / inside.sum(1, keepdim=True).clamp(min=1)  # (B, L)
    return torch.einsum("bl,...bld->...bd", weights, hidden.float().cpu())


def pad_features(features: list[TextFeatures]) -> TextFeatures:
    """Concatenate feature batches along the batch axis, right-padding to the longest with a
    mask. Batches without masks (fixed mode) must already share their length."""
    if all(f.attention_mask is None for f in features):
        return TextFeatures(torch.cat([f.hidden_states for f in features]), None)
    length = max(f.hidden_states.shape[1] for f in features)
    states, masks = [], []
    for f in features:
        b, n, _ = f.hidden_states.shape
        mask = f.attention_mask if f.attention_mask is not None else torch.ones(b, n, dtype=torch.long, device=f.hidden_states.device)
        states.append(torch.nn.functional.pad(f.hidden_states, (0, 0, 0, length - n)))
        masks.append(torch.nn.functional.pad(mask, (0, length - n)))
    return TextFeatures(torch.cat(states), torch.cat(masks))

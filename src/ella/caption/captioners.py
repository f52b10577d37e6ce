"""Captioners by name: any transformers image-text-to-text model, vLLM when installed, and those
plugins register (ShapesWorld's exact one).

    hf:MODEL | MODEL     a hub id or folder of an image-text-to-text model (LLaVA, Qwen2-VL /
                         Qwen2.5-VL, PaliGemma, SmolVLM, Idefics, BLIP-2, BLIP), transformers
    vllm:MODEL           the same through vLLM (GPU throughput; optional)
    rewrite:LLM          a text-only LLM (hub id, folder, .gguf file or offline name: smollm2)
                         that rewrites each sample's own caption in other words
    NAME[:ARG]           a plugin's (`registry.captioners[NAME]`), e.g. shapes, shapes:0.1
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# The prompt presets. `dense` asks for what the ELLA paper's captions were (Sec. 4.1: long, dense
# captions from a multimodal LLM, CogVLM): every object with its attributes, places and relations.
PROMPTS = {
    "dense": ("Describe this image in detail. Name every object, with its colour, size, shape, texture and place in"
              " the image, how the objects relate to each other, the background, the style and the lighting."
              " Describe only what is visible."),
    "short": "Describe this image in one short sentence.",
    # For `rewrite:LLM`: `{caption}` is the sample's own caption.
    "rewrite": ("Rewrite this image description in other words. Keep every object with its colour, size, shape and"
                ' place, and the background; add nothing: "{caption}"'),
}
DEFAULT_PROMPTS = {"rewrite": "rewrite"}  # the preset a captioner kind uses when none is given (others: dense)


@dataclass
class Captioner:
    """What every captioner is: an id and revision, the prompt and settings it ran with (written
    into every record), and `caption(images, originals) -> captions`."""

    name: str
    revision: str = ""
    prompt: str = ""
    settings: dict = field(default_factory=dict)

    def caption(self, images: list, originals: list[str | None]) -> list[str]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"captioner": self.name, "revision": self.revision, "prompt": self.prompt, "settings": self.settings}


class TransformersCaptioner(Captioner):
    """An image-text-to-text model through transformers' own classes (AutoModelForImageTextToText
    and its processor): chat models get the prompt through their chat template, the others
    (BLIP, PaliGemma) as plain text."""

    def __init__(self, model: str, prompt: str, max_new_tokens: int, device: str | None = None,
                 dtype: str | None = None):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        from ..devices import resolve_device, resolve_dtype

        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        config = _load(AutoConfig.from_pretrained, model)
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            raise ValueError(f"captioner {model} is a {config.model_type} model, which has no image-text-to-text head"
                             " (LLaVA, Qwen2-VL, PaliGemma, SmolVLM, Idefics, BLIP-2, BLIP have one)")
        self.processor = _load(AutoProcessor.from_pretrained, model)
        self.model = _load(AutoModelForImageTextToText.from_pretrained, model, dtype=torch_dtype).to(dev).eval()
        self.device, self.torch = dev, torch
        super().__init__(name=model, revision=getattr(config, "_commit_hash", None) or _folder_revision(model),
                         prompt=prompt, settings={"max_new_tokens": max_new_tokens, "do_sample": False,
                                                  "dtype": str(torch_dtype).removeprefix("torch.")})

    def _texts(self, n: int) -> list[str]:
        template = getattr(self.processor, "chat_template", None)
        if not template:
            return [self.prompt] * n
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        return [self.processor.apply_chat_template(messages, add_generation_prompt=True)] * n

    def caption(self, images, originals):
        inputs = self.processor(images=images, text=self._texts(len(images)), return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with self.torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.settings["max_new_tokens"], do_sample=False)
        if not self.model.config.is_encoder_decoder and "input_ids" in inputs:
            out = out[:, inputs["input_ids"].shape[1]:]  # decoder-only: the prompt comes back first
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts]


class VLLMCaptioner(Captioner):
    """The same models through vLLM (continuous batching on a GPU); needs `pip install vllm`."""

    def __init__(self, model: str, prompt: str, max_new_tokens: int):
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise ValueError("the vllm captioner needs vLLM installed (pip install vllm; a CUDA GPU)") from None
        self.llm = LLM(model=model)
        self.params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        super().__init__(name=f"vllm:{model}", revision=_folder_revision(model), prompt=prompt,
                         settings={"max_new_tokens": max_new_tokens, "temperature": 0.0})

    def caption(self, images, originals):
        messages = [[{"role": "user", "content": [{"type": "image_pil", "image_pil": image},
                                                  {"type": "text", "text": self.prompt}]}] for image in images]
        return [o.outputs[0].text.strip() for o in self.llm.chat(messages, self.params, use_tqdm=False)]


class RewriteCaptioner(Captioner):
    """A text-only LLM rewrites each sample's own caption (the image is not shown to it): captions
    in other words for the same images, as language models wrote DALL-E 3's and ELLA's training
    prompts. Sampled (temperature 0.7, top-p 0.9) so the words vary, from a seed drawn from the
    batch's captions, so a rerun writes the same rewrites. A sample without a caption gets none.
    Whether a rewrite stayed true to its image is `ella caption --check`'s question."""

    def __init__(self, model: str, prompt: str, max_new_tokens: int, device: str | None = None,
                 dtype: str | None = None):
        import torch

        from ..devices import resolve_device, resolve_dtype

        if "{caption}" not in prompt:
            raise ValueError("the rewrite captioner's prompt must hold {caption} (the sample's own caption); got"
                             f" {prompt!r}")
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        self.model, self.tokenizer, revision = load_causal_lm(model, torch_dtype)
        self.model.to(dev)
        self.tokenizer.padding_side = "left"  # generation continues each row from its last real token
        self.tokenizer.pad_token = self.tokenizer.pad_token or self.tokenizer.eos_token
        self.device, self.torch = dev, torch
        super().__init__(name=f"rewrite:{model}", revision=revision, prompt=prompt, settings={
            "max_new_tokens": max_new_tokens, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
            "dtype": str(torch_dtype).removeprefix("torch.")})

    def _chat(self, caption: str) -> str:
        text = self.prompt.replace("{caption}", caption)
        if not getattr(self.tokenizer, "chat_template", None):
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def caption(self, images, originals):
        import hashlib

        todo = [i for i, o in enumerate(originals) if o]
        out = [""] * len(originals)
        if not todo:
            return out
        tokens = self.tokenizer([self._chat(originals[i]) for i in todo], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(self.device)
        seed = int.from_bytes(hashlib.sha256("\n".join(originals[i] for i in todo).encode()).digest()[:8], "little")
        generator_state = self.torch.random.get_rng_state()
        self.torch.manual_seed(seed)
        try:
            with self.torch.no_grad():
                ids = self.model.generate(**tokens, max_new_tokens=self.settings["max_new_tokens"], do_sample=True,
                                          temperature=0.7, top_p=0.9, pad_token_id=self.tokenizer.pad_token_id)
        finally:
            self.torch.random.set_rng_state(generator_state)  # the caller's random stream is left as it was
        texts = self.tokenizer.batch_decode(ids[:, tokens["input_ids"].shape[1]:], skip_special_tokens=True)
        for i, text in zip(todo, texts):
            out[i] = " ".join(text.split()).strip().strip('"').strip()
        return out


def load_causal_lm(model: str, dtype, what: str = "captioner"):
    """(model, tokenizer, revision) of a text-generating LLM: a hub id, a folder, a `.gguf` file or
    an offline name (`ella.offline_llms`). A GGUF file is dequantized once, into the folder the
    text encoders use too (`text_encoders.gguf_cache_folder`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..offline_llms import resolve_model_path
    from ..text_encoders import gguf_cache_folder, load_text_encoder

    path = resolve_model_path(model)
    if path.endswith(".gguf"):
        load_text_encoder(path)  # converts and caches the file (once)
        path = gguf_cache_folder(path)
    tokenizer = _load(AutoTokenizer.from_pretrained, path, what)
    lm = _load(AutoModelForCausalLM.from_pretrained, path, what, dtype=dtype).eval()
    if not hasattr(lm, "generate") or not getattr(lm, "can_generate", lambda: False)():
        raise ValueError(f"the {what} needs a text-generating LLM; {model} cannot generate")
    return lm, tokenizer, getattr(lm.config, "_commit_hash", None) or _folder_revision(path)


def _load(loader, model: str, what: str = "captioner", **kwargs):
    """A transformers `from_pretrained`, with its failures as one line that names the model."""
    from ..paths import require_local_folder

    require_local_folder(model, what)
    try:
        return loader(model, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load {what} {model}: {str(err).strip().splitlines()[0]}") from err


def _folder_revision(model: str) -> str:
    """A local folder's revision: the digest of its config (the hub gives a commit instead)."""
    import hashlib

    config = os.path.join(model, "config.json")
    if not os.path.isfile(config):
        return ""
    with open(config, "rb") as f:
        return "config-sha256:" + hashlib.sha256(f.read()).hexdigest()[:16]


def load_captioner(spec: str, prompt: str | None = None, max_new_tokens: int = 256, device: str | None = None,
                   dtype: str | None = None) -> Captioner:
    """The captioner `spec` names (see the module docstring); `prompt` is a preset name or the text
    (default: the kind's own preset, `dense` for image captioners, `rewrite` for `rewrite:LLM`)."""
    from ..plugins import lookup

    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    name, _, arg = spec.partition(":")
    prompt = prompt or DEFAULT_PROMPTS.get(name, "dense")
    text = PROMPTS.get(prompt, prompt)
    plugin = lookup("captioners", name)
    if plugin is not None or name == "vllm":  # these choose their own device and dtype
        given = [f"--{k} {v}" for k, v in (("device", device), ("dtype", dtype)) if v not in (None, "auto")]
        if given:
            raise ValueError(f"the {name} captioner chooses its own device and dtype: drop {' and '.join(given)}")
    if plugin is not None:
        return plugin(arg)
    if name == "rewrite":
        if not arg:
            raise ValueError("the rewrite captioner names its LLM: rewrite:LLM (a hub id, a folder, a .gguf file or"
                             " smollm2)")
        return RewriteCaptioner(arg, text, max_new_tokens, device, dtype)
    if name == "vllm":
        return VLLMCaptioner(arg, text, max_new_tokens)
    model = arg if name == "hf" else spec
    if not model or not (os.path.isdir(model) or "/" in model):
        from ..plugins import registry

        known = ", ".join(["hf:MODEL", "vllm:MODEL", "rewrite:LLM", *registry().captioners])
        raise ValueError(f"unknown captioner {spec!r}: use {known}, or a model folder or hub id")
    return TransformersCaptioner(model, text, max_new_tokens, device, dtype)

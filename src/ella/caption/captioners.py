"""Captioners by name: any transformers image-text-to-text model, vLLM when installed, and those
plugins register (ShapesWorld's exact one).

    hf:MODEL | MODEL     a hub id or folder of an image-text-to-text model (LLaVA, Qwen2-VL /
                         Qwen2.5-VL, PaliGemma, SmolVLM, Idefics, BLIP-2, BLIP), transformers
    vllm:MODEL           the same through vLLM (GPU throughput; optional)
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
}


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


def _load(loader, model: str, **kwargs):
    """A transformers `from_pretrained`, with its failures as one line that names the model."""
    from ..paths import require_local_folder

    require_local_folder(model, "captioner")
    try:
        return loader(model, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load captioner {model}: {str(err).strip().splitlines()[0]}") from err


def _folder_revision(model: str) -> str:
    """A local folder's revision: the digest of its config (the hub gives a commit instead)."""
    import hashlib

    config = os.path.join(model, "config.json")
    if not os.path.isfile(config):
        return ""
    with open(config, "rb") as f:
        return "config-sha256:" + hashlib.sha256(f.read()).hexdigest()[:16]


def load_captioner(spec: str, prompt: str = "dense", max_new_tokens: int = 256, device: str | None = None,
                   dtype: str | None = None) -> Captioner:
    """The captioner `spec` names (see the module docstring); `prompt` is a preset name or the text."""
    from ..plugins import lookup

    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    text = PROMPTS.get(prompt, prompt)
    name, _, arg = spec.partition(":")
    plugin = lookup("captioners", name)
    if plugin is not None:
        return plugin(arg)
    if name == "vllm":
        return VLLMCaptioner(arg, text, max_new_tokens)
    model = arg if name == "hf" else spec
    if not model or not (os.path.isdir(model) or "/" in model):
        from ..plugins import registry

        known = ", ".join(["hf:MODEL", "vllm:MODEL", *registry().captioners])
        raise ValueError(f"unknown captioner {spec!r}: use {known}, or a model folder or hub id")
    return TransformersCaptioner(model, text, max_new_tokens, device, dtype)

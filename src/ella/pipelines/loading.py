"""Assemble an ELLA pipeline from a saved pipeline folder, or from a Stable Diffusion model,
an ELLA connector and an LLM (the published inference setup)."""

from __future__ import annotations

import json
import logging
import os

import torch

from ..devices import resolve_device, resolve_dtype
from ..models import ELLA
from ..paths import require_local_folder
from ..plugins import lookup
from ..samplers import scheduler_class
from ..text_encoders import DEFAULT_LLM, convert_llm, llm_precision_args, load_text_encoder
from .pipeline_ella import ELLAStableDiffusionPipeline
from .pipeline_ella_xl import ELLAStableDiffusionXLPipeline

logger = logging.getLogger(__name__)

def load_unet(model: str, subfolder: str | None = "unet", torch_dtype: torch.dtype | None = None):
    """A UNet from a model folder or hub id, as the class its config names: diffusers'
    `UNet2DConditionModel`, or a class a plugin registered under that name (ShapesWorld's UNet
    with a position embedding: loading it as the plain class would silently drop the embedding)."""
    from diffusers import UNet2DConditionModel

    config = os.path.join(model, subfolder or "", "config.json")
    cls = UNet2DConditionModel
    if os.path.isfile(config):
        with open(config) as f:
            cls = lookup("unet_classes", json.load(f).get("_class_name", "")) or cls
    return cls.from_pretrained(model, subfolder=subfolder, torch_dtype=torch_dtype)


def load_connector(path: str, torch_dtype: torch.dtype | None = None, heads: int | None = None) -> ELLA:
    """A connector from a single file (`*.safetensors`: the official one, whose `heads` the
    weights cannot tell, or one with its config) or a `save_pretrained` folder, local or on the
    hub (`QQGYLab/ELLA`, `ORG/NAME/FILE.safetensors`: `ella.hub`)."""
    return ELLA.from_pretrained(path, torch_dtype=torch_dtype, heads=heads)


PIPELINES = {cls.__name__: cls for cls in (ELLAStableDiffusionPipeline, ELLAStableDiffusionXLPipeline)}


def ella_pipeline_class(path: str) -> type | None:
    """The ELLA pipeline class a saved folder holds, or None (not a saved ELLA pipeline)."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        return None
    with open(index) as f:
        return PIPELINES.get(json.load(f).get("_class_name"))


def load_clip(model: str, torch_dtype: torch.dtype, sdxl: bool) -> dict:
    """The model's own CLIP text encoder(s), for the base model beside ELLA (`conditioning="clip"`,
    `--compare`, the demo), ELLA+CLIP, and SDXL's pooled embedding; {} when the model has none
    (the XL pipeline then uses SDXL's zero pooled embedding)."""
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    parts = [("clip_text_encoder", CLIPTextModel, "text_encoder"), ("clip_tokenizer", AutoTokenizer, "tokenizer")]
    if sdxl:
        parts += [("clip_text_encoder_2", CLIPTextModelWithProjection, "text_encoder_2"),
                  ("clip_tokenizer_2", AutoTokenizer, "tokenizer_2")]
    try:
        return {name: cls.from_pretrained(model, subfolder=sub, **({} if "tokenizer" in name else {"dtype": torch_dtype}))
                for name, cls, sub in parts}
    except OSError as err:
        logger.warning("model %s without loadable CLIP text encoders (%s): ELLA only%s", model, str(err).splitlines()[0],
                       "; pooled text embedding = zeros" if sdxl else "")
        return {}


def load_pipeline(
    model: str,
    ella: str | None = None,
    llm: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    text_mode: str = "fixed",
    text_max_length: int = 128,
    llm_precision: str | None = None,
) -> ELLAStableDiffusionPipeline:
    """`model` is a saved ELLA pipeline folder, or a Stable Diffusion 1.5 / SDXL folder or hub id;
    in the second case `ella` (connector file or folder) is required and `llm` is the text encoder
    (default: FLAN-T5-XL, as published); a saved pipeline brings its own, so it takes neither.
    An SDXL UNet gets `ELLAStableDiffusionXLPipeline` with SDXL's CLIP encoders (pooled embedding).
    The LLM runs in fp16 on an accelerator (faithful to training), fp32 on the CPU, unless
    `llm_precision` (fp32, bf16, fp16, int8) says otherwise."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    require_local_folder(model, "model folder")
    saved = ella_pipeline_class(model) if os.path.isdir(model) else None
    if saved is not None:
        if ella is not None or llm is not None:
            raise ValueError(f"{model} is a saved ELLA pipeline with its own connector and LLM: drop --ella and --llm")
        pipe = saved.from_pretrained(model, torch_dtype=torch_dtype).to(dev)
        if llm_precision is not None and pipe.text_encoder is not None:
            convert_llm(pipe.text_encoder, llm_precision)
        return pipe
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler

    if ella is None:
        raise ValueError(f"{model} is not an ELLA pipeline folder: pass the connector with --ella PATH")
    connector = load_connector(ella, torch_dtype)  # first: small, local, and the likeliest typo
    missing = [f for f in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")
               if os.path.isdir(model) and not os.path.isfile(os.path.join(model, f))]
    if missing:  # said here, not as the hub client's "couldn't connect" for a local folder
        raise ValueError(f"{model} is not a Stable Diffusion folder: it has no {', '.join(missing)}")
    try:
        unet = load_unet(model, "unet", torch_dtype)
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=torch_dtype)
        scheduler = DPMSolverMultistepScheduler.from_pretrained(model, subfolder="scheduler")
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load Stable Diffusion model {model!r}: {str(err).splitlines()[0]}") from err
    llm_dtype, quantization = llm_precision_args(llm_precision, torch_dtype)
    text_encoder, tokenizer = load_text_encoder(llm or DEFAULT_LLM, dev, llm_dtype, quantization)
    sdxl = unet.config.addition_embed_type == "text_time"
    cls, clip = ELLAStableDiffusionXLPipeline if sdxl else ELLAStableDiffusionPipeline, load_clip(model, torch_dtype, sdxl)
    pipe = cls(
        unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, ella=connector,
        text_max_length=text_max_length, text_mode=text_mode, **clip,
    )
    return pipe.to(dev)


def call_defaults(pipe: ELLAStableDiffusionPipeline) -> dict:
    """The published inference defaults of the pipeline's model family (`ella.published`), as
    pipeline arguments: num_inference_steps, guidance_scale, height, width."""
    from ..published import FAMILY_DEFAULTS

    d = FAMILY_DEFAULTS["sdxl" if isinstance(pipe, ELLAStableDiffusionXLPipeline) else "sd1.5"]
    return dict(num_inference_steps=d.steps, guidance_scale=d.guidance, height=d.size, width=d.size)


def load_preset(name: str, device: str | None = None, dtype: str | None = None,
                llm_precision: str | None = None) -> tuple[ELLAStableDiffusionPipeline, dict]:
    """(pipeline, its published call defaults) for a preset of `ella.published.PRESETS`:
    `load_preset("sd1.5-t5xl")` is SD1.5 + FLAN-T5-XL's encoder + the official connector from the
    hub (cached after the first run), fp16 on CUDA as released, with the web demo's sampler and
    defaults. On the CPU it runs in fp32, slowly: a warning says so."""
    from ..published import preset

    chosen = preset(name)
    dev = resolve_device(device)
    if dev.type == "cpu":
        logger.warning("the %s preset on the CPU: about 9 GB of fp32 weights and minutes per image; it was made for"
                       " a CUDA GPU (fp16, seconds per image)", name)
    pipe = load_pipeline(chosen.model, chosen.ella, chosen.llm, str(dev), dtype, llm_precision=llm_precision)
    pipe.scheduler = scheduler_class(chosen.defaults.scheduler).from_config(pipe.scheduler.config)
    return pipe, call_defaults(pipe)

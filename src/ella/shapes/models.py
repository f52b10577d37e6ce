"""Loading the shipped ShapesWorld models (`catalog` lists them) as one ELLA pipeline."""

from __future__ import annotations

import os

from .catalog import CONNECTORS, DEFAULT_CONNECTOR, shipped_model_dir


def load_shapes_pipeline(model_dir: str | None = None, connector: str | None = DEFAULT_CONNECTOR, device=None, dtype=None):
    """The ShapesWorld pipeline: base UNet + base text encoder (conditioning="clip") and the
    frozen LLM of the connector + the connector (conditioning="ella"), sharing one UNet.
    `connector=None` loads the base model alone (with MiniLM)."""
    from diffusers import DPMSolverMultistepScheduler
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    from ..devices import resolve_device, resolve_dtype
    from ..models import ELLA
    from ..offline_llms import MINILM
    from ..pipelines import ELLAStableDiffusionPipeline
    from ..pipelines.loading import load_unet
    from ..text_encoders import load_text_encoder

    model_dir = model_dir or shipped_model_dir()
    if model_dir is None or not os.path.isdir(os.path.join(model_dir, "unet")):
        raise ValueError(f"not a ShapesWorld model folder: {model_dir}")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev) if dtype not in (None, "auto") else resolve_dtype("fp32", dev)
    ella = None
    if connector is not None:
        connector_dir = os.path.join(model_dir, f"ella-{connector}")
        if not os.path.isdir(connector_dir):
            raise ValueError(f"no connector {connector!r} in {model_dir}")
        ella = ELLA.from_pretrained(connector_dir, torch_dtype=torch_dtype)
    reads = CONNECTORS.get(connector)
    text_encoder, tokenizer = load_text_encoder(reads.llm if reads else MINILM, dev, torch_dtype)
    pipe = ELLAStableDiffusionPipeline(
        unet=load_unet(model_dir, "unet", torch_dtype),
        scheduler=DPMSolverMultistepScheduler.from_pretrained(model_dir, subfolder="scheduler"),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        ella=ella,
        clip_text_encoder=CLIPTextModel.from_pretrained(os.path.join(model_dir, "base_text_encoder"), dtype=torch_dtype),
        clip_tokenizer=PreTrainedTokenizerFast.from_pretrained(os.path.join(model_dir, "base_tokenizer")),
        text_max_length=128,
        text_mode="flexible",
        text_echo=bool(reads and reads.echo),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)

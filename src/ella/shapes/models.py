"""The shipped ShapesWorld models: one folder with the base model's parts and the connectors.

    unet/  base_text_encoder/  base_tokenizer/  scheduler/   the base model (plays SD1.5 + CLIP)
    ella-tsc/                                                the default connector (all-MiniLM-L6-v2):
                                                             dense and brief prompts, relative places
    ella-tsc-dense/  ella-resampler/  ella-mlp/              the ablation's connectors: dense prompts
    ella-tsc-smollm2/  ella-tsc-smollm2-echo/                the TSC on SmolLM2-135M (optional LLM)
"""

from __future__ import annotations

import os
from typing import NamedTuple

from ..text_encoders import MINILM, SMOLLM2

# `ella generate` defaults for ShapesWorld: 25 steps with CFG, 32x32, and a 256 px view copy.
SHAPES_DEFAULTS = dict(steps=25, guidance=5.0, size=(32, 32), view_size=256)
ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "shapes")


class ConnectorLLM(NamedTuple):
    """How a shipped connector reads its prompts: the frozen LLM (an alias of
    text_encoders.OFFLINE_LLMS) and whether it reads each prompt twice (`LLMEncoder(echo=...)`)."""

    llm: str
    echo: bool = False


CONNECTORS = {
    "tsc": ConnectorLLM(MINILM),
    "tsc-dense": ConnectorLLM(MINILM),
    "resampler": ConnectorLLM(MINILM),
    "mlp": ConnectorLLM(MINILM),
    "tsc-smollm2": ConnectorLLM(SMOLLM2),
    "tsc-smollm2-echo": ConnectorLLM(SMOLLM2, echo=True),
}


def shipped_model_dir() -> str | None:
    return ASSETS if os.path.isfile(os.path.join(ASSETS, "unet", "config.json")) else None


def load_shapes_pipeline(model_dir: str | None = None, connector: str | None = "tsc", device=None, dtype=None):
    """The ShapesWorld pipeline: base UNet + base text encoder (conditioning="clip") and the
    frozen LLM of the connector + the connector (conditioning="ella"), sharing one UNet.
    `connector=None` loads the base model alone (with MiniLM)."""
    from diffusers import DPMSolverMultistepScheduler
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    from ..models import ELLA
    from ..pipelines import ELLAStableDiffusionPipeline
    from ..pipelines.loading import load_unet, resolve_device, resolve_dtype
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
    reads = CONNECTORS.get(connector, ConnectorLLM(MINILM))
    text_encoder, tokenizer = load_text_encoder(reads.llm, dev, torch_dtype)
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
        text_echo=reads.echo,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)

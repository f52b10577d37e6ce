"""ella-diffusion: ELLA connectors, LLM text encoders, pipelines, training and DPG-Bench.

The public names are imported on first use (PEP 562), so `import ella` and `ella --help` do not
pay for torch, diffusers and transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ELLA": "ella.models.connector",
    "PRESETS": "ella.models.connector",
    "CheckpointError": "ella.models.checkpoint",
    "ELLAStableDiffusionPipeline": "ella.pipelines.pipeline_ella",
    "ELLAStableDiffusionImg2ImgPipeline": "ella.pipelines.pipeline_ella_img2img",
    "ELLAStableDiffusionInpaintPipeline": "ella.pipelines.pipeline_ella_img2img",
    "ELLAStableDiffusionXLPipeline": "ella.pipelines.pipeline_ella_xl",
    "ELLAStableDiffusionXLImg2ImgPipeline": "ella.pipelines.pipeline_ella_img2img",
    "ELLAStableDiffusionXLInpaintPipeline": "ella.pipelines.pipeline_ella_img2img",
    "load_pipeline": "ella.pipelines.loading",
    "load_preset": "ella.pipelines.loading",
    "LLMEncoder": "ella.text_encoders",
    "load_text_encoder": "ella.text_encoders",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'ella' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

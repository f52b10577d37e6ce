from .pipeline_ella import CONDITIONINGS, ELLAStableDiffusionPipeline
from .pipeline_ella_img2img import (
    ELLAStableDiffusionImg2ImgPipeline,
    ELLAStableDiffusionInpaintPipeline,
    ELLAStableDiffusionXLImg2ImgPipeline,
    ELLAStableDiffusionXLInpaintPipeline,
)
from .pipeline_ella_xl import ELLAStableDiffusionXLPipeline

__all__ = ["CONDITIONINGS", "ELLAStableDiffusionImg2ImgPipeline", "ELLAStableDiffusionInpaintPipeline",
           "ELLAStableDiffusionPipeline", "ELLAStableDiffusionXLImg2ImgPipeline", "ELLAStableDiffusionXLInpaintPipeline",
           "ELLAStableDiffusionXLPipeline"]

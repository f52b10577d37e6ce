from .pipeline_ella import CONDITIONINGS, ELLAStableDiffusionPipeline
from .pipeline_ella_xl import ELLAStableDiffusionXLPipeline

__all__ = ["CONDITIONINGS", "ELLAStableDiffusionPipeline", "ELLAStableDiffusionXLPipeline"]

from .pipeline_ella import CONDITIONINGS, ELLAStableDiffusionPipeline

__all__ = ["CONDITIONINGS", "ELLAStableDiffusionPipeline"]

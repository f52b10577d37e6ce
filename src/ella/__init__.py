"""ella-diffusion: ELLA connectors, LLM text encoders, pipelines, training and DPG-Bench."""

from .models import ELLA, PRESETS, CheckpointError
from .pipelines import ELLAStableDiffusionPipeline, ELLAStableDiffusionXLPipeline
from .shapes.unet import ShapesUNet2DConditionModel
from .text_encoders import LLMEncoder, TextFeatures, load_text_encoder

__version__ = "0.1.0"
__all__ = ["ELLA", "PRESETS", "CheckpointError", "ELLAStableDiffusionPipeline", "ELLAStableDiffusionXLPipeline",
           "LLMEncoder", "ShapesUNet2DConditionModel", "TextFeatures", "load_text_encoder"]

"""Training ELLA connectors against a frozen UNet, VAE and LLM."""

from .config import TrainConfig, load_config
from .loop import train

__all__ = ["TrainConfig", "load_config", "train"]

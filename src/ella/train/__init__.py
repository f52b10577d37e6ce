"""Training ELLA connectors against a frozen UNet, VAE and LLM.

`train` and the config load on first use: `ella caption` reads data through `ella.train.records`
without importing the training loop (diffusers, seconds of imports)."""

__all__ = ["TrainConfig", "load_config", "train"]


def __getattr__(name: str):
    if name in ("TrainConfig", "load_config"):
        from . import config

        return getattr(config, name)
    if name == "train":
        from .loop import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

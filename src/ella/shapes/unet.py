"""The ShapesWorld UNet: diffusers' `UNet2DConditionModel` plus a learned absolute position
embedding added to the output of `conv_in`.

Why: convolutions are translation-equivariant and diffusers' attention has no position encoding,
so a plain UNet can tell "top left" from "center" only through zero padding at the borders. The
first ShapesWorld base (2500 steps, then 1700 more) never learned it: asked for one object at a
named cell of the 3x3 grid, it put an object there in 16-18 of 64 images, the rate of objects
scattered at random. Large models learn positions from data; a 4M-parameter UNet on a CPU budget
needs the hint. The embedding starts at zero, so a trained plain UNet loads into this class
unchanged and then learns to use it.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DConditionModel  # noqa: F401 (ModelMixin: see below)
from torch import nn

# diffusers loads a pipeline component of a non-diffusers class by looking for its base classes
# (`ModelMixin`) in the class's own module, so this module must expose ModelMixin.


class PositionalConv2d(nn.Conv2d):
    """conv_in + a learned (1, C, S, S) position embedding (resized for other sample sizes)."""

    def __init__(self, conv: nn.Conv2d, size: int):
        with torch.random.fork_rng():  # the weights are conv's: leave the caller's random stream as it was
            super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
        self.load_state_dict(conv.state_dict(), strict=False)
        self.position = nn.Parameter(torch.zeros(1, conv.out_channels, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = super().forward(x)  # (B, C, H, W)
        position = self.position
        if position.shape[-2:] != h.shape[-2:]:
            position = F.interpolate(position, size=h.shape[-2:], mode="bilinear", align_corners=False)
        return h + position.to(h.dtype)


class ShapesUNet2DConditionModel(UNet2DConditionModel):
    """`UNet2DConditionModel` (same config, same weights) with `conv_in.position` added."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        size = self.config.sample_size if isinstance(self.config.sample_size, int) else self.config.sample_size[0]
        self.conv_in = PositionalConv2d(self.conv_in, size)

    # diffusers reads the config keys from the __init__ signature: keep the parent's.
    __init__.__signature__ = inspect.signature(UNet2DConditionModel.__init__)

"""The ShapesWorld UNet: diffusers' `UNet2DConditionModel` plus learned absolute position
embeddings: one added to the output of `conv_in`, and (`attention_positions=True`) one added at the
input of every transformer (after its `proj_in`), which the cross-attention queries then see.

Why: convolutions are translation-equivariant and diffusers' attention has no position encoding,
so a plain UNet can tell "top left" from "center" only through zero padding at the borders. The
first ShapesWorld bases never learned it: asked for one object at a named cell of the 3x3 grid,
they put an object there at the rate of objects scattered at random, with or without the
zero-initialised `conv_in` embedding (which stayed near zero), and their cross-attention spread
every pixel's attention almost evenly over the 16 tokens. Large models learn positions from data;
a 4M-parameter UNet on a CPU budget needs the hint. `scripts/shapes_place_probe.py` isolates it:
conditioned on a place token, this UNet learns place within 400 steps, the plain one does not.
The transformer embeddings start as 2D sinusoids (a clear signal from the first step); the
`conv_in` one starts at zero, so a trained plain UNet loads into this class unchanged.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DConditionModel  # noqa: F401 (ModelMixin: see below)
from torch import nn

# diffusers loads a pipeline component of a non-diffusers class by looking for its base classes
# (`ModelMixin`) in the class's own module, so this module must expose ModelMixin.


def sinusoid_2d(channels: int, size: int, std: float) -> torch.Tensor:
    """(1, C, S, S) fixed 2D sine/cosine features (a quarter of the channels each for sin y, cos y,
    sin x, cos x, over geometric frequencies), scaled to standard deviation `std`."""
    quarter = channels // 4
    freqs = torch.pi * 2.0 ** torch.linspace(-1.0, 2.0, quarter)  # (C/4,) from half a period to 4 per image
    coords = (torch.arange(size) + 0.5) / size  # (S,)
    angle = freqs[:, None] * coords[None]  # (C/4, S)
    y = torch.cat([angle.sin(), angle.cos()])[:, :, None].expand(-1, size, size)
    x = torch.cat([angle.sin(), angle.cos()])[:, None, :].expand(-1, size, size)
    out = torch.zeros(channels, size, size)
    out[: 4 * quarter] = torch.cat([y, x])
    return (out / out.std() * std)[None]


# Transformer inputs after proj_in have a standard deviation of about 0.5-1 (measured on the trained
# base): sinusoids of the same scale are a clear signal to the queries from the first step.
ATTENTION_POSITION_STD = 1.0


class PositionalConv2d(nn.Conv2d):
    """A conv + a learned (1, C, S, S) position embedding added to its output (resized for other
    sample sizes), starting at zero or at 2D sinusoids of standard deviation `init_std`."""

    def __init__(self, conv: nn.Conv2d, size: int, init_std: float = 0.0):
        with torch.random.fork_rng():  # the weights are conv's: leave the caller's random stream as it was
            super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
        self.load_state_dict(conv.state_dict(), strict=False)
        self.position = nn.Parameter(sinusoid_2d(conv.out_channels, size, init_std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = super().forward(x)  # (B, C, H, W)
        position = self.position
        if position.shape[-2:] != h.shape[-2:]:
            position = F.interpolate(position, size=h.shape[-2:], mode="bilinear", align_corners=False)
        return h + position.to(h.dtype)


class ShapesUNet2DConditionModel(UNet2DConditionModel):
    """`UNet2DConditionModel` (same config, same weights) with position embeddings: `conv_in.position`
    (zero at the start) and, with `attention_positions=True`, `proj_in.position` in every transformer
    (2D sinusoids at the start), so cross-attention queries know where they are from the first step."""

    def __init__(self, attention_positions: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.register_to_config(attention_positions=attention_positions)
        size = self.config.sample_size if isinstance(self.config.sample_size, int) else self.config.sample_size[0]
        self.conv_in = PositionalConv2d(self.conv_in, size)
        if not attention_positions:
            return
        n = len(self.down_blocks)
        levels = [(block, size // 2**i) for i, block in enumerate(self.down_blocks)] + [(self.mid_block, size // 2 ** (n - 1))]
        levels += [(block, size // 2 ** (n - 1 - i)) for i, block in enumerate(self.up_blocks)]
        for block, resolution in levels:
            for transformer in getattr(block, "attentions", None) or []:
                transformer.proj_in = PositionalConv2d(transformer.proj_in, resolution, ATTENTION_POSITION_STD)

    # diffusers reads the config keys from the __init__ signature: the parent's, plus ours.
    __init__.__signature__ = inspect.signature(UNet2DConditionModel.__init__).replace(parameters=[
        *inspect.signature(UNet2DConditionModel.__init__).parameters.values(),
        inspect.Parameter("attention_positions", inspect.Parameter.KEYWORD_ONLY, default=False),
    ])

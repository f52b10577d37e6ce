"""img2img and inpainting under diffusers' argument names.

The ELLA pipelines start from an image through their `init_image`, `mask_image` and `strength`
arguments (one denoising loop for every mode); these classes are the same pipelines with the
names diffusers' img2img and inpaint pipelines use: `image` is the image to start from, and a
ControlNet's image is `control_image`.
"""

from __future__ import annotations

import torch

from .pipeline_ella import ELLAStableDiffusionPipeline
from .pipeline_ella_xl import ELLAStableDiffusionXLPipeline


class Img2ImgMixin:
    @torch.no_grad()
    def __call__(self, prompt=None, image=None, strength: float = 0.8, control_image=None, **kwargs):
        """img2img: `image` noised to `strength` of the schedule, then denoised towards the prompt
        (1.0 = text-to-image). Other arguments as `ELLAStableDiffusionPipeline.__call__`."""
        if image is None:
            raise ValueError("img2img needs the `image` to start from")
        return super().__call__(prompt, image=control_image, init_image=image, strength=strength, **kwargs)


class InpaintMixin:
    @torch.no_grad()
    def __call__(self, prompt=None, image=None, mask_image=None, strength: float = 1.0, control_image=None, **kwargs):
        """Inpainting: repaint `image` where `mask_image` is white, keep the rest. Other arguments as
        `ELLAStableDiffusionPipeline.__call__`."""
        if image is None or mask_image is None:
            raise ValueError("inpainting needs `image` and `mask_image` (white = repaint)")
        return super().__call__(prompt, image=control_image, init_image=image, mask_image=mask_image,
                                strength=strength, **kwargs)


class ELLAStableDiffusionImg2ImgPipeline(Img2ImgMixin, ELLAStableDiffusionPipeline):
    """img2img with ELLA on SD1.5-style UNets."""


class ELLAStableDiffusionInpaintPipeline(InpaintMixin, ELLAStableDiffusionPipeline):
    """Inpainting with ELLA: a 4-channel UNet (latent blending) or a 9-channel inpainting UNet."""


class ELLAStableDiffusionXLImg2ImgPipeline(Img2ImgMixin, ELLAStableDiffusionXLPipeline):
    """img2img with ELLA on SDXL-style UNets."""


class ELLAStableDiffusionXLInpaintPipeline(InpaintMixin, ELLAStableDiffusionXLPipeline):
    """Inpainting with ELLA on SDXL-style UNets."""

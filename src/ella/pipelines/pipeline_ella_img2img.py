"""img2img and inpainting under diffusers' argument names.

The ELLA pipelines start from an image through their `init_image`, `mask_image` and `strength`
arguments (one denoising loop for every mode); these classes are the same pipelines with the
names diffusers' img2img and inpaint pipelines use: `image` is the image to start from, and a
ControlNet's image is `control_image`. Their `__call__` signatures are explicit (tools built on
diffusers read them); one function writes them, with each class's own default strength.
"""

from __future__ import annotations

import inspect

import torch

from .pipeline_ella import ELLAStableDiffusionPipeline
from .pipeline_ella_xl import ELLAStableDiffusionXLPipeline


def image_start_call(default_strength: float, needs_mask: bool):
    """The `__call__` of an image-to-image pipeline: diffusers' img2img (`needs_mask=False`,
    strength 0.8) or inpaint (`needs_mask=True`, strength 1.0) names and defaults."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
        mask_image=None,
        strength: float = default_strength,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        conditioning: str = "ella",
        control_image=None,
        controlnet_conditioning_scale: float = 1.0,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        prompt_weighting: str | bool | None = None,
        precompute_connector: bool | None = None,
        regions=None,
        base_ratio: float | None = None,
        guidance_rescale: float = 0.0,
        cross_attention_kwargs: dict | None = None,
        clip_skip: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Start from `image` (PIL, numpy or a tensor in [-1, 1]; height and width default to its
        size), noised to `strength` of the schedule (1.0 = from pure noise), then denoised towards
        the prompt; with `mask_image`, only where the mask is white is repainted (the rest is kept).
        `latents`, if given, are the noise added to the image. `control_image` steers a
        `controlnet`. Every other argument is `ELLAStableDiffusionPipeline.__call__`'s, under the
        same name and default."""
        # This call's arguments, by name, handed on as they are (locals() also holds the closure's names).
        arguments = {name: value for name, value in locals().items() if name in parameters}
        if image is None or (needs_mask and mask_image is None):
            raise ValueError("inpainting needs `image` and `mask_image` (white = repaint)" if needs_mask
                             else "img2img needs the `image` to start from")
        arguments["init_image"], arguments["image"] = arguments.pop("image"), arguments.pop("control_image")
        # XL subclasses inherit this same __call__ (ELLAStableDiffusionXLPipeline does not override it).
        return ELLAStableDiffusionPipeline.__call__(self, **arguments)

    parameters = frozenset(inspect.signature(__call__).parameters) - {"self"}
    return __call__


class Img2ImgMixin:
    __call__ = image_start_call(default_strength=0.8, needs_mask=False)


class InpaintMixin:
    __call__ = image_start_call(default_strength=1.0, needs_mask=True)


class ELLAStableDiffusionImg2ImgPipeline(Img2ImgMixin, ELLAStableDiffusionPipeline):
    """img2img with ELLA on SD1.5-style UNets."""


class ELLAStableDiffusionInpaintPipeline(InpaintMixin, ELLAStableDiffusionPipeline):
    """Inpainting with ELLA: a 4-channel UNet (latent blending) or a 9-channel inpainting UNet."""


class ELLAStableDiffusionXLImg2ImgPipeline(Img2ImgMixin, ELLAStableDiffusionXLPipeline):
    """img2img with ELLA on SDXL-style UNets."""


class ELLAStableDiffusionXLInpaintPipeline(InpaintMixin, ELLAStableDiffusionXLPipeline):
    """Inpainting with ELLA on SDXL-style UNets."""

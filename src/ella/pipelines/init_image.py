"""Starting from an image: img2img's cut schedule and inpainting's mask, for the ELLA pipelines.

diffusers' semantics throughout. `strength` s in (0, 1] keeps the last int(s * N) of the N
scheduled steps (`cut_timesteps`) and starts from the init image noised to the first kept step;
s = 1 starts from pure noise, exactly as text-to-image does, so the same seed gives the same
image. Inpainting repaints where the mask is white (>= 0.5): with a plain 4-channel UNet the known
region is put back after every step, noised to the next step's level (`Inpainting.blend`); a
9-channel inpainting UNet instead reads the mask and the masked image's latents beside the noisy
latents (`Inpainting.extra_channels`) and sees the whole picture itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def cut_timesteps(scheduler, timesteps: torch.Tensor, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The last `strength` of the schedule (all of it for 1.0). As diffusers'
    `StableDiffusionImg2ImgPipeline.get_timesteps`, except that it returns only the timesteps,
    refuses a strength that keeps no step, and works on the timesteps `retrieve_timesteps` gave."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1] (1 = start from pure noise), got {strength}")
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    if kept < 1:
        raise ValueError(f"strength {strength} keeps no step of {num_inference_steps}: raise the strength or the"
                         " number of steps")
    start = (num_inference_steps - kept) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return timesteps[start:]


def check_same_size(image, mask_image) -> None:
    """A mask is read pixel for pixel against its image: their sizes must agree before either is resized."""
    (ih, iw), (mh, mw) = image_size(image), image_size(mask_image)
    if (ih, iw) != (mh, mw):
        raise ValueError(f"mask_image is {mw}x{mh} pixels but the image is {iw}x{ih}: they must be the same size")


def image_size(image) -> tuple[int, int]:
    """(height, width) of a PIL image, a (.., H, W) tensor or an (H, W, C) array, or of a list's first."""
    from PIL import Image

    if isinstance(image, list):
        image = image[0]
    if isinstance(image, Image.Image):
        return image.height, image.width
    return tuple(image.shape[-2:]) if isinstance(image, torch.Tensor) else tuple(image.shape[:2])


@dataclass
class Inpainting:
    """What the denoising loop needs to inpaint: the mask at latent resolution (B, 1, h, w) with
    1 = repaint, the clean latents of the image, the noise the image was noised with, and for a
    9-channel UNet the masked image's latents."""

    mask: torch.Tensor
    image_latents: torch.Tensor
    noise: torch.Tensor
    masked_image_latents: torch.Tensor | None = None

    def extra_channels(self, do_cfg: bool) -> torch.Tensor | None:
        """(B', 1 + C, h, w) to concatenate to the UNet's input for a 9-channel UNet, else None."""
        if self.masked_image_latents is None:
            return None
        extra = torch.cat([self.mask.to(self.masked_image_latents.dtype), self.masked_image_latents], dim=1)
        return torch.cat([extra] * 2) if do_cfg else extra

    def blend(self, scheduler, latents: torch.Tensor, next_timestep: torch.Tensor | None) -> torch.Tensor:
        """4-channel UNet: outside the mask, the image noised to the level of the next step (the
        clean image after the last step)."""
        if self.masked_image_latents is not None:
            return latents
        known = self.image_latents
        if next_timestep is not None:
            known = scheduler.add_noise(known, self.noise, next_timestep.reshape(1))
        return (1 - self.mask) * known + self.mask * latents


def mask_to_latents(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) in {0, 1} -> (B, 1, h, w): a latent is repainted where any pixel it covers is
    (max pooling), so the mask's edge is never half-kept."""
    if tuple(mask.shape[-2:]) == tuple(latent_hw):
        return mask
    return F.adaptive_max_pool2d(mask, latent_hw)

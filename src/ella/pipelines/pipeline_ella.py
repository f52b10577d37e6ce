"""ELLAStableDiffusionPipeline: a frozen Stable-Diffusion-style UNet conditioned through ELLA.

The UNet is untouched (LoRA and other UNet adapters loaded with the diffusers API keep working);
only its `encoder_hidden_states` change, so a diffusers `ControlNetModel` plugs in as usual. The
LLM encodes each prompt once per call; the connector runs at every denoising step with that
step's timestep, on both CFG branches in one batched call (the paper, Sec. 3.2; the ELLA repository's
`inference.py` at 3c228f1: its proxy UNet calls the connector with each step's timestep).
"""

from __future__ import annotations

import inspect
import logging
import math
import os

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.embeddings import ImageProjection
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from transformers.utils import logging as hf_logging

from ..models.connector import ELLA
from ..prompt_weighting import DEFAULT_MODE, apply_weights, parse_prompt_weights, token_weights
from ..regions import RegionalConditioning, as_layout, blend_weights, coverage, regional_attention
from ..text_encoders import TEXT_MODES, LLMEncoder, TextFeatures, pad_features
from .init_image import Inpainting, check_same_size, cut_timesteps, image_size, mask_to_latents

logger = logging.getLogger(__name__)


def _import_ip_adapter_mixin():
    """diffusers' IPAdapterMixin. Importing it imports transformers' CLIP and SigLIP image
    processors, which warn on import when torchvision is absent although their PIL versions serve
    (IP-Adapter images go through PIL here): that warning is held back, nothing else."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        from diffusers.loaders import IPAdapterMixin
    finally:
        hf_logging.set_verbosity(verbosity)
    return IPAdapterMixin


IPAdapterMixin = _import_ip_adapter_mixin()

CONDITIONINGS = ("ella", "ella+clip", "clip")
CALLBACK_TENSOR_INPUTS = ["latents", "prompt_embeds", "negative_prompt_embeds"]


def _positive_rows(x, rows: int):
    """The last `rows` rows (the positive prompts, under diffusers' [negatives; positives] CFG
    order) of a tensor, TextFeatures or dict of tensors that holds 2 * rows; anything else as it is."""
    if isinstance(x, dict):
        return {k: _positive_rows(v, rows) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_positive_rows(v, rows) for v in x)
    if isinstance(x, TextFeatures):
        return TextFeatures(_positive_rows(x.hidden_states, rows), _positive_rows(x.attention_mask, rows))
    if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == 2 * rows:
        return x[rows:]
    return x


def _rows_of(mask, start: int, stop: int | None):
    return None if mask is None else mask[start:stop]


class ELLAStableDiffusionPipeline(DiffusionPipeline, IPAdapterMixin):
    """Text-to-image with an LLM + ELLA connector in place of (or beside) CLIP, and from an image:
    `init_image` + `strength` (img2img), `mask_image` (inpainting; the Img2Img and Inpaint
    subclasses take these under diffusers' names).

    Components: `unet`, `scheduler` (any diffusers scheduler), `vae` (None for a pixel-space
    UNet), `text_encoder` + `tokenizer` (the frozen LLM), `ella` (the connector), and optional
    `clip_text_encoder` + `clip_tokenizer` for `conditioning="ella+clip"` (community checkpoints,
    LoRA trigger words) or `"clip"` (the plain base model, for comparisons). An optional
    `controlnet` (diffusers `ControlNetModel`) is steered by `image` and sees the same conditioning
    tokens as the UNet. `image_encoder` + `feature_extractor` serve IP-Adapters (`load_ip_adapter`
    registers them): the image tokens join ELLA's in the UNet's cross-attention, as they join CLIP's.
    """

    # The connector and a ControlNet run at every step, beside the UNet: out of the chain, so that
    # model offload keeps them on the device for the whole loop instead of swapping them each step.
    model_cpu_offload_seq = "text_encoder->clip_text_encoder->image_encoder->unet->vae"
    # Sequential offload leaves the connector whole on the device: it is small next to the LLM and
    # the UNet, runs at every step, and its nn.MultiheadAttention reads `out_proj.weight` without
    # calling `out_proj`, which per-module offload hooks cannot serve.
    _exclude_from_cpu_offload = ["ella"]
    _optional_components = ["vae", "text_encoder", "tokenizer", "ella", "clip_text_encoder", "clip_tokenizer",
                             "controlnet", "image_encoder", "feature_extractor"]
    _callback_tensor_inputs = CALLBACK_TENSOR_INPUTS

    def __init__(
        self,
        unet,
        scheduler,
        vae=None,
        text_encoder=None,
        tokenizer=None,
        ella: ELLA | None = None,
        clip_text_encoder=None,
        clip_tokenizer=None,
        controlnet=None,
        image_encoder=None,
        feature_extractor=None,
        text_max_length: int = 128,
        text_mode: str = "fixed",
        text_echo: bool = False,
    ):
        super().__init__()
        if text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
        self.register_modules(
            unet=unet,
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            ella=ella,
            clip_text_encoder=clip_text_encoder,
            clip_tokenizer=clip_tokenizer,
            controlnet=controlnet,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.register_to_config(text_max_length=text_max_length, text_mode=text_mode, text_echo=text_echo)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True)
        self.mask_processor = VaeImageProcessor(  # white = repaint: {0, 1}, one channel
            vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
        # ControlNet inputs stay in [0, 1] (diffusers' convention), at the output resolution.
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' `save_pretrained`, the weights' file modes following the umask as other outputs do."""
        from ..fileio import follow_umask

        super().save_pretrained(save_directory, *args, **kwargs)
        follow_umask(os.fspath(save_directory))

    # ---- checks -------------------------------------------------------------------------------

    @property
    def size_factor(self) -> int:
        """Height and width must be multiples of this: the VAE's downsampling times the UNet's."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def clip_width(self) -> int:
        """The width of the CLIP tokens this pipeline builds (SDXL concatenates two encoders)."""
        return self.clip_text_encoder.config.hidden_size

    def check_inputs(self, prompts: list[str] | None, negative: list[str], height: int, width: int, conditioning: str,
                     image=None, embeds: tuple | None = None):
        """`prompts` None: the prompts come as `embeds` (prompt_embeds, negative_prompt_embeds)."""
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        if prompts is not None:
            if not prompts:
                raise ValueError("no prompt given: pass at least one prompt")
            if any(not isinstance(p, str) or not p.strip() for p in prompts):
                raise ValueError("prompts must be non-empty strings")
            if len(negative) != len(prompts):
                raise ValueError(f"got {len(negative)} negative prompts for {len(prompts)} prompts")
        if embeds is not None:
            self.check_embeds(prompts, *embeds, conditioning)
        f = self.size_factor
        if height <= 0 or width <= 0 or height % f or width % f:
            raise ValueError(f"height and width must be positive multiples of {f} for this model, got {height}x{width}")
        cross = self.unet.config.cross_attention_dim
        if "ella" in conditioning:
            if self.ella is None or (embeds is None and (self.text_encoder is None or self.tokenizer is None)):
                raise ValueError(f"conditioning={conditioning!r} needs the ella, text_encoder and tokenizer components"
                                 " (or ella and prompt_embeds)")
            out_dim = self.ella.config.output_dim or self.ella.config.width
            if out_dim != cross:
                raise ValueError(
                    f"the ELLA connector outputs width {out_dim} but the UNet's cross-attention width is {cross}"
                )
        if "clip" in conditioning:
            if self.clip_text_encoder is None or self.clip_tokenizer is None:
                raise ValueError(f"conditioning={conditioning!r} needs clip_text_encoder and clip_tokenizer")
            if self.clip_width != cross:
                raise ValueError(
                    f"the CLIP text encoder's width {self.clip_width} differs from the UNet's cross-attention width {cross}"
                )
        if self.controlnet is not None and image is None:
            raise ValueError("this pipeline has a controlnet: pass a control `image`")
        if self.controlnet is None and image is not None:
            raise ValueError("`image` was given but the pipeline has no controlnet")

    def check_embeds(self, prompts, prompt_embeds, negative_prompt_embeds, do_cfg: bool, conditioning: str):
        if prompt_embeds.ndim != 3:
            raise ValueError(f"prompt_embeds must be (batch, tokens, width), got shape {tuple(prompt_embeds.shape)}")
        if prompts is not None and len(prompts) != prompt_embeds.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {prompt_embeds.shape[0]} prompt_embeds")
        if do_cfg and self.text_encoder is None and negative_prompt_embeds is None:
            raise ValueError("guidance_scale > 1 without a text_encoder needs negative_prompt_embeds too"
                             " (`encode_prompt` returns them)")
        if negative_prompt_embeds is not None and negative_prompt_embeds.shape[0] != prompt_embeds.shape[0]:
            raise ValueError(f"negative_prompt_embeds has {negative_prompt_embeds.shape[0]} rows for"
                             f" {prompt_embeds.shape[0]} prompt_embeds")
        if "clip" in conditioning and prompts is None:
            raise ValueError(f"conditioning={conditioning!r} with prompt_embeds: CLIP reads the prompt text, so pass"
                             " `prompt` as well (the embeddings are used for the ELLA side)")

    # ---- prompt encoding (once per call) ------------------------------------------------------

    def encode_llm(self, prompts: list[str], prompt_weighting: str | bool | None = None) -> TextFeatures:
        """LLM features (B, L, D) and mask of the prompts, in the connector's dtype. With
        `prompt_weighting` ("attention", "anchor", "scale", or True for the default), `(words:1.3)` syntax is
        parsed and the weights act on those words' features (`ella.prompt_weighting`)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text_encoder/tokenizer (the LLM): pass prompt_embeds and "
                             "negative_prompt_embeds from `encode_prompt` of a pipeline that has it")
        encoder = LLMEncoder(self.text_encoder, self.tokenizer, self.config.text_max_length, self.config.text_mode,
                             self.config.text_echo, device=self._execution_device)
        mode = DEFAULT_MODE if prompt_weighting is True else prompt_weighting or None
        if mode == "attention" and self.ella is not None and self.ella.keeps_text_length:
            raise ValueError("prompt_weighting='attention' weights the resampler's attention; this connector (MLP) has"
                             " none: use 'anchor' or 'scale'")
        parsed = None if mode is None else [parse_prompt_weights(p) for p in prompts]
        features = encoder(prompts if parsed is None else [p.text for p in parsed])
        if parsed is not None and any(p.weighted for p in parsed):
            weights = token_weights(self.tokenizer, parsed, self.config.text_max_length, features.hidden_states.shape[1])
            empty = None
            if mode == "anchor":  # the empty prompt's mean feature over its real tokens
                blank = encoder.encode_padded([""])
                m = blank.attention_mask[..., None].to(blank.hidden_states.dtype)
                empty = ((blank.hidden_states * m).sum(1) / m.sum(1).clamp(min=1))[0]
            features = apply_weights(features, weights, mode, empty)
        features.hidden_states = features.hidden_states.to(self.features_dtype)
        return features

    @property
    def features_dtype(self) -> torch.dtype:
        """The dtype the LLM features are kept in: the connector's, or the LLM's own when the
        pipeline holds only the text components (`encode_prompt` in isolation)."""
        for module in (self.ella, self.text_encoder, self.unet):
            if module is not None:
                return module.dtype
        return torch.float32

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        prompt_weighting: str | bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The LLM's features of the prompts, as diffusers' T5 pipelines return them:
        (prompt_embeds (B, L, D), prompt_attention_mask (B, L), negative_prompt_embeds,
        negative_prompt_attention_mask). Masks are None in "fixed" mode, where the padding is part
        of the conditioning; the negatives are None without CFG. Encode once, free the LLM, then
        call the pipeline with these tensors and `text_encoder=None, tokenizer=None`."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        pos = self.encode_llm(prompts, prompt_weighting)
        prompt_embeds, prompt_attention_mask = pos.hidden_states, pos.attention_mask
        negative_prompt_embeds = negative_prompt_attention_mask = None
        if do_classifier_free_guidance:
            neg = self.encode_llm(self._negatives(negative_prompt, len(prompts)), prompt_weighting)
            negative_prompt_embeds, negative_prompt_attention_mask = neg.hidden_states, neg.attention_mask
        return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask

    @staticmethod
    def _negatives(negative_prompt: str | list[str] | None, batch: int) -> list[str]:
        negative = "" if negative_prompt is None else negative_prompt
        return [negative] * batch if isinstance(negative, str) else list(negative)

    @torch.no_grad()
    def encode_clip(self, prompts: list[str], clip_skip: int | None = None) -> torch.Tensor:
        """CLIP-style last hidden state (B, max_length, C), padded like Stable Diffusion's; with
        `clip_skip`, the hidden state that many layers before the last, through the final layer
        norm (as diffusers' Stable Diffusion pipeline reads it)."""
        tok = self.clip_tokenizer(
            prompts, padding="max_length", truncation=True,
            max_length=self.clip_tokenizer.model_max_length, return_tensors="pt",
        )
        ids = tok.input_ids.to(self._execution_device)
        if not clip_skip:
            return self.clip_text_encoder(ids)[0].to(self.unet.dtype)
        hidden = self.clip_text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        text_model = getattr(self.clip_text_encoder, "text_model", self.clip_text_encoder)  # transformers 4 nests it; 5 not
        return text_model.final_layer_norm(hidden).to(self.unet.dtype)

    def _repeat(self, x: torch.Tensor | None, n: int) -> torch.Tensor | None:
        return None if x is None else x.repeat_interleave(n, dim=0)

    def check_pooled(self, pooled_prompt_embeds, negative_pooled_prompt_embeds, do_cfg: bool, batch: int):
        """SDXL's pooled embeddings in CFG row order, or None; an SD1.5-style UNet takes none."""
        if pooled_prompt_embeds is not None or negative_pooled_prompt_embeds is not None:
            raise ValueError("pooled_prompt_embeds are SDXL's: use ELLAStableDiffusionXLPipeline")
        return None

    def added_cond_kwargs(self, rows: list[str] | None, height: int, width: int, batch: int,
                          pooled: torch.Tensor | None = None) -> dict | None:
        """Extra UNet inputs for the `batch` prompt rows (in CFG order; `rows` None when the
        prompts came as embeddings; `pooled` SDXL's pooled embeddings, given); SD1.5-style UNets
        take none."""
        if self.unet.config.addition_embed_type == "text_time":
            raise ValueError("this UNet is SDXL-style (it needs pooled text and size ids): use ELLAStableDiffusionXLPipeline")
        return None

    def _expand_rows(self, x: torch.Tensor, batch: int, n: int, what: str) -> torch.Tensor:
        """One row for every prompt, or one per prompt -> (batch * n, ...) on the execution device."""
        if x.shape[0] not in (1, batch):
            raise ValueError(f"got {x.shape[0]} {what} for {batch} prompts: pass 1 or {batch}")
        x = x.expand(batch, *x.shape[1:]) if x.shape[0] == 1 else x
        return x.repeat_interleave(n, dim=0).to(self._execution_device)

    def added_cond_at(self, added: dict | None, cond: torch.Tensor) -> dict | None:
        """This step's added conditions, given this step's tokens `cond` (SDXL's connector pool)."""
        return added

    def prepare_control_image(self, image, height: int, width: int, batch: int, n: int) -> torch.Tensor:
        """The control image(s) as (batch * n, C, H, W) in [0, 1]."""
        control = self.control_image_processor.preprocess(image, height=height, width=width)
        return self._expand_rows(control, batch, n, "control images").to(self.controlnet.dtype)

    # ---- starting from an image: img2img and inpainting ----------------------------------------

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels if self.vae is not None else self.unet.config.in_channels

    @torch.no_grad()
    def encode_init_image(self, image: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> the UNet's latents: the VAE posterior's mean, scaled (deterministic,
        so strength 1.0 draws exactly text-to-image's noise); the pixels themselves for a
        pixel-space UNet. As diffusers' img2img `_encode_vae_image`, except the posterior's mode
        instead of a sample."""
        if self.vae is None:
            return image.to(self.unet.dtype)
        latents = self.vae.encode(image.to(self.vae.dtype)).latent_dist.mode()
        return (latents * self.vae.config.scaling_factor).to(self.unet.dtype)

    def prepare_image_latents(self, init_image, mask_image, strength: float, timesteps: torch.Tensor,
                              num_inference_steps: int, batch: int, n: int, height: int, width: int, generator,
                              noise: torch.Tensor | None = None):
        """(the cut timesteps, the initial latents, Inpainting or None) for img2img/inpainting;
        `noise` (the call's `latents`), if given, is the noise added to the image's latents."""
        timesteps = cut_timesteps(self.scheduler, timesteps, num_inference_steps, strength)
        image = self.image_processor.preprocess(init_image, height=height, width=width)
        image = self._expand_rows(image, batch, n, "init images")  # (B * n, 3, H, W) in [-1, 1]
        image_latents = self.encode_init_image(image)
        if noise is None:
            noise = randn_tensor(image_latents.shape, generator=generator, device=image_latents.device,
                                 dtype=self.unet.dtype)
        elif noise.shape != image_latents.shape:
            raise ValueError(f"latents must have shape {tuple(image_latents.shape)}, got {tuple(noise.shape)}")
        else:
            noise = noise.to(image_latents.device, self.unet.dtype)
        if strength == 1.0:  # pure noise: exactly text-to-image's start
            latents = noise * self.scheduler.init_noise_sigma
        else:
            latents = self.scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(image_latents.shape[0]))
        if mask_image is None:
            return timesteps, latents, None
        check_same_size(init_image, mask_image)
        mask = self._expand_rows(self.mask_processor.preprocess(mask_image, height=height, width=width), batch, n,
                                 "masks")  # (B * n, 1, H, W), 1 = repaint
        unet_channels, c = self.unet.config.in_channels, self.latent_channels
        if unet_channels not in (c, 2 * c + 1):
            raise ValueError(f"inpainting needs a UNet of {c} input channels (latent blending) or {2 * c + 1} (an"
                             f" inpainting UNet); this one has {unet_channels}")
        masked = None
        if unet_channels == 2 * c + 1:  # an inpainting UNet reads the masked image itself
            masked = self.encode_init_image(image * (mask < 0.5))
        inpaint = Inpainting(mask_to_latents(mask, tuple(image_latents.shape[-2:])).to(self.unet.dtype),
                             image_latents, noise, masked)
        return timesteps, latents, inpaint

    # ---- IP-Adapter ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_ip_image(self, image, hidden_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(image features, unconditional features), each (1, images, ...): the image encoder's
        projected embedding (plain IP-Adapters; zeros unconditionally) or its penultimate hidden
        states (IP-Adapter Plus; those of a black image unconditionally). As diffusers'
        `StableDiffusionPipeline.encode_image`, except one image per call, and no repeat here (the
        rows are laid out by `prepare_ip_adapter_image_embeds`)."""
        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError("ip_adapter_image needs the image_encoder and feature_extractor (load_ip_adapter loads"
                             " them), or pass ip_adapter_image_embeds")
        dtype = next(self.image_encoder.parameters()).dtype
        if not isinstance(image, torch.Tensor):
            image = self.feature_extractor(image, return_tensors="pt").pixel_values
        image = image.to(self._execution_device, dtype)
        if hidden_states:
            pos, neg = (self.image_encoder(x, output_hidden_states=True).hidden_states[-2]
                        for x in (image, torch.zeros_like(image)))
        else:
            pos = self.image_encoder(image).image_embeds
            neg = torch.zeros_like(pos)
        return pos[None], neg[None]

    def prepare_ip_adapter_image_embeds(self, ip_adapter_image, ip_adapter_image_embeds, batch: int, n: int,
                                        do_cfg: bool) -> list[torch.Tensor]:
        """One tensor per loaded IP-Adapter, (rows, images, ...) in the prompts' CFG row order.
        `ip_adapter_image`: an image (or list of images) per adapter; `ip_adapter_image_embeds`:
        diffusers' layout, unconditional rows first when CFG is on."""
        projection = getattr(self.unet, "encoder_hid_proj", None)
        if projection is None or not hasattr(projection, "image_projection_layers"):
            raise ValueError("ip_adapter_image was given but no IP-Adapter is loaded: call load_ip_adapter first")
        if ip_adapter_image_embeds is None:
            images = ip_adapter_image if isinstance(ip_adapter_image, list) else [ip_adapter_image]
            layers = projection.image_projection_layers
            if len(images) != len(layers):
                raise ValueError(f"got {len(images)} IP-Adapter images for {len(layers)} loaded IP-Adapters")
            embeds = []
            for image, layer in zip(images, layers):
                pos, neg = self.encode_ip_image(image, hidden_states=not isinstance(layer, ImageProjection))
                embeds.append(torch.cat([neg, pos]) if do_cfg else pos)
        else:
            embeds = list(ip_adapter_image_embeds)
        rows = []
        for e in embeds:
            parts = e.chunk(2) if do_cfg else (e,)
            rows.append(torch.cat([self._expand_rows(p, batch, n, "IP-Adapter image rows") for p in parts])
                        .to(self.unet.dtype))
        return rows

    # ---- the denoising loop -------------------------------------------------------------------

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict:
        """What this scheduler's `step` takes of the call's randomness: stochastic samplers (DDPM,
        Euler ancestral, SDE solvers) draw fresh noise at every step, from `generator` so that a
        seed gives the same image; DDIM also takes `eta`. As diffusers'
        `StableDiffusionPipeline.prepare_extra_step_kwargs`."""
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs = {"generator": generator} if "generator" in accepted else {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        return kwargs

    def prepare_latents(self, batch: int, height: int, width: int, generator, latents: torch.Tensor | None):
        """Initial noise (batch, C, h, w) in the UNet's dtype, scaled to the scheduler's first sigma.
        As diffusers' `StableDiffusionPipeline.prepare_latents`, except that the batch is already
        multiplied out, the channels are the UNet's, and given latents are checked (shape, NaN)."""
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        device = self._execution_device
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        elif not torch.isfinite(latents).all():  # NaN would give a black image, silently
            raise ValueError("latents hold NaN or inf values")
        return latents.to(device, self.unet.dtype) * self.scheduler.init_noise_sigma

    def conditioning_at(
        self,
        t: torch.Tensor,
        text: TextFeatures | None,
        clip_embeds: torch.Tensor | None,
        connector_output: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """encoder_hidden_states (and a mask, for token-length connectors) for timestep t.
        `connector_output` is this step's precomputed `ella(text, t)`, if any."""
        parts, masks = [], []
        if clip_embeds is not None:
            parts.append(clip_embeds)
            masks.append(torch.ones(clip_embeds.shape[:2], dtype=torch.long, device=clip_embeds.device))
        mask = None
        if text is not None:
            if connector_output is None:
                connector_output = self.ella(text.hidden_states, t, text.attention_mask)
            parts.append(connector_output.to(self.unet.dtype))
            if self.ella.keeps_text_length and text.attention_mask is not None:
                masks.append(text.attention_mask)
                mask = torch.cat(masks, dim=1)
        return torch.cat(parts, dim=1), mask

    def prepare_conditioning(self, prompts, negatives, embeds, conditioning: str, do_cfg: bool, n: int,
                             prompt_weighting: str | bool | None = None):
        """(LLM features, CLIP tokens), each None when unused; rows are [negatives; positives] when
        CFG is on, each repeated for the `n` images per prompt."""
        text = clip_embeds = None
        if "ella" in conditioning:
            prompt_embeds, prompt_mask, negative_embeds, negative_mask = embeds or (None,) * 4
            pos = (TextFeatures(prompt_embeds.to(self.ella.dtype), prompt_mask) if embeds
                   else self.encode_llm(prompts, prompt_weighting))
            feats = [pos]
            if do_cfg:
                neg = (TextFeatures(negative_embeds.to(self.ella.dtype), negative_mask) if negative_embeds is not None
                       else self.encode_llm(negatives, prompt_weighting))
                feats = [neg, pos]
            text = pad_features([TextFeatures(f.hidden_states.to(self._execution_device), None if f.attention_mask is None
                                              else f.attention_mask.to(self._execution_device)) for f in feats])
            text = TextFeatures(self._repeat(text.hidden_states, n), self._repeat(text.attention_mask, n))
        if "clip" in conditioning:
            if prompt_weighting:  # CLIP reads the text without the weighting syntax (parsing is cheap: no model)
                prompts, negatives = ([parse_prompt_weights(p).text for p in ps] for ps in (prompts, negatives))
            clip_embeds = self._repeat(self.encode_clip(negatives + prompts if do_cfg else prompts, self.clip_skip), n)
        return text, clip_embeds

    def prepare_regions(self, regions, prompts, negatives, text, conditioning: str, do_cfg: bool, n: int,
                        height: int, width: int, prompt_weighting=None, base_ratio: float | None = None):
        """The call's regions (`ella.regions`) as the loop carries them: every region's prompt
        through the LLM (its negative: its own, else the prompt's), the blend weights at the
        latent resolution, rows in the CFG order of `text`."""
        if prompts is None:
            raise ValueError("regions need the prompt as text (the regions' prompts are read with it): pass `prompt`")
        if getattr(self.unet.config, "encoder_hid_dim_type", None) == "ip_image_proj":
            raise ValueError("regions do not combine with a loaded IP-Adapter (its image tokens follow the text's):"
                             " call unload_ip_adapter() first")
        layouts = as_layout(regions, len(prompts))
        count = max(len(layout.segments()) for layout in layouts)
        # padding regions (coverage 0, so weight 0 everywhere) repeat the prompt: any text would do
        region_prompts, region_negatives = [], []
        for prompt, negative, layout in zip(prompts, negatives, layouts):
            segments = layout.segments()
            segments += [(prompt, None)] * (count - len(segments))
            region_prompts += [p for p, _ in segments]
            region_negatives += [negative if neg is None else neg for _, neg in segments]
        region_text, region_clip = self.prepare_conditioning(region_prompts, region_negatives, None, conditioning,
                                                             do_cfg, n, prompt_weighting)
        cfg = 2 if do_cfg else 1

        def regroup(x):  # rows (CFG, prompt, region, image) -> (CFG, prompt, image, region)
            return None if x is None else x.unflatten(0, (cfg, len(prompts), count, n)).transpose(2, 3).flatten(0, 3)

        if region_text is not None:
            joint = pad_features([text, TextFeatures(regroup(region_text.hidden_states),
                                                     regroup(region_text.attention_mask))])
            rows = text.hidden_states.shape[0]
            region_text = TextFeatures(joint.hidden_states[rows:], _rows_of(joint.attention_mask, rows, None))
            text = TextFeatures(joint.hidden_states[:rows], _rows_of(joint.attention_mask, 0, rows))
        if base_ratio is not None and not 0 <= base_ratio <= 1:
            raise ValueError(f"base_ratio must be in [0, 1], got {base_ratio}")
        cover = coverage(layouts, height // self.vae_scale_factor, width // self.vae_scale_factor)
        weights = torch.cat([blend_weights(cover[i : i + 1], layout.base_ratio if base_ratio is None else base_ratio)
                             for i, layout in enumerate(layouts)])
        weights = weights.repeat_interleave(n, dim=0).repeat(cfg, 1, 1, 1)  # (rows, 1 + K, h, w)
        return text, RegionalConditioning(region_text, regroup(region_clip),
                                          weights.to(self._execution_device, self.unet.dtype))

    def prepare_unet_inputs(self, prompts, negatives, batch: int, height: int, width: int, image, do_cfg: bool, n: int,
                            ip_adapter_image=None, ip_adapter_image_embeds=None, pooled=None):
        """(added_cond_kwargs, ControlNet image), in the rows' CFG order and repeated n times."""
        rows = None if prompts is None else (negatives + prompts if do_cfg else prompts)
        added = self.added_cond_kwargs(rows, height, width, batch * (2 if do_cfg else 1), pooled)
        added = None if added is None else {k: self._repeat(v, n) for k, v in added.items()}
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            added = dict(added or {}, image_embeds=self.prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, batch, n, do_cfg))
        elif getattr(self.unet.config, "encoder_hid_dim_type", None) == "ip_image_proj":
            raise ValueError("an IP-Adapter is loaded: pass ip_adapter_image (or ip_adapter_image_embeds), or call"
                             " unload_ip_adapter()")
        control = None
        if image is not None:
            control = self.prepare_control_image(image, height, width, batch, n)
            control = torch.cat([control] * 2) if do_cfg else control
        return added, control

    def denoise(self, latents, timesteps, text, clip_embeds, added, control, step_kwargs: dict,
                precompute_connector: bool | None, inpaint: Inpainting | None = None, callback_on_step_end=None,
                callback_on_step_end_tensor_inputs=("latents",), regional: RegionalConditioning | None = None):
        """The loop: the connector runs at every step with that step's timestep (or ran for all of
        them at once, before the loop), then ControlNet, UNet, CFG and the scheduler step; when
        inpainting, the mask and masked image join the UNet's input (9 channels) or the known
        region is put back after the step (4 channels). Guidance is read at every step
        (`self._guidance_scale`), so a callback may change it, or turn CFG off (diffusers'
        `SDCFGCutoffCallback`): each per-row input then keeps its positive rows."""
        rows = latents.shape[0]
        extra = None if inpaint is None else inpaint.extra_channels(self.do_classifier_free_guidance)
        precomputed = None
        if precompute_connector is None:  # by default where launches bound the per-step calls: on CUDA
            precompute_connector = self._execution_device.type == "cuda"
        if precompute_connector and text is not None:
            precomputed = self.ella.forward_timesteps(text.hidden_states, timesteps, text.attention_mask)
            if regional is not None:
                regional.precomputed = self.ella.forward_timesteps(regional.text.hidden_states, timesteps,
                                                                   regional.text.attention_mask)
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self.interrupt:  # set by a callback (or another thread): skip the rest, decode what there is
                    progress.update()
                    continue
                do_cfg = self.do_classifier_free_guidance and len(latents) * 2 == self._rows(text, clip_embeds, rows)
                step_output = None if precomputed is None else precomputed[i]
                if not do_cfg:  # CFG is off, or a callback turned it off: the positive rows only
                    text, clip_embeds, added, control, extra, step_output = (
                        _positive_rows(x, rows) for x in (text, clip_embeds, added, control, extra, step_output))
                    regional = None if regional is None else regional.positive(rows)
                noise_pred = self.predict_noise(latents, t, text, clip_embeds, added, control, extra, step_output, do_cfg,
                                                regional and (regional, i))
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
                if inpaint is not None:
                    latents = inpaint.blend(self.scheduler, latents, timesteps[i + 1] if i + 1 < len(timesteps) else None)
                if callback_on_step_end is not None:
                    given = self._callback_tensors(callback_on_step_end_tensor_inputs, latents, text, clip_embeds, rows)
                    returned = callback_on_step_end(self, i, t, dict(given))
                    latents = returned.get("latents", latents)
                    text, clip_embeds, replaced = self._replace_embeds(given, returned, text, clip_embeds, rows)
                    precomputed = None if replaced else precomputed
                    if replaced and regional is not None:
                        regional.precomputed = None  # the global side is computed per step from now on
                progress.update()
        return latents

    def predict_noise(self, latents, t, text, clip_embeds, added, control, extra, step_output, do_cfg: bool,
                      regional: tuple[RegionalConditioning, int] | None = None):
        """One step's noise prediction: the conditioning at t (with `regional`, (the regions, the
        step's index), every region's tokens after the global prompt's), ControlNet, the UNet,
        guidance (with `guidance_rescale`, Lin et al. 2023, Sec. 3.4, as diffusers' `rescale_noise_cfg`)."""
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        model_input = self.scheduler.scale_model_input(model_input, t)
        unet_input = model_input if extra is None else torch.cat([model_input, extra], dim=1)
        if regional is None:
            cond, cond_mask = self.conditioning_at(t, text, clip_embeds, step_output)
            step_added = self.added_cond_at(added, cond)
        else:
            cond, cond_mask = regional[0].conditioning(self, t, regional[1], text, clip_embeds, step_output)
            step_added = self.added_cond_at(added, cond[:, : cond.shape[1] // (regional[0].count + 1)])
        residuals = {}
        if control is not None:
            down, mid = self.controlnet(
                model_input, t, encoder_hidden_states=cond, controlnet_cond=control,
                conditioning_scale=self._controlnet_conditioning_scale, added_cond_kwargs=step_added,
                cross_attention_kwargs=self.cross_attention_kwargs, return_dict=False,
            )
            residuals = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        noise_pred = self.unet(
            unet_input, t, encoder_hidden_states=cond, encoder_attention_mask=cond_mask, added_cond_kwargs=step_added,
            cross_attention_kwargs=self.cross_attention_kwargs, **residuals,
        ).sample
        if not do_cfg:
            return noise_pred
        uncond, cond_pred = noise_pred.chunk(2)
        noise_pred = uncond + self.guidance_scale * (cond_pred - uncond)
        if self.guidance_rescale > 0:
            noise_pred = rescale_noise_cfg(noise_pred, cond_pred, guidance_rescale=self.guidance_rescale)
        return noise_pred

    @staticmethod
    def _rows(text: TextFeatures | None, clip_embeds: torch.Tensor | None, default: int) -> int:
        embeds = text.hidden_states if text is not None else clip_embeds
        return default if embeds is None else embeds.shape[0]

    def _callback_tensors(self, names, latents, text, clip_embeds, rows: int) -> dict:
        """What a step callback may read (`_callback_tensor_inputs`): the latents, and the prompt
        conditioning encoded before the loop, as diffusers lays it out: `prompt_embeds` holds every
        row ([negatives; positives] under CFG), `negative_prompt_embeds` the negatives (None
        without CFG). They are the LLM features the connector reads, or the CLIP tokens with
        `conditioning="clip"`."""
        embeds = text.hidden_states if text is not None else clip_embeds
        negatives = embeds[:rows] if embeds is not None and embeds.shape[0] == 2 * rows else None
        available = {"latents": latents, "prompt_embeds": embeds, "negative_prompt_embeds": negatives}
        return {name: available[name] for name in names}

    def _replace_embeds(self, given: dict, returned: dict, text, clip_embeds, rows: int):
        """(text, clip_embeds, whether they changed) after a callback returned `returned`."""
        current = text.hidden_states if text is not None else clip_embeds
        embeds = returned.get("prompt_embeds", given.get("prompt_embeds", current))
        negatives = returned.get("negative_prompt_embeds", given.get("negative_prompt_embeds"))
        if embeds is current and negatives is given.get("negative_prompt_embeds"):
            return text, clip_embeds, False
        if negatives is not given.get("negative_prompt_embeds"):
            if negatives is None or embeds.shape[0] != 2 * rows:
                raise ValueError("a callback replaced negative_prompt_embeds, but CFG is off for this step")
            embeds = torch.cat([negatives, embeds[rows:]])
        if text is None:
            return text, embeds, True
        mask = text.attention_mask
        if mask is not None and mask.shape[0] != embeds.shape[0]:
            mask = _positive_rows(mask, embeds.shape[0])
        return TextFeatures(embeds, mask), clip_embeds, True

    # ---- call state, under diffusers' names (a callback may read and set them) ------------------

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def cross_attention_kwargs(self) -> dict | None:
        return getattr(self, "_cross_attention_kwargs", None)

    @property
    def clip_skip(self) -> int | None:
        return getattr(self, "_clip_skip", None)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return getattr(self, "_interrupt", False)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, output_type: str):
        """Latents -> images: the VAE, or nothing for a pixel-space UNet (it denoises images in
        [-1, 1] directly); `output_type="latent"` returns the latents as they are. As diffusers'
        (deprecated) `decode_latents` followed by its image processor's `postprocess`, except the
        pixel-space case."""
        if output_type == "latent":
            return latents
        images = latents if self.vae is None else self.vae.decode(
            latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return self.image_processor.postprocess(images.float(), output_type=output_type)

    def _check_call(self, prompt, height, width, embeds, guidance_scale,
                    num_inference_steps, num_images_per_prompt, generator, guidance_rescale) -> None:
        """What is wrong with the call's own arguments, as one ValueError each, before any work
        (Python's TypeErrors from deep inside, or a blank image, otherwise)."""
        if prompt is not None and not isinstance(prompt, str) and not (
                isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt)):
            raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        if prompt is None and embeds is None:
            raise ValueError("pass a prompt (or prompt_embeds from encode_prompt)")
        for name, value in (("num_inference_steps", num_inference_steps), ("num_images_per_prompt", num_images_per_prompt)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        for name, value in (("guidance_scale", guidance_scale), ("guidance_rescale", guidance_rescale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")  # NaN gives blank images
        if not 0 <= guidance_rescale <= 1:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
        for name, value in zip(("prompt_embeds", "negative_prompt_embeds"), embeds[::2] if embeds else ()):
            if value is not None and not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a tensor (batch, tokens, width), got {type(value).__name__}")
            if value is not None and not torch.isfinite(value).all():
                raise ValueError(f"{name} hold NaN or inf values")
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in (height, width)):
            raise ValueError(f"height and width must be whole numbers, got {height!r} and {width!r}")
        batch = (1 if isinstance(prompt, str) else len(prompt)) if prompt is not None else embeds[0].shape[0]
        if isinstance(generator, list) and len(generator) != batch * num_images_per_prompt:
            raise ValueError(f"got {len(generator)} generators for {batch * num_images_per_prompt} images"
                             " (one per image, or a single generator)")

    def default_size(self) -> int:
        sample_size = self.unet.config.sample_size
        return (sample_size if isinstance(sample_size, int) else sample_size[0]) * self.vae_scale_factor

    def _size(self, height: int | None, width: int | None, init_image) -> tuple[int, int]:
        """The output size: as given, else the init image's (which must then suit the UNet), else the model's."""
        if init_image is None:
            h = w = self.default_size()
        else:
            h, w = image_size(init_image)
            f = self.size_factor
            if (height is None and h % f) or (width is None and w % f):
                raise ValueError(f"the init image is {w}x{h} pixels and this model needs multiples of {f}: pass"
                                 " height and width to resize it")
        return (h if height is None else height), (w if width is None else width)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
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
        image=None,
        controlnet_conditioning_scale: float = 1.0,
        init_image=None,
        mask_image=None,
        strength: float = 1.0,
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
        """Generate images: 1. check inputs; 2. encode the prompts once (the LLM, unless given as
        `prompt_embeds` etc. from `encode_prompt`: then no text_encoder/tokenizer is needed; CLIP if
        used); 3. timesteps (`retrieve_timesteps`: custom `timesteps` or `sigmas` too) and latents;
        4. `denoise`; 5. decode.

        Beyond diffusers' text-to-image arguments: `conditioning` ("ella", "ella+clip", "clip": the
        base model); `image` steers a `controlnet`; `init_image` starts from an image noised to
        `strength` (img2img; height and width default to its size), `mask_image` repaints where it
        is white (inpainting); `ip_adapter_image` conditions a loaded IP-Adapter;
        `prompt_weighting` ("attention", "anchor", "scale" or True) reads `(words:1.3)` in both
        prompts; `regions` (an `ella.regions.Layout`, a list of `Region`s, or one of those per
        prompt) draws each region from its own prompt, through the LLM and the connector, the
        prompt being the global one everywhere, in the share `base_ratio` inside regions (None: the
        layout's, 0.3 by default; `ella.regions` says how); `precompute_connector` runs the connector for all steps in one batched call
        before the loop (the same conditioning; faster where calls are bound by kernel launches:
        9.2% of an SD1.5 CFG step per-step vs 1.1% at once on an H200,
        benchmarks/results/connector_overhead_h200.txt); None (the default) does so on CUDA. `pooled_prompt_embeds` and `negative_pooled_prompt_embeds` are SDXL's (from
        its `encode_prompt`). As in diffusers: `eta` is DDIM's (stochastic schedulers draw their
        per-step noise from `generator` too); `guidance_rescale` rescales the guided prediction
        (Lin et al. 2023, 0 = off); `cross_attention_kwargs` reach the UNet's attention
        processors (`{"scale": 0.5}` sets a loaded LoRA's scale); `clip_skip` skips the CLIP
        encoder's last layers (the CLIP branch only); `callback_on_step_end(pipe, step, timestep,
        tensors)` (or a diffusers `PipelineCallback`) runs after each step with the tensors of
        `_callback_tensor_inputs` it names, and those it returns replace the step's; setting
        `pipe._interrupt = True` skips the remaining steps."""
        # 1. Inputs
        embeds = None if prompt_embeds is None else (
            prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)
        self._check_call(prompt, height, width, embeds, guidance_scale, num_inference_steps,
                         num_images_per_prompt, generator, guidance_rescale)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if not set(callback_on_step_end_tensor_inputs) <= set(self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs can only name {self._callback_tensor_inputs}, got "
                             f"{list(callback_on_step_end_tensor_inputs)}")
        prompts = None if prompt is None else [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        negatives = self._negatives(negative_prompt, batch)
        height, width = self._size(height, width, init_image)
        self._guidance_scale, self._guidance_rescale, self._clip_skip = guidance_scale, guidance_rescale, clip_skip
        self._cross_attention_kwargs, self._controlnet_conditioning_scale = cross_attention_kwargs, controlnet_conditioning_scale
        self._interrupt, self._num_timesteps = False, 0
        do_cfg, n = self.do_classifier_free_guidance, num_images_per_prompt
        if init_image is None and (mask_image is not None or strength != 1.0):
            raise ValueError("mask_image and strength need an init_image")
        self.check_inputs(prompts, negatives, height, width, conditioning, image,
                          embeds and (prompt_embeds, negative_prompt_embeds, do_cfg))
        pooled = self.check_pooled(pooled_prompt_embeds, negative_pooled_prompt_embeds, do_cfg, batch)

        # 2. Prompts, encoded once
        text, clip_embeds = self.prepare_conditioning(prompts, negatives, embeds, conditioning, do_cfg, n,
                                                      prompt_weighting)
        added, control = self.prepare_unet_inputs(prompts, negatives, batch, height, width, image, do_cfg, n,
                                                  ip_adapter_image, ip_adapter_image_embeds, pooled)
        regional = None
        if regions is not None:
            text, regional = self.prepare_regions(regions, prompts, negatives, text, conditioning, do_cfg, n, height,
                                                  width, prompt_weighting, base_ratio)

        # 3. Timesteps and initial latents: noise, or the init image noised to `strength`
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, self._execution_device, timesteps, sigmas)
        inpaint = None
        if init_image is None:
            latents = self.prepare_latents(batch * n, height, width, generator, latents)
        else:
            timesteps, latents, inpaint = self.prepare_image_latents(
                init_image, mask_image, strength, timesteps, num_inference_steps, batch, n, height, width, generator,
                latents)

        # 4. Denoising loop (with regions, under regional cross-attention, restored whatever happens)
        with regional_attention([self.unet, self.controlnet] if regional else [], regional and regional.weights):
            latents = self.denoise(latents, timesteps, text, clip_embeds, added, control,
                                   self.prepare_extra_step_kwargs(generator, eta), precompute_connector, inpaint,
                                   callback_on_step_end, callback_on_step_end_tensor_inputs, regional)

        # 5. Decode
        images = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

"""ELLAStableDiffusionPipeline: a frozen Stable-Diffusion-style UNet conditioned through ELLA.

The UNet is untouched (LoRA and other UNet adapters loaded with the diffusers API keep working);
only its `encoder_hidden_states` change, so a diffusers `ControlNetModel` plugs in as usual. The
LLM encodes each prompt once per call; the connector runs at every denoising step with that
step's timestep, on both CFG branches in one batched call (reference doc, Sec. 3).
"""

from __future__ import annotations

import inspect
import logging
import math

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from ..models.connector import ELLA
from ..text_encoders import TEXT_MODES, LLMEncoder, TextFeatures, pad_features

logger = logging.getLogger(__name__)

CONDITIONINGS = ("ella", "ella+clip", "clip")


class ELLAStableDiffusionPipeline(DiffusionPipeline):
    """Text-to-image with an LLM + ELLA connector in place of (or beside) CLIP.

    Components: `unet`, `scheduler` (any diffusers scheduler), `vae` (None for a pixel-space
    UNet), `text_encoder` + `tokenizer` (the frozen LLM), `ella` (the connector), and optional
    `clip_text_encoder` + `clip_tokenizer` for `conditioning="ella+clip"` (community checkpoints,
    LoRA trigger words) or `"clip"` (the plain base model, for comparisons). An optional
    `controlnet` (diffusers `ControlNetModel`) is steered by `image` and sees the same conditioning
    tokens as the UNet.
    """

    model_cpu_offload_seq = "text_encoder->clip_text_encoder->ella->controlnet->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer", "ella", "clip_text_encoder", "clip_tokenizer",
                             "controlnet"]

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
        )
        self.register_to_config(text_max_length=text_max_length, text_mode=text_mode, text_echo=text_echo)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        # ControlNet inputs stay in [0, 1] (diffusers' convention), at the output resolution.
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False)

    # ---- checks -------------------------------------------------------------------------------

    @property
    def size_factor(self) -> int:
        """Height and width must be multiples of this: the VAE's downsampling times the UNet's."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def clip_width(self) -> int:
        """The width of the CLIP tokens this pipeline builds (SDXL concatenates two encoders)."""
        return self.clip_text_encoder.config.hidden_size

    def check_inputs(self, prompts: list[str], negative: list[str], height: int, width: int, conditioning: str,
                     image=None):
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        if not prompts:
            raise ValueError("no prompt given: pass at least one prompt")
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("prompts must be non-empty strings")
        if len(negative) != len(prompts):
            raise ValueError(f"got {len(negative)} negative prompts for {len(prompts)} prompts")
        f = self.size_factor
        if height <= 0 or width <= 0 or height % f or width % f:
            raise ValueError(f"height and width must be positive multiples of {f} for this model, got {height}x{width}")
        cross = self.unet.config.cross_attention_dim
        if "ella" in conditioning:
            if self.ella is None or self.text_encoder is None or self.tokenizer is None:
                raise ValueError(f"conditioning={conditioning!r} needs the ella, text_encoder and tokenizer components")
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

    # ---- prompt encoding (once per call) ------------------------------------------------------

    def encode_llm(self, prompts: list[str]) -> TextFeatures:
        """LLM features (B, L, D) and mask of the prompts, in the connector's dtype."""
        encoder = LLMEncoder(
            self.text_encoder, self.tokenizer, self.config.text_max_length, self.config.text_mode, self.config.text_echo)
        features = encoder(prompts)
        features.hidden_states = features.hidden_states.to(self.ella.dtype)
        return features

    @torch.no_grad()
    def encode_clip(self, prompts: list[str]) -> torch.Tensor:
        """CLIP-style last hidden state (B, max_length, C), padded like Stable Diffusion's."""
        tok = self.clip_tokenizer(
            prompts, padding="max_length", truncation=True,
            max_length=self.clip_tokenizer.model_max_length, return_tensors="pt",
        )
        ids = tok.input_ids.to(self.clip_text_encoder.device)
        return self.clip_text_encoder(ids)[0].to(self.unet.dtype)

    def _repeat(self, x: torch.Tensor | None, n: int) -> torch.Tensor | None:
        return None if x is None else x.repeat_interleave(n, dim=0)

    def added_cond_kwargs(self, rows: list[str], height: int, width: int) -> dict | None:
        """Extra UNet inputs for the prompt rows (in CFG order); SD1.5-style UNets take none."""
        if self.unet.config.addition_embed_type == "text_time":
            raise ValueError("this UNet is SDXL-style (it needs pooled text and size ids): use ELLAStableDiffusionXLPipeline")
        return None

    def prepare_control_image(self, image, height: int, width: int, batch: int, n: int) -> torch.Tensor:
        """The control image(s) as (batch * n, C, H, W) in [0, 1]: one image for every prompt,
        or one per prompt."""
        control = self.control_image_processor.preprocess(image, height=height, width=width)
        if control.shape[0] not in (1, batch):
            raise ValueError(f"got {control.shape[0]} control images for {batch} prompts: pass 1 or {batch}")
        control = control.expand(batch, -1, -1, -1) if control.shape[0] == 1 else control
        return control.repeat_interleave(n, dim=0).to(self._execution_device, self.controlnet.dtype)

    # ---- the denoising loop -------------------------------------------------------------------

    def scheduler_step_kwargs(self, generator, eta: float) -> dict:
        """What this scheduler's `step` takes of the call's randomness: stochastic samplers (DDPM,
        Euler ancestral, SDE solvers) draw fresh noise at every step, from `generator` so that a
        seed gives the same image; DDIM also takes `eta`."""
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs = {"generator": generator} if "generator" in accepted else {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        return kwargs

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

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: TextFeatures | None = None,
        negative_prompt_embeds: TextFeatures | None = None,
        conditioning: str = "ella",
        image=None,
        controlnet_conditioning_scale: float = 1.0,
        precompute_connector: bool = False,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Generate images.

        1. Check inputs. 2. Encode prompts and negative prompts once (LLM; CLIP if used).
        3. Set the scheduler's timesteps and draw the initial latents.
        4. At each step: connector(text, t) for [negative; positive] in one call, UNet, CFG,
           scheduler step. 5. Decode (VAE, or nothing for a pixel-space UNet) and post-process.

        `prompt_embeds` / `negative_prompt_embeds` take precomputed LLM `TextFeatures`. With a
        `controlnet`, `image` (PIL, array or tensor; one, or one per prompt) steers it, scaled by
        `controlnet_conditioning_scale`. `precompute_connector=True` runs the connector for every
        step's timestep in one batched call before the loop (same conditioning; see
        `ELLA.forward_timesteps`): the connector never reads the latents, and one large call
        beats one small call per step where each call is bound by kernel launches (GPUs). `eta`
        is DDIM's (0: deterministic DDIM; other schedulers ignore it); stochastic schedulers draw
        their per-step noise from `generator` too.
        """
        # 1. Inputs
        if prompt_embeds is not None:
            batch = prompt_embeds.hidden_states.shape[0]
            prompts = list(prompt) if isinstance(prompt, list) else [prompt or "<embeds>"] * batch
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        negative = negative_prompt if negative_prompt is not None else ""
        negatives = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        sample_size = self.unet.config.sample_size
        sample_size = sample_size if isinstance(sample_size, int) else sample_size[0]
        height = sample_size * self.vae_scale_factor if height is None else height
        width = sample_size * self.vae_scale_factor if width is None else width
        self.check_inputs(prompts, negatives, height, width, conditioning, image)
        if not math.isfinite(guidance_scale):  # NaN would silently give blank images
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
        if num_inference_steps < 1 or num_images_per_prompt < 1:
            raise ValueError(f"num_inference_steps ({num_inference_steps}) and num_images_per_prompt"
                             f" ({num_images_per_prompt}) must be at least 1")
        if isinstance(generator, list) and len(generator) != len(prompts) * num_images_per_prompt:
            raise ValueError(f"got {len(generator)} generators for {len(prompts) * num_images_per_prompt} images"
                             " (one per image, or a single generator)")
        do_cfg = guidance_scale > 1.0
        device = self._execution_device
        n = num_images_per_prompt

        # 2. Prompts, encoded once: rows are [negatives; positives] when CFG is on.
        text = clip_embeds = None
        if "ella" in conditioning:
            pos = prompt_embeds if prompt_embeds is not None else self.encode_llm(prompts)
            feats = [pos]
            if do_cfg:
                neg = negative_prompt_embeds if negative_prompt_embeds is not None else self.encode_llm(negatives)
                feats = [neg, pos]
            text = pad_features(feats)
            text = TextFeatures(self._repeat(text.hidden_states, n), self._repeat(text.attention_mask, n))
        rows = negatives + prompts if do_cfg else prompts
        if "clip" in conditioning:
            clip_embeds = self._repeat(self.encode_clip(rows), n)
        added = self.added_cond_kwargs(rows, height, width)
        added = None if added is None else {k: self._repeat(v, n) for k, v in added.items()}
        control = None
        if image is not None:
            control = self.prepare_control_image(image, height, width, len(prompts), n)
            control = torch.cat([control] * 2) if do_cfg else control

        # 3. Timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (len(prompts) * n, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device, self.unet.dtype) * self.scheduler.init_noise_sigma

        # 4. Denoising loop: the connector runs at every step, with that step's timestep (or ran
        # for all of them at once, before the loop).
        step_kwargs = self.scheduler_step_kwargs(generator, eta)
        precomputed = None
        if precompute_connector and text is not None:
            precomputed = self.ella.forward_timesteps(text.hidden_states, timesteps, text.attention_mask)
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                step_output = None if precomputed is None else precomputed[i]
                cond, cond_mask = self.conditioning_at(t, text, clip_embeds, step_output)
                residuals = {}
                if control is not None:
                    down, mid = self.controlnet(
                        model_input, t, encoder_hidden_states=cond, controlnet_cond=control,
                        conditioning_scale=controlnet_conditioning_scale, added_cond_kwargs=added, return_dict=False,
                    )
                    residuals = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
                noise_pred = self.unet(
                    model_input, t, encoder_hidden_states=cond, encoder_attention_mask=cond_mask,
                    added_cond_kwargs=added, **residuals,
                ).sample
                if do_cfg:
                    uncond, cond_pred = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond_pred - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
                progress.update()

        # 5. Decode
        if output_type == "latent":
            images = latents
        elif self.vae is not None:
            images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        else:
            images = latents  # a pixel-space UNet denoises images in [-1, 1] directly
        if output_type != "latent":
            images = self.image_processor.postprocess(images.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

"""ELLAStableDiffusionXLPipeline: the ELLA pipeline for SDXL-style UNets.

SDXL differs from SD1.5 in what its UNet takes besides the text tokens: a pooled text embedding
and six size/crop numbers (`added_cond_kwargs`), and its CLIP tokens are two encoders'
penultimate hidden states side by side (768 + 1280 = 2048). The connector needs an output width
of 2048 (preset `sdxl-t5xl`: `proj_out` maps the 768-wide latents to 2048).

Where the pooled embedding comes from:
- `clip_text_encoder_2` (CLIPTextModelWithProjection, SDXL's OpenCLIP-G) when present, for both
  `conditioning="ella"` and `"ella+clip"`: the UNet then sees the pooled prompt it was trained on;
- otherwise the connector's own pool (`ELLA(pooled_dim=...)`, trained with it by `ella train` on
  an SDXL UNet) over its output tokens, at every step;
- otherwise zeros, which is SDXL's own unconditional pooled embedding
  (`force_zeros_for_empty_prompt`): the prompt then reaches the UNet through the tokens alone.
"""

from __future__ import annotations

import logging

import torch

from .pipeline_ella import ELLAStableDiffusionPipeline

logger = logging.getLogger(__name__)


class ELLAStableDiffusionXLPipeline(ELLAStableDiffusionPipeline):
    """SDXL + LLM + ELLA. Components as `ELLAStableDiffusionPipeline`, plus `clip_text_encoder_2`
    and `clip_tokenizer_2` (both optional) for SDXL's second CLIP encoder. `conditioning="clip"`
    and `"ella+clip"` need both CLIP encoders."""

    model_cpu_offload_seq = "text_encoder->clip_text_encoder->clip_text_encoder_2->image_encoder->unet->vae"
    _optional_components = ELLAStableDiffusionPipeline._optional_components + ["clip_text_encoder_2", "clip_tokenizer_2"]

    def __init__(self, unet, scheduler, vae=None, text_encoder=None, tokenizer=None, ella=None,
                 clip_text_encoder=None, clip_tokenizer=None, clip_text_encoder_2=None, clip_tokenizer_2=None,
                 controlnet=None, image_encoder=None, feature_extractor=None, text_max_length: int = 128,
                 text_mode: str = "fixed", text_echo: bool = False):
        super().__init__(unet, scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, ella=ella,
                         clip_text_encoder=clip_text_encoder, clip_tokenizer=clip_tokenizer, controlnet=controlnet,
                         image_encoder=image_encoder, feature_extractor=feature_extractor,
                         text_max_length=text_max_length, text_mode=text_mode, text_echo=text_echo)
        self.register_modules(clip_text_encoder_2=clip_text_encoder_2, clip_tokenizer_2=clip_tokenizer_2)
        if unet is not None and unet.config.addition_embed_type != "text_time":
            raise ValueError("ELLAStableDiffusionXLPipeline needs an SDXL-style UNet (addition_embed_type='text_time');"
                             " use ELLAStableDiffusionPipeline for SD1.5-style UNets")

    @property
    def clip_width(self) -> int:
        return self.clip_text_encoder.config.hidden_size + self.clip_text_encoder_2.config.hidden_size

    def check_inputs(self, prompts, negative, height, width, conditioning, image=None, embeds=None):
        if "clip" in conditioning and (self.clip_text_encoder_2 is None or self.clip_tokenizer_2 is None):
            raise ValueError(f"conditioning={conditioning!r} on SDXL needs clip_text_encoder_2 and clip_tokenizer_2")
        super().check_inputs(prompts, negative, height, width, conditioning, image, embeds)

    @torch.no_grad()
    def _clip_outputs(self, encoder, tokenizer, prompts: list[str]):
        ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids.to(self._execution_device)
        return encoder(ids, output_hidden_states=True)

    def encode_clip(self, prompts: list[str], clip_skip: int | None = None) -> torch.Tensor:
        """SDXL's text tokens: both encoders' penultimate hidden states (`clip_skip` layers before
        that, as diffusers' SDXL pipeline reads them), concatenated (B, 77, 2048)."""
        hidden = [self._clip_outputs(enc, tok, prompts).hidden_states[-((clip_skip or 0) + 2)]
                  for enc, tok in ((self.clip_text_encoder, self.clip_tokenizer),
                                   (self.clip_text_encoder_2, self.clip_tokenizer_2))]
        return torch.cat(hidden, dim=-1).to(self.unet.dtype)

    @property
    def has_pooled_clip(self) -> bool:
        return self.clip_text_encoder_2 is not None and self.clip_tokenizer_2 is not None

    def encode_pooled(self, prompts: list[str]) -> torch.Tensor:
        """SDXL's pooled text embedding (B, P) of the prompts, from clip_text_encoder_2."""
        return self._clip_outputs(self.clip_text_encoder_2, self.clip_tokenizer_2, prompts).text_embeds

    @torch.no_grad()
    def encode_prompt(self, prompt, negative_prompt=None, do_classifier_free_guidance: bool = True,
                      prompt_weighting: str | bool | None = None):
        """As `ELLAStableDiffusionPipeline.encode_prompt`, plus SDXL's pooled embeddings
        (pooled_prompt_embeds, negative_pooled_prompt_embeds: (B, P), from clip_text_encoder_2;
        None without it, and the negatives None without CFG), as diffusers' SDXL pipeline returns them."""
        prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask = (
            super().encode_prompt(prompt, negative_prompt, do_classifier_free_guidance, prompt_weighting))
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        pooled_prompt_embeds = negative_pooled_prompt_embeds = None
        if self.has_pooled_clip:
            pooled_prompt_embeds = self.encode_pooled(prompts)
            if do_classifier_free_guidance:
                negative_pooled_prompt_embeds = self.encode_pooled(self._negatives(negative_prompt, len(prompts)))
        return (prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask,
                pooled_prompt_embeds, negative_pooled_prompt_embeds)

    def check_pooled(self, pooled_prompt_embeds, negative_pooled_prompt_embeds, do_cfg: bool, batch: int):
        if pooled_prompt_embeds is None:
            if negative_pooled_prompt_embeds is not None:
                raise ValueError("negative_pooled_prompt_embeds given without pooled_prompt_embeds")
            return None
        if do_cfg and negative_pooled_prompt_embeds is None:
            raise ValueError("with guidance_scale > 1, pass negative_pooled_prompt_embeds with pooled_prompt_embeds"
                             " (encode_prompt returns both)")
        rows = [negative_pooled_prompt_embeds, pooled_prompt_embeds] if do_cfg else [pooled_prompt_embeds]
        for x in rows:
            if x.ndim != 2 or x.shape[0] != batch:
                raise ValueError(f"pooled embeddings must be (batch, width) = ({batch}, ...), got {tuple(x.shape)}")
        return torch.cat(rows)

    def added_cond_kwargs(self, rows: list[str] | None, height: int, width: int, batch: int,
                          pooled: torch.Tensor | None = None) -> dict:
        """`text_embeds` (pooled, (B, P)) and `time_ids` (B, 6): original size, crop (0, 0), target size."""
        device, dtype = self._execution_device, self.unet.dtype
        has_clip = pooled is None and self.has_pooled_clip
        if has_clip and rows is None:
            raise ValueError("SDXL's pooled embedding comes from clip_text_encoder_2, which reads the prompt text:"
                             " pass `prompt`, or pooled_prompt_embeds, along with prompt_embeds")
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).expand(batch, -1)
        time_ids = time_ids.to(device, dtype)
        if has_clip:
            pooled = self.encode_pooled(rows)
        elif pooled is None and self.ella is not None and hasattr(self.ella, "pool"):
            return {"text_embeds": None, "time_ids": time_ids}  # the connector's pool, at every step
        elif pooled is None:
            logger.info("no clip_text_encoder_2: using SDXL's unconditional (zero) pooled text embedding")
            pooled_dim = self.unet.config.projection_class_embeddings_input_dim - 6 * self.unet.config.addition_time_embed_dim
            pooled = torch.zeros(batch, pooled_dim)
        return {"text_embeds": pooled.to(device, dtype), "time_ids": time_ids}

    def added_cond_at(self, added: dict, cond: torch.Tensor) -> dict:
        if added.get("text_embeds") is not None:
            return added
        # Only without clip_text_encoder_2, hence without CLIP tokens: `cond` is the connector's output.
        return {**added, "text_embeds": self.ella.pooled(cond).to(cond.dtype)}

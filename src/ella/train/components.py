"""The frozen parts of training: UNet, VAE (None for a pixel-space UNet), noise scheduler, LLM."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..models import ELLA
from ..paths import require_local_folder
from ..text_encoders import LLMEncoder, load_text_encoder
from .config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class FrozenParts:
    unet: torch.nn.Module | None  # None when only caching features
    vae: torch.nn.Module | None
    scheduler: object | None  # the training noise scheduler (DDPM), from the model's scheduler config
    text_encoder: torch.nn.Module
    tokenizer: object
    pooled_encoder: tuple | None = None  # SDXL: (CLIPTextModelWithProjection, tokenizer) for the pooled embedding

    def encoder(self, config: TrainConfig) -> LLMEncoder:
        return LLMEncoder(self.text_encoder, self.tokenizer, config.text_max_length, config.text_mode, config.text_echo)

    @property
    def downsampling(self) -> int:
        """How many pixels a UNet's coarsest feature spans: the VAE's factor (1 for a pixel-space
        UNet) times the UNet's (its down blocks halve all but the last). A training resolution must
        be a multiple of it."""
        vae = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        unet = 2 ** (len(self.unet.config.down_block_types) - 1) if self.unet is not None else 1
        return vae * unet

    @property
    def sdxl(self) -> bool:
        return self.unet is not None and self.unet.config.addition_embed_type == "text_time"

    @property
    def pooled_dim(self) -> int | None:
        """The width of the pooled text embedding an SDXL UNet takes (None for other UNets)."""
        if not self.sdxl:
            return None
        c = self.unet.config
        return c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim

    @torch.no_grad()
    def encode_pooled(self, captions: list[str]) -> torch.Tensor:
        """(B, P) pooled embeddings of the captions; zeros for the empty caption, as SDXL's
        pipelines give the unconditional branch (force_zeros_for_empty_prompt)."""
        model, tokenizer = self.pooled_encoder
        ids = tokenizer(captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids.to(model.device)
        pooled = model(ids).text_embeds
        empty = torch.tensor([not c for c in captions], device=pooled.device)
        return torch.where(empty[:, None], torch.zeros_like(pooled), pooled)


def _freeze(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    return module.requires_grad_(False).eval().to(device=device, dtype=dtype)


def load_frozen_parts(
    config: TrainConfig, device: torch.device, dtype: torch.dtype, need_unet: bool = True
) -> FrozenParts:
    from diffusers import AutoencoderKL, DDPMScheduler

    from ..pipelines.loading import load_unet
    from ..testing import tiny_t5, tiny_unet, tiny_vae

    if config.model in ("tiny", "tiny-pixel", "tiny-sdxl"):
        pixel = config.model == "tiny-pixel"
        sdxl = dict(cross_attention_dim=32, pooled_dim=16) if config.model == "tiny-sdxl" else {}
        unet = tiny_unet(in_channels=3 if pixel else 4, sample_size=config.resolution if pixel else config.resolution // 2,
                         **sdxl)
        vae = None if pixel else tiny_vae()
        scheduler = DDPMScheduler(num_train_timesteps=1000)
    else:
        require_local_folder(config.model, "model folder")
        has_vae = not os.path.isdir(config.model) or os.path.isdir(os.path.join(config.model, "vae"))
        try:
            unet = load_unet(config.model, "unet") if need_unet else None
            scheduler = DDPMScheduler.from_pretrained(config.model, subfolder="scheduler") if need_unet else None
            vae = AutoencoderKL.from_pretrained(config.model, subfolder="vae") if has_vae else None
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load the frozen models from {config.model!r}: {str(err).splitlines()[0]}") from err
    if config.llm == "tiny":
        text_encoder, tokenizer = tiny_t5()
    else:
        text_encoder, tokenizer = load_text_encoder(config.llm)
    pooled = None
    if config.pooled_text_encoder:
        model, pooled_tokenizer = load_pooled_encoder(config.pooled_text_encoder)
        pooled = (_freeze(model, device, dtype), pooled_tokenizer)
    return FrozenParts(
        unet=_freeze(unet, device, dtype) if unet is not None else None,
        vae=_freeze(vae, device, dtype) if vae is not None else None,
        scheduler=scheduler,
        text_encoder=_freeze(text_encoder, device, dtype),
        tokenizer=tokenizer,
        pooled_encoder=pooled,
    )


def load_pooled_encoder(path: str):
    """(CLIPTextModelWithProjection, tokenizer) from a folder holding both, or from an SDXL
    folder or hub id: its text_encoder_2/ and tokenizer_2/."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    require_local_folder(path, "pooled_text_encoder folder")
    whole = os.path.isfile(os.path.join(path, "config.json"))
    try:
        return (CLIPTextModelWithProjection.from_pretrained(path, subfolder="" if whole else "text_encoder_2"),
                AutoTokenizer.from_pretrained(path, subfolder="" if whole else "tokenizer_2"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load the pooled text encoder from {path!r}: {str(err).splitlines()[0]}") from err


def build_connector(config: TrainConfig, parts: FrozenParts) -> ELLA:
    """A fresh connector from the preset, fitted to the LLM width and the UNet's cross-attention."""
    kwargs = {**config.connector_overrides, "connector_type": config.connector_type,
              "input_dim": parts.text_encoder.config.hidden_size,  # T5 maps hidden_size to d_model
              "output_dim": parts.unet.config.cross_attention_dim}
    if parts.pooled_encoder is not None:
        width = parts.pooled_encoder[0].config.projection_dim
        if parts.pooled_dim != width:
            raise ValueError(f"pooled_text_encoder gives {width}-wide pooled embeddings but the UNet takes"
                             f" {parts.pooled_dim} ({'not an SDXL-style UNet' if parts.pooled_dim is None else 'SDXL'})")
    elif parts.sdxl:  # the connector makes SDXL's pooled embedding itself
        kwargs["pooled_dim"] = parts.pooled_dim
    return ELLA.from_preset(config.connector, **kwargs)  # an unknown preset is refused there


def load_init_connector(ella: ELLA, config: TrainConfig) -> None:
    """Fine-tuning: `config.init_connector`'s weights into `ella` (the preset fixes the
    architecture, the file the weights)."""
    from ..pipelines.loading import load_connector

    start = load_connector(config.init_connector)
    try:
        ella.load_state_dict(start.state_dict())
    except RuntimeError as err:
        raise ValueError(f"init_connector {config.init_connector} does not fit connector {config.connector!r}"
                         f" ({config.connector_type}): {str(err).splitlines()[1].strip()}") from err
    logger.info("connector weights from %s", config.init_connector)

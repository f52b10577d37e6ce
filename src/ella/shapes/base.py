"""The ShapesWorld base model (it plays Stable Diffusion 1.5 with CLIP): a pixel-space UNet and a
small CLIP-style text encoder trained together from scratch on short alt-text captions, with a
16-token context (CLIP's 77 tokens are likewise short for dense prompts).

`ella shapes train-base configs/shapes-base.yaml` writes a folder with unet/, base_text_encoder/,
base_tokenizer/ and scheduler/; connectors are then trained on the frozen UNet with `ella train`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..train.config import check_schedule
from ..train.utils import ema_update, lr_lambda, plot_losses, stop_flag
from .data import TRAIN_SEED, render_short_caption_set
from .styles import make_item
from .world import BACKGROUNDS, COLORS, NUMBERS, PLACE_PROBABILITY, SHAPES, sample_scene

logger = logging.getLogger(__name__)


POSITION_EMBEDDINGS = ("none", "input", "attention")


@dataclass
class BaseConfig:
    n_scenes: int = 50_000  # rendered training scenes (4 short captions each)
    captions_per_scene: int = 4
    place_probability: float = PLACE_PROBABILITY  # how often a short caption names an object's place
    resolution: int = 32
    max_tokens: int = 16  # the base text encoder's context
    unet_channels: list = field(default_factory=lambda: [32, 64, 128])
    attention_heads: int = 4  # diffusers' attention_head_dim is the number of heads here
    cross_attention_dim: int = 128  # the text encoder width, and what connectors must output
    text_layers: int = 3
    # "none": diffusers' plain UNet; "input": ShapesUNet2DConditionModel with a position embedding
    # after conv_in; "attention": also one at every transformer's input (see ella.shapes.unet)
    position_embedding: str = "attention"
    max_steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    lr_final_fraction: float = 1.0  # < 1: cosine decay to this fraction of lr at max_steps
    init_from: str | None = None  # a base model folder to continue training from (its EMA weights)
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/shapes-base"
    log_every: int = 100
    snapshot_every: int = 0  # > 0: also export the EMA weights to output_dir/step-N every N steps

    def validate(self) -> "BaseConfig":
        if self.max_steps < 1 or self.batch_size < 1 or self.n_scenes < self.batch_size:
            raise ValueError("max_steps and batch_size must be >= 1, and n_scenes >= batch_size")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, not {self.position_embedding!r}")
        check_schedule(self)
        return self


def vocabulary() -> list[str]:
    """Every word ShapesWorld captions use (short and dense), for the word-level tokenizer."""
    words = set(SHAPES) | {s + "s" for s in SHAPES} | set(COLORS) | set(BACKGROUNDS) | set(NUMBERS)
    words |= {"large", "small", "shape", "shapes", "object", "objects", "top", "middle", "bottom", "left", "right",
              "center", "a", "the", "at", "in", "on", "and", "one", "to", "of", "above", "below"}
    rng = random.Random(0)
    for _ in range(3000):  # the dense templates' remaining words
        words |= set(make_item(sample_scene(rng), rng, "v")[0].lower().replace(".", " ").replace(",", " ").replace(":", " ").split())
    return sorted(words)


def build_base_models(config: BaseConfig):
    """(unet, text_encoder, tokenizer, noise scheduler) with fresh weights."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..word_tokenizer import word_tokenizer
    from .unet import ShapesUNet2DConditionModel

    tokenizer = word_tokenizer(vocabulary(), model_max_length=config.max_tokens)
    n = len(config.unet_channels)
    if config.position_embedding == "none":
        unet_class = UNet2DConditionModel
    else:
        unet_class = functools.partial(ShapesUNet2DConditionModel, attention_positions=config.position_embedding == "attention")
    unet = unet_class(
        sample_size=config.resolution, in_channels=3, out_channels=3,
        block_out_channels=tuple(config.unet_channels), layers_per_block=1, norm_num_groups=16,
        # attention only at the lower resolutions (16x16, 8x8): faster, and enough at 32x32
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=config.cross_attention_dim, attention_head_dim=config.attention_heads,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.cross_attention_dim, intermediate_size=4 * config.cross_attention_dim,
        num_hidden_layers=config.text_layers, num_attention_heads=4, max_position_embeddings=config.max_tokens,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    # CLIP's default init (token embeddings of std 0.02, like the positions) leaves prompts nearly
    # indistinguishable after the final LayerNorm, and the UNet then learns to ignore the text
    # (measured: cross-attention sensitivity falls to ~0 within 300 steps). Unit-variance token
    # embeddings make the text informative from the first step.
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight.normal_(0.0, 1.0)
    # v-prediction on a cosine schedule: at 32x32 in pixel space it learns far faster than epsilon.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    return unet, text_encoder, tokenizer, scheduler


class BaseModel(torch.nn.Module):
    """UNet + text encoder, trained together (both are trainable here, unlike ELLA's parts)."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, noisy, t, input_ids):
        return self.unet(noisy, t, encoder_hidden_states=self.text_encoder(input_ids)[0]).sample


def load_base_weights(unet, text_encoder, folder: str) -> None:
    """Start from a trained base model (same architecture) instead of fresh weights. A base saved
    before the UNet had its position embeddings loads too: they then start at their init."""
    from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import load_file
    from transformers.utils import SAFE_WEIGHTS_NAME

    unet_file = os.path.join(folder, "unet", SAFETENSORS_WEIGHTS_NAME)
    text_file = os.path.join(folder, "base_text_encoder", SAFE_WEIGHTS_NAME)
    if not (os.path.isfile(unet_file) and os.path.isfile(text_file)):
        raise ValueError(f"init_from: not a base model folder (no unet/ and base_text_encoder/ weights): {folder}")
    # the raw state dicts: a model class would fill missing position embeddings with placeholders
    for module, file in ((unet, unet_file), (text_encoder, text_file)):
        state = load_file(file)
        try:
            missing, unexpected = module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        except RuntimeError as e:
            raise ValueError(f"init_from {folder}: architecture differs from this config ({str(e).splitlines()[0]})") from None
        if unexpected or [k for k in missing if not k.endswith(".position")]:
            raise ValueError(f"init_from {folder}: architecture differs from this config"
                             f" (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    logger.info("continuing from %s", folder)


def train_base(config: BaseConfig) -> str:
    """Train the base model; returns the output folder (a shapes model folder). SIGTERM or Ctrl-C
    stops after the current step and still exports the EMA weights trained so far."""
    from ..devices import resolve_device

    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    unet, text_encoder, tokenizer, scheduler = build_base_models(config)
    if config.init_from:
        load_base_weights(unet, text_encoder, config.init_from)
    model = BaseModel(unet, text_encoder).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    logger.info("base UNet %.2fM parameters, text encoder %.2fM", sum(p.numel() for p in unet.parameters()) / 1e6,
                sum(p.numel() for p in text_encoder.parameters()) / 1e6)

    logger.info("rendering %d training scenes", config.n_scenes)
    images, captions = render_short_caption_set(config.n_scenes, config.captions_per_scene, config.resolution, TRAIN_SEED,
                                                config.place_probability)
    pixels = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (N, 3, H, W)
    flat = [c for per_scene in captions for c in per_scene] + [""]
    ids = tokenizer(flat, padding="max_length", truncation=True, max_length=config.max_tokens, return_tensors="pt").input_ids
    ids = ids.to(device).view(-1)[: -config.max_tokens].view(config.n_scenes, config.captions_per_scene, -1)
    empty_ids = tokenizer([""], padding="max_length", max_length=config.max_tokens, return_tensors="pt").input_ids.to(device)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.warmup_steps, config.max_steps, config.lr_final_fraction))
    g = torch.Generator(device="cpu").manual_seed(config.seed)
    losses, window, start = [], [], time.perf_counter()
    stop, restore_signals = stop_flag()
    try:
        for step in tqdm(range(1, config.max_steps + 1), desc="base", unit="step"):
            idx = torch.randint(0, config.n_scenes, (config.batch_size,), generator=g)
            which = torch.randint(0, config.captions_per_scene, (config.batch_size,), generator=g)
            x0 = pixels[idx.to(device)]
            tokens = ids[idx.to(device), which.to(device)]
            drop = (torch.rand(config.batch_size, generator=g) < config.caption_dropout).to(device)
            tokens = torch.where(drop[:, None], empty_ids, tokens)
            noise = torch.randn(x0.shape, generator=g).to(device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (config.batch_size,), generator=g).to(device)
            pred = model(scheduler.add_noise(x0, noise, t), t, tokens)
            loss = F.mse_loss(pred, scheduler.get_velocity(x0, noise, t))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_sched.step()
            ema_update(ema, model, config.ema_decay)
            window.append(loss.item())
            if step % config.log_every == 0:
                losses.append((step, sum(window) / len(window)))
                logger.info("step %d loss %.4f lr %.1e samples/s %.0f", step, losses[-1][1], lr_sched.get_last_lr()[0],
                            step * config.batch_size / (time.perf_counter() - start))
                window = []
            if config.snapshot_every and step % config.snapshot_every == 0 and step < config.max_steps:
                export_base(dataclasses.replace(config, output_dir=os.path.join(config.output_dir, f"step-{step}")),
                            ema, tokenizer, scheduler, losses)
            if stop["requested"]:
                logger.warning("stopped at step %d: exporting the EMA weights trained so far", step)
                break
    except KeyboardInterrupt:
        logger.warning("interrupted: exporting the EMA weights trained so far")
    finally:
        restore_signals()
    return export_base(config, ema, tokenizer, scheduler, losses)


def export_base(config: BaseConfig, ema: BaseModel, tokenizer, scheduler, losses) -> str:
    """unet/, base_text_encoder/, base_tokenizer/, scheduler/ (DPM-Solver++ for sampling)."""
    import yaml
    from diffusers import DPMSolverMultistepScheduler

    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    slim = copy.deepcopy(ema).to("cpu", torch.float16)  # a copy: mid-run snapshots leave the EMA as it is
    slim.unet.save_pretrained(os.path.join(out, "unet"))
    slim.text_encoder.save_pretrained(os.path.join(out, "base_text_encoder"))
    tokenizer.save_pretrained(os.path.join(out, "base_tokenizer"))
    DPMSolverMultistepScheduler.from_config(scheduler.config).save_pretrained(os.path.join(out, "scheduler"))
    with open(os.path.join(out, "base_config.yaml"), "w") as f:
        yaml.safe_dump(dataclasses.asdict(config), f, sort_keys=False)
    if losses:
        plot_losses(losses, os.path.join(out, "base_loss.png"))
    return out

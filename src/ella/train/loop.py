"""The training loop for ELLA connectors: frozen UNet, VAE and LLM; only the connector learns.

`train(config)` reads in one sitting: build, resume, then `train_step` until max_steps, with
`save_checkpoint` every checkpoint_every steps, and `finish` (the slim export) at the end. Built on accelerate, so the same
code runs on a laptop CPU, one GPU, or many (`accelerate launch -m ella.cli train CONFIG`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..devices import accelerator_available, resolve_mixed_precision, torch_dtype
from ..errors import TrainingInterrupted
from ..fileio import folder_lock
from ..models import ELLA
from ..text_encoders import LLMEncoder
from .attention import attention_in_float32
from .cache import CachedFeatureDataset, encode_images, fingerprint, read_index
from .checkpoint import checkpoint_dir, load_latest_state, save_training_state
from .components import FrozenParts, build_connector, load_frozen_parts, load_init_connector
from .config import TrainConfig
from .data import DataPosition, TarShardStream, iterate_batches, make_dataset
from .utils import ema_update, lr_lambda, plot_losses, stop_flag

logger = logging.getLogger(__name__)

class ConnectorTrainingModel(torch.nn.Module):
    """One module around the frozen UNet and the trainable connector (as IP-Adapter's trainer):
    DDP wraps it whole, and only `self.ella`'s parameters reach the optimizer. An SDXL UNet also
    gets its added conditions: the pooled text embedding (a CLIP encoder's, passed in as
    `pooled`, or the connector's own pool over its output) and the size ids of square training
    crops at `resolution`."""

    def __init__(self, unet: torch.nn.Module, ella: ELLA, resolution: int = 512):
        super().__init__()
        self.unet, self.ella = unet, ella
        # SDXL's six size ids (original size, crop (0, 0), target size) of the square training
        # crops: built once, moved with the module, not rebuilt at every step.
        r = resolution
        self.register_buffer("time_ids", torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32), persistent=False)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None,
                pooled: torch.Tensor | None = None):
        cond = self.ella(text.to(self.ella.dtype), timesteps, text_mask)  # (B, N, C), per-sample timesteps
        unet_mask = text_mask if self.ella.keeps_text_length else None
        added = None
        if self.unet.config.addition_embed_type == "text_time":
            pooled = self.ella.pooled(cond) if pooled is None else pooled
            added = {"text_embeds": pooled.to(self.unet.dtype),
                     "time_ids": self.time_ids.to(self.unet.dtype).expand(len(noisy), -1)}
        return self.unet(noisy, timesteps, encoder_hidden_states=cond.to(self.unet.dtype),
                         encoder_attention_mask=unet_mask, added_cond_kwargs=added).sample


@dataclass
class TrainResult:
    step: int
    losses: list = field(default_factory=list)  # (step, loss) every optimizer step
    skipped: int = 0  # unusable samples met
    export_dir: str | None = None
    samples_per_second: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time in training steps, summed over resumes


def step_generator(seed: int, rank: int, step: int, micro: int) -> torch.Generator:
    """Noise, timesteps and caption dropout of one micro-batch come from a generator seeded by
    (seed, process, step, micro-batch): a resumed run draws exactly what a straight run draws."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + rank) * 10_000_019 + step) * 1009 + micro)


class _EmptyPrompt:
    """The empty prompt's features (caption dropout), from the cache or encoded once."""

    def __init__(self, config: TrainConfig, encoder: LLMEncoder):
        if config.cache_dir and os.path.isfile(os.path.join(config.cache_dir, "empty.safetensors")):
            from safetensors.torch import load_file

            empty = load_file(os.path.join(config.cache_dir, "empty.safetensors"))
            self.features, self.mask = empty["text_features"], empty["text_mask"]
        else:
            enc = encoder.encode_padded([""])
            self.features, self.mask = enc.hidden_states, enc.attention_mask


def make_batch_tensors(
    batch: dict, config: TrainConfig, parts: FrozenParts, encoder: LLMEncoder, empty: _EmptyPrompt,
    g: torch.Generator, device,
):
    """(clean latents, text features, text mask, pooled CLIP embedding or None) of a batch, with
    caption dropout applied (a dropped caption's pooled embedding is zeros, SDXL's unconditional)."""
    n = len(batch["key"])
    drop = torch.rand(n, generator=g) < config.caption_dropout
    pooled = None
    if "latents" in batch:  # from the feature cache
        latents = batch["latents"].to(device)
        text, mask = batch["text_features"].clone(), batch["text_mask"].clone()
        text[drop], mask[drop] = empty.features.to(text.dtype), empty.mask.to(mask.dtype)
        text, mask = text.to(device), mask.to(device)
        if "pooled" in batch:
            pooled = batch["pooled"].clone()
            pooled[drop] = 0
            pooled = pooled.to(device)
    else:
        latents = encode_images(parts, batch["pixel_values"].to(device))
        captions = ["" if d else c for d, c in zip(drop.tolist(), batch["caption"])]
        enc = encoder.encode_padded(captions)
        text, mask = enc.hidden_states, enc.attention_mask
        pooled = parts.encode_pooled(captions) if parts.pooled_encoder is not None else None
    if parts.pooled_encoder is not None and pooled is None:
        raise ValueError("pooled_text_encoder is set but the feature cache holds no pooled embeddings: rebuild it"
                         " with `ella cache`")
    if config.text_noise or config.token_dropout:
        text, mask = regularise_text(text, mask, ~drop, config, g)
    return latents.float(), text, mask, pooled


def regularise_text(text: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, config: TrainConfig,
                    g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`text_noise` and `token_dropout` on the real tokens of `rows` (captions not dropped):
    text (B, L, D), mask (B, L). Random draws on the CPU from `g` (as the diffusion noise is), so
    a run is reproducible on any device, copied to the device: the mask never leaves it (no host
    sync in the step). A caption keeps at least one token."""
    real = mask.bool() & rows.to(mask.device)[:, None]  # (B, L)
    if config.token_dropout:
        cut = real & (torch.rand(real.shape, generator=g).to(mask.device) < config.token_dropout)
        cut &= cut.sum(1, keepdim=True) < real.sum(1, keepdim=True)  # never every token of a caption
        mask = mask.masked_fill(cut, 0)
        text = text.masked_fill(cut.to(text.device)[..., None], 0)
        real &= ~cut
    if config.text_noise:
        counts = real.sum(1).clamp(min=1).to(text.device)  # (B,)
        weights = real.to(text.device, text.dtype)[..., None]
        rms = ((text.float().square() * weights).sum((1, 2)) / (counts * text.shape[-1])).sqrt()  # (B,)
        noise = torch.randn(text.shape, generator=g).to(text.device, text.dtype)
        text = text + config.text_noise * rms.to(text.dtype)[:, None, None] * noise * weights
    return text, mask


def sample_timesteps(n: int, num_train_timesteps: int, g: torch.Generator, power: float = 1.0,
                     logit_normal: list | None = None) -> torch.Tensor:
    """(n,) integer timesteps t = floor(T * u**(1/power)), u ~ U[0, 1): uniform for power 1; for
    power p the density grows as t**(p-1), towards the noisy steps where the layout is decided.
    `logit_normal` [mean, std]: t = floor(T * sigmoid(x)), x ~ N(mean, std), most mass mid-way."""
    if logit_normal is not None:
        mean, std = (float(v) for v in logit_normal)
        x = torch.randn(n, generator=g, dtype=torch.float64) * std + mean
        return (num_train_timesteps * torch.sigmoid(x)).long().clamp_(max=num_train_timesteps - 1)
    if power == 1.0:  # the paper's uniform draw, kept bit-for-bit so earlier runs reproduce
        return torch.randint(0, num_train_timesteps, (n,), generator=g)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return (num_train_timesteps * u ** (1.0 / power)).long().clamp_(max=num_train_timesteps - 1)


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B,) min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for an epsilon
    target, / (SNR + 1) for a v target (whose loss is already SNR + 1 times epsilon's)."""
    alpha_bar = scheduler.alphas_cumprod.to(t.device)[t].double()
    snr = alpha_bar / (1 - alpha_bar)
    weights = snr.clamp(max=gamma)
    return (weights / (snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr)).float()


def noised(parts: FrozenParts, latents, g: torch.Generator, config: TrainConfig, groups: int = 1):
    """(noisy latents, timesteps, target): noise and per-sample timesteps drawn from `g` as
    `config` says (timestep_power or timestep_logit_normal); the target is the scheduler's
    (epsilon or v). `groups` > 1: latents are that many groups of rows (DPO's winners, then
    losers) and row i of every group gets the same noise and timestep."""
    sched = parts.scheduler
    rows = latents.shape[0] // groups
    noise = torch.randn((rows, *latents.shape[1:]), generator=g).to(latents.device).repeat(
        groups, *[1] * (latents.ndim - 1))
    t = sample_timesteps(rows, sched.config.num_train_timesteps, g, config.timestep_power,
                         config.timestep_logit_normal).to(latents.device).repeat(groups)
    noisy = sched.add_noise(latents, noise, t)
    if sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(latents, noise, t)
    elif sched.config.prediction_type == "epsilon":
        target = noise
    else:
        raise ValueError(f"unsupported prediction_type {sched.config.prediction_type!r}")
    return noisy, t, target


def diffusion_loss(model, parts: FrozenParts, latents, text, mask, g: torch.Generator, use_mask: bool,
                   config: TrainConfig, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """MSE to the scheduler's target at per-sample random timesteps (`noised`), weighted as
    `config` says (snr_gamma)."""
    noisy, t, target = noised(parts, latents, g, config)
    pred = model(noisy.to(parts.unet.dtype), t, text, mask if use_mask else None, pooled)
    if not config.snr_gamma:
        return F.mse_loss(pred.float(), target.float())
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)  # (B,)
    return (per_sample * min_snr_weights(parts.scheduler, t, config.snr_gamma)).mean()


def dpo_objective(model_winner, model_loser, reference_winner, reference_loser, beta: float) -> torch.Tensor:
    """Diffusion-DPO's loss (Wallace et al. 2023, eq. 14) from per-pair denoising errors (B,):
    -log sigmoid(-beta / 2 * ((e_w - e_l) - (e_w_ref - e_l_ref))). It falls as the model's error
    on the winner drops against the loser's, measured from the reference's."""
    inside = -0.5 * beta * ((model_winner - model_loser) - (reference_winner - reference_loser))
    return -F.logsigmoid(inside).mean()


def dpo_loss(model, reference, parts: FrozenParts, winner, loser, text, mask, g: torch.Generator, use_mask: bool,
             config: TrainConfig, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """DPO on (winner, loser) latents of the same captions: both noised with the same noise and
    timestep, the trained connector's and the frozen reference's errors compared (`dpo_objective`)."""
    noisy, t, target = noised(parts, torch.cat([winner, loser]), g, config, groups=2)
    b = winner.shape[0]
    args = (noisy.to(parts.unet.dtype), t, text.repeat(2, 1, 1),
            mask.repeat(2, 1) if use_mask and mask is not None else None,
            None if pooled is None else pooled.repeat(2, 1))
    errors = F.mse_loss(model(*args).float(), target.float(), reduction="none").flatten(1).mean(1)  # (2B,)
    with torch.no_grad():
        reference_errors = F.mse_loss(reference(*args).float(), target.float(), reduction="none").flatten(1).mean(1)
    return dpo_objective(errors[:b], errors[b:], reference_errors[:b], reference_errors[b:], config.dpo_beta)


def open_data(config: TrainConfig, parts: FrozenParts, rank: int, world: int, position: DataPosition):
    """An endless batch iterator over the cache (if built) or the raw data, from `position`."""
    if config.cache_dir and os.path.isfile(os.path.join(config.cache_dir, "index.json")):
        index = read_index(config.cache_dir)
        if index["fingerprint"] != fingerprint(config, parts):
            raise ValueError(f"the cache in {config.cache_dir} was built for {index['fingerprint']}, not this config")
        logger.info("training from the feature cache in %s", config.cache_dir)
        return iterate_batches(CachedFeatureDataset(config.cache_dir), config.batch_size, config.seed, position, rank, world)
    if config.train_data.endswith(".tar"):
        mix = None
        if config.captions:
            from .captions import CaptionMix

            mix = CaptionMix(config.captions, config.caption_draw_seed)
        return TarShardStream(config.train_data, config.resolution, mix).batches(config.batch_size, position, rank,
                                                                                 world)
    dataset = make_dataset(config.train_data, config.resolution, config.seed, config.captions,
                           (config.replay_data, config.replay_fraction), config.caption_draw_seed)
    return iterate_batches(dataset, config.batch_size, config.seed, position, rank, world, config.num_workers)


def training_pipeline(config: TrainConfig, parts: FrozenParts, ella: ELLA):
    """The pipeline of the frozen parts and a connector, as the config reads text (DPM-Solver++)."""
    from diffusers import DPMSolverMultistepScheduler

    from ..pipelines import ELLAStableDiffusionPipeline, ELLAStableDiffusionXLPipeline

    sdxl = {} if not parts.sdxl else dict(zip(("clip_text_encoder_2", "clip_tokenizer_2"), parts.pooled_encoder or ()))
    pipe = (ELLAStableDiffusionXLPipeline if parts.sdxl else ELLAStableDiffusionPipeline)(
        unet=parts.unet, vae=parts.vae, scheduler=DPMSolverMultistepScheduler.from_config(parts.scheduler.config),
        text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, ella=ella,
        text_max_length=config.text_max_length, text_mode=config.text_mode, text_echo=config.text_echo, **sdxl,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def validate(config: TrainConfig, parts: FrozenParts, ella: ELLA, step: int) -> str:
    """A grid of the validation prompts (fixed seeds) with the current (EMA) connector."""
    from ..images import make_grid, save_atomic

    pipe = training_pipeline(config, parts, ella)
    gens = [torch.Generator().manual_seed(i) for i in range(len(config.validation_prompts))]
    images = pipe(config.validation_prompts, num_inference_steps=config.validation_steps,
                  guidance_scale=config.validation_guidance, generator=gens).images
    path = os.path.join(config.output_dir, "validation", f"step-{step:08d}.png")
    save_atomic(make_grid(images), path)
    return path


def export(config: TrainConfig, ella: ELLA) -> str:
    """The slim export: `save_pretrained` of the (EMA) connector plus the resolved config, written
    to a temporary folder that replaces `export/` whole (a kill never leaves half an export)."""
    path = os.path.join(config.output_dir, "export")
    tmp, old = path + ".tmp", path + ".old"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    ella.save_pretrained(tmp)
    with open(os.path.join(tmp, "training_config.yaml"), "w") as f:
        f.write(config.to_yaml())
    if os.path.isdir(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


@dataclass
class Run:
    """What the parts of one training run share."""

    config: TrainConfig
    accelerator: object
    parts: FrozenParts
    ella: ELLA  # the trainable connector (unwrapped)
    model: torch.nn.Module  # ConnectorTrainingModel, as prepared by accelerate
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: ELLA | None
    reference: torch.nn.Module | None = None  # DPO: the frozen init_connector around the same UNet
    cpu_bf16: bool = False  # the step under a CPU bf16 autocast (mixed_precision resolved to bf16 on a CPU)
    result: TrainResult = field(default_factory=lambda: TrainResult(step=0))
    position: DataPosition = field(default_factory=DataPosition)
    seen: int = 0  # samples trained on in this process's session (for samples/s)
    start: float = field(default_factory=time.perf_counter)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def frozen_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    """The frozen parts' weights dtype: `mixed_precision` (resolved for `device`) on an accelerator;
    fp32 on the CPU, where bf16 runs as an autocast that `train_step` opens."""
    precision = resolve_mixed_precision(config.mixed_precision, device)
    return torch_dtype(precision) if device.type != "cpu" and precision != "no" else torch.float32


def build(config: TrainConfig, parts: FrozenParts | None) -> Run:
    """Frozen parts in the compute dtype; the connector in fp32, identical on every process; only
    its parameters reach the optimizer."""
    from accelerate import Accelerator

    # cpu=True without a GPU: then a multi-process launch (accelerate launch --multi_gpu, torchrun)
    # runs as MULTI_CPU over gloo instead of silently running N independent copies.
    cpu = not accelerator_available()
    precision = resolve_mixed_precision(config.mixed_precision, "cpu" if cpu else "cuda")
    # On a CPU, bf16 is an autocast that train_step opens itself: accelerate holds one precision
    # per process, and one process may train several runs (feedback rounds, a notebook).
    accelerator = Accelerator(mixed_precision="no" if cpu else precision, cpu=cpu)
    device = accelerator.device
    logger.info("mixed precision: %s (mixed_precision: %s)", precision, config.mixed_precision)
    parts = parts or load_frozen_parts(config, device, frozen_dtype(config, device))
    if config.resolution % parts.downsampling:
        step = parts.downsampling
        raise ValueError(f"resolution {config.resolution} is not a multiple of {step}, what this model downsamples by:"
                         f" use {max(step, config.resolution // step * step)} or {(config.resolution // step + 1) * step}")
    torch.manual_seed(config.seed)
    ella = build_connector(config, parts).to(device).train()
    optimizer = torch.optim.AdamW(ella.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.warmup_steps, config.max_steps, config.lr_final_fraction))
    ema = copy.deepcopy(ella).requires_grad_(False).eval() if config.ema_decay > 0 else None
    init_share = config.ema_decay ** config.max_steps  # weight of the initial connector in the final EMA
    if ema is not None and init_share > 0.05:
        logger.warning("ema_decay %g over %d steps: the exported EMA still holds %.0f%% of the initial weights;"
                       " lower ema_decay or set it to 0", config.ema_decay, config.max_steps, 100 * init_share)
    cpu_bf16 = cpu and precision == "bf16"
    if cpu_bf16:  # the attention stays in fp32 (ella.train.attention: why)
        attention_in_float32(parts.unet)
    model = ConnectorTrainingModel(parts.unet, ella, config.resolution)
    reference = None
    if config.objective == "dpo":  # init_connector's weights, whatever step a resumed run is at
        frozen = build_connector(config, parts).to(device)
        load_init_connector(frozen, config)
        reference = ConnectorTrainingModel(parts.unet, frozen.requires_grad_(False).eval(), config.resolution)
    return Run(config, accelerator, parts, ella, model, optimizer, lr_scheduler, ema, reference,
               cpu_bf16=cpu_bf16)


def resume(run: Run) -> None:
    """Weights, EMA, optimizer, lr schedule, step, data position and loss history from the latest
    checkpoint; or, on a fresh start, the fine-tuning weights of `init_connector`."""
    config, result = run.config, run.result
    if config.resume and (found := load_latest_state(config.output_dir)):
        ckpt, state = found
        run.ella.load_state_dict(state["ella"])
        if run.ema is not None:
            run.ema.load_state_dict(state["ema"])
        run.optimizer.load_state_dict(state["optimizer"])
        # Only the schedule's step is restored; its shape comes from this config, so resuming
        # with a larger max_steps continues on the longer cosine (a second training stage).
        run.lr_scheduler.load_state_dict(state["lr_scheduler"])
        result.step, result.skipped = int(state["step"]), int(state["skipped"])
        result.losses = [tuple(x) for x in state["losses"].tolist()]
        result.cpu_seconds = float(state.get("cpu_seconds", 0.0))  # absent in older checkpoints
        run.position = DataPosition(int(state["data_epoch"]), int(state["data_batch"]))
        logger.info("resumed from %s at step %d", ckpt, result.step)
        return
    if config.resume and not config.init_connector:
        logger.info("no checkpoint in %s: starting from scratch", config.output_dir)
    if config.init_connector:
        load_init_connector(run.ella, config)
        if run.ema is not None:
            run.ema.load_state_dict(run.ella.state_dict())


def train_step(run: Run, batches, encoder: LLMEncoder, empty: _EmptyPrompt, order_log) -> float:
    """One optimizer step over `grad_accum` micro-batches; returns the loss averaged over processes."""
    config, accelerator, result = run.config, run.accelerator, run.result
    use_mask = config.text_mode == "flexible" or run.ella.keeps_text_length
    step_loss, cpu_start = 0.0, time.process_time()
    for micro in range(config.grad_accum):
        batch = next(batches)
        result.skipped += batch["skipped"]
        if order_log:
            order_log.write(" ".join(batch["key"]) + "\n")
        if not batch["key"]:
            continue
        g = step_generator(config.seed, accelerator.process_index, result.step, micro)
        latents, text, mask, pooled = make_batch_tensors(batch, config, run.parts, encoder, empty, g, accelerator.device)
        sync = contextlib.nullcontext() if micro == config.grad_accum - 1 else accelerator.no_sync(run.model)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if run.cpu_bf16 else accelerator.autocast()
        with sync, autocast:
            if run.reference is not None:
                if "loser_pixel_values" not in batch:
                    raise ValueError(f"objective dpo: {config.train_data}'s records need a 'loser' image")
                loser = encode_images(run.parts, batch["loser_pixel_values"].to(accelerator.device)).float()
                loss = dpo_loss(run.model, run.reference, run.parts, latents, loser, text, mask, g, use_mask, config,
                                pooled)
            else:
                loss = diffusion_loss(run.model, run.parts, latents, text, mask, g, use_mask, config, pooled)
            accelerator.backward(loss / config.grad_accum)
        step_loss += loss.item() / config.grad_accum
        run.seen += len(batch["key"]) * accelerator.num_processes
    if config.max_grad_norm > 0:
        accelerator.clip_grad_norm_(run.ella.parameters(), config.max_grad_norm)
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        ema_update(run.ema, run.ella, config.ema_decay)
    result.step += 1
    step_loss = accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "mean").item()
    if not math.isfinite(step_loss):
        raise FloatingPointError(f"loss is {step_loss} at step {result.step}: lower lr or use fp32/bf16")
    result.losses.append((result.step, step_loss))
    result.samples_per_second = run.seen / (time.perf_counter() - run.start)
    # CPU time (all threads of this process), not wall time: recipes are compared by what they
    # cost, whatever else shares the machine.
    result.cpu_seconds += time.process_time() - cpu_start
    return step_loss


def save_checkpoint(run: Run) -> None:
    """The full resume state (k-diffusion's first kind of checkpoint), written by the main process."""
    run.accelerator.wait_for_everyone()
    if not run.main:
        return
    result = run.result
    state = {
        "ella": run.accelerator.unwrap_model(run.model).ella.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else {},
        "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict(),
        "step": result.step,
        "skipped": result.skipped,
        "losses": torch.tensor(result.losses or [], dtype=torch.float64).reshape(-1, 2),
        "data_epoch": run.position.epoch,
        "data_batch": run.position.batch,
        "cpu_seconds": result.cpu_seconds,
    }
    save_training_state(run.config.output_dir, result.step, state, run.config.to_yaml(), run.config.keep_checkpoints)


def log_window(run: Run, window: list[float], writer) -> None:
    """One log line (and TensorBoard scalars) for the steps since the last one."""
    lr, mean = run.lr_scheduler.get_last_lr()[0], sum(window) / len(window)
    logger.info("step %d loss %.4f lr %.2e samples/s %.1f skipped %d cpu_min %.2f", run.result.step, mean, lr,
                run.result.samples_per_second, run.result.skipped, run.result.cpu_seconds / 60)
    if writer:
        writer.add_scalar("loss", mean, run.result.step)
        writer.add_scalar("lr", lr, run.result.step)


def finish(run: Run, writer) -> None:
    """At the end of a complete run: the slim export of the (EMA) connector and the loss curve."""
    if run.main:
        if run.result.skipped:
            logger.info("skipped %d unusable samples (unreadable image or missing caption)", run.result.skipped)
        run.result.export_dir = export(run.config, run.ema or run.ella)
        if run.result.losses:
            plot_losses(run.result.losses, os.path.join(run.config.output_dir, "loss.png"))
        if writer:
            writer.close()
    run.accelerator.wait_for_everyone()


def train(config: TrainConfig, parts: FrozenParts | None = None) -> TrainResult:
    """Train a connector as `config` says; `parts` may pass frozen models already loaded.
    SIGTERM or Ctrl-C finishes the current step, saves the resume state and raises
    `TrainingInterrupted` (the last finished export is left as it was)."""
    run = build(config, parts)
    with folder_lock(config.output_dir, enabled=run.main):
        return _train(run)


def _train(run: Run) -> TrainResult:
    config = run.config
    resume(run)
    run.model, run.optimizer = run.accelerator.prepare(run.model, run.optimizer)
    batches = open_data(config, run.parts, run.accelerator.process_index, run.accelerator.num_processes, run.position)
    encoder = run.parts.encoder(config)  # built once, used by every raw-data step
    empty = _EmptyPrompt(config, encoder)
    writer = _tensorboard(config) if run.main else None
    order_log = _order_log(config, run.accelerator.process_index)
    stop, restore_signals = stop_flag()
    progress = tqdm(total=config.max_steps, initial=run.result.step, disable=not run.main, desc="training", unit="step")
    window: list[float] = []
    try:
        while run.result.step < config.max_steps and not stop["requested"]:
            window.append(train_step(run, batches, encoder, empty, order_log))
            progress.update()
            progress.set_postfix(loss=f"{window[-1]:.4f}", lr=f"{run.lr_scheduler.get_last_lr()[0]:.1e}",
                                 sps=f"{run.result.samples_per_second:.1f}")
            step = run.result.step
            if step % config.log_every == 0 and run.main:
                log_window(run, window, writer)
                window = []
            if step % config.checkpoint_every == 0 and step < config.max_steps:
                save_checkpoint(run)
            if config.validate_every and step % config.validate_every == 0 and run.main:
                logger.info("validation images: %s", validate(config, run.parts, run.ema or run.ella, step))
    finally:
        progress.close()
        if order_log:
            order_log.write(f"final connector sha256 {_digest(run.ella)}\n")
            order_log.close()
        restore_signals()
    save_checkpoint(run)
    if stop["requested"]:
        raise TrainingInterrupted(f"{stop['signal']}: stopped at step {run.result.step} of {config.max_steps}; the state"
                                  f" is saved in {checkpoint_dir(config.output_dir)} (continue with --resume true)",
                                  stop["signal"])
    finish(run, writer)
    return run.result


def _digest(module: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _tensorboard(config: TrainConfig):
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ValueError("tensorboard: true needs `pip install ella-diffusion[tensorboard]`") from err
    return SummaryWriter(os.path.join(config.output_dir, "tensorboard"))


def _order_log(config: TrainConfig, rank: int):
    if not config.log_data_order:
        return None
    os.makedirs(os.path.join(config.output_dir, "logs"), exist_ok=True)
    return open(os.path.join(config.output_dir, "logs", f"samples-rank{rank}.txt"), "a")

"""The training loop for ELLA connectors: frozen UNet, VAE and LLM; only the connector learns.

One readable function, `train(config)`, with small named helpers. Built on accelerate, so the same
code runs on a laptop CPU, one GPU, or many (`accelerate launch -m ella.cli train CONFIG`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models import ELLA
from ..text_encoders import LLMEncoder
from .cache import encode_images, fingerprint, read_index
from .checkpoint import latest_checkpoint, load_training_state, save_training_state
from .components import FrozenParts, build_connector, load_frozen_parts, load_init_connector
from .config import TrainConfig
from .data import CachedFeatureDataset, DataPosition, TarShardStream, iterate_batches, make_dataset

logger = logging.getLogger(__name__)

COMPUTE_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ConnectorTrainingModel(torch.nn.Module):
    """One module around the frozen UNet and the trainable connector (as IP-Adapter's trainer):
    DDP wraps it whole, and only `self.ella`'s parameters reach the optimizer."""

    def __init__(self, unet: torch.nn.Module, ella: ELLA):
        super().__init__()
        self.unet, self.ella = unet, ella

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None):
        cond = self.ella(text.to(self.ella.dtype), timesteps, text_mask)  # (B, N, C), per-sample timesteps
        unet_mask = text_mask if self.ella.keeps_text_length else None
        return self.unet(noisy, timesteps, encoder_hidden_states=cond.to(self.unet.dtype), encoder_attention_mask=unet_mask).sample


@dataclass
class TrainResult:
    step: int
    losses: list = field(default_factory=list)  # (step, loss) every optimizer step
    skipped: int = 0  # unusable samples met
    export_dir: str | None = None
    samples_per_second: float = 0.0


def lr_lambda(warmup_steps: int, total_steps: int = 0, final_fraction: float = 1.0):
    """Linear warmup to the base lr, then constant, or (with total_steps and final_fraction < 1)
    a cosine decay to final_fraction x the base lr at total_steps."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps <= warmup_steps or final_fraction >= 1.0:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().float(), 1.0 - decay)


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
    """(clean latents, text features, text mask) of a batch, with caption dropout applied."""
    n = len(batch["key"])
    drop = torch.rand(n, generator=g) < config.caption_dropout
    if "latents" in batch:  # from the feature cache
        latents = batch["latents"].to(device)
        text, mask = batch["text_features"].clone(), batch["text_mask"].clone()
        text[drop], mask[drop] = empty.features.to(text.dtype), empty.mask.to(mask.dtype)
        text, mask = text.to(device), mask.to(device)
    else:
        latents = encode_images(parts, batch["pixel_values"].to(device))
        captions = ["" if d else c for d, c in zip(drop.tolist(), batch["caption"])]
        enc = encoder.encode_padded(captions)
        text, mask = enc.hidden_states, enc.attention_mask
    return latents.float(), text, mask


def sample_timesteps(n: int, num_train_timesteps: int, g: torch.Generator, power: float = 1.0) -> torch.Tensor:
    """(n,) integer timesteps t = floor(T * u**(1/power)), u ~ U[0, 1): uniform for power 1; for
    power p the density grows as t**(p-1), towards the noisy steps where the layout is decided."""
    if power == 1.0:  # the paper's uniform draw, kept bit-for-bit so earlier runs reproduce
        return torch.randint(0, num_train_timesteps, (n,), generator=g)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return (num_train_timesteps * u ** (1.0 / power)).long().clamp_(max=num_train_timesteps - 1)


def diffusion_loss(model, parts: FrozenParts, latents, text, mask, g: torch.Generator, use_mask: bool,
                   timestep_power: float = 1.0) -> torch.Tensor:
    """MSE to the scheduler's target (epsilon or v) at per-sample random timesteps."""
    sched = parts.scheduler
    noise = torch.randn(latents.shape, generator=g).to(latents.device)
    t = sample_timesteps(latents.shape[0], sched.config.num_train_timesteps, g, timestep_power).to(latents.device)
    noisy = sched.add_noise(latents, noise, t)
    if sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(latents, noise, t)
    elif sched.config.prediction_type == "epsilon":
        target = noise
    else:
        raise ValueError(f"unsupported prediction_type {sched.config.prediction_type!r}")
    pred = model(noisy.to(parts.unet.dtype), t, text, mask if use_mask else None)
    return F.mse_loss(pred.float(), target.float())


def open_data(config: TrainConfig, parts: FrozenParts, rank: int, world: int, position: DataPosition):
    """An endless batch iterator over the cache (if built) or the raw data, from `position`."""
    if config.cache_dir and os.path.isfile(os.path.join(config.cache_dir, "index.json")):
        index = read_index(config.cache_dir)
        if index["fingerprint"] != fingerprint(config, parts):
            raise ValueError(f"the cache in {config.cache_dir} was built for {index['fingerprint']}, not this config")
        logger.info("training from the feature cache in %s", config.cache_dir)
        return iterate_batches(CachedFeatureDataset(config.cache_dir), config.batch_size, config.seed, position, rank, world)
    if config.train_data.endswith(".tar"):
        return TarShardStream(config.train_data, config.resolution).batches(config.batch_size, position, rank, world)
    dataset = make_dataset(config.train_data, config.resolution, config.seed)
    return iterate_batches(dataset, config.batch_size, config.seed, position, rank, world, config.num_workers)


def validate(config: TrainConfig, parts: FrozenParts, ella: ELLA, step: int) -> str:
    """A grid of the validation prompts (fixed seeds) with the current (EMA) connector."""
    from diffusers import DPMSolverMultistepScheduler

    from ..images import make_grid, save_atomic
    from ..pipelines import ELLAStableDiffusionPipeline

    pipe = ELLAStableDiffusionPipeline(
        unet=parts.unet, vae=parts.vae, scheduler=DPMSolverMultistepScheduler.from_config(parts.scheduler.config),
        text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, ella=ella,
        text_max_length=config.text_max_length, text_mode=config.text_mode, text_echo=config.text_echo,
    )
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(i) for i in range(len(config.validation_prompts))]
    images = pipe(config.validation_prompts, num_inference_steps=config.validation_steps,
                  guidance_scale=config.validation_guidance, generator=gens).images
    path = os.path.join(config.output_dir, "validation", f"step-{step:08d}.png")
    save_atomic(make_grid(images), path)
    return path


def export(config: TrainConfig, ella: ELLA) -> str:
    """The slim export: `save_pretrained` of the (EMA) connector plus the resolved config."""
    path = os.path.join(config.output_dir, "export")
    ella.save_pretrained(path)
    with open(os.path.join(path, "training_config.yaml"), "w") as f:
        f.write(config.to_yaml())
    return path


def plot_losses(losses: list, path: str) -> None:
    from ..images import pyplot

    plt = pyplot("loss-curve PNG")
    if plt is None:
        return
    steps, values = zip(*losses)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, values, lw=0.6, alpha=0.4, label="loss")
    k = max(1, len(values) // 50)
    smooth = [sum(values[max(0, i - k) : i + 1]) / len(values[max(0, i - k) : i + 1]) for i in range(len(values))]
    ax.plot(steps, smooth, lw=1.5, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="connector training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train(config: TrainConfig, parts: FrozenParts | None = None) -> TrainResult:
    """Train a connector as `config` says; `parts` may pass frozen models already loaded."""
    from accelerate import Accelerator

    # cpu=True without a GPU: then a multi-process launch (accelerate launch --multi_gpu, torchrun)
    # runs as MULTI_CPU over gloo instead of silently running N independent copies.
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    dtype = COMPUTE_DTYPES[config.mixed_precision] if device.type != "cpu" else torch.float32

    # 1. Frozen parts in the compute dtype; the connector in fp32, identical on every process.
    parts = parts or load_frozen_parts(config, device, dtype)
    torch.manual_seed(config.seed)
    ella = build_connector(config, parts).to(device).train()
    model = ConnectorTrainingModel(parts.unet, ella)
    optimizer = torch.optim.AdamW(ella.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup_steps, config.max_steps, config.lr_final_fraction))
    ema = copy.deepcopy(ella).requires_grad_(False).eval() if config.ema_decay > 0 else None
    init_share = config.ema_decay ** config.max_steps  # weight of the initial connector in the final EMA
    if ema is not None and init_share > 0.05:
        logger.warning("ema_decay %g over %d steps: the exported EMA still holds %.0f%% of the initial weights;"
                       " lower ema_decay or set it to 0", config.ema_decay, config.max_steps, 100 * init_share)
    use_mask = config.text_mode == "flexible" or ella.keeps_text_length

    # 2. Resume: weights, EMA, optimizer, lr schedule, step, data position, loss history.
    result, position = TrainResult(step=0), DataPosition()
    if config.resume and (ckpt := latest_checkpoint(config.output_dir)):
        state = load_training_state(ckpt)
        ella.load_state_dict(state["ella"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        # Only the schedule's step is restored; its shape comes from this config, so resuming
        # with a larger max_steps continues on the longer cosine (a second training stage).
        scheduler.load_state_dict(state["lr_scheduler"])
        result.step, result.skipped = int(state["step"]), int(state["skipped"])
        result.losses = [tuple(x) for x in state["losses"].tolist()]
        position = DataPosition(int(state["data_epoch"]), int(state["data_batch"]))
        logger.info("resumed from %s at step %d", ckpt, result.step)
    elif config.resume and not config.init_connector:
        logger.info("no checkpoint in %s: starting from scratch", config.output_dir)
    if result.step == 0 and config.init_connector:  # a resume reads its checkpoint instead
        load_init_connector(ella, config)
        if ema is not None:
            ema.load_state_dict(ella.state_dict())

    model, optimizer = accelerator.prepare(model, optimizer)
    batches = open_data(config, parts, rank, world, position)
    encoder = parts.encoder(config)  # built once, used by every raw-data step
    empty = _EmptyPrompt(config, encoder)
    writer = _tensorboard(config) if main else None
    order_log = _order_log(config, rank)

    def save_state():
        accelerator.wait_for_everyone()
        if not main:
            return
        state = {
            "ella": accelerator.unwrap_model(model).ella.state_dict(),
            "ema": ema.state_dict() if ema is not None else {},
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "step": result.step,
            "skipped": result.skipped,
            "losses": torch.tensor(result.losses or [], dtype=torch.float64).reshape(-1, 2),
            "data_epoch": position.epoch,
            "data_batch": position.batch,
        }
        save_training_state(config.output_dir, result.step, state, config.to_yaml(), config.keep_checkpoints)

    # A SIGTERM (a scheduler pre-empting the job) finishes the current step, saves, and stops.
    stop, restore_sigterm = sigterm_stop_flag()

    # 3. The loop.
    progress = tqdm(total=config.max_steps, initial=result.step, disable=not main, desc="training", unit="step")
    seen, start, window_loss = 0, time.perf_counter(), []
    try:
        while result.step < config.max_steps and not stop["requested"]:
            step_loss = 0.0
            for micro in range(config.grad_accum):
                batch = next(batches)
                result.skipped += batch["skipped"]
                if order_log:
                    order_log.write(" ".join(batch["key"]) + "\n")
                if not batch["key"]:
                    continue
                g = step_generator(config.seed, rank, result.step, micro)
                latents, text, mask = make_batch_tensors(batch, config, parts, encoder, empty, g, device)
                sync = contextlib.nullcontext() if micro == config.grad_accum - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    loss = diffusion_loss(model, parts, latents, text, mask, g, use_mask, config.timestep_power) / config.grad_accum
                    accelerator.backward(loss)
                step_loss += loss.item()
                seen += len(batch["key"]) * world
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(ella.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema_update(ema, ella, config.ema_decay)
            result.step += 1
            step_loss = accelerator.reduce(torch.tensor(step_loss, device=device), "mean").item()
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss is {step_loss} at step {result.step}: lower lr or use fp32/bf16")
            result.losses.append((result.step, step_loss))
            window_loss.append(step_loss)
            result.samples_per_second = seen / (time.perf_counter() - start)
            progress.update()
            progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.1e}",
                                 sps=f"{result.samples_per_second:.1f}")
            if result.step % config.log_every == 0 and main:
                logger.info("step %d loss %.4f lr %.2e samples/s %.1f skipped %d", result.step,
                            sum(window_loss) / len(window_loss), scheduler.get_last_lr()[0],
                            result.samples_per_second, result.skipped)
                if writer:
                    writer.add_scalar("loss", sum(window_loss) / len(window_loss), result.step)
                    writer.add_scalar("lr", scheduler.get_last_lr()[0], result.step)
                window_loss = []
            if result.step % config.checkpoint_every == 0 and result.step < config.max_steps:
                save_state()
            if config.validate_every and result.step % config.validate_every == 0 and main:
                logger.info("validation images: %s", validate(config, parts, ema or ella, result.step))
    finally:
        progress.close()
        if order_log:
            order_log.write(f"final connector sha256 {_digest(ella)}\n")
            order_log.close()
        restore_sigterm()

    # 4. At exit: the resume state, the slim export, the loss curve.
    save_state()
    if main:
        if result.skipped:
            logger.info("skipped %d unusable samples (unreadable image or missing caption)", result.skipped)
        result.export_dir = export(config, ema or ella)
        if result.losses:
            plot_losses(result.losses, os.path.join(config.output_dir, "loss.png"))
        if writer:
            writer.close()
    accelerator.wait_for_everyone()
    return result


def sigterm_stop_flag() -> tuple[dict, Callable[[], None]]:
    """({"requested": False}, restore): a SIGTERM sets "requested", so a training loop can finish
    its step, save and stop; restore() puts the previous handler back. (Handlers can only be
    installed from the main thread; elsewhere the flag simply never changes.)"""
    stop = {"requested": False}
    if not _in_main_thread():
        return stop, lambda: None
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    return stop, lambda: signal.signal(signal.SIGTERM, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


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

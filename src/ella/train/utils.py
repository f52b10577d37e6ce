"""Small training helpers shared by the connector trainer and ShapesWorld's base trainer: the lr
schedule, the EMA update, the stop flag for SIGTERM / Ctrl-C, the loss plot."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable

import torch

from ..fileio import atomic_path


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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_flag() -> tuple[dict, Callable[[], None]]:
    """({"requested": False}, restore): SIGTERM (a scheduler pre-empting the job) or SIGINT
    (Ctrl-C) sets "requested", so a training loop can finish its step, save and stop; restore()
    puts the previous handlers back. Handlers can only be installed from the main thread;
    elsewhere the flag never changes."""
    stop = {"requested": False, "signal": None}
    if threading.current_thread() is not threading.main_thread():
        return stop, lambda: None

    def handler(signum, _frame):
        stop.update(requested=True, signal=signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    return stop, lambda: [signal.signal(s, h) for s, h in previous.items()]


def plot_losses(losses: list, path: str) -> None:
    """Per-step losses and their moving average (a window of k steps) on a log axis."""
    from ..images import pyplot

    plt = pyplot("loss-curve PNG")
    if plt is None:
        return
    steps, values = zip(*losses)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, values, lw=0.6, alpha=0.4, label="loss")
    k = max(1, len(values) // 50)
    smooth = [sum(values[max(0, i - k + 1) : i + 1]) / len(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]
    ax.plot(steps, smooth, lw=1.5, label=f"mean of {k} steps" if k > 1 else "per step")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter() if max(values) / max(min(values), 1e-12) < 10 else plt.NullFormatter())
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

"""What the `ella` commands share, torch-free: argparse types and the model-choosing flags
(`generate`, `demo`, `bench dpg generate`, and the commands plugins add)."""

from __future__ import annotations

import argparse

from .devices import LLM_PRECISIONS
from .plugins import default_model
from .samplers import SCHEDULERS

MAX_SIDE = 8192  # pixels: SDXL's 1024 eight times over


class CLIError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""


def _size(text: str) -> tuple[int, int]:
    try:
        h, sep, w = text.lower().partition("x")
        size = int(h), int(w if sep else h)  # "10x" is an error, not 10x10
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from err
    if min(size) < 1 or max(size) > MAX_SIDE:  # refused before a huge allocation, not after
        raise argparse.ArgumentTypeError(f"size must be 1-{MAX_SIDE} pixels a side, got {text!r}")
    return size


def _number(text: str, cast, expected: str, ok, rule: str):
    """`text` as `cast` gives it, or an argparse error: "expected a number", or the rule it breaks."""
    try:
        value = cast(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from err
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{rule}, got {text}")
    return value


def seed(text: str) -> int:
    """argparse type for seeds: what torch.Generator.manual_seed accepts."""
    return _number(text, int, "a whole number", lambda v: 0 <= v < 2**63, "seed must be in [0, 2**63)")


def finite_float(text: str) -> float:
    """argparse type for --guidance and the like: NaN or inf is refused before any work."""
    import math

    return _number(text, float, "a number", math.isfinite, "must be a finite number")


def strength(text: str) -> float:
    """argparse type for --strength: a share of the schedule in (0, 1]."""
    return _number(text, float, "a number", lambda v: 0 < v <= 1, "must be in (0, 1] (1 = from pure noise)")


def unit_float(text: str) -> float:
    """argparse type for shares such as --base-ratio: a number in [0, 1]."""
    return _number(text, float, "a number", lambda v: 0 <= v <= 1, "must be in [0, 1]")


def positive_int(text: str) -> int:
    """argparse type for counts (steps, images, prompts, batch sizes): 0 would silently do nothing."""
    return _number(text, int, "a whole number", lambda v: v >= 1, "must be at least 1")


def port(text: str) -> int:
    """argparse type for a TCP port."""
    return _number(text, int, "a whole number", lambda v: 1 <= v <= 65535, "must be a port, 1 to 65535")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model and sampling options shared by `generate` and `bench dpg generate`."""
    add_model_source_args(p)
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=finite_float, default=None, help="classifier-free guidance scale")
    p.add_argument("--size", type=_size, default=None, help="N or HxW in pixels")
    p.add_argument("--negative", default=None, help="negative prompt (default: empty prompt)")
    p.add_argument("--scheduler", default=None, help="sampler: " + ", ".join(SCHEDULERS) + " (dpm++: the default),"
                   " or a diffusers scheduler class name")


def add_model_source_args(p: argparse.ArgumentParser) -> None:
    """Which model, on which device: `generate`, `bench dpg generate` and `demo`."""
    from .published import PRESETS

    p.add_argument("--preset", choices=tuple(PRESETS), help="a published model by name, from the hub: sd1.5-t5xl ="
                   " SD1.5 + FLAN-T5-XL + the official connector, with the web demo's defaults (CUDA, fp16)")
    p.add_argument("--model", help="ELLA pipeline folder, or a Stable Diffusion folder/hub id (then pass --ella); "
                   "default: " + _default_model_help())
    p.add_argument("--ella", help="connector: .safetensors file or save_pretrained folder, local or on the hub"
                   " (QQGYLab/ELLA, ORG/NAME/FILE.safetensors)" + _default_connectors_help())
    p.add_argument("--llm", help="text encoder LLM for --model with --ella (folder, hub id, .gguf file, or 'minilm' /"
                   " 'smollm2'; default: google/flan-t5-xl)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--llm-precision", choices=LLM_PRECISIONS, default=None,
                   help="the LLM's alone (default: --dtype); int8: its linear layers' weights in int8;"
                   " measured in docs/pipeline.md")


def _default_model_help() -> str:
    model = default_model()
    return model.name if model is not None else "none installed"


def _default_connectors_help() -> str:
    model = default_model()
    if model is None:
        return ""
    names = [f"{name} (default)" if name == model.default_connector else name for name in model.connectors]
    return f"; with {model.name}: " + ", ".join(names)

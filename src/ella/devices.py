"""The one device rule and the one dtype table of the library (torch is imported on use)."""

from __future__ import annotations

import os

# Every spelling the CLI, configs and the API accept -> torch dtype attribute name.
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
               "bf16": "bfloat16", "bfloat16": "bfloat16"}
# What `--llm-precision` takes: a dtype of DTYPE_NAMES, or int8 weights (`text_encoders.Int8Linear`).
LLM_PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def accelerator_available() -> bool:
    """Whether "auto" means a GPU: CUDA is present."""
    import torch

    return torch.cuda.is_available()


def resolve_device(device=None):
    """`None`/"auto": the first CUDA device if there is one, else the CPU. A named device that is
    not present is a ValueError (not an assertion deep inside torch when the first tensor moves)."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if accelerator_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}") from err
    backend = getattr(torch, resolved.type, None) if resolved.type not in ("cpu", "meta") else None
    if backend is not None and hasattr(backend, "is_available"):
        count = backend.device_count() if backend.is_available() else 0
        if count == 0 or (resolved.index or 0) >= count:
            raise ValueError(f"device {device!r} is not available here ({count} {resolved.type} device(s) found;"
                             " `ella env` lists them)")
    return resolved


def torch_dtype(name: str):
    """The torch dtype for a name of `DTYPE_NAMES` (a torch dtype passes through)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, DTYPE_NAMES[name])


def native_bf16(device) -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (read from Linux's /proc/cpuinfo; elsewhere unknown, so False: on a CPU
    without them bf16 is emulated and slower than fp32)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not os.path.isfile("/proc/cpuinfo"):
        return False
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_mixed_precision(name: str, device) -> str:
    """A training `mixed_precision` for `device`: "auto" is bf16 where the device computes it
    natively (`native_bf16`), else fp16 on a GPU and "no" (fp32) on a CPU; others pass through."""
    import torch

    if name != "auto":
        return name
    if native_bf16(device):
        return "bf16"
    return "no" if torch.device(device).type == "cpu" else "fp16"


def resolve_dtype(dtype, device):
    """`None`/"auto": fp16 on an accelerator (as ELLA was trained and published), fp32 on the CPU."""
    import torch

    if dtype in (None, "auto"):
        return torch.float32 if device.type == "cpu" else torch.float16
    return torch_dtype(dtype)

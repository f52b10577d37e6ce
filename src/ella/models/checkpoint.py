"""Reading bare connector state dicts (the official single-file release) and checking them."""

from __future__ import annotations

import json
import os
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..fileio import atomic_path
from ..paths import require_path


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    try:
        require_path(path, "checkpoint file")
    except OSError as err:
        raise CheckpointError(str(err)) from None
    if not path.endswith(".safetensors"):
        raise CheckpointError(f"only .safetensors checkpoints are supported (no pickle): {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} as safetensors: {err}") from err


CONFIG_METADATA_KEY = "ella_config"


def read_config_metadata(path: str | os.PathLike) -> dict | None:
    """The config a file written by `ELLA.save_single_file` carries, or None (the official file)."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        text = (f.metadata() or {}).get(CONFIG_METADATA_KEY)
    if text is None:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: unreadable {CONFIG_METADATA_KEY} metadata ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: {CONFIG_METADATA_KEY} metadata is not a mapping")
    return config


def save_state_dict_file(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, config: dict) -> None:
    """Write a safetensors file with `config` as metadata, through a temporary file in the same
    folder renamed at the end (a failed write leaves the old file, never half a new one)."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CheckpointError(f"cannot write {path}: folder {folder} does not exist")
    try:
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(state_dict, tmp, metadata={CONFIG_METADATA_KEY: json.dumps(config, sort_keys=True)})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot write {path}: {str(err).splitlines()[0]}") from err


def _shape(state_dict: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"not an ELLA connector checkpoint: key {key!r} is missing")
    return tuple(state_dict[key].shape)


def config_from_state_dict(state_dict: dict[str, torch.Tensor], heads: int = 8) -> dict:
    """Infer the ELLA config from weight shapes (the official file carries no config)."""
    if "connector.latents" not in state_dict and "connector.proj_in.weight" not in state_dict:
        some = ", ".join(sorted(state_dict)[:5]) or "nothing"
        raise CheckpointError(
            f"not an ELLA connector checkpoint: connector.latents and connector.proj_in.weight are missing (has {some})"
        )
    if "pool.proj.weight" in state_dict:  # an SDXL connector trained with its own pooled embedding
        return {**config_from_state_dict({k: v for k, v in state_dict.items() if not k.startswith("pool.")}, heads),
                "pooled_dim": _shape(state_dict, "pool.proj.weight")[0]}
    if "connector.latents" not in state_dict:
        # Only the per-token MLP connector has no latents.
        width, input_dim = _shape(state_dict, "connector.proj_in.weight")
        output_dim = _shape(state_dict, "connector.proj_out.weight")[0]
        return dict(width=width, input_dim=input_dim, output_dim=output_dim, connector_type="mlp")
    num_latents, width = _shape(state_dict, "connector.latents")
    input_dim = _shape(state_dict, "connector.proj_in.weight")[1]
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"connector\.perceiver_blocks\.(\d+)\.", k))}
    config = dict(width=width, heads=heads, num_latents=num_latents, input_dim=input_dim, layers=len(blocks))
    if "connector.proj_out.0.weight" in state_dict:
        config["output_dim"] = _shape(state_dict, "connector.proj_out.0.weight")[0]
    if "time_embedding.linear_1.weight" not in state_dict:
        return {**config, "connector_type": "resampler"}
    time_embed_dim, time_channel = _shape(state_dict, "time_embedding.linear_1.weight")
    chunks = _shape(state_dict, "connector.perceiver_blocks.0.ln_1.linear.weight")[0] // width
    connector_type = "adaln-zero" if chunks == 3 else "tsc"
    return {**config, "time_channel": time_channel, "time_embed_dim": time_embed_dim, "connector_type": connector_type}


def check_state_dict(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str = "state dict"
) -> None:
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mis_shaped = [
        f"{k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(given))
        if given[k].shape != expected[k].shape
    ]
    not_float = [f"{k} ({v.dtype})" for k, v in given.items() if k in expected and not v.is_floating_point()]
    not_finite = [k for k, v in given.items() if k in expected and v.is_floating_point() and not torch.isfinite(v).all()]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", mis_shaped),
                        ("non-float weights", not_float), ("non-finite weights (NaN or inf)", not_finite)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{source} does not match the ELLA connector: " + "; ".join(problems))

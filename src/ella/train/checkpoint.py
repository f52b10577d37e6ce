"""Two kinds of checkpoint (as k-diffusion): the full training state to resume from, written
atomically, and a slim `save_pretrained` export of the (EMA) connector."""

from __future__ import annotations

import logging
import os
import re
import shutil

import torch

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def save_training_state(output_dir: str, step: int, state: dict, config_yaml: str, keep: int) -> str:
    """Write `checkpoints/step-N/` through a temporary folder renamed at the end: a run killed
    mid-write leaves only a `.tmp-*` folder, which is never taken as the latest."""
    root = checkpoint_dir(output_dir)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step-{step:08d}")
    tmp = os.path.join(root, f".tmp-step-{step:08d}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch.save(state, os.path.join(tmp, STATE_FILE))
    with open(os.path.join(tmp, "config.yaml"), "w") as f:
        f.write(config_yaml)
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str) -> str | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_training_state(path: str) -> dict:
    return torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)


def load_latest_state(output_dir: str) -> tuple[str, dict] | None:
    """(path, state) of the newest checkpoint that reads back; an unreadable one (a disk that
    corrupted it after its rename) is skipped with a warning for the one before it."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            return path, load_training_state(path)
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            logger.warning("checkpoint %s is unreadable (%s): trying the one before it", path, str(err).splitlines()[0])
    return None

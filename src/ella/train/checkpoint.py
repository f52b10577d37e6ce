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
    mid-write leaves only a `.tmp-*` folder, which is never taken as the latest and is cleared by
    the next save. Old checkpoints are pruned by renaming them out of the way first, so a kill
    mid-prune never leaves a `step-N/` without its state behind."""
    root = checkpoint_dir(output_dir)
    os.makedirs(root, exist_ok=True)
    clear_leftovers(root)
    final = os.path.join(root, f"step-{step:08d}")
    tmp = os.path.join(root, f".tmp-step-{step:08d}")
    os.makedirs(tmp)
    try:
        torch.save(state, os.path.join(tmp, STATE_FILE))
        with open(os.path.join(tmp, "config.yaml"), "w") as f:
            f.write(config_yaml)
    except (OSError, RuntimeError) as err:  # a full disk: torch.save says "unexpected pos ..."
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"cannot write the checkpoint of step {step} in {root}: {str(err).splitlines()[0]}"
                      " (is the disk full?)") from err
    if os.path.isdir(final):
        _remove(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        _remove(old)
    return final


def _remove(path: str) -> None:
    """Rename, then delete: the name stops counting as a checkpoint at once."""
    doomed = os.path.join(os.path.dirname(path), ".tmp-prune-" + os.path.basename(path))
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def clear_leftovers(root: str) -> None:
    """Folders a killed save or prune left: `.tmp-*`, and `step-N/` without its state file."""
    for name in os.listdir(root):
        path = os.path.join(root, name)
        torn = _STEP_DIR.match(name) and not os.path.isfile(os.path.join(path, STATE_FILE))
        if os.path.isdir(path) and (name.startswith(".tmp-") or torn):
            logger.info("removing %s, left by an interrupted save", path)
            shutil.rmtree(path, ignore_errors=True)


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

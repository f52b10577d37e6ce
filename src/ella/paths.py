"""Model names: a local folder or a Hugging Face hub id."""

from __future__ import annotations

import os
import re

# "name" or "org/name": what the hub accepts (no leading '.' or '-', one slash at most).
HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


def require_local_folder(name: str, what: str) -> None:
    """Refuse a name that can only be a local path (absolute, relative with './', or with more
    than one slash) when that folder does not exist: the hub client would answer with a repo-id
    syntax error or a network timeout instead of saying so. Hub ids ("google/flan-t5-xl") pass."""
    if not os.path.isdir(name) and not HUB_ID.fullmatch(name):
        raise ValueError(f"{what} not found: {name}")

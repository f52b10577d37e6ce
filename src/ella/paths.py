"""Model names: a local folder or a Hugging Face hub id."""

from __future__ import annotations

import os
import re
import stat

# "name" or "org/name": what the hub accepts (no leading '.' or '-', one slash at most).
HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


def require_path(path: str, what: str, kind: str = "file") -> None:
    """`path` exists and is a `kind` ("file" or "folder"), or an OSError naming why not: not found
    (FileNotFoundError), or not reachable (PermissionError: `os.path.isfile` answers False for a
    path inside a folder we may not enter, which read as "not found" and misled)."""
    try:
        mode = os.stat(path).st_mode
    except PermissionError:
        raise PermissionError(f"{what} {path}: permission denied (a folder on its path cannot be entered)") from None
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{what} not found: {path}") from None
    is_dir = stat.S_ISDIR(mode)
    if (kind == "folder") != is_dir:
        raise FileNotFoundError(f"{what} {path} is a {'folder' if is_dir else 'file'}, not a {kind}")
    if not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
        raise PermissionError(f"{what} {path}: permission denied")


def require_hub_model(name: str, what: str, timeout: float = 5.0) -> None:
    """Before a long load: a hub id that is neither a local folder nor in the local Hugging Face
    cache needs the hub, so when the hub is off (HF_HUB_OFFLINE) or does not answer within
    `timeout` seconds, say so now (the hub client retries for minutes before failing)."""
    if os.path.isdir(name) or not HUB_ID.fullmatch(name):
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")  # set after import too
    if constants.HF_HUB_OFFLINE or offline:
        raise ValueError(f"{what} {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ValueError(f"{what} {name} is not in the local Hugging Face cache and {constants.ENDPOINT} cannot be"
                         f" reached ({reason}): download it where there is a network, or pass a local folder") from None


def require_local_folder(name: str, what: str) -> None:
    """Refuse a name that can only be a local path (absolute, relative with './', or with more
    than one slash) when that folder does not exist: the hub client would answer with a repo-id
    syntax error or a network timeout instead of saying so. Hub ids ("google/flan-t5-xl") pass."""
    if os.path.isfile(name):
        raise ValueError(f"{what} {name} is a file, not a folder")
    if not os.path.isdir(name) and not HUB_ID.fullmatch(name):
        raise ValueError(f"{what} not found: {name}")

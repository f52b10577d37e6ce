"""Connector files and folders by hub id, through huggingface_hub's cache (a second run is
offline), with one-line errors that name what was asked for instead of the hub client's traceback.

Forms a connector may be named by, as diffusers names single files and folders:
- a local `.safetensors` file or `save_pretrained` folder;
- a hub repository id, `QQGYLab/ELLA`: its `save_pretrained` folder (config.json at its root, or
  in `subfolder`), else the single file it is known to hold (`published.SINGLE_FILE_REPOS`);
- a file in a hub repository: `QQGYLab/ELLA/ella-sd1.5-tsc-t5xl.safetensors`, or its address
  `https://huggingface.co/QQGYLab/ELLA/blob/main/ella-sd1.5-tsc-t5xl.safetensors`.
"""

from __future__ import annotations

import os
import re

from .paths import HUB_ID

# https://huggingface.co/ORG/NAME/blob/REVISION/PATH (or /resolve/)
HUB_URL = re.compile(r"https?://huggingface\.co/([^/]+/[^/]+)/(?:blob|resolve)/([^/]+)/(.+)")


def split_hub_file(name: str) -> tuple[str, str, str | None] | None:
    """(repo_id, filename, revision) for a hub file address or `org/name/path.safetensors`, else None."""
    match = HUB_URL.fullmatch(name)
    if match:
        return match.group(1), match.group(3), match.group(2)
    parts = name.split("/")
    if len(parts) >= 3 and name.endswith(".safetensors") and HUB_ID.fullmatch("/".join(parts[:2])):
        return "/".join(parts[:2]), "/".join(parts[2:]), None
    return None


def names_hub_connector(name: str) -> bool:
    """Whether `name`, not a local path, names a connector on the hub (`ORG/NAME`,
    `ORG/NAME/FILE.safetensors`, a hub URL): the rule `resolve_connector` follows."""
    if os.path.exists(name):
        return False
    return bool(HUB_ID.fullmatch(name)) and "/" in name or split_hub_file(name) is not None


def download(repo_id: str, filename: str, what: str, revision: str | None = None, subfolder: str | None = None) -> str:
    """The local path of `filename` in hub repository `repo_id` (downloaded once, then from the cache)."""
    from huggingface_hub import hf_hub_download

    with hub_errors(what, repo_id, filename):
        return hf_hub_download(repo_id, filename, subfolder=subfolder, revision=revision)


def download_folder(repo_id: str, what: str, subfolder: str | None = None, revision: str | None = None) -> str:
    """A `save_pretrained` folder of a hub repository (its config and safetensors weights only)."""
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder}/" if subfolder else ""
    with hub_errors(what, repo_id, f"{prefix}config.json"):
        root = snapshot_download(repo_id, revision=revision,
                                 allow_patterns=[f"{prefix}config.json", f"{prefix}*.safetensors"])
    return os.path.join(root, subfolder) if subfolder else root


def has_file(repo_id: str, filename: str, what: str, revision: str | None = None) -> bool:
    """Whether the hub repository holds `filename`: the cache's answer when it has one; offline,
    a file not in the cache counts as absent (it could not be fetched anyway)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str) or cached is _CACHED_NO_EXIST:
        return isinstance(cached, str)
    if _offline():
        return False
    try:
        download(repo_id, filename, what, revision)
    except HubFileMissing:
        return False
    return True


class HubFileMissing(ValueError):
    """The repository exists but holds no such file."""


class hub_errors:
    """Turn huggingface_hub's exceptions into one-line ValueErrors that name the repository."""

    def __init__(self, what: str, repo_id: str, filename: str):
        self.what, self.repo_id, self.filename = what, repo_id, filename

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        from huggingface_hub import errors

        if err is None or not isinstance(err, (errors.HfHubHTTPError, errors.LocalEntryNotFoundError,
                                               errors.HFValidationError, errors.EntryNotFoundError)):
            return False
        name = f"{self.what} {self.repo_id}"
        if isinstance(err, errors.RepositoryNotFoundError):
            message = f"{name}: no such repository on the hub (nor a local path; a private one needs `hf auth login`)"
        elif isinstance(err, errors.RevisionNotFoundError):
            message = f"{name}: no such revision on the hub"
        elif isinstance(err, errors.LocalEntryNotFoundError):  # before EntryNotFoundError: it is one
            message = (f"{name} ({self.filename}) is not a local path, nor in the local Hugging Face cache, and the hub"
                       f" {'is switched off (HF_HUB_OFFLINE)' if _offline() else 'cannot be reached'}: download it"
                       " where there is a network, or pass a local path")
        elif isinstance(err, errors.EntryNotFoundError):
            raise HubFileMissing(f"{name} has no file {self.filename}") from err
        elif isinstance(err, errors.HFValidationError):
            message = f"{name}: not a local path, nor a valid hub repository id"
        else:
            message = f"{name}: the hub answered {str(err).splitlines()[0]}"
        raise ValueError(message) from err


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def local_single_file(name: str) -> str:
    """A local path for a single connector file: `name` itself when it exists (or cannot be a hub
    file: the missing-file error then names it), else the file downloaded from the hub."""
    hub_file = None if os.path.exists(name) else split_hub_file(name)
    if hub_file is None:
        return name
    repo_id, filename, revision = hub_file
    return download(repo_id, filename, "connector", revision)


def resolve_connector(name: str, filename: str | None = None, subfolder: str | None = None,
                      revision: str | None = None) -> tuple[str, str]:
    """("file" or "folder", local path) for a connector named in any of the module's forms."""
    from .published import SINGLE_FILE_REPOS

    if os.path.isdir(name):
        folder = os.path.join(name, subfolder or "")
        if filename is not None:
            return "file", os.path.join(folder, filename)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ValueError(f"{folder} is not an ELLA connector folder (no config.json)")
        return "folder", folder
    if os.path.isfile(name) or name.endswith(".safetensors"):
        return "file", local_single_file(name)
    if not HUB_ID.fullmatch(name) or "/" not in name:  # hub ids are ORG/NAME: anything else is a local path
        raise FileNotFoundError(f"connector not found: {name} (no such file or folder)")
    if filename is not None:
        return "file", download(name, filename, "connector", revision, subfolder)
    config = f"{subfolder}/config.json" if subfolder else "config.json"
    if has_file(name, config, "connector", revision):
        return "folder", download_folder(name, "connector", subfolder, revision)
    if name in SINGLE_FILE_REPOS:
        return "file", download(name, SINGLE_FILE_REPOS[name], "connector", revision)
    try:  # says why there is none: no such repository, not cached while offline, or no config.json in it
        download(name, config, "connector", revision)
    except HubFileMissing:
        raise ValueError(f"connector {name}: the hub repository has no {config} (a save_pretrained folder); name"
                         " the file in it: REPO/FILE.safetensors, or filename=") from None
    return "folder", download_folder(name, "connector", subfolder, revision)

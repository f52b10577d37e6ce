"""Writing files the way a long job must: atomically, with the process umask, never through a
planted symlink (torch-free: the CLI and the benchmark use it)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@contextlib.contextmanager
def disk_full_named(path: str):
    """A full disk (or quota) while writing `path` as an OSError that names the file: the OS's own
    "[Errno 28] No space left on device" says neither which file nor that finished work is kept."""
    try:
        yield
    except OSError as err:
        if err.errno not in FULL:
            raise
        raise OSError(err.errno, f"no space left on the device to write {path}: free some space and rerun (what is"
                                 " finished is kept)", path) from None


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp"):
    """Yield a fresh temporary path beside `path`; when the block ends without error, make it
    `path`. The rename replaces whatever `path` is (a symlink included: its target is never
    written); a failed or killed write leaves the old file, never half a new one. `mkstemp`
    creates files 0600: the finished file gets the mode any file would (0666 minus the umask)."""
    folder = os.path.dirname(os.path.abspath(path))
    with disk_full_named(path):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        with disk_full_named(path):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())
            with open(tmp, "rb") as f:  # on disk before the rename: a crash never leaves an empty file
                os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename itself, where the platform allows a folder fd
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def folder_lock(folder: str, enabled: bool = True):
    """Hold `folder/.ella.lock` for the block: a second run on the same output folder stops at
    once with a clear error instead of interleaving its writes with the first's. The lock is the
    kernel's (flock), so a killed run never leaves it held. A multi-process run locks only in the
    process that coordinates it (`enabled`)."""
    if not enabled:
        yield
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked
        yield
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".ella.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"another ella run is writing to {folder} (it holds {path}): wait for it to end, or use"
                         " another folder") from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def named_errors(path: str, what: str = "file"):
    """Errors of reading `path` as one line that names it: text that is not UTF-8, JSON that does
    not parse (the codec's and the parser's own messages name neither the file nor the fix)."""
    import json

    try:
        yield
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None


def read_json_object(path: str, what: str = "file") -> dict:
    """A JSON object from `path`; a ValueError naming the file (and `what` it is) when it is not
    UTF-8, not JSON, or not an object."""
    import json

    with named_errors(path, what), open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} is not a JSON object")
    return data


def follow_umask(folder: str, suffix: str = ".safetensors") -> None:
    """Give the `suffix` files below `folder` the mode any new file gets (0666 minus the umask):
    safetensors writes its files 0600, unlike every other output."""
    mode = 0o666 & ~_umask()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(suffix) and not os.path.islink(path):
                os.chmod(path, mode)

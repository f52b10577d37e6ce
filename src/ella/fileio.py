"""Writing files the way a long job must: atomically, with the process umask, never through a
planted symlink (torch-free: the CLI and the benchmark use it)."""

from __future__ import annotations

import contextlib
import os
import tempfile


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp"):
    """Yield a fresh temporary path beside `path`; when the block ends without error, make it
    `path`. The rename replaces whatever `path` is (a symlink included: its target is never
    written); a failed or killed write leaves the old file, never half a new one. `mkstemp`
    creates files 0600: the finished file gets the mode any file would (0666 minus the umask)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
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

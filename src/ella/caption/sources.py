"""What `ella caption` reads: every data source `ella train` reads, cut into shards.

A tar shard (WebDataset) is a shard. An image folder (subfolders too), a .jsonl/.csv manifest or
a plugin scheme (`shapes:N`) is cut into fixed blocks of `BLOCK` items, named `items-00000`, ...:
the unit that ranks share out, that one sidecar file holds, and that a resumed run picks up.

A shard yields `SourceItem`s: the key, where the image is, a stamp of its content (size and
modification time: a replaced image is captioned again), the original caption, and `open()`,
which decodes the image only when it is to be captioned (a resumed run skips by key without
decoding). An image that cannot be read raises `UnreadableImage` with the reason, to be named
and counted, never fatal. Tar shards are streamed: a member's bytes are read when its image is
opened, so memory stays flat whatever the shard's size.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from PIL import Image

from ..train.records import IMAGE_EXTS, scan_records

BLOCK = 1000
FINGERPRINT_BYTES = 1 << 20  # a tar shard is fingerprinted by its size and its first and last MiB


class UnreadableImage(ValueError):
    """An image that cannot be decoded: the reason, in a few words."""


@dataclass
class SourceItem:
    key: str
    file: str  # where the image is: a path, or SHARD.tar:MEMBER
    stamp: str | None  # "size:mtime_ns" of the image (None where there is no file: a scheme's render)
    original: str | None  # the caption it came with
    open: Callable[[], Image.Image]  # the image, decoded; UnreadableImage when it cannot be


@dataclass
class Shard:
    name: str  # the sidecar's name: the tar's path under the pattern's folder, or items-NNNNN
    read: Callable[[], Iterator[SourceItem]]
    path: str | None = None  # a tar shard's file: its fingerprint ties the sidecar to it
    size: int | None = None  # items, where known without reading (blocks)

    def items(self) -> Iterator[SourceItem]:
        return self.read()

    def digest(self) -> str | None:
        """A tar shard's fingerprint (a sidecar is refused for a shard that changed since): its
        size and the sha256 of its first and last MiB, read in milliseconds whatever its size.
        None for blocks."""
        if self.path is None:
            return None
        if not hasattr(self, "_digest"):
            size = os.path.getsize(self.path)
            h = hashlib.sha256(str(size).encode())
            with open(self.path, "rb") as f:
                h.update(f.read(FINGERPRINT_BYTES))
                f.seek(max(0, size - FINGERPRINT_BYTES))
                h.update(f.read(FINGERPRINT_BYTES))
            self._digest = f"{size}:{h.hexdigest()}"
        return self._digest


def decode(source, name: str) -> Image.Image:
    """An image as RGB, or UnreadableImage naming why not (`images.read_image`: corrupt, not an
    image, or over PIL's decompression-bomb limit), to be counted, never fatal."""
    from ..images import ImageReadError, read_image

    try:
        return read_image(source, name).convert("RGB")
    except ImageReadError as err:
        raise UnreadableImage(f"{name}: {err.reason}") from None


def stamp(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def data_root(data: str) -> str:
    """The folder the data lives in (caption sets must be written outside it)."""
    if os.path.isdir(data):
        return os.path.abspath(data)
    first = sorted(glob.glob(data))[:1] if any(c in data for c in "*?[") else [data]
    return os.path.dirname(os.path.abspath(first[0])) if first and os.path.exists(first[0]) else ""


def data_id(data: str) -> str:
    """What a caption set records it was made from: a path made absolute, a scheme as written."""
    scheme, sep, _ = data.partition(":")
    return data if sep and not os.path.exists(data) else os.path.abspath(data)


def shards(data: str) -> list[Shard]:
    """The shards of `data`, in a fixed order."""
    if data.endswith(".tar"):
        paths = sorted(glob.glob(data))
        if not paths:
            raise FileNotFoundError(f"no tar shards match {data}")
        root = _static_prefix(data)
        return [Shard(os.path.relpath(p, root).replace(os.sep, "--"), lambda p=p: _tar_items(p), p) for p in paths]
    scheme, sep, _ = data.partition(":")
    if sep and not os.path.exists(data):
        from ..train.data import make_dataset

        dataset = make_dataset(data, resolution=32)  # a plugin scheme renders at its own size
        return _blocks(len(dataset), lambda i: _dataset_item(dataset, i))
    records = scan_records(data)
    if not records:
        raise ValueError(f"no images found in {data}")

    def record_item(i: int) -> SourceItem:
        r = records[i]
        return SourceItem(r.key, r.image, stamp(r.image), r.caption, lambda: decode(r.image, r.image))

    return _blocks(len(records), record_item)


def _static_prefix(pattern: str) -> str:
    """The folder of a glob pattern before its first wildcard: tar shards are named under it, so
    shards of one name in two folders get two sidecars."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return os.sep.join(fixed) or "."


def _blocks(n: int, item) -> list[Shard]:
    def read(start):
        return (item(i) for i in range(start, min(start + BLOCK, n)))
    return [Shard(f"items-{start // BLOCK:05d}", lambda s=start: read(s), None, min(BLOCK, n - start))
            for start in range(0, n, BLOCK)]


def _dataset_item(dataset, index: int) -> SourceItem:
    import numpy as np

    sample = dataset[index]
    pixels = sample["pixel_values"].permute(1, 2, 0).numpy()  # [-1, 1] (H, W, 3)
    image = Image.fromarray(((pixels + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
    return SourceItem(sample["key"], sample["key"], None, sample.get("caption"), lambda: image)


def _tar_items(path: str) -> Iterator[SourceItem]:
    """Members grouped by key (`key.jpg` + `key.txt`, adjacent as WebDataset writes them), in the
    shard's order; only the captions are read as the shard is walked."""
    with tarfile.open(path) as tar:
        key, group = None, {}
        for member in tar:
            if not member.isfile():
                continue
            name, ext = os.path.splitext(member.name)
            if name != key:
                yield from _tar_item(tar, path, key, group)
                key, group = name, {}
            if ext.lower() in IMAGE_EXTS:
                group["image"] = member
            elif ext == ".txt":
                group["caption"] = tar.extractfile(member).read().decode("utf-8", "replace").strip()
        yield from _tar_item(tar, path, key, group)


def _tar_item(tar, path: str, key: str | None, group: dict) -> Iterator[SourceItem]:
    member = group.get("image")
    if member is None:  # a caption without its image is not an item
        return
    where = f"{path}:{member.name}"

    def load():
        return decode(io.BytesIO(tar.extractfile(member).read()), where)

    yield SourceItem(key, where, f"{member.size}:{member.mtime}", group.get("caption"), load)

"""What `ella caption` reads: every data source `ella train` reads, cut into shards.

A tar shard (WebDataset) is a shard. An image folder, a .jsonl/.csv manifest or a plugin scheme
(`shapes:N`) is cut into fixed blocks of `BLOCK` items, named `items-00000`, ...: the unit that
ranks share out, that one sidecar file holds, and that a resumed run picks up. A shard yields
(key, image or None, the original caption or None); an image that cannot be read is None, to be
counted, not fatal.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..train.data import IMAGE_EXTS, scan_records

BLOCK = 1000
Item = tuple[str, "Image.Image | None", "str | None"]


@dataclass
class Shard:
    name: str  # the sidecar's name: the tar's file name, or items-NNNNN
    read: object  # () -> Iterator[Item]
    path: str | None = None  # a tar shard's file: its digest ties the sidecar to it

    def items(self) -> Iterator[Item]:
        return self.read()

    def digest(self) -> str | None:
        """sha256 of a tar shard (a sidecar is refused for a shard that changed since); None for blocks."""
        if self.path is None:
            return None
        if not hasattr(self, "_digest"):
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._digest = h.hexdigest()
        return self._digest


def _open(source) -> Image.Image | None:
    try:
        image = Image.open(source)
        image.load()
        return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def data_root(data: str) -> str:
    """The folder the data lives in (caption sets must be written outside it)."""
    if os.path.isdir(data):
        return os.path.abspath(data)
    first = sorted(glob.glob(data))[:1] if any(c in data for c in "*?[") else [data]
    return os.path.dirname(os.path.abspath(first[0])) if first and os.path.exists(first[0]) else ""


def shards(data: str) -> list[Shard]:
    """The shards of `data`, in a fixed order."""
    if data.endswith(".tar"):
        paths = sorted(glob.glob(data))
        if not paths:
            raise FileNotFoundError(f"no tar shards match {data}")
        return [Shard(os.path.basename(p), lambda p=p: _tar_items(p), p) for p in paths]
    scheme, sep, _ = data.partition(":")
    if sep and not os.path.exists(data):
        from ..train.data import make_dataset

        dataset = make_dataset(data, resolution=32)  # a plugin scheme renders at its own size
        return _blocks(len(dataset), lambda i: _dataset_item(dataset, i))
    records = scan_records(data)
    if not records:
        raise ValueError(f"no images found in {data}")
    return _blocks(len(records), lambda i: (records[i].key, _open(records[i].image), records[i].caption))


def _blocks(n: int, item) -> list[Shard]:
    def read(start):
        return (item(i) for i in range(start, min(start + BLOCK, n)))
    return [Shard(f"items-{start // BLOCK:05d}", lambda s=start: read(s)) for start in range(0, n, BLOCK)]


def _dataset_item(dataset, index: int) -> Item:
    import numpy as np

    sample = dataset[index]
    pixels = sample["pixel_values"].permute(1, 2, 0).numpy()  # [-1, 1] (H, W, 3)
    image = Image.fromarray(((pixels + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
    return sample["key"], image, sample.get("caption")


def _tar_items(path: str) -> Iterator[Item]:
    """Members grouped by key (`key.jpg` + `key.txt`), in the shard's order."""
    pending: dict[str, dict] = {}
    order: list[str] = []
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = os.path.splitext(member.name)
            if key not in pending:
                pending[key] = {}
                order.append(key)
            data = tar.extractfile(member).read()
            if ext.lower() in IMAGE_EXTS:
                pending[key]["image"] = data
            elif ext == ".txt":
                pending[key]["caption"] = data.decode("utf-8", "replace").strip()
    for key in order:
        entry = pending[key]
        if "image" in entry:  # a caption without its image is not an item
            yield key, _open(io.BytesIO(entry["image"])), entry.get("caption")

"""Training data: image folders with .txt captions, JSONL/CSV manifests, WebDataset-style tar
shards (streamed), and the precomputed feature cache. Unreadable samples are skipped and counted.

Order and sharding are ours, not a DataLoader's: epoch e visits a permutation seeded by
(seed, e), and process r of w takes every w-th index from position r, so shards are disjoint and
a run resumed at (epoch, position) sees exactly the batches it would have seen.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .records import IMAGE_EXTS, Record, scan_records  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)



def load_image(source, resolution: int) -> torch.Tensor:
    """Resize the shorter side to `resolution`, center-crop, scale to [-1, 1]: (3, R, R)."""
    image = Image.open(source)
    image.load()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: PIL's convert would clip, not rescale
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    if scale != 1:
        size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
        image = image.resize(size, Image.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Map-style samples {key, pixel_values, caption}; None for a sample that cannot be used."""

    def __init__(self, source: str, resolution: int, require_caption: bool = True):
        self.records = scan_records(source)
        self.resolution, self.require_caption = resolution, require_caption
        if not self.records:
            raise ValueError(f"no images found in {source}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict | None:
        rec = self.records[index]
        if not rec.caption and self.require_caption:
            logger.debug("skipping %s: no caption", rec.key)
            return None
        try:
            sample = {"key": rec.key, "pixel_values": load_image(rec.image, self.resolution), "caption": rec.caption}
            if rec.loser:
                sample["loser_pixel_values"] = load_image(rec.loser, self.resolution)
        except (OSError, UnidentifiedImageError, ValueError) as err:
            logger.debug("skipping %s: %s", rec.key, err)
            return None
        return sample


class ReplayMix(torch.utils.data.Dataset):
    """New samples fine-tuned on beside the original data, so a model does not drift: an epoch
    holds the replay data once over (each of its samples at most once, in a seeded draw) and
    the primary samples repeated so that replay makes `fraction` of it. A few hundred new pairs
    beside 20k originals: the new pairs come round as often as with a small fixed replay draw,
    but every replayed batch is new data, not the same handful over and over."""

    def __init__(self, primary, replay, fraction: float, seed: int = 0):
        if not 0 <= fraction < 1:
            raise ValueError(f"replay_fraction must be in [0, 1), got {fraction}")
        per_primary = fraction / (1 - fraction)  # replayed samples per primary sample
        self.repeats = max(1, round(len(replay) / (per_primary * len(primary)))) if fraction else 1
        n = min(len(replay), round(self.repeats * len(primary) * per_primary))
        g = torch.Generator().manual_seed(seed)
        self.primary, self.replay = primary, replay
        self.replay_index = torch.randperm(len(replay), generator=g)[:n].tolist()

    def __len__(self) -> int:
        return self.repeats * len(self.primary) + len(self.replay_index)

    def __getitem__(self, index: int):
        if index < self.repeats * len(self.primary):
            return self.primary[index % len(self.primary)]
        return self.replay[self.replay_index[index - self.repeats * len(self.primary)]]


def make_dataset(train_data: str, resolution: int, seed: int = 0, captions: dict | None = None,
                 replay: tuple[str, float] | None = None, captions_seed: int | None = None) -> torch.utils.data.Dataset:
    """A map-style dataset for `train_data`: an image folder, a .jsonl/.csv manifest,
    `synthetic:N` (procedural squares) or `SCHEME:...` for a scheme a plugin registered
    (ShapesWorld: `shapes:N[:seed][:captions]`), built by `from_spec(train_data, resolution)`.
    `captions`: the config's caption sets (`ella.train.captions`), which then give the captions;
    `replay`: (the config's replay_data, replay_fraction), original data mixed in."""
    if replay and replay[0]:  # `replay_data` mixed in (`ella feedback`)
        return ReplayMix(make_dataset(train_data, resolution, seed, captions, captions_seed=captions_seed),
                         make_dataset(replay[0], resolution, seed),
                         replay[1], seed)
    if captions:
        from .captions import CaptionMix, MixedCaptions

        return MixedCaptions(_source_dataset(train_data, resolution, seed, require_caption=False),
                             CaptionMix(captions, seed if captions_seed is None else captions_seed))
    return _source_dataset(train_data, resolution, seed)


def _source_dataset(train_data: str, resolution: int, seed: int, require_caption: bool = True):
    from ..plugins import lookup

    if train_data.startswith("synthetic:"):
        from .synthetic import SyntheticDataset

        return SyntheticDataset(int(train_data.split(":", 1)[1]), resolution, seed)
    scheme, sep, _ = train_data.partition(":")
    from_spec = lookup("dataset_schemes", scheme) if sep and not os.path.exists(train_data) else None
    if from_spec is not None:
        return from_spec(train_data, resolution)
    return ImageCaptionDataset(train_data, resolution, require_caption)


def collate(samples: list[dict | None]) -> dict:
    """Stack the usable samples; `skipped` counts the others."""
    good = [s for s in samples if s is not None]
    batch: dict = {"skipped": len(samples) - len(good), "key": [s["key"] for s in good]}
    if good:
        for name, value in good[0].items():
            if isinstance(value, torch.Tensor):
                batch[name] = torch.stack([s[name] for s in good])
            elif name != "key":
                batch[name] = [s[name] for s in good]
    return batch


@dataclass
class DataPosition:
    epoch: int = 0
    batch: int = 0  # batches already consumed in this epoch (by this process)


def epoch_indices(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This process's share of epoch `epoch`'s permutation (disjoint across processes)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)[rank::world].tolist()


def iterate_batches(
    dataset, batch_size: int, seed: int, position: DataPosition, rank: int = 0, world: int = 1, num_workers: int = 0
) -> Iterator[dict]:
    """Endless batches from `position` on; updates `position` in place as batches are yielded."""
    while True:
        indices = epoch_indices(len(dataset), seed, position.epoch, rank, world)
        batches = [indices[i : i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]
        if not batches:
            raise ValueError(f"{len(dataset)} samples are too few for batch size {batch_size} x {world} processes")
        todo = batches[position.batch :]
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=todo, collate_fn=collate, num_workers=num_workers
        )
        for batch in loader:
            position.batch += 1
            yield batch
        position.epoch, position.batch = position.epoch + 1, 0


class TarShardStream:
    """WebDataset-style shards (`key.jpg` + `key.txt` members), streamed without unpacking.

    Shards are split over processes (shard i goes to process i % world); within a shard members
    are read in order. `position.batch` counts batches already consumed, for resume.
    """

    def __init__(self, pattern: str, resolution: int, mix=None):
        self.shards = sorted(glob.glob(pattern))
        if not self.shards:
            raise FileNotFoundError(f"no tar shards match {pattern}")
        self.resolution, self.mix = resolution, mix  # mix: a CaptionMix that gives the captions

    def samples(self, rank: int, world: int) -> Iterator[dict | None]:
        for shard in self.shards[rank::world]:
            with tarfile.open(shard) as tar:
                pending: dict[str, dict] = {}
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = os.path.splitext(member.name)
                    data = tar.extractfile(member).read()
                    entry = pending.setdefault(key, {})
                    entry["caption" if ext == ".txt" else "image" if ext.lower() in IMAGE_EXTS else ext] = data
                    if "caption" in entry and "image" in entry:
                        yield self._decode(key, pending.pop(key))
                for key, entry in pending.items():  # an image without caption (a caption set may have one)
                    yield self._decode(key, entry) if self.mix is not None and "image" in entry else None

    def _decode(self, key: str, entry: dict) -> dict | None:
        try:
            pixels = load_image(io.BytesIO(entry["image"]), self.resolution)
        except (OSError, UnidentifiedImageError, ValueError):
            return None
        caption = entry["caption"].decode("utf-8").strip() if "caption" in entry else None
        if self.mix is not None:
            from .captions import with_caption

            return with_caption({"key": key, "pixel_values": pixels, "caption": caption}, self.mix)
        return {"key": key, "pixel_values": pixels, "caption": caption} if caption else None

    def batches(self, batch_size: int, position: DataPosition, rank: int = 0, world: int = 1) -> Iterator[dict]:
        while True:
            chunk, done = [], 0
            for sample in self.samples(rank, world):
                chunk.append(sample)
                if len(chunk) == batch_size:
                    done += 1
                    if done > position.batch:
                        position.batch += 1
                        yield collate(chunk)
                    chunk = []
            position.epoch, position.batch = position.epoch + 1, 0

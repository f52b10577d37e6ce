"""`ella caption`: caption every shard of a data source, resumably, shards shared out over ranks."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from tqdm import tqdm

from .sidecar import check_header, read_header, read_sidecar, sidecar_path, write_set_file, write_sidecar
from .sources import data_root, shards

logger = logging.getLogger(__name__)


@dataclass
class CaptionStats:
    captioned: int = 0
    rejected: int = 0  # captioned, but the check found the caption untrue to its image
    skipped: int = 0  # already in the set (a resumed run)
    unreadable: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.captioned / self.seconds if self.seconds else 0.0


def check_out(data: str, out: str) -> None:
    """The caption set goes beside the data, never into it."""
    root = data_root(data)
    out_abs = os.path.abspath(out)
    if root and (out_abs == root or out_abs.startswith(root + os.sep)):
        raise ValueError(f"--out {out} is inside the data folder {root}: caption sets are written beside the data,"
                         " never into it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file: name a folder for the caption set")


def caption_data(data: str, captioner, out: str, batch_size: int = 8, chunk_size: int = 256, rank: int = 0,
                 world: int = 1, progress: bool = True, all_shards: list | None = None,
                 check: str | None = None) -> CaptionStats:
    """Caption this rank's shards of `data` (shard i goes to rank i % world) into the set `out`.
    Keys already in a shard's sidecar are skipped; a sidecar is rewritten atomically every
    `chunk_size` captions. `all_shards`: `sources.shards(data)`, if the caller has them already.
    `check`: a plugin's caption check (`registry.caption_checks`): a caption it finds untrue to its
    image is recorded as rejected (`"caption": ""`, the text under `"rejected"`), so training never
    reads it and a resumed run does not caption the image again."""
    check_out(data, out)
    agrees = load_check(check)
    all_shards = shards(data) if all_shards is None else all_shards
    described = {**captioner.describe(), **({"check": check} if check else {})}
    mine = all_shards[rank::world]
    for shard in mine:  # every sidecar this run would add to is its own, before anything is written
        path = sidecar_path(out, shard.name)
        old = read_header(path)
        if old:
            check_header(path, old, {**described, "shard_digest": shard.digest()})
    os.makedirs(out, exist_ok=True)
    if rank == 0:
        write_set_file(out, {**described, "data": data})
    stats, start = CaptionStats(), time.perf_counter()
    bar = tqdm(total=None, desc=f"captioning ({len(mine)} shards)", unit="img", disable=not progress)
    for shard in mine:
        _caption_shard(shard, captioner, agrees, out, described, batch_size, chunk_size, stats, bar)
    bar.close()
    stats.seconds = time.perf_counter() - start
    if stats.unreadable:
        logger.warning("%d images could not be read and were left out", stats.unreadable)
    return stats


def load_check(name: str | None):
    """The caption check a plugin registered under `name` (None: no check)."""
    if name is None:
        return None
    from ..plugins import lookup, registry

    agrees = lookup("caption_checks", name)
    if agrees is None:
        known = ", ".join(registry().caption_checks) or "none is installed"
        raise ValueError(f"unknown caption check {name!r} (a plugin's: {known})")
    return agrees


def _caption_shard(shard, captioner, agrees, out, described, batch_size, chunk_size, stats, bar) -> None:
    path = sidecar_path(out, shard.name)
    header = {**described, "shard": shard.name, "shard_digest": shard.digest()}
    old_header, records = read_sidecar(path)
    if old_header:
        check_header(path, old_header, header)
    done = {r["key"] for r in records}
    pending: list[tuple] = []
    written = len(records)

    def caption_pending() -> None:
        if not pending:
            return
        keys, images, originals = zip(*pending)
        for key, image, original, text in zip(keys, images, originals, captioner.caption(list(images), list(originals))):
            kept = agrees is None or agrees(image, text)
            records.append({"key": key, "caption": text if kept else "", **({} if kept else {"rejected": text}),
                            "original": original, **described})
            stats.rejected += not kept
        stats.captioned += len(pending)
        bar.update(len(pending))
        pending.clear()

    for key, image, original in shard.items():
        if key in done:
            stats.skipped += 1
        elif image is None:
            stats.unreadable += 1
        else:
            pending.append((key, image, original))
        if len(pending) == batch_size:
            caption_pending()
            if len(records) - written >= chunk_size:  # a chunk is done: on disk, whole
                write_sidecar(path, header, records)
                written = len(records)
    caption_pending()
    if len(records) > written or not os.path.isfile(path):  # an empty shard still says it was done
        write_sidecar(path, header, records)

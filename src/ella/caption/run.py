"""`ella caption`: caption every shard of a data source, resumably, shards shared out over ranks."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from .sidecar import (
    check_header,
    read_header,
    read_sidecar,
    remove_leftovers,
    sidecar_path,
    write_set_file,
    write_sidecar,
)
from .sources import UnreadableImage, data_id, data_root, shards

logger = logging.getLogger(__name__)


MAX_NAMED = 5  # unreadable or failed files named in the log (all are in the set's sidecars)
LOG_EVERY_S = 30.0  # without a terminal (batch logs): a progress line this often


@dataclass
class CaptionStats:
    captioned: int = 0
    rejected: int = 0  # captioned, but the check found the caption untrue to its image
    failed: int = 0  # the captioner could not describe the image (recorded with its reason)
    skipped: int = 0  # already in the set (a resumed run)
    unreadable: int = 0
    seconds: float = 0.0
    named: list = field(default_factory=list)  # the first unreadable or failed files, with why

    @property
    def images_per_s(self) -> float:
        return self.captioned / self.seconds if self.seconds else 0.0

    def name(self, what: str) -> None:
        if len(self.named) < MAX_NAMED:
            self.named.append(what)


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
    Keys already in a shard's sidecar (and unchanged since) are skipped without decoding; a
    sidecar is rewritten atomically every `chunk_size` captions. Every item gets a record: its
    caption, or why it has none (`unreadable`, or the captioner's `failure`), so every file is
    accounted for and a rerun does not try it again. `all_shards`: `sources.shards(data)`, if the
    caller has them already. `check`: a plugin's caption check (`registry.caption_checks`): a
    caption it finds untrue to its image is recorded as rejected (`"caption": ""`, the text under
    `"rejected"`), so training never reads it and a resumed run does not caption the image again.
    A second run on the same `out` is refused while one holds it."""
    from ..fileio import folder_lock

    started = time.time()
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
    with folder_lock(out, enabled=rank == 0):
        if rank == 0:
            write_set_file(out, {**described, "data": data_id(data)})
            if remove_leftovers(out, started):
                logger.info("removed the temporary files of an interrupted run in %s", out)
        stats, start = CaptionStats(), time.perf_counter()
        sizes = [shard.size for shard in mine]
        total = sum(sizes) if None not in sizes else None
        bar = tqdm(total=total, desc=f"captioning ({len(mine)} shards)", unit="img", disable=not progress)
        report = ProgressLog(total, enabled=not progress)
        for shard in mine:
            _caption_shard(shard, captioner, agrees, out, described, batch_size, chunk_size, stats, bar, report)
        bar.close()
    stats.seconds = time.perf_counter() - start
    for what, count in (("could not be read", stats.unreadable), ("could not be described by the captioner",
                                                                 stats.failed)):
        if count:
            logger.warning("%d images %s (each is recorded in its sidecar with the reason)", count, what)
    for what in stats.named:
        logger.warning("  %s", what)
    return stats


class ProgressLog:
    """Progress lines for logs (stderr not a terminal, where tqdm's bar is off): every
    `LOG_EVERY_S` seconds, what is done, of how many where known, the rate and the time left."""

    def __init__(self, total: int | None, enabled: bool):
        self.total, self.enabled, self.done = total, enabled, 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled or now - self.last < LOG_EVERY_S:
            return
        self.last = now
        rate = self.done / (now - self.start)
        left = f", about {(self.total - self.done) / rate / 60:.1f} min left" if self.total and rate else ""
        of = f" of {self.total}" if self.total else ""
        logger.info("captioning: %d%s images done (%.2f images/s%s)", self.done, of, rate, left)


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


def describe_each(captioner, images: list, originals: list, files: list) -> list[tuple[str | None, str | None]]:
    """[(caption, None) or (None, why not)] per image: the batch in one call, and where that fails,
    image by image, so that one image the captioner cannot describe never stops the run."""
    try:
        return [(text, None) for text in captioner.caption(images, originals)]
    except Exception as err:  # noqa: BLE001 (any captioner's error: recorded per image below, never silent)
        if len(images) == 1:
            logger.debug("captioner failed on %s: %s", files[0], err)
            return [(None, f"{type(err).__name__}: {err}")]
    return [describe_each(captioner, [i], [o], [f])[0] for i, o, f in zip(images, originals, files)]


def _caption_shard(shard, captioner, agrees, out, described, batch_size, chunk_size, stats, bar, report) -> None:
    path = sidecar_path(out, shard.name)
    header = {**described, "shard": shard.name, "shard_digest": shard.digest()}
    old_header, records = read_sidecar(path)
    if old_header:
        check_header(path, old_header, header)
    done = {r["key"]: i for i, r in enumerate(records)}
    pending: list[tuple] = []
    unwritten = 0

    def add(record: dict) -> None:
        nonlocal unwritten
        unwritten += 1
        if record["key"] in done:  # a replaced image: its new record replaces the old one
            records[done[record["key"]]] = record
        else:
            done[record["key"]] = len(records)
            records.append(record)

    def caption_pending() -> None:
        if not pending:
            return
        items, images = zip(*pending)
        results = describe_each(captioner, list(images), [i.original for i in items], [i.file for i in items])
        for item, image, (text, failure) in zip(items, images, results):
            base = {"key": item.key, "file": item.file, "stamp": item.stamp, "original": item.original, **described}
            if failure is not None:
                stats.failed += 1
                stats.name(f"{item.file}: the captioner failed: {failure}")
                add({**base, "caption": "", "failure": failure})
                continue
            kept = agrees is None or agrees(image, text)
            add({**base, "caption": text if kept else "", **({} if kept else {"rejected": text})})
            stats.rejected += not kept
            stats.captioned += 1
        bar.update(len(pending))
        report.update(len(pending))
        pending.clear()

    for item in shard.items():
        old = records[done[item.key]] if item.key in done else None
        if old is not None and old.get("stamp", item.stamp) == item.stamp:  # (sets made before stamps: kept)
            stats.skipped += 1
            bar.update(1)
            continue
        try:
            pending.append((item, item.open()))  # decoded now: only what is to be captioned
        except UnreadableImage as err:
            stats.unreadable += 1
            stats.name(str(err))
            add({"key": item.key, "file": item.file, "stamp": item.stamp, "caption": "", "unreadable": str(err),
                 **described})
            bar.update(1)
        if len(pending) == batch_size:
            caption_pending()
            if unwritten >= chunk_size:  # a chunk is done: on disk, whole
                write_sidecar(path, header, records)
                unwritten = 0
    caption_pending()
    if unwritten or not os.path.isfile(path):  # an empty shard still says it was done
        write_sidecar(path, header, records)

"""DPG-Bench generation, scoring, reports and comparisons (the work behind `ella bench dpg`)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time

import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..fileio import atomic_path, disk_full_named, named_errors, write_text_atomic
from ..images import make_grid, pyplot, save_atomic, split_grid
from .dpg import Item, summarize
from .vqa import VQABackend, read_answer_records

logger = logging.getLogger(__name__)

# Published DPG-Bench rows (the paper, Table 2) for the report's chart.
PAPER_ROWS = {
    "SD v1.5": {"overall": 63.18, "global": 74.63, "entity": 74.23, "attribute": 75.39, "relation": 73.49, "other": 67.81},
    "SDXL": {"overall": 74.65, "global": 83.27, "entity": 82.43, "attribute": 80.91, "relation": 86.76, "other": 80.41},
    "ELLA-SD1.5": {"overall": 74.91, "global": 84.03, "entity": 84.61, "attribute": 83.48, "relation": 84.03, "other": 80.79},
    "ELLA-SDXL": {"overall": 80.23, "global": 85.90, "entity": 85.34, "attribute": 86.67, "relation": 86.16, "other": 87.41},
}
L1_ORDER = ("global", "entity", "attribute", "relation", "other")


def sample_seed(base_seed: int, item_id: str, index: int) -> int:
    """The seed of sample `index` of `item_id`: any subset of items regenerates identically."""
    digest = hashlib.sha256(f"{base_seed}:{item_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def shard(seq: list, rank: int, world: int) -> list:
    return seq[rank::world]


def finished(path: str) -> bool:
    """A finished image: a file of our own. A symbolic link planted there is not one (the image is
    drawn again, and the atomic rename replaces the link, never writing through it)."""
    return os.path.isfile(path) and not os.path.islink(path)


def generate_images(
    pipe, prompts: dict[str, str], out_dir: str, samples: int = 4, seed: int = 0, batch_size: int = 8,
    rank: int = 0, world: int = 1, layouts: dict | None = None, **call_kwargs,
) -> list[str]:
    """Render `samples` images per prompt, tiled in a grid, into `<out_dir>/<item_id>.png`; with
    `layouts` ({item_id: ella.regions.Layout}), each prompt drawn with its regions. Finished items
    are skipped, so a restarted run only does what is left. Returns written ids."""
    os.makedirs(out_dir, exist_ok=True)
    todo = [i for i in shard(sorted(prompts), rank, world) if not finished(os.path.join(out_dir, f"{i}.png"))]
    per_batch = max(1, batch_size // samples)
    written = []
    progress = tqdm(total=len(todo) * samples, desc="generating", unit="image", disable=not todo)  # with its ETA
    for start in range(0, len(todo), per_batch):
        ids = todo[start : start + per_batch]
        generators = [torch.Generator("cpu").manual_seed(sample_seed(seed, i, k)) for i in ids for k in range(samples)]
        if layouts is not None:
            call_kwargs["regions"] = [layouts[i] for i in ids]
        images = pipe([prompts[i] for i in ids], num_images_per_prompt=samples, generator=generators, **call_kwargs).images
        for j, item_id in enumerate(ids):
            tiles = images[j * samples : (j + 1) * samples]
            save_atomic(make_grid(tiles, cols=math.ceil(math.sqrt(samples))), os.path.join(out_dir, f"{item_id}.png"))
            written.append(item_id)
        progress.update(len(ids) * samples)
    progress.close()
    return written


def write_manifest(out_dir: str, settings: dict) -> None:
    """Record how the images in `out_dir` are made, before the first one is: a restarted run
    resumes only with the same settings (else it would mix images of two runs in one score)."""
    path = os.path.join(out_dir, "manifest.json")
    settings = json.loads(json.dumps(settings, default=str))
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            k = changed[0]
            raise ValueError(f"{out_dir} holds images made with other settings ({k}: {before.get(k)!r} there,"
                             f" {settings.get(k)!r} now): pass another output folder, or delete that one")
        return
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(path, json.dumps(settings, indent=2))


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_crops(images_dir: str, item_id: str, tiles: int = 2) -> list[Image.Image] | str:
    """The item's crops (reading order), or why they cannot be had."""
    for ext in (".png", ".jpg", ".jpeg", ".webp"):
        path = os.path.join(images_dir, item_id + ext)
        if os.path.isfile(path):
            break
    else:
        return "missing image"
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError) as err:
        return f"unreadable image: {err}"
    w, h = image.size
    if w != h or w % tiles:
        return f"wrong size {w}x{h}: expected a square {tiles}x{tiles} grid"
    if w // tiles < MIN_CROP:
        return f"too small ({w}x{h}): each of the {tiles}x{tiles} images must be at least {MIN_CROP} px"
    return split_grid(image.convert("RGB"), tiles)


MIN_CROP = 8  # pixels: a judge cannot answer about less (the smallest images here are ShapesWorld's 32)


class AnswerLog:
    """answers.jsonl, appended as answers come: a killed run loses at most the line being
    written, and a rerun asks only what is not in the log (never twice the same question)."""

    def __init__(self, path: str):
        self.path = path
        self.records: dict[tuple[str, int, str], dict] = {}  # (item_id, crop, proposition_id) -> record
        if os.path.islink(path):  # a planted link: appends would land in its target
            logger.warning("%s is a symbolic link: replacing it with a file", path)
            os.unlink(path)
        if os.path.isfile(path):
            for r in read_answer_records(path):
                self.records[(r["item_id"], int(r["crop"]), r["proposition_id"])] = r
            self._rewrite()  # drop a torn last line and duplicates before appending
        self.file = open(path, "a", encoding="utf-8")

    def _rewrite(self) -> None:
        write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in self.records.values()))

    def add(self, item_id: str, crop: int, proposition_id: str, question: str, answer: str) -> None:
        record = {"item_id": item_id, "crop": crop, "proposition_id": proposition_id, "question": question, "answer": answer}
        self.records[(item_id, crop, proposition_id)] = record
        with disk_full_named(self.path):
            self.file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        with disk_full_named(self.path):
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def ask_all(items: dict[str, Item], images_dir: str, backend: VQABackend, log: AnswerLog, tiles: int = 2,
            rank: int = 0, world: int = 1) -> dict[str, str]:
    """Ask every (item, crop, question) not yet in the log. Returns {item_id: failure reason}."""
    failures = {}
    for item_id in tqdm(shard(sorted(items), rank, world), desc="judging", unit="item"):
        item = items[item_id]
        crops = load_crops(images_dir, item_id, tiles)
        if isinstance(crops, str):
            failures[item_id] = crops
            continue
        for c, crop in enumerate(crops):
            todo = [q for q in item.questions if (item_id, c, q.proposition_id) not in log.records]
            if not todo:
                continue
            answers = backend.answer(crop, [q.question for q in todo], item_id=item_id, crop=c)
            for q, a in zip(todo, answers):
                log.add(item_id, c, q.proposition_id, q.question, a)
        log.flush()
    return failures


def collect(items: dict[str, Item], log: AnswerLog, failures: dict[str, str], tiles: int = 2) -> dict:
    """{item_id: per-crop {proposition_id: answer}} or the failure reason, for `summarize`."""
    by_item: dict[str, list[dict[str, str]]] = {}
    for (item_id, crop, pid), record in log.records.items():
        by_item.setdefault(item_id, [{} for _ in range(tiles * tiles)])[crop][pid] = record["answer"]
    return {i: failures[i] if i in failures else by_item.get(i, "no answers") for i in items}


def score_run(items: dict[str, Item], images_dir: str, backend: VQABackend, out_dir: str, mode: str = "corrected",
              skip_missing: bool = False, settings: dict | None = None, rank: int = 0, world: int = 1,
              barrier=None, tiles: int = 2) -> dict | None:
    """Judge, score and report. Items are sharded over processes; after `barrier()` the main
    process (rank 0) merges their answers and alone writes the summary. `tiles`: each image is a
    tiles x tiles grid of samples (DPG-Bench's 2x2; 1 for single images)."""
    if os.path.abspath(out_dir) == os.path.abspath(images_dir):
        raise ValueError("--out must differ from --images: nothing is written into the image folder")
    os.makedirs(out_dir, exist_ok=True)
    name = "answers.jsonl" if world == 1 else f"answers.rank{rank}.jsonl"
    log = AnswerLog(os.path.join(out_dir, name))
    started = time.perf_counter()
    failures = ask_all(items, images_dir, backend, log, tiles, rank=rank, world=world)
    log.close()
    if world > 1:  # each process reports the images it could not use; the main one merges them
        write_text_atomic(os.path.join(out_dir, f"failures.rank{rank}.json"), json.dumps(failures))
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    if world > 1:
        log = merge_answer_logs(out_dir, world)
        failures = {}
        for r in range(world):
            path = os.path.join(out_dir, f"failures.rank{r}.json")
            with open(path) as f:
                failures.update(json.load(f))
            os.remove(path)
    summary, results = summarize(items, collect(items, log, failures, tiles), mode, skip_missing)
    summary["settings"] = {**(settings or {}), "vqa": backend.name, "images": os.path.abspath(images_dir),
                           "seconds": round(time.perf_counter() - started, 1)}
    write_reports(out_dir, summary, results)
    return summary


def merge_answer_logs(out_dir: str, world: int) -> AnswerLog:
    log = AnswerLog(os.path.join(out_dir, "answers.jsonl"))
    for r in range(world):
        part = os.path.join(out_dir, f"answers.rank{r}.jsonl")
        if os.path.isfile(part):
            for rec in read_answer_records(part):
                if (rec["item_id"], int(rec["crop"]), rec["proposition_id"]) not in log.records:
                    log.add(rec["item_id"], int(rec["crop"]), rec["proposition_id"], rec["question"], rec["answer"])
            os.remove(part)
    log.close()
    return log


def write_reports(out_dir: str, summary: dict, results) -> None:
    scores = "".join(json.dumps({"item_id": r.item_id, "score": r.score, "crop_scores": r.crop_scores,
                                 "failure": r.failure}) + "\n" for r in results)
    write_text_atomic(os.path.join(out_dir, "scores.jsonl"), scores)
    write_text_atomic(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2))
    write_text_atomic(os.path.join(out_dir, "summary.md"), markdown_table({"this run": summary}) + "\n")
    plot_l1(summary, os.path.join(out_dir, "l1.png"))


def row_values(summary: dict) -> list[float]:
    return [summary["overall"]] + [summary["l1"].get(k, float("nan")) for k in L1_ORDER]


def markdown_table(summaries: dict[str, dict], reference: dict[str, dict] | None = None) -> str:
    lines = ["| model | overall | " + " | ".join(L1_ORDER) + " |", "|---" * (2 + len(L1_ORDER)) + "|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row_values(s)) + " |")
    for name, row in (reference or {}).items():
        lines.append(f"| {name} (paper) | " + " | ".join(f"{row[k]:.2f}" for k in ("overall",) + L1_ORDER) + " |")
    return "\n".join(lines)


def plot_l1(summary: dict, path: str) -> None:
    """L1 category bars of this run beside the paper's published rows."""
    plt = pyplot("category chart")
    if plt is None:
        return
    rows = {"this run": [summary["l1"].get(k, float("nan")) for k in L1_ORDER]}
    rows.update({k: [v[c] for c in L1_ORDER] for k, v in PAPER_ROWS.items()})
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(rows)
    for j, (name, values) in enumerate(rows.items()):
        ax.bar([i + j * width for i in range(len(L1_ORDER))], values, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(L1_ORDER))], L1_ORDER)
    ax.set(ylabel="score", ylim=(0, 100), title="DPG-Bench L1 categories")
    ax.legend(fontsize=7, ncol=5, loc="lower center")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def compare_runs(run_dirs: list[str]) -> str:
    """A side-by-side table of runs and each run's deltas against the first."""
    summaries = {}
    for d in run_dirs:
        path = os.path.join(d, "summary.json") if os.path.isdir(d) else d
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no summary.json in {d}")
        with named_errors(path, "score summary"), open(path, encoding="utf-8") as f:
            summary = json.load(f)
        if not isinstance(summary, dict) or not isinstance(summary.get("overall"), (int, float)):
            raise ValueError(f"{path} is not a score summary (no overall score): pass `ella bench dpg score` folders")
        summaries[os.path.basename(os.path.normpath(d))] = summary
    table = markdown_table(summaries)
    names = list(summaries)
    base = row_values(summaries[names[0]])
    deltas = ["", f"deltas against {names[0]}:", "| model | overall | " + " | ".join(L1_ORDER) + " |",
              "|---" * (2 + len(L1_ORDER)) + "|"]
    for name in names[1:]:
        deltas.append(f"| {name} | " + " | ".join(f"{b - a:+.2f}" for a, b in zip(base, row_values(summaries[name]))) + " |")
    return table + ("\n".join(deltas) if len(names) > 1 else "")

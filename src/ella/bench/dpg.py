"""DPG-Bench data and scoring (Hu et al. 2024, arXiv:2403.05135, Sec. 5).

Pure functions: load the official question CSV into items grouped by `item_id`, check its
dependency graph, and score VQA answers in two modes:

- `corrected` (default): the dependency rule per crop; categories from the same dependency-applied
  scores over all crops; missing or unreadable images counted (scored 0 unless skipped).
- `reference`: the reference scorer's numbers, defects included: its first CSV row is skipped
  (so that item's children lose their parent and the item fails), only the exact answer "yes"
  counts, categories use the last crop's raw answers, and failed images are dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field

from ..fileio import named_errors
from ..paths import require_path

MODES = ("corrected", "reference")
CSV_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
               "category_detailed", "tuple", "question_natural_language")
OFFICIAL_CSV_BLOB = "98457fc9901943f51ff9a30367250fc292533bed"


class DPGDataError(ValueError):
    """The question file is malformed: the message names the item and the CSV row."""


@dataclass
class Question:
    proposition_id: str
    parents: list[str]  # parent proposition ids ("0" = none is dropped)
    tuple: str
    question: str
    row: int  # 1-based data row in the CSV (the header is row 0)

    @property
    def l2(self) -> str:
        """`entity - whole (cat)` -> `entity - whole`; `global - (x)` -> `global -`."""
        return self.tuple.split(" (")[0].strip()

    @property
    def l1(self) -> str:
        return self.l2.split("-")[0].strip()


@dataclass
class Item:
    item_id: str
    prompt: str
    questions: list[Question] = field(default_factory=list)


def strict_questions(item: Item) -> list[Question]:
    """Questions a judge must answer "yes" to for an image that holds nothing the prompt does not
    ask for, in the question-CSV's form (proposition ids after the item's own): per entity with no
    count question of its own, "is there exactly one"; then "nothing else" over all entities. For
    VQA judges that cannot read a whole scene (`VQABackend.scene_problems`). A plural entity
    ("dogs") gets no count question."""
    entities = [q for q in item.questions if q.l2 == "entity - whole"]
    if not entities:
        return []
    counted = {q.tuple.split("(", 1)[1].split(",")[0].strip() for q in item.questions
               if q.l1 == "other" and "count" in q.l2 and "(" in q.tuple}
    next_id = max((int(q.proposition_id) for q in item.questions if q.proposition_id.isdigit()), default=0) + 1
    out = []
    names = []
    for q in entities:
        name = q.tuple.split("(", 1)[1].rstrip(")").strip()
        names.append(name)
        if name in counted or name.endswith("s"):
            continue
        out.append(Question(str(next_id), [q.proposition_id], f"other - count ({name}, ==1)",
                            f"Is there exactly one {name}?", 0))
        next_id += 1
    listed = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
    out.append(Question(str(next_id), [q.proposition_id for q in entities], f"other - only ({listed})",
                        f"Does the image show only {listed}, and nothing else?", 0))
    return out


def git_blob_id(path: str) -> str:
    """What `git hash-object FILE` prints."""
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_item_id(item_id: str, where: str) -> None:
    """Item ids name files (`<item_id>.png`): a CSV is data from elsewhere, so an id must be a
    plain file name, never a path that leaves the output folder."""
    bad = (not item_id or item_id in (".", "..") or "/" in item_id or "\\" in item_id or "\0" in item_id
           or os.path.isabs(item_id) or (os.altsep is not None and os.altsep in item_id))
    if bad:
        raise DPGDataError(f"{where}: item_id {item_id!r} is not a plain file name")


def load_csv(path: str) -> dict[str, Item]:
    """Items keyed by item_id, questions in CSV order (rows of an item need not be adjacent)."""
    require_path(path, "DPG-Bench question file")
    items: dict[str, Item] = {}
    with named_errors(path, "DPG-Bench question file"), open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DPGDataError(f"{path}: not a DPG-Bench CSV, missing columns {', '.join(sorted(missing))}")
        for row_number, row in enumerate(reader, start=1):
            check_item_id(row["item_id"], f"{path}, row {row_number}")
            item = items.setdefault(row["item_id"], Item(row["item_id"], row["text"]))
            parents = [p.strip() for p in (row["dependency"] or "0").split(",") if p.strip() not in ("", "0")]
            item.questions.append(Question(row["proposition_id"].strip(), parents, row["tuple"],
                                           row["question_natural_language"], row_number))
    return items


def check_integrity(items: dict[str, Item]) -> list[str]:
    """Problems as 'item X, row R: ...': unknown parents, parents after children, cycles,
    duplicate proposition ids."""
    problems = []
    for item in items.values():
        position = {}
        for i, q in enumerate(item.questions):
            if q.proposition_id in position:
                problems.append(f"item {item.item_id}, row {q.row}: duplicate proposition id {q.proposition_id}")
            position[q.proposition_id] = i
        for i, q in enumerate(item.questions):
            for p in q.parents:
                if p not in position:
                    problems.append(f"item {item.item_id}, row {q.row}: unknown parent proposition {p}")
                elif position[p] > i:
                    problems.append(f"item {item.item_id}, row {q.row}: parent {p} comes after its child")
        problems += [f"item {item.item_id}, row {q.row}: dependency cycle through proposition {q.proposition_id}"
                     for q in _cycle_members(item)]
    return problems


def _cycle_members(item: Item) -> list[Question]:
    by_id = {q.proposition_id: q for q in item.questions}
    state: dict[str, int] = {}  # 1 = visiting, 2 = done
    found: list[Question] = []

    def visit(pid: str) -> None:
        state[pid] = 1
        for p in by_id[pid].parents:
            if p not in by_id:
                continue
            if state.get(p) == 1:
                found.append(by_id[p])
            elif p not in state:
                visit(p)
        state[pid] = 2

    for pid in by_id:
        if pid not in state:
            visit(pid)
    return found


def load_prompt_folder(folder: str) -> dict[str, str]:
    """`prompts/<item_id>.txt` -> {item_id: prompt}, whitespace stripped (the files end in a newline)."""
    require_path(folder, "DPG-Bench prompt folder", "folder")
    prompts = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".txt"):
            path = os.path.join(folder, name)
            with named_errors(path, "prompt file"), open(path, encoding="utf-8") as f:
                prompts[name[:-4]] = f.read().strip()
    if not prompts:
        raise DPGDataError(f"no <item_id>.txt prompt files in {folder}")
    empty = [item for item, text in prompts.items() if not text]
    if empty:  # found now, not when the generation reaches them
        raise DPGDataError(f"{len(empty)} empty prompt file(s) in {folder}; first: {empty[0]}.txt")
    return prompts


# ---- scoring ---------------------------------------------------------------------------------


def is_yes(answer: str, mode: str) -> int:
    """The reference counts only the exact string 'yes'; corrected mode ignores case and spaces."""
    return int(answer == "yes") if mode == "reference" else int(answer.strip().lower() == "yes")


def apply_dependencies(item: Item, raw: dict[str, int]) -> dict[str, int]:
    """A question whose parent scored 0 scores 0; in CSV order, so it cascades down chains
    (parents precede children in a valid file). A missing parent raises KeyError."""
    out = {}
    for q in item.questions:
        score = raw[q.proposition_id]
        if any(out[p] == 0 for p in q.parents):
            score = 0
        out[q.proposition_id] = score
    return out


@dataclass
class ItemResult:
    item_id: str
    score: float | None  # mean over crops of the crop score; None = dropped
    crop_scores: list[float]
    failure: str | None = None  # why the image could not be scored


def score_item(item: Item, crop_answers: list[dict[str, str]], mode: str = "corrected") -> tuple[ItemResult, list[list[dict[str, int]]]]:
    """crop_answers: per crop, {proposition_id: answer}. Returns the item's result and, per crop,
    (raw, dependency-applied) scores for the category tallies."""
    crop_scores, per_crop = [], []
    for answers in crop_answers:
        raw = {q.proposition_id: is_yes(answers[q.proposition_id], mode) for q in item.questions}
        applied = apply_dependencies(item, raw)
        crop_scores.append(sum(applied.values()) / len(applied))
        per_crop.append([raw, applied])
    return ItemResult(item.item_id, sum(crop_scores) / len(crop_scores), crop_scores), per_crop


@dataclass
class Tally:
    total: float = 0.0
    count: int = 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    @property
    def mean(self) -> float:
        return 100.0 * self.total / self.count if self.count else float("nan")


def reference_view(items: dict[str, Item]) -> dict[str, Item]:
    """The items as the reference scorer sees them: without the CSV's first data row."""
    view = {}
    for item in items.values():
        kept = [q for q in item.questions if q.row != 1]
        if kept:
            view[item.item_id] = Item(item.item_id, item.prompt, kept)
    return view


def summarize(
    items: dict[str, Item],
    answers: dict[str, list[dict[str, str]] | str],
    mode: str = "corrected",
    skip_missing: bool = False,
) -> tuple[dict, list[ItemResult]]:
    """answers: item_id -> per-crop {proposition_id: answer}, or a failure reason (str).
    Returns (summary, per-item results). Scores are percentages."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "reference":
        items = reference_view(items)
    results, l1, l2, zeroed, crops_per_item = [], {}, {}, [], 1
    counts_failures = mode == "corrected" and not skip_missing  # one rule for overall and categories
    for item in items.values():
        got = answers.get(item.item_id, "no image")
        if isinstance(got, str):
            failed = ItemResult(item.item_id, 0.0 if counts_failures else None, [], got)
            results.append(failed)
            zeroed += [item] if counts_failures else []
            continue
        crops_per_item = len(got)
        try:
            result, per_crop = score_item(item, got, mode)
        except KeyError as err:  # the reference loses a parent row: its scorer fails on the item
            results.append(ItemResult(item.item_id, None if mode == "reference" else 0.0, [], f"missing answer or parent {err}"))
            continue
        results.append(result)
        crops = per_crop[-1:] if mode == "reference" else per_crop
        for raw, applied in crops:
            used = raw if mode == "reference" else applied
            for q in item.questions:
                l1.setdefault(q.l1, Tally()).add(used[q.proposition_id])
                l2.setdefault(q.l2, Tally()).add(used[q.proposition_id])
    for item in zeroed:  # every question of a failed item is a "no", in its category as in the overall
        for q in item.questions:
            for _ in range(crops_per_item if mode == "corrected" else 1):
                l1.setdefault(q.l1, Tally()).add(0)
                l2.setdefault(q.l2, Tally()).add(0)
    scored = [r.score for r in results if r.score is not None]
    n_failed = sum(r.failure is not None for r in results)
    summary = {
        "mode": mode,
        "failed_items": ("score 0 in the overall and every category" if counts_failures
                         else "left out of the overall and the categories"),
        "overall": 100.0 * sum(scored) / len(scored) if scored else float("nan"),
        "l1": {k: v.mean for k, v in sorted(l1.items())},
        "l2": {k: v.mean for k, v in sorted(l2.items())},
        "n_items": len(scored),
        "n_failed": n_failed,
        "failures": {r.item_id: r.failure for r in results if r.failure is not None},
    }
    return summary, results

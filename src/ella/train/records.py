"""The samples of an image folder or a manifest, torch-free (`ella caption` reads them without
importing the training loop)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass

from ..paths import require_path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Record:
    key: str  # a stable sample id
    image: str  # a path
    caption: str | None  # None: the caption is missing (the sample will be skipped)
    loser: str | None = None  # a preference pair's other image (DPO), drawn for the same caption


def scan_records(source: str) -> list[Record]:
    """List the samples of an image folder (its subfolders too, as img2dataset and `datasets`'
    imagefolder read them), a .jsonl or a .csv manifest (`image`, `caption`). A folder sample's
    key is its path under the folder without the extension ("sub/0001"), its caption the .txt
    beside it; two images of one key (x.png and x.jpg) are refused, naming both."""
    if os.path.isdir(source):
        return _scan_folder(source)
    require_path(source, "training data")
    root = os.path.dirname(os.path.abspath(source))
    if source.endswith(".jsonl"):
        rows = []
        with open(source, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append((number, json.loads(line)))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{source}, line {number}: not JSON ({err.msg})") from None
    elif source.endswith(".csv"):
        with open(source, encoding="utf-8", newline="") as f:
            rows = [(number, row) for number, row in enumerate(csv.DictReader(f), start=2)]  # line 1: the header
    else:
        raise ValueError(f"unknown training data format: {source} (folder, .jsonl, .csv or shards/*.tar)")
    bad = next((n for n, row in rows if not isinstance(row, dict) or not row.get("image")), None)
    if bad is not None:
        raise ValueError(f"{source}, line {bad}: no 'image' (a manifest has an image and a caption per record)")
    return [
        Record(str(row.get("key", i)), os.path.join(root, row["image"]), (row.get("caption") or None),
               os.path.join(root, row["loser"]) if row.get("loser") else None)
        for i, (_, row) in enumerate(rows)
    ]


def _scan_folder(source: str) -> list[Record]:
    found: dict[str, tuple[str, str | None]] = {}  # key -> (image path, caption file or None)
    for folder, subfolders, names in os.walk(source):
        subfolders.sort()  # a fixed order, whatever the file system's
        prefix = os.path.relpath(folder, source).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        listed = set(names)  # captions found in the listing: no stat per image (a million-image folder)
        for name in sorted(names):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTS:
                continue
            path, key = os.path.join(folder, name), prefix + stem
            if key in found:
                raise ValueError(f"{found[key][0]} and {path} have the same name but for the extension: one key, two"
                                 " images (rename one)")
            found[key] = (path, os.path.join(folder, stem + ".txt") if stem + ".txt" in listed else None)
    records = []
    for key, (path, txt) in sorted(found.items()):
        caption = None
        if txt is not None:
            with open(txt, encoding="utf-8") as f:
                caption = f.read().strip()
        records.append(Record(key, path, caption))
    return records

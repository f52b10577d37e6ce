"""Caption sets: one folder per captioner, beside the data and never in it, one JSONL sidecar per
shard (as Sana keeps one per shard and captioner), keyed by the sample's key.

    CAPTIONS/
      set.json                 the captioner, revision, prompt, settings and the data captioned
      <shard>.jsonl            line 1: {"sidecar": {...}}; then one record per sample:
                               {"key", "caption", "original", "captioner", "revision", "prompt", "settings"}

A sidecar is rewritten whole, atomically, after every chunk (`fileio.atomic_path`): a kill loses at
most the chunk in flight, and no reader ever sees a torn file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

from ..fileio import atomic_path

SET_FILE = "set.json"


class SidecarError(ValueError):
    """A caption set that does not belong to this run (another captioner, a changed shard)."""


def sidecar_path(out: str, shard_name: str) -> str:
    return os.path.join(out, shard_name.removesuffix(".tar") + ".jsonl")


def read_sidecar(path: str) -> tuple[dict, list[dict]]:
    """(header, records) of a sidecar; ({}, []) when there is none yet."""
    if not os.path.isfile(path):
        return {}, []
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if number == 1:
            if not isinstance(row, dict) or not isinstance(row.get("sidecar"), dict):
                raise SidecarError(f"{path} is not a caption sidecar (no header line)")
        elif not (isinstance(row, dict) and isinstance(row.get("key"), str) and isinstance(row.get("caption"), str)):
            raise SidecarError(f"{path}, line {number}: not a caption record (a JSON object with a key and a"
                               " caption); the file is ours: delete it to caption that shard again")
        rows.append(row)
    return rows[0]["sidecar"], rows[1:]


def read_header(path: str) -> dict:
    """A sidecar's header line alone ({} when there is no sidecar yet)."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.loads(f.readline()).get("sidecar") or {}
        except (json.JSONDecodeError, AttributeError):
            raise SidecarError(f"{path} is not a caption sidecar (no header line)") from None


def check_header(path: str, header: dict, expected: dict) -> None:
    for field in ("captioner", "revision", "prompt", "settings", "check", "shard_digest"):
        if header.get(field) != expected.get(field):
            if field == "shard_digest":
                old = header.get(field)
                what = ("it was written by an older ella, which fingerprinted shards whole" if old and ":" not in old
                        else "the shard changed since it was captioned")
            else:
                what = f"it was written with {field} {header.get(field)!r}, this run has {expected.get(field)!r}"
            raise SidecarError(f"{path}: {what}; use another --out (one caption set per captioner), or delete it")


def write_sidecar(path: str, header: dict, records: list[dict]) -> None:
    with atomic_path(path, suffix=".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"sidecar": header}, ensure_ascii=False) + "\n")
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_set_file(out: str, description: dict) -> None:
    """set.json, once: a set folder written by another captioner is refused."""
    path = os.path.join(out, SET_FILE)
    if os.path.isfile(path):
        old = read_set_file(out)
        for field in ("captioner", "revision", "prompt", "settings", "check"):
            if old.get(field) != description.get(field):
                raise SidecarError(f"{out} holds captions by {old.get('captioner')!r} ({field} differs): one caption"
                                   " set per captioner; use another --out")
        if old.get("data", description["data"]) != description["data"]:
            raise SidecarError(f"{out} holds captions of {old['data']}, not of {description['data']}: one caption set"
                               " per data source (keys of two sources would mix); use another --out")
        return
    with atomic_path(path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(description, f, indent=2)


def sidecar_names(folder: str) -> list[str]:
    """The set's sidecars, in order: not the temporary files a killed write leaves (`.tmp-*`)."""
    return sorted(n for n in os.listdir(folder) if n.endswith(".jsonl") and not n.startswith("."))


def remove_leftovers(folder: str, older_than: float) -> int:
    """Delete the temporary files of writes a kill interrupted (modified before `older_than`, a
    time.time(): never those of a rank of this run); returns how many."""
    names = [n for n in os.listdir(folder) if n.startswith(".tmp-")] if os.path.isdir(folder) else []
    leftovers = [os.path.join(folder, n) for n in names if os.path.getmtime(os.path.join(folder, n)) < older_than]
    for path in leftovers:
        os.unlink(path)
    return len(leftovers)


def read_set_file(out: str) -> dict:
    """A set's set.json; a damaged one is a one-line error naming it."""
    from ..fileio import read_json_object

    try:
        return read_json_object(os.path.join(out, SET_FILE), "the caption set's file")
    except ValueError as err:
        raise SidecarError(f"{err}: it is damaged; delete the caption set, or restore the file") from None


def load_caption_set(folder: str) -> dict[str, str]:
    """{key: caption} of a caption set folder (every sidecar in it); captions a check rejected
    (empty) are left out, so those samples keep their other captions."""
    if not os.path.isfile(os.path.join(folder, SET_FILE)):
        raise FileNotFoundError(f"caption set not found: {folder} (no {SET_FILE}; `ella caption` writes one)")
    captions = {}
    for name in sidecar_names(folder):
        captions.update({r["key"]: r["caption"] for r in read_sidecar(os.path.join(folder, name))[1] if r["caption"]})
    return captions


def set_digest(folder: str) -> str:
    """A digest of a caption set's contents (feature caches key on it)."""
    h = hashlib.sha256()
    for name in [*sidecar_names(folder), SET_FILE]:
        if os.path.isfile(os.path.join(folder, name)):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()[:16]


INDEX_FILE = "captions.sqlite"


class CaptionIndex:
    """A caption set's {key: caption} on disk: an SQLite table built once from the sidecars (and
    again when a sidecar changes), read one key at a time. What training reads: a million long
    captions are a lookup each, not gigabytes in every process and minutes of JSON at start-up.
    The index lives in the set's folder, or in the temp folder when the set is read-only; each
    process (and DataLoader worker) opens its own connection on first use. Rejected and missing
    captions are not in it."""

    def __init__(self, folder: str):
        import sqlite3

        if not os.path.isfile(os.path.join(folder, SET_FILE)):
            raise FileNotFoundError(f"caption set not found: {folder} (no {SET_FILE}; `ella caption` writes one)")
        self.folder = folder
        self.stamp = self._stamp()
        self.path = os.path.join(folder, INDEX_FILE)
        if not os.access(folder, os.W_OK):
            import tempfile

            name = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:16]
            self.path = os.path.join(tempfile.gettempdir(), f"ella-captions-{name}.sqlite")
        try:
            current = self._read_stamp()
        except sqlite3.DatabaseError:  # a damaged index: it is ours, built again
            current = None
        if current != self.stamp:
            self._build()
        self._db, self._pid = None, None

    def _stamp(self) -> str:
        """The sidecars' names, sizes and modification times: an index of other contents is rebuilt."""
        parts = []
        for name in sidecar_names(self.folder):
            st = os.stat(os.path.join(self.folder, name))
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _read_stamp(self) -> str | None:
        import sqlite3

        if not os.path.isfile(self.path):
            return None
        with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM meta WHERE name = 'stamp'").fetchone()
        return row[0] if row else None

    def _build(self) -> None:
        import sqlite3

        with atomic_path(self.path, suffix=".sqlite") as tmp, contextlib.closing(sqlite3.connect(tmp)) as db:
            db.execute("CREATE TABLE captions (key TEXT PRIMARY KEY, caption TEXT NOT NULL) WITHOUT ROWID")
            db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
            for name in sidecar_names(self.folder):
                records = read_sidecar(os.path.join(self.folder, name))[1]
                db.executemany("INSERT OR REPLACE INTO captions VALUES (?, ?)",
                               ((r["key"], r["caption"]) for r in records if r["caption"]))
            db.execute("INSERT INTO meta VALUES ('stamp', ?)", (self.stamp,))
            db.commit()

    def _connection(self):
        import sqlite3

        if self._db is None or self._pid != os.getpid():  # a forked worker opens its own
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._pid = os.getpid()
        return self._db

    def get(self, key: str, default=None):
        row = self._connection().execute("SELECT caption FROM captions WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def __getitem__(self, key: str) -> str:
        caption = self.get(key)
        if caption is None:
            raise KeyError(key)
        return caption

    def __len__(self) -> int:
        return self._connection().execute("SELECT COUNT(*) FROM captions").fetchone()[0]

    def __getstate__(self):  # sent to DataLoader workers without the connection
        return {**self.__dict__, "_db": None, "_pid": None}

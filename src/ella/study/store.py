"""Votes in a real database: SQLite by default (one file beside the study, WAL mode, created on
first use), any SQLAlchemy URL (PostgreSQL) when several servers or many raters share it.

Two tables. `shown`: every pair put before a rater (who, which prompt, which model on which side,
the two files and their digests). `votes`: one answer per shown pair, written in one transaction
with everything it refers to copied in, so the raw votes stand alone. A vote for a pair that was
never shown, shown to another rater, or already answered is refused."""

from __future__ import annotations

import time
import uuid

ALIGNMENT = ("left", "right", "tie", "both bad")  # which follows the prompt better
AESTHETICS = ("left", "right", "tie")  # which looks better


class VoteError(ValueError):
    """A vote that cannot be stored: it refers to nothing shown, or was cast already."""


class VoteStore:
    def __init__(self, url: str):
        import sqlalchemy as sa

        self.sa = sa
        try:
            self.engine = sa.create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
            if url.startswith("sqlite"):
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            meta = sa.MetaData()
            self.shown = sa.Table(
                "shown", meta,
                sa.Column("id", sa.String(36), primary_key=True), sa.Column("rater", sa.String(64), index=True),
                sa.Column("item_id", sa.String(256)), sa.Column("prompt", sa.Text),
                sa.Column("left_model", sa.String(256)), sa.Column("right_model", sa.String(256)), sa.Column("left_file", sa.Text),
                sa.Column("right_file", sa.Text), sa.Column("left_sha256", sa.String(64)),
                sa.Column("right_sha256", sa.String(64)), sa.Column("created", sa.Float))
            self.votes = sa.Table(
                "votes", meta,
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("shown_id", sa.String(36), sa.ForeignKey("shown.id"), unique=True),
                sa.Column("rater", sa.String(64)), sa.Column("item_id", sa.String(256)), sa.Column("prompt", sa.Text),
                sa.Column("left_model", sa.String(256)), sa.Column("right_model", sa.String(256)),
                sa.Column("left_file", sa.Text), sa.Column("right_file", sa.Text),
                sa.Column("left_sha256", sa.String(64)), sa.Column("right_sha256", sa.String(64)),
                sa.Column("alignment", sa.String(16)), sa.Column("aesthetics", sa.String(16)),
                sa.Column("created", sa.Float))
            meta.create_all(self.engine)
        except (sa.exc.SQLAlchemyError, ValueError, ImportError) as err:
            raise ValueError(f"cannot open the vote database {url}: {str(err).splitlines()[0]}") from None

    def show(self, rater: str, item_id: str, prompt: str, left: tuple[str, str, str],
             right: tuple[str, str, str]) -> str:
        """Record a pair put before `rater`; left/right: (model, file, sha256). Returns its id."""
        shown_id = str(uuid.uuid4())
        with self.engine.begin() as db:
            db.execute(self.shown.insert().values(
                id=shown_id, rater=rater, item_id=item_id, prompt=prompt, left_model=left[0], right_model=right[0],
                left_file=left[1], right_file=right[1], left_sha256=left[2], right_sha256=right[2],
                created=time.time()))
        return shown_id

    def vote(self, shown_id: str, rater: str, alignment: str, aesthetics: str) -> int:
        """Store the answer to a shown pair, in one transaction; returns the vote's id."""
        if alignment not in ALIGNMENT or aesthetics not in AESTHETICS:
            raise VoteError(f"answers must be one of {ALIGNMENT} and {AESTHETICS}, got {alignment!r}, {aesthetics!r}")
        sa = self.sa
        with self.engine.begin() as db:
            row = db.execute(sa.select(self.shown).where(self.shown.c.id == shown_id)).mappings().first()
            if row is None or row["rater"] != rater:
                raise VoteError(f"no pair {shown_id} was shown to this rater: nothing stored")
            try:
                result = db.execute(self.votes.insert().values(
                    shown_id=shown_id, rater=rater,
                    **{k: row[k] for k in ("item_id", "prompt", "left_model", "right_model", "left_file",
                                           "right_file", "left_sha256", "right_sha256")},
                    alignment=alignment, aesthetics=aesthetics, created=time.time()))
            except sa.exc.IntegrityError:
                raise VoteError(f"pair {shown_id} has a vote already: nothing stored") from None
        return result.inserted_primary_key[0]

    def seen(self, rater: str) -> set[tuple[str, frozenset]]:
        """(item, model pair) of every pair shown to `rater`."""
        sa = self.sa
        with self.engine.connect() as db:
            rows = db.execute(sa.select(self.shown.c.item_id, self.shown.c.left_model, self.shown.c.right_model)
                              .where(self.shown.c.rater == rater)).all()
        return {(item, frozenset((a, b))) for item, a, b in rows}

    def counts(self) -> dict[frozenset, int]:
        """Votes per model pair."""
        sa = self.sa
        with self.engine.connect() as db:
            rows = db.execute(sa.select(self.votes.c.left_model, self.votes.c.right_model, sa.func.count())
                              .group_by(self.votes.c.left_model, self.votes.c.right_model)).all()
        counts: dict[frozenset, int] = {}
        for a, b, n in rows:
            counts[frozenset((a, b))] = counts.get(frozenset((a, b)), 0) + n
        return counts

    def all_votes(self) -> list[dict]:
        with self.engine.connect() as db:
            return [dict(r) for r in db.execute(self.sa.select(self.votes).order_by(self.votes.c.id)).mappings()]


def _sqlite_pragmas(connection, _record) -> None:
    """WAL: readers never block the writer, and a killed server leaves every committed vote."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()

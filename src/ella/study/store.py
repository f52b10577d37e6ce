"""Votes in a real database: SQLite by default (one file beside the study, WAL mode, created on
first use), any SQLAlchemy URL (PostgreSQL) when several servers or many raters share it.

Two tables. `shown`: every pair put before a rater (who, which prompt, which model on which side,
the two files and their digests). `votes`: one answer per shown pair, written in one transaction
with everything it refers to copied in, so the raw votes stand alone. A vote for a pair that was
never shown, shown to another rater, or already answered is refused."""

from __future__ import annotations

import re
import time
import uuid

ALIGNMENT = ("left", "right", "tie", "both bad")  # which follows the prompt better
AESTHETICS = ("left", "right", "tie")  # which looks better
RATER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the page's ids are uuid4 hex; scripted raters name their own


class VoteError(ValueError):
    """A vote that cannot be stored: it refers to nothing shown, or was cast already."""


def check_rater(rater) -> str:
    """A rater id as the store keeps it: 1-64 letters, digits, '_', '.', '-'; VoteError otherwise."""
    if not isinstance(rater, str) or not RATER_ID.fullmatch(rater):
        shown = repr(rater) if not isinstance(rater, str) or len(rater) <= 40 else f"{rater[:40]!r}... ({len(rater)} chars)"
        raise VoteError(f"a rater id is 1-64 letters, digits, '_', '.' or '-', got {shown}")
    return rater


def masked(url: str) -> str:
    """A database URL with its password hidden (for messages and study.json)."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


class VoteStore:
    def __init__(self, url: str):
        import sqlalchemy as sa

        self.sa = sa
        self.url = masked(url)
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
                sa.Column("right_sha256", sa.String(64)), sa.Column("created", sa.Float),
                sa.Column("session", sa.String(64)))  # the page session shown the pair: only it may vote
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
            self._create(meta)
        except (sa.exc.SQLAlchemyError, ValueError, ImportError) as err:
            reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"cannot open the vote database {self.url}: {masked(reason)}") from None

    def _create(self, meta) -> None:
        """Create the tables (two servers starting at once on an empty database race: the loser
        finds them made), then check that tables already there are ours."""
        sa = self.sa
        try:
            meta.create_all(self.engine)
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
            meta.create_all(self.engine)  # made by the other server meanwhile: checkfirst sees them now
        inspector = sa.inspect(self.engine)
        for table in (self.shown, self.votes):
            have = {c["name"] for c in inspector.get_columns(table.name)}
            missing = sorted({c.name for c in table.columns} - have)
            if missing:
                raise ValueError(f"its {table.name} table is of another schema (no {', '.join(missing)}): use a new"
                                 " database for this study")

    def show(self, rater: str, item_id: str, prompt: str, left: tuple[str, str, str],
             right: tuple[str, str, str], session: str | None = None) -> str:
        """Record a pair put before `rater` (in the page session `session`); left/right: (model,
        file, sha256). Returns its id."""
        shown_id = str(uuid.uuid4())
        with self.engine.begin() as db:
            db.execute(self.shown.insert().values(
                id=shown_id, rater=check_rater(rater), item_id=item_id, prompt=prompt, left_model=left[0],
                right_model=right[0], left_file=left[1], right_file=right[1], left_sha256=left[2],
                right_sha256=right[2], created=time.time(), session=session))
        return shown_id

    def shown_pair(self, shown_id: str) -> dict | None:
        """What was shown under `shown_id` (models, files, rater), for the report and tests; None if nothing."""
        sa = self.sa
        with self.engine.connect() as db:
            row = db.execute(sa.select(self.shown).where(self.shown.c.id == shown_id)).mappings().first()
        return dict(row) if row else None

    def pending(self, rater: str) -> dict | None:
        """The latest pair shown to `rater` and not answered (a reloaded page shows it again)."""
        sa = self.sa
        answered = sa.select(self.votes.c.shown_id)
        with self.engine.connect() as db:
            row = db.execute(sa.select(self.shown).where(self.shown.c.rater == rater, self.shown.c.id.not_in(answered))
                             .order_by(self.shown.c.created.desc()).limit(1)).mappings().first()
        return dict(row) if row else None

    def move(self, shown_id: str, session: str | None) -> None:
        """The pair is now on the screen of `session` (its rater reloaded the page)."""
        with self.engine.begin() as db:
            db.execute(self.shown.update().where(self.shown.c.id == shown_id).values(session=session))

    def vote(self, shown_id: str, rater: str, alignment: str, aesthetics: str, session: str | None = None) -> int:
        """Store the answer to a shown pair, in one transaction; returns the vote's id. With
        `session`, only the session the pair is shown in may answer it."""
        check_rater(rater)
        if alignment not in ALIGNMENT or aesthetics not in AESTHETICS:
            raise VoteError(f"answers must be one of {ALIGNMENT} and {AESTHETICS}, got {alignment!r}, {aesthetics!r}")
        sa = self.sa
        with self.engine.begin() as db:
            row = db.execute(sa.select(self.shown).where(self.shown.c.id == shown_id)).mappings().first()
            if row is None or row["rater"] != rater:
                raise VoteError(f"no pair {shown_id} was shown to this rater: nothing stored")
            if row["session"] is not None and row["session"] != session:
                raise VoteError(f"pair {shown_id} is shown in another session: nothing stored")
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

"""Chat sessions saved as they happen, in one SQLite file in the user's data directory.

Why SQLite: each question and each finished answer is one transaction, committed before the app goes on,
so a killed app (kill -9) loses at most the answer it was generating, and a half-written transaction is
rolled back when the file is next opened: the file is never left corrupt (WAL journal, synchronous=FULL,
so a power cut does not lose a committed message either). The schema's version is `PRAGMA user_version`;
an older file is upgraded in place by `MIGRATIONS`, all steps in one transaction, and a file from a newer
vreason is refused rather than misread. `PRAGMA application_id` marks the file as ours, so another
program's SQLite file is refused rather than altered.

A store holds one connection, used from one thread: the app writes from UI message handlers, never from
workers (sqlite3 refuses a connection used from another thread).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Literal

import platformdirs

from ..errors import UserError
from ..events import PER_TOKEN_FIELDS, Answer, answer_fields
from ..telemetry import summarize

APPLICATION_ID = 0x56524348  # "VRCH": this file is a vreason chat database
_CHUNK = 1 << 20  # bytes hashed at each end of a video

# MIGRATIONS[k] brings a database from schema version k to k + 1 (version 0: an empty file).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: sessions and their messages; dicts and lists are JSON text
        f"PRAGMA application_id = {APPLICATION_ID}",
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            title TEXT NOT NULL DEFAULT '',
            video_path TEXT,
            video_hash TEXT,
            model TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            frames TEXT NOT NULL DEFAULT '[]'
        )""",
        "CREATE INDEX sessions_by_update ON sessions (updated_at)",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            session_id INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            created_at REAL NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            text TEXT NOT NULL,
            mode TEXT,
            reasoning TEXT NOT NULL DEFAULT '',
            answer TEXT NOT NULL DEFAULT '',
            stop_reason TEXT NOT NULL DEFAULT '',
            n_tokens INTEGER NOT NULL DEFAULT 0,
            timings TEXT NOT NULL DEFAULT '{}',
            reused_encoding INTEGER NOT NULL DEFAULT 0,
            telemetry TEXT NOT NULL DEFAULT '{}',
            settings TEXT NOT NULL DEFAULT '{}',
            UNIQUE (session_id, seq)
        )""",
    ),
    (  # 2: answers asked together in several modes ("compare"), the token history a resumed conversation
        # continues from (`Engine.ask(follow_up=...)`), and the engine's notices
        "ALTER TABLE messages ADD COLUMN compare_group INTEGER",
        "ALTER TABLE messages ADD COLUMN history TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE messages ADD COLUMN notices TEXT NOT NULL DEFAULT '[]'",
    ),
)

VideoStatus = Literal["ok", "missing", "changed", "none"]


def default_db_path() -> Path:
    """`chats.db` in the user's data directory (Linux: $XDG_DATA_HOME/vreason or ~/.local/share/vreason):
    data, not cache, because conversations are the user's work and must survive cache cleaning."""
    return platformdirs.user_data_path("vreason", appauthor=False, ensure_exists=True) / "chats.db"


def video_fingerprint(path: Path) -> str:
    """sha256 over the file size (decimal, then ':'), the first MiB and the last MiB (the whole file when
    shorter): a content hash that costs two 1 MiB reads whatever the size, because videos run to gigabytes
    and this runs whenever a conversation is opened. A re-encoded, trimmed or replaced video changes the
    size or an end; only an in-place edit of middle bytes that keeps both would go unnoticed."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h = hashlib.sha256(f"{size}:".encode())
        h.update(f.read(_CHUNK))
        f.seek(max(0, size - _CHUNK))
        h.update(f.read(_CHUNK))
    return h.hexdigest()


@dataclass(frozen=True)
class SessionRecord:
    """One conversation about one video (or none). `frames`: [{"index", "timestamp_s"}] of the encoded
    frames; `settings`: the frames/generation/vreason/engine settings used (JSON-able)."""

    id: int
    created_at: float
    updated_at: float
    title: str  # the first question, shortened
    video_path: str | None
    video_hash: str | None
    model: str  # model path or registry name
    settings: dict
    frames: list[dict]

    def video_status(self) -> VideoStatus:
        """Whether the video on disk is still the one this conversation is about (reads 2 MiB of it)."""
        if self.video_path is None:
            return "none"
        path = Path(self.video_path)
        if not path.is_file():
            return "missing"
        try:
            return "ok" if video_fingerprint(path) == self.video_hash else "changed"
        except OSError:  # removed or made unreadable between the check and the read
            return "missing"


@dataclass(frozen=True)
class MessageRecord:
    """One question (role "user") or answer ("assistant"). Answer fields are empty for questions;
    stop_reason "cancelled" marks a partial answer. `compare_group`: the question's message id, shared by
    the answers one "compare" produced. `telemetry`: per-token lists (see `token_telemetry`) and "summary".
    """

    id: int
    session_id: int
    seq: int
    created_at: float
    role: Literal["user", "assistant"]
    text: str  # user: the question; assistant: the full text
    mode: str | None  # assistant: base | vreason | lite
    reasoning: str
    answer: str
    stop_reason: str
    compare_group: int | None
    n_tokens: int
    timings: dict
    reused_encoding: bool
    telemetry: dict
    history: list[int]  # Answer.history: a resumed conversation continues from it
    settings: dict  # Answer.settings
    notices: list[str] = field(default_factory=list)

    def as_answer(self, question: str) -> Answer:
        """The `Answer` this row was saved from (`question`: the user message it answers), so that a
        resumed conversation can pass it to `Engine.ask(follow_up=...)` and `telemetry.summarize`: the
        message read as an answer record (Answer.from_dict), whose per-token columns sit under `telemetry`."""
        return Answer.from_dict({**asdict(self), "mode": self.mode or "base", "question": question})


# What a message keeps of an answer's record (Answer.to_dict): these fields as columns (the dicts and lists as
# JSON text), `n_tokens`, and the per-token lists in `telemetry` (`token_telemetry`). Not kept: the question (the
# user message before the answer) and what describes the prompt rather than the answer (`prompt_tokens`,
# `n_media_tokens`, `n_video_tokens_kept`); `as_answer` gives them their defaults.
_TEXT_COLUMNS = ("text", "mode", "reasoning", "answer", "stop_reason")
_JSON_COLUMNS = ("timings", "history", "settings", "notices")
_JSON = {"sessions": ("settings", "frames"), "messages": (*_JSON_COLUMNS, "telemetry")}  # checked at open
_MALFORMED = "malformed"  # in SQLite's error for a damaged file ("database disk image is malformed")


def token_telemetry(answer: Answer) -> dict:
    """What a message keeps of an answer's telemetry: the per-token lists (exact) and the summary."""
    return {**answer_fields(answer.to_dict(), PER_TOKEN_FIELDS), "summary": summarize(answer).as_dict()}


def _answer_columns(answer: Answer) -> dict[str, object]:
    """The message columns of an answer (the projection above)."""
    record = answer.to_dict()
    return {
        **{name: record[name] for name in _TEXT_COLUMNS},
        **{name: _dumps(record[name]) for name in _JSON_COLUMNS},
        "n_tokens": len(record["tokens"]),
        "reused_encoding": int(record["reused_encoding"]),
        "telemetry": _dumps(token_telemetry(answer)),
    }


def _dumps(value: object) -> str:
    # default=str: settings may carry a Path or an enum; its text is what a reader of the conversation needs
    return json.dumps(value, ensure_ascii=False, default=str)


def _title(question: str, width: int = 60) -> str:
    text = " ".join(question.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


class ChatStore:
    """The chat database: sessions and their messages, each change committed when the method returns."""

    SCHEMA_VERSION = len(MIGRATIONS)

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self.damaged: str | None = None  # what was wrong with a damaged file, moved aside (`_set_aside`)
        self._db = self._connect()
        try:
            problem = self._damage()
        except BaseException:
            self._db.close()
            raise
        if problem is not None:
            self._db.close()
            kept = self._set_aside()
            self.damaged = (
                f"the chat database {self.path} was damaged ({problem}); it was moved to {kept} (kept, not "
                "deleted) and a new one started"
            )
            self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        """Open (create) the file and bring its schema up to date."""
        new = not self.path.exists()
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            if new:  # conversations are private: readable by the user only (SQLite gives -wal and -shm the same)
                self.path.chmod(0o600)
        except (sqlite3.Error, OSError) as e:
            raise UserError(f"cannot open the chat database {self.path}: {e}") from e
        db.row_factory = sqlite3.Row
        self._db = db
        try:
            self._open()
        except sqlite3.OperationalError as e:  # locked, read-only, no space, ...
            db.close()
            raise UserError(f"cannot open the chat database {self.path}: {e}") from e
        except sqlite3.DatabaseError as e:
            if _MALFORMED in str(e):  # ours, but damaged where the schema is read: checked again by `_damage`
                return db
            db.close()  # "file is not a database"
            raise UserError(f"{self.path} is not a vreason chat database ({e})") from e
        except BaseException:
            db.close()
            raise
        return db

    def _damage(self) -> str | None:
        """What is wrong with the file (None: nothing): SQLite's `quick_check` (pages and indexes, in one pass
        over the file) and JSON columns that do not parse. Checked at open, because a damaged page or
        column otherwise surfaces later as a crash in the middle of reading a conversation."""
        try:
            problem = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]  # the first problem found
            if problem != "ok":
                return " ".join(problem.replace("*** in database main ***", "").split())  # one line
            for table, columns in _JSON.items():
                invalid = " OR ".join(f"NOT json_valid({c})" for c in columns)
                row = self._db.execute(f"SELECT id FROM {table} WHERE {invalid} LIMIT 1").fetchone()
                if row is not None:
                    return f"a {table[:-1]} ({row[0]}) holds JSON that does not parse"
        except sqlite3.OperationalError as e:  # locked by another app for 10 s, I/O error
            raise UserError(f"cannot open the chat database {self.path}: {e}") from e
        except sqlite3.DatabaseError as e:  # "database disk image is malformed"
            return str(e)
        return None

    def _set_aside(self) -> Path:
        """Move the damaged file (and the -wal and -shm SQLite left beside it) to `<name>.damaged-<time>`:
        never deleted, since what it still holds may be recovered (`sqlite3 FILE .recover`)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
        try:
            for suffix in ("-wal", "-shm"):
                side = Path(f"{self.path}{suffix}")
                if side.exists():
                    side.rename(f"{target}{suffix}")
            self.path.rename(target)
        except OSError as e:
            raise UserError(f"the chat database {self.path} is damaged and cannot be moved aside: {e}") from e
        return target

    def _open(self) -> None:
        db = self._db
        db.execute("PRAGMA foreign_keys = ON")
        version = self._check_version()  # the first read: a file that is not SQLite fails here
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        if version < self.SCHEMA_VERSION:
            with self._transaction():
                version = self._check_version()  # again under the write lock: another app may have upgraded it
                for statements in MIGRATIONS[version:]:
                    for sql in statements:
                        db.execute(sql)
                db.execute(f"PRAGMA user_version = {self.SCHEMA_VERSION}")

    def _check_version(self) -> int:
        """The file's schema version; refuse another program's database and a newer vreason's."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        has_tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        if app_id != APPLICATION_ID and (version or has_tables):
            raise UserError(f"{self.path} is an SQLite database of another program, not a vreason chat database")
        if version > self.SCHEMA_VERSION:
            raise UserError(
                f"{self.path} was written by a newer vreason (chat schema {version}; this one reads up to "
                f"{self.SCHEMA_VERSION}): update vreason, or use another database file"
            )
        return version

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: all of it is in the file when this returns, or none of it."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:  # disk full, read-only file, locked by another app for 10 s
            raise UserError(f"could not save to the chat database {self.path}: {e}") from e

    # ------------------------------------------------------------------ writing

    def create_session(self, video: Path | None, model: str, settings: dict, frames: list[dict]) -> SessionRecord:
        """A new, empty conversation (titled by its first question)."""
        now = time.time()
        video_path, video_hash = _video(video)
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO sessions (created_at, updated_at, video_path, video_hash, model, settings, frames) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now, now, video_path, video_hash, model, _dumps(settings), _dumps(frames)),
            )
        return self.session(cur.lastrowid)

    def update_session(
        self,
        session_id: int,
        *,
        video: Path | None | EllipsisType = ...,
        model: str | EllipsisType = ...,
        settings: dict | EllipsisType = ...,
        frames: list[dict] | EllipsisType = ...,
    ) -> SessionRecord:
        """Change what is given (`...`: unchanged), e.g. after the video was found again or re-encoded."""
        values: dict[str, object] = {"updated_at": time.time()}
        if video is not ...:
            values["video_path"], values["video_hash"] = _video(video)
        if model is not ...:
            values["model"] = model
        if settings is not ...:
            values["settings"] = _dumps(settings)
        if frames is not ...:
            values["frames"] = _dumps(frames)
        with self._transaction() as db:
            self._require(session_id)
            assignments = ", ".join(f"{name} = ?" for name in values)
            db.execute(f"UPDATE sessions SET {assignments} WHERE id = ?", (*values.values(), session_id))
        return self.session(session_id)

    def add_question(self, session_id: int, text: str) -> MessageRecord:
        """Save a question as soon as it is asked; the first one titles the session."""
        with self._transaction() as db:
            message_id = self._insert(session_id, role="user", text=text)
            db.execute(
                "UPDATE sessions SET title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
                (_title(text), session_id),
            )
        return self._message(message_id)

    def add_answer(self, session_id: int, answer: Answer, compare_group: int | None = None) -> MessageRecord:
        """Save a finished (or cancelled, partial) answer with its per-token telemetry."""
        with self._transaction():
            message_id = self._insert(
                session_id, role="assistant", compare_group=compare_group, **_answer_columns(answer)
            )
        return self._message(message_id)

    def _insert(self, session_id: int, **columns: object) -> int:
        """Append a message to the session (inside a transaction) and mark the session as just updated."""
        self._require(session_id)
        now = time.time()
        seq = self._db.execute(
            "SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE session_id = ?", (session_id,)
        ).fetchone()[0]
        columns = {"session_id": session_id, "seq": seq, "created_at": now, **columns}
        cur = self._db.execute(
            f"INSERT INTO messages ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            tuple(columns.values()),
        )
        self._db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, session_id))
        return cur.lastrowid

    def branch_session(self, session_id: int, before: int) -> SessionRecord:
        """A new session about the same video, model and frames, holding copies of `session_id`'s messages saved
        before message `before` (compare groups kept): where an edited or regenerated question continues, so
        the original conversation stays as it was. Titled like the original, marked as a branch."""
        with self._transaction() as db:
            self._require(session_id)
            row = db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
            now = time.time()
            cur = db.execute(
                "INSERT INTO sessions (created_at, updated_at, title, video_path, video_hash, model, settings, frames) "
                "SELECT ?, ?, ?, video_path, video_hash, model, settings, frames FROM sessions WHERE id = ?",
                (now, now, _title(f"{row['title']} (branch)") if row["title"] else "", session_id),
            )
            new_id = cur.lastrowid
            ids: dict[int, int] = {}  # old message id -> its copy's (compare groups name a question's id)
            rows = db.execute(
                "SELECT * FROM messages WHERE session_id = ? AND seq < (SELECT seq FROM messages WHERE id = ?) "
                "ORDER BY seq",
                (session_id, before),
            ).fetchall()
            for m in rows:
                columns = {k: m[k] for k in m.keys() if k not in ("id", "session_id")}
                columns["compare_group"] = ids.get(m["compare_group"]) if m["compare_group"] is not None else None
                columns["session_id"] = new_id
                copy = db.execute(
                    f"INSERT INTO messages ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    tuple(columns.values()),
                )
                ids[m["id"]] = copy.lastrowid
        return self.session(new_id)

    def delete_session(self, session_id: int) -> None:
        """Delete a session and its messages (nothing happens if there is no such session)."""
        with self._transaction() as db:
            db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    # ------------------------------------------------------------------ reading

    def session(self, session_id: int) -> SessionRecord:
        self._require(session_id)
        return _session(self._db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone())

    def sessions(self, limit: int = 100) -> list[SessionRecord]:
        """The most recently updated sessions first."""
        rows = self._db.execute("SELECT * FROM sessions ORDER BY updated_at DESC, id DESC LIMIT ?", (limit,))
        return [_session(r) for r in rows]

    def latest(self) -> SessionRecord | None:
        """The session updated last (`vreason chat --resume`), None when there is none."""
        found = self.sessions(limit=1)
        return found[0] if found else None

    def messages(self, session_id: int) -> list[MessageRecord]:
        """A session's messages in the order they were saved."""
        self._require(session_id)
        rows = self._db.execute("SELECT * FROM messages WHERE session_id = ? ORDER BY seq", (session_id,))
        return [_message(r) for r in rows]

    def _message(self, message_id: int) -> MessageRecord:
        return _message(self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone())

    def _require(self, session_id: int) -> None:
        if self._db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
            raise UserError(f"there is no chat session {session_id} in {self.path}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ChatStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _video(video: Path | None) -> tuple[str | None, str | None]:
    """The absolute path (so the session finds it from any directory) and fingerprint of a video."""
    if video is None:
        return None, None
    path = Path(video).expanduser().resolve()
    try:
        return str(path), video_fingerprint(path)
    except OSError as e:
        raise UserError(f"cannot read the video {video}: {e.strerror or e}") from e


def _loads(row: sqlite3.Row, column: str) -> object:
    """A JSON column's value; one that does not parse (damaged after the file was opened and checked) is a
    `UserError` naming the row, not a JSONDecodeError from the middle of the app."""
    try:
        return json.loads(row[column])
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(
            f"the chat database holds a damaged {column} in row {row['id']}: {e}; the next start moves the file "
            "aside and starts a new one"
        ) from e


def _session(row: sqlite3.Row) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        title=row["title"],
        video_path=row["video_path"],
        video_hash=row["video_hash"],
        model=row["model"],
        settings=_loads(row, "settings"),
        frames=_loads(row, "frames"),
    )


def _message(row: sqlite3.Row) -> MessageRecord:
    return MessageRecord(
        id=row["id"],
        session_id=row["session_id"],
        seq=row["seq"],
        created_at=row["created_at"],
        role=row["role"],
        text=row["text"],
        mode=row["mode"],
        reasoning=row["reasoning"],
        answer=row["answer"],
        stop_reason=row["stop_reason"],
        compare_group=row["compare_group"],
        n_tokens=row["n_tokens"],
        timings=_loads(row, "timings"),
        reused_encoding=bool(row["reused_encoding"]),
        telemetry=_loads(row, "telemetry"),
        history=_loads(row, "history"),
        settings=_loads(row, "settings"),
        notices=_loads(row, "notices"),
    )

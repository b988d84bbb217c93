"""A run's folder: `run.json` (what the run is: dataset, items, settings) and `results.jsonl` (one row per
item and mode, appended as each answer completes).

Each row is written whole in one call, then flushed and fsynced, so a crash (Ctrl-C, kill -9, power loss)
can leave at most the last line half-written. Reading tolerates exactly that: a last line without its
newline, or one that does not parse, is dropped (and reported), and the writer cuts it off before its
first append, so that row is simply redone. A bad line anywhere else is nothing this writer produces; it
is refused with its line number rather than guessed at, so no finished row is ever thrown away.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:  # POSIX: the run folder is locked with flock; Windows has no fcntl and its runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from ..errors import UserError

RUN_NAME = "run.json"
RESULTS_NAME = "results.jsonl"
LOCK_NAME = "run.lock"  # held (flock) by the one process that runs or resumes the run


@dataclass
class ReadBack:
    """The rows of a results file, and whether its last line was half-written (and so dropped)."""

    rows: list[dict] = field(default_factory=list)
    dropped: str | None = None  # the half-written last line, as text (None: the file ended cleanly)
    good_bytes: int = 0  # length of the complete part: where the next row goes

    def latest(self) -> list[dict]:
        """One row per (item id, mode): the last written. The file is append-only, so an answer asked again
        (`--retry-errors`) is a later row that replaces the earlier one."""
        return list({(r["id"], r["mode"]): r for r in self.rows}.values())

    def done(self, retry_errors: bool = False) -> set[tuple[str, str]]:
        """(item id, mode) of every row written; error rows too, unless they are to be asked again."""
        return {(r["id"], r["mode"]) for r in self.latest() if not (retry_errors and r["error"] is not None)}


def read_results(path: Path) -> ReadBack:
    """Every complete row of `path` (a missing file has none)."""
    if not path.exists():
        return ReadBack()
    data = path.read_bytes()
    out = ReadBack()
    start = 0
    line_no = 0
    while start < len(data):
        line_no += 1
        end = data.find(b"\n", start)
        last = end == -1 or end == len(data) - 1
        chunk = data[start:] if end == -1 else data[start:end]
        row = _parse(chunk)
        if end == -1 or row is None:
            if not last:
                raise UserError(
                    f"{path}:{line_no} is not a results row (the file was changed by something other than "
                    "vreason eval); fix or remove that line, then resume"
                )
            out.dropped = chunk.decode("utf-8", errors="replace")
            break
        out.rows.append(row)
        start = end + 1
        out.good_bytes = start
    return out


def _parse(line: bytes) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and "id" in row and "mode" in row else None


class ResultsWriter:
    """Appends rows to results.jsonl durably; opened after `read_results`, whose `good_bytes` it keeps."""

    def __init__(self, path: Path, good_bytes: int = 0) -> None:
        self.path = path
        self._file = open(path, "ab")  # held for the run; every write goes to the end
        size = self._file.seek(0, os.SEEK_END)
        if size > good_bytes:  # only a half-written last line (no newline in it) may go; its row is redone
            with open(path, "rb") as f:
                f.seek(good_bytes)
                tail = f.read()
            if b"\n" in tail:
                self._file.close()
                raise UserError(
                    f"{path} grew since it was read (another process writing it?); nothing was cut off: resume again"
                )
            self._file.truncate(good_bytes)

    def append(self, row: dict) -> None:
        """One line, written whole, on disk before the next answer starts."""
        self._file.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RunDir:
    """The `--out` folder of one run."""

    path: Path

    @property
    def run_file(self) -> Path:
        return self.path / RUN_NAME

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_NAME

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The run folder to this process alone, for the whole run: an exclusive, non-blocking `flock` on
        run.lock, so a second `vreason eval` (a --resume, or a new run in the same --out) is refused rather
        than appending to the same results.jsonl. The kernel drops the lock when the process ends, however it
        ends, so a stale lock file is harmless. A lock file left by a run that never started is removed.
        On Windows (no fcntl) the folder is not locked."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a folder")
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+b") as f:
            if fcntl is not None:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise UserError(
                        f"{self.path} is in use by another vreason eval (it holds {LOCK_NAME}); "
                        "wait for it to end, or choose another --out"
                    ) from None
            try:
                yield
            finally:
                if not self.run_file.exists():  # the run never started: leave --out as it was
                    self.lock_file.unlink(missing_ok=True)
                    if created:
                        with contextlib.suppress(OSError):
                            self.path.rmdir()

    def require_new(self) -> None:
        """A new run must not mix its rows into another run's folder (its own lock file aside)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a folder")
        if self.path.is_dir() and any(p.name != LOCK_NAME for p in self.path.iterdir()):
            raise UserError(
                f"{self.path} is not empty; add --resume to continue the run it holds, or choose another --out"
            )

    def read_run(self) -> dict:
        """run.json of an existing run, for --resume, --report and --compare."""
        try:
            return json.loads(self.run_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(
                f"{self.path} holds no run (no {RUN_NAME}); start one with vreason eval DATASET --out"
            ) from None
        except ValueError as exc:
            raise UserError(f"{self.run_file} is not valid JSON ({exc})") from None

    def write_run(self, run: dict) -> None:
        """Written once the run is known to start; replaced atomically so a crash leaves the old or the new."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.run_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.run_file)

    def replace_results(self, rows: Iterable[dict]) -> None:
        """results.jsonl rewritten whole (`--rescore`), replaced atomically as run.json is: a crash leaves the
        old rows or the new, never a mix."""
        tmp = self.results_file.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, self.results_file)

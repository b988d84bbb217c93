"""A run's folder: `run.json` (what the run is: dataset, items, settings) and `results.jsonl` (one row per
item and mode, appended as each answer completes).

Each row is written whole in one call, then flushed and fsynced, so a crash (Ctrl-C, kill -9, power loss)
can leave at most the last line half-written. Reading tolerates exactly that: a last line without its
newline, or one that does not parse, is dropped (and reported), and the writer cuts it off before its
first append, so that row is simply redone. A bad line anywhere else is nothing this writer produces; it
is refused with its line number rather than guessed at, so no finished row is ever thrown away.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

RUN_NAME = "run.json"
RESULTS_NAME = "results.jsonl"


@dataclass
class ReadBack:
    """The rows of a results file, and whether its last line was half-written (and so dropped)."""

    rows: list[dict] = field(default_factory=list)
    dropped: str | None = None  # the half-written last line, as text (None: the file ended cleanly)
    good_bytes: int = 0  # length of the complete part: where the next row goes

    def done(self) -> set[tuple[str, str]]:
        """(item id, mode) of every row written, errors included: those are never asked again."""
        return {(r["id"], r["mode"]) for r in self.rows}


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
        self._file.truncate(good_bytes)  # a half-written last line goes; its row is redone

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

    def require_new(self) -> None:
        """A new run must not mix its rows into another run's folder."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a folder")
        if self.path.is_dir() and any(self.path.iterdir()):
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

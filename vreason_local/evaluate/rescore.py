"""`vreason eval --rescore RUN`: score a finished run's stored replies again, with the other scoring or a newer
scorer, without loading a model.

Every row keeps what scoring reads (the item's answer, options, categories, reference rule and prompt, and the
model's whole output), so the scores are recomputed from results.jsonl alone. The rows are rewritten in the
order they were written (an answer asked again stays after the row it replaced), each field other than the
scores left as it was; the new file replaces the old in one step, so an interrupted rescore leaves the old.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..wording import count
from .results import RunDir, read_results
from .row_scores import Scoring, item_from_row, score_fields


@dataclass(frozen=True)
class Rescored:
    """How many answer rows were scored again, and a one-line note where some could not be scored as asked."""

    n_rows: int
    note: str | None


def rescore_row(row: dict, scoring: Scoring) -> dict:
    """`row` with its score fields recomputed from its stored output (a failed answer is left as it is)."""
    if row.get("error") is not None or row.get("text") is None:
        return row
    return {**row, **score_fields(item_from_row(row), row["text"], scoring)}


def rescore_run(path: Path, scoring: Scoring) -> Rescored:
    """Rescore run folder `path` in place (results.jsonl, and `scoring` in run.json); the report is the caller's.
    Holds the run's lock, so a run still answering in that folder is refused rather than overwritten."""
    run_dir = RunDir(Path(path))
    run = run_dir.read_run()  # says so if the folder holds no run, before anything is locked
    with run_dir.locked():
        back = read_results(run_dir.results_file)
        if not back.rows:
            raise UserError(f"{run_dir.results_file} holds no answers to rescore")
        rows = [rescore_row(row, scoring) for row in back.rows]
        run_dir.replace_results(rows)
        # the run's scoring from now on: a later --resume (--retry-errors) scores its new rows the same way
        run_dir.write_run({**run, "scoring": scoring, "options": {**run.get("options", {}), "scoring": scoring}})
    answered = [r for r in rows if r.get("error") is None and r.get("text") is not None]
    old = sum(1 for r in answered if "rule" not in r)
    note = None
    if old and scoring == "reference":
        note = (
            f"{count(old, 'row')} of this run were written before rows kept their benchmark's reference rule: "
            "scored leniently"
        )
    return Rescored(len(answered), note)

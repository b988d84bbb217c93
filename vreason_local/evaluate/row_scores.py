"""A results row's score fields, both ways: the benchmark's reference rule and the lenient scorer.

The runner writes them when an answer completes and `--rescore` writes them again from a stored reply, so
both go through `score_fields` and a row means the same whichever wrote it. The row's `score`, `correct`
and `extracted` hold the run's chosen scoring (what the report counts); `reference` and `lenient` hold
each separately, so a report can show them side by side and a rescore needs nothing but the row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from .items import Item
from .reference import score_reference
from .scoring import Score, score

Scoring = Literal["reference", "lenient"]
SCORINGS: tuple[Scoring, ...] = ("reference", "lenient")
SCORE_FIELDS = ("extracted", "correct", "score")
JUDGED = "judged"  # a reference score's note where the reference has an LLM judge read the reply: unscored


def _fields(s: Score | None) -> dict:
    return {name: getattr(s, name) if s else None for name in SCORE_FIELDS}


def score_fields(item: Item, text: str, scoring: Scoring) -> dict:
    """The row's fields for output `text`: the chosen scoring's extracted/correct/score (None where the item
    has no answer, or the reference leaves it to a judge), `scoring` as applied (an item without a reference
    rule is always scored leniently), and both scorings under `reference` (with its `note`) and `lenient`."""
    if item.answer is None:
        return {**_fields(None), "scoring": scoring if item.rule else "lenient", "reference": None, "lenient": None}
    lenient = score(item, text)
    reference = None
    if item.rule is not None:
        ref = score_reference(item, text)
        reference = {**_fields(ref), "note": ref.note if ref else JUDGED}
    applied: Scoring = "reference" if scoring == "reference" and reference is not None else "lenient"
    chosen = {k: reference[k] for k in SCORE_FIELDS} if applied == "reference" and reference else _fields(lenient)
    return {**chosen, "scoring": applied, "reference": reference, "lenient": _fields(lenient)}


def item_from_row(row: dict) -> Item:
    """The item a results row was answered for, from the row alone (rows keep every field scoring reads).
    Rows written before categories, rules and prompts were kept give an item without them (lenient scoring)."""
    return Item(
        id=str(row["id"]),
        video=Path(row["video"]),
        question=row["question"],
        type=row["type"],
        answer=row["truth"],
        options=tuple(row.get("options") or ()),
        start=row.get("start"),
        end=row.get("end"),
        dataset=row.get("dataset", "custom"),
        source=row.get("source", ""),
        categories=tuple((row.get("categories") or {}).items()),
        rule=row.get("rule"),
        reference_prompt=row.get("prompt") if row.get("rule") else None,
    )

"""What one evaluation question is (`Item`), a row that could not be used (`Invalid`), and a loaded `Dataset`.

Every loader, whatever the benchmark's own annotation format, ends in these types, so the runner, scorer
and report handle one shape only. Multiple-choice answers are kept as letters and options as bare texts
(no "A." prefix) so scoring and the prompt letter them the same way for every benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ItemType = Literal["multiple-choice", "numeric", "free-form"]
ITEM_TYPES: tuple[ItemType, ...] = ("multiple-choice", "numeric", "free-form")

# What goes inside <answer></answer>, per type: scoring reads exactly this, so the prompt asks for it.
ANSWER_INSTRUCTIONS: dict[ItemType, str] = {
    "multiple-choice": "Answer with the letter of the correct option only, inside <answer></answer>.",
    "numeric": "Answer with a single number only, inside <answer></answer>.",
    "free-form": "Answer with a short phrase (a word or a few words), inside <answer></answer>.",
}


def option_letter(index: int) -> str:
    """Letter of the option at `index` (0 -> "A"); benchmarks have at most a dozen options."""
    return chr(ord("A") + index)


@dataclass(frozen=True)
class Item:
    """One question about one video (or a window of it) with its reference answer.

    `answer` is a letter for multiple-choice, a float for numeric, text for free-form; None only where a
    benchmark withholds it (then the item is asked but not scored). `source` ("file.jsonl:17") lets every
    message point at the row the item came from.
    """

    id: str
    video: Path
    question: str
    type: ItemType
    answer: str | float | None
    options: tuple[str, ...] = ()
    start: float | None = None
    end: float | None = None
    dataset: str = "custom"
    source: str = ""
    # The benchmark's own categories, in the order its paper reports them: e.g. (("duration", "short"),
    # ("domain", "Knowledge"), ("task_type", "Counting Problem")). Reports break accuracy down by each name.
    categories: tuple[tuple[str, str], ...] = ()
    # The reference's scoring rule for this item ("<benchmark>:<kind>", evaluate/reference.py); None: the
    # item has no published reference (own formats), so it is scored leniently.
    rule: str | None = None
    # The prompt exactly as the reference's task file builds it; None: the generic prompt below.
    reference_prompt: str | None = None

    def category(self, name: str) -> str | None:
        """The item's value of category `name`, None when it has none."""
        return dict(self.categories).get(name)

    def prompt(self) -> str:
        """The question as the model is asked it: the reference's prompt for a published benchmark, else the
        question, options lettered one per line, then what to answer with."""
        if self.reference_prompt is not None:
            return self.reference_prompt
        lines = [self.question.strip()]
        if self.type == "multiple-choice":
            lines.append("Options:")
            lines += [f"{option_letter(i)}. {text}" for i, text in enumerate(self.options)]
        lines.append(ANSWER_INSTRUCTIONS[self.type])
        return "\n".join(lines)

    @property
    def video_key(self) -> tuple[str, float | None, float | None]:
        """Items with the same key see the same frames, so the runner encodes the video once for all of them."""
        return (str(self.video), self.start, self.end)


@dataclass(frozen=True)
class Invalid:
    """A row that could not be used, reported (never silently dropped): e.g. "data.csv:12: missing field 'question'"."""

    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class Dataset:
    """A loaded dataset file: its usable items and the rows that were skipped, with why."""

    path: Path
    format: str
    items: list[Item] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)

"""Scoring one answer against one item: the letter, number or phrase the model gave, and how right it is.

Only the part of the output inside `<answer></answer>` is scored when the model wrote the tags (the
reasoning mentions every option and many numbers); models that ignore the format are still read with
the fallbacks benchmark scripts use ("(B)", "B.", "The answer is B", the option's text, the last number).
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

from ..channels import split_answer
from .items import Item, option_letter

# VSI-Bench's confidence thresholds for Mean Relative Accuracy, in percent: 0.50, 0.55, ..., 0.95.
MRA_THRESHOLD_PERCENTS = range(50, 100, 5)

_LEAD_IN = re.compile(
    r"^(?:the\s+)?(?:best\s+|correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*", re.IGNORECASE
)
_LETTER_ALONE = re.compile(r"^[(\[]?([A-Z])[)\]]?(?:[.:)\n]|[ \t](?![ \t]*[a-z])|$)")
_LETTER_AFTER_KEYWORD = re.compile(r"(?i:answer|option|choice)\s*(?i:is)?\s*[:：]?\s*[(\[]?([A-Z])\b")
_LETTER_IN_BRACKETS = re.compile(r"[(\[]([A-Z])[)\]]")
# A lone capital, but not the article in "A red square" nor the pronoun in "I think".
_LETTER_TOKEN = re.compile(r"(?<![\w'])(?!A[ \t]+[a-z])(?!I[ \t])([A-Z])(?![\w'])")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_NUMBER_WORDS = {
    word: float(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


@dataclass(frozen=True)
class Score:
    """What was read from the answer (None: nothing usable), whether it counts as correct, and a score in [0, 1].

    `score` is 1/0 for multiple-choice and free-form and the MRA for numeric; a numeric answer is `correct`
    when its MRA is 1, i.e. within 5 % of the truth (the strictest threshold), which is what McNemar counts.
    `note` (reference scoring only, evaluate/reference.py): "unmatched" where the benchmark's reference would
    ask an LLM judge and the score is its no-judge fallback; "empty" where its aggregation leaves the reply out.
    """

    extracted: str | float | None
    correct: bool
    score: float
    note: str | None = None


def answer_part(text: str) -> str:
    """The text inside `<answer>` (or after `</think>`, or all of it when the model used no tags)."""
    return split_answer(text)[1]


def extract_choice(text: str, n_options: int) -> str | None:
    """The option letter the model chose, from its answer with the usual fallbacks; None if it named none.

    Tried in order, on the answer part: a lone letter in any case, a leading capital letter ("B", "(B)", "B. the text", "Answer: B"), a letter
    after "answer/option/choice", a bracketed letter, the one option whose text the answer contains, and a
    lone capital letter. Letters beyond the `n_options` the item has are never returned.
    """
    valid = {option_letter(i) for i in range(n_options)}
    part = answer_part(text).strip()
    stripped = _LEAD_IN.sub("", part, count=1)
    if len(stripped.rstrip(".")) == 1 and stripped[0].upper() in valid:  # just "b" or "b.": a letter in any case
        return stripped[0].upper()
    for pattern, where in ((_LETTER_ALONE, stripped), (_LETTER_AFTER_KEYWORD, part), (_LETTER_IN_BRACKETS, part)):
        found = [m for m in pattern.findall(where) if m in valid]
        if found:
            return found[0]
    tokens = {m for m in _LETTER_TOKEN.findall(part) if m in valid}
    return tokens.pop() if len(tokens) == 1 else None


def extract_choice_by_text(text: str, options: tuple[str, ...]) -> str | None:
    """The letter of the one option whose (normalised) text the answer equals or contains; None if not exactly one."""
    said = normalise(answer_part(text))
    if not said:
        return None
    texts = [normalise(option) for option in options]
    exact = [i for i, option in enumerate(texts) if option == said]
    if len(exact) == 1:
        return option_letter(exact[0])
    contained = [i for i, option in enumerate(texts) if option and re.search(rf"\b{re.escape(option)}\b", said)]
    return option_letter(contained[0]) if len(contained) == 1 else None


def extract_number(text: str) -> float | None:
    """The number the model answered: the first inside `<answer>`, else the last in the text (its conclusion).

    Digits ("1,250", "-3.5", "2e3") are preferred; number words up to twenty ("three") are the fallback.
    """
    tagged = "<answer>" in text
    part = answer_part(text)
    numbers = [float(m.replace(",", "")) for m in _NUMBER.findall(part)]
    if not numbers:
        numbers = [_NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", part.lower()) if w in _NUMBER_WORDS]
    if not numbers:
        return None
    return numbers[0] if tagged else numbers[-1]


def mean_relative_accuracy(pred: float, truth: float) -> float:
    """VSI-Bench's MRA: the share of thresholds c in {0.50, ..., 0.95} with |pred - truth| / |truth| < 1 - c.

    Compared as |pred - truth| * 100 < |truth| * (100 - 100c), so an answer exactly on a threshold (13 for
    10: error 0.3) is judged by the definition (not below 0.3) rather than by how 1 - 0.7 rounds in floats.
    A truth of 0 has no relative error; there only an exact 0 scores (1.0), anything else 0.0.
    """
    if truth == 0:
        return 1.0 if pred == 0 else 0.0
    error, scale = abs(pred - truth) * 100, abs(truth)
    return sum(error < scale * (100 - c) for c in MRA_THRESHOLD_PERCENTS) / len(MRA_THRESHOLD_PERCENTS)


def normalise(text: str) -> str:
    """Text for exact-match comparison: Unicode-folded, lower case, no punctuation or articles, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def score(item: Item, answer_text: str) -> Score:
    """Score the model's full output `answer_text` against `item`'s reference answer."""
    if item.answer is None:
        raise ValueError(f"{item.source or item.id}: item has no reference answer to score against")
    if item.type == "multiple-choice":
        letter = extract_choice(answer_text, len(item.options)) or extract_choice_by_text(answer_text, item.options)
        correct = letter is not None and letter == str(item.answer).upper()
        return Score(letter, correct, float(correct))
    if item.type == "numeric":
        number = extract_number(answer_text)
        mra = 0.0 if number is None else mean_relative_accuracy(number, float(item.answer))
        return Score(number, mra == 1.0, mra)
    said = answer_part(answer_text).strip()
    correct = bool(said) and normalise(said) == normalise(str(item.answer))
    return Score(said or None, correct, float(correct))

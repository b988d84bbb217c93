"""Scoring of one answer (letter, number, phrase) and the paired statistics, on hand-computed cases."""

from __future__ import annotations

from math import comb
from pathlib import Path

import numpy as np
import pytest

from vreason_local.evaluate.items import Item
from vreason_local.evaluate.scoring import (
    extract_choice,
    extract_number,
    mean_relative_accuracy,
    normalise,
    score,
)
from vreason_local.evaluate.stats import mcnemar_exact, paired_bootstrap


def _item(kind: str, answer: str | float, options: tuple[str, ...] = ()) -> Item:
    return Item("q1", Path("clip.mp4"), "What?", kind, answer, options)  # type: ignore[arg-type]


# ---------------------------------------------------------------- multiple choice


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>It is red, so A or C.</think><answer>C</answer>", "C"),  # the reasoning's letters are ignored
        ("<answer>(B)</answer>", "B"),
        ("<answer>B. the red square</answer>", "B"),
        ("<answer>Answer: D</answer>", "D"),
        ("<answer>The correct answer is (A).</answer>", "A"),
        ("<answer>b</answer>", "B"),  # a lone letter in lower case
        ("The answer is D.", "D"),  # no tags at all
        ("I think C is right", "C"),  # the pronoun is not option I
        ("<answer>A red square</answer>", None),  # the article is not option A
        ("<answer>E</answer>", None),  # only 4 options: E does not exist
        ("<answer></answer>", None),
        ("<answer>B or C</answer>", None),  # two letters: no choice
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text, 4) == expected


def test_multiple_choice_score_falls_back_to_the_option_text() -> None:
    item = _item("multiple-choice", "B", ("green", "red", "blue"))
    assert score(item, "<answer>Red.</answer>").correct
    assert score(item, "<answer>the shape is red</answer>").extracted == "B"
    wrong = score(item, "<answer>A</answer>")
    assert (wrong.extracted, wrong.correct, wrong.score) == ("A", False, 0.0)
    nothing = score(item, "<answer>purple</answer>")
    assert (nothing.extracted, nothing.correct, nothing.score) == (None, False, 0.0)


# ---------------------------------------------------------------- numeric


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>3</answer>", 3.0),
        ("<think>I see 2, then 5 more</think><answer>7 shapes</answer>", 7.0),
        ("There are 2 red and 5 blue, so 7", 7.0),  # untagged: the last number is the conclusion
        ("<answer>1,250.5 m</answer>", 1250.5),
        ("<answer>-0.5</answer>", -0.5),
        ("<answer>three</answer>", 3.0),
        ("<answer>none visible</answer>", None),
    ],
)
def test_extract_number(text: str, expected: float | None) -> None:
    assert extract_number(text) == expected


@pytest.mark.parametrize(
    ("pred", "truth", "expected"),
    [
        # truth 10: relative error e passes threshold c when e < 1 - c, c in 0.50, 0.55, ..., 0.95.
        (10.0, 10.0, 10 / 10),  # e = 0: all ten
        (9.7, 10.0, 10 / 10),  # e = 0.03 < 0.05: all ten
        (12.0, 10.0, 6 / 10),  # e = 0.2 < 0.5, 0.45, 0.4, 0.35, 0.3, 0.25 (not 0.2): six
        (13.0, 10.0, 4 / 10),  # e = 0.3 < 0.5, 0.45, 0.4, 0.35 (not 0.3, strictly): four
        (14.0, 10.0, 2 / 10),  # e = 0.4 < 0.5, 0.45: two
        (15.0, 10.0, 0 / 10),  # e = 0.5: none (strict)
        (4.0, 10.0, 0 / 10),  # e = 0.6
        (-2.2, -2.0, 8 / 10),  # e = 0.1 < 0.5 ... 0.15: eight
        (0.0, 0.0, 1.0),  # truth 0: only an exact 0 scores
        (0.1, 0.0, 0.0),
    ],
)
def test_mean_relative_accuracy(pred: float, truth: float, expected: float) -> None:
    assert mean_relative_accuracy(pred, truth) == pytest.approx(expected)


def test_numeric_score_is_mra_and_correct_only_within_five_percent() -> None:
    item = _item("numeric", 10.0)
    assert score(item, "<answer>12</answer>") == score(item, "<answer>12.0</answer>")
    near = score(item, "<answer>12</answer>")
    assert (near.extracted, near.correct, near.score) == (12.0, False, pytest.approx(0.6))
    exact = score(item, "<answer>10</answer>")
    assert (exact.correct, exact.score) == (True, 1.0)
    missing = score(item, "<answer>many</answer>")
    assert (missing.extracted, missing.correct, missing.score) == (None, False, 0.0)


# ---------------------------------------------------------------- free-form


@pytest.mark.parametrize(
    ("text", "expected"),
    [("The Left!", "left"), ("  moving   to the RIGHT. ", "moving to right"), ("Ａn apple", "apple"), ("", "")],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_free_form_score_is_normalised_exact_match() -> None:
    item = _item("free-form", "up")
    hit = score(item, "<think>it rises</think><answer>Up.</answer>")
    assert (hit.extracted, hit.correct, hit.score) == ("Up.", True, 1.0)
    assert not score(item, "<answer>it moves up</answer>").correct  # exact match, not containment
    empty = score(item, "<answer> </answer>")
    assert (empty.extracted, empty.correct) == (None, False)


def test_score_refuses_an_item_without_a_reference_answer() -> None:
    with pytest.raises(ValueError, match="no reference answer"):
        score(Item("x", Path("v.mp4"), "Q", "free-form", None, source="d.jsonl:3"), "<answer>a</answer>")


# ---------------------------------------------------------------- McNemar


def _binomial_two_sided(b: int, c: int) -> float:
    """Reference: scipy's exact binomial test when installed, else the binomial sum written out."""
    try:
        from scipy.stats import binomtest
    except ImportError:
        n = b + c
        return min(1.0, 2 * sum(comb(n, k) for k in range(min(b, c) + 1)) / 2**n)
    return float(binomtest(min(b, c), b + c, 0.5).pvalue)


@pytest.mark.parametrize(
    ("b", "c", "by_hand"),
    [
        (2, 10, 2 * (1 + 12 + 66) / 4096),  # n = 12: 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12
        (0, 5, 2 / 32),  # n = 5: 2 * C(5,0) / 2^5
        (3, 3, 1.0),  # even split: no evidence
        (0, 0, 1.0),  # no discordant pairs
        (7, 4, 2 * (1 + 11 + 55 + 165 + 330) / 2048),  # n = 11, order of b and c does not matter
    ],
)
def test_mcnemar_exact(b: int, c: int, by_hand: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(by_hand, rel=1e-12)
    assert mcnemar_exact(b, c) == pytest.approx(_binomial_two_sided(b, c), rel=1e-9)


def test_mcnemar_exact_stays_finite_for_thousands_of_pairs() -> None:
    p = mcnemar_exact(400, 600)
    assert 0 < p < 1e-9
    assert p == pytest.approx(_binomial_two_sided(400, 600), rel=1e-9)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


# ---------------------------------------------------------------- paired bootstrap


def test_bootstrap_of_a_constant_difference_is_exact() -> None:
    """Every resample of a constant difference has that mean: a zero-width interval, p at its floor."""
    result = paired_bootstrap([0.0] * 20, [1.0] * 20, n=999)
    assert (result.mean_diff, result.ci_low, result.ci_high) == (1.0, 1.0, 1.0)
    assert result.p_value == pytest.approx(2 / 1000)
    same = paired_bootstrap([0.3, 0.7], [0.3, 0.7], n=500)
    assert (same.mean_diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    """400 items, 0 vs a Bernoulli(1/2) pattern: mean 0.5, standard error 0.5/20 = 0.025, so 95 % ~ +-0.049."""
    y = np.tile([0.0, 1.0], 200)
    result = paired_bootstrap(np.zeros(400), y, n=4000, seed=1)
    assert result.mean_diff == 0.5
    assert result.ci_low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006)
    assert result.ci_high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)
    assert result.p_value < 0.001
    assert paired_bootstrap(np.zeros(400), y, n=4000, seed=1) == result  # the seed fixes the resamples


def test_bootstrap_of_no_effect_is_not_significant() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, 300).astype(float)
    y = x[rng.permutation(300)]  # same accuracy, pairs shuffled: no systematic difference
    result = paired_bootstrap(x, y, n=2000)
    assert result.ci_low < 0 < result.ci_high
    assert result.p_value > 0.05


def test_bootstrap_rejects_unpaired_input() -> None:
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([], [])

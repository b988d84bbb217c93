"""Entropy and sampling kernels (native/vr_sampling.c via vreason_local.sampling) against float64 references.

Every kernel this CPU can run (AVX-512, AVX2, the SSE2/NEON baseline) is checked, not only the one the
dispatcher picks. The references are written independently here: the entropy's in float64 (checked in
turn against torch and mpmath), the filtered distribution by a full sort in float64.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import mpmath
import numpy as np
import pytest
import torch

from vreason_local.native import library
from vreason_local.sampling import ENTROPY_ABS_ERROR, ENTROPY_REL_ERROR, Sampler, TokenSampling, entropy, logprobs

QWEN_VOCAB = 151_936


def _runnable_lanes() -> list[int]:
    lib = library()
    lanes = [n for n in (16, 8, 4, 1) if lib.vr_sampling_use(n) == n]
    lib.vr_sampling_use(0)
    return lanes


@pytest.fixture(params=_runnable_lanes(), ids=lambda n: f"{n}-lane")
def kernels(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test on the kernels of this many lanes, then hand back the CPU's best."""
    lib = library()
    assert lib.vr_sampling_use(request.param) == request.param
    yield request.param
    lib.vr_sampling_use(0)


def _entropy64(logits: np.ndarray) -> float:
    """Entropy in float64: log1p(r) - d / (1 + r) over the tokens other than the top one."""
    x = logits.astype(np.float64)
    top = int(np.argmax(x))
    z = np.delete(x - x[top], top)
    z = z[np.isfinite(z)]
    e = np.exp(z)
    r = float(e.sum())
    return math.log1p(r) - float((e * z).sum()) / (1.0 + r)


def _logit_cases() -> Iterator[np.ndarray]:
    """Random and peaked logit vectors: near-one-hot, all-equal, -inf entries, a large common offset."""
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 17, 1000, QWEN_VOCAB):
        for scale in (1e-3, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0):
            yield (rng.standard_normal(n) * scale).astype(np.float32)
    for gap in (5.0, 20.0, 40.0, 55.0, 80.0, 86.0, 87.3, 88.0, 100.0, 1e4):
        for n in (2, 1000, QWEN_VOCAB):
            near_one_hot = (rng.standard_normal(n) * 0.5).astype(np.float32)
            near_one_hot[rng.integers(n)] += gap
            yield near_one_hot
            one_hot = np.zeros(n, np.float32)
            one_hot[-1] = gap
            yield one_hot
    for n in (1, 2, 5, QWEN_VOCAB):
        yield np.full(n, 3.25, np.float32)
    for fraction in (0.1, 0.5, 0.99):
        with_inf = (rng.standard_normal(QWEN_VOCAB) * 2).astype(np.float32)
        with_inf[rng.random(QWEN_VOCAB) < fraction] = -np.inf
        yield with_inf
    only_one = np.full(QWEN_VOCAB, -np.inf, np.float32)
    only_one[5] = 1.0
    yield only_one
    yield (rng.standard_normal(QWEN_VOCAB) * 2 + 1e4).astype(np.float32)


def test_float64_reference_agrees_with_torch_and_mpmath() -> None:
    """The reference itself: torch's Categorical (float64) where it is accurate, mpmath where H is tiny."""
    rng = np.random.default_rng(2)
    for scale in (0.1, 1.0, 3.0, 10.0):
        z = (rng.standard_normal(5000) * scale).astype(np.float32)
        ref = torch.distributions.Categorical(logits=torch.from_numpy(z).double()).entropy().item()
        assert _entropy64(z) == pytest.approx(ref, rel=1e-12)
    for gap in (30.0, 80.0):
        z = np.array([gap, 0.0, -1.5, 2.0], np.float32)
        with mpmath.workdps(60):
            w = [mpmath.e ** mpmath.mpf(float(v)) for v in z]
            s = mpmath.fsum(w)
            exact = -mpmath.fsum(p / s * mpmath.log(p / s) for p in w)
        assert _entropy64(z) == pytest.approx(float(exact), rel=1e-12)


def test_entropy_within_stated_bound(kernels: int) -> None:
    worst = 0.0
    for logits in _logit_cases():
        ref = _entropy64(logits)
        err = abs(entropy(logits) - ref)
        assert err <= ENTROPY_REL_ERROR * ref + ENTROPY_ABS_ERROR, (logits.size, ref, err)
        if ref > 1e-25:
            worst = max(worst, err / ref)
    assert worst < 3e-6  # what the module docstring reports as measured


def test_entropy_matches_torch() -> None:
    z = np.random.default_rng(0).normal(0, 3, 1000).astype(np.float32)
    ref = torch.distributions.Categorical(logits=torch.from_numpy(z).double()).entropy().item()
    assert entropy(z) == pytest.approx(ref, rel=ENTROPY_REL_ERROR)


def test_entropy_of_exact_cases() -> None:
    assert entropy(np.full(QWEN_VOCAB, -2.0, np.float32)) == pytest.approx(math.log(QWEN_VOCAB), rel=1e-7)
    assert entropy(np.array([7.0], np.float32)) == 0.0
    assert entropy(np.array([0.0, -np.inf, -np.inf], np.float32)) == 0.0
    assert entropy(np.array([1.0, 1.0, -np.inf], np.float32)) == pytest.approx(math.log(2), rel=1e-7)
    # float64 input is converted, not misread
    assert entropy(np.array([0.0, 0.0, 0.0, 0.0])) == pytest.approx(math.log(4), rel=1e-7)


def test_sampler_greedy_and_seeded(kernels: int) -> None:
    rng = np.random.default_rng(1)
    for n in (50, 1000, QWEN_VOCAB):
        z = rng.normal(0, 2, n).astype(np.float32)
        tok, h = Sampler(TokenSampling(), n)(z)
        assert tok == int(np.argmax(z)) and h == entropy(z)
        s = TokenSampling(temperature=1.0, top_p=0.9, seed=7)
        first, again = Sampler(s, n), Sampler(s, n)
        draws = [first(z)[0] for _ in range(20)]
        assert draws == [again(z)[0] for _ in range(20)]
        assert len(set(draws)) > 1 or len(first.support(z)) == 1
        other = Sampler(TokenSampling(temperature=1.0, top_p=0.9, seed=8), n)
        assert [other(z)[0] for _ in range(20)] != draws or len(first.support(z)) == 1
        # min_p keeps only tokens within a factor of the best: with min_p = 1 only the argmax survives
        for t in (0.3, 1.0, 2.0):
            assert Sampler(TokenSampling(temperature=t, min_p=1.0, seed=3), n)(z)[0] == int(np.argmax(z))
    ties = np.array([0.5, 2.0, 2.0, 1.0], np.float32)
    assert Sampler(TokenSampling(), 4)(ties)[0] == 1  # the first of equal maxima, as np.argmax


def _reference_kept(logits: np.ndarray, s: TokenSampling) -> tuple[np.ndarray, np.ndarray]:
    """(kept ids, their renormalised probabilities) by a full float64 sort, as the sampler once did."""
    z = logits.astype(np.float64) / s.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = p >= s.min_p * p.max()
    if s.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cut = int(np.searchsorted(np.cumsum(p[order]), s.top_p)) + 1
        nucleus = np.zeros_like(keep)
        nucleus[order[:cut]] = True
        keep &= nucleus
    ids = np.flatnonzero(keep & (p > 0))
    return ids, p[ids] / p[ids].sum()


SMALL_SETTINGS = [
    TokenSampling(temperature=1.0),
    TokenSampling(temperature=0.7, top_p=0.9),
    TokenSampling(temperature=1.5, top_p=0.5),
    TokenSampling(temperature=0.7, min_p=0.05),
    TokenSampling(temperature=1.0, top_p=0.95, min_p=0.2),
    TokenSampling(temperature=0.4, top_p=0.0),
]


@pytest.mark.parametrize("s", SMALL_SETTINGS, ids=repr)
def test_draws_follow_the_filtered_distribution(kernels: int, s: TokenSampling) -> None:
    """20,000 seeded draws on 40 tokens (some -inf): total variation to the exact filtered distribution."""
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal(40) * 1.5).astype(np.float32)
    logits[[3, 17]] = -np.inf
    ids, probs = _reference_kept(logits, s)
    sampler = Sampler(s, logits.size)
    assert np.array_equal(sampler.support(logits), ids)
    n = 20_000
    counts = np.bincount([sampler(logits)[0] for _ in range(n)], minlength=logits.size)
    assert counts[np.setdiff1d(np.arange(logits.size), ids)].sum() == 0  # nothing outside the kept set
    expected = np.zeros(logits.size)
    expected[ids] = probs
    tv = 0.5 * np.abs(counts / n - expected).sum()
    # E[TV] ~ sum sqrt(p (1 - p) / (2 pi n)); 4x that is far outside sampling noise for 40 tokens.
    assert tv < 4 * np.sum(np.sqrt(probs * (1 - probs) / (2 * np.pi * n))) + 1e-9, tv


LARGE_SETTINGS = [
    TokenSampling(temperature=0.7, top_p=0.9),
    TokenSampling(temperature=1.0, top_p=0.5),
    TokenSampling(temperature=1.3, top_p=0.95),
    TokenSampling(temperature=0.7, min_p=0.05),
    TokenSampling(temperature=0.7, top_p=0.9, min_p=0.02),
    TokenSampling(temperature=0.5, top_p=0.99, min_p=0.001),
]


@pytest.mark.parametrize("s", LARGE_SETTINGS, ids=repr)
def test_kept_set_equals_full_sort_on_large_vocabularies(kernels: int, s: TokenSampling) -> None:
    """The kept set equals the float64 full-sort one, broad to peaked; only a token whose cumulative
    mass lands within float32 rounding of top_p (or whose p / p_max of min_p) may differ."""
    rng = np.random.default_rng(7)
    sampler = Sampler(s, QWEN_VOCAB)
    for scale in (0.01, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0):
        logits = (rng.standard_normal(QWEN_VOCAB) * scale).astype(np.float32)
        ref, _ = _reference_kept(logits, s)
        got = sampler.support(logits)
        differ = np.setxor1d(ref, got)
        if differ.size:
            z = logits.astype(np.float64) / s.temperature
            p = np.exp(z - z.max())
            p /= p.sum()
            order = np.argsort(-p, kind="stable")
            cum = np.empty_like(p)
            cum[order] = np.cumsum(p[order])
            at_top_p = (np.abs(cum[differ] - s.top_p) <= 1e-5 + p[differ]) & (s.top_p < 1.0)
            at_min_p = np.abs(p[differ] / p.max() - s.min_p) <= 1e-5 * s.min_p
            assert differ.size <= 2 and np.all(at_top_p | at_min_p), (scale, differ)


def test_sampler_reads_logits_without_changing_or_keeping_them(kernels: int) -> None:
    z = np.random.default_rng(3).normal(0, 2, QWEN_VOCAB).astype(np.float32)
    before = z.copy()
    refs = sys.getrefcount(z)
    for s in (TokenSampling(), TokenSampling(0.7, 0.9), TokenSampling(0.7, min_p=0.05), TokenSampling(1.0)):
        sampler = Sampler(s, QWEN_VOCAB)
        for _ in range(3):
            tok, h = sampler(z)
            assert 0 <= tok < QWEN_VOCAB and 0 < h < math.log(QWEN_VOCAB)
    assert np.array_equal(z, before) and sys.getrefcount(z) == refs


def test_never_draws_an_impossible_token() -> None:
    z = np.full(1000, -np.inf, np.float32)
    z[[10, 500]] = [0.0, 1.0]
    for s in (TokenSampling(1.0), TokenSampling(5.0, top_p=0.999), TokenSampling(0.1, min_p=1e-9)):
        sampler = Sampler(s, z.size)
        assert {sampler(z)[0] for _ in range(300)} <= {10, 500}
    with pytest.raises(ValueError):
        Sampler(TokenSampling(), 10)(np.zeros(11, np.float32))


# Measured: at most 1.4e-14 nats from torch's float64 log_softmax (seeds 0-4, logit scales 1, 5 and 30, where
# log p reaches -700); the bound leaves ~70x room for other BLAS/libm builds.
LOGPROB_ABS_ERROR = 1e-12


@pytest.mark.parametrize("scale", [1.0, 5.0, 30.0])
def test_logprobs_match_torch_log_softmax_on_a_full_vocabulary(scale: float) -> None:
    rng = np.random.default_rng(int(scale))
    x = (rng.standard_normal(QWEN_VOCAB) * scale).astype(np.float32)
    ref = torch.log_softmax(torch.from_numpy(x).double(), dim=0).numpy()
    token = int(rng.integers(QWEN_VOCAB))
    chosen, top = logprobs(x, token, 20)
    assert abs(chosen - ref[token]) <= LOGPROB_ABS_ERROR
    assert [i for i, _ in top] == list(np.argsort(-ref, kind="stable")[:20])  # the 20 largest, most likely first
    assert all(abs(v - ref[i]) <= LOGPROB_ABS_ERROR for i, v in top)
    assert logprobs(x, token, 0) == (chosen, ())
    assert logprobs(x, top[0][0], 1) == (top[0][1], top[:1])  # the best token is its own top alternative


def test_logprobs_order_ties_by_id_and_read_any_float_type() -> None:
    x = np.zeros(10, np.float32)
    x[[7, 2, 5]] = 3.0
    chosen, top = logprobs(x, 2, 3)
    expected = 3.0 - math.log(3 * math.exp(3.0) + 7)
    assert [i for i, _ in top] == [2, 5, 7] and chosen == pytest.approx(expected, abs=1e-15)
    assert logprobs(x.astype(np.float16), 2, 3) == (chosen, top)  # float16 logits are exact in float64 too
    assert sum(math.exp(v) for _, v in logprobs(x, 0, 10)[1]) == pytest.approx(1.0, abs=1e-15)

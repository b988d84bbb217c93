"""Entropy and token choice from the raw logits of one decode step.

The decode loop needs, for every token, the entropy of the next-token distribution (V-Reason's signal
and the telemetry) and the chosen token. On a fast decode step (2-3 ms: a small model, or a larger one
on a GPU) the arithmetic over the 151,936 logits of a Qwen vocabulary must cost a few percent at most,
so it runs in native code (native/vr_sampling.c, in the package's `_vrhook` library, called through
ctypes): argmax and entropy in two passes over the logits, the sampling filters without sorting the
vocabulary, no allocation per token (a fresh 600 KB temporary is a page fault storm on glibc). Native
code measured clearly faster than numpy (below), so there is no numpy path.

Measured per token on 151,936 logits, 2 AMD EPYC cores (benchmarks/bench_decode.py; medians, ms):

=========================================  ======  =======  =========================================
                                           alone   in loop  for comparison
=========================================  ======  =======  =========================================
greedy: argmax + entropy                   0.041   0.10     bare loop's copy + np.argmax: 0.075 in loop;
                                                            numpy float32 entropy 0.15, float64 1.2
T 0.7, top-p 0.9: + exp, the cut, draw     0.11    0.19     llama.cpp's chain 1.36; argsort sampler 6.7
T 0.7, min-p 0.05: + exp, draw             0.09    0.17     llama.cpp's chain 0.27; argsort sampler 2.8
=========================================  ======  =======  =========================================

"Alone" is the AVX-512 kernels on logits in this core's cache (AVX2: about twice as long, the SSE2/NEON
baseline four times, the scalar build of MSVC 15 times). In the decode loop the logits arrive from the
other core's cache, where llama.cpp's threads wrote them: the first pass over them costs ~0.05 ms more,
which the bare loop pays in its copy as well (a one-stream, block-by-block variant measured slower).
Top-p's cut takes 0.01 ms on peaked distributions and up to 0.4 ms on broad ones (10^5 tokens kept).

Entropy accuracy: ``|H - H_exact| <= ENTROPY_REL_ERROR * H_exact + ENTROPY_ABS_ERROR`` for any float32
logits with a finite maximum (-inf entries are probability 0). H = log1p(r) - d / (1 + r) with
r = sum e^z and d = sum z e^z over all tokens but the top one (z = l - max): both terms are sums of one
sign, so float32 rounding stays relative even for near-one-hot distributions, where the naive
log(sum) - sum p z would cancel. The bound: z = l - max rounds by 2^-24 |z|, which moves e^z by up to
87 * 2^-24 = 5.2e-6 relative where terms sit at z near ln(FLT_MIN) = -87.3; exp itself is within 2 ulp
and each float sum adds at most 6 roundings before it goes to double (1e-6 together). Terms below
z = -87.3 are flushed to 0, which changes H by under 1e-30. Measured (tests/test_sampling.py, every
kernel, against float64): at most 2e-6 relative, on near-one-hot logits whose remaining mass sits far
below the top (where l - max rounds); at most 4e-8 where H >= 0.01 nats.

Sampling: p = softmax(logits / T). min-p keeps p >= min_p * p_max, top-p the smallest set of most
probable tokens that holds top_p of the mass; each is a set {p >= threshold}, so their intersection is
the higher threshold, and the token is drawn from p renormalised over it (inverse CDF, one uniform
number from a seeded numpy generator: same seed, same tokens). Top-p's threshold is found exactly by
radix selection over the float bits of p, never by sorting; ties at the threshold are all kept. p is
computed in float32 (within ~1e-6 relative), so a token whose cumulative mass lies within that of
top_p's boundary may fall on the other side of it than in a float64 computation.

Log-probabilities (`logprobs`, only for an answer that asks: OpenAI's `logprobs`/`top_logprobs`) are vLLM's
default "raw logprobs": log-softmax at temperature 1 of the raw logits, whatever the sampling settings, so
they describe the model, not the sampler. Computed in float64 with numpy (the float32 logits are exact in
float64, so the only rounding is the sum's and the log's, ~1e-15), top-n by `np.argpartition`: ~1.4 ms a
token for the log-sum-exp and ~2 ms more for the top-n on 151,936 logits (2 AMD EPYC cores), paid only
by answers that ask for them.
"""

from __future__ import annotations

import ctypes

import numpy as np

from . import native
from .settings import TokenSampling

#: Guaranteed accuracy of `entropy` and of `Sampler`'s entropy (module docstring): relative, absolute (nats).
ENTROPY_REL_ERROR = 1e-5
ENTROPY_ABS_ERROR = 1e-30


def kernel_lanes() -> int:
    """Vector lanes of the kernels this CPU runs (16 AVX-512, 8 AVX2, 4 SSE2/NEON, 1 scalar build)."""
    return int(native.library().vr_sampling_lanes())


def _float32(logits: np.ndarray, n: int) -> np.ndarray:
    """`logits` as n contiguous float32 values (as they come from llama.cpp: no copy), else a converted copy."""
    if logits.dtype != np.float32 or not logits.flags.c_contiguous:
        logits = np.ascontiguousarray(logits, dtype=np.float32)
    if logits.size != n:
        raise ValueError(f"expected {n} logits, got {logits.size}")
    return logits


def entropy(logits: np.ndarray) -> float:
    """Entropy in nats of softmax(logits) at temperature 1, within the module's stated error bound."""
    x = _float32(logits, logits.size)
    h = ctypes.c_double()
    native.library().vr_argmax_entropy(x.ctypes.data, x.size, ctypes.byref(h))
    return h.value


def logprobs(logits: np.ndarray, token: int, top_n: int) -> tuple[float, tuple[tuple[int, float], ...]]:
    """(log p of `token`, the `top_n` most likely tokens as (id, log p), most likely first), p = softmax(logits)
    at temperature 1. Ties within the top-n are ordered by id; of tokens tied at its cut, which are in is unspecified."""
    x = np.asarray(logits, dtype=np.float64).ravel()
    top = float(x.max())
    lse = top + float(np.log(np.exp(x - top).sum()))
    if top_n <= 0:
        return float(x[token]) - lse, ()
    n = min(top_n, x.size)
    ids = np.argpartition(x, x.size - n)[x.size - n :]
    ids = ids[np.lexsort((ids, -x[ids]))]
    return float(x[token]) - lse, tuple((int(i), float(x[i]) - lse) for i in ids)


class Sampler:
    """Chooses tokens and measures entropy; one instance per answer, so a seed gives a reproducible answer.

    The buffers for the scaled probabilities and top-p's scratch are allocated once here and reused.
    """

    def __init__(self, settings: TokenSampling, n_vocab: int) -> None:
        self.settings = settings
        self.n_vocab = n_vocab
        self._lib = native.library()
        self._h = ctypes.c_double()
        self._h_ref = ctypes.byref(self._h)
        self._greedy = settings.temperature <= 0
        self._rng = np.random.default_rng(settings.seed)
        if not self._greedy:
            self._inv_t = 1.0 / settings.temperature
            self._e = np.empty(n_vocab, np.float32)  # exp((l - max) / T) = p / p_max
            self._ids = np.empty(n_vocab, np.int32)
            self._hist = np.empty(self._lib.vr_nucleus_hist_size())
            self._scratch = (self._e.ctypes.data, self._ids.ctypes.data, self._hist.ctypes.data)
            # e_max is exactly 1, so a min-p above 1 still keeps the best token.
            self._min_p = min(max(settings.min_p, 0.0), 1.0)

    def __call__(self, logits: np.ndarray) -> tuple[int, float]:
        """(chosen token, entropy in nats of softmax(logits) at temperature 1). `logits` is float32
        [n_vocab], possibly a zero-copy view of llama.cpp's output buffer: never modified, not kept."""
        x = _float32(logits, self.n_vocab)
        top = self._lib.vr_argmax_entropy(x.ctypes.data, self.n_vocab, self._h_ref)
        if self._greedy:
            return top, self._h.value
        cut = self._threshold(x, top)
        return self._lib.vr_draw(self._scratch[0], self.n_vocab, cut, self._rng.random()), self._h.value

    def support(self, logits: np.ndarray) -> np.ndarray:
        """The token ids the next draw chooses among, ascending (the argmax alone when greedy).

        Computed as `__call__` does, without drawing: for tests and for inspecting a setting's effect.
        """
        x = _float32(logits, self.n_vocab)
        top = self._lib.vr_argmax_entropy(x.ctypes.data, self.n_vocab, self._h_ref)
        if self._greedy:
            return np.array([top])
        cut = np.float32(self._threshold(x, top))
        return np.flatnonzero((self._e >= cut) & (self._e > 0))

    def _threshold(self, x: np.ndarray, top: int) -> float:
        """Fills the buffer e = exp((l - max) / T) and returns the threshold on e of the kept set."""
        e, ids, hist = self._scratch
        total = self._lib.vr_softmax(x.ctypes.data, self.n_vocab, x[top], self._inv_t, e)
        if self.settings.top_p >= 1.0:
            return self._min_p
        target = max(self.settings.top_p, 0.0) * total
        return max(self._min_p, self._lib.vr_nucleus_cut(e, self.n_vocab, total, target, ids, hist))

"""Entropy and token choice from the raw logits of one decode step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def entropy(logits: np.ndarray) -> float:
    """Shannon entropy (nats) of softmax(logits) at temperature 1, computed stably in float64."""
    z = logits.astype(np.float64, copy=False)
    m = z.max()
    e = np.exp(z - m)
    s = e.sum()
    p = e / s
    return float(np.log(s) + m - (p * z).sum())


@dataclass(frozen=True)
class TokenSampling:
    """How the next token is chosen. Greedy (temperature 0) by default, as the method specifies."""

    temperature: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = 0


class Sampler:
    """Chooses tokens; one instance per answer so a seed gives a reproducible answer."""

    def __init__(self, settings: TokenSampling) -> None:
        self.s = settings
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.s.temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.s.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        keep = np.ones_like(p, dtype=bool)
        if self.s.min_p > 0:
            keep &= p >= self.s.min_p * p.max()
        if self.s.top_p < 1.0:
            order = np.argsort(-p)
            cum = np.cumsum(p[order])
            # keep the smallest prefix whose mass reaches top_p (always at least the best token)
            cut = int(np.searchsorted(cum, self.s.top_p)) + 1
            nucleus = np.zeros_like(keep)
            nucleus[order[:cut]] = True
            keep &= nucleus
        p = np.where(keep, p, 0.0)
        p /= p.sum()
        return int(self.rng.choice(p.size, p=p))

"""Shared set-up for the benchmarks: the `3b` shape model (Qwen2.5-VL-3B dimensions, random Q8_0
weights), the `fast` shape model (3 layers of width 128, the full 151,936-token vocabulary) and a
generated clip, built once into a cache folder.

Set VREASON_BENCH_DIR to reuse a folder (the 3b model takes about a minute to generate, fast seconds).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

from vreason_local.cache import cache_dir
from vreason_local.clips import make_clip
from vreason_local.tiny import TinyModel, make_tiny

BENCH_DIR = Path(os.environ.get("VREASON_BENCH_DIR", cache_dir() / "bench"))


def model_3b() -> TinyModel:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return make_tiny(
        BENCH_DIR,
        arch="qwen25vl",
        shape="3b",
        wtype="q8_0",
        progress=lambda msg: print(f"  [3b model] {msg}", file=sys.stderr),
    )


def model_fast(wtype: str = "f16") -> TinyModel:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return make_tiny(BENCH_DIR, arch="qwen25vl", shape="fast", wtype=wtype)


def clip(seconds: float = 8.0) -> Path:
    return make_clip(BENCH_DIR / f"bench-{seconds:g}s.mp4", seconds=seconds, fps=15.0, size=(640, 360))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def steady_step_s(t_s: list[float]) -> list[float]:
    """Seconds per token from the event timestamps, dropping the first step (warm-up)."""
    return [b - a for a, b in zip(t_s[1:], t_s[2:])]

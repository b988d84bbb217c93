"""Shared set-up for the benchmarks: the `3b` and `7b` shape models (Qwen2.5-VL-3B and -7B dimensions,
random weights) as the registry ships them, Q4_K_M with a Q8_0 projector, and Q8_0 beside them; the
`fast` shape model (3 layers of width 128, the full 151,936-token vocabulary); and a generated clip, all
built once into a cache folder.

The Q8_0 files are generated (`make_tiny`); the Q4_K_M ones are made from them by llama.cpp's own
quantiser (`llama_backend.quantize`), so they hold what a downloaded Q4_K_M does: Q4_K, with Q6_K for
the LM head and part of attn_v and ffn_down. Quantising from Q8_0 (llama.cpp dequantises it first) rather
than from F16 spares a 15 GB F16 source for the 7B; on random weights the double rounding changes nothing
a benchmark measures. Times and sizes are printed when a file is built.

Set VREASON_BENCH_DIR to reuse a folder. Measured on 2 cores (qwen25vl): the 3b Q8_0 pair takes about a
minute to generate (3.28 GB + 0.84 GB projector) and 100 s to quantise to Q4_K_M (1.93 GB; the real
Qwen2.5-VL-3B Q4_K_M file: 1.93 GB); the 7b pair 136 s (8.10 + 0.85 GB) and 308 s (4.68 GB; real: 4.68 GB,
at most 3.2 GB of memory); fast seconds.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from vreason_local.cache import cache_dir
from vreason_local.clips import make_clip
from vreason_local.llama_backend import quantize
from vreason_local.settings import default_threads
from vreason_local.tiny import TinyModel, file_names, make_tiny

# A benchmark times encoding: an encoding loaded from an earlier run's disk cache would pass for one
# (bench_encoding_cache.py turns the cache on for the processes it measures).
os.environ.setdefault("VREASON_ENCODING_CACHE", "off")

BENCH_DIR = Path(os.environ.get("VREASON_BENCH_DIR", cache_dir() / "bench"))
QUANTS = ("q4_k_m", "q8_0")  # the registry's model files, and the generated type beside them


def _say(label: str, message: str) -> None:
    print(f"  [{label}] {message}", file=sys.stderr)


def model(shape: str = "3b", quant: str = "q4_k_m", arch: str = "qwen25vl") -> TinyModel:
    """The `shape` model ("3b" or "7b") as `quant` ("q4_k_m" or "q8_0"), with its Q8_0 projector."""
    if quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r}; expected one of {QUANTS}")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    label = f"{shape} {arch}"
    source = make_tiny(
        BENCH_DIR, arch=arch, shape=shape, wtype="q8_0", progress=lambda msg: _say(f"{label} model", msg)
    )
    if quant == "q8_0":
        return source
    path = BENCH_DIR / file_names(arch, shape, quant)[0]
    if not path.is_file():
        _say(label, f"quantising to {quant.upper()} with llama.cpp ...")
        t0 = time.perf_counter()
        quantize(source.model_path, path, quant, default_threads())
        _say(label, f"{quant.upper()}: {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s")
    return TinyModel(path, source.mmproj_path, arch, shape)


def model_3b() -> TinyModel:
    """The 3b shape as Q8_0 (what the benchmarks measured before Q4_K_M files existed here)."""
    return model("3b", "q8_0")


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

"""VREASON_SIMD: one switch for the SIMD level of every native kernel (vreason_local/native.py), so that a
machine with AVX-512 runs, and tests, what an AVX2 laptop or an SSE2-only CPU runs. The levels on offer are
checked against the CPU's own flags (/proc/cpuinfo), each level's kernels against torch and each other."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vreason_local import native
from vreason_local.errors import SettingError
from vreason_local.optim import Optimizer
from vreason_local.tail import norm_preserving_f16

LEVELS = native.available_simd()


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel lists them (Linux only)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists(), reason="x86-64 Linux")
def test_levels_on_offer_are_the_cpus():
    """Exactly the levels the CPU has: AVX-512 with F and BW (the row products need BW), AVX2 with FMA and
    F16C, and always the baseline and plain C."""
    flags = cpu_flags()
    expected = [
        level
        for level, needs in (
            ("avx512", {"avx512f", "avx512bw"}),
            ("avx2", {"avx2", "fma", "f16c"}),
            ("sse2", {"sse2"}),
            ("scalar", set()),
        )
        if needs <= flags
    ]
    assert LEVELS == expected


@pytest.mark.parametrize("level", LEVELS)
def test_one_switch_sets_every_kernel(level):
    """Sampling, row products and Adam all run at the level asked for, and the F16 write uses F16C exactly
    from AVX2 on (an SSE2-only CPU has none)."""
    lib = native.library()
    assert native.use_simd(level) == level and native.simd_level() == level
    lanes = native.SIMD_LANES[level]
    assert (lib.vr_sampling_lanes(), lib.vr_rows_lanes(), lib.vr_tail_adam_lanes()) == (lanes, lanes, lanes)
    assert lib.vr_tail_use_f16c(lanes >= 8) == (lanes >= 8)


def test_unknown_or_missing_levels_are_refused():
    """A typo, and a level of another architecture, are one SettingError naming what this CPU can run; the
    kernels stay at the run's level."""
    before = native.simd_level()
    with pytest.raises(SettingError, match="not a SIMD level"):
        native.use_simd("avx-512")
    other = "sse2" if platform.machine().lower() in ("arm64", "aarch64") else "neon"
    with pytest.raises(SettingError, match=f"it can: {', '.join(LEVELS)}"):
        native.use_simd(other)
    assert native.simd_level() == before


def test_cli_refuses_a_bad_level_in_one_line(tiny_model_factory):
    """`vreason run` with VREASON_SIMD set wrong: one `error:` line and exit 2, before any model is loaded."""
    tiny = tiny_model_factory("qwen25vl")
    env = {**os.environ, "VREASON_SIMD": "avx1024"}
    args = ["--model", str(tiny.model_path), "--mmproj", str(tiny.mmproj_path), "-q", "Hello?"]
    done = subprocess.run(
        [sys.executable, "-m", "vreason_local.cli", "run", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: VREASON_SIMD=avx1024 is not a SIMD level (use one of: auto, avx512, avx2, sse2, neon, scalar)"
    ]


def adam_run(level: str, steps: int = 5) -> np.ndarray:
    """Parameters after `steps` native Adam steps at `level` on fixed gradients (n not a multiple of any
    vector width, so the loops' tails run too)."""
    native.use_simd(level)
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(1003, generator=gen)
    opt = Optimizer(p, "adam", lr=0.01)
    for _ in range(steps):
        p.grad = torch.randn(1003, generator=gen)
        opt.step()
    return p.numpy().copy()


@pytest.mark.parametrize("level", LEVELS)
def test_adam_at_every_level_is_torchs(level):
    """Each level's compiled Adam step against torch.optim.Adam (float32, the same arithmetic up to FMA
    contraction and the lanes' order: measured at most 1.2e-7 apart, on parameters of scale 1, after 5 steps)."""
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(1003, generator=gen).requires_grad_(True)
    torch_opt = torch.optim.Adam([ref], lr=0.01)
    for _ in range(5):
        ref.grad = torch.randn(1003, generator=gen)
        torch_opt.step()
    ours = adam_run(level)
    np.testing.assert_allclose(ours, ref.detach().numpy(), rtol=0, atol=1e-6)


def test_f16_write_is_the_same_at_every_level():
    """The value rows written to llama.cpp's F16 cache (norm-preserving update, then rounded to halves) are
    the same halves at every level (measured: all 8,192 equal), give or take one F16 step where float32 rounding
    straddles a halfway point."""
    gen = torch.Generator().manual_seed(3)
    v, dv = torch.randn(64, 128, generator=gen), 0.01 * torch.randn(64, 128, generator=gen)
    norm = v.norm(dim=-1)
    written = {}
    for level in LEVELS:
        native.use_simd(level)
        written[level] = norm_preserving_f16(v, dv, norm)[0].view(np.uint16).astype(np.int32)
    for level, halves in written.items():
        steps = np.abs(halves - written[LEVELS[-1]])
        assert steps.max() <= 1 and (steps > 0).mean() < 1e-3, level

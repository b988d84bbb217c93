"""native/ built as this machine's package is not: the 4-lane NEON kernels Apple Silicon (and arm64 Linux) run,
cross-compiled for aarch64 with GCC and with clang (Apple's compiler) and run under qemu-aarch64; the
-DVR_SCALAR build (plain C, as MSVC compiles every kernel); builds without OpenMP (as on macOS, where setup.py
passes none); x86-64 with clang (an Intel Mac's compiler). Each is compiled with setup.py's flags and warnings
as errors, and its kernels are checked against the float64 references of tests/test_sampling.py,
tests/test_rows_kernels.py and tests/test_simd.py (ggml's own quantiser and dequantiser for the GGUF rows).

Python cannot load an aarch64 library, so native/tests/kernel_driver.c runs the kernels as a program: the
inputs go to it as raw little-endian arrays and its outputs come back the same way. The cross tools are
Debian's gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user and clang (.ci/run installs them). Where one
is missing its builds are skipped, naming the package; in CI (the CI variable set) they fail instead, so the
arm64 checks cannot silently drop out of the run."""

from __future__ import annotations

import functools
import math
import os
import platform
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
from test_rows_kernels import quantised
from test_sampling import QWEN_VOCAB, _entropy64, _logit_cases
from test_simd import cpu_flags

from vreason_local.sampling import ENTROPY_ABS_ERROR, ENTROPY_REL_ERROR
from vreason_local.tail_weights import dequantize

NATIVE = Path(__file__).resolve().parent.parent / "native"
DRIVER = NATIVE / "tests" / "kernel_driver.c"
SYSROOT = Path("/usr/aarch64-linux-gnu")  # libc6-dev-arm64-cross: the aarch64 libc qemu loads and links against
# What setuptools compiles native/ with on Linux (Python's CFLAGS: -Wsign-compare -DNDEBUG -g -fwrapv -O3 -Wall;
# -g changes no code) and setup.py's own flags; warnings fail the build, so that every compiler stays quiet.
FLAGS = ["-O3", "-Wall", "-Wsign-compare", "-fwrapv", "-DNDEBUG", "-fno-trapping-math", "-fno-math-errno", "-Werror"]
Q = gguf.GGMLQuantizationType
FLT_MIN = float(np.finfo(np.float32).tiny)  # below it the kernels flush e^z to 0 (vr_sampling.c, VR_LOW)


@dataclass(frozen=True)
class Build:
    """One way native/ is compiled: its compiler (with its target), extra flags, and the machine it is for."""

    name: str
    cc: tuple[str, ...]
    flags: tuple[str, ...]
    arch: str  # "x86_64" or "aarch64"
    scalar: bool = False  # -DVR_SCALAR: the sampling and row kernels on plain floats
    lanes: int = 0  # every kernel forced to this many lanes (VR_DRIVER_LANES, as VREASON_SIMD does); 0: the best

    @property
    def openmp(self) -> bool:
        return "-fopenmp" in self.flags


BUILDS = [
    Build("x86-64-gcc-scalar", ("gcc",), ("-DVR_SCALAR", "-fopenmp"), "x86_64", scalar=True),
    Build("x86-64-gcc-no-openmp", ("gcc",), (), "x86_64"),
    Build("x86-64-clang", ("clang",), (), "x86_64"),  # an Intel Mac's: Apple's clang has no OpenMP
    Build("aarch64-gcc", ("aarch64-linux-gnu-gcc",), ("-fopenmp",), "aarch64"),  # arm64 Linux, as setup.py
    Build("aarch64-clang", ("clang", "--target=aarch64-linux-gnu"), (), "aarch64"),  # Apple Silicon's compiler
    Build("aarch64-gcc-1-lane", ("aarch64-linux-gnu-gcc",), ("-fopenmp",), "aarch64", lanes=1),  # VREASON_SIMD=scalar
]
# The Debian package of each tool a build may need.
PACKAGES = {
    "gcc": "gcc",
    "clang": "clang",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "qemu-aarch64": "qemu-user",
    str(SYSROOT / "include" / "stdio.h"): "libc6-dev-arm64-cross",
}

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64", reason="the builds are made on x86-64 Linux"
)


def require(tools: list[str]) -> None:
    """Skip (fail in CI) unless every tool (an executable, or a file's path) is here."""
    missing = [t for t in tools if not (Path(t).exists() if t.startswith("/") else shutil.which(t))]
    if missing:
        packages = " ".join(sorted({PACKAGES[t] for t in missing}))
        message = f"missing {', '.join(missing)}: apt-get install {packages}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{message} (CI must run these builds)")
        pytest.skip(message)


def expected_lanes(build: Build) -> dict[str, int]:
    """The lanes each kernel family must run at: NEON's 4 on aarch64; on x86-64 the CPU's best (the checks
    vr_sampling.c, vr_rows.c and vr_tail.c make), the sampling and row kernels 1 in the scalar build."""
    if build.lanes:
        return {"sampling": build.lanes, "rows": build.lanes, "adam": build.lanes}
    if build.arch == "aarch64":
        return {"sampling": 4, "rows": 4, "adam": 4}
    flags = cpu_flags()
    avx2 = {"avx2", "fma"} <= flags
    best = 16 if "avx512f" in flags else 8 if avx2 else 4
    rows = 16 if {"avx512f", "avx512bw"} <= flags else 8 if avx2 and "f16c" in flags else 4
    return {"sampling": 1 if build.scalar else best, "rows": 1 if build.scalar else rows, "adam": best}


class Driver:
    """native/tests/kernel_driver.c built one way, run on its inputs in its own folder (under qemu for aarch64)."""

    def __init__(self, build: Build, folder: Path) -> None:
        self.build, self.folder = build, folder
        self.exe = folder / "kernel_driver"
        self.runner = ["qemu-aarch64", "-L", str(SYSROOT)] if build.arch == "aarch64" else []
        sources = sorted(str(p) for p in NATIVE.glob("*.c") if p.name != "vr_hook.c")  # vr_hook.c needs Python.h
        cmd = [*build.cc, *FLAGS, *build.flags, *sources, str(DRIVER), "-o", str(self.exe), "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode or done.stderr:
            pytest.fail(f"{build.name} does not build:\n{' '.join(cmd)}\n{done.stderr[-4000:]}")

    def put(self, name: str, array: np.ndarray, dtype: str) -> str:
        """`array` as raw little-endian `dtype` in a file of the folder; its path."""
        path = self.folder / name
        path.write_bytes(np.ascontiguousarray(array, dtype=dtype).tobytes())
        return str(path)

    def run(self, *args: object) -> str:
        """The driver's command `args` (floats written in full); its standard output."""
        text = [repr(float(a)) if isinstance(a, (float, np.floating)) else str(a) for a in args]
        cmd = [*self.runner, str(self.exe), *text]
        env = {**os.environ, "VR_DRIVER_LANES": str(self.build.lanes)} if self.build.lanes else None
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr}"
        return done.stdout

    def out(self, name: str = "out") -> bytes:
        return (self.folder / name).read_bytes()


@pytest.fixture(scope="module", params=BUILDS, ids=lambda b: b.name)
def driver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Driver:
    build: Build = request.param
    tools = [build.cc[0]]
    if build.arch == "aarch64":
        tools += ["aarch64-linux-gnu-gcc", "qemu-aarch64", str(SYSROOT / "include" / "stdio.h")]
    require(tools)
    return Driver(build, tmp_path_factory.mktemp(build.name))


def test_build_runs_its_own_kernels(driver: Driver) -> None:
    """The kernels each build dispatches to: 4 lanes (NEON) on aarch64, 1 in the scalar build, the CPU's best
    on x86-64; OpenMP shares the row products exactly in the builds compiled with it."""
    report = dict(line.split() for line in driver.run("lanes").splitlines())
    lanes = {k: int(v) for k, v in report.items()}
    assert lanes == {**expected_lanes(driver.build), "openmp": int(driver.build.openmp)}


def test_argmax_and_entropy(driver: Driver) -> None:
    """test_sampling's logits, random to one-hot, -inf entries, a large offset: the first maximum's index, and
    the entropy within sampling.py's stated bound of the float64 one."""
    by_size: dict[int, list[np.ndarray]] = {}
    for logits in _logit_cases():
        by_size.setdefault(logits.size, []).append(logits)
    worst = 0.0
    for n, cases in by_size.items():
        driver.run("argmax_entropy", n, driver.put("logits", np.stack(cases), "<f4"), driver.folder / "out")
        got = np.frombuffer(driver.out(), [("top", "<i8"), ("h", "<f8")])
        for logits, (top, h) in zip(cases, got):
            ref = _entropy64(logits)
            assert top == int(np.argmax(logits)), (n, top)
            assert abs(h - ref) <= ENTROPY_REL_ERROR * ref + ENTROPY_ABS_ERROR, (n, ref, h)
            if ref > 1e-25:
                worst = max(worst, abs(h - ref) / ref)
    assert worst < 3e-6  # test_sampling.py's bound; measured 9.3e-7 on every build here, NEON included


def softmax_cases() -> list[tuple[np.ndarray, float]]:
    """Logits (float32) and 1 / temperature: broad and peaked at Qwen's vocabulary, small with -inf entries."""
    rng = np.random.default_rng(11)
    cases = [
        ((rng.standard_normal(QWEN_VOCAB) * s).astype(np.float32), 1 / t) for s in (0.5, 3.0, 30.0) for t in (0.7, 1.0)
    ]
    small = (rng.standard_normal(37) * 2).astype(np.float32)
    small[[4, 20]] = -np.inf
    return [*cases, (small, 1 / 1.5)]


def test_softmax(driver: Driver) -> None:
    """e = exp((l - max)/T) per value against float64, within the float32 rounding of l - max and of the
    division by T (relative 2^-23 of |z|, which exp turns into a relative error of e) and exp's own ~1 ulp;
    their sum within the float sums' rounding. Below ln(FLT_MIN) e is flushed to 0."""
    worst = 0.0
    for logits, inv_t in softmax_cases():
        inv_t32 = np.float32(inv_t)
        driver.run("softmax", logits.size, inv_t32, driver.put("logits", logits, "<f4"), driver.folder / "out")
        raw = driver.out()
        total, e = np.frombuffer(raw[:8], "<f8")[0], np.frombuffer(raw[8:], "<f4").astype(np.float64)
        z = (logits.astype(np.float64) - logits.max()) * float(inv_t32)
        ref = np.exp(z)
        finite = np.isfinite(z)
        assert np.all(e[~finite] == 0.0)
        err = np.abs(e - ref)[finite] / (ref[finite] * (np.abs(z[finite]) + 1.0))
        flushed = ref[finite] < FLT_MIN
        worst = max(worst, float(err[~flushed].max()))
        assert np.all(e[finite][flushed] <= FLT_MIN)
        assert total == pytest.approx(ref.sum(), rel=1e-6)
    assert worst < 3e-7, worst


def distributions() -> list[np.ndarray]:
    """e = p / p_max (float32, max 1) at Qwen's vocabulary, broad to peaked, and small with zeros (-inf logits)."""
    rng = np.random.default_rng(12)
    out = []
    for scale in (0.5, 2.0, 10.0):
        z = rng.standard_normal(QWEN_VOCAB) * scale
        out.append(np.exp(z - z.max()).astype(np.float32))
    small = np.exp(rng.standard_normal(40) * 1.5)
    small[[3, 17]] = 0.0
    out.append((small / small.max()).astype(np.float32))
    return out


def test_nucleus_cut_and_draw(driver: Driver) -> None:
    """Top-p's cut is exact: one of the values, the largest c whose e_i >= c carry the target (up to the order
    of a double sum). A draw at u takes the token where the float64 cumulative mass of the kept e_i (index
    order) passes u of their total, give or take the float32 block sums' rounding (1e-6 of the total); min-p's
    cut (c = 0.05) and none (c = 0) as well."""
    for e in distributions():
        e64 = e.astype(np.float64)
        total = float(e64.sum())
        path = driver.put("e", e, "<f4")
        targets = [p * total for p in (0.3, 0.9, 0.95, 0.999)]
        driver.run("nucleus", e.size, total, path, driver.folder / "out", *targets)
        cuts = np.frombuffer(driver.out(), "<f4")
        for target, c in zip(targets, cuts):
            assert c in e
            tol = 1e-9 * total
            assert e64[e >= c].sum() >= target - tol and e64[e > c].sum() < target + tol, (target, c)
        for c in (float(cuts[1]), 0.05, 0.0):
            us = [*np.linspace(0.0, 1.0, 37, endpoint=False), 1.0 - 1e-12]
            driver.run("draw", e.size, c, path, driver.folder / "out", *us)
            picks = np.frombuffer(driver.out(), "<i8")
            kept = np.where((e >= np.float32(c)) & (e > 0), e64, 0.0)
            cum = np.cumsum(kept)
            tol = 1e-6 * cum[-1]
            for u, i in zip(us, picks):
                assert 0 <= i < e.size and kept[i] > 0, (c, u, i)
                assert cum[i] - kept[i] <= u * cum[-1] + tol and cum[i] >= u * cum[-1] - tol, (c, u, i)


def test_head_terms(driver: Driver) -> None:
    """V-Reason's LM-head terms t_v = w_v·p_v·|ln p_v + H| against float64, broad to peaked: float32 arithmetic,
    within 2e-5·w_v·p_v·(1 + |ln p_v|) (measured 5.2e-6 on every build), ln Σ e^z within 1e-6 (7e-9), H within
    1e-6 (2e-8), Σ t within 2e-6 of float64's (4.2e-7) and 1e-7 of the float32 terms' own (9e-9); the ranked ids
    are exactly the k largest of the terms written, decreasing, the lower id first on ties."""
    rng = np.random.default_rng(13)
    for scale, k in ((3.0, 2048), (0.3, 500), (30.0, 100)):
        logits = (rng.standard_normal(QWEN_VOCAB) * scale).astype(np.float32)
        logits[rng.random(QWEN_VOCAB) < 0.01] = -np.inf
        norms = rng.uniform(0.5, 2.0, QWEN_VOCAB).astype(np.float32)
        driver.run(
            "head_terms", QWEN_VOCAB, k, driver.put("logits", logits, "<f4"), driver.put("norms", norms, "<f4"),
            driver.folder / "out",
        )  # fmt: skip
        raw = driver.out()
        count, stats = np.frombuffer(raw[:8], "<i8")[0], np.frombuffer(raw[8:32], "<f8")
        t = np.frombuffer(raw[32 : 32 + 4 * QWEN_VOCAB], "<f4")
        ids = np.frombuffer(raw[32 + 4 * QWEN_VOCAB :], "<i8")
        x = logits.astype(np.float64)
        lse = x.max() + math.log(np.exp(x - x.max()).sum())
        p = np.exp(x - lse)
        lp = np.where(p > 0, x - lse, 0.0)  # ln p, and 0 for p = 0 (whose terms are 0)
        h = float(-(p * lp).sum())
        ref = norms * p * np.abs(lp + h)
        assert count == k and len(ids) == k
        assert stats[0] == pytest.approx(lse, abs=1e-6) and stats[1] == pytest.approx(h, rel=1e-6)
        assert stats[2] == pytest.approx(ref.sum(), rel=2e-6)
        assert stats[2] == pytest.approx(t.sum(dtype=np.float64), rel=1e-7)
        kept = p >= FLT_MIN  # p flushed to 0 below: a term under 1e-35
        assert np.all((np.abs(t - ref) <= 2e-5 * norms * p * (1.0 + np.abs(lp)))[kept]) and t[~kept].max() < 1e-35
        order = np.lexsort((np.arange(QWEN_VOCAB), -t.astype(np.float64)))[:k]
        np.testing.assert_array_equal(ids, order)


@functools.cache
def gguf_rows(t: Q, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """37 rows of type t quantised by ggml (test_rows_kernels.quantised), and as ggml dequantises them (float64)."""
    raw = quantised(t, 37, n_cols, seed=3)
    return raw, dequantize(raw, t).double().numpy()


ROW_CASES = [(t, 512) for t in (Q.F32, Q.F16, Q.Q8_0, Q.Q4_K, Q.Q6_K)] + [(Q.F32, 320), (Q.F16, 320)]


@pytest.mark.parametrize(("t", "n_cols"), ROW_CASES, ids=[f"{t.name}-{n}" for t, n in ROW_CASES])
def test_row_products(driver: Driver, t: Q, n_cols: int) -> None:
    """W[ids]·x and out0 + W[ids]ᵀ·g on 2 threads, every row and a shuffled subset, weights of 0 among g, against
    float64 products with ggml's dequantisation, within float32 rounding (test_rows_kernels.py's 1e-5)."""
    raw, w = gguf_rows(t, n_cols)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(n_cols).astype(np.float32)
    data = driver.put("rows", raw, "u1")
    head = [int(t), raw.shape[1], n_cols, 2, data]
    for ids in (None, rng.permutation(len(raw))[:13]):
        rows = w if ids is None else w[ids]
        id_path = "-" if ids is None else driver.put("ids", ids, "<i8")
        driver.run("rows_dot", *head, id_path, driver.put("x", x, "<f4"), driver.folder / "out")
        dot = np.frombuffer(driver.out(), "<f4")
        assert np.linalg.norm(dot - rows @ x) < 1e-5 * np.linalg.norm(rows @ x)
        g = rng.standard_normal(len(rows)).astype(np.float32)
        g[::3] = 0.0
        out0 = np.zeros(n_cols, np.float32) if ids is None else rng.standard_normal(n_cols).astype(np.float32)
        driver.run(
            "rows_axpy",
            *head,
            id_path,
            driver.put("g", g, "<f4"),
            driver.put("out0", out0, "<f4"),
            driver.folder / "out",
        )
        axpy = np.frombuffer(driver.out(), "<f4")
        ref = out0 + rows.T @ g
        assert np.linalg.norm(axpy - ref) < 1e-5 * np.linalg.norm(ref)


def test_adam(driver: Driver) -> None:
    """Five Adam steps on 1,003 values (no multiple of any vector width: the loops' tails run) against the
    same arithmetic in float64 (torch.optim.Adam's), on every build: parameters of scale 1 within 1e-6 (test_simd.py's;
    measured 3.6e-7), the first moment (scale 0.5) within 2e-7 (3.5e-8), the second within 1e-6 relative (2.2e-7),
    each step's Σg² within 1e-6 (1.3e-7)."""
    n, steps, lr, b1, b2, eps = 1003, 5, 0.01, 0.9, 0.999, 1e-8
    rng = np.random.default_rng(14)
    p0, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal((steps, n)).astype(np.float32)
    zeros = driver.put("zeros", np.zeros(n), "<f4")
    args = [driver.put("p", p0, "<f4"), driver.put("g", g, "<f4"), zeros, zeros, driver.folder / "out"]
    driver.run("adam", n, steps, lr, b1, b2, eps, *args)
    raw = driver.out()
    gg = np.frombuffer(raw[: 8 * steps], "<f8")
    p_got, m_got, v_got = np.frombuffer(raw[8 * steps :], "<f4").reshape(3, n)
    p, m, v = p0.astype(np.float64), np.zeros(n), np.zeros(n)
    for step in range(1, steps + 1):
        gs = g[step - 1].astype(np.float64)
        assert gg[step - 1] == pytest.approx((gs * gs).sum(), rel=1e-6)
        m = b1 * m + (1 - b1) * gs
        v = b2 * v + (1 - b2) * gs * gs
        p -= lr / (1 - b1**step) * m / (np.sqrt(v) / math.sqrt(1 - b2**step) + eps)
    np.testing.assert_allclose(p_got, p, rtol=0, atol=1e-6)
    np.testing.assert_allclose(m_got, m, rtol=0, atol=2e-7)
    np.testing.assert_allclose(v_got, v, rtol=1e-6, atol=0)


def test_norm_preserving_write(driver: Driver) -> None:
    """The value rows written to llama.cpp's F16 cache, (V + dV)·||V||/||V + dV||, against float64 rounded
    to halves: each within one F16 step (where the float32 result and the float64 one straddle a halfway
    point), at most 20 of the 16,384 not equal (measured 1-2); a zero row stays zero (the clamp); ||dV|| within
    1e-6 (3e-9)."""
    rng = np.random.default_rng(15)
    v, dv = rng.standard_normal((128, 128)), 0.01 * rng.standard_normal((128, 128))
    v[5], dv[5] = 0.0, 0.0
    v32, dv32 = v.astype(np.float32), dv.astype(np.float32)
    norm = np.linalg.norm(v32.astype(np.float64), axis=1).astype(np.float32)
    args = [driver.put("v", v32, "<f4"), driver.put("dv", dv32, "<f4"), driver.put("norm", norm, "<f4")]
    driver.run("norm_preserving", 128, *args, driver.folder / "out")
    raw = driver.out()
    dv_norm, halves = np.frombuffer(raw[:8], "<f8")[0], np.frombuffer(raw[8:], "<u2").reshape(128, 128)
    new = v32.astype(np.float64) + dv32
    new *= norm[:, None] / np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
    steps = np.abs(halves.astype(np.int32) - new.astype(np.float16).view(np.uint16).astype(np.int32))
    assert steps.max() <= 1 and np.count_nonzero(steps) <= 20, np.count_nonzero(steps)
    assert not halves[5].any()
    assert dv_norm == pytest.approx(float(np.linalg.norm(dv32.astype(np.float64))), rel=1e-6)


def test_halves_round_as_numpy(driver: Driver) -> None:
    """The write's float -> F16 conversion (F16C on x86-64, portable C elsewhere): bit for bit numpy's on normal
    values, halfway cases, subnormals and their ties, overflow, infinities and signed zeros; NaN stays NaN."""
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            rng.normal(size=4096).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 4096),
            np.arange(0, 4096, dtype=np.float16).view(np.uint16).astype(np.float32),  # integers, some halfway
            np.arange(-2048, 2048, dtype=np.int32) * np.float32(2.0**-25),  # subnormal halves and their ties
            np.array([65504, 65519.99, 65520, 1e9, -1e9, np.inf, -np.inf, 0.0, -0.0, np.nan], np.float32),
        ]
    ).astype(np.float32)
    driver.run("halves", driver.put("x", x, "<f4"), driver.folder / "out")
    got = np.frombuffer(driver.out(), "<u2")
    with np.errstate(over="ignore"):  # numpy warns where it rounds to infinity, as it should
        expected = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(got[:-1], expected[:-1])
    assert np.isnan(got[-1:].view(np.float16)[0])


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_hook_compiles_without_openmp(cc: str) -> None:
    """vr_hook.c (which the driver leaves out: it needs Python.h) compiles warning-free without OpenMP too."""
    require([cc])
    include = sysconfig.get_paths()["include"]
    cmd = [cc, *FLAGS, "-fPIC", "-I", include, "-fsyntax-only", str(NATIVE / "vr_hook.c")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr, done.stderr

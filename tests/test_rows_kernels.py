"""native/vr_rows.c, the products V-Reason's tail takes with GGUF rows where they lie (tail_weights.GGUFMatrix),
against float64 products with the same rows dequantised by ggml's own C code (tail_weights.dequantize),
for every type the kernels read and every kernel this CPU runs. The quantised rows are made by ggml's own
quantiser (ggml_quantize_chunk) from random floats."""

from __future__ import annotations

import ctypes

import gguf
import numpy as np
import pytest
import torch
from llama_cpp._ctypes_extensions import load_shared_library
from llama_cpp.llama_cpp import _base_path

from vreason_local.native import library
from vreason_local.tail_weights import GGUFMatrix, dequantize

Q = gguf.GGMLQuantizationType
TYPES = [Q.F32, Q.F16, Q.Q8_0, Q.Q4_K, Q.Q6_K]
LANES = [n for n in (1, 4, 8, 16) if library().vr_rows_use(n) == n]  # the kernels this build and CPU run
library().vr_rows_use(0)


def quantised(t: Q, n_rows: int, n_cols: int, seed: int = 0) -> np.ndarray:
    """Rows [n_rows, row bytes] of type t, quantised by ggml from normal values of varied row scales."""
    rng = np.random.default_rng(seed)
    src = (rng.standard_normal((n_rows, n_cols)) * rng.uniform(0.01, 3.0, (n_rows, 1))).astype(np.float32)
    block, size = gguf.GGML_QUANT_SIZES[t]
    dst = np.empty((n_rows, n_cols // block * size), np.uint8)
    ggml = load_shared_library("ggml-base", _base_path)
    fn = ggml.ggml_quantize_chunk
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    fn.argtypes += [ctypes.c_void_p]
    fn.restype = ctypes.c_size_t
    assert fn(int(t), src.ctypes.data, dst.ctypes.data, 0, n_rows, n_cols, None) == dst.nbytes
    return dst


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(params=LANES, ids=[f"{n}-lanes" for n in LANES])
def lanes(request):
    assert library().vr_rows_use(request.param) == request.param
    yield request.param
    library().vr_rows_use(0)


# rows of one block, of several, and (F32, F16) of a length that is no multiple of the kernels' 256-value chunks
CASES = [(t, n) for t in TYPES for n in (256, 2048, 320) if n % gguf.GGML_QUANT_SIZES[t][0] == 0]


@pytest.mark.parametrize(("t", "n_cols"), CASES, ids=[f"{t.name}-{n}" for t, n in CASES])
def test_products_equal_float64_with_ggmls_dequantisation(lanes, t, n_cols):
    """W[ids]·x and W[ids]ᵀ·g, all rows and a shuffled subset, weights of 0 among g (those rows are not
    read, and must not count), within float32 rounding of the float64 products."""
    raw = quantised(t, 37, n_cols)
    w = dequantize(raw, t).double().numpy()
    m = GGUFMatrix(raw, int(t), n_cols, threads=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(n_cols).astype(np.float32)
    for ids in (None, rng.permutation(37)[:13]):
        rows = w if ids is None else w[ids]
        g = rng.standard_normal(len(rows)).astype(np.float32)
        g[::3] = 0.0
        assert rel(m.dot(ids, torch.from_numpy(x)).numpy(), rows @ x) < 1e-5
        assert rel(m.axpy(ids, torch.from_numpy(g)).numpy(), rows.T @ g) < 1e-5


@pytest.mark.parametrize("t", [Q.Q4_K, Q.Q6_K], ids=["Q4_K", "Q6_K"])
@pytest.mark.parametrize("shape", [(512, 2048), (128, 8192)])
def test_threads_share_the_work_and_agree_exactly(t, shape):
    """Two threads (OpenMP's, in this build) take W·x by ranges of rows and Wᵀ·g by ranges of columns:
    every output is summed in the same order as on one thread, so the results are the same bits."""
    assert library().vr_rows_openmp() == 1  # Linux builds share the work (setup.py)
    n_rows, n_cols = shape
    raw = quantised(t, n_rows, n_cols, seed=2)
    w = dequantize(raw, t).double().numpy()
    x = torch.randn(n_cols, generator=torch.Generator().manual_seed(0))
    g = torch.randn(n_rows, generator=torch.Generator().manual_seed(1))
    two, one = GGUFMatrix(raw, int(t), n_cols, threads=2), GGUFMatrix(raw, int(t), n_cols, threads=1)
    assert two._threads(n_rows) == 2 and one._threads(n_rows) == 1
    np.testing.assert_array_equal(two.mv(x).numpy(), one.mv(x).numpy())
    np.testing.assert_array_equal(two.mv_t(g).numpy(), one.mv_t(g).numpy())
    assert rel(two.mv(x).numpy(), w @ x.double().numpy()) < 1e-5
    assert rel(two.mv_t(g).numpy(), w.T @ g.double().numpy()) < 1e-5


def test_other_types_are_refused():
    """Types without a kernel (Q5_K, BF16) are not read: the tail keeps a copy of them instead."""
    assert not GGUFMatrix.readable(int(Q.Q5_K), 2048) and not GGUFMatrix.readable(int(Q.BF16), 2048)
    assert not GGUFMatrix.readable(int(Q.Q4_K), 320)  # not whole 256-value blocks
    raw = np.zeros((2, 176), np.uint8)
    out = np.zeros(256, np.float32)
    coef = np.ones(2, np.float32)
    rc = library().vr_rows_axpy(int(Q.Q5_K), raw.ctypes.data, 176, 256, None, 2, coef.ctypes.data, out.ctypes.data, 1)
    assert rc == -1

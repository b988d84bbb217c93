"""V-Reason's guards: updates whose gradient direction is unknown are skipped, every update reports what
reached llama.cpp's F16 value cache, and the native products refuse inputs they would read out of bounds.

The skip is checked against the bound the same update reports with no threshold (the first update at the
same state is deterministic), at thresholds just above and just below it; the write's measure against
float64 numpy on the cache llama.cpp holds before and after; the checks of `GGUFMatrix` and
`vr_tail_grad_dv` by the inputs they refuse next to the same call with good inputs, whose result is
compared with numpy or torch.
"""

from __future__ import annotations

import ctypes
import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from vreason_local.clips import make_clip
from vreason_local.decoding import VReasonDecoding
from vreason_local.engine import AnswerHandle, Engine, EngineSettings, GenerationSettings
from vreason_local.events import PER_TOKEN_FIELDS, Answer, ControlState, Notice, TokenEvent, answer_fields
from vreason_local.gguf_info import read_model_info
from vreason_local.media import Media, load_video
from vreason_local.native import GradDVArgs, library
from vreason_local.tail import Tail, TailInputs, _NativeGradDV, norm_preserving_vjp, value_write
from vreason_local.tail_weights import GGUFMatrix
from vreason_local.telemetry import summarize
from vreason_local.tiny import make_tiny
from vreason_local.video import FrameSampling
from vreason_local.vreason import VReasonSettings

Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("guards") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))


@pytest.fixture(scope="module")
def fast(tmp_path_factory, clip) -> tuple[Engine, Media]:
    """The `fast` shape (Qwen's full 151,936-token vocabulary, random weights): flat distributions whose
    gradient bound a small head_max leaves far above 0.5."""
    t = make_tiny(tmp_path_factory.mktemp("fast"), arch="qwen25vl", shape="fast")
    with Engine(t.model_path, t.mmproj_path, EngineSettings(n_ctx=2048, hook=True)) as e:
        yield e, load_video(clip, FrameSampling(fps=2.0, max_frames=6), patch=e.projector.patch_size).media


@pytest.fixture(scope="module")
def tiny(tiny_model_factory, clip) -> tuple[Engine, Media]:
    t = tiny_model_factory()
    with Engine(t.model_path, t.mmproj_path, EngineSettings(n_ctx=2048, hook=True)) as e:
        yield e, load_video(clip, FrameSampling(fps=2.0, max_frames=6), patch=e.projector.patch_size).media


def first_tokens(
    engine: Engine, media: Media, n: int, **settings: object
) -> tuple[AnswerHandle, list[TokenEvent], list[str], list[np.ndarray], list[np.ndarray]]:
    """Run to the n-th token (every=1: each step updates) and pause there: the handle, the tokens' events,
    the notices, the value rows the cache held before the first update and after each token's, and dV
    after each token's update."""
    handle = engine.ask(
        media,
        "Describe it.",
        GenerationSettings(max_tokens=n + 2),
        VReasonDecoding(VReasonSettings(every=1, **settings)),
    )
    tokens, notices, cache, dvs = [], [], [], []
    for ev in handle:
        c = handle.controller
        if c is not None and not cache:  # the controller exists, its first update has not run
            cache.append(engine.hook.read_values(c.rows, c.transposed))
        if isinstance(ev, Notice):
            notices.append(ev.message)
        elif isinstance(ev, TokenEvent):
            tokens.append(ev)
            cache.append(engine.hook.read_values(c.rows, c.transposed))
            dvs.append(c.dv.detach().double().numpy().copy())
            if len(tokens) == n:
                return handle, tokens, notices, cache, dvs
    raise AssertionError("too few tokens")


def first_update(engine: Engine, media: Media, **settings: object) -> ControlState:
    """The first update's telemetry (the answer closed)."""
    handle, (ev,), _, _, _ = first_tokens(engine, media, 1, **settings)
    with handle:
        return ev.control


def test_an_update_whose_direction_is_unknown_is_skipped(fast):
    """With 64 LM-head rows the first update's gradient bound is far above 0.5 (measured 4.2 on this model):
    the update is skipped, dV stays zero, llama.cpp's cache keeps its values bit for bit, telemetry says so
    and one notice names head_max and head_skip. The same update with no threshold reports the same bound and
    moves the values; at a threshold just above that bound it runs, just below it it is skipped."""
    engine, media = fast
    free = first_update(engine, media, head_max=64, head_skip=math.inf)
    assert free.head_rows == 64 and free.head_bound > 0.5 and not free.skipped
    assert free.dv_norm > 0 and free.written_ratio is not None and free.written_ratio > 0.5

    handle, (ev,), notices, (before, after), _ = first_tokens(engine, media, 1, head_max=64)
    with handle:
        c, skipped = handle.controller, ev.control
        assert skipped.skipped and skipped.head_rows == 64 and skipped.written_ratio is None
        assert skipped.head_bound == pytest.approx(free.head_bound, rel=1e-9)
        assert skipped.dv_norm == 0.0 and not c.dv.detach().any() and c.head_log == [(64, skipped.head_bound)]
        assert len(notices) == 1 and "cap of 64 rows" in notices[0] and "above 0.5 (head_skip)" in notices[0]
        np.testing.assert_array_equal(after.view(np.uint16), before.view(np.uint16))  # nothing was written

    for factor, skip in ((1.001, False), (0.999, True)):
        ev = first_update(engine, media, head_max=64, head_skip=free.head_bound * factor)
        assert ev.skipped == skip and (ev.dv_norm == 0.0) == skip, (factor, ev)


def test_a_bound_below_the_threshold_with_the_cap_binding_steps(fast):
    """At the default head_max (2,048 rows) the cap binds on this model's first token with a bound of ~0.26:
    below head_skip, so the update runs, and the notice says the cap bound but not that anything was skipped."""
    engine, media = fast
    handle, (ev,), notices, _, _ = first_tokens(engine, media, 1)
    with handle:
        c = ev.control
        assert c.head_rows == 2048 and 0.01 < c.head_bound <= 0.5 and not c.skipped and c.dv_norm > 0
        assert len(notices) == 1 and "cap of 2048 rows" in notices[0] and "head_skip" not in notices[0]


def _normp64(v: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """normp(V + dV) in float64, per row and kv head ([rows, n_head_kv, head_dim])."""
    x = v + dv
    return x * (np.linalg.norm(v, axis=-1, keepdims=True) / np.linalg.norm(x, axis=-1, keepdims=True))


@pytest.mark.parametrize("lr", [0.05, 1e-3])
def test_written_over_intended_is_what_reached_the_cache(tiny, lr):
    """Each update's written/intended against float64 numpy on the cache itself: ||cache after - cache
    before|| over ||normp(V + dV) - cache before||, at the first update (from the original rows) and the
    next two (from the last F16 write). Near 1 with lr 0.05, where the change is many F16 steps; at 1e-3
    part of the change is lost to rounding, or added by it, and the figure says how much (1.01-1.08 here).
    Measured agreement: within 4e-8 (lr 0.05) and 2e-6 (1e-3) relative, the native V_new being float32;
    held to 1e-4. Measuring from the original rows at every update instead is off by 2% at 1e-3."""
    engine, media = tiny
    handle, tokens, _, cache, dvs = first_tokens(engine, media, 3, lr=lr)
    with handle:
        c = handle.controller
        v = c.v_orig.astype(np.float64).reshape(c.v_base.shape)
        for k, ev in enumerate(tokens):
            before, after = (a.astype(np.float64).reshape(v.shape) for a in cache[k : k + 2])
            written, intended = np.linalg.norm(after - before), np.linalg.norm(_normp64(v, dvs[k]) - before)
            assert written > 0
            assert ev.control.written_ratio == pytest.approx(written / intended, rel=1e-4), k
            if lr == 0.05:
                assert 0.95 < ev.control.written_ratio < 1.05


def test_a_change_below_an_f16_step_reaches_nothing(tiny):
    """With a learning rate whose changes are far below half an F16 step (2^-12 of each value), the cache
    keeps its values bit for bit and written/intended is 0: the updates ran, and vanished in rounding."""
    engine, media = tiny
    handle, tokens, _, cache, _ = first_tokens(engine, media, 2, lr=1e-9, optimizer="sgd")
    with handle:
        for ev in tokens:
            assert ev.control.alpha is not None and ev.control.dv_norm > 0 and not ev.control.skipped
            assert ev.control.written_ratio == 0.0
        for after in cache[1:]:
            np.testing.assert_array_equal(after.view(np.uint16), cache[0].view(np.uint16))


@pytest.mark.parametrize("f16c", [1, 0])
def test_value_write_measure_against_numpy(f16c):
    """value_write's written and intended (native/vr_tail.c, F16C and the portable conversion) against numpy
    float64 on the same F16 rows, subnormal, zero and large values among them: a change of many F16 steps
    (written/intended ~1) and one far below a step (nothing written: 0)."""
    lib = library()
    if lib.vr_tail_use_f16c(f16c) != f16c:
        pytest.skip("this CPU has no F16C")
    try:
        gen = torch.Generator().manual_seed(3)
        scales = torch.logspace(-6, 2, 41).view(-1, 1, 1)  # rows of subnormal halves up to ~100
        v = (torch.randn(41, 2, 128, generator=gen) * scales).half().float()  # as the cache holds them
        v[3, 1] = 0.0
        norm = v.norm(dim=-1, keepdim=True)
        previous = v.reshape(41, -1).half().numpy()
        old = previous.astype(np.float64)
        dv = torch.randn(v.shape, generator=gen) * 1e-2 * scales
        w = value_write(v, dv, norm, previous)
        v_new = _normp64(v.double().numpy(), dv.double().numpy()).reshape(41, -1)
        assert w.written == pytest.approx(np.linalg.norm(w.v16.astype(np.float64) - old), rel=1e-6)
        assert w.intended == pytest.approx(np.linalg.norm(v_new - old), rel=1e-5)  # V_new in float32 natively
        assert 0.95 < w.ratio < 1.05 and w.dv_norm == pytest.approx(float(dv.double().norm()), rel=1e-6)
        still = value_write(v, dv * 1e-7, norm, previous)  # ~1e-9 of each value: below any F16 step
        assert still.written == 0.0 and still.ratio == 0.0 and 0 < still.intended < 1e-6 * float(norm.norm())
        np.testing.assert_array_equal(still.v16, previous)  # the same values (a zero may change its sign)
        unmeasured = value_write(v, dv, norm)
        assert math.isnan(unmeasured.written) and unmeasured.ratio is None
        np.testing.assert_array_equal(unmeasured.v16.view(np.uint16), w.v16.view(np.uint16))
        with pytest.raises(ValueError, match="rows before the write"):
            value_write(v, dv, norm, previous[1:])
    finally:
        lib.vr_tail_use_f16c(1)


@pytest.mark.parametrize("f16c", [1, 0])
def test_every_half_is_read_back_exactly(f16c):
    """The measure reads the cache's F16 values back as floats: for every finite half h, in groups of one
    exponent and sign (1,024 values within a factor of 2, so that float32 sums hold them to ~1e-7), the
    distance to new values of 0 is numpy's float64 sqrt(Σ h²); to new values of 1, sqrt(Σ (1 - h)²) over
    all of them (the sign)."""
    lib = library()
    if lib.vr_tail_use_f16c(f16c) != f16c:
        pytest.skip("this CPU has no F16C")
    try:
        bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
        halves = bits.view(np.float16)
        finite = np.isfinite(halves)
        zero = torch.zeros(8, 1, 128)  # normp of a zero vector is zero (the norm's clamp): new values of 0
        for group in range(64):  # sign and exponent: the top 6 bits
            h = halves[(bits >> 10) == group]
            if not np.isfinite(h).all():
                continue
            w = value_write(zero, zero, zero.norm(dim=-1, keepdim=True), h.reshape(8, 128))
            expected = math.sqrt(float((h.astype(np.float64) ** 2).sum()))
            assert w.written == pytest.approx(expected, rel=1e-6, abs=1e-30), group
            assert w.intended == pytest.approx(expected, rel=1e-6, abs=1e-30), group
        h = np.concatenate([halves[finite], np.zeros(-finite.sum() % 128, np.float16)]).reshape(-1, 1, 128)
        ones = torch.ones(h.shape)  # normp(1 + 0) = 1: every value written is 1.0
        w = value_write(ones, torch.zeros_like(ones), ones.norm(dim=-1, keepdim=True), h.reshape(len(h), -1))
        assert np.all(w.v16 == 1.0)
        assert w.written == pytest.approx(math.sqrt(((1.0 - h.astype(np.float64)) ** 2).sum()), rel=1e-6)
        one = torch.ones(1, 1, 128)
        infinite = np.full((1, 128), np.inf, np.float16)
        assert math.isinf(value_write(one, torch.zeros_like(one), one.norm(dim=-1, keepdim=True), infinite).written)
    finally:
        lib.vr_tail_use_f16c(1)


def test_control_state_defaults_and_the_summary():
    """Old six-field ControlStates still build (the new figures default to none), the per-token columns carry the new
    columns, and the summary's skip count, median written/intended and largest bound are the hand-worked
    figures of this answer: updates at steps 1, 2, 4 (ratios 0.5 and 1.0, one skipped; bounds 0.2, 0.7, 0.1)."""
    old = ControlState(0.1, 0.1, None, 0.0, None, None)
    assert (old.head_rows, old.head_bound, old.written_ratio, old.skipped) == (None, None, None, False)
    control = [
        ControlState(0.1, 0.1, 1, 0.5, 5.0, 1e-3, 2048, 0.2, 0.5),
        ControlState(0.2, 0.2, 1, 0.5, 4.0, 1e-3, 2048, 0.7, None, True),
        ControlState(0.15, 0.2, None, 0.5, None, None),
        ControlState(0.1, 0.2, -1, 0.9, 6.0, 1e-3, 512, 0.1, 1.0),
    ]
    a = Answer("vreason", "q", tokens=[1, 2, 3, 4], entropy=[1.0, 2.0, 1.0, 0.5], control=control)
    s = summarize(a)
    assert s.n_updates == 3 and s.n_skipped == 1
    assert s.median_written_ratio == pytest.approx(0.75) and s.max_head_bound == 0.7
    cols = answer_fields(a.to_dict(), PER_TOKEN_FIELDS)
    assert cols["head_rows"] == [2048, 2048, None, 512] and cols["skipped"] == [False, True, False, False]
    assert cols["written_ratio"] == [0.5, None, None, 1.0]
    base = summarize(Answer("base", "q", tokens=[1], entropy=[1.0], control=[None]))
    assert base.n_skipped is None and base.median_written_ratio is None and base.max_head_bound is None


def test_run_json_has_the_guard_fields(tiny_model_factory, clip, vreason):
    """`vreason run --json` carries per token head_rows, head_bound, written_ratio and skipped, aligned with
    the tokens, and their summary under `controller`; a tiny model's 1,024 rows never reach the cap."""
    t = tiny_model_factory()
    code, out, err = vreason(
        ["run", "--json", "--mode", "vreason", "--every", "1", "--lr", "0.05", "--video", str(clip), "--fps", "2"]
        + ["--max-frames", "4", "--model", str(t.model_path), "--mmproj", str(t.mmproj_path), "--max-tokens", "3"]
        + ["--threads", "1", "-q", "What happens?"]
    )
    assert code == 0, err
    j = json.loads(out)
    n = j["n_tokens"]
    assert all(len(j[k]) == n for k in ("head_rows", "head_bound", "written_ratio", "skipped"))
    assert all(0 < r <= 1024 for r in j["head_rows"]) and j["skipped"] == [False] * n
    assert all(0.0 <= b <= 0.01 for b in j["head_bound"])  # head_error met: the cap never binds
    assert all(0.95 < r < 1.05 for r in j["written_ratio"])
    ctl = j["controller"]
    assert ctl["n_skipped"] == 0 and ctl["max_head_bound"] == max(j["head_bound"])
    assert ctl["median_written_ratio"] == pytest.approx(float(np.median(j["written_ratio"])))


# ---- GGUFMatrix and vr_tail_grad_dv: what the native code trusts is checked first


def f32_matrix(n_rows: int, n_cols: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An F32 GGUF tensor's rows as the file holds them ([n_rows, row bytes]) and its values."""
    w = np.random.default_rng(seed).standard_normal((n_rows, n_cols)).astype(np.float32)
    return w.view(np.uint8).reshape(n_rows, -1), w


def test_gguf_matrix_takes_good_inputs():
    """The checks refuse nothing valid: ids of any integer type, a list, all rows, no rows; the products
    equal numpy float64's."""
    raw, w = f32_matrix(37, 64)
    m = GGUFMatrix(raw, int(Q.F32), 64, threads=1)
    x, g = torch.randn(64, dtype=torch.float32), torch.randn(5, dtype=torch.float32)
    for ids in ([0, 36, 5, 5, 17], np.array([0, 36, 5, 5, 17], np.int32), np.array([0, 36, 5, 5, 17], np.uint16)):
        rows = w[np.asarray(ids)].astype(np.float64)
        np.testing.assert_allclose(m.dot(ids, x).numpy(), rows @ x.double().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m.axpy(ids, g).numpy(), rows.T @ g.double().numpy(), rtol=1e-5, atol=1e-5)
    assert m.dot(np.zeros(0, np.int64), x).numel() == 0 and not m.axpy([], torch.zeros(0)).any()
    np.testing.assert_allclose(m.mv(x).numpy(), w.astype(np.float64) @ x.double().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.dot([0, 37], torch.zeros(64)), r"row ids must lie in \[0, 37\): got 0\.\.37"),
        (lambda m: m.dot([-1, 2], torch.zeros(64)), r"row ids must lie in \[0, 37\)"),
        (lambda m: m.axpy(np.array([1 << 40]), torch.zeros(1)), r"row ids must lie in"),
        (lambda m: m.dot(np.array([0.0, 1.0]), torch.zeros(64)), "1-D array of integers, not float64"),
        (lambda m: m.axpy(np.array([[0, 1]]), torch.zeros(2)), r"1-D array of integers, not int64 of shape \(1, 2\)"),
        (lambda m: m.dot([0, 1], torch.zeros(63)), r"x must be a vector of 64 values, not of shape \(63,\)"),
        (lambda m: m.dot(None, torch.zeros(2, 64)), r"x must be a vector of 64 values"),
        (lambda m: m.axpy([0, 1], torch.zeros(3)), r"the rows' weights must be a vector of 2 values"),
        (lambda m: m.axpy(None, torch.zeros(36)), r"the rows' weights must be a vector of 37 values"),
    ],
    ids=[
        "id-past-end",
        "negative-id",
        "huge-id",
        "float-ids",
        "2d-ids",
        "short-x",
        "2d-x",
        "coef-vs-ids",
        "coef-vs-rows",
    ],
)
def test_gguf_matrix_refuses_what_it_would_read_out_of_bounds(call, message):
    """Row ids outside the matrix, ids that are not integers, vectors of the wrong length: a ValueError that
    says what is wrong, before the kernels read anything."""
    raw, _ = f32_matrix(37, 64)
    with pytest.raises(ValueError, match=message):
        call(GGUFMatrix(raw, int(Q.F32), 64, threads=1))


def test_gguf_matrix_refuses_rows_it_cannot_read():
    """Rows whose size does not match their type and length, llama.cpp's copy of another shape, and a type the
    kernels do not read (vr_rows.c's return code, -1): each a ValueError."""
    raw, _ = f32_matrix(37, 64)
    with pytest.raises(ValueError, match="do not hold 63 values of type F32"):
        GGUFMatrix(raw, int(Q.F32), 63)
    with pytest.raises(ValueError, match="do not hold 64 values of type F16"):
        GGUFMatrix(raw, int(Q.F16), 64)
    with pytest.raises(ValueError, match="llama.cpp's copy of the rows has shape"):
        GGUFMatrix(raw, int(Q.F32), 64, shared=raw[1:])
    q5 = GGUFMatrix(np.zeros((2, 176), np.uint8), int(Q.Q5_K), 256, threads=1)  # well-formed, not readable
    with pytest.raises(ValueError, match=r"cannot read Q5_K rows of 256 values \(error -1\)"):
        q5.dot(None, torch.zeros(256))
    with pytest.raises(ValueError, match=r"W.·g: native/vr_rows.c cannot read Q5_K"):
        q5.axpy([0, 1], torch.ones(2))


@pytest.fixture(scope="module")
def tail(tiny_model_factory) -> Tail:
    """The tiny model's tail with its F16 matrices read in place: grad_dv runs in native code."""
    t = Tail.from_gguf(read_model_info(tiny_model_factory().model_path), "cpu", "gguf")
    assert t._native is not None
    return t


def tail_inputs(tail: Tail, n_rows: int, seed: int = 0) -> tuple[TailInputs, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs of the right shapes for grad_dv: (inputs, grad_h, V, dV)."""
    info, gen = tail.info, torch.Generator().manual_seed(seed)
    n_embd, n_ff = tail.w_down.n_rows, tail.w_down.n_cols
    probs = torch.softmax(torch.randn(info.n_head, n_rows, generator=gen), -1)
    inp = TailInputs(probs, *(torch.randn(n, generator=gen) for n in (n_embd, n_ff, n_ff, n_embd)))
    v = torch.randn(n_rows, info.n_head_kv, info.head_dim, generator=gen)
    return inp, torch.randn(n_embd, generator=gen), v, 0.1 * torch.randn(v.shape, generator=gen)


def test_native_grad_dv_takes_good_inputs(tail):
    """The checks refuse nothing valid: the native gradient equals the torch one on the same inputs."""
    inp, grad_h, v, dv = tail_inputs(tail, 9)
    norm = v.norm(dim=-1, keepdim=True)
    expected = norm_preserving_vjp(v, dv, tail.backward_at_llama_state(inp, grad_h), norm)
    torch.testing.assert_close(tail.grad_dv(inp, grad_h, v, dv, norm), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i, g, v, d: (i, g[1:], v, d), "the tail's grad_h must hold"),
        (lambda i, g, v, d: (TailInputs(i.probs, i.ffn_inp, i.gate[1:], i.up, i.y), g, v, d), "the tail's gate must"),
        (lambda i, g, v, d: (TailInputs(i.probs[:, 1:], i.ffn_inp, i.gate, i.up, i.y), g, v, d), "attention probab"),
        (lambda i, g, v, d: (i, g, v, d[1:]), r"dV of shape"),
        (lambda i, g, v, d: (i, g, v[:, :, 1:], d[:, :, 1:]), r"V of shape"),
        (lambda i, g, v, d: (i, g.double(), v, d), "grad_h must hold .* float32 values"),
    ],
    ids=["grad_h", "gate", "probs", "dv", "head_dim", "dtype"],
)
def test_native_grad_dv_refuses_inputs_of_the_wrong_size(tail, change, message):
    """Vectors whose size the native code would trust from the matrices and the model's dimensions: a
    ValueError naming the input, before anything is read."""
    inp, grad_h, v, dv = change(*tail_inputs(tail, 9))
    with pytest.raises(ValueError, match=message):
        tail.grad_dv(inp, grad_h, v, dv, v.norm(dim=-1, keepdim=True))


def test_vr_tail_grad_dv_refuses_dimensions_that_do_not_fit(tail):
    """vr_tail_grad_dv itself: 0 on the tail's own shapes; -4 (nothing read) for matrices that do not fit one
    another or the heads, n_head not a multiple of n_kv, a row stride below the rows; -3 for a head_dim above
    its buffer. Python raises a ValueError naming the shapes on -4 (matrices given in the wrong order)."""
    info, fn = tail.info, library().vr_tail_grad_dv
    inp, grad_h, v, dv = tail_inputs(tail, 9)
    norm, out = v.norm(dim=-1, keepdim=True), torch.empty_like(v)
    mats = {
        k: m.as_native() for k, m in (("down", tail.w_down), ("gate", tail.w_gate), ("up", tail.w_up), ("o", tail.w_o))
    }
    names = ("y", "out_norm", "ffn_inp", "ffn_norm", "gate_act", "up_act")
    vecs = {
        k: t.contiguous() for k, t in zip(names, (inp.y, tail.out_norm, inp.ffn_inp, tail.ffn_norm, inp.gate, inp.up))
    }

    def call(down=None, gate=None, up=None, o=None, n_head=info.n_head, n_kv=info.n_head_kv, d=info.head_dim, ld=9):
        ms = [m if m is not None else mats[k] for k, m in zip(("down", "gate", "up", "o"), (down, gate, up, o))]
        args = GradDVArgs(*(ctypes.pointer(m) for m in ms), **{k: t.data_ptr() for k, t in vecs.items()})
        args.eps, args.grad_h, args.probs, args.probs_ld = tail.eps, grad_h.data_ptr(), inp.probs.data_ptr(), ld
        args.v_base, args.dv, args.v_norm, args.grad_dv = v.data_ptr(), dv.data_ptr(), norm.data_ptr(), out.data_ptr()
        args.n_head, args.n_kv, args.head_dim, args.n_rows, args.threads = n_head, n_kv, d, 9, 1
        return fn(ctypes.byref(args))

    assert call() == 0
    o_short = tail.w_o.as_native()
    o_short.n_cols -= info.head_dim  # one head fewer than n_head
    assert call(gate=mats["o"]) == -4 and call(up=mats["down"]) == -4 and call(o=o_short) == -4
    assert call(n_kv=info.n_head + 1) == -4 and call(ld=8) == -4 and call(n_kv=0) == -4
    o_more = tail.w_o.as_native()
    o_more.n_cols += info.head_dim  # o as for n_head + 1 query heads: only their grouping in kv heads is wrong
    assert info.n_head >= 2 and call(o=o_more, n_head=info.n_head + 1, n_kv=info.n_head) == -4
    assert call(d=2048) == -3
    swapped = _NativeGradDV(tail.w_down, tail.w_o, tail.w_up, tail.w_gate)  # the checks of lengths pass: down's
    with pytest.raises(ValueError, match=r"the tail's matrices \(down .* do not fit n_head"):
        swapped(inp, grad_h, v, dv, norm, tail)

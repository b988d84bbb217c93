"""V-Reason against real llama.cpp: the hook, the PyTorch tail, the controller and Lite.

Every check compares two independent computations: PyTorch's tail against llama.cpp's own logits, the
tail's gradient against finite differences taken by re-decoding in llama.cpp, the EMA rule against a
plain re-computation from the recorded entropies, Lite's kept rows against a norm ranking computed here.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vreason_local.clips import make_clip
from vreason_local.decoding import VReasonDecoding, decoding_for
from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.errors import UserError
from vreason_local.events import Notice, Prefilled, TokenEvent
from vreason_local.families import FAMILY_NAMES
from vreason_local.gguf_info import read_model_info
from vreason_local.hook import verify_layout
from vreason_local.media import Media, load_video
from vreason_local.native import ggml, library
from vreason_local.sampling import entropy
from vreason_local.tail import (
    Tail,
    TailInputs,
    norm_preserving,
    norm_preserving_f16,
    norm_preserving_vjp,
    rms_norm,
    rms_norm_vjp,
)
from vreason_local.tiny import make_tiny
from vreason_local.video import FrameSampling
from vreason_local.vreason import SELFCHECK_TOL, VReasonSettings

ARCHES = list(FAMILY_NAMES)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("vr") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))


@pytest.fixture(scope="module")
def engines(tiny_model_factory):
    made: dict[str, Engine] = {}

    def get(arch: str = "qwen25vl") -> Engine:
        if arch not in made:
            t = tiny_model_factory(arch)
            made[arch] = Engine(t.model_path, t.mmproj_path, EngineSettings(n_ctx=2048, hook=True))
        return made[arch]

    yield get
    for e in made.values():
        e.close()


def video(engine: Engine, clip: Path, frames: int = 6) -> Media:
    return load_video(clip, FrameSampling(fps=2.0, max_frames=frames), patch=engine.projector.patch_size).media


def answer(engine: Engine, media: Media, mode: str = "vreason", max_tokens: int = 12, **vr) -> tuple[list, object]:
    events = list(
        engine.ask(
            media,
            "What happens in the video?",
            GenerationSettings(max_tokens=max_tokens),
            decoding_for(mode, VReasonSettings(**vr)),
        )
    )
    return events, events[-1].answer


def paused_at_first_update(engine: Engine, media: Media, **vr):
    """Run up to the first token (every=1: step 1 updates) and leave the generator paused there.

    At that point the hook holds step 1's captures and the cache holds the updated value rows; the
    last decoded token is the question's last, at position n_past-1.
    """
    gen = engine.ask(
        media, "Describe it.", GenerationSettings(max_tokens=4), VReasonDecoding(VReasonSettings(every=1, **vr))
    )
    for ev in gen:
        if isinstance(ev, TokenEvent):
            return gen, ev
    raise AssertionError("no token")


def redecode_last(engine: Engine) -> np.ndarray:
    """llama.cpp's logits for the last prompt token again, attending over the cache as it is now."""
    c = engine._cache
    pos = c.encoding.n_past + len(c.turns) - 1
    engine.ctx.remove_from(pos)
    engine.ctx.decode_tokens([c.turns[-1]], pos)
    return engine.ctx.logits().copy().copy()


def test_layout_check_passes_and_refuses_a_mismatch():
    lib = library()
    verify_layout(lib, ggml())  # the real build: must pass

    class Shifted:  # the same library, but a struct 8 bytes larger than ggml's
        def __getattr__(self, name):
            return getattr(lib, name)

        def vr_tensor_size(self):
            return lib.vr_tensor_size() + 8

    with pytest.raises(UserError, match="layout"):
        verify_layout(Shifted(), ggml())


def test_hook_costs_nothing_when_off(engines, clip, tiny_model_factory):
    e = engines()
    list(e.ask(video(e, clip), "q", GenerationSettings(max_tokens=3), VReasonDecoding(VReasonSettings(every=1))))
    list(e.ask(video(e, clip), "q", GenerationSettings(max_tokens=3), "base"))
    asked, observed = e.hook.counts
    assert asked > 0 and observed == 0  # still installed, but after a V-Reason answer it asks for no node
    t = tiny_model_factory()
    with Engine(t.model_path, t.mmproj_path, EngineSettings(n_ctx=1024, hook=False)) as plain:
        assert plain.hook is None  # engines for base answers only install no callback at all


def test_lr0_gives_base_tokens(engines, clip):
    e = engines()
    m = video(e, clip)
    _, base = answer(e, m, mode="base", max_tokens=16)
    _, vr = answer(e, m, max_tokens=16, lr=0.0)
    assert vr.tokens == base.tokens
    assert vr.entropy == pytest.approx(base.entropy, abs=1e-6)


def test_vreason_changes_the_run_when_lr_positive(engines, clip):
    e = engines()
    m = video(e, clip)
    _, base = answer(e, m, mode="base", max_tokens=16)
    _, vr = answer(e, m, max_tokens=16, lr=0.05, every=1)
    assert any(c.dv_norm > 0 for c in vr.control)
    n = min(len(base.entropy), len(vr.entropy))
    assert not np.allclose(base.entropy[1:n], vr.entropy[1:n], atol=1e-4)
    _, again = answer(e, m, mode="base", max_tokens=16)
    assert again.tokens == base.tokens  # the original value rows were restored after the V-Reason answer


@pytest.mark.parametrize("arch", ARCHES)
def test_tail_reproduces_llama_logits(engines, clip, arch):
    """At dV = 0 the PyTorch tail gives llama.cpp's logits over the whole vocabulary."""
    e = engines(arch)
    gen, _ = paused_at_first_update(e, video(e, clip), lr=0.0)
    with gen:
        c = gen.controller
        logits = e.ctx.logits().copy()
        ids = np.arange(e.model.n_vocab)
        _, z = c.loss(c.inputs(), torch.zeros_like(c.dv), ids, logits, 1)
        diff = np.abs(z.detach().numpy() - logits).max()
        assert diff < 1e-3 * max(1.0, np.abs(logits).max()), diff


@pytest.mark.parametrize("arch", ARCHES)
def test_gradient_matches_finite_differences_through_llama(engines, clip, arch):
    """d loss / d dV from the tail against central differences of the loss llama.cpp computes."""
    e = engines(arch)
    gen, _ = paused_at_first_update(e, video(e, clip), lr=0.0)
    with gen:
        c = gen.controller
        inp, logits = c.inputs(), e.ctx.logits().copy()
        alpha = 1
        ids = np.arange(e.model.n_vocab)
        dv = torch.zeros_like(c.dv, requires_grad=True)
        loss, _ = c.loss(inp, dv, ids, logits, alpha)
        loss.backward()
        g = dv.grad
        direction = g / g.norm()  # the steepest direction: the largest, best-conditioned difference
        # llama.cpp stores V in F16: its rounding acts like noise of ~1e-3 relative on every row, so the
        # step must be large for the difference to dominate it (measured: FD spread ~5% at 0.05, <1% at 0.2);
        # the norm-preserving map's curvature at this step changes the tail's own FD by <0.1%.
        scale = float(c.v_base.norm(dim=-1).mean())
        eps = 0.2 * scale

        def llama_loss(offset: torch.Tensor) -> float:
            v = norm_preserving(c.v_base, offset).reshape(c.n_rows, -1).to(torch.float16).numpy()
            e.hook.write_values(c.rows, v, e.v_transposed)
            z = redecode_last(e)
            return alpha * (math.log(z.size) - entropy(z))

        fd = (llama_loss(eps * direction) - llama_loss(-eps * direction)) / (2 * eps)
        analytic = float((g * direction).sum())
        assert fd == pytest.approx(analytic, rel=0.02, abs=1e-6)


def test_norm_preserving_gradient_is_autograds():
    """The first step's gradient through V_new = (V + dV)·||V||/||V + dV|| is written out by hand
    (norm_preserving_vjp): against autograd of norm_preserving in float64, at dV = 0 and away from it."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(7, 2, 16, generator=gen, dtype=torch.float64)
    g = torch.randn(7, 2, 16, generator=gen, dtype=torch.float64)
    for scale in (0.0, 0.1, 3.0):
        dv = (scale * torch.randn(7, 2, 16, generator=gen, dtype=torch.float64)).requires_grad_(True)
        (norm_preserving(v, dv) * g).sum().backward()
        torch.testing.assert_close(norm_preserving_vjp(v, dv.detach(), g), dv.grad, rtol=1e-12, atol=1e-12)


def test_native_write_and_final_norm_are_the_torch_ones():
    """On the CPU the write (norm_preserving_f16) and llama.cpp's final hidden state (Tail.llama_state) run in
    native code: against the torch functions, a vector of zeros (the clamp) included."""
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(37, 2, 128, generator=gen)
    v[5, 1] = 0.0
    dv = torch.randn(v.shape, generator=gen) * 0.1
    dv[5, 1] = 0.0
    base_norm = v.norm(dim=-1, keepdim=True)
    v16, dv_norm = norm_preserving_f16(v, dv, base_norm)
    expected = norm_preserving(v, dv, base_norm).reshape(37, -1)
    np.testing.assert_allclose(v16.astype(np.float32), expected.half().float().numpy(), rtol=1e-3, atol=1e-6)
    assert v16.dtype == np.float16 and dv_norm == pytest.approx(float(dv.norm()), rel=1e-6)
    x, w = torch.randn(2048, generator=gen), torch.randn(2048, generator=gen)
    cpu_tail = SimpleNamespace(device=torch.device("cpu"), out_norm=w, eps=1e-6)
    inp = TailInputs(torch.zeros(1, 1), x, x, x, x)
    torch.testing.assert_close(Tail.llama_state(cpu_tail, inp), rms_norm(x, w, 1e-6), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("f16c", [1, 0])
def test_native_halves_round_as_numpy(f16c):
    """The write's float -> F16 conversion (native/vr_tail.c), with F16C and the portable one: bit for bit
    numpy's, on normal values, halfway cases, subnormals, overflow, infinities and NaN."""
    lib = library()
    if lib.vr_tail_use_f16c(f16c) != f16c:
        pytest.skip("this CPU has no F16C")
    try:
        rng = np.random.default_rng(1)
        x = np.concatenate(
            [
                rng.normal(size=4096).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 4096),
                np.arange(0, 4096, dtype=np.float16).view(np.uint16).astype(np.float32),  # integers, some halfway
                (np.arange(-2048, 2048, dtype=np.int32) * np.float32(2.0**-25)),  # subnormal halves and their ties
                np.array([65504, 65519.99, 65520, 1e9, -1e9, np.inf, -np.inf, 0.0, -0.0], np.float32),
            ]
        ).astype(np.float32)
        y = np.empty(len(x), np.float16)
        lib.vr_tail_halves(x.ctypes.data, y.ctypes.data, len(x))
        with np.errstate(over="ignore"):  # numpy warns where it rounds to infinity, as it should
            expected = x.astype(np.float16)
        np.testing.assert_array_equal(y.view(np.uint16), expected.view(np.uint16))
        nan = np.array([np.nan], np.float32)
        lib.vr_tail_halves(nan.ctypes.data, y.ctypes.data, 1)
        assert np.isnan(y[0])
    finally:
        lib.vr_tail_use_f16c(1)


def test_rms_norm_gradient_is_autograds():
    """The FFN's and the final norm's backward at llama.cpp's state, written out (rms_norm_vjp): against
    autograd of rms_norm in float64."""
    gen = torch.Generator().manual_seed(1)
    x, w, g = (torch.randn(64, generator=gen, dtype=torch.float64) for _ in range(3))
    x.requires_grad_(True)
    (rms_norm(x, w, 1e-6) * g).sum().backward()
    torch.testing.assert_close(rms_norm_vjp(x.detach(), w, 1e-6, g), x.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("where", ["gradient", "offset"])
def test_a_non_finite_update_is_skipped_and_the_values_restored(engines, clip, where, monkeypatch):
    """A non-finite gradient (here a NaN from the tail) or value offset after the optimiser step (here an
    infinite learning rate) skips the update: one notice says so, dV is zero again and llama.cpp's cache
    holds the original value rows; the answer goes on."""
    e = engines()
    gen = e.ask(
        video(e, clip), "Describe it.", GenerationSettings(max_tokens=4), VReasonDecoding(VReasonSettings(every=1))
    )
    with gen:
        notices = []
        for ev in gen:
            if isinstance(ev, Prefilled):
                c = gen.controller
                if where == "gradient":  # the engine's tail is shared: monkeypatch restores it
                    monkeypatch.setattr(c.tail, "grad_dv", lambda *args, v=c.v_base: torch.full_like(v, math.nan))
                else:
                    c.opt.lr = math.inf
            elif isinstance(ev, Notice):
                notices.append(ev.message)
            elif isinstance(ev, TokenEvent):
                break
        why = "non-finite loss or gradient" if where == "gradient" else "non-finite value offset"
        assert len(notices) == 1 and why in notices[0] and "dV reset to zero" in notices[0]
        assert not c.dv.detach().any() and c.dv_norm == 0.0
        np.testing.assert_array_equal(e.hook.read_values(c.rows, c.transposed), c.v_orig)


def test_cache_write_is_the_method(engines, clip):
    """After an update, llama.cpp's logits (re-decoding the same token) equal the tail's prediction."""
    e = engines()
    gen, ev = paused_at_first_update(e, video(e, clip), lr=0.2)
    with gen:
        c = gen.controller
        assert ev.control.alpha is not None and ev.control.dv_norm > 0
        inp = c.inputs()  # step 1's captures: the query before the update
        logits_before = e.ctx.logits().copy()
        # the tail's prediction for the new dV, against the values that were cached when step 1 ran
        v_cache_then = c.v_base
        c_v, c._v_cache = c.v_cache, v_cache_then
        _, predicted = c.loss(inp, c.dv.detach(), np.arange(e.model.n_vocab), logits_before, 1)
        c._v_cache = c_v
        after = redecode_last(e)
        moved = np.abs(after - logits_before).max()
        err = np.abs(predicted.detach().numpy() - after).max()
        assert moved > 10 * err, (moved, err)  # the write changed the logits, and exactly as predicted
        assert err < 5e-3 * max(1.0, np.abs(after).max())


def test_alpha_follows_the_ema_rule(engines, clip):
    e = engines()
    _, a = answer(e, video(e, clip), max_tokens=20, beta=0.8, every=2, lr=0.01)
    ema, peak = 0.0, -math.inf
    for k, (h, c) in enumerate(zip(a.entropy, a.control), start=1):
        ema = 0.8 * ema + 0.2 * h
        peak = max(peak, ema)
        assert c.ema == pytest.approx(ema) and c.peak == pytest.approx(peak)
        if k % 2:
            assert c.alpha is None and c.update_ms is None
        else:
            assert c.alpha == (-1 if ema < peak else 1)
            assert c.selfcheck < SELFCHECK_TOL


def test_self_check_catches_a_tail_of_other_weights(engines, clip, tmp_path):
    """An update's first step never runs the tail's forward (llama.cpp's is captured), so the self-check
    does: at an answer's first update, with all of the tail's weights. A tail of another model of the
    same shape (other random weights) fails it, and the later updates' check (llama.cpp's state through
    the tail's head) fails too; a warning says so and the answer completes."""
    e = engines()
    other = make_tiny(tmp_path, arch="qwen25vl", shape="tiny", seed=1)
    settings = VReasonSettings(every=1)
    e._tail = Tail.from_gguf(read_model_info(other.model_path), settings.device, settings.dtype)
    e._tail_key = (settings.device, settings.dtype)
    try:
        events, a = answer(e, video(e, clip), max_tokens=4, every=1)
    finally:
        e._tail.head.close()
        e._tail = None  # the next answer loads the engine's own
    checks = [c.selfcheck for c in a.control if c.alpha is not None]
    assert len(checks) == 4 and all(c > SELFCHECK_TOL for c in checks), checks
    assert any(isinstance(ev, Notice) and "self-check" in ev.message for ev in events)
    _, own = answer(e, video(e, clip), max_tokens=4, every=1)
    assert all(c.selfcheck < SELFCHECK_TOL for c in own.control) and e._tail.verified
    # verified once: later answers check llama.cpp's state only, no forward pass
    forwards = []
    hidden = e._tail.hidden
    e._tail.hidden = lambda *args: forwards.append(1) or hidden(*args)
    _, again = answer(e, video(e, clip), max_tokens=4, every=1)
    del e._tail.hidden
    assert not forwards and all(c.selfcheck < SELFCHECK_TOL for c in again.control)


def test_lite_keeps_the_highest_norm_half(engines, clip):
    e = engines()
    m = video(e, clip, frames=6)
    list(e.ask(m, "warm", GenerationSettings(max_tokens=1), "base"))
    rows = e._cache.media_cells.copy()
    n_cells = e._cache.n_prefix_cells
    values = e.hook.read_values(rows, e.v_transposed)
    norms = np.linalg.norm(values.astype(np.float32).reshape(len(rows), e.info.n_head_kv, -1), axis=2).sum(1)
    expected = np.sort(np.argsort(-norms, kind="stable")[: len(rows) - len(rows) // 2])
    gen = e.ask(m, "What happens?", GenerationSettings(max_tokens=3), "lite")
    for ev in gen:
        if isinstance(ev, TokenEvent):
            break
    kept = gen.controller.rows
    assert len(kept) == len(expected) == gen.controller.n_rows
    np.testing.assert_array_equal(gen.controller.v_orig, values[expected])  # exactly those rows, bit for bit
    # llama.cpp's own count of cached cells: the prefix less the dropped rows, plus the question
    in_cache = struct.unpack_from("<I", e.ctx.state_get(), 12)[0]
    assert in_cache == e._cache.n_cells == n_cells - len(rows) // 2 + len(e._cache.turns)
    rest = list(gen)
    assert rest[-1].answer.n_video_tokens_kept == len(expected)
    _, again = answer(e, m, mode="base", max_tokens=3)  # an independent question reloads the full video
    assert len(e._cache.media_cells) == len(rows) and not e._cache.pruned


def test_lite_scores_each_kv_head_apart(tiny_model_factory, clip):
    """Lite's score is the method's: a row's value norm per kv head, summed over heads, not one norm over all
    heads. Here the media rows' values are set so that the two disagree on every row: half have both heads at
    norm ~1 (sum 2, one norm 1.41), half have one head at ~1.9 and the other at ~0.05 (sum 1.95, one norm 1.90),
    with 1% jitter. Lite must keep exactly the first half. Its own engine, as the set values stay in the
    prefix's saved state."""
    t = tiny_model_factory()
    with Engine(t.model_path, t.mmproj_path, EngineSettings(n_ctx=2048, hook=True)) as e:
        m = video(e, clip)
        list(e.ask(m, "warm", GenerationSettings(max_tokens=1), "base"))
        rows = e._cache.media_cells.copy()
        n, n_kv = len(rows), e.info.n_head_kv
        values = e.hook.read_values(rows, e.v_transposed).astype(np.float64).reshape(n, n_kv, -1)
        rng = np.random.default_rng(0)
        balanced = np.sort(rng.permutation(n)[: n - n // 2])  # as many as Lite keeps
        heads = np.tile([1.9, 0.05], (n, 1))
        heads[balanced] = 1.0
        heads *= rng.uniform(0.99, 1.01, heads.shape)
        values *= (heads / np.linalg.norm(values, axis=2))[:, :, None]
        set_to = values.reshape(n, -1).astype(np.float16)
        e.hook.write_values(rows, set_to, e.v_transposed)
        read = set_to.astype(np.float64).reshape(n, n_kv, -1)
        by_head = np.linalg.norm(read, axis=2).sum(1)
        assert by_head[balanced].min() > np.delete(by_head, balanced).max()  # per head: the balanced half
        one_norm = np.linalg.norm(read.reshape(n, -1), axis=1)
        assert one_norm[balanced].max() < np.delete(one_norm, balanced).min()  # one norm: the other half
        with e.ask(m, "What happens?", GenerationSettings(max_tokens=2), "lite") as gen:
            for ev in gen:
                if isinstance(ev, TokenEvent):
                    break
            assert gen.controller.n_rows == len(balanced)
            np.testing.assert_array_equal(gen.controller.v_orig, set_to[balanced])


def test_text_only_controls_all_prompt_rows(engines):
    e = engines()
    handle = e.ask(
        Media.none(), "Count to three.", GenerationSettings(max_tokens=4), VReasonDecoding(VReasonSettings(every=1))
    )
    events = list(handle)
    notes = [ev.message for ev in events if isinstance(ev, Notice)]
    assert any("prompt rows" in n for n in notes)
    assert handle.controller.n_rows == len(handle.result().prompt_tokens)  # the last prompt row included


def test_non_finite_update_is_skipped(engines, clip):
    e = engines()
    settings = VReasonSettings(every=1)
    # The settings refuse an infinite lr; the guard is for non-finite offsets from anywhere (an overflow, a
    # broken kernel), so this one is set past the check: it makes every offset non-finite at once.
    object.__setattr__(settings, "lr", float("inf"))
    events = list(e.ask(video(e, clip), "q", GenerationSettings(max_tokens=6), VReasonDecoding(settings)))
    warnings = [ev.message for ev in events if isinstance(ev, Notice) and ev.level == "warning"]
    a = events[-1].answer
    assert warnings and "reset" in warnings[0]
    assert len(a.tokens) >= 1 and all(c.dv_norm == 0 for c in a.control)
    assert np.isfinite(a.entropy).all()


def test_restricted_lm_head_gradient_within_its_bound(engines, clip):
    """The LM-head rows an update keeps (tail.RestrictedHead) against all rows: the gradient at the final
    hidden state is within the bound it reports, itself within head_error; the gradient at dV too
    (measured). The full-vocabulary case, where the cap binds, is tests/test_vreason_exact.py's."""
    e = engines()
    gen, _ = paused_at_first_update(e, video(e, clip), lr=0.0)
    with gen:
        c = gen.controller
        inp, logits = c.inputs(), e.ctx.logits().copy()
        every = np.arange(e.model.n_vocab)
        h = c.tail.hidden(inp, None)
        head = c.restricted_head(inp, logits)
        kept, full = head.at(h, -1), c.restricted_head(inp, logits, every).at(h, -1)
        rel_h = float((kept.grad_h - full.grad_h).norm() / full.grad_h.norm())
        assert len(head.ids) < e.model.n_vocab and not kept.capped  # rows really dropped, and not by the cap
        assert rel_h <= kept.bound <= VReasonSettings().head_error, (rel_h, kept.bound)
        grads = {}
        for name, ids in {"full": every, "kept": head.ids}.items():
            dv = torch.zeros_like(c.dv, requires_grad=True)
            c.loss(inp, dv, ids, logits, -1)[0].backward()
            grads[name] = dv.grad
        rel = float((grads["kept"] - grads["full"]).norm() / grads["full"].norm())
        assert rel < VReasonSettings().head_error, rel


def test_lite_in_a_continued_chat_prunes_once(engines, clip):
    e = engines()
    m = video(e, clip, frames=6)
    _, first = answer(e, m, mode="lite", max_tokens=3)
    n_media = first.n_media_tokens
    handle = e.ask(m, "And then?", GenerationSettings(max_tokens=3), "lite", follow_up=first)
    second = handle.result()
    assert first.n_video_tokens_kept == second.n_video_tokens_kept == n_media - n_media // 2
    assert len(e._cache.media_cells) == first.n_video_tokens_kept and e._cache.pruned
    assert handle.encoding.snapshot is not None and second.reused_encoding  # no second encoding
    _, base = answer(e, m, mode="base", max_tokens=3)  # independent again: the whole video is back
    assert len(e._cache.media_cells) == n_media


def test_transposed_value_cache(tiny_model_factory, clip):
    """With flash attention off llama.cpp stores V transposed: reads, writes and the tail still agree."""
    t = tiny_model_factory("qwen25vl")
    with Engine(t.model_path, t.mmproj_path, EngineSettings(n_ctx=2048, hook=True, flash_attn="off")) as e:
        assert e.v_transposed
        gen, ev = paused_at_first_update(e, video(e, clip), lr=0.2)
        with gen:
            c = gen.controller
            assert ev.control.selfcheck < 1e-3
            np.testing.assert_array_equal(
                e.hook.read_values(c.rows, True), c.v_cache.reshape(c.n_rows, -1).numpy().astype(np.float16)
            )
            inp, before = c.inputs(), e.ctx.logits().copy()
            c_v, c._v_cache = c.v_cache, c.v_base
            _, predicted = c.loss(inp, c.dv.detach(), np.arange(e.model.n_vocab), before, 1)
            c._v_cache = c_v
            after = redecode_last(e)
            assert np.abs(after - before).max() > 10 * np.abs(predicted.detach().numpy() - after).max()


def test_vreason_on_an_image(engines, tmp_path):
    from vreason_local.clips import make_image
    from vreason_local.media import load_image

    e = engines()
    img = load_image(make_image(tmp_path / "x.png", (200, 150)), 336 * 336, e.projector.patch_size)
    handle = e.ask(
        img.media, "What is shown?", GenerationSettings(max_tokens=4), VReasonDecoding(VReasonSettings(every=1))
    )
    a = handle.result()
    assert handle.controller.n_rows == img.n_tokens  # the controller acts on the image's rows
    assert all(c.alpha in (-1, 1) for c in a.control)

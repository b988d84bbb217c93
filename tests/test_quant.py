"""The path the registry's models take: Q4_K_M files, on real llama.cpp.

The registry's language models are Q4_K_M: Q4_K matrices with Q6_K for the LM head and part of attn_v and
ffn_down. The files here are made the way those are, by llama.cpp's own quantiser (`llama_model_quantize`)
from generated models of the `k256` shape (every row a multiple of the K-quants' 256-value block; a
`tiny` row of 64 would make llama.cpp fall back to Q5_0 and Q8_0) and of the `mid` shape (the 3B's
layers, so the tail is the 3B's size and the `auto` storage is int8). Each check has an independent
reference: the gguf package's reader and numpy dequantisation for what the file holds (the tail reads
with its own parser and ggml's C dequantiser), the F16 source for what the quantiser kept, and
llama.cpp's own logits for the tail built from those weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch

from vreason_local.clips import make_clip
from vreason_local.decoding import VReasonDecoding
from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.errors import UserError
from vreason_local.events import Notice, TokenEvent
from vreason_local.gguf_info import open_gguf, read_model_info
from vreason_local.llama_backend import quantize
from vreason_local.media import Media, load_video
from vreason_local.settings import default_threads
from vreason_local.tail import Tail
from vreason_local.tail_weights import LMHead, dequantize
from vreason_local.tiny import TinyModel, file_names, make_tiny
from vreason_local.video import FrameSampling
from vreason_local.vreason import SELFCHECK_TOL, VReasonSettings

Q = gguf.GGMLQuantizationType
ARCHES = ["qwen25vl", "qwen3vl"]  # untied LM head (output.weight), tied (token_embd.weight)
TAIL = ("attn_output", "ffn_gate", "ffn_up", "ffn_down")  # the last layer's matrices the tail reads
# pick_dtype's threshold: tail matrices above this many bytes in float32 are stored as int8 on the CPU
# (when their type is not one the in-place kernels read).
INT8_ABOVE = 128 << 20


@dataclass(frozen=True)
class Quantised:
    """A generated F16 model and llama.cpp's quantisations of it (type name -> language model path)."""

    source: TinyModel
    files: dict[str, Path]

    def pair(self, quant: str) -> tuple[Path, Path]:
        return self.files[quant], self.source.mmproj_path


@pytest.fixture(scope="module")
def k256(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Quantised]:
    """`(arch) -> Quantised` with Q4_K_M and Q6_K files of the k256 shape, each made once."""
    root = tmp_path_factory.mktemp("k256")
    made: dict[str, Quantised] = {}

    def get(arch: str) -> Quantised:
        if arch not in made:
            src = make_tiny(root, arch=arch, shape="k256")
            files = {
                q: quantize(src.model_path, root / file_names(arch, "k256", q)[0], q, default_threads())
                for q in ("q4_k_m", "q6_k")
            }
            made[arch] = Quantised(src, files)
        return made[arch]

    return get


@pytest.fixture(scope="module")
def mid_q4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(Q4_K_M language model, projector) of the qwen25vl `mid` shape; the 313 MB F16 source is removed."""
    root = tmp_path_factory.mktemp("mid")
    src = make_tiny(root, arch="qwen25vl", shape="mid")
    path = quantize(src.model_path, root / file_names("qwen25vl", "mid", "q4_k_m")[0], "q4_k_m", default_threads())
    src.model_path.unlink()
    return path, src.mmproj_path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))


def types(path: Path) -> dict[str, Q]:
    """Each tensor's type, as the gguf package reads the file."""
    return {t.name: Q(t.tensor_type) for t in gguf.GGUFReader(path).tensors}


def reference_rows(path: Path, name: str) -> np.ndarray:
    """A tensor's values from the gguf package (its reader and numpy dequantisation), [rows, row length]."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(-1, int(t.shape[0]))


def head_name(path: Path) -> str:
    """The tensor llama.cpp uses as the LM head: output.weight, or token_embd.weight when tied."""
    return "output.weight" if "output.weight" in types(path) else "token_embd.weight"


@pytest.mark.parametrize("arch", ARCHES)
def test_quantiser_writes_k_quants(k256, arch: str) -> None:
    """llama.cpp's quantiser makes the types a downloaded Q4_K_M holds, and the tail's parser sees them."""
    q = k256(arch)
    last = f"blk.{read_model_info(q.files['q4_k_m']).n_layer - 1}."
    for quant, path in q.files.items():
        found = types(path)
        matrices = {n: t for n, t in found.items() if t not in (Q.F32, Q.F16)}
        assert set(matrices) == {n for n, t in types(q.source.model_path).items() if t == Q.F16}  # all quantised
        ours = open_gguf(path)
        assert {n: Q(t.ggml_type) for n, t in ours.tensors.items()} == found
        if quant == "q6_k":
            assert set(matrices.values()) == {Q.Q6_K}
            assert ours.fields["general.file_type"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K
            continue
        assert ours.fields["general.file_type"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        assert set(matrices.values()) == {Q.Q4_K, Q.Q6_K}
        assert matrices[head_name(path)] == Q.Q6_K  # the LM head, output or (tied) token_embd
        assert {matrices[last + m + ".weight"] for m in TAIL} == {Q.Q4_K, Q.Q6_K}  # the tail reads both
        assert ("output.weight" in found) == (arch != "qwen3vl")  # k256 ties the head for qwen3vl only


def test_quantize_refuses_in_one_line_and_leaves_no_file(k256, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A file llama.cpp cannot quantise (cut short, as an interrupted copy leaves it) and an unknown type
    are refused with one line, and nothing is left under the destination's name or a temporary one."""
    source = k256("qwen25vl").source.model_path
    cut = tmp_path_factory.mktemp("cut") / "cut.gguf"
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    out = tmp_path_factory.mktemp("out")
    for src, quant in ((cut, "q4_k_m"), (source, "q4_k_mm")):
        with pytest.raises(UserError) as err:
            quantize(src, out / "out.gguf", quant, 1)
        assert "\n" not in str(err.value) and quant in str(err.value)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("quant", ["q4_k_m", "q6_k"])
@pytest.mark.parametrize("arch", ARCHES)
def test_dequantize_k_quants_exactly(k256, arch: str, quant: str) -> None:
    """`tail_weights.dequantize` (ggml's C) equals the gguf package's numpy bit for bit on every K-quant
    tensor, and both are the F16 source within the K-quant's rounding."""
    q = k256(arch)
    path = q.files[quant]
    g = open_gguf(path)
    source = gguf.GGUFReader(q.source.model_path)
    checked = set()
    for name, t in types(path).items():
        if t not in (Q.Q4_K, Q.Q6_K):
            continue
        ours = dequantize(g.tensor_bytes(name), g.tensors[name].ggml_type).numpy()
        np.testing.assert_array_equal(ours, reference_rows(path, name), err_msg=name)
        f16 = next(s for s in source.tensors if s.name == name).data.astype(np.float32).reshape(ours.shape)
        rel = np.linalg.norm(ours - f16) / np.linalg.norm(f16)
        assert rel < {Q.Q4_K: 0.12, Q.Q6_K: 0.03}[t], (name, rel)  # measured: Q4_K ~0.09, Q6_K ~0.02
        checked.add(t)
    assert checked == ({Q.Q4_K, Q.Q6_K} if quant == "q4_k_m" else {Q.Q6_K})


@pytest.mark.parametrize("arch", ARCHES)
def test_lm_head_rows_are_the_files_head(k256, arch: str) -> None:
    """The tail's LM-head rows are the rows of output.weight, or of token_embd when tied: on the CPU the
    `auto` tail reads the K-quant matrices in place, so its products with them equal float64 products
    with the gguf package's dequantisation (to float32 rounding); the ring used off the CPU holds them
    exactly."""
    path = k256(arch).files["q4_k_m"]
    tail = Tail.from_gguf(read_model_info(path), "cpu", "auto")
    try:
        assert tail.kind == "gguf" and tail.head.in_place is not None
        assert Q(tail.head.ggml_type) == Q.Q6_K
        reference = reference_rows(path, head_name(path))
        assert head_name(path) == ("token_embd.weight" if arch == "qwen3vl" else "output.weight")
        ids = np.array([0, 1, 255, 300, 511, 997, 998, 1023])  # byte tokens, merges, Qwen's added tokens
        x = torch.from_numpy(np.random.default_rng(0).standard_normal(reference.shape[1]).astype(np.float32))
        exact = reference[ids].astype(np.float64) @ x.double().numpy()
        np.testing.assert_allclose(tail.head.in_place.dot(ids, x).numpy(), exact, rtol=1e-5, atol=1e-5)
        g = np.linspace(-1, 1, len(ids)).astype(np.float32)
        exact_t = reference[ids].astype(np.float64).T @ g.astype(np.float64)
        np.testing.assert_allclose(tail.head.in_place.axpy(ids, torch.from_numpy(g)).numpy(), exact_t, atol=1e-5)
        g_info = open_gguf(path)
        name = head_name(path)
        ring = LMHead(
            g_info.tensor_bytes(name),
            tail.head.ggml_type,
            tail.head.n_cols,
            torch.device("cpu"),
            torch.float32,
            in_place=False,
        )
        order, rows = ring.rows(ids)
        assert sorted(order) == sorted(ids)
        np.testing.assert_array_equal(rows.numpy(), reference[order])
        ring.close()
    finally:
        tail.head.close()


def video(engine: Engine, clip: Path) -> Media:
    return load_video(clip, FrameSampling(fps=2.0, max_frames=6), patch=engine.projector.patch_size).media


def tail_vs_llama_at_first_update(engine: Engine, media: Media, settings: VReasonSettings) -> float:
    """Largest |tail logit - llama.cpp logit| over the whole vocabulary, relative to the largest |logit|,
    at the first update (every=1, lr=0) with dV = 0: the tail then computes the logits llama.cpp did."""
    gen = engine.ask(media, "Describe it.", GenerationSettings(max_tokens=2), VReasonDecoding(settings))
    try:
        next(ev for ev in gen if isinstance(ev, TokenEvent))
        c = gen.controller
        logits = engine.ctx.logits().copy()
        _, z = c.loss(c.inputs(), torch.zeros_like(c.dv), np.arange(engine.model.n_vocab), logits, 1)
        return float(np.abs(z.detach().numpy() - logits).max() / max(1.0, np.abs(logits).max()))
    finally:
        gen.close()


def selfchecks(engine: Engine, media: Media, settings: VReasonSettings) -> tuple[list[float], list[str], dict]:
    """A V-Reason answer's self-check at every update, its warnings, and the settings it ran with."""
    handle = engine.ask(
        media, "What happens in the video?", GenerationSettings(max_tokens=10), VReasonDecoding(settings)
    )
    events = list(handle)
    answer = handle.result()
    checks = [c.selfcheck for c in answer.control if c.alpha is not None]
    warnings = [ev.message for ev in events if isinstance(ev, Notice) and ev.level == "warning"]
    return checks, warnings, answer.settings["vreason"]


@pytest.mark.parametrize("arch", ARCHES)
def test_vreason_on_q4_k_m_reproduces_llama(k256, clip, arch: str) -> None:
    """An engine on a Q4_K_M file: the tail built from its K-quant weights gives llama.cpp's logits
    (which llama.cpp computes with activations quantised to Q8_K) within the self-check tolerance, at
    the first update over the whole vocabulary and at every update of a V-Reason answer."""
    model, mmproj = k256(arch).pair("q4_k_m")
    settings = VReasonSettings(every=1, device="cpu")
    with Engine(model, mmproj, EngineSettings(n_ctx=2048, hook=True)) as e:
        m = video(e, clip)
        full = tail_vs_llama_at_first_update(e, m, VReasonSettings(every=1, lr=0.0, device="cpu"))
        assert full < SELFCHECK_TOL, full
        checks, warnings, used = selfchecks(e, m, settings)
        tail, g = e._tail, open_gguf(model)
        # the head (Q6_K, which llama.cpp never repacks) is read where llama.cpp holds it; a matrix read
        # there or through a mapping of the file is the file's bytes either way
        assert tail.head.in_place.shared
        down = f"blk.{e.info.n_layer - 1}.ffn_down.weight"
        for name, w in [(head_name(model), tail.head.in_place), (down, tail.w_down)]:
            assert np.array_equal(w.raw, g.tensor_bytes(name)), name
    assert used["tail_dtype"] == "gguf"
    assert len(checks) >= 3 and all(math.isfinite(s) and s < SELFCHECK_TOL for s in checks), checks
    assert not warnings, warnings


@pytest.mark.parametrize("dtype", ["auto", "int8"])
def test_3b_size_tail_reproduces_llama(mid_q4, clip, dtype) -> None:
    """A 3B-size tail (the `mid` shape: the 3B's layers) of Q4_K_M weights: `auto` reads it in place on
    the CPU, and the int8 copy (what a file of other types gets at this size, past the float32
    threshold) passes the self-check against llama.cpp too."""
    model, mmproj = mid_q4
    info = read_model_info(model)
    last = f"blk.{info.n_layer - 1}."
    shapes = {t.name: [int(n) for n in t.shape] for t in gguf.GGUFReader(model).tensors}
    f32_bytes = 4 * sum(math.prod(shapes[last + m + ".weight"]) for m in (*TAIL, "ffn_norm"))
    f32_bytes += 4 * math.prod(shapes["output_norm.weight"])
    assert f32_bytes > INT8_ABOVE  # 287 MB: the 3B's tail
    with Engine(model, mmproj, EngineSettings(n_ctx=2048, hook=True)) as e:
        m = video(e, clip)
        full = tail_vs_llama_at_first_update(e, m, VReasonSettings(every=1, lr=0.0, device="cpu", dtype=dtype))
        assert full < SELFCHECK_TOL, full
        checks, warnings, used = selfchecks(e, m, VReasonSettings(every=1, device="cpu", dtype=dtype))
    assert used["tail_dtype"] == {"auto": "gguf", "int8": "int8"}[dtype] and used["dtype"] == dtype
    assert len(checks) >= 3 and all(math.isfinite(s) and s < SELFCHECK_TOL for s in checks), checks
    assert not warnings, warnings

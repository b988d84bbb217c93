"""The generated random-weight Qwen-VL GGUFs load and run in real llama.cpp and mtmd.

Nothing is mocked: every test loads the files through llama-cpp-python's low-level bindings, the
same way the engine does, so a wrong tensor name, shape, type or metadata key fails here.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from llama_cpp import mtmd_cpp

from vreason_local import tiny

PROMPT = (
    b"<|im_start|>user\nWhat happens in this video? Answer with <think> and <answer>.<|im_end|>\n"
    b"<|im_start|>assistant\n<think>The person is walking across the room"
)


@llama_cpp.llama_log_callback
def _silent(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """No-op log sink; kept at module level so ctypes never sees it garbage-collected."""


@pytest.fixture(scope="module", autouse=True)
def _quiet_llama() -> Iterator[None]:
    llama_cpp.llama_log_set(_silent, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(_silent, ctypes.c_void_p(0))
    yield
    # Hand logging back: llama-cpp-python's own Python-side sink, mtmd's default one.
    from llama_cpp import _logger

    llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(llama_cpp.llama_log_callback(), ctypes.c_void_p(0))  # NULL -> default


@contextmanager
def _load_lm(path: Path, *, quantized: bool = False) -> Iterator[tuple[int, int, int]]:
    """(model, context, vocab) for `path`, freed on exit."""
    mparams = llama_cpp.llama_model_default_params()
    if quantized:
        # llama.cpp's repacked ("extra buffer type") quantised weights crash on some CPUs at the first
        # matmul; the engine deals with that itself, here we just load safely.
        mparams.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    assert model, f"llama.cpp could not load {path}"
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = 512
    cparams.n_batch = 512
    cparams.n_ubatch = 512
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    try:
        assert ctx, "llama_init_from_model failed"
        yield model, ctx, llama_cpp.llama_model_get_vocab(model)
    finally:
        if ctx:
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def _tokenize(vocab: int, text: bytes) -> list[int]:
    buf = (llama_cpp.llama_token * 1024)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, len(buf), False, True)
    assert n >= 0
    return list(buf[:n])


def _decode_all(ctx: int, vocab: int, tokens: list[int]) -> np.ndarray:
    """Decode `tokens` as one batch from position 0; logits of every position, shape (n, n_vocab)."""
    n = len(tokens)
    batch = llama_cpp.llama_batch_init(n, 0, 1)
    try:
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        batch.n_tokens = n
        assert llama_cpp.llama_decode(ctx, batch) == 0
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        return np.stack(
            [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy() for i in range(n)]
        )
    finally:
        llama_cpp.llama_batch_free(batch)


def _entropies(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return -(np.exp(logp) * logp).sum(axis=1)


def _meta(model: int, key: str) -> str | None:
    buf = ctypes.create_string_buffer(512)
    n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return None if n < 0 else buf.value.decode()


@pytest.mark.parametrize("arch", tiny.ARCHES)
def test_language_model_tokenizer_and_logits(tiny_model_factory, arch: str) -> None:
    m = tiny_model_factory(arch)
    lm, _ = tiny._dims(arch, "tiny")
    ids = tiny.special_token_ids("tiny")
    with _load_lm(m.model_path) as (model, ctx, vocab):
        assert llama_cpp.llama_vocab_n_tokens(vocab) == 1024
        assert "RANDOM WEIGHTS" in (_meta(model, "general.name") or "")
        assert _meta(model, "vreason.random_weights") == "true"
        # Qwen3-VL's LM takes the projector's [main | deepstack...] features as its input embedding.
        assert llama_cpp.llama_model_n_embd_inp(model) == lm.n_embd * (1 + lm.n_deepstack)

        for text, _ in tiny.SPECIAL_TOKENS:
            assert _tokenize(vocab, text.encode()) == [ids[text]], text
        for name in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|image_pad|>"):
            assert llama_cpp.llama_vocab_is_control(vocab, ids[name]), name
        assert llama_cpp.llama_vocab_eos(vocab) == ids["<|im_end|>"]
        assert llama_cpp.llama_vocab_eot(vocab) == ids["<|im_end|>"]
        assert llama_cpp.llama_vocab_is_eog(vocab, ids["<|im_end|>"])
        assert not llama_cpp.llama_vocab_get_add_bos(vocab)

        tokens = _tokenize(vocab, PROMPT)
        assert ids["<think>"] in tokens and ids["<|im_start|>"] in tokens
        plain = b"What happens in this video? Answer with <think> and <answer>."
        assert len(_tokenize(vocab, plain)) < len(plain) / 2  # the BPE merges actually merge

        logits = _decode_all(ctx, vocab, tokens)
        assert np.isfinite(logits).all()
        ent = _entropies(logits)
        ln_v = math.log(logits.shape[1])
        # Neither uniform (ln|V| = 6.9) nor one-hot everywhere, and it varies from context to context.
        assert ent.max() < ln_v - 1.0, ent
        assert ent.min() < 1.5 and ent.max() > 2.5, ent
        assert 1.0 < float(np.median(ent)) < 4.0, ent


@pytest.mark.parametrize("wtype", ["f16", "q8_0"])
@pytest.mark.parametrize("arch", tiny.ARCHES)
def test_mmproj_encodes_image_into_the_language_model(tiny_model_factory, arch: str, wtype: str) -> None:
    m = tiny_model_factory(arch, wtype)
    _, v = tiny._dims(arch, "tiny")
    px = tiny.pixels_per_token(arch)  # patch_size * spatial_merge: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL
    assert px == v.patch_size * v.merge
    tok_y, tok_x = 2, 4  # 8 tokens: Qwen-VL's minimum, so the preprocessor keeps the size as is
    height, width = tok_y * px, tok_x * px
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)

    with _load_lm(m.model_path, quantized=wtype == "q8_0") as (model, ctx, vocab):
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        mctx = mtmd_cpp.mtmd_init_from_file(str(m.mmproj_path).encode(), model, params)
        assert mctx, "mtmd could not load the mmproj"
        bitmap = mtmd_cpp.mtmd_bitmap_init(width, height, rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        try:
            assert mtmd_cpp.mtmd_support_vision(mctx)
            assert mtmd_cpp.mtmd_decode_use_mrope(mctx)
            prompt = (
                b"<|im_start|>user\n"
                + mtmd_cpp.mtmd_default_marker()
                + b"What happens in this video?<|im_end|>\n<|im_start|>assistant\n"
            )
            text = mtmd_cpp.mtmd_input_text()
            text.text, text.text_len, text.add_special, text.parse_special = prompt, len(prompt), False, True
            bitmaps = (ctypes.c_void_p * 1)(bitmap)
            assert mtmd_cpp.mtmd_tokenize(mctx, chunks, ctypes.byref(text), bitmaps, 1) == 0

            n_text, n_pos_expected, image_chunk = 0, 0, None
            for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
                if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    image_chunk = chunk
                else:
                    n_text += mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
            assert image_chunk is not None
            image_tokens = mtmd_cpp.mtmd_input_chunk_get_tokens_image(image_chunk)
            assert mtmd_cpp.mtmd_image_tokens_get_nx(image_tokens) == width // px
            assert mtmd_cpp.mtmd_image_tokens_get_ny(image_tokens) == height // px
            assert mtmd_cpp.mtmd_input_chunk_get_n_tokens(image_chunk) == (width // px) * (height // px)
            # With M-RoPE an image advances the position by max(nx, ny), not by its token count.
            assert mtmd_cpp.mtmd_input_chunk_get_n_pos(image_chunk) == max(tok_x, tok_y)
            n_pos_expected = n_text + max(tok_x, tok_y)

            # The vision tower's output is finite and carries signal.
            assert mtmd_cpp.mtmd_encode_chunk(mctx, image_chunk) == 0
            n_embd_inp = llama_cpp.llama_model_n_embd_inp(model)
            embd = np.ctypeslib.as_array(mtmd_cpp.mtmd_get_output_embd(mctx), shape=(tok_x * tok_y, n_embd_inp))
            assert np.isfinite(embd).all() and 0.05 < float(embd.std()) < 20.0

            n_past = llama_cpp.llama_pos(0)
            rc = mtmd_cpp.mtmd_helper_eval_chunks(mctx, ctx, chunks, 0, 0, 512, True, ctypes.byref(n_past))
            assert rc == 0
            assert n_past.value == n_pos_expected
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(ctx, -1), shape=(llama_cpp.llama_vocab_n_tokens(vocab),)
            )
            assert np.isfinite(logits).all()
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            mtmd_cpp.mtmd_bitmap_free(bitmap)
            mtmd_cpp.mtmd_free(mctx)


def test_q8_0_language_model_decodes(tiny_model_factory) -> None:
    m = tiny_model_factory("qwen25vl", "q8_0")
    with _load_lm(m.model_path, quantized=True) as (model, ctx, vocab):
        logits = _decode_all(ctx, vocab, _tokenize(vocab, PROMPT))
        assert np.isfinite(logits).all()
        ent = _entropies(logits)
        assert ent.min() < 1.5 and ent.max() > 2.5, ent


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_arguments_give_identical_files(tmp_path: Path) -> None:
    a = tiny.make_tiny(tmp_path / "a", "qwen3vl")
    b = tiny.make_tiny(tmp_path / "b", "qwen3vl")
    assert _sha256(a.model_path) == _sha256(b.model_path)
    assert _sha256(a.mmproj_path) == _sha256(b.mmproj_path)
    c = tiny.make_tiny(tmp_path / "c", "qwen3vl", seed=1)
    assert _sha256(a.model_path) != _sha256(c.model_path)

    # Existing files are reused, not rewritten; no temporary files are left behind.
    before = a.model_path.stat().st_mtime_ns
    assert tiny.make_tiny(tmp_path / "a", "qwen3vl") == a
    assert a.model_path.stat().st_mtime_ns == before
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([a.model_path.name, a.mmproj_path.name])


def test_file_names_and_tensor_types(tiny_model_factory) -> None:
    from gguf import GGMLQuantizationType, GGUFReader

    m = tiny_model_factory("qwen25vl", "q8_0")
    assert m.model_path.name == "vreason-random-qwen25vl-tiny-q8_0.gguf"
    assert m.mmproj_path.name == "mmproj-vreason-random-qwen25vl-tiny-q8_0.gguf"
    assert (m.arch, m.shape) == ("qwen25vl", "tiny")
    # Every file is named after its shape: a 3b file does not call itself tiny.
    for shape in tiny.SHAPES:
        names = tiny.file_names("qwen3vl", shape, "q8_0")
        assert all(f"-{shape}-" in n and n.endswith(".gguf") for n in names), names
        assert all("tiny" not in n for n in names) or shape == "tiny", names
    for path in (m.model_path, m.mmproj_path):
        for t in GGUFReader(path).tensors:
            if len(t.shape) == 1:  # norms and biases stay F32, as in real conversions
                assert t.tensor_type == GGMLQuantizationType.F32, t.name
            elif t.name.startswith("v.patch_embd"):
                assert t.tensor_type == GGMLQuantizationType.F16, t.name
            else:
                assert t.tensor_type == GGMLQuantizationType.Q8_0, t.name


@pytest.mark.parametrize(("shape", "n_rows"), [("fast", 151936), ("3b", 151936), ("7b", 152064)])
def test_full_size_vocabularies_match_qwen_layout(shape: str, n_rows: int) -> None:
    ids = tiny.special_token_ids(shape)
    assert ids["<|endoftext|>"] == 151643
    assert ids["<|im_start|>"] == 151644 and ids["<|im_end|>"] == 151645
    assert ids["<|vision_start|>"] == 151652 and ids["<|image_pad|>"] == 151655 and ids["<|video_pad|>"] == 151656
    assert ids["<think>"] == 151667 and ids["</think>"] == 151668
    lm, _ = tiny._dims("qwen25vl", shape)
    vocab = tiny._build_vocab(shape, lm.n_vocab)
    assert len(vocab.tokens) == len(set(vocab.tokens)) == n_rows  # == embedding rows (the 7B pads to 152064)


def test_3b_dimensions() -> None:
    lm, v = tiny._dims("qwen25vl", "3b")
    assert (lm.n_embd, lm.n_layer, lm.n_head, lm.n_head_kv, lm.head_dim, lm.n_ff) == (2048, 36, 16, 2, 128, 11008)
    assert lm.tied and lm.rope_sections == (16, 24, 24, 0)
    assert (v.n_layer, v.n_embd, v.n_ff, v.n_head, v.n_wa_pattern) == (32, 1280, 3420, 16, 8)


def test_7b_dimensions() -> None:
    """Qwen2.5-VL-7B and Qwen3-VL-8B as their config.json state them: untied heads, the 7B's padded vocabulary."""
    lm, v = tiny._dims("qwen25vl", "7b")
    assert (lm.n_embd, lm.n_layer, lm.n_head, lm.n_head_kv, lm.head_dim, lm.n_ff) == (3584, 28, 28, 4, 128, 18944)
    assert not lm.tied and lm.n_vocab == 152064 and lm.rope_sections == (16, 24, 24, 0)
    assert (v.n_layer, v.n_embd, v.n_ff, v.n_head, v.n_wa_pattern) == (32, 1280, 3420, 16, 8)
    lm, v = tiny._dims("qwen3vl", "7b")
    assert (lm.n_embd, lm.n_layer, lm.n_head, lm.n_head_kv, lm.head_dim, lm.n_ff) == (4096, 36, 32, 8, 128, 12288)
    assert not lm.tied and lm.n_vocab == 151936 and lm.rope_sections == (24, 20, 20, 0)
    assert (v.n_layer, v.n_embd, v.n_ff, v.n_head, v.deepstack) == (27, 1152, 4304, 16, (8, 16, 24))


@pytest.mark.parametrize("arch", tiny.ARCHES)
def test_fast_shape_decodes_with_the_full_vocabulary(tmp_path: Path, arch: str) -> None:
    """The benchmark shape: 3 layers of width 128, Qwen's 151,936 tokens, real special ids, varied entropy."""
    m = tiny.make_tiny(tmp_path, arch=arch, shape="fast")
    assert m.model_path.name == f"vreason-random-{arch}-fast-f16.gguf" and m.shape == "fast"
    assert 80e6 < m.model_path.stat().st_size < 86e6 and m.mmproj_path.stat().st_size < 1e6  # as the help says
    ids = tiny.special_token_ids("fast")
    with _load_lm(m.model_path) as (model, ctx, vocab):
        assert llama_cpp.llama_vocab_n_tokens(vocab) == 151936
        assert llama_cpp.llama_model_n_layer(model) == 3 and llama_cpp.llama_model_n_embd(model) == 128
        assert llama_cpp.llama_vocab_eos(vocab) == ids["<|im_end|>"] == 151645
        tokens = _tokenize(vocab, PROMPT)
        assert ids["<think>"] in tokens and ids["<|im_start|>"] in tokens
        logits = _decode_all(ctx, vocab, tokens)
        assert np.isfinite(logits).all()
        ent = _entropies(logits)
        assert ent.max() < math.log(151936) - 1.0 and ent.max() - ent.min() > 1.0, ent


@pytest.mark.parametrize("arch", tiny.ARCHES)
def test_shape_sizes_match_the_help(arch: str) -> None:
    """The sizes `make-tiny --help` states, from the tensors each shape writes (bytes of tensor data)."""
    stated = {  # shape: {wtype: (min, max) bytes of the language model}, projector max
        "tiny": ({"f32": (0, 1.0e6), "f16": (0, 1.0e6), "q8_0": (0, 1.0e6)}, 1.0e6),
        "fast": ({"f16": (78e6, 86e6), "q8_0": (41e6, 47e6)}, 1.0e6),
        "3b": ({"f16": (6.1e9, 8.1e9), "q8_0": (3.2e9, 4.4e9)}, 1.35e9),
        "k256": ({"f16": (4.9e6, 6.5e6)}, 1.0e6),
        "mid": ({"f16": (0.3e9, 0.62e9), "q8_0": (0.16e9, 0.33e9)}, 2.5e6),
        "7b": ({"f16": (15.2e9, 16.4e9), "q8_0": (8.0e9, 8.75e9)}, 1.36e9),  # projector: 0.7-0.9 GB in q8_0
    }
    for shape, (lm_sizes, mmproj_max) in stated.items():
        lm, v = tiny._dims(arch, shape)
        for wtype, (lo, hi) in lm_sizes.items():
            lm_bytes = sum(tiny._nbytes(t.shape, tiny._ggml_type(t, wtype)) for t in tiny._lm_tensors(lm))
            mm_bytes = sum(tiny._nbytes(t.shape, tiny._ggml_type(t, wtype)) for t in tiny._vision_tensors(v, lm.n_embd))
            assert lo <= lm_bytes <= hi and mm_bytes <= mmproj_max, (shape, wtype, lm_bytes, mm_bytes)


def test_rejects_unknown_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        tiny.make_tiny(tmp_path, arch="llava")
    with pytest.raises(ValueError):
        tiny.make_tiny(tmp_path, shape="13b")
    with pytest.raises(ValueError):
        tiny.make_tiny(tmp_path, shape="fast", wtype="q4_0")
    with pytest.raises(ValueError):
        tiny.make_tiny(tmp_path, wtype="q4_0")

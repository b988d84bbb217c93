"""Thin owners of llama.cpp objects (model, context, mtmd context and its chunks), each freed exactly once.

Only this module and the hook talk to llama-cpp-python's low-level bindings. Every owner frees what it
allocated even when its own construction fails half way, and `close()` is idempotent.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as L
import numpy as np
from llama_cpp import mtmd_cpp as M

from .errors import UserError

FLASH_ATTN = {
    "auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp logs pages per load; show them only with --verbose or VREASON_LLAMA_LOG=1."""


_backend_ready = False
_show_log = False


def show_log() -> None:
    """Let llama.cpp and mtmd write their own log to stderr (`--verbose`); before the first model loads."""
    global _show_log
    _show_log = True


def init_backend() -> None:
    global _backend_ready
    if _backend_ready:
        return
    if not _show_log and os.environ.get("VREASON_LLAMA_LOG") != "1":
        L.llama_log_set(_quiet_log, ctypes.c_void_p())
        M.mtmd_helper_log_set(_quiet_log, ctypes.c_void_p())
    L.llama_backend_init()
    _backend_ready = True


class Aborted(Exception):
    """A llama.cpp or vision-encoder computation was stopped part way by a `CancelFlag`."""


class CancelFlag(ctypes.Structure):
    """A flag that llama.cpp's compute reads between graph nodes (native/vr_hook.c `vr_cancel`): setting it
    stops a prefill batch or a frame pair's encoding part way instead of after it."""

    _fields_ = [("flag", ctypes.c_int32), ("every", ctypes.c_int32), ("n", ctypes.c_int64)]

    def __init__(self) -> None:
        super().__init__(0, 64, 0)  # the vision encoder runs in pieces of 64 graph nodes
        from .native import library

        lib = library()
        self.abort_callback = L.ggml_abort_callback(ctypes.cast(lib.vr_abort_requested, ctypes.c_void_p).value)
        self.eval_callback = L.ggml_backend_sched_eval_callback(ctypes.cast(lib.vr_cancel_eval, ctypes.c_void_p).value)

    def set(self) -> None:
        self.flag = 1

    def clear(self) -> None:
        self.flag = 0

    @property
    def address(self) -> int:
        return ctypes.addressof(self)


def supports_gpu_offload() -> bool:
    """This build of llama.cpp can put layers on a GPU (CUDA, Metal, Vulkan, ...)."""
    return bool(L.llama_supports_gpu_offload())


class Model:
    """A loaded GGUF language model."""

    def __init__(self, path: Path, n_gpu_layers: int, repack: bool) -> None:
        init_backend()
        params = L.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = repack  # off where repacked quantised matmuls crash (see repack.py)
        self.ptr = L.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise UserError(
                f"llama.cpp could not load {path} (corrupt file or unsupported build; run with --verbose for llama.cpp's log)"
            )
        self.vocab = L.llama_model_get_vocab(self.ptr)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self._pieces: dict[int, tuple[bytes, bool]] = {}

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        raw = text.encode()
        buf = (L.llama_token * (len(raw) + 16))()
        n = L.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, special)
        if n < 0:
            raise RuntimeError("tokenizer buffer too small")
        return list(buf[:n])

    def piece(self, token: int) -> tuple[bytes, bool]:
        """(the token's bytes, whether it ends generation), remembered: the decode loop asks per token."""
        known = self._pieces.get(token)
        if known is None:
            buf = (ctypes.c_char * 256)()
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            known = self._pieces[token] = (bytes(buf[: max(n, 0)]), bool(L.llama_vocab_is_eog(self.vocab, token)))
        return known

    def close(self) -> None:
        if self.ptr:
            L.llama_model_free(self.ptr)
            self.ptr = None


class Context:
    """A llama.cpp context (the KV cache of one conversation), optionally with an eval callback."""

    def __init__(
        self,
        model: Model,
        n_ctx: int,
        n_batch: int,
        n_threads: int,
        flash_attn: str,
        eval_callback: object | None = None,
        callback_data: int | None = None,
        cancel: CancelFlag | None = None,
    ) -> None:
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = 1
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.flash_attn_type = FLASH_ATTN[flash_attn]
        params.no_perf = True
        if eval_callback is not None:
            params.cb_eval = eval_callback
            params.cb_eval_user_data = callback_data
        if cancel is not None:
            params.abort_callback = cancel.abort_callback
            params.abort_callback_data = cancel.address
        self._batch = None
        self.ptr = L.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise UserError(f"llama.cpp could not create a context of {n_ctx:,} tokens (out of memory?)")
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.n_vocab = model.n_vocab
        self.mem = L.llama_get_memory(self.ptr)
        self._batch = L.llama_batch_init(n_batch, 0, 1)
        self._one = L.llama_batch_init(1, 0, 1)
        self._one.n_tokens = 1
        self._one.n_seq_id[0] = 1
        self._one.seq_id[0][0] = 0
        self._one.logits[0] = True
        self._views: dict[int, np.ndarray] = {}

    def decode_tokens(self, tokens: Sequence[int], pos0: int) -> None:
        """Decode text tokens at positions pos0.., keeping the logits of the last one."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            b = self._batch
            b.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = pos0 + start + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = start + i == len(tokens) - 1
            self._decode(b)

    def decode_one(self, token: int, pos: int) -> None:
        """`decode_tokens([token], pos)` for the decode loop, on a batch set up once."""
        b = self._one
        b.token[0] = token
        b.pos[0] = pos
        self._decode(b)

    def _decode(self, batch: L.llama_batch) -> None:
        rc = L.llama_decode(self.ptr, batch)
        if rc == 2:  # the cancel flag stopped it; llama.cpp dropped this batch's cells again
            raise Aborted
        if rc != 0:
            raise UserError(f"llama.cpp decode failed (code {rc}): the context of {self.n_ctx} tokens is probably full")

    def logits(self) -> np.ndarray:
        """The raw logits of the last decoded token, as a view of llama.cpp's output buffer (no copy).

        The next decode overwrites it, or frees it when the output buffer grows: use it before then.
        Views are kept per buffer address, since making one costs more than the rest of a greedy step.
        """
        addr = ctypes.cast(L.llama_get_logits_ith(self.ptr, -1), ctypes.c_void_p).value
        view = self._views.get(addr)
        if view is None:
            view = np.frombuffer((ctypes.c_float * self.n_vocab).from_address(addr), np.float32)
            self._views = {addr: view}  # an old buffer's view must never be handed out again
        return view

    def remove_from(self, pos: int) -> None:
        """Forget every cached token at position >= pos."""
        L.llama_memory_seq_rm(self.mem, 0, pos, -1)

    def clear(self) -> None:
        L.llama_memory_clear(self.mem, True)

    def state_get(self) -> bytes:
        size = L.llama_state_seq_get_size(self.ptr, 0)
        buf = (ctypes.c_uint8 * size)()
        n = L.llama_state_seq_get_data(self.ptr, buf, size, 0)
        return bytes(memoryview(buf)[:n])  # slicing the ctypes array itself would build a list of ints

    def state_set(self, blob: bytes) -> None:
        self.clear()
        buf = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
        if L.llama_state_seq_set_data(self.ptr, buf, len(blob), 0) == 0:
            raise RuntimeError("llama.cpp refused the saved sequence state")

    def close(self) -> None:
        if self._batch is not None:
            L.llama_batch_free(self._batch)
            L.llama_batch_free(self._one)
            self._batch = None
        self._views = {}
        if self.ptr:
            L.llama_free(self.ptr)
            self.ptr = None


class Vision:
    """The mtmd context: the vision encoder (mmproj) bound to the language model."""

    def __init__(
        self, mmproj: Path, model: Model, n_threads: int, use_gpu: bool, cancel: CancelFlag | None = None
    ) -> None:
        params = M.mtmd_context_params_default()
        self.cancel = cancel
        if cancel is not None:
            params.cb_eval = cancel.eval_callback
            params.cb_eval_user_data = cancel.address
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self.ptr = M.mtmd_init_from_file(str(mmproj).encode(), model.ptr, params)
        if not self.ptr:
            raise UserError(f"mtmd could not load the projector {mmproj} for this model")
        self.marker = M.mtmd_default_marker().decode()

    def tokenize(self, text: str, images: Sequence[np.ndarray], mergeable: bool) -> MediaPrompt:
        """Split `text` (one marker per image) into text and image chunks, without encoding anything.

        `mergeable`: consecutive same-size images form one Qwen temporal patch (video frames in pairs).
        """
        return MediaPrompt(self, text, images, mergeable)

    def close(self) -> None:
        if self.ptr:
            M.mtmd_free(self.ptr)
            self.ptr = None


@dataclass(frozen=True)
class Chunk:
    """One chunk of a tokenised media prompt: text (its token ids) or an image (its token count)."""

    index: int
    tokens: tuple[int, ...] | None  # text chunks
    n_tokens: int


class MediaPrompt:
    """mtmd's chunks of one prompt, and the bitmaps they point at; encoded and decoded chunk by chunk
    so that the caller can report progress and stop between chunks."""

    def __init__(self, vision: Vision, text: str, images: Sequence[np.ndarray], mergeable: bool) -> None:
        self.vision = vision
        self._bitmaps: list[object] = []
        self._chunks = M.mtmd_input_chunks_init()
        try:
            for rgb in images:
                rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
                h, w = rgb.shape[:2]
                bm = M.mtmd_bitmap_init(w, h, rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
                self._bitmaps.append(bm)
                M.mtmd_bitmap_set_mergeable(bm, mergeable)
            raw = text.encode()
            inp = M.mtmd_input_text(text=raw, text_len=len(raw), add_special=False, parse_special=True)
            arr = (M.mtmd_bitmap_p_ctypes * len(self._bitmaps))(*self._bitmaps)
            rc = M.mtmd_tokenize(vision.ptr, self._chunks, ctypes.byref(inp), arr, len(self._bitmaps))
            if rc != 0:
                raise UserError(f"the vision projector could not tokenise the media (mtmd code {rc})")
            self.chunks = [self._describe(i) for i in range(M.mtmd_input_chunks_size(self._chunks))]
        except BaseException:
            self.close()
            raise

    def _describe(self, i: int) -> Chunk:
        chunk = M.mtmd_input_chunks_get(self._chunks, i)
        if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            ptr = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            return Chunk(i, tuple(ptr[j] for j in range(n.value)), n.value)
        return Chunk(i, None, M.mtmd_input_chunk_get_n_tokens(chunk))

    @property
    def n_tokens(self) -> int:
        return sum(c.n_tokens for c in self.chunks)

    def encode_and_decode(self, chunk: Chunk, ctx: Context, n_past: int) -> tuple[int, float, float]:
        """Run the vision encoder on an image chunk, then decode its embeddings into `ctx` at `n_past`.

        Returns (next position, encode seconds, decode seconds). Under M-RoPE the next position is not
        n_past + n_tokens: all tokens of one image share a temporal position.
        """
        ptr = M.mtmd_input_chunks_get(self._chunks, chunk.index)
        t0 = time.perf_counter()
        if M.mtmd_encode_chunk(self.vision.ptr, ptr) != 0:
            self._raise_aborted()
            raise UserError("the vision encoder failed on a frame")
        embd = M.mtmd_get_output_embd(self.vision.ptr)
        t1 = time.perf_counter()
        new_n_past = L.llama_pos(0)
        rc = M.mtmd_helper_decode_image_chunk(
            self.vision.ptr,
            ctx.ptr,
            ptr,
            embd,
            n_past,
            0,
            ctx.n_batch,
            ctypes.byref(new_n_past),
            M.mtmd_helper_post_decode_callback(),
            None,
        )
        if rc != 0:
            self._raise_aborted()
            raise UserError(f"llama.cpp could not decode the video tokens (code {rc})")
        return new_n_past.value, t1 - t0, time.perf_counter() - t1

    def _raise_aborted(self) -> None:
        if self.vision.cancel is not None and self.vision.cancel.flag:
            raise Aborted

    def close(self) -> None:
        if self._chunks is not None:
            M.mtmd_input_chunks_free(self._chunks)
            self._chunks = None
        for bm in self._bitmaps:
            M.mtmd_bitmap_free(bm)
        self._bitmaps = []

    def __enter__(self) -> MediaPrompt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# llama.cpp's quantisation types by the names its `llama-quantize` tool and the registry use ("q4_k_m").
QUANT_TYPES = {
    name.removeprefix("LLAMA_FTYPE_MOSTLY_").lower(): getattr(L, name)
    for name in dir(L)
    if name.startswith("LLAMA_FTYPE_MOSTLY_")
}


def quantize(src: Path, dst: Path, ftype: str, n_threads: int) -> Path:
    """Write `src` quantised to `ftype` (e.g. "q4_k_m", "q6_k", "q8_0") as `dst`, with llama.cpp's own
    quantiser: the same code and per-tensor type choices that make the registry's Q4_K_M files, so a file
    made here holds what a downloaded one does (Q4_K_M: Q4_K with Q6_K for the LM head and some layers'
    attn_v and ffn_down).

    Sources already quantised are accepted (`allow_requantize`): llama.cpp dequantises them first. That
    loses a little precision against quantising from F16, which random test weights do not care about,
    and spares generating F16 sources of 7B size (15 GB). Written under a temporary name and renamed at
    the end, so an interrupted run never leaves a partial file under `dst`.
    """
    if ftype not in QUANT_TYPES:
        raise UserError(f"unknown quantisation type {ftype!r}; llama.cpp knows {', '.join(sorted(QUANT_TYPES))}")
    init_backend()  # also keeps llama.cpp's per-tensor log quiet
    params = L.llama_model_quantize_default_params()
    params.nthread = n_threads
    params.ftype = QUANT_TYPES[ftype]
    params.allow_requantize = True
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        if L.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise UserError(f"llama.cpp could not quantise {src} to {ftype} (run with VREASON_LLAMA_LOG=1 for details)")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst

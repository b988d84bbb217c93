"""Thin owners of llama.cpp objects (model, context, mtmd context), each freed exactly once.

Only this module and the hook talk to llama-cpp-python's low-level bindings.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

import llama_cpp as L
from llama_cpp import mtmd_cpp as M

from .errors import UserError

FLASH_ATTN = {"auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED}


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp logs pages per load; show them only with VREASON_LLAMA_LOG=1."""


_backend_ready = False


def init_backend() -> None:
    global _backend_ready
    if _backend_ready:
        return
    if os.environ.get("VREASON_LLAMA_LOG") != "1":
        L.llama_log_set(_quiet_log, ctypes.c_void_p())
        M.mtmd_helper_log_set(_quiet_log, ctypes.c_void_p())
    L.llama_backend_init()
    _backend_ready = True


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class Model:
    """A loaded GGUF language model."""

    def __init__(self, path: Path, n_gpu_layers: int, repack: bool) -> None:
        init_backend()
        params = L.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = repack  # off where repacked quantised matmuls crash (see repack.py)
        self.ptr = L.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise UserError(f"llama.cpp could not load {path} (corrupt file or unsupported build; run with VREASON_LLAMA_LOG=1 for details)")
        self.vocab = L.llama_model_get_vocab(self.ptr)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        raw = text.encode()
        buf = (L.llama_token * (len(raw) + 16))()
        n = L.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, special)
        if n < 0:
            raise RuntimeError("tokenizer buffer too small")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        buf = (ctypes.c_char * 256)()
        n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return bytes(buf[: max(n, 0)])

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        if self.ptr:
            L.llama_model_free(self.ptr)
            self.ptr = None


class Context:
    """A llama.cpp context (the KV cache of one conversation), optionally with an eval callback."""

    def __init__(self, model: Model, n_ctx: int, n_batch: int, n_threads: int, flash_attn: str,
                 eval_callback: object | None = None, callback_data: int | None = None) -> None:
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
        self.ptr = L.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise UserError(f"llama.cpp could not create a context of {n_ctx} tokens (out of memory?)")
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.n_vocab = model.n_vocab
        self.mem = L.llama_get_memory(self.ptr)
        self._batch = L.llama_batch_init(n_batch, 0, 1)

    def decode_tokens(self, tokens: list[int], pos0: int) -> None:
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
            rc = L.llama_decode(self.ptr, b)
            if rc != 0:
                raise UserError(f"llama.cpp decode failed (code {rc}): the context of {self.n_ctx} tokens is probably full")

    def logits(self) -> np.ndarray:
        """The raw logits of the last decoded token (a copy: llama.cpp reuses its buffer)."""
        ptr = L.llama_get_logits_ith(self.ptr, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

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
        if self.ptr:
            L.llama_batch_free(self._batch)
            L.llama_free(self.ptr)
            self.ptr = None


class Vision:
    """The mtmd context: the vision encoder (mmproj) bound to the language model."""

    def __init__(self, mmproj: Path, model: Model, n_threads: int, use_gpu: bool) -> None:
        params = M.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self.ptr = M.mtmd_init_from_file(str(mmproj).encode(), model.ptr, params)
        if not self.ptr:
            raise UserError(f"mtmd could not load the projector {mmproj} for this model")
        self.marker = M.mtmd_default_marker().decode()

    def close(self) -> None:
        if self.ptr:
            M.mtmd_free(self.ptr)
            self.ptr = None

"""Python side of the value-cache hook (native/vr_hook.c): capture last-layer nodes, read and write V rows.

The C callback runs inside llama.cpp's graph compute; this module configures it, reads what it
captured after a decode, and writes value rows into the persistent `cache_v_l{L}` tensor between decode
steps with `ggml_backend_tensor_set` (valid for CPU, CUDA and Metal buffers alike).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import llama_cpp as L
import numpy as np

from . import native
from .errors import UserError
from .gguf_info import ModelInfo, release_pages

GGML_TYPE_F16 = 1


@functools.cache
def check_layout() -> None:
    """`verify_layout` on the running library and ggml-base, once per process (again after a refusal)."""
    verify_layout(native.library(), native.ggml())


def verify_layout(lib: Any, ggml: Any) -> None:
    """Check the C mirror of `struct ggml_tensor` against the running ggml; refuse if they differ. `lib`: the
    native library (native.library(), or in tests a stand-in that changes one of its answers), `ggml`: ggml-base.

    Builds real tensors with ggml itself and reads them back through the mirror: size (ggml's tensor
    overhead minus its 32-byte object header), the name's offset, ne/nb/type and a view's source.
    """
    ctx = ggml.ggml_init(native.GGMLInitParams(1 << 16, None, True))
    try:
        t = ggml.ggml_new_tensor_2d(ctx, GGML_TYPE_F16, 6, 5)
        ggml.ggml_set_name(t, b"vr_probe")
        view = ggml.ggml_view_1d(ctx, t, 4, 0)
        checks = {
            "size": lib.vr_tensor_size() == ggml.ggml_tensor_overhead() - 32,
            "name": ggml.ggml_get_name(t) == t + lib.vr_name_offset(),
            "type": lib.vr_tensor_type(t) == GGML_TYPE_F16,
            "ne": (lib.vr_tensor_ne(t, 0), lib.vr_tensor_ne(t, 1), lib.vr_tensor_ne(t, 3)) == (6, 5, 1),
            "nb": (lib.vr_tensor_nb(t, 0), lib.vr_tensor_nb(t, 1)) == (2, 12),
            "view_src": lib.vr_tensor_view_src(view) == t,
        }
    finally:
        ggml.ggml_free(ctx)
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise UserError(
            f"this llama.cpp build's ggml_tensor layout does not match the hook ({', '.join(bad)} differ); "
            "install the pinned llama-cpp-python==0.3.36"
        )


class ValueHook:
    """One hook per llama.cpp context: captures, for one token, what the last layer computed after its
    attention (the post-RoPE query `Qcur-L`, the residual before the FFN `ffn_inp-L`, the FFN's gate and
    up projections `ffn_gate-L` / `ffn_up-L` and the layer's output `l_out-L`: with these an update needs
    only the tail's backward, `tail.Tail.backward_at_llama_state`), and owns reading K/V rows and writing V rows."""

    def __init__(self, info: ModelInfo) -> None:
        self.lib, self.ggml = native.library(), native.ggml()
        check_layout()
        self.info = info
        last = info.n_layer - 1
        self.h = self.lib.vr_hook_new(ctypes.cast(self.ggml.ggml_backend_tensor_get, ctypes.c_void_p))
        self._cache_names = (f"cache_k_l{last}".encode(), f"cache_v_l{last}".encode())
        self.forget_cache()
        self._last_spans: tuple[np.ndarray, list[tuple[int, int, int]]] | None = None
        self.names = {
            "q": f"Qcur-{last}",
            "ffn_inp": f"ffn_inp-{last}",
            "gate": f"ffn_gate-{last}",  # before the SiLU
            "up": f"ffn_up-{last}",
            "y": f"l_out-{last}",  # the FFN's output plus its residual, before the final norm
        }
        n_embd, n_ff = info.n_embd * 4, info.n_ff * 4  # bytes of one token's row
        self.sizes = {"q": info.n_head * info.head_dim * 4, "ffn_inp": n_embd, "gate": n_ff, "up": n_ff, "y": n_embd}
        self.slots = {k: self.lib.vr_hook_add_capture(self.h, n.encode(), self.sizes[k]) for k, n in self.names.items()}
        # capture()'s out-parameters, made once: five captures per update
        self._capture_out = ((ctypes.c_int64 * 4)(), ctypes.c_size_t(), ctypes.c_int64(), ctypes.c_int32())
        self._capture_refs = tuple(ctypes.byref(x) for x in self._capture_out[1:])
        # each capture's buffer, allocated once by the hook: viewed once here (np.ctypeslib per call is slow)
        self._capture_views = {
            k: np.frombuffer(
                (ctypes.c_float * (self.sizes[k] // 4)).from_address(
                    self.lib.vr_hook_capture(self.h, slot, self._capture_out[0], *self._capture_refs)
                ),
                np.float32,
            )
            for k, slot in self.slots.items()
        }
        self.n_embd_v = info.n_head_kv * info.head_dim
        tail = [f"blk.{last}.{m}.weight" for m in ("attn_output", "ffn_gate", "ffn_up", "ffn_down")]
        heads = ["output.weight", "token_embd.weight"]  # the LM head, or the embeddings when it is tied
        self.weights = {n: self.lib.vr_hook_add_weight(self.h, n.encode()) for n in (*tail, *heads)}
        addr = ctypes.cast(self.lib.vr_hook_callback, ctypes.c_void_p).value
        self._callback = L.ggml_backend_sched_eval_callback(addr)  # keep referenced for the context's life

    def forget_cache(self) -> None:
        """Look for the last layer's K/V cache tensors again (a new context has its own)."""
        self.lib.vr_hook_set_cache_names(self.h, *self._cache_names)

    def weight_view(self, name: str, raw: np.memmap) -> np.ndarray | None:
        """The bytes of weight `name` where llama.cpp holds them, if that is host memory in the file's own
        layout (memory-mapped, not repacked: the first and last rows equal the file's `raw`), else None.
        Reading them there adds nothing to the process's resident memory, where a second mapping of the
        file counts each page it touches again (with the kernel's fault-around, 64 KB per touched page).
        Valid while the model is loaded."""
        t = self.lib.vr_hook_weight(self.h, self.weights[name]) if name in self.weights else None
        if not t or not self.ggml.ggml_backend_buffer_is_host(self.lib.vr_tensor_buffer(t)):
            return None
        view = np.ctypeslib.as_array((ctypes.c_uint8 * raw.nbytes).from_address(self.lib.vr_tensor_data(t)))
        view = view.reshape(raw.shape)
        same = np.array_equal(view[0], raw[0]) and np.array_equal(view[-1], raw[-1])
        release_pages(raw)
        return view if same else None

    def callback_args(self) -> tuple[object, int]:
        return self._callback, self.h

    def prepare(self, capture: bool) -> None:
        """Before a decode: clear the last captures and ask for the nodes only if they will be used."""
        self.lib.vr_hook_reset(self.h)
        self.lib.vr_hook_enable(self.h, int(capture))

    def stop_capture(self) -> None:
        """Ask for no node from now on (counts and captures are kept for inspection)."""
        self.lib.vr_hook_enable(self.h, 0)

    def capture(self, key: str) -> np.ndarray:
        """The data copied from node `key` in the last decode, shaped as ggml's ne reversed (row-major)."""
        ne, nbytes, seen, err = self._capture_out
        self.lib.vr_hook_capture(self.h, self.slots[key], ne, *self._capture_refs)
        if err.value or not seen.value:
            raise RuntimeError(f"hook did not capture {self.names[key]} (error {err.value}, seen {seen.value})")
        return self._capture_views[key][: nbytes.value // 4].reshape(tuple(reversed(list(ne)))).copy()

    @property
    def counts(self) -> tuple[int, int]:
        """(nodes asked, nodes observed) since the last `prepare`."""
        return self.lib.vr_hook_n_asked(self.h), self.lib.vr_hook_n_observed(self.h)

    def _cache(self, which: int) -> int:
        t = self.lib.vr_hook_cache(self.h, which)
        if not t:
            raise RuntimeError("the last layer's KV cache was not seen in the graph yet")
        if self.lib.vr_tensor_type(t) != GGML_TYPE_F16:
            raise UserError("V-Reason needs an F16 KV cache (the default); do not quantise the K/V cache")
        return t

    def read_keys(self, n_cells: int) -> np.ndarray:
        """The last layer's F16 key rows of cells [0, n_cells), shape [n_cells, n_head_kv*head_dim].

        Keys are stored row by row whatever the flash-attention setting.
        """
        t = self._cache(0)
        out = np.empty((n_cells, self.info.n_head_kv * self.info.head_dim), np.float16)
        self.ggml.ggml_backend_tensor_get(t, out.ctypes.data, 0, out.nbytes)
        return out

    def _spans(self, rows: np.ndarray) -> list[tuple[int, int, int]]:
        """Contiguous runs of cells as (first index into rows, first cell, length); kept for the last
        array of rows asked about (an answer's controller writes the same rows at every update)."""
        if self._last_spans is not None and self._last_spans[0] is rows:
            return self._last_spans[1]
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(rows)]])
        spans = [(int(s), int(rows[s]), int(e - s)) for s, e in zip(starts, ends)]
        if not rows.flags.writeable:  # a read-only array cannot change under the cached spans
            self._last_spans = (rows, spans)
        return spans

    def read_values(self, rows: np.ndarray, transposed: bool) -> np.ndarray:
        """The F16 value rows of the last layer at these cells, shape [len(rows), n_head_kv*head_dim]."""
        return self._io(rows, None, transposed)

    def write_values(self, rows: np.ndarray, values: np.ndarray, transposed: bool) -> None:
        """Overwrite the last layer's value rows at these cells (values: float16 [len(rows), n_embd_v])."""
        self._io(rows, np.ascontiguousarray(values, dtype=np.float16), transposed)

    def _io(self, rows: np.ndarray, values: np.ndarray | None, transposed: bool) -> np.ndarray:
        t = self._cache(1)
        kv_size = self.lib.vr_tensor_ne(t, 1)  # cache shape [n_embd_v, kv_size, n_stream]
        n = self.n_embd_v
        out = np.empty((len(rows), n), np.float16) if values is None else values
        fn = self.ggml.ggml_backend_tensor_get if values is None else self.ggml.ggml_backend_tensor_set
        for first, cell, length in self._spans(np.asarray(rows)):
            if not transposed:  # row-major: cell*n + channel, one call per run of cells, straight in/out of `out`
                block = out[first : first + length]
                fn(t, block.ctypes.data, cell * n * 2, block.nbytes)
            else:  # transposed: channel*kv_size + cell, one call per channel and run
                block = (
                    np.ascontiguousarray(out[first : first + length].T)
                    if values is not None
                    else np.empty((n, length), np.float16)
                )
                for c in range(n):
                    fn(t, block[c].ctypes.data, (c * kv_size + cell) * 2, length * 2)
                if values is None:
                    out[first : first + length] = block.T
        return out

    def close(self) -> None:
        if self.h:
            self.lib.vr_hook_free(self.h)
            self.h = None

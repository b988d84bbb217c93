"""The weights of the PyTorch tail (see `tail`): read from the GGUF file, stored, and multiplied.

Kept apart from the tail's maths because this is where the memory goes: the last layer's FFN is 270 MB
in float32 for a 3B model. On the CPU, the registry's quantisations (Q8_0, Q4_K, Q6_K) are not copied at
all: `GGUFMatrix` multiplies the file's own rows where llama.cpp holds them (native/vr_rows.c). Other
types and devices get a copy, dequantised in slices, in the cheapest form that keeps the self-check
within tolerance (`pick_dtype`: int8 on the CPU, float16 on GPUs). The LM head is never materialised
(`LMHead` multiplies, or reads, the rows an update needs).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gguf
import numpy as np
import torch

from . import native
from .errors import Remedy, SettingError
from .gguf_info import ModelInfo, TensorInfo, open_gguf, release_pages


def dequantize(raw: np.ndarray, ggml_type: int) -> torch.Tensor:
    """Rows of a GGUF tensor ([n_rows, row bytes]) as float32. Q8_0 has a vectorised torch path; the
    other quantised types, the K-quants of the registry's Q4_K_M files above all (Q4_K, Q6_K), go through
    ggml's own `dequantize_row_<type>`, the C code llama.cpp reads them back with. That is what the rows
    mean to llama.cpp by definition, bit for bit equal to the gguf package's numpy (tests/test_quant.py),
    and faster: measured on 2 cores, a 3B Q4_K_M head's 2048 rows (Q6_K) take 3 ms against numpy's 24 ms,
    which an update paid per read, and the int8 tail of a 3B (7B) Q4_K_M file loads in 0.6 s (1.2 s)
    against 1.5 s (2.7 s), the file in the page cache. Types ggml has no such function for (BF16) go
    through `gguf.quants` (numpy)."""
    t = gguf.GGMLQuantizationType(ggml_type)
    if t == gguf.GGMLQuantizationType.Q8_0:  # blocks of (f16 scale, 32 x int8)
        blocks = np.array(raw).reshape(raw.shape[0], -1, 34)  # a private, writable copy of just these rows
        scale = torch.from_numpy(blocks[..., :2].copy().view(np.float16).astype(np.float32))
        return torch.from_numpy(blocks[..., 2:].copy().view(np.int8)).float().mul_(scale).reshape(raw.shape[0], -1)
    if t == gguf.GGMLQuantizationType.F32:
        return torch.from_numpy(np.array(raw).view(np.float32))
    if t == gguf.GGMLQuantizationType.F16:
        return torch.from_numpy(np.array(raw).view(np.float16)).float()
    # ggml's names: dequantize_row_q4_0, ..._q4_K, ..._iq2_xxs (the K of the K-quants upper case)
    row = getattr(native.ggml(), "dequantize_row_" + t.name.lower().replace("_k", "_K"), None)
    if row is None:
        return torch.from_numpy(gguf.quants.dequantize(np.array(raw), t))
    src = np.ascontiguousarray(raw)  # memory-mapped rows are read in place
    block, type_size = gguf.GGML_QUANT_SIZES[t]
    out = np.empty((src.shape[0], src.shape[1] // type_size * block), np.float32)
    row(ctypes.c_void_p(src.ctypes.data), ctypes.c_void_p(out.ctypes.data), ctypes.c_int64(out.size))
    return torch.from_numpy(out)


class LMHead:
    """Rows of the output matrix, read and dequantised on demand from the GGUF file (never all of it),
    and the norm of every row (`norms`), which bounds what the rows an update leaves out would add
    (see `tail.RestrictedHead`).

    On the CPU, where the kernels read the head's type, its rows are multiplied in place (`GGUFMatrix`):
    nothing is copied or kept (`in_place`). Elsewhere the last `keep` rows read stay dequantised, in a
    ring: consecutive updates need mostly the same rows (measured on the 3B shape: ~88% of 2,048 rows
    shared by successive updates), so an update reads and dequantises only the rows the previous ones
    did not (18 ms -> ~3 ms per update for a Q6_K head).
    """

    def __init__(
        self,
        raw: np.ndarray,
        ggml_type: int,
        n_cols: int,
        device: torch.device,
        dtype: torch.dtype,
        keep: int = 2048,
        in_place: bool = True,
        shared: np.ndarray | None = None,
        threads: int = 0,
    ) -> None:
        """`in_place`: multiply the rows in place where the kernels can (the ring otherwise), through
        `shared` (llama.cpp's copy, `GGUFMatrix`) when given."""
        self.raw, self.ggml_type, self.n_cols = raw, ggml_type, n_cols  # raw: [n_vocab, row bytes], memory-mapped
        readable = in_place and device.type == "cpu" and GGUFMatrix.readable(ggml_type, n_cols)
        self.in_place = GGUFMatrix(raw, ggml_type, n_cols, shared, threads) if readable else None
        dtype = torch.float32 if self.in_place else dtype  # the products' precision: the stored values exactly
        self.device, self.dtype = device, dtype
        self._keep = keep
        self._store: torch.Tensor | None = None  # [keep, n_cols], allocated at the first read
        self._next = 0
        self._read, self._fd = None, None
        if self.in_place is None:  # the ring: which token each slot holds and where each token is kept
            self._owner = np.full(keep, -1, np.int64)
            self._slot = np.full(raw.shape[0], -1, np.int64)  # -1: not kept
            self._read = getattr(native.library(), "vr_read_rows", None)  # POSIX only
            self._fd = os.open(raw.filename, os.O_RDONLY | getattr(os, "O_BINARY", 0)) if self._read else None
        self.norms = self._row_norms()
        self.max_norm = float(self.norms.max())
        # in float32 for the native pass over the vocabulary (tail.head_terms), rounded up: a bound
        # computed with them is never below the one with the exact norms
        n32 = self.norms.astype(np.float32)
        self.norms32 = np.where(n32 < self.norms, np.nextafter(n32, np.float32(np.inf)), n32)

    def _row_norms(self) -> np.ndarray:
        """||W_v|| of every row as `rows` stores it (rounded to `dtype`), in float64 on the host: one pass
        over the head in slices of ~1 MB of float32 (measured ~0.5-1 s for a 3B model's head on 2 shared
        cores, once per tail), its file pages released after each slice."""
        n = self.raw.shape[0]
        out = np.empty(n)
        step = max(1, (1 << 18) // self.n_cols)
        for k, i in enumerate(range(0, n, step), start=1):
            rows = dequantize(self.raw[i : i + step], self.ggml_type).to(self.dtype).double()
            out[i : i + len(rows)] = rows.norm(dim=1).numpy()
            release_pages(self.raw)
            if k % 8 == 0:  # freed slices pile up in the heap: peak +39 MB over the pass, +24 MB with this
                return_freed_memory()
        return out

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, torch.Tensor | None]:
        """The rows `ids` (distinct) as stored, and their ids in the order of the rows: the kept ones first,
        gathered from the ring straight into the result (one copy: this runs every update, on ~2048
        rows), then those read now. In place: the ids, and no rows (`in_place` multiplies them)."""
        ids = np.asarray(ids, np.int64)
        if self.in_place:
            return ids, None
        slots = self._slot[ids]
        hit = slots >= 0
        n_hit = int(hit.sum())
        out = torch.empty(len(ids), self.n_cols, dtype=self.dtype)
        if n_hit:
            torch.index_select(self._store, 0, torch.from_numpy(slots[hit]), out=out[:n_hit])
        missed = ids[~hit]
        if len(missed):
            fresh = self._read_rows(missed)
            out[n_hit:] = fresh
            self._remember(missed, fresh)
        return np.concatenate([ids[hit], missed]), out.to(self.device)

    def _read_rows(self, ids: np.ndarray) -> torch.Tensor:
        raw = self._gather(ids)
        out = torch.empty(len(ids), self.n_cols, dtype=self.dtype)
        for i in range(0, len(ids), 256):  # in slices: the float32 temporaries stay ~2 MB
            out[i : i + 256] = dequantize(raw[i : i + 256], self.ggml_type)
        return out

    def _remember(self, ids: np.ndarray, rows: torch.Tensor) -> None:
        """Put freshly read rows in the ring, over the oldest (the last `keep` of them if there are more)."""
        ids, rows = ids[-self._keep :], rows[-self._keep :]
        if self._store is None:
            self._store = torch.empty(self._keep, self.n_cols, dtype=self.dtype)
        pos = (self._next + np.arange(len(ids))) % self._keep
        old = self._owner[pos]
        self._slot[old[old >= 0]] = -1
        self._owner[pos] = ids
        self._slot[ids] = pos
        self._store[torch.from_numpy(pos)] = rows
        self._next = int(pos[-1] + 1) % self._keep

    def _gather(self, ids: np.ndarray) -> np.ndarray:
        """The raw bytes of rows `ids`: pread where available (see native/vr_hook.c, vr_read_rows), else
        through the memory map, whose pages are released again right after."""
        if self._read is None:
            out = np.array(self.raw[ids])
            release_pages(self.raw)
            return out
        idx = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.empty((len(idx), self.raw.shape[1]), np.uint8)
        if self._read(self._fd, self.raw.offset, out.shape[1], idx.ctypes.data, len(idx), out.ctypes.data) != len(idx):
            raise OSError(f"could not read LM-head rows from {self.raw.filename}")
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


IN_PLACE_TYPES = {8, 12, 14}  # Q8_0, Q4_K, Q6_K: what the registry's Q8_0 and Q4_K_M files hold


def pick_dtype(name: str, device: torch.device, n_weights: int, types: set[int]) -> str:
    """The storage of the tail's matrices (`types`: their ggml types): on the CPU, the file's own rows
    read in place ("gguf", `GGUFMatrix`) where they are Q8_0, Q4_K or Q6_K; else float32 where they are
    small (test models), else a quarter of that: int8 on the CPU, float16 on cuda and mps.

    The tail's matrices are the last layer's FFN (3 x 2048 x 11008 for a 3B model): 270 MB in float32,
    more than V-Reason's whole memory budget (5% of a 3B run: ~220 MB). In place they cost nothing; an
    update's backward reads each once. On the CPU, int8 with one scale per row (torch's weight-only int8
    kernel, bfloat16 activations) reads a byte per weight: measured 1.1 ms per FFN matrix against 5-6 ms
    for float32 or bfloat16, with ~0.9% relative error per product, twice Q8_0's own (llama.cpp also
    quantises activations), but 183 MB for a 3B model (both orientations).
    """
    if name != "auto":
        return name
    if device.type == "cpu" and types <= IN_PLACE_TYPES:
        return "gguf"
    if n_weights * 4 <= 128 << 20:
        return "float32"
    return "int8" if device.type == "cpu" else "float16"


class Int8Matrix:
    """A matrix stored as int8 with one scale per row, in both orientations: the forward W·x and the
    backward Wᵀ·g each run torch's int8 weight-only kernel on rows (it has no transposed variant)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, qt: torch.Tensor, scale_t: torch.Tensor) -> None:
        self.q, self.scale, self.qt, self.scale_t = q, scale, qt, scale_t

    def mv(self, x: torch.Tensor) -> torch.Tensor:
        return _int8_rows(x, self.q, self.scale)

    def mv_t(self, g: torch.Tensor) -> torch.Tensor:
        return _int8_rows(g, self.qt, self.scale_t)

    @staticmethod
    def from_rows(chunks: Callable[[], Iterator[tuple[int, torch.Tensor]]], n_rows: int, n_cols: int) -> Int8Matrix:
        """Quantise from float32 row slices, produced twice (column scales need a first pass)."""
        col_max = torch.zeros(n_cols)
        for _, w in chunks():
            col_max = torch.maximum(col_max, w.abs().amax(0))
        scale_t = (col_max / 127).clamp_min(1e-12)
        q = torch.empty(n_rows, n_cols, dtype=torch.int8)
        qt = torch.empty(n_cols, n_rows, dtype=torch.int8)
        scale = torch.empty(n_rows)
        for i, w in chunks():
            s = (w.abs().amax(1) / 127).clamp_min(1e-12)
            scale[i : i + len(w)] = s
            q[i : i + len(w)] = torch.round(w / s[:, None]).to(torch.int8)
            qt[:, i : i + len(w)] = torch.round(w / scale_t).to(torch.int8).t()
        return Int8Matrix(q, scale.bfloat16(), qt, scale_t.bfloat16())


class GGUFMatrix:
    """A matrix multiplied where it lies in the GGUF file, in the file's own quantisation (native/vr_rows.c):
    no copy at all, where int8 copies of a 3B model's last FFN in both orientations take 183 MB. Rows are
    what ggml stores (`raw`: [n_rows, row bytes], memory-mapped); Wᵀ·g is a sum of rows, W·x a dot per row.

    The products share `threads` of OpenMP's team, the one llama.cpp and torch use (Wᵀ·g by ranges of
    columns, W·x by ranges of rows; a build without OpenMP runs them on one thread). On this 2-core x86
    machine, AVX-512, Wᵀ·g for the 3B shape's Q4_K ffn_gate (12.7 MB): 0.73 ms on one thread, 0.5-0.6 on two
    from memory; Q6_K ffn_down (18.5 MB): 1.65 and 0.7-0.85 ms (native/vr_rows.c has the kernels' rates)."""

    SERIAL = 1 << 20  # values below which one thread does it all (a hand-off costs more than it saves)

    def __init__(
        self, raw: np.ndarray, ggml_type: int, n_cols: int, shared: np.ndarray | None = None, threads: int = 0
    ) -> None:
        """`raw`: the tensor's rows, memory-mapped from the file; `shared`: the same bytes where llama.cpp
        holds them (`hook.ValueHook.weight_view`), read instead when given; `threads`: how many share a
        product (0: torch's count). The kernels trust the row length: rows of another size than `n_cols`
        values of the type take are refused here (ValueError), not read past their end."""
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        if raw.ndim != 2 or n_cols % block or raw.shape[1] != n_cols // block * type_size:
            raise ValueError(
                f"GGUF rows of shape {raw.shape} do not hold {n_cols} values of type "
                f"{gguf.GGMLQuantizationType(ggml_type).name} each"
            )
        if shared is not None and shared.shape != raw.shape:
            raise ValueError(f"llama.cpp's copy of the rows has shape {shared.shape}, the file's {raw.shape}")
        self.threads = threads or torch.get_num_threads()
        self.raw = raw if shared is None else shared
        self.shared = shared is not None
        self.ggml_type, self.n_cols = ggml_type, n_cols
        self.n_rows, self.row_bytes = raw.shape
        self._lib = native.library()

    @staticmethod
    def readable(ggml_type: int, n_cols: int) -> bool:
        """Whether the kernels read this type at this row length."""
        block = native.library().vr_rows_block(ggml_type)
        return block > 0 and n_cols % block == 0

    def as_native(self) -> native.Matrix:
        """The matrix as native/vr_tail.c reads it (vr_matrix): valid while this object is."""
        return native.Matrix(self.ggml_type, self.raw.ctypes.data, self.n_rows, self.row_bytes, self.n_cols)

    def _threads(self, n_rows: int) -> int:
        return 1 if n_rows * self.n_cols < self.SERIAL else self.threads

    def _ids(self, ids: np.ndarray | None) -> np.ndarray | None:
        """`ids` as the kernels read them (contiguous int64), after checking that they are integers naming
        rows of this matrix: the kernels take them on trust, and a row id out of range would read memory
        outside the tensor. Costs ~3 µs for an update's 2,048 rows."""
        if ids is None:
            return None
        idx = np.asarray(ids)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or (idx.size == 0)):
            raise ValueError(f"row ids must be a 1-D array of integers, not {idx.dtype} of shape {idx.shape}")
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise ValueError(f"row ids must lie in [0, {self.n_rows}): got {idx.min()}..{idx.max()}")
        return idx

    def _vector(self, v: torch.Tensor, n: int, what: str) -> np.ndarray:
        """`v` as a contiguous float32 vector of `n` values (the kernels read exactly n), else ValueError."""
        if v.dim() != 1 or v.numel() != n:
            raise ValueError(f"{what} must be a vector of {n} values, not of shape {tuple(v.shape)}")
        return np.ascontiguousarray(v.detach().cpu().numpy(), dtype=np.float32)

    def _check(self, status: int, what: str) -> None:
        if status != 0:  # vr_rows.c's -1: a type or row length it does not read
            raise ValueError(
                f"{what}: native/vr_rows.c cannot read {gguf.GGMLQuantizationType(self.ggml_type).name} rows of "
                f"{self.n_cols} values (error {status})"
            )

    def dot(self, ids: np.ndarray | None, x: torch.Tensor) -> torch.Tensor:
        """W[ids]·x (all rows when ids is None), float32."""
        idx = self._ids(ids)
        n = self.n_rows if idx is None else len(idx)
        xs = self._vector(x, self.n_cols, "x")
        out = np.empty(n, np.float32)
        ptr = None if idx is None else idx.ctypes.data
        status = self._lib.vr_rows_dot(
            self.ggml_type, self.raw.ctypes.data, self.row_bytes, self.n_cols, ptr, n, xs.ctypes.data,
            out.ctypes.data, self._threads(n),
        )  # fmt: skip
        self._check(status, "W·x")
        return torch.from_numpy(out)

    def axpy(self, ids: np.ndarray | None, g: torch.Tensor) -> torch.Tensor:
        """W[ids]ᵀ·g (all rows when ids is None), float32; rows whose weight is 0 are not read. `g` has one
        weight per row named (per row of W when ids is None)."""
        idx = self._ids(ids)
        gs = self._vector(g, self.n_rows if idx is None else len(idx), "the rows' weights")
        out = np.zeros(self.n_cols, np.float32)
        ptr = None if idx is None else idx.ctypes.data
        status = self._lib.vr_rows_axpy(
            self.ggml_type, self.raw.ctypes.data, self.row_bytes, self.n_cols, ptr, len(gs), gs.ctypes.data,
            out.ctypes.data, self._threads(len(gs)),
        )  # fmt: skip
        self._check(status, "Wᵀ·g")
        return torch.from_numpy(out)

    def mv(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.dot(None, v) for v in x]) if x.dim() == 2 else self.dot(None, x)

    def mv_t(self, g: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.axpy(None, v) for v in g]) if g.dim() == 2 else self.axpy(None, g)


class _MatVec(torch.autograd.Function):
    """W·x for a matrix that multiplies itself (int8 copies, GGUF rows in place): forward W·x, backward Wᵀ·g."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: Int8Matrix | GGUFMatrix) -> torch.Tensor:  # noqa: ANN001 - autograd's ctx
        ctx.m = m
        return m.mv(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        return ctx.m.mv_t(g), None


def _int8_rows(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q·x for one vector [k] or each row of a stack [m, k] (torch's kernel takes stacks only)."""
    xs = x.to(torch.bfloat16)
    out = torch._weight_int8pack_mm(xs if x.dim() == 2 else xs[None], q, scale).float()
    return out if x.dim() == 2 else out[0]


Matrix = torch.Tensor | Int8Matrix | GGUFMatrix


def mv(w: Matrix, x: torch.Tensor) -> torch.Tensor:
    """Matrix-vector product in the weights' storage, for one vector [k] or a stack of them [m, k];
    activations and the residual stream stay float32."""
    if not isinstance(w, torch.Tensor):
        return _MatVec.apply(x, w)
    if x.dim() == 2:
        return (x.to(w.dtype) @ w.T).float()
    return (w @ x.to(w.dtype)).float()


def mv_t(w: Matrix, g: torch.Tensor) -> torch.Tensor:
    """Wᵀ·g for one vector [n_rows] (the backward of `mv`), in the weights' storage, float32 out."""
    if not isinstance(w, torch.Tensor):
        return w.mv_t(g)
    return (g.to(w.dtype) @ w).float()


def return_freed_memory() -> None:
    """Hand freed temporaries back to the OS: glibc keeps freed heap blocks (its mmap threshold grows
    with each large free), which would stay resident for the whole answer (~100 MB after loading the
    tail, ~15 MB of update temporaries on a 3B). Costs ~0.1 ms."""
    native.malloc_trim()


def release_torch_pages() -> None:
    """Drop the read-only file pages of torch's libraries from this process's resident memory (Linux 5.4+,
    MADV_PAGEOUT; elsewhere nothing). Importing torch touches ~70 MB of them (its static registration of
    thousands of operators) that V-Reason never runs again: measured -58 MB, of which an update's operations
    fault ~16 MB back on first use (from the page cache, or from disk if nothing else maps them)."""
    if not sys.platform.startswith("linux"):
        return
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib") + os.sep
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith(lib_dir) and "w" not in parts[1]:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                if not native.madvise_pageout(start, end - start):  # refused before Linux 5.4
                    return


@dataclass
class TailWeights:
    """What `load_tail_weights` read: the last layer's matrices and norms, and the LM head's reader."""

    matrices: dict[str, Matrix]  # attn_output, ffn_norm, ffn_gate/up/down, output_norm
    head: LMHead
    kind: str  # how the matrices are stored (see pick_dtype)


def _readable(t: TensorInfo) -> bool:
    return GGUFMatrix.readable(t.ggml_type, t.shape[0])


WeightView = Callable[[str, np.ndarray], "np.ndarray | None"]  # (tensor name, file rows) -> llama.cpp's bytes


def load_tail_weights(
    info: ModelInfo, device: torch.device, dtype: str = "auto", shared: WeightView | None = None, threads: int = 0
) -> TailWeights:
    """Read the last layer after attention, the final norm and the LM head of `info`'s GGUF file; those
    read in place through `shared` where it has them (`hook.ValueHook.weight_view`), multiplied on
    `threads` (0: torch's count; the engine gives llama.cpp's).

    Tensors are dequantised in slices of ~4 MB of float32 and their file pages released after each, so
    loading a 3B model's tail never holds more than the stored matrices plus one slice.
    """
    g = open_gguf(info.path)
    last = info.n_layer - 1
    names = {
        "attn_output": f"blk.{last}.attn_output.weight",
        "ffn_norm": f"blk.{last}.ffn_norm.weight",
        "ffn_gate": f"blk.{last}.ffn_gate.weight",
        "ffn_up": f"blk.{last}.ffn_up.weight",
        "ffn_down": f"blk.{last}.ffn_down.weight",
        "output_norm": "output_norm.weight",
    }
    n_weights = sum(int(np.prod(g.tensors[n].shape)) for n in names.values())
    types = {g.tensors[n].ggml_type for k, n in names.items() if not k.endswith("norm")}
    kind = pick_dtype(dtype, device, n_weights, types)
    if kind in ("int8", "gguf") and device.type != "cpu":
        raise SettingError(
            "vreason.dtype",
            kind,
            f"the {kind} tail runs on the CPU only",
            [Remedy("float16 on a GPU", "vreason.dtype", "float16")],
        )
    unreadable = [n for k, n in names.items() if not k.endswith("norm") and not _readable(g.tensors[n])]
    if kind == "gguf" and unreadable:
        raise SettingError(
            "vreason.dtype",
            kind,
            f"{unreadable[0]} is of a type the in-place kernels do not read",
            [Remedy("a copy in int8", "vreason.dtype", "int8")],
        )
    matrices: dict[str, Matrix] = {}
    for key, name in names.items():
        t = g.tensors[name]
        raw = g.tensor_bytes(name)

        step = max(1, (1 << 20) // t.shape[0])  # rows per slice: float32 temporaries of ~4 MB

        def chunks(raw: np.ndarray = raw, t: TensorInfo = t, step: int = step) -> Iterator[tuple[int, torch.Tensor]]:
            for i in range(0, raw.shape[0], step):
                yield i, dequantize(raw[i : i + step], t.ggml_type)

        if kind == "gguf" and not key.endswith("norm"):
            view = shared(name, raw) if shared else None
            matrices[key] = GGUFMatrix(raw, t.ggml_type, t.shape[0], view, threads)
            continue  # read in place: its pages stay mapped
        if kind == "int8" and not key.endswith("norm"):
            matrices[key] = Int8Matrix.from_rows(chunks, raw.shape[0], t.shape[0])
        else:
            storage = torch.float32 if key.endswith("norm") else getattr(torch, kind)  # norms stay float32
            w = torch.empty(raw.shape[0], t.shape[0], dtype=storage)
            for i, part in chunks():
                w[i : i + len(part)] = part
            matrices[key] = w.reshape(tuple(reversed(t.shape))).to(device)
        release_pages(raw)
    # The rows an update reads, kept in the ring (off the CPU): float32 beside an int8 tail (the head's products
    # are in float32, RestrictedHead._gradient: a half-precision ring cost a conversion pass per update)
    head_dtype = torch.float32 if kind in ("int8", "gguf") else getattr(torch, kind)
    head = "output.weight" if "output.weight" in g.tensors else "token_embd.weight"  # tied: 3B
    t, raw = g.tensors[head], g.tensor_bytes(head)
    view = shared(head, raw) if shared and device.type == "cpu" else None
    lm_head = LMHead(raw, t.ggml_type, t.shape[0], device, head_dtype, shared=view, threads=threads)
    return_freed_memory()  # the slices' temporaries (~46 MB after the head's norms, 3B)
    return TailWeights(matrices, lm_head, kind)

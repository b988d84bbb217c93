"""The tail of a Qwen-VL language model in PyTorch: just enough of the model to differentiate the logits
with respect to the last layer's value rows.

The values of the last layer enter only its attention, and the attention probabilities do not depend
on them. With the probabilities `a` and the residual `ffn_inp` that llama.cpp computed for the current
token (captured by the hook), the logits as a function of the new value rows are

    x      = ffn_inp + W_o · Σ_rows a[h, r] · (V_new[r] - V_cache[r])      (per head h, GQA groups)
    y      = x + W_down · (silu(W_gate · n(x)) * (W_up · n(x)))             n = RMSNorm · ffn_norm
    logits = W_head · (RMSNorm(y) · output_norm)

Same for Qwen2-VL, Qwen2.5-VL and Qwen3-VL: their last layers differ only before `ffn_inp`.
Weights are read from the GGUF file itself (the layout `gguf_info` locates; Q8_0 dequantised here,
other types by `gguf.quants`). The LM head, the largest matrix (151936 x 2048 for a 3B model), is never
materialised: only the rows of the tokens that carry the gradient are read per update.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .errors import UserError
from .gguf_info import ModelInfo, open_gguf, release_pages


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then Apple's mps, then cpu, unless the user names one."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def norm_preserving(v_base: torch.Tensor, dv: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """V_new = (V + dV) / ||V + dV|| · ||V||, per row and kv head (norm over head_dim), as the method defines it."""
    v = v_base + dv
    return v * (v_base.norm(dim=-1, keepdim=True) / v.norm(dim=-1, keepdim=True).clamp_min(eps))


@dataclass
class TailInputs:
    """What llama.cpp computed for the current token, captured by the hook."""

    probs: torch.Tensor  # [n_head, n_rows] attention probabilities at the controlled rows (float32)
    ffn_inp: torch.Tensor  # [n_embd] residual stream before the last FFN (float32)


def dequantize(raw: np.ndarray, ggml_type: int) -> torch.Tensor:
    """Rows of a GGUF tensor as float32. Q8_0 (the usual laptop quant) has a vectorised torch path;
    other types go through `gguf.quants` (numpy)."""
    import gguf

    t = gguf.GGMLQuantizationType(ggml_type)
    raw = np.array(raw)  # a private, writable copy of just these rows
    if t == gguf.GGMLQuantizationType.Q8_0:  # blocks of (f16 scale, 32 x int8)
        blocks = raw.reshape(raw.shape[0], -1, 34)
        scale = torch.from_numpy(blocks[..., :2].copy().view(np.float16).astype(np.float32))
        return torch.from_numpy(blocks[..., 2:].copy().view(np.int8)).float().mul_(scale).reshape(raw.shape[0], -1)
    if t == gguf.GGMLQuantizationType.F32:
        return torch.from_numpy(raw.view(np.float32))
    if t == gguf.GGMLQuantizationType.F16:
        return torch.from_numpy(raw.view(np.float16)).float()
    return torch.from_numpy(gguf.quants.dequantize(raw, t))


class LMHead:
    """Rows of the output matrix, read and dequantised on demand from the GGUF file (never all of it)."""

    def __init__(self, raw: np.ndarray, ggml_type: int, n_cols: int, device: torch.device, dtype: torch.dtype) -> None:
        self.raw, self.ggml_type, self.n_cols = raw, ggml_type, n_cols  # raw: [n_vocab, row bytes], memory-mapped
        self.device, self.dtype = device, dtype
        from .hook import native

        self._read = getattr(native(), "vr_read_rows", None)
        self._fd = os.open(raw.filename, os.O_RDONLY | getattr(os, "O_BINARY", 0)) if self._read else None

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        raw = self._gather(ids)
        out = torch.empty(len(ids), self.n_cols, dtype=self.dtype)
        for i in range(0, len(ids), 256):  # in slices: the float32 temporaries stay ~2 MB
            out[i : i + 256] = dequantize(raw[i : i + 256], self.ggml_type)
        return out.to(self.device)

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


def pick_dtype(name: str, device: torch.device, n_weights: int) -> str:
    """The storage of the tail's matrices: float32 where they are small (test models), else a quarter
    of that: int8 on the CPU, float16 on cuda and mps.

    The tail's matrices are the last layer's FFN (3 x 2048 x 11008 for a 3B model): 270 MB in float32,
    over half of the whole V-Reason memory budget (10% of the base run), and twice read per update.
    On the CPU, int8 with one scale per row (torch's weight-only int8 kernel, bfloat16 activations)
    reads a byte per weight: measured 1.1 ms per FFN matrix against 5-6 ms for float32 or bfloat16,
    with ~0.9% relative error per product, twice Q8_0's own (llama.cpp also quantises activations).
    """
    if name != "auto":
        return name
    if n_weights * 4 <= 128 << 20:
        return "float32"
    return "int8" if device.type == "cpu" else "float16"


class Int8Matrix:
    """A matrix stored as int8 with one scale per row, in both orientations: the forward W·x and the
    backward Wᵀ·g each run torch's int8 weight-only kernel on rows (it has no transposed variant)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, qt: torch.Tensor, scale_t: torch.Tensor) -> None:
        self.q, self.scale, self.qt, self.scale_t = q, scale, qt, scale_t

    @staticmethod
    def from_rows(chunks: Callable[[], Iterator[tuple[int, torch.Tensor]]], n_rows: int, n_cols: int) -> "Int8Matrix":
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


class _Int8MatVec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, m: Int8Matrix) -> torch.Tensor:  # noqa: ANN001 - autograd's ctx
        ctx.m = m
        return torch._weight_int8pack_mm(x.to(torch.bfloat16)[None], m.q, m.scale)[0].float()

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        m = ctx.m
        return torch._weight_int8pack_mm(g.to(torch.bfloat16)[None], m.qt, m.scale_t)[0].float(), None


class Tail:
    """Last layer after attention, final norm and LM head, rebuilt from GGUF weights."""

    def __init__(self, info: ModelInfo, weights: dict[str, "torch.Tensor | Int8Matrix"], head: LMHead,
                 device: torch.device, kind: str) -> None:
        self.info = info
        self.eps = info.rms_eps
        self.device, self.kind = device, kind  # kind: how the matrices are stored (see pick_dtype)
        self.w_o = weights["attn_output"]  # [n_embd, n_head*head_dim]
        self.ffn_norm = weights["ffn_norm"]
        self.w_gate, self.w_up, self.w_down = weights["ffn_gate"], weights["ffn_up"], weights["ffn_down"]
        self.out_norm = weights["output_norm"]
        self.head = head

    @staticmethod
    def from_gguf(info: ModelInfo, device: str = "auto", dtype: str = "auto") -> "Tail":
        g = open_gguf(info.path)
        last = info.n_layer - 1
        names = {"attn_output": f"blk.{last}.attn_output.weight", "ffn_norm": f"blk.{last}.ffn_norm.weight",
                 "ffn_gate": f"blk.{last}.ffn_gate.weight", "ffn_up": f"blk.{last}.ffn_up.weight",
                 "ffn_down": f"blk.{last}.ffn_down.weight", "output_norm": "output_norm.weight"}
        dev = pick_device(device)
        n_weights = sum(int(np.prod(g.tensors[n].shape)) for n in names.values())
        kind = pick_dtype(dtype, dev, n_weights)
        if kind == "int8" and dev.type != "cpu":
            raise UserError("--tail-dtype int8 runs on the CPU only; use float16 or bfloat16 on a GPU")
        weights = {}
        for key, name in names.items():
            t = g.tensors[name]
            raw = g.tensor_bytes(name)

            step = max(1, (1 << 20) // t.shape[0])  # rows per slice: float32 temporaries of ~4 MB

            def chunks(raw=raw, t=t, step=step) -> Iterator[tuple[int, torch.Tensor]]:
                for i in range(0, raw.shape[0], step):
                    yield i, dequantize(raw[i : i + step], t.ggml_type)

            if kind == "int8" and not key.endswith("norm"):
                weights[key] = Int8Matrix.from_rows(chunks, raw.shape[0], t.shape[0])
            else:
                w = torch.empty(raw.shape[0], t.shape[0], dtype=torch.float32 if key.endswith("norm") else getattr(torch, kind))
                for i, part in chunks():
                    w[i : i + len(part)] = part
                weights[key] = w.reshape(tuple(reversed(t.shape))).to(dev)  # norms stay float32
            release_pages(raw)
        head_dtype = torch.bfloat16 if kind == "int8" else getattr(torch, kind)  # rows: read per update
        return_freed_memory()
        head = "output.weight" if "output.weight" in g.tensors else "token_embd.weight"  # tied: 3B
        return Tail(info, weights, LMHead(g.tensor_bytes(head), g.tensors[head].ggml_type, g.tensors[head].shape[0], dev, head_dtype), dev, kind)

    def hidden(self, inp: TailInputs, v_base: torch.Tensor, v_cache: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
        """The normalised final hidden state for value offset `dv` ([n_rows, n_head_kv, head_dim])."""
        n_head, n_kv = self.info.n_head, self.info.n_head_kv
        delta = norm_preserving(v_base, dv) - v_cache  # [R, G, D]; zero where dv is what is cached
        a = inp.probs.view(n_kv, n_head // n_kv, -1)  # query head h uses kv head h // (n_head/n_kv)
        attn = torch.einsum("gqr,rgd->gqd", a, delta).reshape(-1)  # [n_head*head_dim], head-major
        x = inp.ffn_inp + mv(self.w_o, attn)
        n1 = rms_norm(x, self.ffn_norm, self.eps)
        y = x + mv(self.w_down, torch.nn.functional.silu(mv(self.w_gate, n1)) * mv(self.w_up, n1))
        return rms_norm(y, self.out_norm, self.eps)

    def logits(self, hidden: torch.Tensor, head_rows: torch.Tensor) -> torch.Tensor:
        return mv(head_rows, hidden)


def return_freed_memory() -> None:
    """Hand freed temporaries back to the OS: glibc keeps freed heap blocks (its mmap threshold grows
    with each large free), which would stay resident for the whole answer (~100 MB after loading the
    tail, ~15 MB of update temporaries on a 3B). Costs ~0.1 ms."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def mv(w: "torch.Tensor | Int8Matrix", x: torch.Tensor) -> torch.Tensor:
    """Matrix-vector product in the weights' storage; activations and the residual stream stay float32."""
    if isinstance(w, Int8Matrix):
        return _Int8MatVec.apply(x, w)
    return (w @ x.to(w.dtype)).float()


def entropy_loss(z_sub: torch.Tensor, ids: torch.Tensor, z_full: torch.Tensor, alpha: int) -> torch.Tensor:
    """alpha · KL(p || U) = alpha · (ln|V| - H(p)), with the logits at `ids` replaced by `z_sub`.

    Logits outside `ids` are held at llama.cpp's values: they carry (almost) no probability, so their
    gradient is negligible, and the entropy itself stays that of the full vocabulary.
    """
    z = z_full.index_put((ids,), z_sub)
    logp = torch.log_softmax(z, dim=-1)
    h = -(logp.exp() * logp).sum()
    return alpha * (math.log(z_full.numel()) - h)


def mass_tokens(logits: np.ndarray, mass: float, cap: int) -> np.ndarray:
    """The token ids that carry `mass` of the loss gradient's weight (at most `cap` ids), sorted.

    d loss / d z_v = alpha · p_v · (ln p_v + H): a token's weight in the LM head's backward is
    |p_v (ln p_v + H)|, so tokens are ranked by that, not by probability alone (unlikely tokens with
    large |ln p| still pull). Dropping the rest changes the gradient by at most their share.
    """
    z = logits.astype(np.float64)
    logp = z - z.max()
    logp -= np.log(np.exp(logp).sum())
    p = np.exp(logp)
    w = np.abs(p * (logp - (p * logp).sum()))
    k = min(cap, w.size)
    top = np.argpartition(-w, k - 1)[:k] if k < w.size else np.arange(w.size)
    top = top[np.argsort(-w[top])]
    n = int(np.searchsorted(np.cumsum(w[top]), mass * w.sum())) + 1
    return np.sort(top[: min(n, k)])

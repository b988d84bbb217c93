"""The tail of a Qwen-VL language model in PyTorch: just enough of the model to differentiate the logits
with respect to the last layer's value rows.

The values of the last layer enter only its attention, and the attention probabilities do not depend
on them. With the probabilities `a` and the residual `ffn_inp` that llama.cpp computed for the current
token (captured by the hook), the logits as a function of the new value rows are

    x      = ffn_inp + W_o · Σ_rows a[h, r] · (V_new[r] - V_cache[r])      (per head h, GQA groups)
    y      = x + W_down · (silu(W_gate · n(x)) * (W_up · n(x)))             n = RMSNorm · ffn_norm
    logits = W_head · (RMSNorm(y) · output_norm)

Same for Qwen2-VL, Qwen2.5-VL and Qwen3-VL: their last layers differ only before `ffn_inp`.
The weights are the GGUF file's, multiplied where llama.cpp holds them on the CPU (`tail_weights`, which
also keeps copies where that cannot be), and the LM head, the largest matrix (151936 x 2048 for a 3B
model), is never materialised: an update reads only the rows of the tokens that carry the gradient, as
many as `RestrictedHead` needs to bound the gradient's error.

The first optimiser step of an update is taken where llama.cpp already is: the value rows it attended
over (dV's, rounded to the cache's F16). There the forward is llama.cpp's (the hook captures the FFN's
gate and up projections and the layer's output), so the step needs only the backward, one pass over the
transposed matrices instead of two passes (`backward_at_llama_state`), and its distribution is
llama.cpp's own.
Later steps of the same update (`--steps` > 1) have moved dV and run the tail's forward: their logits
are anchored on llama.cpp's, z(dV) = z0 + W·(h(dV) - h_A), where z0 are the logits llama.cpp computed
and h_A the tail's own state for the values llama.cpp attended over, so that the tail's rounding cancels.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import native
from .gguf_info import ModelInfo
from .tail_weights import (
    GGUFMatrix,
    LMHead,
    Matrix,
    WeightView,
    load_tail_weights,
    mv,
    mv_t,
    release_torch_pages,
)


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


def norm_preserving(
    v_base: torch.Tensor, dv: torch.Tensor, base_norm: torch.Tensor | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """V_new = (V + dV) / ||V + dV|| · ||V||, per row and kv head (norm over head_dim), as the method defines it.
    `base_norm`: ||V|| (keepdim), where the caller holds it: V does not change within an answer."""
    v = v_base + dv
    base_norm = v_base.norm(dim=-1, keepdim=True) if base_norm is None else base_norm
    return v * (base_norm / v.norm(dim=-1, keepdim=True).clamp_min(eps))


@dataclass(frozen=True)
class ValueWrite:
    """The value rows one write puts into llama.cpp's cache, and how much of the change asked for got there.

    llama.cpp stores the value rows in F16: a change of a value below half an F16 step (2^-11 of the value,
    relative) rounds back to the value it was, so small learning rates can leave the cache as it was. With
    V_old the F16 rows the cache held before the write (as floats), V_new = normp(V + dV) in float32 and
    V16_new its F16 rounding (what is written):
        written  = ||V16_new - V_old||    (Frobenius, over every value written)
        intended = ||V_new - V_old||
    `ratio` = written / intended: ~1 where the change is many F16 steps, 0 where it was rounded away
    entirely, between where part of it was (it may exceed 1 a little: rounding can also go up)."""

    v16: np.ndarray  # F16 [rows, n_head_kv·head_dim], as llama.cpp stores them
    dv_norm: float  # ||dV||
    written: float  # nan where the rows before were not given
    intended: float

    @property
    def ratio(self) -> float | None:
        """written / intended; None where nothing was asked (intended 0) or the rows before were not given."""
        return self.written / self.intended if self.intended > 0 else None


def value_write(
    v_base: torch.Tensor, dv: torch.Tensor, base_norm: torch.Tensor, previous: np.ndarray | None = None
) -> ValueWrite:
    """`norm_preserving` as llama.cpp stores value rows (F16 [rows, n_head_kv·head_dim]) and ||dV||, for the
    write after each update, measured against the F16 rows the cache holds now (`previous`, same shape;
    see ValueWrite). On the CPU in one native pass (native/vr_tail.c), where torch took seven operations
    (~0.25 ms in an update, most of it their code's first call) and numpy's F16 conversion 0.1 ms; the
    measure adds two F16 conversions and two squared distances per value to that pass."""
    if v_base.device.type != "cpu":
        with torch.no_grad():
            v_new = norm_preserving(v_base, dv, base_norm).reshape(len(v_base), -1)
            v16 = v_new.to(torch.float16)
            written = intended = math.nan
            if previous is not None:
                old = torch.from_numpy(previous).to(v_new.device).float()
                written, intended = float((v16.float() - old).norm()), float((v_new - old).norm())
            return ValueWrite(v16.cpu().numpy(), float(dv.norm()), written, intended)
    base, d, norm = v_base.contiguous(), dv.detach().contiguous(), base_norm.contiguous()
    v16 = np.empty((len(base), base[0].numel()), np.float16)
    n, dim = norm.numel(), base.shape[-1]
    change = np.full(2, math.nan)
    if previous is not None:
        previous = np.ascontiguousarray(previous, np.float16)
        if previous.shape != v16.shape:
            raise ValueError(f"the value rows before the write have shape {previous.shape}, not {v16.shape}")
    dv_norm = native.library().vr_tail_norm_preserving_change(
        base.data_ptr(), d.data_ptr(), norm.data_ptr(), n, dim, v16.ctypes.data,
        None if previous is None else previous.ctypes.data, change.ctypes.data,
    )  # fmt: skip
    if dv_norm < 0:
        raise RuntimeError(f"native/vr_tail.c cannot write value rows of {dim} values")
    return ValueWrite(v16, dv_norm, float(change[0]), float(change[1]))


def norm_preserving_f16(v_base: torch.Tensor, dv: torch.Tensor, base_norm: torch.Tensor) -> tuple[np.ndarray, float]:
    """(`norm_preserving` as llama.cpp stores value rows, ||dV||): `value_write` without the measure."""
    w = value_write(v_base, dv, base_norm)
    return w.v16, w.dv_norm


def norm_preserving_vjp(
    v_base: torch.Tensor, dv: torch.Tensor, g: torch.Tensor, base_norm: torch.Tensor | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """gᵀ·∂V_new/∂dV for `norm_preserving`: with v = V + dV and u = v/||v||, ∂V_new/∂dV = ||V||/||v||·(I - u·uᵀ)
    per row and kv head, so the gradient is ||V||/||v||·(g - u·(u·g))."""
    v = v_base + dv
    n = v.norm(dim=-1, keepdim=True).clamp_min(eps)
    u = v / n
    base_norm = v_base.norm(dim=-1, keepdim=True) if base_norm is None else base_norm
    return (base_norm / n) * (g - u * (u * g).sum(-1, keepdim=True))


def rms_norm_vjp(x: torch.Tensor, weight: torch.Tensor, eps: float, g: torch.Tensor) -> torch.Tensor:
    """gᵀ·∂rms_norm(x)/∂x for one state x: with r = (mean(x²) + eps)^-1/2 and a = weight·g,
    r·a - x·r³·mean(x·a), its scalars as Python floats (five tensor operations where there were twelve: in
    an update each costs ~10-30 µs however small its vectors, its memory cold after llama.cpp's decode)."""
    a = weight * g
    r = 1.0 / math.sqrt(float(x.dot(x)) / x.numel() + eps)
    return torch.add(a * r, x, alpha=-(r**3) * float(x.dot(a)) / x.numel())


@dataclass
class TailInputs:
    """What llama.cpp computed for the current token, captured by the hook (float32)."""

    probs: torch.Tensor  # [n_head, n_rows] attention probabilities at the controlled rows
    ffn_inp: torch.Tensor  # [n_embd] residual stream before the last FFN
    gate: torch.Tensor  # [n_ff] the FFN's gate projection, before the SiLU
    up: torch.Tensor  # [n_ff] its up projection
    y: torch.Tensor  # [n_embd] the last layer's output (FFN plus residual), before the final norm


class Tail:
    """Last layer after attention, final norm and LM head, rebuilt from GGUF weights."""

    def __init__(
        self,
        info: ModelInfo,
        weights: dict[str, Matrix],
        head: LMHead,
        device: torch.device,
        kind: str,
    ) -> None:
        self.info = info
        self.eps = info.rms_eps
        self.device, self.kind = device, kind  # kind: how the matrices are stored (see tail_weights.pick_dtype)
        self.w_o = weights["attn_output"]  # [n_embd, n_head*head_dim]
        self.ffn_norm = weights["ffn_norm"]
        self.w_gate, self.w_up, self.w_down = weights["ffn_gate"], weights["ffn_up"], weights["ffn_down"]
        self.out_norm = weights["output_norm"]
        self.head = head
        self.verified = False  # its own forward has given llama.cpp's logits (vreason.VReason._selfcheck)
        mats = (self.w_down, self.w_gate, self.w_up, self.w_o)
        in_place = device.type == "cpu" and all(isinstance(m, GGUFMatrix) for m in mats)
        self._native = _NativeGradDV(*mats) if in_place else None  # grad_dv in one call (native/vr_tail.c)

    @staticmethod
    def from_gguf(
        info: ModelInfo, device: str = "auto", dtype: str = "auto", shared: WeightView | None = None, threads: int = 0
    ) -> Tail:
        """The tail of the model `info` describes, on `device` (see pick_device), matrices stored as `dtype`,
        those read in place through `shared` where it has them (llama.cpp's own bytes) on `threads`."""
        dev = pick_device(device)
        release_torch_pages()  # what torch's import touched, before the load's own peak
        w = load_tail_weights(info, dev, dtype, shared, threads)
        release_torch_pages()  # and what loading touched
        return Tail(info, w.matrices, w.head, dev, w.kind)

    def llama_state(self, inp: TailInputs) -> torch.Tensor:
        """The normalised final hidden state llama.cpp computed for the token (from its layer output); on
        the CPU in one native call (six torch operations, ~0.1 ms in an update)."""
        if self.device.type != "cpu":
            return rms_norm(inp.y, self.out_norm, self.eps)
        y, w = inp.y.contiguous(), self.out_norm.contiguous()
        out = torch.empty_like(y)
        native.library().vr_tail_rms_norm(y.data_ptr(), w.data_ptr(), y.numel(), self.eps, out.data_ptr())
        return out

    def backward_at_llama_state(self, inp: TailInputs, grad_h: torch.Tensor) -> torch.Tensor:
        """∂L/∂V_new [n_rows, n_head_kv, head_dim] from ∂L/∂h, at the values llama.cpp attended over (their
        F16 rounding away from dV's, ~1e-3 of them): the module docstring's equations differentiated by
        hand at the captured gate g, up u and output y (s = sigmoid(g), silu' = s·(1 + g·(1 - s))), each
        matrix read once, transposed."""
        dy = rms_norm_vjp(inp.y, self.out_norm, self.eps, grad_h)
        d_act = mv_t(self.w_down, dy)
        s = torch.sigmoid(inp.gate)
        d_up = d_act * inp.gate * s
        d_gate = d_act * inp.up * s * (1 + inp.gate * (1 - s))
        d_n = mv_t(self.w_gate, d_gate) + mv_t(self.w_up, d_up)
        dx = dy + rms_norm_vjp(inp.ffn_inp, self.ffn_norm, self.eps, d_n)
        n_head, n_kv = self.info.n_head, self.info.n_head_kv
        d_attn = mv_t(self.w_o, dx).view(n_kv, n_head // n_kv, -1)  # query head h uses kv head h // (n_head/n_kv)
        a = inp.probs.view(n_kv, n_head // n_kv, -1)
        return torch.bmm(a.transpose(1, 2), d_attn).transpose(0, 1)  # Σ_q a[g, q, r]·d_attn[g, q]: [rows, G, D]

    def grad_dv(
        self, inp: TailInputs, grad_h: torch.Tensor, v_base: torch.Tensor, dv: torch.Tensor, v_norm: torch.Tensor
    ) -> torch.Tensor:
        """∂L/∂dV at llama.cpp's state from ∂L/∂h: the tail's backward (`backward_at_llama_state`), then the
        norm-preserving write's (`norm_preserving_vjp`, V_new = normp(v_base + dv), ||v_base|| = v_norm). On
        the CPU with the matrices read in place, one native call does both (native/vr_tail.c: the same
        maths, tested equal), which made an update 0.76 ms shorter than the ~25 small torch operations did
        (3B shape, medians of 138 updates, answers interleaved)."""
        if self._native is not None:
            return self._native(inp, grad_h, v_base, dv, v_norm, self)
        return norm_preserving_vjp(v_base, dv, self.backward_at_llama_state(inp, grad_h), v_norm)

    def hidden(self, inp: TailInputs, delta: torch.Tensor | None) -> torch.Tensor:
        """The normalised final hidden state when the value rows change by `delta` from what llama.cpp
        attended over ([n_rows, n_head_kv, head_dim]); None: the state llama.cpp computed (h_A)."""
        return self._ffn(inp.ffn_inp if delta is None else self._moved(inp, delta))

    def hidden_pair(self, inp: TailInputs, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_A, h(delta)) in one pass over the FFN's matrices: the products are memory-bound, so two
        vectors cost about one (measured 1.15x of one on the 3B shape's int8 FFN), and an update needs
        both, the anchor for the head and the step's state for the gradient. h_A carries no gradient."""
        h = self._ffn(torch.stack([inp.ffn_inp, self._moved(inp, delta)]))
        return h[0].detach(), h[1]

    def _moved(self, inp: TailInputs, delta: torch.Tensor) -> torch.Tensor:
        """The residual before the FFN with the value rows moved by `delta`."""
        n_head, n_kv = self.info.n_head, self.info.n_head_kv
        a = inp.probs.view(n_kv, n_head // n_kv, -1)  # query head h uses kv head h // (n_head/n_kv)
        attn = torch.einsum("gqr,rgd->gqd", a, delta).reshape(-1)  # [n_head*head_dim], head-major
        return inp.ffn_inp + mv(self.w_o, attn)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The last FFN with its residual, then the final norm: one state [n_embd] or a stack [m, n_embd]."""
        n1 = rms_norm(x, self.ffn_norm, self.eps)
        y = x + mv(self.w_down, torch.nn.functional.silu(mv(self.w_gate, n1)) * mv(self.w_up, n1))
        return rms_norm(y, self.out_norm, self.eps)


class _NativeGradDV:
    """Tail.grad_dv on the CPU for the last FFN and attention output read in place: vr_tail_grad_dv, whose
    arguments (native.GradDVArgs) are made once here and its vectors' addresses set per call (they hold
    the last call's afterwards, never read again)."""

    def __init__(self, *mats: GGUFMatrix) -> None:  # down, gate, up, o
        self.mats = [m.as_native() for m in mats]
        self.args = native.GradDVArgs(*(ctypes.pointer(m) for m in self.mats), threads=mats[0].threads)
        self.ref = ctypes.byref(self.args)
        self.fn = native.library().vr_tail_grad_dv

    def __call__(
        self,
        inp: TailInputs,
        grad_h: torch.Tensor,
        v_base: torch.Tensor,
        dv: torch.Tensor,
        v_norm: torch.Tensor,
        tail: Tail,
    ) -> torch.Tensor:
        f32 = [t.contiguous() for t in (inp.y, tail.out_norm, inp.ffn_inp, tail.ffn_norm, inp.gate, inp.up, grad_h)]
        base, d, norm = v_base.contiguous(), dv.contiguous(), v_norm.contiguous()
        probs = inp.probs if inp.probs.stride(1) == 1 else inp.probs.contiguous()
        info = tail.info
        self._check(f32, probs, base, d, norm, info)
        out = torch.empty_like(base)
        a = self.args
        a.y, a.out_norm, a.ffn_inp, a.ffn_norm, a.gate_act, a.up_act, a.grad_h = (t.data_ptr() for t in f32)
        a.eps, a.probs, a.probs_ld = tail.eps, probs.data_ptr(), probs.stride(0)
        a.v_base, a.dv, a.v_norm, a.grad_dv = base.data_ptr(), d.data_ptr(), norm.data_ptr(), out.data_ptr()
        a.n_head, a.n_kv, a.head_dim, a.n_rows = info.n_head, info.n_head_kv, info.head_dim, base.shape[0]
        err = self.fn(self.ref)
        if err == -1:
            raise MemoryError("no memory for the V-Reason tail's backward")
        if err == -4:
            raise ValueError(
                f"the tail's matrices (down {self._shape(0)}, gate {self._shape(1)}, up {self._shape(2)}, o "
                f"{self._shape(3)}) do not fit n_head {info.n_head}, n_head_kv {info.n_head_kv}, head_dim "
                f"{info.head_dim} and {base.shape[0]} value rows"
            )
        if err:
            raise RuntimeError(f"native/vr_tail.c cannot run this tail (error {err})")
        return out

    def _shape(self, i: int) -> tuple[int, int]:
        return self.mats[i].n_rows, self.mats[i].n_cols

    def _check(
        self,
        f32: list[torch.Tensor],
        probs: torch.Tensor,
        base: torch.Tensor,
        dv: torch.Tensor,
        norm: torch.Tensor,
        info: ModelInfo,
    ) -> None:
        """The lengths vr_tail_grad_dv takes from the matrices and `info` (it checks those agree), against the
        vectors it reads: it sees pointers only, and reads that many values from each. ValueError if not."""
        n_embd, n_ff = self.mats[0].n_rows, self.mats[0].n_cols
        n_rows, shape = base.shape[0], (base.shape[0], info.n_head_kv, info.head_dim)
        wanted = [n_embd] * 4 + [n_ff] * 2 + [n_embd]  # y, out_norm, ffn_inp, ffn_norm, gate, up, grad_h
        names = ("y", "out_norm", "ffn_inp", "ffn_norm", "gate", "up", "grad_h")
        for name, t, n in zip(names, f32, wanted, strict=True):
            if t.numel() != n or t.dtype != torch.float32:
                raise ValueError(f"the tail's {name} must hold {n} float32 values, not {t.numel()} {t.dtype}")
        if probs.shape != (info.n_head, n_rows) or probs.dtype != torch.float32:
            raise ValueError(f"attention probabilities of shape {tuple(probs.shape)}, not ({info.n_head}, {n_rows})")
        for name, t, s in (("V", base, shape), ("dV", dv, shape), ("||V||", norm, (*shape[:2], 1))):
            if tuple(t.shape) != s or t.dtype != torch.float32:
                raise ValueError(f"{name} of shape {tuple(t.shape)} {t.dtype}, not {s} float32")


@dataclass
class HeadStep:
    """What the restricted head gives one optimiser step (see `RestrictedHead.at`)."""

    loss: float  # alpha · (ln|V| - H) of the distribution the step computed
    grad_h: torch.Tensor  # the loss's gradient at the final hidden state through the kept rows, float32
    dz: torch.Tensor  # how far the kept rows' logits moved from llama.cpp's, W_K·(h - h_A); zero at h_A
    bound: float  # relative error of `grad_h` against all rows' gradient is at most this (inf: unknown)
    capped: bool  # the rows reached the cap before the bound met the target


class _AtHidden(torch.autograd.Function):
    """The loss as a function of h, its value and its gradient computed by `RestrictedHead`: the
    backward through the rest of the tail is autograd's, this node only hands it the gradient at h."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, value: torch.Tensor, grad_h: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(grad_h)
        return value.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        (grad_h,) = ctx.saved_tensors
        return g * grad_h, None, None


def loss_at(h: torch.Tensor, step: HeadStep) -> torch.Tensor:
    """The step's loss as a differentiable function of the final hidden state `h`."""
    return _AtHidden.apply(h, torch.tensor(step.loss, dtype=torch.float32, device=h.device), step.grad_h)


class RestrictedHead:
    """The LM-head rows an update differentiates through, chosen so that the gradient is exact to a bound.

    The loss alpha·(ln|V| - H(softmax(z))) depends on dV only through the final hidden state h, with
    z = z0 + W·(h - h_A) (module docstring). Its gradient at h is G = Σ_v g_v·W_v, with
    g_v = alpha·p_v·(ln p_v + H) (these weights sum to zero, so G cancels: a share of Σ|g_v| says nothing
    about G). Only the rows K are read; the logits of the others are held at llama.cpp's z0, and the
    gradient computed is G_K = Σ_{v∈K} g~_v·W_v, with g~ the weights of that held distribution p~.

    What is bounded: the relative error of G_K against G, at the tail's final hidden state,

        ||G - G_K|| <= B,   B = Σ_{v∈K} ||W_v||·|g_v - g~_v|  +  Σ_{v∉K} ||W_v||·|g_v|

    where each term is bounded from p~ alone. A held logit is off by at most R = ||h - h_A||·max_v ||W_v||
    (tiny at the first step of an update, where h differs from h_A by the F16 rounding of the cached
    values only), so the log-normaliser moves by at most gamma, ln p_v by at most gamma on K and R + gamma
    off K, H by at most eta (`HeldWeights`), and with l_v = ln p~_v + H~:

        on K:   |g_v - g~_v| <= p~_v·((e^gamma - 1)·|l_v| + e^gamma·(gamma + eta))
        off K:  |g_v|        <= p~_v·e^(R + gamma)·(|l_v| + R + gamma + eta)

    With h = h_A, B is Σ_{v∉K} |g_v|·||W_v|| (the held logits are exact). The rows are taken in order of
    their term and added until B <= head_error/(1 + head_error)·||G_K||, which makes ||G - G_K|| / ||G||
    <= head_error (as ||G|| >= ||G_K|| - B); at most `cap` rows (then `capped`, and the bound reached is
    reported). The gradient with respect to dV is J^T·G_K (J: h's Jacobian); its relative error is not
    bounded by this, only measured (tests/test_vreason_exact.py). Rows already read stay for the
    update's later steps, which check the bound again at their own h and read more rows if it fails.
    The bound is in exact arithmetic over the stored rows; the storage's own rounding is the tail
    dtype's error, measured separately.
    """

    def __init__(
        self,
        head: LMHead,
        z0: np.ndarray,
        h_anchor: torch.Tensor,
        error: float,
        cap: int,
        ids: np.ndarray | None = None,
        ratio: float = 1.0,
        native: bool = True,
    ) -> None:
        """`z0`: llama.cpp's logits, `h_anchor`: h_A; `ids`: a fixed set of rows (no growth, no bound
        target); `ratio`: a first guess of ||G_K|| / Σ_K ||W_v||·|g_v| (the last update's), which sizes
        the first read; `native`: an update's first step on the CPU in native code (False: the
        same in Python, which tests compare it with)."""
        self.head, self.h_anchor, self.error, self.ratio = head, h_anchor.detach(), error, ratio
        self.z0 = z0
        self._z0_64: np.ndarray | None = None  # z0 in float64, for HeldWeights (steps away from the anchor)
        self._terms: HeadTerms | None = None  # the rows' terms at the anchor (_anchor_terms)
        self.native = native
        self.grow = ids is None
        self.cap = min(cap, len(z0))
        self.ids = np.zeros(0, np.int64)
        # the rows read, float32 (the products keep its precision); none for a head multiplied in place
        self.rows = None if head.in_place else torch.zeros(0, head.n_cols, device=head.device)
        self._z_anchor = torch.zeros(0, device=head.device)  # W_K·h_A, for the rows read so far
        if ids is not None:
            self._add(np.asarray(ids, np.int64))

    def _add(self, ids: np.ndarray) -> int:
        """Keep the rows `ids` too; returns where they start in `ids`."""
        # in file order: reading them costs half as much as in rank order; the stored values exactly (norms:
        # of the same), for this update only
        ids, rows = self.head.rows(np.sort(ids))
        if rows is not None:
            rows = rows.float()
            self.rows = torch.cat([self.rows, rows]) if len(self.ids) else rows
        start = len(self.ids)
        self.ids = np.concatenate([self.ids, ids])
        return start

    def dot(self, positions: slice | np.ndarray, h: torch.Tensor) -> torch.Tensor:
        """W_v·h for the kept rows at `positions` (of `ids`)."""
        if self.rows is None:
            return self.head.in_place.dot(self.ids[positions], h).to(h.device)
        return mv(self.rows[positions], h)

    def selfcheck(self, z0: np.ndarray, k: int) -> float:
        """max |W_v·h_A - z0_v| / max(1, max |z0_v|) at the k kept rows of largest z0, for a head read in place,
        in one native call (vreason.VReason._selfcheck's comparison: ~0.3 ms of numpy and torch in an update)."""
        m = self.head.in_place
        matrix = m.as_native()
        z, h, ids = np.ascontiguousarray(z0, np.float32), self.h_anchor.contiguous(), np.ascontiguousarray(self.ids)
        error = native.library().vr_tail_selfcheck(
            ctypes.byref(matrix), ids.ctypes.data, len(ids), z.ctypes.data, h.data_ptr(), k
        )
        if error < 0:
            raise RuntimeError(f"native/vr_tail.c cannot run this self-check (error {error})")
        return error

    @property
    def z_anchor(self) -> torch.Tensor:
        """The tail's logits at the anchor, W_K·h_A, computed when asked (the self-check, the logits of a
        step away from the anchor): a step at h_A needs none, its held logits are llama.cpp's."""
        n = len(self._z_anchor)
        if n < len(self.ids):
            self._z_anchor = torch.cat([self._z_anchor, self.dot(slice(n, None), self.h_anchor)])
        return self._z_anchor

    def reanchor(self, h_anchor: torch.Tensor) -> None:
        """Anchor the kept rows on another state for llama.cpp's logits (the tail's own, for steps that
        run its forward)."""
        self.h_anchor = h_anchor.detach()
        self._z_anchor = torch.zeros(0, device=self.h_anchor.device)

    def logits(self, step: HeadStep) -> torch.Tensor:
        """The tail's logits at the kept rows for `step`'s state, W_K·h_A + W_K·(h - h_A)."""
        return self.z_anchor + step.dz

    def at(self, h: torch.Tensor, alpha: int) -> HeadStep:
        """The loss, its gradient at `h` through the kept rows and their bound, adding rows first until
        the bound meets the target (or the cap)."""
        # an update's first step is taken at h_A itself (its storage): no arithmetic to find that nothing moved
        at_anchor = h.data_ptr() == self.h_anchor.data_ptr() and h.shape == self.h_anchor.shape
        dh = torch.zeros_like(self.h_anchor) if at_anchor else h.detach() - self.h_anchor
        drift = 0.0 if at_anchor else float(dh.norm()) * self.head.max_norm  # R: how far a held logit may be off

        if at_anchor and self.grow and not len(self.ids) and self.native and self.head.in_place is not None:
            return self._at_anchor_native(alpha)

        def moved(start: int) -> torch.Tensor:  # W·(h - h_A) for the rows from `start` on: none at the anchor
            n = len(self.ids) - start
            return self.dot(slice(start, None), dh) if drift > 0 and n else torch.zeros(n, device=dh.device)

        dz = moved(0)
        w = self._weights(dz, drift)
        grad = self._gradient(w.g, 0) if len(self.ids) else torch.zeros(self.head.n_cols, device=dh.device)
        while True:
            grad_h = alpha * grad
            size = float(grad_h.norm())
            done = w.bound <= self.error / (1 + self.error) * size
            finite = math.isfinite(w.entropy)  # else the update is skipped: no rows to read for it
            if done or not finite or not self.grow or len(self.ids) >= self.cap:
                break
            start = self._add(self._choose(w, size))
            if drift == 0:  # nothing held has moved: the new rows' terms move from D to K, the rest stays
                w.keep(self.ids[start:])
                grad = grad + self._gradient(w.g[start:], start)
            else:  # held logits move with every row read: all weights again
                dz = torch.cat([dz, moved(start)])
                w = self._weights(dz, drift)
                grad = self._gradient(w.g, 0)
        return self._step(alpha, w.entropy, grad_h, size, w.bound, dz)

    def _step(
        self, alpha: int, entropy: float, grad_h: torch.Tensor, size: float, b: float, dz: torch.Tensor
    ) -> HeadStep:
        """The step once the rows are chosen: ||grad_h|| = `size`, the bound B reached `b`."""
        done = b <= self.error / (1 + self.error) * size
        bound = b / (size - b) if size > b else (0.0 if b == 0 else math.inf)
        loss = alpha * (math.log(len(self.z0)) - entropy)
        return HeadStep(loss, grad_h, dz, bound, self.grow and math.isfinite(entropy) and not done)

    def _anchor_terms(self) -> HeadTerms:
        """Every row's term at the anchor and the ranking (computed once per head)."""
        if self._terms is None:
            self._terms = head_terms(self.z0, self.head.norms32, self.cap)
        return self._terms

    def _at_anchor_native(self, alpha: int) -> HeadStep:
        """`at` for an update's first step with the head read in place (the CPU): the same rounds of row
        choice, with the same rule and bound (tested equal), in one native call (native/vr_tail.c), where
        their ~25 numpy and torch operations cost ~0.5 ms in an update."""
        terms, m = self._anchor_terms(), self.head.in_place
        z = np.ascontiguousarray(self.z0, np.float32)
        ids, grad, out, ratio = (
            np.empty(self.cap, np.int64),
            np.empty(m.n_cols, np.float32),
            np.empty(2),
            ctypes.c_double(self.ratio),
        )
        matrix = m.as_native()
        n = native.library().vr_tail_head_anchor(
            ctypes.byref(matrix), z.ctypes.data, terms.terms.ctypes.data, terms.ranked.ctypes.data, len(terms.ranked),
            terms.total, terms.log_total, terms.entropy, alpha, self.error, ctypes.byref(ratio), grad.ctypes.data,
            ids.ctypes.data, out.ctypes.data, m.threads,
        )  # fmt: skip
        if n < 0:
            raise MemoryError("no memory for the LM head's rows") if n == -1 else RuntimeError("unreadable LM head")
        self._add(ids[:n])
        self.ratio = ratio.value
        b, size = float(out[0]), float(out[1])
        grad_h = torch.from_numpy(grad).to(self.h_anchor.device)
        return self._step(alpha, terms.entropy, grad_h, size, b, torch.zeros(n, device=grad_h.device))

    def _weights(self, dz: torch.Tensor, drift: float) -> AnchorWeights | HeldWeights:
        """The loss weights and bound for the kept rows: at the anchor from the native ranking of every
        row's term (computed once per head), elsewhere from a float64 pass with the held logits' drift."""
        if drift == 0:
            return AnchorWeights(self._anchor_terms(), self.z0, self.ids)
        if self._z0_64 is None:
            self._z0_64 = self.z0.astype(np.float64)
        return HeldWeights(self._z0_64, self.ids, dz.cpu().numpy(), self.head.norms, drift)

    def _gradient(self, g: np.ndarray, start: int) -> torch.Tensor:
        """Σ g_v·W_v over the kept rows from `start` on, in float32: in the head's half precision the
        weights g and the result would be rounded to it (measured 0.24% relative error in bfloat16)."""
        g32 = torch.from_numpy(g.astype(np.float32))
        if self.rows is None:
            return self.head.in_place.axpy(self.ids[start:], g32).to(self.h_anchor.device)
        return self.rows[start:].T @ g32.to(self.rows.device)

    def _choose(self, w: AnchorWeights | HeldWeights, size: float) -> np.ndarray:
        """The next rows: the largest terms of B, as many as the target needs if ||G_K|| keeps its ratio to
        Σ_K ||W_v||·|g_v| (checked after reading; at least a quarter more rows, so few rounds suffice)."""
        if size > 0 and w.kept_weight > 0:
            self.ratio = size / w.kept_weight
        top, term, u = w.candidates(self.cap - len(self.ids))
        rest = w.dropped_sum - w.scale * np.cumsum(term) + w.kept_part
        weight = w.kept_weight + np.cumsum(u)
        fits = np.flatnonzero(rest <= self.error / (1 + self.error) * self.ratio * weight)
        n = int(fits[0]) + 1 if len(fits) else len(top)
        return top[: max(n, 16, len(self.ids) // 4)]


@dataclass(frozen=True)
class HeadTerms:
    """Every LM-head row's term in V-Reason's bound at llama.cpp's logits (`head_terms`)."""

    log_total: float  # ln Σ e^z: ln p_v = z_v - log_total
    entropy: float  # H of p, nats
    total: float  # Σ_v t_v
    terms: np.ndarray  # t_v = norms_v·p_v·|ln p_v + H|, float32 [n_vocab]
    ranked: np.ndarray  # ids of the k largest terms, decreasing (ties: the lower id first), int64


def head_terms(logits: np.ndarray, norms: np.ndarray, k: int) -> HeadTerms:
    """The terms t_v = norms_v·p_v·|ln p_v + H| of p = softmax(logits) and the k largest, in one native
    call (native/vr_sampling.c: three vectorised passes and a radix select: ~0.25 ms at 151,936 tokens and
    k = 2,048, 0.3 in an update, where numpy's float64 passes and argpartition took ~1.4 ms). This is
    V-Reason's per-update pass over the logits (AnchorWeights). The terms are float32 arithmetic (vexp: ~1 ulp;
    l_v within 1e-5 nats), their sum, ln Σ e^z and H good to ~1e-6 relative (tested against float64), against
    the bounds of 1e-2 they serve. `norms`: float32, one per logit."""
    x, w = np.ascontiguousarray(logits, np.float32), np.ascontiguousarray(norms, np.float32)
    if w.size != x.size:
        raise ValueError(f"expected {x.size} norms, one per logit, got {w.size}")
    t, ids, stats = np.empty(x.size, np.float32), np.empty(min(max(k, 0), x.size), np.int64), np.empty(3)
    n = native.library().vr_head_terms(
        x.ctypes.data, w.ctypes.data, x.size, len(ids), t.ctypes.data, ids.ctypes.data, stats.ctypes.data
    )
    if n < 0:
        raise MemoryError("no memory to rank the LM head's rows")
    return HeadTerms(float(stats[0]), float(stats[1]), float(stats[2]), t, ids[:n])


class AnchorWeights:
    """The loss weights and the bound B at the anchor (R = 0: no held logit has moved). There the held
    distribution is llama.cpp's own whatever is kept (p~ = p), so B = U_D = Σ_{v∉K} t_v with
    t_v = ||W_v||·p_v·|l_v|, and keeping a row only moves its term from D to K: one native pass over the
    vocabulary (`head_terms`: ~0.25 ms at 151,936 tokens, where HeldWeights' float64 passes and
    row choice took ~1.4 ms) gives every t_v, H and the rows ranked by t_v; keeping rows touches only
    theirs. The same weights and bound as HeldWeights with R = 0 (tested), to float32's rounding of the
    terms: l_v to ~1e-5 nats, their sum B to ~1e-6 relative."""

    scale, kept_part = 1.0, 0.0  # B after keeping rows = dropped_sum - scale·Σ their terms + kept_part

    def __init__(self, terms: HeadTerms, z0: np.ndarray, ids: np.ndarray) -> None:
        """`terms`: head_terms of llama.cpp's logits `z0` (float32)."""
        self.terms, self._z0 = terms, z0
        self.entropy = terms.entropy
        self.g = np.zeros(0)  # the kept rows' weights d(-H)/dz, float64
        self.kept_weight = 0.0  # U_K = Σ_K t_v, as the native pass rounded the terms (B = total - U_K)
        self._kept = np.zeros(len(z0), bool)
        self._n_kept = 0
        if len(ids):
            self.keep(ids)
        else:
            self.dropped_sum = self.bound = terms.total

    def keep(self, ids: np.ndarray) -> None:
        """Count the rows `ids` (held until now) as kept."""
        ell = self._z0[ids].astype(np.float64) - self.terms.log_total  # ln p
        p = np.exp(ell)
        ell += self.entropy  # l = ln p + H
        self.g = np.concatenate([self.g, p * ell])
        self.kept_weight += float(self.terms.terms[ids].sum(dtype=np.float64))
        self._kept[ids] = True
        self._n_kept += len(ids)
        every = self._n_kept == len(self._z0)  # D is empty: B is 0, not the sums' rounding
        self.dropped_sum = self.bound = 0.0 if every else max(self.terms.total - self.kept_weight, 0.0)

    def candidates(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to `m` rows not kept, the largest terms of B first: (ids, their terms, their ||W_v||·|g_v|),
        the last two the same at the anchor."""
        ranked = self.terms.ranked
        top = ranked[~self._kept[ranked]][:m]
        t = self.terms.terms[top].astype(np.float64)
        return top, t, t


class HeldWeights:
    """The loss weights of the held distribution p~ and the bound B (`RestrictedHead`) for a step away from
    the anchor (at it: AnchorWeights), on the host in float64 (no float64 on the tail's device: Apple's MPS
    has none), with few full-vocabulary arrays: each fresh one costs page faults (measured 5 ms a pass with
    ~15 of them, at 151,936 tokens).

    With P, S, Q, U the sums of p~, p~·|l|, ||W||·p~ and ||W||·p~·|l| over K (index K) and off K (D):
        gamma = max(ln(1 + P_D·(e^R - 1)), -ln(1 - P_D·(1 - e^-R)))        (the log-normaliser's shift)
        eta   = (e^gamma - 1)·S_K + (e^(R+gamma) - 1)·S_D + e^gamma·gamma·P_K + e^(R+gamma)·(R+gamma)·P_D
        B     = e^(R+gamma)·(U_D + (R + gamma + eta)·Q_D) + (e^gamma - 1)·U_K + e^gamma·(gamma + eta)·Q_K
    from |ln p_v - ln p~_v| <= gamma (K), R + gamma (D); H - H~ = -Σ(p - p~)·l - Σ p·(ln p - ln p~).
    """

    def __init__(self, z0: np.ndarray, ids: np.ndarray, dz: np.ndarray, norms: np.ndarray, drift: float) -> None:
        """`drift`: R, how far a held logit may be off (0 when none is held)."""
        z = z0.copy()
        z[ids] += dz
        top = z.max()
        z -= top
        p = np.exp(z)
        total = p.sum()
        p /= total
        z -= math.log(total)  # ln p~
        self.entropy = float(-np.einsum("i,i->", p, z))  # einsum, not `@`: numpy's BLAS fights torch's threads
        z += self.entropy  # l = ln p~ + H~
        self.g = p[ids] * z[ids]  # the kept rows' weights d(-H)/dz (times alpha: the loss's)
        ell = np.abs(z, out=z)
        p_k, ell_k, norm_k = p[ids], ell[ids], norms[ids]
        p[ids] = 0.0  # p, and what is built from it, now over D only
        self.q = norms * p
        self.u = self.q * ell  # ||W_v||·|g~_v|
        self.kept_weight = float((norm_k * p_k * ell_k).sum())  # U_K
        p_d, s_d = float(p.sum()), float(np.einsum("i,i->", p, ell))
        r = drift if len(ids) < len(z) else 0.0
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a huge drift: an infinite bound
            up, down = p_d * np.expm1(r), -p_d * np.expm1(-r)
            gamma = float(max(np.log1p(up), -np.log1p(-down))) if r > 0 else 0.0
            e_k, e_d = np.exp(gamma), np.exp(r + gamma)
            eta = (e_k - 1) * (p_k * ell_k).sum() + (e_d - 1) * s_d + e_k * gamma * p_k.sum() + e_d * (r + gamma) * p_d
            self.c, self.scale = r + gamma + eta, e_d
            self.dropped_sum = float(e_d * (self.u.sum() + self.c * self.q.sum()))
            self.kept_part = float((e_k - 1) * self.kept_weight + e_k * (gamma + eta) * (norm_k * p_k).sum())
        bound = self.dropped_sum + self.kept_part
        self.bound = bound if math.isfinite(bound) else math.inf
        self._ids = ids

    def candidates(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to `m` rows not kept, the largest terms of B first: (ids, their terms over `scale`, their
        ||W_v||·|g~_v|)."""
        term = self.u + self.c * self.q
        term[self._ids] = -1.0
        n_dropped = len(term) - len(self._ids)
        top = np.argpartition(-term, m - 1)[:m] if m < n_dropped else np.flatnonzero(term >= 0)
        top = top[np.argsort(-term[top], kind="stable")]
        return top, term[top], self.u[top]

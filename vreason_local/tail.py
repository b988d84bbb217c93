"""The tail of a Qwen-VL language model in PyTorch: just enough of the model to differentiate the logits
with respect to the last layer's value rows.

The values of the last layer enter only its attention, and the attention probabilities do not depend
on them. With the probabilities `a` and the residual `ffn_inp` that llama.cpp computed for the current
token (captured by the hook), the logits as a function of the new value rows are

    x      = ffn_inp + W_o · Σ_rows a[h, r] · (V_new[r] - V_cache[r])      (per head h, GQA groups)
    y      = x + W_down · (silu(W_gate · n(x)) * (W_up · n(x)))             n = RMSNorm · ffn_norm
    logits = W_head · (RMSNorm(y) · output_norm)

Same for Qwen2-VL, Qwen2.5-VL and Qwen3-VL: their last layers differ only before `ffn_inp`.
Weights are read from the GGUF file itself by `tail_weights`, which also holds their storage (int8
kernels) and the LM head, the largest matrix (151936 x 2048 for a 3B model), which is never
materialised: only the rows of the tokens that carry the gradient are read per update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .gguf_info import ModelInfo
from .tail_weights import Int8Matrix, LMHead, load_tail_weights, mv


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


class Tail:
    """Last layer after attention, final norm and LM head, rebuilt from GGUF weights."""

    def __init__(
        self,
        info: ModelInfo,
        weights: dict[str, torch.Tensor | Int8Matrix],
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

    @staticmethod
    def from_gguf(info: ModelInfo, device: str = "auto", dtype: str = "auto") -> Tail:
        """The tail of the model `info` describes, on `device` (see pick_device), matrices stored as `dtype`."""
        dev = pick_device(device)
        w = load_tail_weights(info, dev, dtype)
        return Tail(info, w.matrices, w.head, dev, w.kind)

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

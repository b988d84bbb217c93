"""The controller's optimiser: Adam or SGD on the one tensor dV, written out in torch.

torch.optim's are the same arithmetic, but constructing one imports torch._dynamo, sympy and
torch.distributed on the way (822 modules, +72 MB of resident memory and about a second, measured with
torch 2.13), V-Reason's largest memory cost after torch itself. `Adam` is torch.optim.Adam's single-tensor
algorithm (no weight decay, no amsgrad), statement by statement (on the CPU in one native pass), and is
tested against it.
"""

from __future__ import annotations

import math

import torch

from . import native


class Optimizer:
    """`adam` (torch.optim.Adam's defaults: betas 0.9 / 0.999, eps 1e-8, bias-corrected) or `sgd` (plain:
    dV -= lr·g) for `param`, from its `.grad`; `steps` counts the steps taken."""

    def __init__(self, param: torch.Tensor, kind: str, lr: float) -> None:
        if kind not in ("adam", "sgd"):
            raise ValueError(f"unknown optimiser {kind!r}")
        self.param, self.kind, self.lr = param, kind, lr
        self.betas, self.eps = (0.9, 0.999), 1e-8
        self.steps = 0
        self.exp_avg = torch.zeros_like(param) if kind == "adam" else None
        self.exp_avg_sq = torch.zeros_like(param) if kind == "adam" else None

    @torch.no_grad()
    def step(self) -> float:
        """One step from `param.grad`; returns Σ g², not finite when the gradient is not (the caller then
        resets: the step taken with it is undone). Adam on the CPU is one native pass (native/vr_tail.c:
        its six torch operations cost ~0.2 ms in an update, their code cold after llama.cpp's decode)."""
        self.steps += 1
        p, g = self.param, self.param.grad
        if self.kind == "sgd":
            p.add_(g, alpha=-self.lr)
            return float(g.pow(2).sum())
        beta1, beta2 = self.betas
        if p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous():
            g = g.contiguous()
            args = (p, g, self.exp_avg, self.exp_avg_sq)
            return native.library().vr_tail_adam(
                *(t.data_ptr() for t in args), p.numel(), self.lr, beta1, beta2, self.eps, self.steps
            )
        self.exp_avg.lerp_(g, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = self.lr / (1 - beta1**self.steps)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - beta2**self.steps)).add_(self.eps)
        p.addcdiv_(self.exp_avg, denom, value=-step_size)
        return float(g.pow(2).sum())

    def reset(self) -> None:
        """Forget the moments and the step count (after dV was reset)."""
        self.steps = 0
        if self.kind == "adam":
            self.exp_avg.zero_()
            self.exp_avg_sq.zero_()

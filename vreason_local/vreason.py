"""The V-Reason controller (arXiv 2510.17045; README "V-Reason"): an entropy-steered offset on the last
layer's value rows.

Per generated token k (steps count from 1):
    E_k = beta·E_{k-1} + (1-beta)·H_k,  P_k = max(E_1..E_k),  alpha_k = -1 if E_k < P_k else +1
and when k % every == 0: `steps` optimiser steps on dV against alpha_k·KL(p_k || U), then the new value
rows V_new = normp(V + dV) are written into llama.cpp's cache, in force from the next decode on.

The first step of an update is taken at the values llama.cpp attended over, where llama.cpp's own
forward is known (the hook captures it): only the tail's backward runs, written out by hand
(`Tail.grad_dv`), with no autograd graph to build; on the CPU that step, its choice of LM-head rows and
the write run in native code (native/vr_tail.c), whose torch and numpy equivalents are the tests'
references and the path on GPUs. Each later step computes the loss at its own dV through the tail's
forward: exactly at the LM-head rows it reads, and at llama.cpp's logits (from the cached dV) elsewhere.
The gradient's error from that is bounded, later steps included: a held logit can have moved by at most
||W_v||·||h - h_A||, which the bound counts, and a step whose bound no longer meets `head_error` reads
more rows first (tail.RestrictedHead). Reading the whole head again at every step would cost a pass over
151,936 rows; holding the others silently would leave their drift unaccounted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .events import ControlState
from .hook import ValueHook
from .optim import Optimizer
from .settings import VReasonSettings
from .tail import RestrictedHead, Tail, TailInputs, loss_at, norm_preserving, value_write
from .tail_weights import return_freed_memory

# Largest |tail logit - llama.cpp logit|, relative to the largest |logit| of the step, accepted silently.
# llama.cpp quantises activations for quantised weights and stores V in F16, and the tail may hold its
# matrices in int8: measured agreement is ~5e-3 relative (3B shape, Q8_0, int8 tail) and ~1e-4 (F16
# tiny models, float32 tail). A tail that does not describe the running model (wrong weights, wrong build) is off by the
# size of the logits themselves, far beyond this.
SELFCHECK_TOL = 2e-2
SELFCHECK_ROWS = 64  # the self-check compares the logits of the kept rows' most probable tokens


@dataclass
class _Update:
    """What one update did, for its ControlState (events.ControlState has the fields' meaning)."""

    selfcheck: float = math.nan
    head_rows: int | None = None
    head_bound: float | None = None  # the largest over the update's steps
    written_ratio: float | None = None
    skipped: bool = False


def _finite(t: torch.Tensor) -> bool:
    """Whether every value is finite, by their sum: one reduction where isfinite().all() makes two passes
    and a tensor (0.1 ms against 0.01 for dV's 73,728 values). A finite tensor whose sum overflows float32
    counts as not finite: an update that large is no update to keep either."""
    return math.isfinite(float(t.detach().sum()))


class VReason:
    """One answer's controller: owns dV, the optimiser and the EMA state."""

    def __init__(
        self, tail: Tail, hook: ValueHook, rows: np.ndarray, transposed: bool, settings: VReasonSettings
    ) -> None:
        self.tail, self.hook, self.transposed, self.s = tail, hook, transposed, settings
        self.rows = np.array(rows, np.int64)  # a copy, read-only: the hook keeps the spans of the rows it writes
        self.rows.flags.writeable = False
        g, d = tail.info.n_head_kv, tail.info.head_dim
        contiguous = len(self.rows) and np.array_equal(
            self.rows, np.arange(self.rows[0], self.rows[0] + len(self.rows))
        )
        # where inputs() reads the probabilities of the rows: a slice when they are one run of cells (as a video's are)
        self._probs_at = slice(int(self.rows[0]), int(self.rows[-1]) + 1) if contiguous else torch.tensor(self.rows)
        self.v_orig = hook.read_values(self.rows, transposed)  # F16, restored when the answer ends
        self.v_base = torch.from_numpy(self.v_orig.astype(np.float32)).view(-1, g, d).to(tail.device)
        self.v_norm = self.v_base.norm(dim=-1, keepdim=True)  # ||V|| per row and kv head, for norm_preserving
        self._v16 = self.v_orig  # what llama.cpp attends over, as it holds them (F16 [n_rows, n_head_kv·head_dim])
        self._v_cache: torch.Tensor | None = None  # the same in float32 on the tail's device, when asked
        self.dv = torch.zeros_like(self.v_base, requires_grad=True)
        self.opt = Optimizer(self.dv, settings.optimizer, settings.lr)  # one for the whole answer
        self.ema = 0.0
        self.peak = -math.inf
        self.warning: str | None = None
        self.dv_norm = 0.0  # ||dV||, as the last write left it
        self.n_cells = 0
        self.head_ratio = 1.0  # the last update's ||G_K|| / Σ_K ||W_v||·|g_v| (sizes the next first read)
        # per optimiser step: LM-head rows kept, bound on the relative gradient error at h (HeadStep.bound)
        self.head_log: list[tuple[int, float]] = []
        self._capped_said = self._skip_said = False
        self._checked_forward = False  # this answer ran the tail's own forward in the self-check

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def v_cache(self) -> torch.Tensor:
        """The value rows llama.cpp attends over, float32 on the tail's device: made when asked, as only
        an update's later steps (and tests) need them; the first is taken where llama.cpp is."""
        if self._v_cache is None:
            self._v_cache = torch.from_numpy(self._v16.astype(np.float32)).view_as(self.v_base).to(self.tail.device)
        return self._v_cache

    def prepare(self, next_step: int) -> None:
        """Before the decode that yields step `next_step`'s logits: capture only if that step updates."""
        self.hook.prepare(next_step % self.s.every == 0)

    def step(self, k: int, logits: np.ndarray, h: float, n_cells: int) -> ControlState:
        """Step k's EMA/peak/alpha, and the update when k % every == 0. `n_cells`: cells in use, all
        of them this sequence's, filled in order (the engine's invariant), the current token's last."""
        self.n_cells = n_cells
        self.ema = self.s.beta * self.ema + (1 - self.s.beta) * h
        self.peak = max(self.peak, self.ema)
        alpha = -1 if self.ema < self.peak else 1
        if k % self.s.every:
            return ControlState(self.ema, self.peak, None, self.dv_norm, None, None)
        t0 = time.perf_counter()
        u = self._update(logits, alpha)
        ms = (time.perf_counter() - t0) * 1e3
        return ControlState(
            self.ema, self.peak, alpha, self.dv_norm, ms, u.selfcheck, u.head_rows, u.head_bound, u.written_ratio,
            u.skipped,
        )  # fmt: skip

    def inputs(self) -> TailInputs:
        """The tail's inputs for the last decoded token: its attention probabilities at the controlled rows,
        recomputed from the captured post-RoPE query and the cached keys (as llama.cpp's softmax(q·K/√d)),
        and the captured residual before the FFN, FFN activations and layer output."""
        info, dev = self.tail.info, self.tail.device
        q = torch.from_numpy(self.hook.capture("q").reshape(info.n_head_kv, -1, info.head_dim))  # [G, H/G, D]
        k = torch.from_numpy(self.hook.read_keys(self.n_cells)).view(-1, info.n_head_kv, info.head_dim)
        scores = torch.bmm(q, k.float().permute(1, 2, 0)).mul_(1 / math.sqrt(info.head_dim))  # [G, H/G, cells]
        probs = torch.softmax(scores, dim=-1).reshape(info.n_head, -1)[:, self._probs_at]
        cap = {k: torch.from_numpy(self.hook.capture(k).reshape(-1)) for k in ("ffn_inp", "gate", "up", "y")}
        if dev.type != "cpu":
            cap, probs = {k: v.to(dev) for k, v in cap.items()}, probs.to(dev)
        return TailInputs(probs, **cap)

    def restricted_head(
        self,
        inp: TailInputs,
        logits: np.ndarray,
        ids: np.ndarray | None = None,
        h_anchor: torch.Tensor | None = None,
    ) -> RestrictedHead:
        """The LM head for one update at llama.cpp's `logits`: rows chosen to meet `head_error` (or the
        fixed rows `ids`), anchored on the tail's state for the values llama.cpp attended over (`h_anchor`,
        computed here unless given)."""
        if h_anchor is None:
            with torch.no_grad():
                h_anchor = self.tail.hidden(inp, None)
        return RestrictedHead(
            self.tail.head, logits, h_anchor, self.s.head_error, self.s.head_max, ids, ratio=self.head_ratio
        )

    def loss(
        self, inp: TailInputs, dv: torch.Tensor, ids: np.ndarray, logits: np.ndarray, alpha: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, the tail's logits at `ids`) for value offset `dv`, through the LM-head rows `ids`: the
        same computation as an update's, with its rows fixed (all of them: the exact loss)."""
        head = self.restricted_head(inp, logits, ids)
        h = self.tail.hidden(inp, self._delta(dv))
        step = head.at(h, alpha)
        order = np.argsort(head.ids)  # the head holds its rows in the order it read them
        return loss_at(h, step), head.logits(step)[torch.from_numpy(order[np.searchsorted(head.ids[order], ids)])]

    def _delta(self, dv: torch.Tensor) -> torch.Tensor:
        """How far the value rows at offset `dv` are from those llama.cpp attends over."""
        return norm_preserving(self.v_base, dv, self.v_norm) - self.v_cache

    def _update(self, logits: np.ndarray, alpha: int) -> _Update:
        """`steps` optimiser steps at llama.cpp's `logits` of this token, then the write; the self-check. A step
        whose gradient bound is above `head_skip` with the rows capped is not taken, nor the update's later
        steps (they start from the same rows and would need more)."""
        inp = self.inputs()
        h = self.tail.llama_state(inp)
        head = self.restricted_head(inp, logits, h_anchor=h)
        u = _Update()
        taken = 0
        for i in range(self.s.steps):
            if i == 0:  # at llama.cpp's state: its forward is known, the backward is written out (no autograd)
                step = head.at(h, alpha)
                u.selfcheck = self._selfcheck(inp, head, logits)
            else:  # dV has moved: the tail's forward, anchored on its own state for llama.cpp's values
                self.dv.grad = None
                if i == 1:
                    h_anchor, h = self.tail.hidden_pair(inp, self._delta(self.dv))
                    head.reanchor(h_anchor)
                else:
                    h = self.tail.hidden(inp, self._delta(self.dv))
                step = head.at(h, alpha)
            self.head_log.append((len(head.ids), step.bound))
            u.head_rows, u.head_bound = len(head.ids), max(u.head_bound or 0.0, step.bound)
            u.skipped = step.capped and not step.bound <= self.s.head_skip  # inf: the direction is unknown
            if step.capped:
                self._say_capped(step.bound, u.skipped)
            if u.skipped:
                break
            if i == 0:
                self.dv.grad = self.tail.grad_dv(inp, step.grad_h, self.v_base, self.dv.detach(), self.v_norm)
            else:
                loss_at(h, step).backward()
            if not (math.isfinite(step.loss) and math.isfinite(self.opt.step())):  # step() gives Σ g²
                u.written_ratio, u.skipped = self._reset("non-finite loss or gradient"), True  # undoes the step
                return u
            if i + 1 < self.s.steps and not _finite(self.dv):
                u.written_ratio, u.skipped = self._reset("non-finite value offset after the optimiser step"), True
                return u
            taken += 1
        if taken:  # else nothing moved (the first step was skipped): the cache keeps what it holds
            u.written_ratio = self._write()
            if not math.isfinite(self.dv_norm):  # the last step's dV, checked by the norm the write takes of it
                u.written_ratio, u.skipped = self._reset("non-finite value offset after the optimiser step"), True
                return u
        self.head_ratio = head.ratio
        if u.selfcheck > SELFCHECK_TOL:
            self._warn(
                f"self-check: the tail's logits differ from llama.cpp's by {u.selfcheck:.3g} of the logit scale "
                f"(tolerance {SELFCHECK_TOL}); V-Reason may not steer this model as intended"
            )
        return u

    def _say_capped(self, bound: float, skipped: bool) -> None:
        """Where the LM-head rows reached their cap: the notices, once per answer each, that they did and
        that a step was skipped for it (telemetry's `skipped` marks every one)."""
        if not self._capped_said:
            self._capped_said = True
            self._warn(
                f"the LM-head restriction reached its cap of {self.s.head_max} rows (head_max) with a gradient "
                f"error bound of {bound:.3g} (target {self.s.head_error}); said once per answer"
            )
        if skipped and not self._skip_said:
            self._skip_said = True
            self._warn(
                f"V-Reason update skipped: with a gradient error bound above {self.s.head_skip} (head_skip) its "
                "direction is not known well enough to step along (a larger head_max reads more rows); said once "
                "per answer, telemetry's `skipped` marks each"
            )

    def _selfcheck(self, inp: TailInputs, head: RestrictedHead, logits: np.ndarray) -> float:
        """max |tail logit - llama.cpp logit| / max(1, max |logit|) at the SELFCHECK_ROWS most probable kept
        tokens, for the values llama.cpp attended over. Until the tail has passed it once (`Tail.verified`:
        its weights do not change), an answer's first update runs the tail's own forward, which checks all
        of its weights against the running model; the other updates check llama.cpp's captured state
        through the tail's final norm and head rows."""
        forward = not (self.tail.verified or self._checked_forward)
        if not forward and head.rows is None and head.h_anchor.device.type == "cpu":  # the head in place
            return head.selfcheck(logits, SELFCHECK_ROWS)
        z = logits[head.ids]
        top = np.argpartition(-z, SELFCHECK_ROWS - 1)[:SELFCHECK_ROWS] if len(z) > SELFCHECK_ROWS else slice(None)
        with torch.no_grad():
            tail_z = head.dot(top, self.tail.hidden(inp, None) if forward else head.h_anchor).cpu().numpy()
        ref = z[top]
        error = float(np.abs(tail_z - ref).max() / max(1.0, np.abs(ref).max()))
        if forward:
            self._checked_forward = True
            self.tail.verified = error <= SELFCHECK_TOL
        return error

    def _warn(self, message: str) -> None:
        """Queue a warning for the engine, which yields it as a Notice after this step."""
        self.warning = f"{self.warning}; {message}" if self.warning else message

    def _write(self) -> float | None:
        """Put V_new = normp(V + dV) into llama.cpp's cache (F16, as it stores them); returns the write's
        written/intended (tail.ValueWrite: how much of the change asked for survived the F16 rounding). Every
        change of dV (an update's steps, `_reset`) ends here, so its norm for the telemetry is taken here, not
        per token."""
        w = value_write(self.v_base, self.dv, self.v_norm, self._v16)
        self._v16, self.dv_norm = w.v16, w.dv_norm
        self.hook.write_values(self.rows, self._v16, self.transposed)
        self._v_cache = None
        return w.ratio

    def _reset(self, why: str) -> float | None:
        """Guard: drop dV (and the optimiser's memory of it) and carry on with the base values; returns the
        write's written/intended."""
        with torch.no_grad():
            self.dv.zero_()
        self.opt.reset()
        self._warn(f"V-Reason update skipped ({why}); dV reset to zero")
        return self._write()

    def restore(self) -> None:
        """Give the cache its original value rows back when the answer ends, and the updates' freed
        temporaries to the OS (once per answer: trimming costs ~2 ms, and each update reuses the last's)."""
        self.hook.write_values(self.rows, self.v_orig, self.transposed)
        return_freed_memory()

"""One answer's reasoning telemetry in a few numbers, for every front end that shows or stores a summary
(`vreason run --json`, the chat app, the evaluator): computed here once from the `Answer` the engine built.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from .events import Answer, ControlState


@dataclass(frozen=True)
class Summary:
    """Entropies in nats. `switch_step` is the first token (its step, counted from 1 as TokenEvent.step)
    at which the controller's alpha turned from +1 (explore: raise entropy) to -1 (converge: lower it), the
    paper's turning point; None if it never did or in base mode. Controller figures are None in base mode.
    `median_written_ratio`: the median over the updates that wrote of written/intended (events.ControlState),
    how much of the change asked of llama.cpp's F16 cache reached it: near 0, the learning rate is too small
    for F16 to show it. `max_head_bound`: the largest gradient error bound of an update (inf: unbounded)."""

    n_tokens: int
    mean_entropy: float | None
    max_entropy: float | None
    final_ema: float | None
    peak_ema: float | None
    switch_step: int | None
    n_updates: int | None
    mean_update_ms: float | None
    max_dv_norm: float | None
    max_selfcheck: float | None
    controller_s: float | None
    n_skipped: int | None
    median_written_ratio: float | None
    max_head_bound: float | None

    def as_dict(self) -> dict:
        return asdict(self)


class SwitchWatch:
    """Where alpha first turned from +1 to -1, followed token by token: `summarize` runs it over a finished
    answer, the chat's live panel as tokens stream, so both name the same step."""

    def __init__(self) -> None:
        self.step: int | None = None  # the switch's step, counted from 1 (None: not yet)
        self._last: int | None = None  # the alpha of the last update

    def see(self, step: int, control: ControlState | None) -> None:
        if control is None or control.alpha is None:
            return
        if self.step is None and self._last == 1 and control.alpha == -1:
            self.step = step
        self._last = control.alpha


def summarize(answer: Answer) -> Summary:
    """The summary of `answer` (works on partial and cancelled answers too)."""
    h = answer.entropy
    states = [c for c in answer.control if c is not None]
    updates = [c for c in states if c.alpha is not None]
    controlled = answer.mode != "base"
    watch = SwitchWatch()
    for step, c in enumerate(answer.control, start=1):
        watch.see(step, c)
    times = [u.update_ms for u in updates if u.update_ms is not None]
    checks = [u.selfcheck for u in updates if u.selfcheck is not None]
    ratios = [u.written_ratio for u in updates if u.written_ratio is not None]
    bounds = [u.head_bound for u in updates if u.head_bound is not None]
    return Summary(
        n_tokens=len(answer.tokens),
        mean_entropy=sum(h) / len(h) if h else None,
        max_entropy=max(h) if h else None,
        final_ema=states[-1].ema if states else None,
        peak_ema=states[-1].peak if states else None,
        switch_step=watch.step,
        n_updates=len(updates) if controlled else None,
        mean_update_ms=sum(times) / len(times) if times else None,
        max_dv_norm=max((c.dv_norm for c in states), default=None),
        max_selfcheck=max(checks) if checks else None,
        controller_s=answer.timings.get("controller_s") if controlled else None,
        n_skipped=sum(bool(u.skipped) for u in updates) if controlled else None,
        median_written_ratio=statistics.median(ratios) if ratios else None,
        max_head_bound=max(bounds) if bounds else None,
    )

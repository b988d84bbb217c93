"""telemetry.summarize and the per-token columns of answers whose figures are worked out by hand."""

from __future__ import annotations

import pytest

from vreason_local.events import PER_TOKEN_FIELDS, Answer, ControlState, answer_fields
from vreason_local.telemetry import summarize


def state(ema: float, peak: float, alpha: int | None, dv: float, ms: float | None = None) -> ControlState:
    return ControlState(ema, peak, alpha, dv, ms, 1e-3 if alpha is not None else None)


def test_summary_of_a_vreason_answer():
    # tokens 1..5; updates (alpha set) at steps 2 and 4: +1 then -1, so the switch is at step 4
    control = [
        state(0.1, 0.1, None, 0.0),
        state(0.3, 0.3, 1, 0.5, 20.0),
        state(0.2, 0.3, None, 0.5),
        state(0.15, 0.3, -1, 0.9, 30.0),
        state(0.1, 0.3, None, 0.9),
    ]
    a = Answer("vreason", "q", tokens=[1, 2, 3, 4, 5], entropy=[1.0, 3.0, 2.0, 0.5, 0.5], control=control)
    a.timings["controller_s"] = 0.05
    s = summarize(a)
    assert s.n_tokens == 5
    assert s.mean_entropy == pytest.approx(7.0 / 5) and s.max_entropy == 3.0
    assert (s.final_ema, s.peak_ema) == (0.1, 0.3)
    assert s.switch_step == 4  # counted from 1, as TokenEvent.step
    assert s.n_updates == 2 and s.mean_update_ms == pytest.approx(25.0)
    assert s.max_dv_norm == 0.9 and s.controller_s == 0.05


def test_no_switch_while_alpha_stays_positive_and_none_in_base_mode():
    a = Answer("vreason", "q", tokens=[7, 8], entropy=[1.0, 2.0], control=[state(0.1, 0.1, 1, 0.1, 5.0)] * 2)
    assert summarize(a).switch_step is None
    base = Answer("base", "q", tokens=[7, 8], entropy=[1.0, 2.0], control=[None, None])
    s = summarize(base)
    assert s.n_updates is None and s.controller_s is None and s.switch_step is None and s.max_dv_norm is None
    empty = summarize(Answer("base", "q"))
    assert empty.n_tokens == 0 and empty.mean_entropy is None


def test_per_token_columns_line_up_with_the_tokens():
    a = Answer(
        "vreason",
        "q",
        tokens=[5, 6],
        token_text=["a", "b"],
        entropy=[0.5, 0.25],
        control=[None, state(0.2, 0.3, -1, 0.4, 12.0)],
    )
    cols = answer_fields(a.to_dict(), PER_TOKEN_FIELDS)
    assert cols["tokens"] == [5, 6] and cols["token_text"] == ["a", "b"] and cols["entropy"] == [0.5, 0.25]
    assert cols["alpha"] == [None, -1] and cols["update_ms"] == [None, 12.0] and cols["dv_norm"] == [None, 0.4]
    assert all(len(v) == 2 for v in cols.values())

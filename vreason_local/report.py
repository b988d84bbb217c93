"""Views of the event stream for the command line: streamed text, or one JSON object.

Both consume the engine's events as they come; the JSON is assembled from the same `Answer` the engine
built while yielding them, so nothing is recomputed here.
"""

from __future__ import annotations

import sys
from typing import Iterable

import click

from .engine import Engine
from .events import Answer, Encoded, Event, Finished, Notice, Prefilled, TokenEvent
from .planning import Plan, record_prefill_speed


def _consume(plan: Plan, events: Iterable[Event], on_event) -> tuple[Answer, Encoded, Prefilled]:
    encoded = prefilled = answer = None
    for ev in events:
        if isinstance(ev, Encoded):
            encoded = ev
            if not ev.reused:
                record_prefill_speed(plan.info, plan.engine, ev.n_tokens, ev.encode_s + ev.prefill_s)
        elif isinstance(ev, Prefilled):
            prefilled = ev
        elif isinstance(ev, Finished):
            answer = ev.answer
        on_event(ev)
    return answer, encoded, prefilled


def stream_text(plan: Plan, engine: Engine, events: Iterable[Event]) -> Answer:
    """Print tokens as they arrive; the answer and a one-line summary go to stderr at the end."""

    def show(ev: Event) -> None:
        if isinstance(ev, TokenEvent):
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        elif isinstance(ev, Notice):
            click.echo(f"\n[{ev.level}] {ev.message}", err=True)
        elif isinstance(ev, Encoded):
            click.echo(f"encoded {ev.n_media_tokens:,} vision tokens in {ev.encode_s + ev.prefill_s:.2f} s"
                       + (" (reused)" if ev.reused else ""), err=True)

    answer, _, _ = _consume(plan, events, show)
    sys.stdout.write("\n")
    t = answer.timings
    kept = f", video tokens kept {answer.n_video_tokens_kept}" if answer.n_video_tokens_kept is not None else ""
    click.echo(f"answer: {answer.answer}", err=True)
    click.echo(f"[{answer.mode}] {len(answer.tokens)} tokens, {t.get('tokens_per_s', 0):.1f} tok/s, "
               f"stop: {answer.stop_reason}, controller {t.get('controller_s', 0):.2f} s{kept}", err=True)
    return answer


def answer_json(plan: Plan, engine: Engine, events: Iterable[Event], mode: str, question: str) -> dict:
    """The `vreason run --json` object (field list in README.md)."""
    answer, encoded, prefilled = _consume(plan, events, lambda ev: None)
    media = plan.media
    timings = {"load_s": round(engine.load_s, 4), "sampling_s": round(media.sampling_s, 4),
               "encode_s": round(encoded.encode_s, 4), "prefill_s": round(encoded.prefill_s + prefilled.prefill_s, 4),
               **{k: v for k, v in answer.timings.items() if k not in ("load_s",)}}
    control = answer.control
    updates = [c for c in control if c is not None and c.alpha is not None]

    def col(name: str) -> list:
        return [None if c is None else getattr(c, name) for c in control]

    return {
        "model": plan.info.name,
        "model_path": str(plan.model_path),
        "random_weights": plan.info.random_weights,
        "mode": mode,
        "question": question,
        "media": media.media.kind,
        "prompt_tokens": engine.prompt_tokens,  # null marks a media (vision) token position
        "n_prompt_tokens": len(engine.prompt_tokens),
        "n_video_tokens": encoded.n_media_tokens,
        "n_video_tokens_kept": answer.n_video_tokens_kept,
        "frames": [{"index": f.index, "timestamp_s": round(f.timestamp_s, 3)} for f in media.media.frames],
        "text": answer.text,
        "reasoning": answer.reasoning,
        "answer": answer.answer,
        "stop_reason": answer.stop_reason,
        "n_tokens": len(answer.tokens),
        "tokens": answer.tokens,
        "entropy": [round(h, 6) for h in answer.entropy],
        "ema": col("ema"), "peak": col("peak"), "alpha": col("alpha"), "dv_norm": col("dv_norm"),
        "update_ms": col("update_ms"), "selfcheck": col("selfcheck"),
        "controller": {"n_updates": len(updates), "controller_s": answer.timings.get("controller_s", 0.0),
                       "max_selfcheck": max((u.selfcheck for u in updates), default=None)} if mode != "base" else None,
        "notices": answer.notices,
        "timings": timings,
    }

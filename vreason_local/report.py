"""Views of the event stream for the command line: progress, streamed text, or one JSON object.

Everything shown comes from the engine's events and the finished `Answer`; nothing is recomputed here.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict

import click

from .events import (
    CONTROL_FIELDS,
    ENTROPY_DIGITS,
    Answer,
    Encoded,
    Event,
    Finished,
    Notice,
    Progress,
    TokenEvent,
    answer_fields,
)
from .planning import Plan, record_prefill_speed
from .telemetry import summarize
from .wording import count


class StatusLine:
    """One line of progress on stderr: a bar redrawn in place on a terminal (at most 5 times a second),
    else a plain line at most every `every_s` seconds; `force` draws now either way."""

    def __init__(self, stream=None, every_s: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self._last: float | None = None  # when the line was last drawn
        self._open = False

    def show(self, fraction: float, words: str, force: bool = False) -> None:
        now = time.monotonic()
        since = math.inf if self._last is None else now - self._last
        if self.tty:
            if not force and since < 0.2:
                return
            width = 24
            filled = int(width * min(1.0, max(0.0, fraction)))
            cols = shutil.get_terminal_size((120, 24)).columns
            bar = "#" * filled + "." * (width - filled)
            self.stream.write("\r" + f"[{bar}] {words}"[: cols - 1] + "\x1b[K")
            self._open = True
        elif force or since >= self.every_s:
            self.stream.write(words + "\n")
        else:
            return
        self._last = now
        self.stream.flush()

    def end(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


class ProgressView:
    """The progress of encoding and prefill (`Progress` events) on a `StatusLine`."""

    def __init__(self, stream=None, every_s: float = 2.0, media: str = "video") -> None:
        self.stages = {
            "encode": "encoding the image" if media == "image" else "encoding video",
            "prefill": "reading the prompt",
        }
        self.line = StatusLine(stream, every_s)

    def show(self, p: Progress) -> None:
        eta = f", ~{p.eta_s:.0f} s left" if p.eta_s is not None and p.done < p.total else ""
        words = f"{self.stages[p.stage]}: {p.done:,}/{p.total:,} tokens, {p.rate:.0f} tokens/s{eta}"
        self.line.show(p.done / max(1, p.total), words, force=p.done >= p.total)

    def end(self) -> None:
        self.line.end()


def consume(plan: Plan, events: Iterable[Event], on_event) -> tuple[Answer, Encoded | None]:
    """Drive the events to the end, remembering this machine's prefill speed for later estimates."""
    progress = ProgressView(media=plan.media.media.kind)
    encoded = answer = None
    for ev in events:
        if isinstance(ev, Progress):
            progress.show(ev)
            continue
        progress.end()
        if isinstance(ev, Encoded):
            encoded = ev
            if ev.source == "encoded":  # a measurement of this machine (not a load from the encoding cache)
                record_prefill_speed(plan.info, plan.engine, ev.n_tokens, ev.encode_s + ev.prefill_s)
        elif isinstance(ev, Finished):
            answer = ev.answer
        on_event(ev)
    progress.end()
    return answer, encoded


def stream_text(plan: Plan, events: Iterable[Event]) -> Answer:
    """Print tokens as they arrive; the answer and a one-line summary go to stderr at the end."""

    def show(ev: Event) -> None:
        if isinstance(ev, TokenEvent):
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        elif isinstance(ev, Notice):
            click.echo(f"\n[{ev.level}] {ev.message}", err=True)
        elif isinstance(ev, Encoded) and ev.n_media_tokens:
            if ev.reused:
                click.echo("reused the encoded media", err=True)
            elif ev.source == "disk":
                click.echo(
                    f"loaded {count(ev.n_media_tokens, 'vision token')} from the encoding cache in {ev.load_s:.2f} s "
                    f"(saved {ev.saved_s:.2f} s of encoding)",
                    err=True,
                )
            else:
                click.echo(
                    f"encoded {count(ev.n_media_tokens, 'vision token')} in {ev.encode_s + ev.prefill_s:.2f} s "
                    f"(vision encoder {ev.encode_s:.2f} s, prefill {ev.prefill_s:.2f} s)",
                    err=True,
                )

    answer, _ = consume(plan, events, show)
    sys.stdout.write("\n")
    t = answer.timings
    kept = f", {_rows(plan)} kept {answer.n_video_tokens_kept}" if answer.n_video_tokens_kept is not None else ""
    click.echo(f"answer: {answer.answer}", err=True)
    click.echo(
        f"[{answer.mode}] {count(len(answer.tokens), 'token')}, {t.get('tokens_per_s', 0):.1f} tok/s, "
        f"stop: {answer.stop_reason}, controller {t.get('controller_s', 0):.2f} s{kept}",
        err=True,
    )
    return answer


def _rows(plan: Plan) -> str:
    return "image tokens" if plan.media.media.kind == "image" else "video tokens"


def run_settings(plan: Plan, answer: Answer) -> dict:
    """Every setting the run used, so that it can be reproduced from its JSON."""
    engine = {**asdict(plan.engine), "n_ctx_used": answer.settings.get("n_ctx")}
    return {
        "frames": plan.media.summary(plan.frame_settings, plan.token_budget),
        "generation": answer.settings.get("generation"),
        "engine": engine,
        "vreason": answer.settings.get("vreason"),
    }


# What `run --json` writes of the answer's record (Answer.to_dict), in two runs around the frames list: all of it
# but `reused_encoding` and `history` (for one answer on fresh media: false, and its own tokens), with `control` as
# per-token columns (events.answer_fields), `n_media_tokens` under its old name `n_video_tokens`, and `settings`
# and `timings` in the run's fuller forms below.
_PROMPT_FIELDS = ("mode", "question", "prompt_tokens", "n_prompt_tokens", "n_video_tokens", "n_video_tokens_kept")
_ANSWER_FIELDS = ("text", "reasoning", "answer", "stop_reason", "n_tokens", "tokens", "token_text", "entropy")


def answer_json(plan: Plan, events: Iterable[Event]) -> dict:
    """The `vreason run --json` object (field list in README.md): the answer's record, plus the run's own
    fields (the model, the media and its frames, the controller's summary, the settings, warnings, timings)."""
    answer, encoded = consume(plan, events, lambda ev: None)
    record = answer.to_dict()
    media = plan.media
    t = answer.timings
    # the answer's own timings under the answer's own names (README "timings"), plus the frames' sampling; the
    # first four are there even when a Ctrl-C stopped the answer before it timed them (0: not spent)
    timings = {"load_s": 0.0, "sampling_s": round(media.sampling_s, 4), "encode_s": 0.0, "prefill_s": 0.0, **t}
    summary = summarize(answer)
    return {
        "model": plan.info.name,
        "model_path": str(plan.model_path),
        "random_weights": plan.info.random_weights,
        "media": media.media.kind,
        **answer_fields(record, _PROMPT_FIELDS),  # prompt_tokens: null marks a media (vision) token position
        "encoding_source": answer.encoding_source,  # encoded, memory or disk; the time it saved is in timings
        "frames": media.media.frame_times(),
        **answer_fields(record, (*_ANSWER_FIELDS, *CONTROL_FIELDS), ENTROPY_DIGITS),
        "controller": {
            "n_updates": summary.n_updates,
            "controller_s": t.get("controller_s", 0.0),
            "max_selfcheck": summary.max_selfcheck,
            "n_skipped": summary.n_skipped,
            "median_written_ratio": summary.median_written_ratio,
            "max_head_bound": summary.max_head_bound,
        }
        if answer.mode != "base"
        else None,
        "settings": run_settings(plan, answer),
        "warnings": list(media.warnings),
        "notices": record["notices"],
        "timings": timings,
    }

"""Answering a dataset with one loaded engine: each video is encoded once and asked all its questions, in
every mode, before the next video (the expensive step, vision encoding, happens once per video).

`evaluate_group` answers the items of one video and yields one finished row per (item, mode). It opens no
file and draws nothing, so it can run unchanged where there is no terminal (a Ray actor holding its own
engine). `run_eval` is the local driver around it: videos in order, what a resumed run already has
skipped, each row appended to results.jsonl the moment it exists, and callbacks for a progress view.

Every answer is independent (no follow-up): the question is asked about the video alone, whatever was
asked before, so a row does not depend on the order in which items or modes ran.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from ..decoding import decoding_for
from ..engine import AnswerHandle, Encoding, Engine, GenerationSettings
from ..errors import UserError
from ..events import ENTROPY_DIGITS, Answer, Event, Mode, answer_fields
from ..media import LoadedMedia, Media, load_video, requested_frames
from ..telemetry import summarize
from ..video import FrameSampling
from .items import Item
from .results import ResultsWriter
from .row_scores import SCORE_FIELDS, Scoring, score_fields

if TYPE_CHECKING:
    from ..vreason import VReasonSettings

OnEvent = Callable[[Item, str, Event], None]


@dataclass(frozen=True)
class EvalSettings:
    """What decides every answer of a run. An item's own clip window replaces `frames`' start and end.
    `vreason`: the controller's settings in the V-Reason and Lite modes (None: the defaults). `scoring`: which
    score a row counts (both are stored): the benchmark's reference rule, or the lenient scorer."""

    generation: GenerationSettings = field(default_factory=GenerationSettings)
    frames: FrameSampling = field(default_factory=FrameSampling)
    vreason: VReasonSettings | None = None
    token_budget: int | None = None
    scoring: Scoring = "reference"


class Stop:
    """Stops an evaluation from another thread: the engine operation running now at once (part way through
    a frame pair or a prefill batch, else after the current token) and nothing new after it. A cancelled
    answer is not a result: it yields no row, so a resumed run asks it again.

    `cancel()` and `cancel_requested` are an `AnswerHandle`'s, so a Ctrl-C handler written for one answer
    stops a whole evaluation too."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._handle: AnswerHandle | None = None

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            if self._handle is not None:
                self._handle.cancel()

    @property
    def cancel_requested(self) -> bool:
        return self._event.is_set()

    def _running(self, handle: AnswerHandle | None) -> None:
        with self._lock:
            self._handle = handle
            if handle is not None and self._event.is_set():
                handle.cancel()


def group_by_video(items: Iterable[Item]) -> list[list[Item]]:
    """Items that see the same frames, together, in the order their videos first appear."""
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        groups.setdefault(item.video_key, []).append(item)
    return list(groups.values())


def select_items(items: Sequence[Item], sample: int | None, limit: int | None, seed: int) -> list[Item]:
    """`sample` items drawn at random with `seed` (kept in dataset order), then the first `limit` of them."""
    chosen = list(items)
    if sample is not None and sample < len(chosen):
        keep = sorted(random.Random(seed).sample(range(len(chosen)), sample))
        chosen = [chosen[i] for i in keep]
    return chosen if limit is None else chosen[:limit]


def evaluate_group(
    engine: Engine,
    items: Sequence[Item],
    modes: Sequence[Mode],
    settings: EvalSettings,
    stop: Stop | None = None,
    skip: Collection[tuple[str, str]] = frozenset(),
    on_event: OnEvent | None = None,
) -> Iterator[dict]:
    """Rows for `items` (all about one video and window) in each of `modes`, item by item, leaving out the
    (id, mode) pairs in `skip`. The video is sampled and encoded once, by the first answer, and every later
    answer reuses that encoding. A failure (a video that does not decode, an answer that raises) becomes a
    row with its `error`; the rest go on. Returns early, without a row, once `stop` is cancelled."""
    todo = [(item, mode) for item in items for mode in modes if (item.id, mode) not in skip]
    if not todo:
        return
    stop = stop or Stop()
    first = todo[0][0]
    t0 = time.perf_counter()
    try:
        patch = engine.projector.patch_size if engine.projector else 14
        loaded = load_video(first.video, _frames_for(settings.frames, first), patch, settings.token_budget)
    except Exception as exc:  # the video, not the run, is at fault: every question about it says why
        for item, mode in todo:
            yield error_row(item, mode, settings, exc)
        return
    sampling_s = time.perf_counter() - t0
    source: Media | Encoding = loaded.media
    for item, mode in todo:
        if stop.cancel_requested:
            return
        t1 = time.perf_counter()
        try:
            answer, encoding = _ask(engine, source, item, mode, settings, stop, on_event)
        except Exception as exc:
            if stop.cancel_requested:
                return
            yield error_row(item, mode, settings, exc)
            continue
        if answer.stop_reason == "cancelled":
            return
        source = encoding or source
        yield answer_row(item, answer, loaded, settings, time.perf_counter() - t1, sampling_s)
        sampling_s = 0.0  # the frames were sampled once, for the first row


def _ask(
    engine: Engine,
    source: Media | Encoding,
    item: Item,
    mode: Mode,
    settings: EvalSettings,
    stop: Stop,
    on_event: OnEvent | None,
) -> tuple[Answer, Encoding | None]:
    """One independent answer, cancellable through `stop`; also the encoding it left, to reuse."""
    handle = engine.ask(source, item.prompt(), settings.generation, decoding_for(mode, settings.vreason))
    stop._running(handle)
    try:
        for event in handle:
            if on_event is not None:
                on_event(item, mode, event)
        return handle.result(), handle.encoding
    finally:
        stop._running(None)
        handle.close()


def _frames_for(frames: FrameSampling, item: Item) -> FrameSampling:
    if item.start is None and item.end is None:
        return frames
    return replace(frames, start_s=item.start, end_s=item.end)


def _item_fields(item: Item, mode: str) -> dict:
    return {
        "id": item.id,
        "mode": mode,
        "dataset": item.dataset,
        "source": item.source,
        "video": str(item.video),
        "start": item.start,
        "end": item.end,
        "type": item.type,
        "question": item.question,
        "options": list(item.options),
        "truth": item.answer,
        "categories": dict(item.categories),
        "rule": item.rule,
        "prompt": item.prompt(),
    }


# What a row writes of the answer's record (Answer.to_dict), under the names rows have always had (`n_media_tokens`
# as `n_video_tokens`; events.answer_fields). The row's own fields: the item's (question: the item's, not the
# prompt built from it, which is `prompt`), the scores (row_scores), the frames, telemetry's summary, warnings
# and error.
_ANSWER_FIELDS = (
    "answer", "text", "stop_reason", "n_tokens", "tokens", "entropy", "reused_encoding", "n_video_tokens",
    "n_video_tokens_kept", "notices",
)  # fmt: skip
_SCORE_FIELDS = (*SCORE_FIELDS, "scoring", "reference", "lenient")


def _frames(settings: EvalSettings, loaded: LoadedMedia | None = None) -> dict:
    """The frames as requested and, once sampled, as sampled (media.LoadedMedia.summary), with the two sampling
    constants rows have always carried."""
    summary = loaded.summary(settings.frames, settings.token_budget) if loaded is not None else None
    out = summary or requested_frames(settings.frames, settings.token_budget)
    return {**out, "min_pixels": settings.frames.min_pixels, "factor": settings.frames.factor}


def _requested_settings(settings: EvalSettings, mode: str) -> dict:
    vr = None
    if mode != "base":
        from ..vreason import VReasonSettings

        vr = asdict(settings.vreason or VReasonSettings())
    return {"frames": _frames(settings), "generation": asdict(settings.generation), "vreason": vr}


def answer_row(
    item: Item, answer: Answer, loaded: LoadedMedia, settings: EvalSettings, answer_s: float, sampling_s: float
) -> dict:
    """The results row of a finished answer (README: `vreason eval`, results.jsonl)."""
    record = answer.to_dict()
    used = record["settings"]
    return {
        **_item_fields(item, answer.mode),
        **answer_fields(record, _ANSWER_FIELDS, ENTROPY_DIGITS),
        **score_fields(item, answer.text, settings.scoring),  # both scorings read the answer, not the reasoning
        "timings": {**record["timings"], "sampling_s": round(sampling_s, 4), "answer_s": round(answer_s, 4)},
        "telemetry": summarize(answer).as_dict(),
        "settings": {
            "frames": _frames(settings, loaded),
            "generation": used.get("generation"),
            "vreason": used.get("vreason"),
            "n_ctx": used.get("n_ctx"),
        },
        "warnings": list(loaded.warnings),
        "error": None,
    }


def error_row(item: Item, mode: str, settings: EvalSettings, exc: BaseException) -> dict:
    """The row of an answer that could not be given: the same fields, empty, and why."""
    if isinstance(exc, UserError):
        why = exc.message + (f"; try {' or '.join(r.text for r in exc.remedies)}" if exc.remedies else "")
    else:
        why = f"{type(exc).__name__}: {exc}"
    return {
        **_item_fields(item, mode),
        **dict.fromkeys((*_ANSWER_FIELDS, *_SCORE_FIELDS, "timings", "telemetry")),
        "notices": [],
        "settings": _requested_settings(settings, mode),
        "warnings": [],
        "error": why,
    }


def run_eval(
    engine: Engine,
    items: Sequence[Item],
    modes: Sequence[Mode],
    settings: EvalSettings,
    writer: ResultsWriter,
    done: Collection[tuple[str, str]] = frozenset(),
    stop: Stop | None = None,
    on_row: Callable[[dict], None] | None = None,
    on_event: OnEvent | None = None,
) -> int:
    """Answer every (item, mode) not in `done`, video by video, appending each row as it completes;
    returns how many rows were written. Stops early, with every finished row on disk, once `stop` is cancelled."""
    return write_rows(local_rows(engine, items, modes, settings, done, stop, on_event), writer, on_row)


def local_rows(
    engine: Engine,
    items: Sequence[Item],
    modes: Sequence[Mode],
    settings: EvalSettings,
    done: Collection[tuple[str, str]] = frozenset(),
    stop: Stop | None = None,
    on_event: OnEvent | None = None,
) -> Iterator[dict]:
    """The rows of every (item, mode) not in `done`, answered here, video by video."""
    stop = stop or Stop()
    for group in group_by_video(items):
        if stop.cancel_requested:
            return
        yield from evaluate_group(engine, group, modes, settings, stop, done, on_event)


def write_rows(rows: Iterable[dict], writer: ResultsWriter, on_row: Callable[[dict], None] | None = None) -> int:
    """Append each row the moment it exists (wherever it was answered); returns how many were written."""
    written = 0
    for row in rows:
        writer.append(row)
        written += 1
        if on_row is not None:
            on_row(row)
    return written

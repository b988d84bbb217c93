"""A chat without a screen: the engine, the video's encoding, the conversation and the store, in one object.

`ChatApp` drives a `ChatSession` and renders what comes back; tests (and any other front end) drive one
directly. Data flows one way: the session does the work and yields events (its own: `Planned`,
`ModelLoaded`, `Ready`; then the engine's, unchanged), the caller shows them.

Two threads use it in the app, each for what it may touch:
- the engine is used by one thread at a time (`lock`; a cancelled worker may still be finishing when the
  next starts): `load` and `answer` hold it while they run, in the app's worker threads;
- the store's sqlite connection stays on the thread that opened it: `begin` (the question), `finish` (each
  answer), `restore` and `export` run on the app's UI thread.
A question is `begin` -> `answer` -> `finish` per mode; `ask` runs all three on one thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from ..decoding import Decoding, decoding_for
from ..engine import EncodeJob, Encoding, Engine, media_key
from ..errors import UserError
from ..events import Answer, Event, Finished
from ..gguf_info import ModelInfo
from ..hub import resolve_model
from ..planning import Plan, open_engine, plan_run, record_prefill_speed
from ..settings import GenerationSettings
from .export import export_session
from .options import ChatOptions
from .store import ChatStore, MessageRecord, SessionRecord, VideoStatus


class AnswerStream(Protocol):
    """An answer as the session uses it: its events in order (iterated where `answer` runs) and `cancel()`
    (from any thread). `Engine.ask`'s `AnswerHandle` is one."""

    def __iter__(self) -> Iterator[Event]: ...

    def cancel(self) -> None: ...


StartAnswer = Callable[
    [Engine, Encoding, str, GenerationSettings, Decoding, "Answer | None", threading.Event],
    AnswerStream,
]
"""How the session starts an answer: `Engine.ask`, with its arguments in that order (the default). Tests pass one
that replays a recorded answer (pictures with the same figures on every CPU) or holds the engine's own answer
until it is cancelled (the model cannot end it first)."""


@dataclass(frozen=True)
class Planned:
    """Frames sampled and the run sized: `options` are the session's from now on."""

    plan: Plan
    options: ChatOptions


@dataclass(frozen=True)
class ModelLoaded:
    """A model was (re)loaded."""

    info: ModelInfo


@dataclass(frozen=True)
class Ready:
    """The video is encoded: questions are answered on `encoding`. `warnings`: what the user should know;
    `reused`: the encoding was kept from an earlier load (nothing was encoded now)."""

    encoding: Encoding
    warnings: tuple[str, ...] = ()
    reused: bool = False


LoadEvent = Planned | ModelLoaded | Ready | Event


@dataclass
class Turn:
    """One question being answered, in one mode or (compare) several, on one encoding, with the options and
    the follow-up as they were when it was asked (settings changed meanwhile apply to the next question)."""

    id: int
    question: str
    modes: tuple[str, ...]
    encoding: Encoding
    options: ChatOptions
    follow_up: Answer | None
    session_id: int  # where the question was saved, and so its answers
    group: int | None  # the question's message id when the answers are compared
    saves_encoding: bool = False  # an earlier question was answered on this encoding: this one saves encoding again
    answers: dict[str, Answer] = field(default_factory=dict)


@dataclass(frozen=True)
class Restored:
    """A stored conversation reopened: what to show, and what to `load` to continue it."""

    record: SessionRecord
    messages: list[MessageRecord]
    answers: dict[int, Answer]  # each answer's message id -> the `Answer` stored (text, figures, per-token telemetry)
    video: VideoStatus
    options: ChatOptions
    new_engine: bool


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})  # what OpenCV reads
KEEP = 4
"""Encodings a session keeps (the newest): going back to a video (or frames) encoded earlier costs nothing. The
engine keeps an encoding that other media replaced in its cache as the prefix's KV rows in host memory (about
`n_tokens` x the model's KV bytes per token each: a few MB for a tiny clip, ~100 MB for 4k tokens on 3B)."""


class ChatSession:
    """One chat: `options` (what the next load and question use), the `store`, the loaded `engine`, the current
    `encoding`, and the conversation (`session_id`, `follow_up`: the answer the next question continues).
    `mode` is the mode the conversation goes on in: a compare continues from its answer in that mode."""

    def __init__(self, options: ChatOptions, store: ChatStore, start_answer: StartAnswer = Engine.ask) -> None:
        self.options = options
        self.store = store
        self.start_answer = start_answer
        self.mode: str = options.mode
        self.engine: Engine | None = None
        self.encoding: Encoding | None = None
        self.session_id: int | None = None
        self.follow_up: Answer | None = None
        self.lock = threading.Lock()
        self._session_video: str | None = None  # the stored session's video path (absolute)
        self._stored_mode: str | None = None  # the mode the stored session records (what `--resume` goes on in)
        self._stored_follow_up: Answer | None = None  # a restored conversation's last answer, until encoded
        self._handle: EncodeJob | AnswerStream | None = None  # the engine operation running now
        self._turns = 0
        self._answered_on: set[str] = set()  # the keys of the encodings questions were asked on
        self._kept: dict[str, Encoding] = {}  # the engine's latest encodings by key, the newest last (`KEEP`)

    @property
    def ready(self) -> bool:
        """A video (or no video) is encoded: a question can be asked."""
        return self.encoding is not None and self.engine is not None

    @property
    def encode_s(self) -> float:
        """What encoding the current video took the first time (what each answer on it saves)."""
        return self.encoding.encode_s + self.encoding.prefill_s if self.encoding is not None else 0.0

    # -- loading: plan, engine, encoding -------------------------------------------------------------------
    def plan(self, options: ChatOptions) -> Plan:
        """Sample the frames and size the run for `options`, loading nothing (also the video panel's estimate).
        A still image (by its suffix) is planned as `vreason run --image` plans it."""
        if options.video is not None and options.video.suffix.lower() in IMAGE_SUFFIXES:
            return plan_run(options.settings, image=options.video)
        return plan_run(options.settings, options.video)

    def load(
        self, options: ChatOptions, new_engine: bool = False, cancel: threading.Event | None = None
    ) -> Iterator[LoadEvent]:
        """Plan, (re)load the model when `new_engine` or none is loaded, and encode the video: `Planned`,
        `ModelLoaded`, the engine's progress events, then `Ready`. Cancelled (`cancel` or `self.cancel()`):
        it ends without `Ready`. A model that is not there: `ModelMissing`, before any video work."""
        cancel = cancel or threading.Event()
        with self.lock:
            try:
                yield from self._load(options, new_engine or self.engine is None, cancel)
            finally:
                self._handle = None

    def _load(self, options: ChatOptions, new_engine: bool, cancel: threading.Event) -> Iterator[LoadEvent]:
        if new_engine:
            resolve_model(options.model, options.mmproj)  # ModelMissing: before the video is read
        plan = self.plan(options)
        self.options = options
        yield Planned(plan, options)
        if cancel.is_set():
            return
        if new_engine:
            if self.engine is not None:
                self.engine.close()
                self.engine = None
            self._kept.clear()  # an encoding is its engine's
            self.engine = open_engine(plan)
            yield ModelLoaded(self.engine.info)
        kept = self._kept.pop(media_key(plan.media.media), None)
        if kept is not None:  # encoded before (another video was opened since): use it again
            self._kept[kept.key] = kept
            yield self._encoded(kept, options, plan, reused=True)
            return
        job = self.engine.encode(plan.media.media, cancel=cancel)
        self._handle = job
        yield from job
        if not cancel.is_set() and not job.cancel_requested:
            encoding = job.result()
            self._kept[encoding.key] = encoding
            while len(self._kept) > KEEP:
                del self._kept[next(iter(self._kept))]
            yield self._encoded(encoding, options, plan)

    def _encoded(self, encoding: Encoding, options: ChatOptions, plan: Plan, reused: bool = False) -> Ready:
        """Questions go to `encoding` now (`reused`: one kept from earlier); a restored conversation continues
        if its frames are these."""
        if self.session_id is not None and self._session_video != _video_path(options.video):
            self.session_id = None  # another video: a new conversation (the old one stays in its session)
            self.follow_up = None
        self.encoding = encoding
        warnings = []
        stored, self._stored_follow_up = self._stored_follow_up, None
        if stored is not None:
            if stored.settings.get("media_key") == encoding.key:
                self.follow_up = stored
            else:
                warnings.append(
                    "the video's frames are not those of the stored conversation: new questions start afresh"
                )
        if encoding.n_media_tokens and not reused and encoding.source == "encoded" and self.engine is not None:
            record_prefill_speed(self.engine.info, plan.engine, encoding.n_tokens, self.encode_s)
        return Ready(encoding, tuple(warnings), reused)

    # -- asking ---------------------------------------------------------------------------------------------
    def ask(
        self, question: str, modes: tuple[str, ...] | None = None, cancel: threading.Event | None = None
    ) -> Iterator[tuple[str, Event]]:
        """A whole question on this thread (`begin`, `answer`, `finish`): (mode, event) as the engine makes
        them, in the current `mode` or in each of `modes` in turn; every finished answer stored."""
        turn = self.begin(question, modes or (self.mode,))
        for mode, event in self.answer(turn, cancel):
            if isinstance(event, Finished):
                self.finish(turn, mode, event.answer)
            yield mode, event

    def begin(self, question: str, modes: tuple[str, ...]) -> Turn:
        """Save the question (the first one opens a stored session) and fix how it is answered: on the current
        encoding, continuing the conversation's last answer where that is about the same frames."""
        if self.encoding is None or self.engine is None:
            raise UserError("nothing is loaded yet: load the model (and the video, if any) before asking")
        if self.session_id is None:
            frames = [{"index": f.index, "timestamp_s": f.timestamp_s} for f in self.encoding.media.frames]
            record = self.store.create_session(self.options.video, self.options.model, self._stored_settings(), frames)
            self.session_id, self._session_video, self._stored_mode = record.id, record.video_path, self.mode
        elif self._stored_mode != self.mode:  # the mode was switched: a resumed conversation goes on in this one
            self.store.update_session(self.session_id, settings=self._stored_settings())
            self._stored_mode = self.mode
        user = self.store.add_question(self.session_id, question)
        follow = self.follow_up
        if follow is not None and follow.settings.get("media_key") != self.encoding.key:
            follow = None
        self._turns += 1
        group = user.id if len(modes) > 1 else None
        saves = self.encoding.key in self._answered_on
        self._answered_on.add(self.encoding.key)
        return Turn(self._turns, question, modes, self.encoding, self.options, follow, self.session_id, group, saves)

    def _stored_settings(self) -> dict:
        """The settings a session is stored with: the options, with the mode the conversation is in now."""
        return {**self.options.as_dict(), "mode": self.mode}

    def questions(self) -> list[MessageRecord]:
        """The questions of the stored conversation going on now (none before the first is asked)."""
        if self.session_id is None:
            return []
        return [m for m in self.store.messages(self.session_id) if m.role == "user"]

    def branch(self, question_id: int) -> tuple[list[MessageRecord], dict[int, Answer]]:
        """Go back to before question `question_id` of this conversation, to ask it again (regenerate) or
        edited: a new stored session holds copies of the messages before it (the original is kept as it was),
        and the next `begin` continues the last answer kept. Returns the kept messages and their answers."""
        if self.session_id is None:
            raise UserError("nothing to go back to yet: ask a question first")
        record = self.store.branch_session(self.session_id, question_id)
        messages = self.store.messages(record.id)
        answers = stored_answers(messages)
        self.session_id, self._session_video, self._stored_mode = record.id, record.video_path, None
        self.follow_up = _last_answer(messages, answers, self.mode)  # begin drops it if about other frames
        return messages, answers

    def answer(self, turn: Turn, cancel: threading.Event | None = None) -> Iterator[tuple[str, Event]]:
        """Answer `turn` on the engine, mode after mode: (mode, event) for each of the engine's events. Cancelled
        (`cancel`, or `self.cancel()` for the running answer), the answer ends with what it has and no
        further mode starts."""
        cancel = cancel or threading.Event()
        with self.lock:
            try:
                for mode in turn.modes:
                    if cancel.is_set():
                        break
                    decoding = decoding_for(mode, turn.options.vreason)
                    handle = self.start_answer(
                        self.engine, turn.encoding, turn.question, turn.options.gen, decoding, turn.follow_up, cancel
                    )
                    self._handle = handle
                    for event in handle:
                        yield mode, event
            finally:
                self._handle = None

    def finish(self, turn: Turn, mode: str, answer: Answer) -> None:
        """One of `turn`'s answers is finished (or cancelled: partial): store it with its question; the
        conversation, if still that one, continues from the answer in the current mode (a compare's, if it
        has one)."""
        turn.answers[mode] = answer
        self.store.add_answer(turn.session_id, answer, compare_group=turn.group)
        if turn.session_id == self.session_id and (mode == self.mode or self.mode not in turn.modes):
            self.follow_up = answer

    def cancel(self) -> None:
        """Stop the engine operation running now (an answer, the encoding) as soon as llama.cpp allows; any thread."""
        handle = self._handle
        if handle is not None:
            handle.cancel()

    # -- conversations --------------------------------------------------------------------------------------
    def restore(self, session_id: int) -> Restored:
        """Reopen a stored conversation: its messages, and the options to `load` its video with (its frame,
        generation and V-Reason settings, and its model: the stored token history is in that model's
        vocabulary). Its last answer is followed up once the video is encoded again with the same frames."""
        record = self.store.session(session_id)
        messages = self.store.messages(session_id)
        answers = stored_answers(messages)
        video = record.video_status()
        options = replace(
            self.options.with_stored(record.settings),
            model=record.model,
            video=Path(record.video_path) if video in ("ok", "changed") and record.video_path else None,
        )
        self.mode = self._stored_mode = options.mode  # the mode the conversation was in
        self._stored_follow_up = _last_answer(messages, answers, self.mode)
        self.session_id, self._session_video = session_id, record.video_path
        self.follow_up = None
        new_engine = self.engine is None or options.model != self.options.model
        return Restored(record, messages, answers, video, options, new_engine)

    def new(self) -> None:
        """A new conversation about the same video: the next question opens a new stored session."""
        self.session_id = None
        self.follow_up = None

    def choose_model(self, model: str, mmproj: str | None) -> ChatOptions:
        """Another model: a new conversation, and the video to encode again (an encoding is its engine's).
        Returns the options to `load` with a new engine."""
        self.new()
        self.encoding = None
        return replace(self.options, model=model, mmproj=mmproj)

    def export(self, path: Path) -> Path:
        """Write the conversation to `path` (.md or .json); the file written."""
        if self.session_id is None:
            raise UserError("nothing to export yet: ask a question first")
        return export_session(self.store, self.session_id, path)

    def close(self, timeout_s: float = 30.0) -> None:
        """Free the model once no worker uses it; one still finishing after `timeout_s` keeps it (the process
        is ending)."""
        if not self.lock.acquire(timeout=timeout_s):
            return
        try:
            if self.engine is not None:
                self.engine.close()
                self.engine = None
            self.encoding = None
            self._kept.clear()
        finally:
            self.lock.release()


def stored_answers(messages: list[MessageRecord]) -> dict[int, Answer]:
    """Each stored answer (by message id) as the `Answer` it was saved from, with the question it answers (a
    compare's: its group's question), so it shows with its figures and telemetry and can be followed up."""
    questions: dict[int, str] = {}
    asked = ""
    answers = {}
    for m in messages:
        if m.role == "user":
            questions[m.id] = asked = m.text
        else:
            answers[m.id] = m.as_answer(questions.get(m.compare_group, asked) if m.compare_group else asked)
    return answers


def _last_answer(messages: list[MessageRecord], answers: dict[int, Answer], mode: str) -> Answer | None:
    """The answer a stored conversation continues from: its last one; of a last compare, the one in `mode`
    (as `finish` chose while it was asked), else the compare's last."""
    rows = [m for m in messages if m.role == "assistant"]
    if not rows:
        return None
    last = rows[-1]
    if last.compare_group is not None:
        same = [m for m in rows if m.compare_group == last.compare_group and m.mode == mode]
        last = same[-1] if same else last
    return answers[last.id]


def _video_path(video: Path | None) -> str | None:
    """A video as the store records it (absolute), to tell whether a load is of the session's video."""
    return str(Path(video).expanduser().resolve()) if video is not None else None

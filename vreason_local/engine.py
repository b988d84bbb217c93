"""The engine: one loaded Qwen-VL model that answers questions about media, one answer at a time.

    engine = Engine(model_path, mmproj_path)           # loads once; any mode can be asked per answer
    encoding = engine.encode(media).result()           # optional: encode the video up front (progress events)
    answer = engine.ask(encoding, "What happens?", decoding="vreason")   # checked now, runs when iterated
    for event in answer: ...                           # Progress, Encoded, Prefilled, TokenEvent, Notice, Finished
    follow = engine.ask(encoding, "And then?", follow_up=answer.result())

Steps of one answer, in order (gpt-fast style, one small method each):
    resident - the media's prefix (system prompt + frames) in the KV cache: encoded, kept, or restored
    prefill  - the conversation's tokens after the prefix; only what the cache does not already hold
    decode   - token by token: logits -> token + entropy -> (V-Reason update) -> decode

The mode is a `decoding.Decoding` (base, V-Reason, Lite): the engine calls its few hooks at fixed points
of these steps (decoding.py says which, in order) and knows nothing else of any mode.

The cache is described exactly at all times (`_Cache`): which encoding is resident, whether Lite pruned
it, and which tokens follow it. Each answer starts by bringing the cache to the state it needs, so
whatever happened before (a cancelled or failed answer, another mode, another video) cannot leak into it.

Threads: an engine and its answers are used from one thread at a time (the TUI iterates answers in a
worker thread); `AnswerHandle.cancel()` may be called from any thread. While an answer is open (created
and neither finished, cancelled, closed nor garbage-collected) asking another raises `EngineBusy`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import llama_cpp
import numpy as np

from . import gguf_info
from .channels import split_answer
from .decoding import Controller, Decoding, TextStream, decoding_for, stop_reason
from .encoding_store import DamagedEntry, EncodingStore, entry_key, file_identity, known_identity
from .errors import EngineBusy, Remedy, UserError
from .events import Answer, Encoded, Event, Finished, Mode, Notice, Prefilled, Progress, TokenEvent
from .fit import ContextUse, check_context, context_size
from .kv_state import prune_cells
from .llama_backend import Aborted, CancelFlag, Context, MediaPrompt, Model, Vision
from .media import Media
from .prompt import prefix_parts, question_text, require_question
from .repack import repack_allowed
from .sampling import Sampler, logprobs
from .settings import DEFAULT_SYSTEM, EngineSettings, GenerationSettings

if TYPE_CHECKING:
    from .tail import Tail

_OFF = ("0", "off", "no", "false")


def media_key(media: Media, system: str = DEFAULT_SYSTEM) -> str:
    """Identity of an encoded prefix: the media content and the system prompt before it. Same frames and
    prompt -> same encoding, reusable; another system prompt is another prefix, never the same encoding."""
    h = hashlib.sha1(media.kind.encode())
    for f in media.frames:
        h.update(np.ascontiguousarray(f.rgb).tobytes())
        h.update(f"{f.timestamp_s:.3f}".encode())
    if system != DEFAULT_SYSTEM:  # the default's keys stay those stored before there was a choice (chat databases)
        h.update(b"\0system\0" + system.encode())
    return h.hexdigest()


EncodingSource = Literal["encoded", "memory", "disk"]


class Encoding:
    """Media encoded by one engine: hold it to ask about the media again, in any mode and order, without
    encoding it again. While it is in the engine's cache nothing is copied; when other media takes its
    place the engine keeps the prefix's sequence state here (its KV rows, in host memory) to restore it."""

    def __init__(
        self,
        engine: Engine,
        media: Media,
        key: str,
        tokens: list[int | None],
        n_past: int,
        media_cells: np.ndarray,
        encode_s: float,
        prefill_s: float,
        system: str = DEFAULT_SYSTEM,
    ) -> None:
        self.media = media
        self.key = key
        self.system = system  # the system prompt the prefix begins with
        self.tokens = tokens  # the prefix's token ids, None at media positions
        self.n_past = n_past  # the next M-RoPE position after the prefix
        self.media_cells = media_cells  # KV cells of the media tokens, in order (the prefix fills cells from 0)
        self.encode_s = encode_s
        self.prefill_s = prefill_s
        self.snapshot: bytes | None = None  # the unpruned prefix's sequence state, when it had to be kept
        self.source: EncodingSource = "encoded"  # "disk": loaded from the encoding cache, not encoded here
        self.cost_s = encode_s + prefill_s  # what encoding it took where it was made (this or an earlier process)
        self.load_s = 0.0  # reading it from the encoding cache (source "disk")
        self._engine = weakref.ref(engine)

    @property
    def saved_s(self) -> float:
        """What loading it from the encoding cache spared (source "disk"): the encoding's cost where it was
        made, less the load."""
        return max(0.0, self.cost_s - self.load_s)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def n_media_tokens(self) -> int:
        return len(self.media_cells)

    @property
    def n_frames(self) -> int:
        return len(self.media.frames)


@dataclass
class _Cache:
    """What the KV cache holds: `encoding`'s prefix (pruned by Lite or not), then `turns`' tokens."""

    encoding: Encoding | None = None
    pruned: bool = False
    media_cells: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # current cells of media rows
    n_prefix_cells: int = 0
    turns: list[int] = field(default_factory=list)  # token ids after the prefix, positions n_past + i

    @property
    def n_cells(self) -> int:
        return self.n_prefix_cells + len(self.turns)


class _Cancelled(Exception):
    """Raised inside an answer's steps when it is cancelled; the answer still finishes with what it has."""


T = TypeVar("T")


class _Control:
    """What an operation's steps share with its handle: cancellation, the result, whether it is done.
    (The steps hold this, not the handle, so an abandoned handle is freed, and closed, at once.)"""

    def __init__(self, external: threading.Event | None, flag: CancelFlag) -> None:
        self.cancel = threading.Event()
        self.external = external
        self.flag = flag  # stops llama.cpp part way through a batch or a frame pair
        self.result: object | None = None
        self.encoding: Encoding | None = None
        self.controller: Controller | None = None  # the decoding's, once it started one
        self.done = False

    def cancelled(self) -> bool:
        return self.cancel.is_set() or (self.external is not None and self.external.is_set())


class _Job(Generic[T]):
    """A handle on one engine operation: iterate it for its events; `result()` runs it to the end."""

    def __init__(self, cancel: threading.Event | None, flag: CancelFlag) -> None:
        self._ctl = _Control(cancel, flag)
        self._gen: Iterator[Event] | None = None

    @property
    def done(self) -> bool:
        """Finished, cancelled to its end, closed, or failed: the engine is free for the next operation."""
        return self._ctl.done

    def cancel(self) -> None:
        """Stop as soon as llama.cpp allows: part way through a prefill batch or a frame pair (CPU), else
        at the next safe point (between tokens, frame pairs or batches). Any thread. A `cancel` event passed
        to `ask` is seen at the safe points only."""
        self._ctl.cancel.set()
        if not self.done:
            self._ctl.flag.set()

    @property
    def cancel_requested(self) -> bool:
        return self._ctl.cancelled()

    def __iter__(self) -> _Job[T]:
        return self

    def __next__(self) -> Event:
        if self._gen is None:
            raise StopIteration
        try:
            return next(self._gen)
        except BaseException:
            self._finish()
            raise

    def result(self) -> T:
        """Run to the end (consuming the remaining events) and return the result."""
        for _ in self:
            pass
        if self._ctl.result is None:
            raise RuntimeError("this operation was closed or cancelled before it had a result")
        return self._ctl.result  # type: ignore[return-value]

    def close(self) -> None:
        """Abandon the operation now; the engine is left clean for the next one."""
        if self._gen is not None:
            self._gen.close()
        self._finish()

    def _finish(self) -> None:
        self._gen = None
        self._ctl.done = True

    def __enter__(self) -> _Job[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # an abandoned iteration still restores the cache (generator finalisation)
        with contextlib.suppress(Exception):
            self.close()


class EncodeJob(_Job[Encoding]):
    """Encoding media: `Progress` events, then `Encoded`; `result()` is the `Encoding`."""


class AnswerHandle(_Job[Answer]):
    """One answer: created when asked (bad input raises then), runs as it is iterated, ends with
    `Finished` (also when cancelled). `result()` is the finished `Answer`, with its prompt tokens,
    timings and settings; `encoding` is the media's encoding (once resident), to ask about it again."""

    @property
    def encoding(self) -> Encoding | None:
        return self._ctl.encoding

    @property
    def controller(self) -> Controller | None:
        """The answer's controller once it started (None in base mode): V-Reason's is a `vreason.VReason`,
        whose state is there for inspection."""
        return self._ctl.controller


class Engine:
    """A Qwen-VL model (and its projector) loaded once, answering questions about media."""

    def __init__(
        self,
        model_path: Path,
        mmproj_path: Path | None = None,
        settings: EngineSettings = EngineSettings(),
        infos: tuple[gguf_info.ModelInfo, gguf_info.ProjectorInfo | None] | None = None,
    ) -> None:
        """`infos`: the files' metadata, already read and checked by the caller (planning.plan_run).
        Whatever was loaded is freed again if a later part fails."""
        t0 = time.perf_counter()
        self.settings = settings
        self.info, self.projector = infos or gguf_info.read_pair(model_path, mmproj_path)
        self.model: Model | None = None
        self.vision: Vision | None = None
        self.hook = None
        self.ctx: Context | None = None
        self._tail = None  # the PyTorch tail, loaded at the first V-Reason answer and kept
        self._tail_key: tuple[str, str] | None = None
        self._cache = _Cache()
        self._active: weakref.ref[_Job] | None = None
        self._abort = CancelFlag()
        self._store = _open_store(settings)
        self._identity: dict | None = None  # what identifies this engine's encodings on disk (`_disk_identity`)
        with contextlib.ExitStack() as undo:
            undo.callback(self.close)
            self.repack = repack_allowed(settings.repack)
            self.model = Model(self.info.path, settings.n_gpu_layers, self.repack)
            if self.projector:
                self.vision = Vision(
                    self.projector.path, self.model, settings.n_threads, settings.n_gpu_layers != 0, self._abort
                )
            if settings.hook:
                from .hook import ValueHook

                self.hook = ValueHook(self.info)
            if settings.n_ctx is not None:
                self._new_context(settings.n_ctx)
            undo.pop_all()
        # llama.cpp stores V transposed only when flash attention is explicitly off (llama-notes.md)
        self.v_transposed = settings.flash_attn == "off"
        self.load_s = time.perf_counter() - t0

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Free every llama.cpp object once, context before model."""
        active = self._active() if self._active else None
        if active is not None:
            active.close()
        if self._tail is not None:  # first: it may read the weights through llama.cpp's mapping of them
            self._tail.head.close()
            self._tail = None
        for obj in (self.ctx, self.vision, self.model, self.hook):
            if obj:
                obj.close()
        self.ctx = None
        if self._store is not None:
            self._store.wait()  # an encoding being written is on disk once the engine is closed

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_ctx(self) -> int:
        """The context's size now (0 before the first encoding when it is sized automatically)."""
        return self.ctx.n_ctx if self.ctx else 0

    # -- the public operations -------------------------------------------------------------------
    def encode(self, media: Media, cancel: threading.Event | None = None, system: str | None = None) -> EncodeJob:
        """Encode `media` now (progress events while it runs), to ask about it later; `system`: the system
        prompt before it (default: the engine's, `EngineSettings.system`), which every answer about it has."""
        self._check_idle()
        system = self.settings.system if system is None else system
        key = media_key(media, system)
        prompt = self._prepare_media(media, key, 1, system=system)
        job = EncodeJob(cancel, self._abort)
        self._start(job, self._encode_steps(job._ctl, media, key, prompt, system))
        return job

    def ask(
        self,
        source: Media | Encoding,
        question: str,
        gen: GenerationSettings = GenerationSettings(),
        decoding: Decoding | Mode = "base",
        follow_up: Answer | None = None,
        cancel: threading.Event | None = None,
        system: str | None = None,
    ) -> AnswerHandle:
        """Ask one question about `source` (media, or an `Encoding` of it). `decoding`: the mode with its
        settings (`decoding.decoding_for`), or a mode's name for its default settings. `follow_up`: an earlier
        answer about the same media whose conversation this question continues. Checked now; runs when
        iterated. `system`: the system prompt for `Media` (default: the engine's, `EngineSettings.system`); an
        `Encoding` has its own, and another one given with it is refused (another prefix: encode the media
        with it)."""
        require_question(question)
        self._check_idle()
        if isinstance(decoding, str):
            decoding = decoding_for(decoding)
        if decoding.needs_hook and self.hook is None:
            raise UserError(
                f"the {decoding.mode} mode needs the engine loaded with the value-cache hook (EngineSettings.hook)"
            )
        if isinstance(source, Encoding) and source._engine() is not self:
            raise UserError("this encoding belongs to another engine; encode the media with this one")
        if isinstance(source, Encoding):
            if system is not None and system != source.system:
                raise UserError(
                    "this encoding was made with another system prompt; encode the media with this one "
                    "(Engine.encode(media, system=...)) or ask about the media itself"
                )
            system = source.system
        system = self.settings.system if system is None else system
        key = source.key if isinstance(source, Encoding) else media_key(source, system)
        history: tuple[int, ...] = ()
        if follow_up is not None:
            if follow_up.settings.get("media_key") != key:
                raise UserError("a follow-up must be about the same media as the answer it follows")
            history = follow_up.history
        ids = self.model.tokenize(question_text(question, gen.reasoning, follow_up=bool(history)))
        wanted = list(history) + ids
        extra = len(wanted) + gen.max_tokens
        if isinstance(source, Encoding):
            self._check_room(source.n_tokens + extra, gen.max_tokens)
            prompt = None
        else:
            prompt = self._prepare_media(source, key, extra, gen.max_tokens, system)
        handle = AnswerHandle(cancel, self._abort)
        steps = self._answer_steps(handle._ctl, source, prompt, key, question, wanted, gen, decoding, system)
        self._start(handle, steps)
        return handle

    def _check_idle(self) -> None:
        """One operation at a time: an open one (not finished, closed or collected) makes the engine busy."""
        active = self._active() if self._active else None
        if active is not None and not active.done:
            raise EngineBusy("an answer is still open on this engine: finish, cancel() or close() it first")

    def _start(self, job: _Job, steps: Iterator[Event]) -> None:
        self._abort.clear()
        job._gen = steps
        self._active = weakref.ref(job)

    # -- checks made before anything runs ----------------------------------------------------------
    def _prepare_media(
        self, media: Media, key: str, extra: int, answer: int = 0, system: str = DEFAULT_SYSTEM
    ) -> MediaPrompt | None:
        """The tokenised prompt prefix (None when the media is already resident, or has no images), once
        the context is known to hold it and `extra` tokens more (`answer` of them the answer's); a prompt
        that cannot be used is freed."""
        resident = self._cache.encoding
        if resident is not None and resident.key == key:
            self._check_room(resident.n_tokens + extra, answer)
            return None
        if media.kind != "none" and self.vision is None:
            raise UserError(
                "this model was loaded without a vision projector, which images and video need",
                [Remedy("the projector file of this model", "mmproj")],
            )
        text, frames = prefix_parts(media, self.vision.marker if self.vision else "<__media__>", system)
        if not frames:
            self._check_room(len(self.model.tokenize(text)) + extra, answer)
            return None
        prompt = self.vision.tokenize(text, [f.rgb for f in frames], mergeable=len(frames) > 1)
        try:
            self._check_room(prompt.n_tokens + extra, answer)
        except BaseException:
            prompt.close()
            raise
        return prompt

    def _check_room(self, needed: int, answer: int = 0) -> None:
        """Checked before anything is encoded, with the real prompt's token count; of `needed`, `answer`
        tokens are the answer's, so a shorter answer that fits can be named."""
        check_context(needed, self.settings.n_ctx, self.info.n_ctx_train, ContextUse(needed, answer))

    def _ensure_context(self, needed: int) -> None:
        """An automatic context grows (its cache carried over) when a conversation outgrows it; a fixed
        one was checked by `_check_room` already."""
        if self.ctx is not None and (needed <= self.ctx.n_ctx or self.settings.n_ctx is not None):
            return
        size = min(self.info.n_ctx_train, max(context_size(needed), int(self.n_ctx * 1.5)))
        state = self.ctx.state_get() if self.ctx is not None and self._cache.encoding is not None else None
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None
        self._new_context(size)
        if state is not None:
            self.ctx.state_set(state)

    def _new_context(self, n_ctx: int) -> None:
        s = self.settings
        if self.hook:
            self.hook.forget_cache()  # the new context has its own cache tensors
        self.ctx = Context(
            self.model,
            n_ctx,
            s.n_batch,
            s.n_threads,
            s.flash_attn,
            *(self.hook.callback_args() if self.hook else ()),
            cancel=self._abort,
        )

    # -- resident: the media's prefix in the cache -------------------------------------------------
    def _encode_steps(
        self, ctl: _Control, media: Media, key: str, prompt: MediaPrompt | None, system: str
    ) -> Iterator[Event]:
        try:
            encoding, event = yield from self._resident(media, key, prompt, ctl, system)
        except (_Cancelled, Aborted):
            return
        finally:
            if prompt:
                prompt.close()
        ctl.result = ctl.encoding = encoding
        ctl.done = True
        yield event

    def _resident(
        self, source: Media | Encoding, key: str, prompt: MediaPrompt | None, ctl: _Control, system: str
    ) -> Iterator[Event]:
        """Make `source`'s prefix the cache's; returns (encoding, Encoded event)."""
        c = self._cache
        if isinstance(source, Encoding):
            if c.encoding is not source:
                self._ensure_context(source.n_tokens + 1)
                self._evict()
                self.ctx.state_set(source.snapshot)
                self._cache = _Cache(source, False, source.media_cells, source.n_tokens)
            return source, _encoded_event(source, "memory")
        if c.encoding is not None and c.encoding.key == key:
            return c.encoding, _encoded_event(c.encoding, "memory")
        yield from self._store_warnings()
        encoding = None
        if self._store is not None and prompt is not None:
            encoding = yield from self._load_encoding(source, key, prompt, system)
        if encoding is None:
            encoding = yield from self._encode(source, key, prompt, ctl, system)
            if self._store is not None and prompt is not None:
                self._save_encoding(encoding, prompt)
        return encoding, _encoded_event(encoding, encoding.source)

    # -- the encoding cache on disk (encoding_store.py) --------------------------------------------
    def _disk_identity(self, key: str, prefix: list, compute: bool) -> dict | None:
        """Everything that decides the prefix's KV rows (encoding_store's docstring): this engine's part
        (`engine_identity`, remembered once known), the media and the prompt prefix's tokens."""
        if self._identity is None:
            paths = [self.info.path] + ([self.projector.path] if self.projector else [])
            self._identity = engine_identity(self.settings, self.repack, paths, self._store.folder, compute)
            if self._identity is None:
                return None
        return {**self._identity, "media_key": key, "prefix": prefix}

    def _load_encoding(self, media: Media, key: str, prompt: MediaPrompt, system: str) -> Iterator[Event]:
        """The encoding from the cache on disk, loaded into the KV cache; None (after one warning where a file
        was there but unusable) when the media must be encoded."""
        t0 = time.perf_counter()
        identity = self._disk_identity(key, _prefix(prompt), compute=False)
        if identity is None:
            return None
        try:
            found = self._store.load(entry_key(identity), identity)
        except (DamagedEntry, OSError) as exc:
            yield Notice("warning", f"the encoding cache's file for this media was not usable ({exc}): encoding again")
            return None
        if found is None:
            return None
        meta, state = found
        self._ensure_context(prompt.n_tokens + 1)
        self._evict()
        try:
            self.ctx.state_set(state)
        except RuntimeError as exc:
            self.ctx.clear()
            self._store.path_for(entry_key(identity)).unlink(missing_ok=True)
            yield Notice("warning", f"the encoding cache's file for this media was not usable ({exc}): encoding again")
            return None
        tokens, cells = list(meta["tokens"]), np.asarray(meta["media_cells"], np.int64)
        encoding = Encoding(self, media, key, tokens, int(meta["n_past"]), cells, 0.0, 0.0, system)
        encoding.source = "disk"
        encoding.cost_s = _cost_s(meta)
        encoding.load_s = time.perf_counter() - t0
        self._cache = _Cache(encoding, False, cells, len(tokens))
        return encoding

    def _save_encoding(self, encoding: Encoding, prompt: MediaPrompt) -> None:
        """Write the fresh encoding's prefix state to disk, in the background (the answer goes on meanwhile)."""
        media, prefix = encoding.media, _prefix(prompt)
        meta = {
            "tokens": encoding.tokens,
            "n_past": encoding.n_past,
            "media_cells": encoding.media_cells.tolist(),
            "encode_s": encoding.encode_s,
            "prefill_s": encoding.prefill_s,
            "media": {"kind": media.kind, "source": media.source, "frames": len(media.frames)},
            "model": self.info.name,
            "model_file": self.info.path.name,
            "created": time.time(),
        }

        def describe() -> tuple[str, dict]:
            identity = self._disk_identity(encoding.key, prefix, compute=True)
            return entry_key(identity), {**meta, "identity": identity}

        self._store.save_later(describe, self.ctx.state_get())

    def _store_warnings(self) -> Iterator[Event]:
        """What a background write could not do, said once."""
        while self._store is not None and self._store.errors:
            yield Notice("warning", self._store.errors.pop(0))

    def _evict(self) -> None:
        """Clear the cache; a resident encoding keeps its prefix's state to come back to."""
        c = self._cache
        if c.encoding is not None and c.encoding.snapshot is None:
            self.ctx.remove_from(c.encoding.n_past)
            c.encoding.snapshot = self.ctx.state_get()
        if self.ctx is not None:
            self.ctx.clear()
        self._cache = _Cache()

    def _encode(
        self, media: Media, key: str, prompt: MediaPrompt | None, ctl: _Control, system: str
    ) -> Iterator[Event]:
        """System prompt + media into an empty cache, chunk by chunk, stoppable between chunks."""
        n_total = prompt.n_tokens if prompt else 0
        text, _ = prefix_parts(media, "", system)
        ids = None if prompt else self.model.tokenize(text)
        self._ensure_context((n_total or len(ids)) + 1)
        self._evict()
        tokens: list[int | None] = []
        media_cells: list[np.ndarray] = []
        n_past = 0
        encode_s = prefill_s = 0.0
        t0 = time.perf_counter()
        try:
            if ids is not None:  # no media: the prefix is text only
                yield from self._prefill_text(ids, 0, ctl, lambda batch: None)
                tokens, n_past = list(ids), len(ids)
                prefill_s = time.perf_counter() - t0
            else:
                for chunk in prompt.chunks:
                    self._stop_if_cancelled(ctl)
                    if chunk.tokens is not None:
                        t1 = time.perf_counter()
                        self.ctx.decode_tokens(chunk.tokens, n_past)
                        prefill_s += time.perf_counter() - t1
                        tokens += chunk.tokens
                        n_past += chunk.n_tokens
                    else:
                        n_past, enc_s, dec_s = prompt.encode_and_decode(chunk, self.ctx, n_past)
                        encode_s += enc_s
                        prefill_s += dec_s
                        media_cells.append(np.arange(len(tokens), len(tokens) + chunk.n_tokens))
                        tokens += [None] * chunk.n_tokens
                    yield Progress("encode", len(tokens), n_total, time.perf_counter() - t0)
        except BaseException:
            self.ctx.clear()  # a partial prefix is of no use to anyone
            raise
        cells = np.concatenate(media_cells) if media_cells else np.zeros(0, np.int64)
        encoding = Encoding(self, media, key, tokens, n_past, cells, encode_s, prefill_s, system)
        self._cache = _Cache(encoding, False, cells, len(tokens))
        return encoding

    def _prefill_text(
        self, ids: list[int], pos: int, ctl: _Control, on_batch: Callable[[list[int]], None]
    ) -> Iterator[Event]:
        """Decode text tokens batch by batch, with progress and a chance to stop between batches."""
        t0 = time.perf_counter()
        n = self.ctx.n_batch
        for start in range(0, len(ids), n):
            self._stop_if_cancelled(ctl)
            batch = ids[start : start + n]
            self.ctx.decode_tokens(batch, pos + start)
            on_batch(batch)
            if len(ids) > n:
                yield Progress("prefill", start + len(batch), len(ids), time.perf_counter() - t0)

    @staticmethod
    def _stop_if_cancelled(ctl: _Control) -> None:
        if ctl.cancelled():
            raise _Cancelled

    # -- one answer ---------------------------------------------------------------------------------
    def _answer_steps(
        self,
        ctl: _Control,
        source: Media | Encoding,
        prompt: MediaPrompt | None,
        key: str,
        question: str,
        wanted: list[int],
        gen: GenerationSettings,
        decoding: Decoding,
        system: str,
    ) -> Iterator[Event]:
        settings = {"media_key": key, "system": system, "generation": asdict(gen)}
        answer = Answer(mode=decoding.mode, question=question, settings=settings)
        answer.timings["load_s"] = round(self.load_s, 4)
        if self.hook:
            self.hook.prepare(False)  # counts start with the answer; no node capture unless V-Reason asks
        try:
            encoding, encoded = yield from _noted(answer, self._resident(source, key, prompt, ctl, system))
            ctl.encoding = encoding
            answer.reused_encoding = encoded.reused
            if encoded.source != "encoded":  # the encoder time this answer did not spend
                saved = encoded.saved_s if encoded.source == "disk" else encoding.cost_s
                answer.timings["encoding_saved_s"] = round(saved, 4)
            if encoded.source == "disk":
                answer.timings["encoding_load_s"] = round(encoded.load_s, 4)
            answer.n_media_tokens = encoding.n_media_tokens
            answer.timings.update(encode_s=round(encoded.encode_s, 4), prefill_media_s=round(encoded.prefill_s, 4))
            yield encoded
            reused = encoding.n_tokens if encoded.source != "encoded" else 0
            yield from self._prefill(answer, encoding, wanted, gen, decoding, ctl, reused)
            yield from self._decode(answer, gen, ctl)
        except (_Cancelled, Aborted):
            answer.stop_reason = "cancelled"
        finally:
            if ctl.controller is not None:
                ctl.controller.restore()
            if self.hook:
                self.hook.stop_capture()  # no node capture (nor its graph splits) in later answers
            if prompt:
                prompt.close()
        answer.reasoning, answer.answer = split_answer(answer.text)
        ctl.result = answer
        ctl.done = True
        yield Finished(answer)

    def _prefill(
        self,
        answer: Answer,
        encoding: Encoding,
        wanted: list[int],
        gen: GenerationSettings,
        decoding: Decoding,
        ctl: _Control,
        n_reused_prefix: int,
    ) -> Iterator[Event]:
        """Bring the cache from what it holds to prefix + `wanted`, all but the last token; then the
        decoding's `prefilled` hook, the last token (whose step it may capture), and its `start` hook.
        `n_reused_prefix`: the prefix's tokens when its encoding was ready (`Prefilled.n_reused` counts them)."""
        t0 = time.perf_counter()
        self._ensure_context(encoding.n_tokens + len(wanted) + gen.max_tokens)
        c = self._continue_from(encoding, wanted, decoding.prunes)
        done = len(c.turns)
        yield from self._prefill_text(wanted[done:-1], encoding.n_past + done, ctl, c.turns.extend)
        yield from _say(answer, "info", decoding.prefilled(self, answer))
        self._stop_if_cancelled(ctl)
        self.ctx.decode_tokens(wanted[-1:], encoding.n_past + len(c.turns))
        c.turns.append(wanted[-1])
        prefill_s = time.perf_counter() - t0
        ctl.controller, notice = decoding.start(self, answer)
        yield from _say(answer, "info", notice)
        answer.timings["prefill_question_s"] = round(prefill_s, 4)
        # the whole prefill, media prefix and question: the one figure `run --json` always had
        answer.timings["prefill_s"] = round(answer.timings["prefill_media_s"] + prefill_s, 4)
        answer.settings["n_ctx"] = self.ctx.n_ctx
        answer.prompt_tokens = list(encoding.tokens) + wanted
        yield Prefilled(len(wanted), prefill_s, answer.n_video_tokens_kept, n_reused_prefix + done)

    def _continue_from(self, encoding: Encoding, wanted: list[int], keep_pruned: bool) -> _Cache:
        """The cache on the prefix this answer needs, holding the longest start of `wanted[:-1]` it can.

        A pruning decoding (Lite) continuing its own conversation keeps the pruned prefix; any other answer
        gets the whole prefix back. Before a prefix is first pruned, the whole one is saved to come back to.
        """
        c = self._cache
        continues = keep_pruned and c.pruned and wanted[: len(c.turns)] == c.turns
        if c.pruned and not continues:  # Lite removed media rows: back to the whole prefix
            self.ctx.state_set(encoding.snapshot)
            c = self._cache = _Cache(encoding, False, encoding.media_cells, encoding.n_tokens)
        if keep_pruned and not c.pruned and encoding.snapshot is None:
            self.ctx.remove_from(encoding.n_past)  # the prefix alone is what an independent question returns to
            c.turns = []
            encoding.snapshot = self.ctx.state_get()
        common = _common_prefix(c.turns, wanted[:-1])
        if common < len(c.turns):
            self.ctx.remove_from(encoding.n_past + common)
            del c.turns[common:]
        return c

    def _decode(self, answer: Answer, gen: GenerationSettings, ctl: _Control) -> Iterator[Event]:
        """The decode loop. The token of step k comes from p_k before that step's update (the method)."""
        controller, sampler, text = ctl.controller, Sampler(gen.sampling, self.model.n_vocab), TextStream()
        t0 = time.perf_counter()
        control_s, step = 0.0, 0
        while not answer.stop_reason:
            step += 1
            logits = self.ctx.logits()
            tok, h = sampler(logits)
            lp, top = (None, ()) if gen.logprobs is None else logprobs(logits, tok, gen.logprobs)
            state, seconds = yield from _control(controller, step, logits, h, self.n_cells, answer)
            control_s += seconds
            raw, eog = self.model.piece(tok)
            piece, parts = text.feed(raw, eog)
            answer.tokens.append(tok)
            answer.token_text.append(piece)
            answer.entropy.append(h)
            answer.control.append(state)
            yield TokenEvent(step, tok, piece, h, time.perf_counter() - t0, state, parts, lp, top)
            answer.stop_reason = stop_reason(gen, step, eog, text.recent, ctl.cancelled())
            if not answer.stop_reason and not self._decode_next(tok, step + 1, controller):
                answer.stop_reason = "cancelled"  # cancelled while llama.cpp computed the next step
        answer.text = text.text
        answer.history = tuple(self._cache.turns) + (() if eog else (tok,))
        decode_s = time.perf_counter() - t0
        answer.timings.update(
            decode_s=round(decode_s, 4),
            controller_s=round(control_s, 4),
            tokens_per_s=round(len(answer.tokens) / decode_s, 3) if decode_s > 0 else 0.0,
        )

    def _decode_next(self, tok: int, next_step: int, controller: Controller | None) -> bool:
        """Put `tok` in the cache, computing step `next_step`'s logits; False if cancelled part way
        (the token then stays out of the cache: the answer's last)."""
        if controller is not None:
            controller.prepare(next_step)
        c = self._cache
        try:
            self.ctx.decode_one(tok, c.encoding.n_past + len(c.turns))
        except Aborted:
            return False
        c.turns.append(tok)
        return True

    # -- what a decoding's hooks use (decoding.Host) -------------------------------------------------
    @property
    def media_rows(self) -> np.ndarray:
        """KV cells of the media's rows as the cache holds them now (after any pruning), in order."""
        return self._cache.media_cells

    @property
    def media_pruned(self) -> bool:
        return self._cache.pruned

    @property
    def n_cells(self) -> int:
        """KV cells in use: the prefix, then the conversation's tokens."""
        return self._cache.n_cells

    def keep_media_rows(self, keep: np.ndarray) -> None:
        """Drop the media rows not in `keep` (indices into `media_rows`) from the cache, in every layer:
        Lite's pruning, from its `prefilled` hook. Only a decoding that `prunes` may: the engine saved the
        unpruned prefix for it first, so an independent question gets the whole video back."""
        c = self._cache
        rows = c.media_cells
        cells = np.ones(c.n_cells, bool)
        cells[np.delete(rows, keep)] = False
        self.ctx.state_set(prune_cells(self.ctx.state_get(), cells, has_ext=True))
        new_index = np.cumsum(cells) - 1  # the reload packs the kept cells in order
        c.n_prefix_cells -= len(rows) - len(keep)
        c.media_cells = new_index[rows[keep]]
        c.pruned = True

    def tail(self, device: str, dtype: str) -> Tail:
        """The model's PyTorch tail for V-Reason: loaded at the first V-Reason answer and kept (loaded again
        only for another device or dtype)."""
        if self._tail is None or self._tail_key != (device, dtype):
            from .tail import Tail

            if self._tail is not None:
                self._tail.head.close()
            self._tail = Tail.from_gguf(self.info, device, dtype, self.hook.weight_view, self.settings.n_threads)
            self._tail_key = (device, dtype)
        return self._tail


def _control(
    controller: Controller | None, step: int, logits: np.ndarray, h: float, n_cells: int, answer: Answer
) -> Iterator[Event]:
    """The controller's step `step`, if there is a controller: returns (its ControlState, the seconds it
    took), after showing its warning if it has one."""
    if controller is None:
        return None, 0.0
    t0 = time.perf_counter()
    state = controller.step(step, logits, h, n_cells)
    seconds = time.perf_counter() - t0
    yield from _say(answer, "warning", controller.warning)
    controller.warning = None
    return state, seconds


def _prefix(prompt: MediaPrompt) -> list:
    """The prompt prefix's tokens as the encoding cache identifies them: text chunks' ids, media chunks' sizes."""
    return [list(ch.tokens) if ch.tokens is not None else ch.n_tokens for ch in prompt.chunks]


def _encoded_event(e: Encoding, source: EncodingSource) -> Encoded:
    """The `Encoded` event of an encoding made ready from `source`, with the time that saved."""
    if source == "encoded":
        return Encoded(e.n_tokens, e.n_media_tokens, e.n_frames, e.encode_s, e.prefill_s, False, source)
    if source == "memory":  # the time it saves is the answer's (timings), not the event's (recordings keep events)
        return Encoded(e.n_tokens, e.n_media_tokens, e.n_frames, 0.0, 0.0, True, source)
    return Encoded(e.n_tokens, e.n_media_tokens, e.n_frames, 0.0, 0.0, False, source, e.saved_s, e.load_s)


def engine_identity(
    settings: EngineSettings, repack: bool, paths: list[Path], folder: Path, compute: bool
) -> dict | None:
    """What identifies an engine's encodings on disk besides the media and the prompt: the model's and projector's
    content hashes (taken once per file version, remembered across processes by path, size and mtime), llama.cpp's
    version and KV types, and the settings that change the computation. Without `compute`, None where a hash is
    not known yet: then no process has stored an encoding of this file version (the hash is taken in the
    background, when an encoding is written)."""
    identify = file_identity if compute else known_identity
    files = [identify(p, folder) for p in paths]
    if None in files:
        return None
    params = llama_cpp.llama_context_default_params()  # the engine keeps llama.cpp's KV types
    return {
        "model": files[0],
        "projector": files[1] if len(files) > 1 else None,
        "llama_cpp": llama_cpp.__version__,
        "kv_types": [int(params.type_k), int(params.type_v)],
        "flash_attn": settings.flash_attn,
        "n_batch": settings.n_batch,
        "n_gpu_layers": settings.n_gpu_layers,
        "repack": repack,
    }


def stored_encoding(settings: EngineSettings, model: Path, projector: Path | None, media: Media) -> float | None:
    """What encoding `media` cost the earlier run whose encoding the cache on disk holds for this model and these
    settings (None: it holds none): the estimate line's promise, made before anything is loaded. The prompt
    prefix's tokens, the one part of an entry's identity not known yet, follow from the model and the media."""
    store = _open_store(settings)
    if store is None or media.kind == "none":
        return None
    paths = [model] + ([projector] if projector else [])
    base = engine_identity(settings, repack_allowed(settings.repack), paths, store.folder, compute=False)
    if base is None:
        return None
    entry = store.find({**base, "media_key": media_key(media, settings.system)})
    return None if entry is None else _cost_s(entry.meta)


def _cost_s(meta: dict) -> float:
    """What making a stored encoding cost (its vision encoder and prefill time, as `_save_encoding` wrote them)."""
    return float(meta["encode_s"]) + float(meta["prefill_s"])


def _open_store(settings: EngineSettings) -> EncodingStore | None:
    """The encoding cache, unless the settings or VREASON_ENCODING_CACHE=off (a machine's or CI's switch, as
    VREASON_REPACK is repack's) turn it off."""
    if not settings.encoding_cache or os.environ.get("VREASON_ENCODING_CACHE", "").lower() in _OFF:
        return None
    gb = settings.encoding_cache_gb
    return EncodingStore(cap_bytes=None if gb is None else int(gb * 1e9))


def _noted(answer: Answer, steps: Iterator[Event]) -> Iterator[Event]:
    """`steps`' events, their notices kept with the answer; returns what `steps` returns."""
    try:
        while True:
            try:
                ev = next(steps)
            except StopIteration as stop:
                return stop.value
            if isinstance(ev, Notice):
                answer.notices.append(ev.message)
            yield ev
    finally:
        steps.close()  # closed with the answer, as `yield from` would


def _say(answer: Answer, level: str, notice: str | None) -> Iterator[Event]:
    """A decoding's notice, if it has one: kept with the answer and shown."""
    if notice:
        answer.notices.append(notice)
        yield Notice(level, notice)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n

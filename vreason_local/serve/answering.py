"""One request's work on the engine thread: its media's encoding (kept or made), its conversation, its answer.

Runs on the worker's thread only (the engine is used from one thread), so the caches here need no lock.
Each step `send`s what the client may see: ("started"), ("progress", Progress), ("token", (TokenEvent, its
logprobs entry or None)), ("notice", Notice), then ("done", Outcome) or ("error", ApiError). The logprobs entries
are made here, on the engine's thread, since they read the model's token pieces.

Reuse, in the order it saves time: a kept encoding (no vision encoder, no media prefill); the engine's own
KV cache when the conversation continues the last answer (`follow_up`: only the new turn is prefilled);
a conversation the server did not see (another server, an edited history) is rebuilt from its text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..decoding import decoding_for
from ..engine import Encoding, Engine
from ..errors import UserError
from ..events import Answer, Encoded, Finished, Notice, Prefilled, Progress, TokenEvent
from ..media import Media, load_image, load_video
from ..prompt import question_text
from ..video import check_video_file
from .cache import Bounded, EncodingCache, FileDigests, conversation_key, encoding_key
from .errors import ApiError, from_user_error
from .metrics import Metrics
from .requests import ChatRequest
from .stream import cut_at_stop, logprob_entry
from .worker import Job, stopped_error


@dataclass(frozen=True)
class Outcome:
    """A finished answer and what the usage report needs beyond it."""

    answer: Answer
    cached_tokens: int  # prompt tokens not computed for this answer (a kept encoding, a continued cache)
    stopped: bool = False  # a stop sequence of the request ended it
    logprobs: list[dict] | None = None  # one OpenAI logprobs entry per token, where the request asked


class _Stopped(Exception):
    """The job was cancelled before its answer began."""


class Answerer:
    """Serves jobs on one engine (`serve` is the worker's callable)."""

    def __init__(self, engine: Engine, cache_bytes: int, metrics: Metrics, model_id: str) -> None:
        self.engine = engine
        self.metrics = metrics
        self.model_id = model_id  # part of every encoding key
        self.encodings = EncodingCache(cache_bytes, engine.info.kv_bytes_per_token)
        self.conversations: Bounded[str, Answer] = Bounded(256)
        self.uuids: Bounded[str, str] = Bounded(1024)  # a media part's uuid -> its encoding key
        self.digests = FileDigests()
        metrics.gauge("vreason_encoding_cache_bytes", lambda: self.encodings.held_bytes)
        metrics.gauge("vreason_encoding_cache_entries", lambda: len(self.encodings))

    @property
    def patch(self) -> int:
        return self.engine.projector.patch_size if self.engine.projector else 14

    def serve(self, job: Job) -> None:
        final: tuple[str, object]
        try:
            final = ("done", self._answer(job))
        except _Stopped:
            final = ("error", stopped_error(job.cancel_reason))
        except ApiError as exc:
            final = ("error", exc)
        except UserError as exc:
            final = ("error", from_user_error(exc))
        job.request.discard()  # before the client hears the end: an inline file is gone once it is answered
        job.send(*final)

    # -- the steps ----------------------------------------------------------------------------------
    def _answer(self, job: Job) -> Outcome:
        req = job.request
        encoding, reused = self._encoding(job)
        follow_up = self._follow_up(encoding, req)
        settings = req.settings
        handle = self.engine.ask(
            encoding,
            req.turns[-1].text,
            settings.generation,
            decoding_for(req.mode, settings.vreason),
            follow_up=follow_up,
        )
        job.attach(handle)
        _started(job)
        content, stopped, reused_tokens = "", False, 0
        entries: list[dict] | None = [] if req.logprobs else None
        with handle:  # whatever happens here, the engine is left free for the next request
            for event in handle:
                if isinstance(event, TokenEvent):
                    entry = None if entries is None else logprob_entry(event, self._piece)
                    if entry is not None:
                        entries.append(entry)
                    job.send("token", (event, entry))
                    if req.stop and not stopped:  # a stop sequence ends the answer: no need to compute more
                        content += "".join(text for channel, text in event.segments if channel == "answer")
                        if cut_at_stop(content, req.stop)[1]:
                            stopped = True
                            handle.cancel()
                elif isinstance(event, Notice):
                    job.send("notice", event)
                elif isinstance(event, Progress):
                    job.send("progress", event)
                elif isinstance(event, Prefilled):
                    # the engine counts the prefix of the Encoding it was given as reused; one encoded for this
                    # very request (`reused` False) was computed for it, a step before its answer
                    reused_tokens = event.n_reused - (0 if reused else encoding.n_tokens)
                elif isinstance(event, Finished):
                    break
            answer = handle.result()
        self._remember(encoding, req, answer)
        self._count(answer, reused_tokens)
        return Outcome(answer, reused_tokens, stopped, entries)

    def _piece(self, token: int) -> bytes:
        return self.engine.model.piece(token)[0]

    def _encoding(self, job: Job) -> tuple[Encoding, bool]:
        """The request's media encoded: kept from before, or made now (its progress sent); and whether it was
        ready without computing it (kept here, resident in the engine, or in the engine's disk cache)."""
        req = job.request
        system = req.system if req.system is not None else self.engine.settings.system
        key, media = self._key(req, system)
        if req.media_uuid:
            self.uuids.put(req.media_uuid, key)
        encoding = self.encodings.get(key)
        if encoding is not None:
            self.metrics.add("vreason_encoding_cache_hits_total")
            return encoding, True
        self.metrics.add("vreason_encoding_cache_misses_total")
        if media is None:
            media = self._load(req)
        if job.cancel_reason:
            raise _Stopped
        encode = self.engine.encode(media, system=system)
        job.attach(encode)
        _started(job)
        encoded: Encoded | None = None
        with encode:
            for event in encode:
                if isinstance(event, Progress):
                    job.send("progress", event)
                elif isinstance(event, Encoded):
                    encoded = event
            if job.cancel_reason or encoded is None:
                raise _Stopped
            encoding = encode.result()
        self.metrics.add("vreason_encode_seconds_total", encoded.encode_s)
        self.metrics.add("vreason_prefill_seconds_total", encoded.prefill_s)
        self.encodings.put(key, encoding)
        # not computed for this request either: the engine's resident prefix, or its encoding cache on disk
        return encoding, encoded.source != "encoded"

    def _key(self, req: ChatRequest, system: str) -> tuple[str, Media | None]:
        """The encoding key of the request's media (and the media itself when it needs none read: text only)."""
        s = req.settings
        if req.media is not None:
            return encoding_key(
                req.media.kind, self.digests(req.media.path), s.frames, s.token_budget, system, self.model_id
            ), None
        if req.media_uuid:
            key = self.uuids.get(req.media_uuid)
            if key is None:
                raise ApiError(
                    400,
                    f"no media is known by uuid {req.media_uuid!r} (the server keeps it only after it was sent "
                    "once, and forgets it when its memory is needed); send the media with the uuid again",
                    param="messages",
                    code="unknown_media_uuid",
                )
            return key, None
        return encoding_key("none", "", s.frames, None, system, self.model_id), Media.none()

    def _load(self, req: ChatRequest) -> Media:
        """Decode the frames, with the request's frame settings; a file's problems in the request's words."""
        source, s = req.media, req.settings
        try:
            if source.kind == "image":
                return load_image(source.path, s.frames.max_pixels, self.patch).media
            check_video_file(source.path)
            return load_video(source.path, s.frames, self.patch, s.token_budget).media
        except UserError as exc:
            if source.temporary:  # the private temp file's name means nothing to the client
                exc.message = exc.message.replace(str(source.path.resolve()), f"the inline {source.kind}")
                exc.message = exc.message.replace(str(source.path), f"the inline {source.kind}")
                exc.message = exc.message.replace(source.path.name, f"the inline {source.kind}")
            raise

    def _follow_up(self, encoding: Encoding, req: ChatRequest) -> Answer | None:
        """The answer this request's conversation continues: the one the server gave (its exact tokens, so the
        engine's cache is reused), else one rebuilt from the history's text (prefilled again)."""
        prior = req.turns[:-1]
        if not prior:
            return None
        known = self.conversations.get(conversation_key(encoding.key, [(t.role, t.text) for t in prior]))
        if known is not None:
            return known
        text, asked = "", False
        for turn in prior:
            if turn.role == "user":
                text += question_text(turn.text, req.settings.generation.reasoning, follow_up=asked)
                asked = True
            else:
                text += turn.text
        history = tuple(self.engine.model.tokenize(text))
        return Answer(mode=req.mode, question="", settings={"media_key": encoding.key}, history=history)

    def _remember(self, encoding: Encoding, req: ChatRequest, answer: Answer) -> None:
        """Keep the answer to continue its conversation."""
        if answer.stop_reason != "cancelled":
            content = cut_at_stop(answer.answer, req.stop)[0]  # as the client was given it
            conversation = [(t.role, t.text) for t in req.turns] + [("assistant", content)]
            self.conversations.put(conversation_key(encoding.key, conversation), answer)

    def _count(self, answer: Answer, cached: int) -> None:
        m, t = self.metrics, answer.timings
        m.add("vreason_prompt_tokens_total", len(answer.prompt_tokens))
        m.add("vreason_cached_tokens_total", cached)
        m.add("vreason_completion_tokens_total", len(answer.tokens))
        m.add("vreason_prefill_seconds_total", t.get("prefill_question_s", 0.0))
        m.add("vreason_decode_seconds_total", t.get("decode_s", 0.0))


def _started(job: Job) -> None:
    """Tell the request's coroutine, once, that the engine took the request up: its media were read and fit,
    or its answer was asked. A streamed response begins then, so every error found before it has its own
    status, and the client sees keep-alives while its media are encoded."""
    if not job.started:
        job.started = True
        job.send("started")

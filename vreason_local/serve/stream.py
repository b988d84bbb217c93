"""The OpenAI chat-completion shapes: the whole response, the streamed chunks, usage, and the SSE lines.

Reasoning (`<think>`) goes to `reasoning_content` (what Open WebUI reads) and `reasoning` (vLLM's newer
name), the answer to `content`, tags removed (the engine already splits the text by channel). Anything of
our own (V-Reason telemetry, encoding progress) rides as a `vreason` field on ordinary chunks, and only when
asked: the `openai` client turns every `data:` line into a chunk, and non-standard chunks broke clients
before (llama.cpp PR #14728).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ..events import Answer, Progress, TokenEvent, answer_fields
from .errors import ApiError

DONE = b"data: [DONE]\n\n"

# OpenAI's stand-in for a log-probability of -inf (JSON has no infinity; a token masked out by the model)
MIN_LOGPROB = -9999.0

# Answer.stop_reason -> OpenAI's finish_reason (a cancelled answer ran out of its time: "length")
FINISH = {"eos": "stop", "answer": "stop", "max_tokens": "length", "cancelled": "length"}


def sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def comment(text: str) -> bytes:
    """An SSE comment line: every client ignores it; it keeps proxies from closing an idle stream."""
    return b": " + text.replace("\n", " ").encode() + b"\n\n"


def error_event(exc: ApiError) -> bytes:
    """An error inside a stream, as the `openai` client reads one (it raises APIError with the message)."""
    return sse(exc.body())


def usage(answer: Answer, cached_tokens: int) -> dict:
    prompt = len(answer.prompt_tokens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": len(answer.tokens),
        "total_tokens": prompt + len(answer.tokens),
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def logprob_entry(event: TokenEvent, piece: Callable[[int], bytes]) -> dict:
    """OpenAI's logprobs entry for one generated token (`piece`: a token id's bytes, the model's own): its text
    (bytes that are not whole UTF-8 characters shown as U+FFFD, as OpenAI's are), log-probability and bytes,
    and the most likely alternatives in the same form. One entry per generated token, reasoning and tags
    included: the tokens `completion_tokens` counts."""

    def one(token: int, logprob: float) -> dict:
        raw = piece(token)
        return {
            "token": raw.decode("utf-8", errors="replace"),
            "logprob": max(logprob, MIN_LOGPROB),
            "bytes": list(raw),
        }

    return {**one(event.token, event.logprob), "top_logprobs": [one(t, lp) for t, lp in event.top_logprobs]}


def token_telemetry(event: TokenEvent) -> dict:
    """One token's V-Reason figures, for a client that asked (`vreason.telemetry`)."""
    out: dict[str, object] = {"step": event.step, "token": event.token, "entropy": event.entropy}
    if event.control is not None:
        c = event.control
        out.update(ema=c.ema, peak=c.peak, alpha=c.alpha, dv_norm=c.dv_norm, update_ms=c.update_ms)
    return out


def progress_telemetry(event: Progress) -> dict:
    return {
        "progress": {
            "stage": event.stage,
            "done": event.done,
            "total": event.total,
            "elapsed_s": round(event.elapsed_s, 3),
        }
    }


# What a non-streamed response's `vreason` field carries of the answer's record, in the record's own names and
# forms (`Answer.to_dict`: the one answer shape, as `run --json` and eval rows write it).
_TELEMETRY_FIELDS = (
    "mode", "stop_reason", "tokens", "entropy", "control", "timings", "n_media_tokens", "n_video_tokens_kept",
    "reused_encoding", "notices",
)  # fmt: skip


def answer_telemetry(answer: Answer) -> dict:
    """The whole answer's figures, on a non-streamed response for a client that asked."""
    return answer_fields(answer.to_dict(), _TELEMETRY_FIELDS)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first of the `stop` sequences (not included), and whether one was found."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


class StopText:
    """The answer's text as it streams, held back where it might be the start of a stop sequence, so a
    client never sees any part of one (OpenAI's `stop`: the sequence ends the answer and is not returned)."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = tuple(s for s in stop if s)
        self.hit = False
        self._held = ""

    def feed(self, text: str) -> str:
        """What of `text` may be sent now ("" once a stop sequence was met)."""
        if self.hit:
            return ""
        text = self._held + text
        out, self.hit = cut_at_stop(text, self.stop)
        if self.hit:
            self._held = ""
            return out
        keep = max((n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The text held back when the answer ends without completing a stop sequence."""
        held, self._held = self._held, ""
        return "" if self.hit else held


class Chunks:
    """The chunks of one streamed completion, all with the same id, creation time and model."""

    def __init__(self, job_id: str, created: int, model: str, include_usage: bool, stop: tuple[str, ...] = ()) -> None:
        self.head = {"id": job_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self.include_usage = include_usage
        self.stop = StopText(stop)
        self._started: set[str] = set()  # channels that have sent text (leading blanks before it dropped)

    def chunk(
        self, delta: dict, finish_reason: str | None = None, extra: dict | None = None, logprobs: dict | None = None
    ) -> bytes:
        """One chunk; `logprobs`: the entry of the token whose text it carries (`logprob_entry`), if asked."""
        logprobs = None if logprobs is None else {"content": [logprobs]}
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        body = {**self.head, "choices": [choice]}
        if self.include_usage:
            body["usage"] = None
        if extra:
            body.update(extra)
        return sse(body)

    def role(self) -> bytes:
        return self.chunk({"role": "assistant", "content": ""})

    def deltas(self, event: TokenEvent) -> list[dict]:
        """The token's text by channel; blanks before a channel's first text are dropped (the model writes a
        newline between its tags), so the streamed text is the non-streamed message's."""
        out = []
        for channel, text in event.segments:
            if channel == "answer":
                text = self.stop.feed(text)
            if channel not in self._started:
                text = text.lstrip()
                if not text:
                    continue
                self._started.add(channel)
            out.append({"content": text} if channel == "answer" else {"reasoning_content": text, "reasoning": text})
        return out

    def rest(self) -> list[dict]:
        """The answer's text still held back at its end (it never became a stop sequence)."""
        text = self.stop.flush()
        return [{"content": text}] if text and "answer" in self._started else []

    def usage_chunk(self, answer: Answer, cached_tokens: int) -> bytes:
        return sse({**self.head, "choices": [], "usage": usage(answer, cached_tokens)})


def finish_reason(answer: Answer, stopped: bool) -> str:
    return "stop" if stopped else FINISH.get(answer.stop_reason, "stop")


def completion(
    job_id: str,
    created: int,
    model: str,
    answer: Answer,
    cached_tokens: int,
    telemetry: bool,
    stop: tuple[str, ...] = (),
    logprobs: list[dict] | None = None,
) -> dict:
    """The non-streamed response; the answer ends before the first of the `stop` sequences. `logprobs`: every
    token's entry (`logprob_entry`), where the request asked for them."""
    content, stopped = cut_at_stop(answer.answer, stop)
    message: dict[str, object] = {"role": "assistant", "content": content}
    if answer.reasoning:
        message["reasoning_content"] = message["reasoning"] = answer.reasoning
    out: dict[str, object] = {
        "id": job_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None if logprobs is None else {"content": logprobs},
                "finish_reason": finish_reason(answer, stopped),
            }
        ],
        "usage": usage(answer, cached_tokens),
    }
    if telemetry:
        out["vreason"] = answer_telemetry(answer)
    return out

"""The generation event stream: the one thing every front end (CLI, TUI, evaluator) consumes.

An answer yields, in order: `Progress` while media is encoded and the prompt prefilled, `Encoded` (once
per answer: the media encoded now, or reused), `Prefilled`, then one `TokenEvent` per generated token,
`Notice`s whenever something needs saying, and `Finished` last, also when the answer was cancelled.
Front ends only render or store them; nothing here is recomputed downstream.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from .errors import UserError

Channel = Literal["reasoning", "answer"]
Mode = Literal["base", "vreason", "lite"]  # plain decoding, V-Reason, V-Reason Lite (README)
MODES: tuple[Mode, ...] = get_args(Mode)


@dataclass(frozen=True)
class Progress:
    """A long step advanced: `encode` counts vision tokens (frames encoded and decoded into the cache),
    `prefill` counts prompt text tokens. Sent after every vision chunk and every prefill batch."""

    stage: Literal["encode", "prefill"]
    done: int
    total: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Tokens per second so far."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far (None before the first measurement)."""
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass(frozen=True)
class Encoded:
    """The system prompt and media are in the KV cache (encoded now, or reused from an earlier answer).

    `source`: where the encoding came from: "encoded" now, "memory" (this engine's, `reused`; the default where
    none is given, as in recordings made before there was a cache), or "disk" (the encoding cache, written by
    this or an earlier process: `load_s` to read it, `saved_s` the encoding time that spared, less the load)."""

    n_tokens: int
    n_media_tokens: int
    n_frames: int
    encode_s: float
    prefill_s: float
    reused: bool
    source: Literal["encoded", "memory", "disk"] | None = None
    saved_s: float = 0.0
    load_s: float = 0.0

    def __post_init__(self) -> None:
        if self.source is None:
            object.__setattr__(self, "source", "memory" if self.reused else "encoded")


@dataclass(frozen=True)
class Prefilled:
    """The question's text is in the KV cache; decoding starts.

    `n_reused`: prompt tokens this answer did not compute: the media's prefix where its encoding was ready (kept
    in memory, restored, or read from disk; an `Encoding` passed to `ask` counts as ready), plus the conversation
    tokens the cache still held from the answer before (the longest common start that the mode may keep)."""

    n_tokens: int
    prefill_s: float
    n_video_tokens_kept: int | None = None  # Lite: video rows left after pruning
    n_reused: int = 0


@dataclass(frozen=True)
class ControlState:
    """What the V-Reason controller did at one step (README: V-Reason). `alpha` is None where no update ran,
    and so are the update's figures after `selfcheck` (their defaults: older records have none)."""

    ema: float
    peak: float
    alpha: int | None
    dv_norm: float
    update_ms: float | None
    selfcheck: float | None  # max |tail logit - llama.cpp logit| / max(1, max |logit|), over the tail's tokens
    head_rows: int | None = None  # LM-head rows the update's gradient was computed through (its last step's)
    # bound on that gradient's relative error at the final hidden state, the largest of the update's steps
    # (tail.HeadStep.bound; inf: not bounded, the direction unknown)
    head_bound: float | None = None
    # the change that reached llama.cpp's F16 cache over the change asked for (tail.ValueWrite): ~1 where it
    # is many F16 steps, 0 where the rounding ate it all; None where nothing was written (a skipped update)
    written_ratio: float | None = None
    # the update stopped at a step it did not take: one whose gradient bound was above head_skip with the
    # LM-head rows capped (the steps before it, with --steps > 1, were kept and written; at the first step
    # nothing was), or one whose loss, gradient or offset was not finite (dV was then reset to zero)
    skipped: bool = False


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, with the entropy (nats, temperature 1) of the distribution it came from.

    `segments` is the token's visible text split by where it belongs, with the `<think>`/`<answer>` tags
    removed: append each part to the reasoning or the answer view as it streams. A tag split over
    several tokens is held back until it is complete, so `segments` may be empty while `text` is not.
    """

    step: int
    token: int
    text: str
    entropy: float
    t_s: float  # seconds since decoding started
    control: ControlState | None = None
    segments: tuple[tuple[Channel, str], ...] = ()
    # only where the answer asked (GenerationSettings.logprobs): log p of `token` under softmax(logits) at
    # temperature 1, and the most likely tokens as (id, log p), most likely first (sampling.logprobs)
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Notice:
    level: Literal["info", "warning"]
    message: str


@dataclass
class Answer:
    """Everything about one answer; built by the engine from the same events it yields."""

    mode: str
    question: str
    text: str = ""
    reasoning: str = ""
    answer: str = ""
    stop_reason: str = ""  # eos | answer | max_tokens | cancelled
    tokens: list[int] = field(default_factory=list)
    token_text: list[str] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    control: list[ControlState | None] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    prompt_tokens: list[int | None] = field(default_factory=list)  # None at media (vision) positions
    n_media_tokens: int = 0
    n_video_tokens_kept: int | None = None
    reused_encoding: bool = False  # the media was not encoded again for this answer: this engine's encoding
    settings: dict[str, object] = field(default_factory=dict)  # generation and (V-Reason modes) vreason
    notices: list[str] = field(default_factory=list)
    history: tuple[int, ...] = ()  # the conversation's token ids after the media, through this answer

    @property
    def encoding_source(self) -> Literal["encoded", "memory", "disk"]:
        """Where the media's encoding came from: "encoded" for this answer, "memory" (this engine's encoding,
        `reused_encoding`) or "disk" (the encoding cache: `timings` has `encoding_load_s`). The last two put the
        encoding time they saved in `timings["encoding_saved_s"]`. Derived, not stored, so every output that keeps
        the timings (run --json, eval rows, the chat store) tells it the same way."""
        if "encoding_load_s" in self.timings:
            return "disk"
        return "memory" if self.reused_encoding else "encoded"

    def to_dict(self) -> dict:
        """The answer as one JSON-able record (schema `ANSWER_SCHEMA`): every field under its own name, `control`
        as one dict per token (None where the controller did not run), `history` as a list. Every output that
        writes an answer (`run --json`, eval rows, the chat store) is built from this record, so a field has one
        name and one form everywhere; `from_dict` gives the same Answer back."""
        return {
            "schema": ANSWER_SCHEMA,
            "mode": self.mode,
            "question": self.question,
            "text": self.text,
            "reasoning": self.reasoning,
            "answer": self.answer,
            "stop_reason": self.stop_reason,
            "tokens": list(self.tokens),
            "token_text": list(self.token_text),
            "entropy": list(self.entropy),
            "control": [None if c is None else asdict(c) for c in self.control],
            "timings": dict(self.timings),
            "prompt_tokens": list(self.prompt_tokens),
            "n_media_tokens": self.n_media_tokens,
            "n_video_tokens_kept": self.n_video_tokens_kept,
            "reused_encoding": self.reused_encoding,
            "settings": copy.deepcopy(self.settings),
            "notices": list(self.notices),
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Answer:
        """The Answer a record describes: a `to_dict()` record (exactly), or one written before the schema was
        numbered, as `run --json`, eval rows and chat messages are: `n_video_tokens` is read as `n_media_tokens`,
        the controller's per-token columns (`ema`, `alpha`, ..., at the top or under `telemetry`) as `control`,
        and a field the record lacks (or holds as null) takes its default. Unknown keys are ignored, so an
        output's own fields may sit beside the answer's. A record of a newer schema is refused, not misread."""
        schema = record.get("schema") or 0
        if not isinstance(schema, int) or schema > ANSWER_SCHEMA:
            raise UserError(
                f"this answer was written with answer schema {schema!r}, newer than this vreason reads "
                f"({ANSWER_SCHEMA}): update vreason"
            )
        inner = record.get("telemetry")
        columns = inner if isinstance(inner, Mapping) else {}

        def get(name: str, default: object = None) -> Any:
            """A field at the top of the record, else among the per-token columns under `telemetry`."""
            value = record.get(name, columns.get(name))
            return default if value is None else value

        entropy = list(get("entropy", []))
        if record.get("control") is not None:
            control = [None if c is None else _control_state(c.get) for c in record["control"]]
        else:
            control = _control_from_columns(get, len(entropy))
        return cls(
            mode=get("mode", "base"),
            question=get("question", ""),
            text=get("text", ""),
            reasoning=get("reasoning", ""),
            answer=get("answer", ""),
            stop_reason=get("stop_reason", ""),
            tokens=list(get("tokens", [])),
            token_text=list(get("token_text", [])),
            entropy=entropy,
            control=control,
            timings=dict(get("timings", {})),
            prompt_tokens=list(get("prompt_tokens", [])),
            n_media_tokens=get("n_media_tokens", get("n_video_tokens", 0)),
            n_video_tokens_kept=get("n_video_tokens_kept"),
            reused_encoding=bool(get("reused_encoding", False)),
            settings=copy.deepcopy(dict(get("settings", {}))),
            notices=list(get("notices", [])),
            history=tuple(get("history", ())),
        )


# Answer.to_dict's "schema": raised when a field changes its meaning or form or goes away (from_dict then reads
# the old form too); a new field with a default keeps the number, since older records simply lack it.
ANSWER_SCHEMA = 1
CONTROL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ControlState))
# The per-token columns: one value per generated token each (chat messages keep them under "telemetry").
PER_TOKEN_FIELDS: tuple[str, ...] = ("tokens", "token_text", "entropy", *CONTROL_FIELDS)
# Entropies in the files written for reading and plotting (`run --json`, eval rows): a millionth of a nat is far
# below any difference that matters, and it keeps the lines short. The chat store keeps them exact.
ENTROPY_DIGITS = 6
_CONTROL_DEFAULTS = {f.name: None if f.default is MISSING else f.default for f in fields(ControlState)}
_DERIVED: dict[str, Callable[[Mapping[str, Any]], object]] = {
    "n_tokens": lambda r: len(r["tokens"]),
    "n_prompt_tokens": lambda r: len(r["prompt_tokens"]),
    # the name `run --json` and eval rows have always written for the media's vision tokens (images included)
    "n_video_tokens": lambda r: r["n_media_tokens"],
}


def answer_fields(record: Mapping[str, Any], names: Iterable[str], entropy_digits: int | None = None) -> dict:
    """The flat view of an answer record (`Answer.to_dict()`) that the JSON outputs write, by field name:
    any record field; `n_tokens` and `n_prompt_tokens` (counts); `n_video_tokens` (`n_media_tokens` under the
    name those outputs use); each `ControlState` field as a per-token column (None where the controller did not
    run). `entropy` is rounded to `entropy_digits` places where given. `from_dict` reads every one of them back."""
    out: dict[str, object] = {}
    for name in names:
        if name in _DERIVED:
            out[name] = _DERIVED[name](record)
        elif name in CONTROL_FIELDS:
            out[name] = [None if c is None else c[name] for c in record["control"]]
        elif name == "entropy" and entropy_digits is not None:
            out[name] = [round(h, entropy_digits) for h in record["entropy"]]
        else:
            out[name] = record[name]
    return out


def _control_state(get: Callable[[str], Any]) -> ControlState:
    """A ControlState from its fields as `get` finds them; one a record lacks (written before the field existed)
    takes its default, or None where it has none."""
    values = {f.name: get(f.name) for f in fields(ControlState)}
    return ControlState(**{name: _CONTROL_DEFAULTS[name] if v is None else v for name, v in values.items()})


def _control_from_columns(get: Callable[[str, object], Any], n: int) -> list[ControlState | None]:
    """`control` from per-token columns (`answer_fields`' form): a None `ema` marks a token without a state;
    with no `ema` column at all, none of the `n` tokens had one."""
    ema = get("ema", None)
    if ema is None:
        return [None] * n
    columns = [get(name, None) or [None] * len(ema) for name in CONTROL_FIELDS]
    rows = [dict(zip(CONTROL_FIELDS, values)) for values in zip(*columns)]
    return [None if row["ema"] is None else _control_state(row.get) for row in rows]


@dataclass(frozen=True)
class Finished:
    answer: Answer


Event = Progress | Encoded | Prefilled | TokenEvent | Notice | Finished

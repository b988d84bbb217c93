"""The generation event stream: the one thing every front end (CLI, TUI, evaluator) consumes.

The engine yields these in order: `Encoded` (once per media, or `reused=True`), `Prefilled`, then one
`TokenEvent` per generated token, `Notice`s whenever something needs saying, and `Finished` last.
Front ends only render or store them; nothing here is recomputed downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union


@dataclass(frozen=True)
class Encoded:
    """The system prompt and media are in the KV cache (encoded now, or reused from an earlier turn)."""

    n_tokens: int
    n_media_tokens: int
    n_frames: int
    encode_s: float
    prefill_s: float
    reused: bool


@dataclass(frozen=True)
class Prefilled:
    """The question's text is in the KV cache; decoding starts."""

    n_tokens: int
    prefill_s: float
    n_video_tokens_kept: int | None = None  # Lite: video rows left after pruning


@dataclass(frozen=True)
class ControlState:
    """What the V-Reason controller did at one step (README: V-Reason). `alpha` is None where no update ran."""

    ema: float
    peak: float
    alpha: int | None
    dv_norm: float
    update_ms: float | None
    selfcheck: float | None  # max |tail logit - llama.cpp logit| / max(1, max |logit|), over the tail's tokens


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, with the entropy (nats, temperature 1) of the distribution it came from."""

    step: int
    token: int
    text: str
    entropy: float
    t_s: float  # seconds since decoding started
    control: ControlState | None = None


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
    stop_reason: str = ""
    tokens: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    control: list[ControlState | None] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    n_video_tokens_kept: int | None = None
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Finished:
    answer: Answer


Event = Union[Encoded, Prefilled, TokenEvent, Notice, Finished]

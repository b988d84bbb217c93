"""The generation event stream: the one thing every front end (CLI, TUI, evaluator) consumes.

An answer yields, in order: `Progress` while media is encoded and the prompt prefilled, `Encoded` (once
per answer: the media encoded now, or reused), `Prefilled`, then one `TokenEvent` per generated token,
`Notice`s whenever something needs saying, and `Finished` last, also when the answer was cancelled.
Front ends only render or store them; nothing here is recomputed downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

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
    """The system prompt and media are in the KV cache (encoded now, or reused from an earlier answer)."""

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
    reused_encoding: bool = False  # the media was not encoded again for this answer
    settings: dict[str, object] = field(default_factory=dict)  # generation and (V-Reason modes) vreason
    notices: list[str] = field(default_factory=list)
    history: tuple[int, ...] = ()  # the conversation's token ids after the media, through this answer


@dataclass(frozen=True)
class Finished:
    answer: Answer


Event = Progress | Encoded | Prefilled | TokenEvent | Notice | Finished

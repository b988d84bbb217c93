"""Messages the engine's worker thread posts to the UI (`post_message` is thread-safe, ordered and does not
block the engine). The UI only renders and stores what these carry; nothing is generated twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from textual.message import Message

from ..events import TokenEvent

if TYPE_CHECKING:
    from ..engine import Encoding, Engine
    from ..events import Event
    from ..planning import Plan
    from .options import ChatOptions


class PlanReady(Message):
    """Frames sampled and the run sized (`estimate_only`: for the video panel's live estimate, not loaded)."""

    def __init__(self, plan: Plan, options: ChatOptions, estimate_only: bool = False) -> None:
        super().__init__()
        self.plan, self.options, self.estimate_only = plan, options, estimate_only


class EngineReady(Message):
    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine


class EncodingReady(Message):
    def __init__(self, encoding: Encoding, options: ChatOptions) -> None:
        super().__init__()
        self.encoding, self.options = encoding, options


class EngineEvents(Message):
    """Events of an engine operation, in order; `job` names it (0: the encoding, else an ask job's id) and
    `mode` which of a compare's answers they belong to. Tokens come in batches (`forward_events`): one
    message per token made the UI thread compete with decoding for the CPU and the GIL."""

    def __init__(self, job: int, mode: str, events: list[Event]) -> None:
        super().__init__()
        self.job, self.mode, self.events = job, mode, events


BATCH_S = 0.5  # tokens are forwarded at most this long after they are made (2 updates a second)


def forward_events(post: Callable[[Message], object], job: int, mode: str, events: Iterable[Event]) -> None:
    """Post `events` as they come, batching tokens for up to `BATCH_S`; any other event is posted at once."""
    batch: list[Event] = []
    last = time.perf_counter()
    for ev in events:
        batch.append(ev)
        now = time.perf_counter()
        if not isinstance(ev, TokenEvent) or now - last >= BATCH_S:
            post(EngineEvents(job, mode, batch))
            batch, last = [], now
    if batch:
        post(EngineEvents(job, mode, batch))


class WorkDone(Message):
    """An engine worker's thread has ended (posted last, after all its events): `error` is what it raised
    (None: finished or cancelled). The worker's own CANCELLED state comes as soon as cancel is asked, while
    the thread may still be finishing its answer, so the UI waits for this instead."""

    def __init__(self, kind: str, job: int, error: BaseException | None) -> None:
        super().__init__()
        self.kind, self.job, self.error = kind, job, error

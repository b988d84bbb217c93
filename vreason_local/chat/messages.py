"""Messages the app's worker threads post to the UI (`post_message` is thread-safe, ordered and does not
block the engine): the `ChatSession`'s events, as it yields them. The UI only renders them (and hands each
finished answer back to the session to store); nothing is generated twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from textual.message import Message

from ..events import TokenEvent

if TYPE_CHECKING:
    from ..planning import Plan
    from .session import LoadEvent


class PlanPreview(Message):
    """Frames sampled and the run sized for the video panel's live estimate (nothing is loaded)."""

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan


class EngineEvents(Message):
    """A session's events, in order; `job` names the work (0: loading, else the id of the question's `Turn`)
    and `mode` which of a compare's answers they belong to. Tokens come in batches (`forward_events`): one
    message per token made the UI thread compete with decoding for the CPU and the GIL."""

    def __init__(self, job: int, mode: str, events: list[LoadEvent]) -> None:
        super().__init__()
        self.job, self.mode, self.events = job, mode, events


BATCH_S = 0.5  # tokens are forwarded at most this long after they are made (2 updates a second)


def forward_events(post: Callable[[Message], object], job: int, events: Iterable[tuple[str, LoadEvent]]) -> None:
    """Post (mode, event)s as they come, batching a mode's tokens for up to `BATCH_S`; any other event is
    posted at once."""
    batch: list[LoadEvent] = []
    batch_mode = ""
    last = time.perf_counter()
    for mode, ev in events:
        if batch and mode != batch_mode:
            post(EngineEvents(job, batch_mode, batch))
            batch = []
        batch_mode = mode
        batch.append(ev)
        now = time.perf_counter()
        if not isinstance(ev, TokenEvent) or now - last >= BATCH_S:
            post(EngineEvents(job, mode, batch))
            batch, last = [], now
    if batch:
        post(EngineEvents(job, batch_mode, batch))


class WorkDone(Message):
    """An engine worker's thread has ended (posted last, after all its events): `error` is what it raised
    (None: finished or cancelled). The worker's own CANCELLED state comes as soon as cancel is asked, while
    the thread may still be finishing its answer, so the UI waits for this instead."""

    def __init__(self, kind: str, job: int, error: BaseException | None) -> None:
        super().__init__()
        self.kind, self.job, self.error = kind, job, error

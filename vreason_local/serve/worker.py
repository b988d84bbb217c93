"""One engine, one answer at a time: a FIFO of jobs served by one thread, each job a mailbox for its events.

The engine runs one operation at a time and blocks while it computes, so it gets a thread of its own and
the event loop only waits on mailboxes. Requests wait their turn in order (a second request never cuts the
running one's stream: llama-cpp-python #897); beyond `max_waiting` they are refused at once with 429. A
job can be cancelled from the event loop at any stage (waiting, encoding, prefilling, decoding): waiting, it
leaves the queue; running, its engine operation is cancelled, which llama.cpp honours within a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ..wording import count
from .errors import ApiError
from .metrics import Metrics
from .requests import ChatRequest


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class QueueFull(ApiError):
    """429 with how long a client should wait before trying again."""

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(
            429,
            f"the server is busy: {count(waiting, 'request')} already waiting (--queue); retry after {retry_after_s} s",
            type="rate_limit_exceeded",
            code="queue_full",
        )
        self.retry_after_s = retry_after_s


class Job:
    """One request on its way through the engine. The engine thread `send`s (kind, payload) messages to the
    event loop's `outbox`; any thread may `cancel`. `cancel_reason` says why it stopped early (None: it did not)."""

    def __init__(self, request: ChatRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.arrived = time.perf_counter()
        self.outbox: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.cancel_reason: str | None = None
        self.finished = False
        self.started = False  # the engine took it up (set by the engine thread)
        self._loop = loop
        self._lock = threading.Lock()
        self._op: Cancellable | None = None
        self._on_cancel: Callable[[Job], None] | None = None

    def send(self, kind: str, payload: object = None) -> None:
        """From the engine thread to the request's coroutine (a closed loop, at shutdown, hears nothing)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.outbox.put_nowait, (kind, payload))

    def attach(self, op: Cancellable) -> None:
        """The engine operation now running for this job: cancelling the job cancels it."""
        with self._lock:
            self._op = op
            if self.cancel_reason is not None:
                op.cancel()

    def cancel(self, reason: str) -> None:
        """Stop this job as soon as the engine allows (any thread); the first reason is kept."""
        with self._lock:
            if self.finished or self.cancel_reason is not None:
                return
            self.cancel_reason = reason
            op, on_cancel = self._op, self._on_cancel
        if op is not None:
            op.cancel()
        if on_cancel is not None:
            on_cancel(self)


class Worker:
    """The engine's thread and its queue. `serve(job)` does one job's work on that thread, `send`ing its events
    and a last ("done", ...) or ("error", ApiError) message; it must return whatever happens."""

    def __init__(self, serve: Callable[[Job], None], max_waiting: int, metrics: Metrics) -> None:
        self._serve = serve
        self.max_waiting = max_waiting
        self.metrics = metrics
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.running: Job | None = None
        self._answer_s = 5.0  # running mean of a job's seconds, for Retry-After (a first guess until measured)
        self._thread = threading.Thread(target=self._run, name="vreason-engine", daemon=True)
        metrics.gauge("vreason_queue_depth", lambda: len(self._waiting))
        metrics.gauge("vreason_busy", lambda: 1.0 if self.running is not None else 0.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel everything and end the thread (the app's shutdown)."""
        with self._cond:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in waiting:
            job.cancel("shutdown")
            job.request.discard()
            job.send("error", ApiError(503, "the server is shutting down", type="server_error"))
        if self.running is not None:
            self.running.cancel("shutdown")
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def depth(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise QueueFull when `max_waiting` jobs already wait behind the running one."""
        with self._cond:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", type="server_error")
            busy = self.running is not None or bool(self._waiting)
            if busy and len(self._waiting) >= self.max_waiting:
                retry = max(1, math.ceil(self._answer_s * (len(self._waiting) + 1)))
                raise QueueFull(len(self._waiting), retry)
            job._on_cancel = self._withdraw
            self._waiting.append(job)
            self._cond.notify()

    def _withdraw(self, job: Job) -> None:
        """A job cancelled while it waits leaves the queue at once (its place goes to the next)."""
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
            else:
                return
        job.finished = True
        job.request.discard()
        job.send("error", stopped_error(job.cancel_reason))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self.running = self._waiting.popleft()
            t0 = time.perf_counter()
            try:
                self._serve(job)
            except Exception as exc:  # a bug in serving one job must not stop the server
                job.send("error", ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))
            finally:
                job.finished = True
                job.request.discard()
                self._answer_s = 0.8 * self._answer_s + 0.2 * (time.perf_counter() - t0)
                with self._cond:
                    self.running = None


def stopped_error(reason: str | None) -> ApiError:
    """What a job stopped before its answer began reports (a disconnected client hears nothing of it)."""
    if reason == "time_limit":
        return ApiError(504, "the request ran past the server's time limit (--time-limit)", type="timeout")
    if reason == "shutdown":
        return ApiError(503, "the server is shutting down", type="server_error")
    return ApiError(499, f"the request was cancelled ({reason})", type="cancelled")

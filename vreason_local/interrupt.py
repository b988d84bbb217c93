"""Ctrl-C while llama.cpp computes: the first cancels at the next safe point, a second aborts.

Python only sees a signal between bytecodes of the main thread, and a llama.cpp call holds that thread
for up to seconds; so the work runs in a worker thread and the main thread waits in short joins, where
SIGINT is delivered at once. Used by every command-line front end (`run`, `eval`).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

import click

T = TypeVar("T")


class Cancellable(Protocol):
    """What Ctrl-C acts on: an `AnswerHandle`, or an evaluation's `Stop`."""

    def cancel(self) -> None: ...

    @property
    def cancel_requested(self) -> bool: ...


def _abort(signum: int, frame: object) -> None:
    """Ctrl-C after one was already seen: stop now, with what was written so far flushed."""
    click.echo("\naborted", err=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream has nothing more to say
            pass
    os._exit(130)


def _ignore_ctrl_c_from_here() -> None:
    """The last exit handler (registered on import, before any library's): past it, Python's finalisation puts
    back the default SIGINT action, and a Ctrl-C landing in those last instants would kill the process by the
    signal instead of letting it exit 130; with nothing left to stop, it is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


atexit.register(_ignore_ctrl_c_from_here)


def abort_on_next_ctrl_c() -> None:
    """Once a Ctrl-C was seen, a second one must abort wherever the process is, never raise a
    KeyboardInterrupt: the process may be exiting, where Python reports one as "Exception ignored in:
    <module 'threading'>" (it joins threads at exit) instead of stopping."""
    signal.signal(signal.SIGINT, _abort)


def until_done(job: Cancellable, view: Callable[[], T]) -> T:
    """Run `view` (which consumes the job's events) in a worker thread, so that Ctrl-C is seen at once
    even while llama.cpp computes: the first Ctrl-C cancels the job at its next safe point (between
    vision chunks, prefill batches or tokens) and what was generated is still shown; a second aborts now."""
    result: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(view())
        except BaseException as exc:  # handed to the main thread, which reports it
            failure.append(exc)

    def on_sigint(signum: int, frame: object) -> None:
        if job.cancel_requested:
            _abort(signum, frame)
        job.cancel()
        click.echo("\n[stopping at the next safe point; Ctrl-C again to abort]", err=True)

    worker = threading.Thread(target=work, name="vreason-answer", daemon=True)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
    finally:
        # after a first Ctrl-C the process is on its way out: the next one aborts, whenever it comes
        signal.signal(signal.SIGINT, _abort if job.cancel_requested else previous)
    if failure:
        raise failure[0]
    return result[0]

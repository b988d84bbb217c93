"""The command line's views of the event stream: progress on stderr, and remedies worded as flags."""

from __future__ import annotations

import io

from vreason_local.errors import ContextTooSmall, Remedy, UserError
from vreason_local.events import Progress
from vreason_local.report import ProgressView
from vreason_local.settings import render_error


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    tty = Terminal()
    view = ProgressView(tty)
    view.show(Progress("encode", 96, 384, 4.0))
    view.show(Progress("encode", 384, 384, 16.0))
    view.end()
    out = tty.getvalue()
    assert out.count("\r") == 2 and out.endswith("\n") and out.count("\n") == 1  # redrawn in place
    assert "[######" in out and "encoding video: 96/384 tokens, 24 tokens/s, ~12 s left" in out

    pipe = io.StringIO()
    plain = ProgressView(pipe, every_s=3600)
    for done in (96, 192, 288, 384):
        plain.show(Progress("encode", done, 384, done / 24))
    lines = pipe.getvalue().splitlines()
    assert lines == [
        "encoding video: 96/384 tokens, 24 tokens/s, ~12 s left",
        "encoding video: 384/384 tokens, 24 tokens/s",
    ]
    assert "\r" not in pipe.getvalue()


def test_remedies_are_worded_as_flags():
    err = ContextTooSmall(5000, 4096, True, [Remedy("a larger context", "engine.n_ctx", 5120)])
    assert (
        render_error(err)
        == "this needs 5,000 tokens of context but the context size you set holds 4,096; try --ctx 5120"
    )
    two = UserError("too big", [Remedy("fewer frames", "frames.max_frames", 16), Remedy("a lower fps", "frames.fps")])
    assert render_error(two) == "too big; try --max-frames 16 or a lower fps (--fps)"
    assert render_error(UserError("plain", [Remedy("close other programs")])) == "plain; try close other programs"

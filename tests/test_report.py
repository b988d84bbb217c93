"""The command line's views of the event stream: progress on stderr, and remedies worded as flags."""

from __future__ import annotations

import io
import re

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


def test_a_one_token_answer_is_one_token_in_the_summary(vreason, tiny_model_factory, tmp_path):
    """Real llama.cpp, one token asked for: "[base] 1 token, ...", never "1 tokens" (issue 18)."""
    from vreason_local.clips import make_image

    tiny = tiny_model_factory("qwen25vl")
    image = make_image(tmp_path / "still.png", (64, 48))
    model = ["--model", str(tiny.model_path), "--mmproj", str(tiny.mmproj_path), "--threads", "1"]
    code, out, err = vreason(["run", "--image", str(image), *model, "-q", "Hi", "--max-tokens", "1"])
    assert code == 0, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("[base] 1 token, "), err
    assert re.search(r"-> \d+ vision tokens;", lines[0]) and not re.search(r"\b1 tokens\b", err), err

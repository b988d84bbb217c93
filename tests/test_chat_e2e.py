"""`vreason chat` end to end in a real terminal (tmux): start it, type a question, read the streamed
answer off the screen, quit with ctrl+q; the session is in the store afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from vreason_local.chat.store import ChatStore
from vreason_local.clips import make_clip

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="needs tmux")


def _tmux(socket: str, *args: str) -> str:
    return subprocess.run([TMUX, "-L", socket, "-f", "/dev/null", *args], capture_output=True, text=True).stdout


def _screen_until(socket: str, text: str, timeout: float = 60.0) -> str:
    t0 = time.monotonic()
    while True:
        screen = _tmux(socket, "capture-pane", "-p", "-t", "e2e")
        if text in screen:
            return screen
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{text!r} never appeared; the screen:\n{screen}")
        time.sleep(0.2)


def test_chat_in_tmux_answers_and_quits_with_ctrl_q(tiny_model_factory, tmp_path):
    tiny = tiny_model_factory("qwen25vl")
    clip = make_clip(tmp_path / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    data = tmp_path / "data"
    rc_file = tmp_path / "rc"
    command = (
        f"{sys.executable} -m vreason_local.cli chat --model {tiny.model_path} --mmproj {tiny.mmproj_path} "
        f"--max-tokens 12 --fps 2 --max-frames 6 {clip}; echo $? > {rc_file}"
    )
    socket = f"vreason-e2e-{os.getpid()}"
    env = {"XDG_DATA_HOME": str(data), "COLORTERM": "truecolor", "TERM": "xterm-256color"}
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    _tmux(socket, "new-session", "-d", "-s", "e2e", "-x", "100", "-y", "30", *env_args, command)
    try:
        _screen_until(socket, "ready ·")
        _tmux(socket, "send-keys", "-t", "e2e", "-l", "What happens?")
        _tmux(socket, "send-keys", "-t", "e2e", "Enter")
        screen = _screen_until(socket, "12 tokens")
        assert "You: What happens?" in screen and "max_tokens" in screen
        _tmux(socket, "send-keys", "-t", "e2e", "C-q")
        t0 = time.monotonic()
        while not rc_file.exists() and time.monotonic() - t0 < 20:
            time.sleep(0.1)
        assert rc_file.read_text().strip() == "0"
    finally:
        _tmux(socket, "kill-server")
    with ChatStore(data / "vreason" / "chats.db") as store:
        session = store.latest()
        rows = store.messages(session.id)
    assert [r.role for r in rows] == ["user", "assistant"] and rows[0].text == "What happens?"
    assert rows[1].n_tokens == 12 and session.video_path == str(clip)

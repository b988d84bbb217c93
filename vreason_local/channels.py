"""Where generated text belongs: the reasoning (`<think>...</think>`) or the answer (`<answer>...</answer>`).

The engine splits the text as it streams, so front ends put each piece in its place without re-parsing;
`split_answer` gives the same split of a finished text.
"""

from __future__ import annotations

import re

from .events import Channel

TAGS: dict[str, Channel | None] = {
    "<think>": "reasoning",
    "</think>": "answer",
    "<answer>": "answer",
    "</answer>": None,
}


class ChannelSplitter:
    """Streams text into (channel, text) parts with the tags removed.

    Text before any tag is answer text (a model that ignores the format still answers); `<think>` opens
    the reasoning, `</think>` and `<answer>` the answer, and nothing after `</answer>` is kept. A possible
    tag split across pieces is held back until it is complete or cannot be a tag.
    """

    def __init__(self) -> None:
        self.channel: Channel | None = "answer"
        self._held = ""

    def feed(self, piece: str) -> tuple[tuple[Channel, str], ...]:
        text, self._held = self._held + piece, ""
        parts: list[tuple[Channel, str]] = []
        while text:
            i = text.find("<")
            if i < 0:
                self._emit(parts, text)
                break
            self._emit(parts, text[:i])
            text = text[i:]
            tag = next((t for t in TAGS if text.startswith(t)), None)
            if tag:
                self.channel = TAGS[tag]
                text = text[len(tag) :]
            elif any(t.startswith(text) for t in TAGS):  # the start of a tag: wait for the next piece
                self._held = text
                break
            else:
                self._emit(parts, "<")
                text = text[1:]
        return tuple(parts)

    def _emit(self, parts: list[tuple[Channel, str]], text: str) -> None:
        if not text or self.channel is None:
            return
        if parts and parts[-1][0] == self.channel:
            parts[-1] = (self.channel, parts[-1][1] + text)
        else:
            parts.append((self.channel, text))


def split_answer(text: str) -> tuple[str, str]:
    """(reasoning, answer) from `<think>...</think><answer>...</answer>`, tolerant of missing tags."""
    think = re.search(r"<think>(.*?)(</think>|$)", text, re.S)
    ans = re.search(r"<answer>(.*?)(</answer>|$)", text, re.S)
    reasoning = think.group(1).strip() if think else ""
    if ans:
        return reasoning, ans.group(1).strip()
    rest = text.split("</think>", 1)[1] if "</think>" in text else ("" if think else text)
    return reasoning, rest.strip()

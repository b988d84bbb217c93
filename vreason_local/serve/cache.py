"""What the server keeps between requests: encodings (LRU by host memory), finished conversations, uuids.

An encoding is the costly part of a video question (seconds to minutes); a client that asks again about
the same video, or continues a conversation, must not pay for it twice (users' complaint 3 in
server-notes.md). Encodings are keyed by what decides them, before any frame is decoded: the media's
content hash, the frame settings, the system prompt and the model.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Generic, TypeVar

from ..encoding_store import file_sha256
from ..engine import Encoding
from ..settings import FrameSampling

K = TypeVar("K")
V = TypeVar("V")


def encoding_key(
    kind: str, digest: str, frames: FrameSampling, token_budget: int | None, system: str, model: str
) -> str:
    """The identity of an encoding before it is made: another frame setting is other frames; an image only
    depends on its pixel budget; text alone only on the system prompt."""
    if kind == "video":
        settings: list = [frames.fps, frames.min_frames, frames.max_frames, frames.start_s, frames.end_s]
        settings += [frames.max_pixels, token_budget]
    elif kind == "image":
        settings = [frames.max_pixels]
    else:
        settings = []
    raw = json.dumps([kind, digest, settings, system, model])
    return hashlib.sha256(raw.encode()).hexdigest()


def conversation_key(encoding_key: str, turns: Sequence[tuple[str, str]]) -> str:
    """A conversation by its media and its (role, text) turns; text compared without surrounding blanks, so
    an answer sent back as the server streamed it matches the one it stored."""
    raw = json.dumps([encoding_key, [(role, text.strip()) for role, text in turns]])
    return hashlib.sha256(raw.encode()).hexdigest()


class Bounded(Generic[K, V]):
    """A dict that forgets its least recently used entries beyond `limit` (uuids, conversations)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)


class FileDigests:
    """Media files' SHA-256, taken once per file version (resolved path, size, mtime): every request names its
    video, and a follow-up about a long one must not read it all again before its first token."""

    def __init__(self, limit: int = 256) -> None:
        self._known: Bounded[tuple[str, int, int], str] = Bounded(limit)

    def __call__(self, path: Path) -> str:
        st = path.stat()
        version = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        digest = self._known.get(version)
        if digest is None:
            digest = file_sha256(path)
            self._known.put(version, digest)
        return digest


def encoding_bytes(encoding: Encoding, kv_bytes_per_token: int) -> int:
    """Host memory an encoding holds: its frames, and its prefix's KV rows (kept as a snapshot once another
    encoding took the engine's cache; the resident one counted at its KV size, which it takes when it moves)."""
    frames = sum(f.rgb.nbytes for f in encoding.media.frames)
    kv = len(encoding.snapshot) if encoding.snapshot is not None else encoding.n_tokens * kv_bytes_per_token
    return frames + kv


class EncodingCache:
    """Encodings by `encoding_key`, least recently used dropped first once they hold more than `max_bytes`.

    Sizes are measured again at every change: an encoding grows when the engine snapshots it. Used from the
    engine's thread only; `held_bytes` and `len()` may be read from any."""

    def __init__(self, max_bytes: int, kv_bytes_per_token: int) -> None:
        self.max_bytes = max_bytes
        self.kv_bytes_per_token = kv_bytes_per_token
        self._items: OrderedDict[str, Encoding] = OrderedDict()
        self.held_bytes = 0  # as last measured, for readers on other threads (/metrics)

    def get(self, key: str) -> Encoding | None:
        encoding = self._items.get(key)
        if encoding is not None:
            self._items.move_to_end(key)
        return encoding

    def put(self, key: str, encoding: Encoding) -> None:
        self._items[key] = encoding
        self._items.move_to_end(key)
        self.trim()

    def trim(self) -> None:
        while self._items and self.nbytes > self.max_bytes:
            self._items.popitem(last=False)
        self.held_bytes = self.nbytes

    @property
    def nbytes(self) -> int:
        return sum(encoding_bytes(e, self.kv_bytes_per_token) for e in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

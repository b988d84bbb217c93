"""The persistent encoding cache: a media prefix's KV sequence state on disk, so a video is encoded once per machine.

Encoding a video (the vision encoder, then prefilling its tokens) dominates the time to the first token on a
CPU, and every new process (a second `run`, `chat --resume`, an eval re-run, a server restart) would pay it
again. The engine writes each encoding's sequence state (llama.cpp's per-sequence state API: every layer's K
and V rows of the prefix) here, and any later process that needs the same prefix loads it instead.

Identity (`entry_key`): everything that decides the prefix's KV rows, so a file can only match the encoding it
holds. The model's and projector's identity (size + SHA-256 of their content, computed once per file version and
remembered by path, size and mtime in `identities.json`: a model replaced under the same name gets a new hash),
llama.cpp's version and KV types, the engine settings that change the computation (flash attention, batch size,
offloading, repacking), the decoded frames' content and timestamps with the system prompt (`engine.media_key`:
what the encoder saw, never the file's name), and the prompt prefix's tokens.

File layout (little-endian): MAGIC (8 bytes), u32 format, u32 metadata length, u64 state length, 32-byte
SHA-256 of metadata + state, the metadata (JSON), the state blob. Files are written to a temporary name in the
same folder, fsynced and renamed into place: a reader sees a whole file or none (a rename replaces the inode;
one already open keeps reading the old one). A damaged, truncated or mismatched file is removed with one warning
and the media encoded again. The folder is 0700 and the files 0600: they hold content derived from the user's
videos. The total size is capped; the least recently used files (by mtime, touched on every load) go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_dir

MAGIC = b"VRENCST\0"
FORMAT = 1
_HEAD = struct.Struct("<8sIIQ32s")  # magic, format, metadata length, state length, sha256(metadata + state)
SUFFIX = ".enc"
_TEMP_PREFIX = ".tmp-"
_STALE_TEMP_S = 3600.0  # a temporary file this old is a crashed writer's
_HASH_CHUNK = 1 << 22
DEFAULT_CAP_GB = 10.0
DEFAULT_FREE_FRACTION = 0.10


def store_dir() -> Path:
    return cache_dir() / "encodings"


def default_cap_bytes(folder: Path) -> int:
    """min(10 GB, 10% of the free disk where the cache lives): a sensible bound without asking."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return int(min(DEFAULT_CAP_GB * 1e9, DEFAULT_FREE_FRACTION * free))


class DamagedEntry(Exception):
    """A cache file that cannot be used: its message says why (for the one warning)."""


@dataclass(frozen=True)
class Entry:
    """One cached encoding as `vreason cache` lists it."""

    path: Path
    size: int
    last_used: float  # the file's mtime: set when written and on every load
    meta: dict

    @property
    def key(self) -> str:
        return self.path.stem


def _make_private_dir(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)


def _write_atomic(folder: Path, name: str, parts: list[bytes]) -> Path:
    """`parts` into folder/name: temp file in the same folder (0600), fsync, rename, fsync the folder."""
    tmp = folder / f"{_TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if hasattr(os, "fchmod"):  # the mode above is masked by the umask; this is not (POSIX)
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            for p in parts:
                f.write(p)
            f.flush()
            os.fsync(f.fileno())
        final = folder / name
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash once the folder is synced
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return final


def _read_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / "identities.json").read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (a model or a video may be larger than memory should hold twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def known_identity(path: Path, folder: Path | None = None) -> str | None:
    """The remembered `file_identity` of this version of the file (same path, size and mtime), else None."""
    path = Path(path).resolve()
    st = path.stat()
    known = _read_index(folder or store_dir()).get(str(path))
    if isinstance(known, dict) and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        return str(known.get("identity"))
    return None


def file_identity(path: Path, folder: Path | None = None) -> str:
    """`size:sha256` of a file's content, remembered by (path, size, mtime) so each version is hashed once."""
    folder = folder or store_dir()
    path = Path(path).resolve()
    known = known_identity(path, folder)
    if known is not None:
        return known
    st = path.stat()
    identity = f"{st.st_size}:{file_sha256(path)}"
    index = _read_index(folder)
    index[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "identity": identity}
    with contextlib.suppress(OSError):  # a lost update costs one more hash later, nothing else
        _make_private_dir(folder)
        _write_atomic(folder, "identities.json", [json.dumps(index, indent=1).encode()])
    return identity


def entry_key(identity: dict) -> str:
    """The file name of an encoding: a hash of everything that identifies it (the module's docstring)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def pack(meta: dict, state: bytes) -> list[bytes]:
    body = json.dumps(meta, sort_keys=True).encode()
    digest = hashlib.sha256(body)
    digest.update(state)
    return [_HEAD.pack(MAGIC, FORMAT, len(body), len(state), digest.digest()), body, state]


def unpack(data: bytes | memoryview) -> tuple[dict, bytes]:
    """(metadata, state) of a whole file; `DamagedEntry` saying why it cannot be used."""
    if len(data) < _HEAD.size:
        raise DamagedEntry("truncated (no header)")
    magic, fmt, n_meta, n_state, digest = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise DamagedEntry("not an encoding cache file")
    if fmt != FORMAT:
        raise DamagedEntry(f"written in format {fmt}, this vreason reads {FORMAT}")
    if len(data) != _HEAD.size + n_meta + n_state:
        raise DamagedEntry(f"truncated or padded ({len(data)} bytes, expected {_HEAD.size + n_meta + n_state})")
    body = data[_HEAD.size : _HEAD.size + n_meta]
    state = data[_HEAD.size + n_meta :]
    h = hashlib.sha256(body)
    h.update(state)
    if h.digest() != digest:
        raise DamagedEntry("checksum mismatch")
    try:
        meta = json.loads(bytes(body))
    except ValueError:
        raise DamagedEntry("unreadable metadata") from None
    return meta, bytes(state)


def read_meta(path: Path) -> dict:
    """The metadata alone (for listing): the header and JSON, without reading or checking the state."""
    with open(path, "rb") as f:
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            raise DamagedEntry("truncated (no header)")
        magic, fmt, n_meta, _, _ = _HEAD.unpack(head)
        if magic != MAGIC or fmt != FORMAT:
            raise DamagedEntry("not an encoding cache file of this format")
        try:
            return json.loads(f.read(n_meta))
        except ValueError:
            raise DamagedEntry("unreadable metadata") from None


class EncodingStore:
    """The cache folder: load, save (atomic, capped), list, prune and clear entries.

    `cap_bytes`: the size cap (None: `default_cap_bytes`, measured when a file is written). Saving may run
    in a background thread (`save_later`) so the answer does not wait for the disk; `wait()` joins it."""

    def __init__(self, folder: Path | None = None, cap_bytes: int | None = None) -> None:
        self.folder = Path(folder) if folder is not None else store_dir()
        self.cap_bytes = cap_bytes
        self._writers: list[threading.Thread] = []
        self.errors: list[str] = []  # what a background save could not do (said once by the engine)

    # -- one entry ---------------------------------------------------------------------------------
    def path_for(self, key: str) -> Path:
        return self.folder / (key + SUFFIX)

    def load(self, key: str, identity: dict) -> tuple[dict, bytes] | None:
        """(metadata, state) of the entry `key`, or None when there is none. A file that cannot be used
        (damaged, truncated, another identity) is removed and `DamagedEntry` raised for the one warning."""
        path = self.path_for(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            meta, state = unpack(data)
            if meta.get("identity") != identity:
                raise DamagedEntry("it belongs to another model, projector, llama.cpp build or prompt")
        except DamagedEntry:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        with contextlib.suppress(OSError):
            os.utime(path)  # last used: the LRU order
        return meta, state

    def save(self, key: str, meta: dict, state: bytes) -> Path | None:
        """Write the entry atomically, then evict least recently used entries above the cap. None when one
        entry alone is larger than the cap (it is not written)."""
        parts = pack(meta, state)
        size = sum(len(p) for p in parts)
        _make_private_dir(self.folder)
        cap = self.cap()
        if size > cap:
            return None
        self._evict(cap - size, keep=key)
        return _write_atomic(self.folder, key + SUFFIX, parts)

    def save_later(self, describe: Callable[[], tuple[str, dict]], state: bytes) -> None:
        """`save` in a background (non-daemon: the process waits for it at exit) thread; `describe()` gives the
        key and metadata there (it may hash a model file first: off the answer's path)."""

        def run() -> None:
            try:
                self.save(*describe(), state)
            except OSError as exc:
                self.errors.append(f"the encoding cache could not write {self.folder}: {exc.strerror or exc}")

        self._writers = [t for t in self._writers if t.is_alive()]
        t = threading.Thread(target=run, name="vreason-encoding-cache", daemon=False)
        t.start()
        self._writers.append(t)

    def wait(self) -> None:
        """Every background save finished."""
        for t in self._writers:
            t.join()
        self._writers = []

    # -- the folder ---------------------------------------------------------------------------------
    def cap(self) -> int:
        return self.cap_bytes if self.cap_bytes is not None else default_cap_bytes(self.folder)

    def entries(self) -> list[Entry]:
        """Every entry, most recently used first; an unreadable one is listed with empty metadata."""
        out = []
        for path in self._files():
            try:
                st = path.stat()
            except FileNotFoundError:  # evicted meanwhile by another process
                continue
            try:
                meta = read_meta(path)
            except (DamagedEntry, OSError):
                meta = {}
            out.append(Entry(path, st.st_size, st.st_mtime, meta))
        return sorted(out, key=lambda e: e.last_used, reverse=True)

    def find(self, wanted: dict) -> Entry | None:
        """The most recently used entry whose identity has every field of `wanted` (a plan knows all of an
        identity but the prompt prefix's tokens before the model is loaded). Metadata only: nothing is
        checked or loaded, so this is a promise the load keeps or, for a damaged file, breaks with its warning."""
        for entry in self.entries():
            identity = entry.meta.get("identity") or {}
            if all(identity.get(k) == v for k, v in wanted.items()):
                return entry
        return None

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def prune(self, keep_bytes: int, older_than_s: float | None = None) -> list[Entry]:
        """Remove least recently used entries until at most `keep_bytes` remain, and any entry unused for
        `older_than_s`; the removed entries."""
        now = time.time()
        removed = []
        total = 0
        for e in self.entries():  # newest first: keep while they fit
            stale = older_than_s is not None and now - e.last_used > older_than_s
            if stale or total + e.size > keep_bytes:
                with contextlib.suppress(FileNotFoundError):
                    e.path.unlink()
                removed.append(e)
            else:
                total += e.size
        return removed

    def clear(self) -> list[Entry]:
        """Remove every entry (and stale temporary files); the removed entries."""
        removed = self.prune(0)
        self._remove_stale_temps(0.0)
        return removed

    def _evict(self, room: int, keep: str) -> None:
        """Least recently used entries out until the others fit in `room` bytes (`keep`'s file, being
        rewritten, is not counted)."""
        self._remove_stale_temps(_STALE_TEMP_S)
        total = 0
        for e in self.entries():
            if e.key == keep:
                continue
            if total + e.size > room:
                with contextlib.suppress(FileNotFoundError):
                    e.path.unlink()
            else:
                total += e.size

    def _files(self) -> Iterator[Path]:
        if self.folder.is_dir():
            yield from self.folder.glob("*" + SUFFIX)

    def _remove_stale_temps(self, age_s: float) -> None:
        if not self.folder.is_dir():
            return
        now = time.time()
        for tmp in self.folder.glob(_TEMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime >= age_s:
                    tmp.unlink()

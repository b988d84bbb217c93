"""Where a request's video or image comes from: a file under `--media-root`, or bytes sent inline.

API (for the app): build one `MediaLimits` at start-up (`MediaLimits.create(roots, max_inline_bytes)`),
then per media part `resolve_media(kind, url_or_data, uuid, limits) -> MediaSource`, and call
`MediaSource.discard()` when the request is over (it removes a temporary file, does nothing otherwise).
Every refusal is an `ApiError` (status 400, or 413 for inline media over the cap) whose message says
what to send instead; `param` is left for the caller, which knows where in the body the part was.

Sources, in the order they are recognised:
- `http://`, `https://` (any other URL scheme too): refused. An offline tool fetches nothing, and a
  server that fetched would let any caller make it reach hosts only it can see (vLLM's SSRF, issue 57157).
- `file://` URLs and plain paths: only under a `--media-root` folder. The path is refused if it has a
  `..` part, then resolved with symlinks followed (`Path.resolve`) and refused unless the real file lies
  under a root, so neither `..` nor a symlink inside the root can reach other files. A relative path is
  looked up in each root in turn. Without roots every local path is refused, naming the option, as
  llama-server does without `--media-path`. An absolute path outside the roots is refused whether or not
  it exists, so the answer does not say whether such a file exists.
- `data:<mime>;base64,...` and raw base64: the decoded size is computed from the text's length and
  checked against `max_inline_bytes` before anything is decoded; the bytes are decoded in chunks into a
  0600 file in the private (0700) `tmp_dir`. The file's suffix comes from the bytes' magic numbers, else
  the data URI's mime type, else the kind (`.mp4`, `.png`): OpenCV's FFmpeg and imread choose their reader
  partly by suffix. Whether the bytes really are a video is the engine's video checks' business (a text
  file posing as one fails there with their message).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal
from urllib.parse import unquote, urlsplit

from ..errors import UserError
from .errors import ApiError

MIB = 1024**2
# Base64 inflates by 4/3, so this much decoded media fits in the default 256 MiB body cap with room to spare.
DEFAULT_MAX_INLINE_BYTES = 192 * MIB
DECODE_CHUNK = 4 * MIB  # base64 characters decoded and written at a time (a multiple of 4)
RAW_BASE64_MIN = 64  # shorter text in the base64 alphabet is read as a path: no real media is under 48 bytes
REMOTE = "vreason serve fetches nothing from the network: send the file as a data: URI or a path under --media-root"

MediaKind = Literal["video", "image"]

# Mime types clients send (browsers' and the `mimetypes` module's names) -> the suffix OpenCV reads them by.
SUFFIX_BY_MIME: dict[str, str] = {
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi",
    "video/avi": ".avi",
    "video/mpeg": ".mpg",
    "video/mp2t": ".ts",
    "video/x-flv": ".flv",
    "video/3gpp": ".3gp",
    "video/ogg": ".ogv",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "image/gif": ".gif",
}
DEFAULT_SUFFIX: dict[str, str] = {"video": ".mp4", "image": ".png"}
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=_\s-]+")  # standard and URL-safe alphabets
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: `C:` is a Windows drive


@dataclass(frozen=True)
class MediaLimits:
    """What media a server takes. `roots`: the `--media-root` folders, resolved (empty: local paths are
    refused); `max_inline_bytes`: cap on the decoded size of a data: URI or raw base64; `tmp_dir`: a
    private (0700) folder for decoded inline media, which `resolve_media` recreates if it is gone."""

    roots: tuple[Path, ...]
    max_inline_bytes: int
    tmp_dir: Path

    @classmethod
    def create(
        cls,
        roots: Sequence[str | Path] = (),
        max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES,
        tmp_dir: Path | None = None,
    ) -> MediaLimits:
        """Limits from the command line's values: each root must be an existing folder (else `UserError`,
        one line for the CLI); `tmp_dir` is made (0700) if missing, and without one a fresh private folder
        is made in the system's temp folder."""
        resolved = []
        for root in roots:
            path = Path(root).expanduser()
            if not path.is_dir():
                raise UserError(f"--media-root {root}: no such folder")
            resolved.append(path.resolve(strict=True))
        if max_inline_bytes < 0:
            raise UserError(f"the inline media cap must be 0 bytes or more, got {max_inline_bytes}")
        if tmp_dir is None:
            return cls(tuple(resolved), max_inline_bytes, Path(tempfile.mkdtemp(prefix="vreason-serve-")))  # 0700
        tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(tuple(resolved), max_inline_bytes, tmp_dir)


@dataclass(frozen=True)
class MediaSource:
    """One media part, ready to open: `path` is a file under a root, or a private temporary file
    (`temporary`) that `discard()` removes once the request is answered."""

    kind: MediaKind
    path: Path
    temporary: bool
    uuid: str | None = None

    def discard(self) -> None:
        """Remove the temporary file (safe to call more than once; a file under a root is never touched)."""
        if self.temporary:
            self.path.unlink(missing_ok=True)


def resolve_media(kind: MediaKind, url_or_data: str, uuid: str | None, limits: MediaLimits) -> MediaSource:
    """The file a media part names or carries, checked against `limits` (see the module's docstring).

    Raises `ApiError` (400; 413 for inline media over `max_inline_bytes`) with a message that says what
    to send instead; nothing is left on disk when it raises.
    """
    text = url_or_data.strip()
    if not text:
        raise ApiError(400, f"the {kind} part is empty: send a data: URI, base64 or a path under --media-root")
    scheme = _SCHEME.match(text)
    name = scheme.group(1).lower() if scheme else ""
    if name == "data":
        mime, payload = _data_uri(kind, text)
        return _inline(kind, payload, mime, uuid, limits)
    if name == "file":
        return MediaSource(kind, _local(kind, _file_url_path(text), limits), False, uuid)
    if name in ("http", "https"):
        raise ApiError(400, f"{kind} URL {_short(text)} refused: {REMOTE}", code="remote_media_refused")
    if scheme:
        raise ApiError(
            400,
            f"{kind} URL scheme '{name}:' is not supported: send a data: URI, base64, a file:// URL or a path "
            "under --media-root",
        )
    if len(text) >= RAW_BASE64_MIN and _BASE64_TEXT.fullmatch(text):
        return _inline(kind, text, "", uuid, limits)
    return MediaSource(kind, _local(kind, text, limits), False, uuid)


# -- inline media -----------------------------------------------------------------------------------
def _data_uri(kind: MediaKind, text: str) -> tuple[str, str]:
    """(mime type, base64 payload) of `data:<mime>[;param]*;base64,<payload>`."""
    head, sep, payload = text.partition(",")
    if not sep:
        raise ApiError(400, f"the {kind} data: URI has no ',' before its data (data:video/mp4;base64,...)")
    params = [p.strip().lower() for p in head[len("data:") :].split(";")]
    if "base64" not in params[1:]:
        raise ApiError(400, f"the {kind} data: URI must be base64-encoded (data:<mime type>;base64,...)")
    mime = params[0]
    if mime and mime.split("/")[0] in ("video", "image") and mime.split("/")[0] != kind:
        raise ApiError(400, f"a {kind} part was sent data of type {mime}: send it as a {mime.split('/')[0]} part")
    return mime, payload


def _inline(kind: MediaKind, payload: str, mime: str, uuid: str | None, limits: MediaLimits) -> MediaSource:
    """Decode base64 `payload` into a private temporary file, the size checked before any decoding."""
    clean = "".join(payload.split())
    if "-" in clean or "_" in clean:  # the URL-safe alphabet (RFC 4648 §5)
        clean = clean.translate(str.maketrans("-_", "+/"))
    if len(clean) % 4 == 1:
        raise ApiError(400, f"the {kind}'s base64 data is cut short ({len(clean)} characters): {_B64_HINT}")
    clean += "=" * (-len(clean) % 4)  # clients that drop the padding
    size = len(clean) // 4 * 3 - len(clean[-2:]) + len(clean[-2:].rstrip("="))
    if size > limits.max_inline_bytes:
        raise ApiError(
            413,
            f"the inline {kind} is {_mb(size)} decoded, over this server's {_mb(limits.max_inline_bytes)} cap for "
            "data: URIs and base64: put the file under a --media-root folder and send its path",
            code="media_too_large",
        )
    if size == 0:
        raise ApiError(400, f"the inline {kind} is empty (no base64 data)")
    first = _decode(kind, clean[:DECODE_CHUNK])
    suffix = _sniff(first) or SUFFIX_BY_MIME.get(mime) or DEFAULT_SUFFIX[kind]
    limits.tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=suffix, prefix=f"{kind}-", dir=limits.tmp_dir)  # 0600
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(first)
            for i in range(DECODE_CHUNK, len(clean), DECODE_CHUNK):
                out.write(_decode(kind, clean[i : i + DECODE_CHUNK]))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return MediaSource(kind, path, True, uuid)


_B64_HINT = "send the file's bytes in standard base64 (RFC 4648), e.g. data:video/mp4;base64,AAAAIGZ0eXBpc29t..."


def _decode(kind: MediaKind, chunk: str) -> bytes:
    try:
        return base64.b64decode(chunk, validate=True)
    except (binascii.Error, ValueError):
        bad = next((c for c in chunk if not (c.isascii() and (c.isalnum() or c in "+/="))), None)
        what = f"has the character {bad!r}, which is not base64" if bad else "has padding ('=') inside it"
        raise ApiError(400, f"the {kind}'s base64 data {what}: {_B64_HINT}") from None


def _sniff(head: bytes) -> str | None:
    """The suffix the file's magic numbers say, or None when they say nothing known."""
    if head[4:8] == b"ftyp":
        return ".mov" if head[8:12] == b"qt  " else ".mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: WebM is Matroska with the doctype "webm"
        return ".webm" if b"webm" in head[:64] else ".mkv"
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"WEBP"):
        return ".avi" if head[8:12] == b"AVI " else ".webp"
    magic = {
        b"\x89PNG\r\n\x1a\n": ".png",
        b"\xff\xd8\xff": ".jpg",
        b"GIF8": ".gif",
        b"BM": ".bmp",
        b"II*\x00": ".tiff",
        b"MM\x00*": ".tiff",
        b"\x00\x00\x01\xba": ".mpg",
        b"FLV": ".flv",
        b"OggS": ".ogv",
    }
    found = next((suffix for prefix, suffix in magic.items() if head.startswith(prefix)), None)
    if found is None and len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:  # MPEG-TS sync bytes
        return ".ts"
    return found


# -- local files ------------------------------------------------------------------------------------
def _file_url_path(url: str) -> str:
    """The local path of a `file://` URL, percent-decoded; a host other than localhost is refused."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ApiError(
            400, f"file:// URL {_short(url)} names the host '{parts.netloc}': only local files (file:///path) are read"
        )
    return unquote(parts.path)


def _local(kind: MediaKind, text: str, limits: MediaLimits) -> Path:
    """The real file `text` names under one of the roots (see the module's docstring)."""
    shown = _short(text)
    if not limits.roots:
        raise ApiError(
            400,
            f"{kind} path {shown} refused: this server reads no local files because it was started without "
            "--media-root; start it with --media-root DIR, or send the file as a data: URI",
            code="local_media_refused",
        )
    if "\x00" in text:
        raise ApiError(400, f"{kind} path {shown} contains a NUL character")
    given = PurePath(text)
    if ".." in given.parts:
        raise ApiError(400, f"{kind} path {shown} refused: '..' is not allowed in media paths", code="path_refused")
    candidates = [Path(given)] if given.is_absolute() else [root / given for root in limits.roots]
    for candidate in candidates:
        try:
            # Symlinks followed as far as the path exists, without saying whether it does: a root given
            # through a symlink (/data -> /mnt/data) still contains /data/clip.mp4.
            real = candidate.resolve()
            exists = real.exists()
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long, a permission error
            raise ApiError(
                400, f"{kind} path {shown} cannot be read: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        if not any(real.is_relative_to(root) for root in limits.roots):
            if given.is_absolute():  # refused before saying whether such a file exists
                raise ApiError(400, f"{kind} path {shown} is outside every --media-root folder", code="path_refused")
            if exists:
                raise ApiError(
                    400, f"{kind} path {shown} leads outside every --media-root folder (a symlink)", code="path_refused"
                )
            continue
        if exists:
            if not real.is_file():
                raise ApiError(400, f"{kind} path {shown} is not a file")
            return real
    raise ApiError(400, f"{kind} file {shown} not found under --media-root", code="media_not_found")


def _short(text: str, limit: int = 120) -> str:
    """`text` quoted for a message, cut so that a huge value (inline data sent by mistake) stays one line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _mb(n: int) -> str:
    return f"{n / MIB:.1f} MiB"

"""The server's own options (where it listens, who may call it, how much it keeps), apart from the run settings.

The run settings (model, frames, generation, V-Reason) are `settings.RunSettings`, exactly as `vreason run`
reads them, and are the defaults each request may change; these are the server's alone and no request
changes them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .media import MediaLimits

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class ServeOptions:
    """`model_name`: the id clients use (modes are `NAME:vreason`, `NAME:lite`). `api_key` None: no key asked
    (only allowed on a loopback address). `queue`: requests that may wait behind the running one; beyond
    them, 429. `cache_bytes`: host memory for kept encodings. `max_body_bytes`: the request body cap (413).
    `time_limit_s`: a request's whole life, queue included. `keepalive_s`: seconds between SSE comment
    lines while nothing else is sent (proxies close idle streams)."""

    model_name: str
    media: MediaLimits
    api_key: str | None = None
    queue: int = 16
    cache_bytes: int = 4 * GIB
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 256 * MIB
    time_limit_s: float = 3600.0
    keepalive_s: float = 5.0


def is_loopback(host: str) -> bool:
    """Only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def served_name(model: str) -> str:
    """The model id the server lists: a registry name as given, a file path as its file name's stem."""
    if model.endswith(".gguf") or "/" in model or "\\" in model:
        return Path(model).stem
    return model

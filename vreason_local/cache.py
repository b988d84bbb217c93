"""Where vreason keeps what it learns about this machine (repack verdict, prefill speed) and demo files."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$VREASON_CACHE`, else ~/.cache/vreason-local (models themselves live in the Hugging Face cache)."""
    return Path(os.environ.get("VREASON_CACHE", Path.home() / ".cache" / "vreason-local"))

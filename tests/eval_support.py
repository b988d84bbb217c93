"""Helpers for the evaluator's dataset tests: a clip placed where a benchmark keeps its videos (the clip itself:
conftest.py's `clip` fixture)."""

from __future__ import annotations

import shutil
from pathlib import Path


def place(clip: Path, root: Path, *relative: str) -> None:
    """Copy the clip to each relative path under root, as a benchmark's video folder would hold it."""
    for rel in relative:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, root / rel)

"""Settings checks made before any slow step, each a one-line `SettingError` in the user's terms.

Two stages, because some limits are the model's: `check_options` needs nothing but the settings and runs
before the model is resolved; `check_model_settings` needs the model's metadata (read from the GGUF
header in milliseconds) and runs before any video is decoded. Each setting's own range, and the frame
limits together, are checked where the settings are made (`settings.py`), so every front end gets them
the moment it builds its settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .devices import check_device
from .errors import Remedy, SettingError
from .native import library

if TYPE_CHECKING:
    from .gguf_info import ModelInfo
    from .settings import RunSettings


def check_options(settings: RunSettings) -> None:
    """Reject what the settings types cannot check alone: a V-Reason controller device this PyTorch cannot
    use (only where the hook is loaded: base runs never import torch), a VREASON_SIMD level this CPU lacks
    (the native library applies it as it loads). Ranges and choices were checked as the settings were made."""
    library()
    if settings.engine.hook:
        check_device(settings.vreason.device)


def check_model_settings(info: ModelInfo, n_ctx: int | None) -> None:
    """Reject a context size (`n_ctx`, the user's; None when sized automatically) longer than the model
    was trained for: positions past that are untrained, and the KV cache for them can take gigabytes."""
    if n_ctx is not None and n_ctx > info.n_ctx_train:
        raise SettingError(
            "engine.n_ctx",
            n_ctx,
            f"a context of {n_ctx:,} tokens is longer than {info.path.name} was trained for "
            f"({info.n_ctx_train:,} tokens)",
            [Remedy("the model's trained context", "engine.n_ctx", info.n_ctx_train)],
        )

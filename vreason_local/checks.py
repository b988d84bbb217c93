"""Settings checks made before any slow step, each a one-line `SettingError` in the user's terms.

Two stages, because some limits are the model's: `check_options` needs nothing but the settings and runs
before the model is resolved; `check_model_settings` needs the model's metadata (read from the GGUF
header in milliseconds) and runs before any video is decoded. Frame sampling limits (frame counts, pixel
budget, clip window) are checked where they are made, in `video.FrameSampling`, so every front end gets
them the moment it builds its settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .devices import check_device
from .errors import Remedy, SettingError
from .native import library

if TYPE_CHECKING:  # engine imports llama.cpp; these checks run before anything is loaded
    from .engine import EngineSettings
    from .gguf_info import ModelInfo


def check_options(engine: EngineSettings, device: str | None = None) -> None:
    """Reject settings that cannot work on any model: GPU layers below -1, a controller device this
    PyTorch cannot use, a VREASON_SIMD level this CPU lacks (the native library applies it as it loads).
    `device` is the V-Reason controller's (None for base runs, which never import torch).
    """
    library()
    if engine.n_gpu_layers < -1:
        raise SettingError(
            "engine.n_gpu_layers",
            engine.n_gpu_layers,
            f"{engine.n_gpu_layers} is not a number of GPU layers: use -1 for all layers, 0 for none, "
            "or how many layers to put on the GPU",
            [Remedy("all layers", "engine.n_gpu_layers", -1), Remedy("none", "engine.n_gpu_layers", 0)],
        )
    if device is not None:
        check_device(device)


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

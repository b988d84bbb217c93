"""Which PyTorch device the V-Reason controller may run on, checked before anything slow.

A device PyTorch cannot use would otherwise surface as an internal error from the controller, after the
model has loaded and the video has been encoded. The name alone is checked without importing torch, so a
typo costs nothing; only `cuda` and `mps` need torch to ask whether this build and machine have them.
"""

from __future__ import annotations

from .errors import Remedy, SettingError

DEVICES = ("auto", "cpu", "cuda", "mps")
SETTING = "vreason.device"


def check_device(name: str) -> None:
    """Raise `SettingError` unless `name` (auto, cpu, cuda, cuda:N or mps) is usable by this PyTorch.

    `auto` always works (it falls back to the CPU), as does `cpu`. Call this only for runs that use the
    controller: it imports torch for `cuda` and `mps`.
    """
    kind, colon, index = name.partition(":")
    if kind not in DEVICES or (colon and (kind != "cuda" or not index.isdigit())):
        raise SettingError(
            SETTING,
            name,
            f"'{name}' is not a device the controller can run on: use auto, cpu, cuda (or cuda:N) or mps",
            [Remedy("let it choose", SETTING, "auto")],
        )
    if kind in ("auto", "cpu"):
        return
    import torch

    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SettingError(
                SETTING,
                name,
                "CUDA is not available to PyTorch here (a CPU-only build of PyTorch, or no NVIDIA GPU and driver)",
                [Remedy("the CPU", SETTING, "cpu")],
            )
        if index and int(index) >= count:
            raise SettingError(
                SETTING,
                name,
                f"there is no CUDA device {index}: PyTorch sees {count} (cuda:0 to cuda:{count - 1})",
                [Remedy("the first GPU", SETTING, "cuda:0")],
            )
    elif not torch.backends.mps.is_available():
        raise SettingError(
            SETTING,
            name,
            "Apple's Metal (mps) is not available to PyTorch here (it needs "
            "an Apple Silicon Mac and a PyTorch build with MPS)",
            [Remedy("the CPU", SETTING, "cpu")],
        )

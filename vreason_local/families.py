"""The Qwen-VL families vreason supports, and how each appears in GGUF files.

One table, because three places need the same facts and drifted when each spelled them: the registry
checks a model's family, `gguf_info` recognises a language model by its ``general.architecture`` and a
projector by its ``clip.projector_type``, and `tiny` generates one model per family. Qwen2-VL and
Qwen2.5-VL share llama.cpp's ``qwen2vl`` language-model architecture and differ only in the projector,
so a family is named by the pair, not by either GGUF string alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One Qwen-VL generation as vreason names it and as its GGUF files declare it."""

    name: str  # what the registry and `make-tiny --arch` use: "qwen25vl"
    display_name: str  # how users know it: "Qwen2.5-VL"
    lm_arch: str  # general.architecture of the language-model GGUF
    projector_type: str  # clip.projector_type of its mmproj GGUF
    patch_size: int  # vision patch side in pixels (frames are resized to multiples of twice this)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("qwen2vl", "Qwen2-VL", lm_arch="qwen2vl", projector_type="qwen2vl_merger", patch_size=14),
        Family("qwen25vl", "Qwen2.5-VL", lm_arch="qwen2vl", projector_type="qwen2.5vl_merger", patch_size=14),
        Family("qwen3vl", "Qwen3-VL", lm_arch="qwen3vl", projector_type="qwen3vl_merger", patch_size=16),
    )
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)
# general.architecture values of supported language models, each once, in family order.
LM_ARCHES: tuple[str, ...] = tuple(dict.fromkeys(f.lm_arch for f in FAMILIES.values()))
# clip.projector_type of each supported projector -> the language-model architecture it feeds.
PROJECTORS: dict[str, str] = {f.projector_type: f.lm_arch for f in FAMILIES.values()}

__all__ = ["FAMILIES", "FAMILY_NAMES", "LM_ARCHES", "PROJECTORS", "Family"]

"""Shared pytest fixtures."""

from __future__ import annotations

from typing import Callable

import pytest

from vreason_local.tiny import TinyModel, make_tiny


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., TinyModel]:
    """Return `(arch="qwen25vl", wtype="f16") -> TinyModel`, building each pair once per session.

    The models are real GGUF files with random weights (see `vreason_local.tiny`); building one takes
    a few tens of milliseconds, and caching keeps repeated use free.
    """
    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[tuple[str, str], TinyModel] = {}

    def factory(arch: str = "qwen25vl", wtype: str = "f16") -> TinyModel:
        key = (arch, wtype)
        if key not in cache:
            cache[key] = make_tiny(root, arch=arch, shape="tiny", wtype=wtype)
        return cache[key]

    return factory

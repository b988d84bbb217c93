"""Shared pytest fixtures, and the isolated environment every test runs in.

A test run must not depend on, or change, the shell that started it: the user's model and machine caches
stay untouched, and settings such as VREASON_REPACK, HF_HUB_OFFLINE or HF_ENDPOINT from the caller do not
steer (or silently skip) tests. `pytest_configure` therefore points every cache at a fresh folder and
drops the caller's VREASON_*, HF_* and HUGGINGFACE_* variables for the whole run, before any test module
is imported (huggingface_hub reads HF_HOME, HF_HUB_OFFLINE and its token path once, at import). Tests
that run `vreason` in a subprocess inherit this environment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from vreason_local.tiny import TinyModel, make_tiny

_DROPPED_PREFIXES = ("VREASON_", "HF_", "HUGGINGFACE_")
_DROPPED_NAMES = ("TRANSFORMERS_OFFLINE",)
# The caller's value of every variable this run changed (None: it was unset), and the scratch folder.
_SAVED = pytest.StashKey[tuple[dict[str, str | None], Path]]()


def _isolated_environment(root: Path) -> dict[str, str | None]:
    """What to set (a str) or remove (None) so that every cache lies under `root`."""
    changes: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(_DROPPED_PREFIXES) or k in _DROPPED_NAMES
    }
    changes.update(
        VREASON_CACHE=str(root / "vreason"),  # repack verdicts, prefill speed, demo files
        HF_HOME=str(root / "hf"),  # token, stored tokens, xet cache
        HF_HUB_CACHE=str(root / "hf" / "hub"),  # models
        XDG_CACHE_HOME=str(root / "xdg"),  # anything else that follows the XDG default (~/.cache)
        XDG_DATA_HOME=str(root / "xdg-data"),  # the chat database (platformdirs' user data folder)
    )
    return changes


def _apply(changes: dict[str, str | None]) -> None:
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def pytest_configure(config: pytest.Config) -> None:
    root = Path(tempfile.mkdtemp(prefix="vreason-tests-"))
    changes = _isolated_environment(root)
    config.stash[_SAVED] = ({k: os.environ.get(k) for k in changes}, root)
    _apply(changes)


def pytest_unconfigure(config: pytest.Config) -> None:
    saved, root = config.stash[_SAVED]
    _apply(saved)
    shutil.rmtree(root, ignore_errors=True)


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


@pytest.fixture
def vreason(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str, str]]:
    """Run `vreason ARGS` in this process, as the entry point would: (exit code, stdout, stderr)."""
    from vreason_local.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc:
            main(args)
            raise SystemExit(0)
        out, err = capsys.readouterr()
        return exc.value.code or 0, out, err

    return run

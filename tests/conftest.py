"""Shared pytest fixtures, and the isolated environment every test runs in.

A test run must not depend on, or change, the shell that started it: the user's model and machine caches
stay untouched, and settings such as VREASON_REPACK, HF_HUB_OFFLINE or HF_ENDPOINT from the caller do not
steer (or silently skip) tests. `pytest_configure` therefore points every cache at a fresh folder and
drops the caller's VREASON_*, HF_* and HUGGINGFACE_* variables for the whole run, before any test module
is imported (huggingface_hub reads HF_HOME, HF_HUB_OFFLINE and its token path once, at import). Tests
that run `vreason` in a subprocess inherit this environment.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vreason_local.clips import make_clip
from vreason_local.engine import Engine
from vreason_local.errors import SettingError
from vreason_local.native import available_simd, simd_level, use_default_simd
from vreason_local.tiny import TinyModel, make_tiny

pytest_plugins = ("pytester",)  # tests/test_fixtures.py runs sessions of its own, to test these fixtures

_DROPPED_PREFIXES = ("VREASON_", "HF_", "HUGGINGFACE_")
_DROPPED_NAMES = ("TRANSFORMERS_OFFLINE",)
# VREASON_SIMD is the machine the run stands for (CI runs the suite once as an AVX2 laptop): kept.
_KEPT_NAMES = ("VREASON_SIMD",)
# The caller's value of every variable this run changed (None: it was unset), and the scratch folder.
_SAVED = pytest.StashKey[tuple[dict[str, str | None], Path]]()


def _isolated_environment(root: Path) -> dict[str, str | None]:
    """What to set (a str) or remove (None) so that every cache lies under `root`."""
    changes: dict[str, str | None] = {
        k: None for k in os.environ if (k.startswith(_DROPPED_PREFIXES) or k in _DROPPED_NAMES) and k not in _KEPT_NAMES
    }
    changes.update(
        VREASON_CACHE=str(root / "vreason"),  # repack verdicts, prefill speed, demo files
        HF_HOME=str(root / "hf"),  # token, stored tokens, xet cache
        HF_HUB_CACHE=str(root / "hf" / "hub"),  # models
        XDG_CACHE_HOME=str(root / "xdg"),  # anything else that follows the XDG default (~/.cache)
        XDG_DATA_HOME=str(root / "xdg-data"),  # the chat database (platformdirs' user data folder)
        # One cache folder serves the whole session, so a test's encoding would be loaded from disk by later
        # tests that expect to encode; tests of the encoding cache turn it on for themselves.
        VREASON_ENCODING_CACHE="off",
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
    try:
        use_default_simd()
    except SettingError as exc:  # a VREASON_SIMD this CPU cannot run stops the run here, in one line
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which kernels this run tests: the package's SIMD level and llama.cpp's build (they differ by CPU)."""
    import llama_cpp

    system = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return [f"vreason SIMD: {simd_level()} (this CPU and build: {', '.join(available_simd())})", f"llama.cpp: {system}"]


def pytest_unconfigure(config: pytest.Config) -> None:
    saved, root = config.stash[_SAVED]
    _apply(saved)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _simd_level_restored() -> None:
    """Every test starts at the SIMD level the run stands for (a few ctypes calls): one that switched
    kernels, to test each level, must not leave the tests after it on another."""
    use_default_simd()


@pytest.fixture(autouse=True)
def _open_operations_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every answer or encoding a test opened (`Engine.ask`, `Engine.encode`, from the test's own thread)
    and left open. An engine runs one operation at a time, and a test that fails part way through an answer
    keeps its handle alive (the traceback holds it): without this, a module's engine would raise EngineBusy
    in every later test, and one failure would read as many. Handles are held weakly: one a test drops is
    closed when collected, as without this fixture. Operations opened in other threads (the chat app's
    workers) are their thread's to close."""
    opened: list[weakref.ref] = []
    thread = threading.get_ident()

    def recording(method: Callable) -> Callable:
        @functools.wraps(method)
        def opens(self: Engine, *args: object, **kwargs: object) -> object:
            job = method(self, *args, **kwargs)
            if threading.get_ident() == thread:
                opened.append(weakref.ref(job))
            return job

        return opens

    for name in ("ask", "encode"):
        monkeypatch.setattr(Engine, name, recording(getattr(Engine, name)))
    yield
    for ref in opened:
        job = ref()
        if job is not None and not job.done:
            job.close()


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-second generated clip (4 frames per second) for tests that need some video, not a particular one;
    a module that needs another defines its own `clip`."""
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1.0, fps=4.0)


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

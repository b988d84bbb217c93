"""Helpers for the `vreason serve` tests: a real uvicorn server on a free loopback port, in a thread.

The server runs the app exactly as `vreason serve` does (uvicorn, its own event loop); only the port is
chosen by the OS (0), so tests in parallel runs never collide. Leaving the block stops it and waits for
its engine thread to end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import uvicorn

from vreason_local.engine import Engine
from vreason_local.serve.app import create_app
from vreason_local.serve.config import ServeOptions
from vreason_local.serve.media import MediaLimits
from vreason_local.settings import RunSettings
from vreason_local.tiny import TinyModel

KEY = "test-key-0123456789"
NAME = "tiny"


def server_settings(model, **values: object) -> RunSettings:
    """The server's defaults: the tiny model, few frames, short answers, a fixed context (so that a
    reference engine with the same settings computes exactly what the server's does), no disk cache."""
    base = {"model": str(model.model_path), "mmproj": str(model.mmproj_path), "max_tokens": 16}
    base |= {"fps": 2.0, "max_frames": 6, "ctx": 4096, "threads": 2}
    base["encoding_cache"] = False  # the engine's disk cache stays out: what is reused is the server's doing
    return RunSettings.from_values(base | values, hook=True)


def options(root: Path, tmp: Path, inline_cap: int = 8 * 1024 * 1024, **kw: object) -> ServeOptions:
    """The server's options: `root` the one media root, `tmp` the folder for inline media, a key."""
    return ServeOptions(NAME, MediaLimits.create([root], inline_cap, tmp), **{"api_key": KEY, **kw})


@contextmanager
def running(engine: Engine, settings: RunSettings, opts: ServeOptions) -> Iterator[str]:
    """Serve `engine` on 127.0.0.1 and yield the base URL (`http://127.0.0.1:PORT`)."""
    app = create_app(engine, settings, opts)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def serving(model: TinyModel, settings: RunSettings, opts: ServeOptions) -> Iterator[str]:
    """An engine of `model` (a tiny model) with `settings`, served as `running` serves one; closed after."""
    with Engine(model.model_path, model.mmproj_path, settings.engine) as engine, running(engine, settings, opts) as url:
        yield url


def client(url: str, timeout: float = 120) -> openai.OpenAI:
    """The `openai` client of a test server: its key, and no retries (a test sees the first reply)."""
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=timeout)

"""The server's one-engine queue on a real server: FIFO, 429 beyond `--queue`, cancellation of a request
whose client went away at any stage (waiting, encoding, decoding; streamed or not), the time limit.

The `fast` generated model has the full 151,936-token vocabulary, so its random answers run to their token
limit instead of meeting an end-of-text token early: a long answer keeps the engine busy for many seconds
unless it is cancelled, which is what these tests need to see.
"""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from serve_support import KEY, NAME, options, running, server_settings

from vreason_local.clips import make_clip
from vreason_local.engine import Engine
from vreason_local.tiny import make_tiny

AUTH = {"Authorization": f"Bearer {KEY}"}
LONG = 6000  # tokens: ~30 s of decoding on 2 cores, far longer than any test waits
FREE_WITHIN_S = 1.0  # the bound: the engine is free again within a second of the disconnect


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("fast"), arch="qwen25vl", shape="fast")


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    make_clip(d / "long.mp4", seconds=20.0, fps=10.0, size=(640, 480))
    return d


@pytest.fixture(scope="module")
def settings(fast):
    return server_settings(fast, ctx=8192)


@pytest.fixture(scope="module")
def engine(fast, settings):
    with Engine(fast.model_path, fast.mmproj_path, settings.engine) as eng:
        yield eng


@pytest.fixture(scope="module")
def server(engine, settings, media_dir, tmp_path_factory):
    with running(engine, settings, options(media_dir, tmp_path_factory.mktemp("inline"), queue=1)) as url:
        yield url


def body(max_tokens: int = LONG, stream: bool = False, **extra) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": "Go on."}], "max_tokens": max_tokens} | {
        "stream": stream,
        **extra,
    }


def video_body(media_dir, **extra) -> dict:
    content = [{"type": "video_url", "video_url": {"url": f"file://{media_dir / 'long.mp4'}"}}, "What happens?"]
    content[1] = {"type": "text", "text": content[1]}
    frames = {"fps": 10.0, "max_frames": 64}  # 64 frames of 336x252: ~1.5 s of encoding on 2 cores
    return body(stream=True, messages=[{"role": "user", "content": content}], vreason={"frames": frames}) | extra


def gauges(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", headers=AUTH).text
    return {m[1]: float(m[2]) for m in re.finditer(r"^(vreason_[a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def wait_idle(url: str, limit_s: float) -> float:
    """Seconds until the engine is idle and nothing waits; fails past `limit_s`."""
    t0 = time.perf_counter()
    while True:
        g = gauges(url)
        if g["vreason_busy"] == 0 and g["vreason_queue_depth"] == 0:
            return time.perf_counter() - t0
        assert time.perf_counter() - t0 < limit_s, f"still busy after {limit_s} s: {g}"
        time.sleep(0.02)


class Stream:
    """A streamed request read line by line; `close()` hangs up, as a client that goes away does."""

    def __init__(self, url: str, payload: dict) -> None:
        self.client = httpx.Client(timeout=60)
        self._cm = self.client.stream("POST", url + "/v1/chat/completions", json=payload, headers=AUTH)
        self.response = self._cm.__enter__()
        self.lines = self.response.iter_lines()

    def until(self, predicate) -> str:
        for line in self.lines:
            if predicate(line):
                return line
        raise AssertionError("the stream ended first")

    def close(self) -> float:
        self._cm.__exit__(None, None, None)
        self.client.close()
        return time.perf_counter()


def in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_for(predicate, limit_s: float = 10.0) -> None:
    t0 = time.perf_counter()
    while not predicate():
        assert time.perf_counter() - t0 < limit_s
        time.sleep(0.02)


def test_disconnect_while_decoding_frees_the_engine_within_a_second(server):
    s = Stream(server, body(stream=True))
    s.until(lambda line: '"content":"' in line and '"content":""' not in line)
    s.close()
    assert wait_idle(server, FREE_WITHIN_S) < FREE_WITHIN_S
    r = httpx.post(server + "/v1/chat/completions", json=body(4), headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_disconnect_of_a_plain_request_cancels_it_too(server):
    before = gauges(server).get('vreason_cancelled_total{reason="disconnected"}', 0)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after a second, and hangs up
        httpx.post(server + "/v1/chat/completions", json=body(), headers=AUTH, timeout=httpx.Timeout(60, read=1.0))
    assert wait_idle(server, FREE_WITHIN_S) < FREE_WITHIN_S
    assert gauges(server)['vreason_cancelled_total{reason="disconnected"}'] == before + 1


def test_disconnect_while_encoding_frees_the_engine_within_a_second(server, media_dir):
    s = Stream(server, video_body(media_dir))
    s.until(lambda line: line.startswith(": encode"))  # the progress comments while frames are encoded
    s.close()
    assert wait_idle(server, FREE_WITHIN_S) < FREE_WITHIN_S


def test_keep_alive_comments_and_progress_chunks_while_encoding(engine, settings, media_dir, tmp_path):
    """While frames are encoded no token comes: comment lines keep the stream open (every client ignores
    them), and a client that asked for telemetry gets the progress as chunks."""
    with running(engine, settings, options(media_dir, tmp_path, keepalive_s=0.02)) as url:
        s = Stream(
            url,
            video_body(media_dir, max_tokens=2, vreason={"frames": {"fps": 10.0, "max_frames": 64}, "telemetry": True}),
        )
        lines = []
        s.until(lambda line: lines.append(line) or '"content":"' in line and '"content":""' not in line)
        s.close()
        assert ": keep-alive" in lines and any(line.startswith(": encode ") for line in lines)
        progress = [line for line in lines if '"progress"' in line]
        assert progress and '"stage":"encode"' in progress[-1]


def test_beyond_the_queue_429_with_retry_after_and_a_waiting_request_can_leave(server):
    running_one = Stream(server, body(stream=True))
    running_one.until(lambda line: '"content"' in line)
    # one may wait (--queue 1): it hangs up after a second, while still waiting
    waiting, out = in_thread(
        lambda: httpx.post(
            server + "/v1/chat/completions", json=body(4), headers=AUTH, timeout=httpx.Timeout(60, read=1.0)
        )
    )
    wait_for(lambda: gauges(server)["vreason_queue_depth"] == 1)
    r = httpx.post(server + "/v1/chat/completions", json=body(4), headers=AUTH, timeout=60)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_exceeded" and r.json()["error"]["code"] == "queue_full"
    waiting.join(10)
    assert isinstance(out.get("error"), httpx.ReadTimeout)
    t0 = time.perf_counter()
    wait_for(lambda: gauges(server)["vreason_queue_depth"] == 0, FREE_WITHIN_S)
    assert time.perf_counter() - t0 < FREE_WITHIN_S and gauges(server)["vreason_busy"] == 1  # the first runs on
    running_one.close()
    wait_idle(server, FREE_WITHIN_S)


def test_waiting_requests_are_answered_in_the_order_they_came(engine, settings, media_dir, tmp_path):
    with running(engine, settings, options(media_dir, tmp_path, queue=3)) as url:
        first = Stream(url, body(stream=True))
        first.until(lambda line: '"content"' in line)
        done: list[tuple[str, int]] = []
        threads = []
        for i, name in enumerate("abc"):

            def post(name: str = name) -> None:
                r = httpx.post(url + "/v1/chat/completions", json=body(3), headers=AUTH, timeout=60)
                done.append((name, r.status_code))

            threads.append(in_thread(post)[0])
            wait_for(lambda i=i: gauges(url)["vreason_queue_depth"] == i + 1)
        assert done == []  # all wait behind the first
        first.close()
        for t in threads:
            t.join(30)
        assert done == [("a", 200), ("b", 200), ("c", 200)]


def test_the_time_limit_ends_an_answer_with_what_it_has(engine, settings, media_dir, tmp_path):
    with running(engine, settings, options(media_dir, tmp_path, time_limit_s=1.0)) as url:
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/chat/completions", json=body(), headers=AUTH, timeout=60)
        took = time.perf_counter() - t0
        assert r.status_code == 200 and took < 1.0 + FREE_WITHIN_S
        choice, used = r.json()["choices"][0], r.json()["usage"]
        assert choice["finish_reason"] == "length" and 0 < used["completion_tokens"] < LONG
        assert gauges(url)['vreason_cancelled_total{reason="time_limit"}'] == 1

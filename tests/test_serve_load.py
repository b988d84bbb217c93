"""A bounded load test on loopback: several clients at once, streamed and not, against one engine.

Every request must end with a complete answer or a 429 (the queue is kept short on purpose), no answer may
be mixed with another's (each greedy answer equals the same request answered alone), and the process's
memory must not grow from one round of the load to the next.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import pytest
from serve_support import NAME, options, server_settings, serving
from serve_support import client as client_of

from vreason_local.clips import make_clip

CLIENTS = 6
REQUESTS = 3  # per client
QUESTIONS = ("What happens?", "What colour is the square?", "Describe the motion.")
LIMIT_S = 120.0  # the whole round; a hang fails instead of stalling the run
RSS_GROWTH_MB = 40.0  # allowed from round 2 to round 3 (allocator noise; a leak of kept answers or media is more)


@pytest.fixture(scope="module")
def served(tiny_model_factory, tmp_path_factory):
    tiny = tiny_model_factory("qwen25vl")
    d = tmp_path_factory.mktemp("load")
    make_clip(d / "a.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    settings = server_settings(tiny, max_tokens=12)
    with serving(tiny, settings, options(d, d / "inline", queue=2)) as url:
        yield url, d


def request(client: openai.OpenAI, d: Path, i: int) -> tuple[str, list[int]]:
    """Request `i` of the mix: a question, a mode, streamed or not; its text and tokens."""
    question, mode = QUESTIONS[i % 3], ("", ":vreason")[i % 2]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": f"file://{d / 'a.mp4'}"}},
                {"type": "text", "text": question},
            ],
        }
    ]
    kw = {"model": NAME + mode, "messages": messages, "extra_body": {"vreason": {"telemetry": True}}}
    if i % 3 == 2:
        chunks = [c for c in client.chat.completions.create(stream=True, **kw) if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks).strip()
        tokens = [c.model_extra["vreason"]["token"] for c in chunks if "token" in (c.model_extra.get("vreason") or {})]
        return text, tokens
    r = client.chat.completions.create(**kw)
    return r.choices[0].message.content, r.model_extra["vreason"]["tokens"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_round(url: str, d: Path) -> list[tuple[int, object]]:
    """CLIENTS clients, each sending REQUESTS requests one after another; (request kind, result or 429)."""
    results: list[tuple[int, object]] = []
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        client = client_of(url, timeout=60)
        for k in range(REQUESTS):
            i = c * REQUESTS + k
            try:
                out: object = request(client, d, i)
            except openai.RateLimitError as exc:
                out = exc.status_code
            with lock:
                results.append((i % 6, out))

    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, LIMIT_S - (time.monotonic() - t0)))
    assert not any(t.is_alive() for t in threads), "the load did not end in time"
    return results


def test_concurrent_clients_get_whole_unmixed_answers_or_429(served):
    url, d = served
    client = client_of(url, timeout=60)
    alone = {kind: request(client, d, kind) for kind in range(6)}  # each kind of request, answered alone
    assert len({tuple(tokens) for _, tokens in alone.values()}) > 1  # the kinds differ: a mix-up would show
    rss = []
    for _ in range(3):
        results = load_round(url, d)
        assert len(results) == CLIENTS * REQUESTS
        answered = [(kind, out) for kind, out in results if out != 429]
        assert all(out == 429 or isinstance(out, tuple) for _, out in results)
        assert len(answered) >= CLIENTS  # the queue (2) and the running one let many through
        for kind, out in answered:
            assert out == alone[kind]
        rss.append(rss_mb())
    assert rss[2] - rss[1] < RSS_GROWTH_MB, rss

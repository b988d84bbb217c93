"""OpenAI's `logprobs` / `top_logprobs` through the real `openai` client, on a real server with a tiny model.

The values are checked three ways: against their own laws (log p <= 0, the chosen greedy token is the most
likely, the alternatives' mass at most 1), against a second engine's `Engine.ask` with `logprobs` set (the same
answer, computed in-process), and against torch's float64 log_softmax of the logits llama.cpp gave that
engine, captured where they leave llama.cpp (`Context.logits`), so the engine's own arithmetic is not trusted.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from serve_support import NAME, options, server_settings, serving
from serve_support import client as client_of

from vreason_local.clips import make_clip
from vreason_local.engine import Engine
from vreason_local.events import TokenEvent
from vreason_local.llama_backend import Context
from vreason_local.media import load_video

TOP = 3
# Measured on this CPU: the server against the reference engine 0 (the same llama.cpp computation, bit for bit);
# a streamed request against the same request again 0 (the second continues the cache, so its question's last
# token alone is decoded: another batch shape, which elsewhere may move llama.cpp's float32 logits by a few ulps,
# ~1e-6 on logits of ~10); torch against the engine at most 1.6e-15. The bounds leave room for other kernels.
SAME_BATCH = 1e-9
OTHER_BATCH = 1e-4


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    make_clip(d / "a.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    return d


@pytest.fixture(scope="module")
def settings(tiny):
    return server_settings(tiny)


@pytest.fixture(scope="module")
def client(tiny, settings, media_dir, tmp_path_factory):
    with serving(tiny, settings, options(media_dir, tmp_path_factory.mktemp("inline"))) as url:
        yield client_of(url)


@pytest.fixture(scope="module")
def reference(tiny, settings):
    with Engine(tiny.model_path, tiny.mmproj_path, settings.engine) as engine:
        yield engine


def messages(media_dir) -> list[dict]:
    video = {"type": "video_url", "video_url": {"url": f"file://{media_dir / 'a.mp4'}"}}
    return [{"role": "user", "content": [video, {"type": "text", "text": "What happens?"}]}]


def as_tuples(content) -> list[tuple]:
    """The entries as plain values: (token, logprob, bytes, ((token, logprob, bytes), ...))."""
    return [
        (e.token, e.logprob, e.bytes, tuple((t.token, t.logprob, t.bytes) for t in e.top_logprobs)) for e in content
    ]


def test_greedy_logprobs_obey_their_laws_and_equal_an_independent_computation(
    client, reference, settings, media_dir, monkeypatch
):
    r = client.chat.completions.create(
        model=NAME,
        messages=messages(media_dir),
        logprobs=True,
        top_logprobs=TOP,
        extra_body={"vreason": {"telemetry": True}},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens > 0
    for e in content:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == TOP and tops == sorted(tops, reverse=True)
        assert (e.token, e.logprob, e.bytes) == (e.top_logprobs[0].token, tops[0], e.top_logprobs[0].bytes)  # greedy
        assert e.logprob <= 0 and sum(math.exp(v) for v in tops) <= 1 + 1e-12
        assert e.token == bytes(e.bytes).decode("utf-8", errors="replace")

    # the same answer in-process, its logits captured where llama.cpp hands them over
    captured: list[np.ndarray] = []
    real_logits = Context.logits

    def capture(self: Context) -> np.ndarray:
        view = real_logits(self)
        captured.append(view.astype(np.float64))
        return view

    monkeypatch.setattr(Context, "logits", capture)
    media = load_video(media_dir / "a.mp4", settings.frames, 14, settings.token_budget).media
    gen = replace(settings.generation, logprobs=TOP)
    events = [e for e in reference.ask(media, "What happens?", gen) if isinstance(e, TokenEvent)]
    assert [e.token for e in events] == r.model_extra["vreason"]["tokens"]
    assert len(captured) == len(events) == len(content)
    for served, event, logits in zip(content, events, captured):
        assert served.logprob == pytest.approx(event.logprob, abs=SAME_BATCH)
        assert [t.logprob for t in served.top_logprobs] == pytest.approx(
            [v for _, v in event.top_logprobs], abs=SAME_BATCH
        )
        ref = torch.log_softmax(torch.from_numpy(logits), dim=0).numpy()
        assert event.logprob == pytest.approx(ref[event.token], abs=SAME_BATCH)
        assert [i for i, _ in event.top_logprobs] == list(np.argsort(-ref, kind="stable")[:TOP])
        assert [v for _, v in event.top_logprobs] == pytest.approx(np.sort(ref)[::-1][:TOP], abs=SAME_BATCH)
        text = [reference.model.piece(i)[0].decode("utf-8", errors="replace") for i, _ in event.top_logprobs]
        assert [t.token for t in served.top_logprobs] == text


def test_streamed_logprobs_equal_the_whole_response(client, media_dir):
    kw = {"model": NAME, "messages": messages(media_dir), "logprobs": True, "top_logprobs": TOP}
    whole = client.chat.completions.create(**kw).choices[0].logprobs.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    a, b = as_tuples(whole), as_tuples(streamed)
    assert [(t, by, [x[0] for x in top]) for t, _, by, top in a] == [
        (t, by, [x[0] for x in top]) for t, _, by, top in b
    ]
    assert [lp for _, lp, _, _ in a] == pytest.approx([lp for _, lp, _, _ in b], abs=OTHER_BATCH)
    # the chunks that carry text carry its token's entry: the text is the entries' concatenation, tags aside
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and text.strip() in "".join(t for t, _, _, _ in b)


def test_without_logprobs_there_are_none_and_zero_alternatives_gives_the_token_alone(client, media_dir):
    plain = client.chat.completions.create(model=NAME, messages=messages(media_dir), max_tokens=3)
    assert plain.choices[0].logprobs is None
    chunks = [
        c for c in client.chat.completions.create(model=NAME, messages=messages(media_dir), max_tokens=3, stream=True)
    ]
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
    bare = client.chat.completions.create(model=NAME, messages=messages(media_dir), max_tokens=3, logprobs=True)
    content = bare.choices[0].logprobs.content
    assert len(content) == bare.usage.completion_tokens and all(
        e.top_logprobs == [] and e.logprob <= 0 for e in content
    )

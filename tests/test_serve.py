"""`vreason serve` through the real `openai` client, against a real uvicorn server on a loopback port.

A tiny random-weight model, generated clips and images. The server's greedy answers are compared token for
token with a second engine's `Engine.ask` on the same settings (an independent computation of the same
answer); the shapes with what the `openai` client parses (it raises on anything it cannot read).
"""

from __future__ import annotations

import json
import sys

import cv2
import httpx
import openai
import pytest
from serve_support import KEY, NAME, options, server_settings, serving
from serve_support import client as client_of

from vreason_local.clips import make_clip
from vreason_local.decoding import decoding_for
from vreason_local.engine import Engine
from vreason_local.events import Answer, TokenEvent
from vreason_local.media import Media, load_image, load_video
from vreason_local.serve import stream

QUESTION = "What happens in the video?"


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    clip = make_clip(d / "a.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    cap = cv2.VideoCapture(str(clip))
    ok, frame = cap.read()
    cap.release()
    assert ok
    cv2.imwrite(str(d / "still.png"), frame)
    return d


@pytest.fixture(scope="module")
def settings(tiny):
    return server_settings(tiny)


@pytest.fixture(scope="module")
def server(tiny, settings, media_dir, tmp_path_factory):
    with serving(tiny, settings, options(media_dir, tmp_path_factory.mktemp("inline"))) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return client_of(server)


@pytest.fixture(scope="module")
def reference(tiny, settings):
    """An engine of its own, answering as the server's should: `(media, question, mode) -> Answer`."""
    with Engine(tiny.model_path, tiny.mmproj_path, settings.engine) as engine:

        def ask(media: Media, question: str = QUESTION, mode: str = "base", **kw) -> Answer:
            decoding = decoding_for(mode, settings.vreason)
            return engine.ask(media, question, settings.generation, decoding, **kw).result()

        yield ask


def video_part(path) -> dict:
    return {"type": "video_url", "video_url": {"url": f"file://{path}"}}


def video_messages(media_dir, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [video_part(media_dir / "a.mp4"), {"type": "text", "text": question}]}]


def clip_media(media_dir, settings) -> Media:
    return load_video(media_dir / "a.mp4", settings.frames, 14, settings.token_budget).media


TELEMETRY = {"vreason": {"telemetry": True}}


def test_models_lists_a_model_id_per_mode(client):
    assert [m.id for m in client.models.list()] == [NAME, f"{NAME}:vreason", f"{NAME}:lite"]


def test_video_answer_is_engine_ask_token_for_token(client, media_dir, settings, reference):
    r = client.chat.completions.create(model=NAME, messages=video_messages(media_dir), extra_body=TELEMETRY)
    ref = reference(clip_media(media_dir, settings))
    assert r.model_extra["vreason"]["tokens"] == ref.tokens
    assert r.choices[0].message.content == ref.answer
    assert r.choices[0].finish_reason == stream.FINISH[ref.stop_reason]
    assert r.usage.prompt_tokens == len(ref.prompt_tokens) and r.usage.completion_tokens == len(ref.tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens is not None


def test_streamed_answer_equals_engine_ask_and_ends_with_usage(client, media_dir, settings, reference):
    chunks = list(
        client.chat.completions.create(
            model=f"{NAME}:vreason",
            messages=video_messages(media_dir),
            stream=True,
            stream_options={"include_usage": True},
            extra_body=TELEMETRY,
        )
    )
    ref = reference(clip_media(media_dir, settings), mode="vreason")
    with_choice = [c for c in chunks if c.choices]
    assert with_choice[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choice)
    assert text.strip() == ref.answer
    tokens = [c.model_extra["vreason"]["token"] for c in with_choice if "token" in (c.model_extra.get("vreason") or {})]
    assert tokens == ref.tokens
    assert with_choice[-1].choices[0].finish_reason == stream.FINISH[ref.stop_reason]
    assert all(c.usage is None for c in with_choice)
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == len(ref.tokens)
    assert last.usage.prompt_tokens == len(ref.prompt_tokens)
    # V-Reason's controller ran on every token, and the chunks say what it did
    states = [c.model_extra["vreason"] for c in with_choice if "ema" in (c.model_extra.get("vreason") or {})]
    assert len(states) == len(ref.tokens)
    assert [s["entropy"] for s in states] == pytest.approx(ref.entropy, abs=1e-6)


def test_stream_without_include_usage_has_no_usage(client, media_dir):
    chunks = list(client.chat.completions.create(model=NAME, messages=video_messages(media_dir), stream=True))
    assert chunks and all(c.choices and c.usage is None for c in chunks)
    assert "usage" not in chunks[0].model_fields_set


def test_image_and_text_only_answers_equal_engine_ask(client, media_dir, settings, reference):
    image = [{"type": "image_url", "image_url": {"url": f"file://{media_dir / 'still.png'}"}}]
    r = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": image + [{"type": "text", "text": "What is shown?"}]}],
        extra_body=TELEMETRY,
    )
    ref = reference(load_image(media_dir / "still.png", settings.frames.max_pixels, 14).media, "What is shown?")
    assert r.model_extra["vreason"]["tokens"] == ref.tokens and ref.n_media_tokens > 0
    r = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Say something."}], extra_body=TELEMETRY
    )
    ref = reference(Media.none(), "Say something.")
    assert r.model_extra["vreason"]["tokens"] == ref.tokens and r.usage.prompt_tokens == len(ref.prompt_tokens)


@pytest.mark.parametrize("mode", ["lite", "vreason"])
def test_mode_by_model_id_and_by_body_agree(client, media_dir, settings, reference, mode):
    by_id = client.chat.completions.create(
        model=f"{NAME}:{mode}", messages=video_messages(media_dir), extra_body=TELEMETRY
    )
    by_body = client.chat.completions.create(
        model=NAME, messages=video_messages(media_dir), extra_body={"vreason": {"mode": mode, "telemetry": True}}
    )
    ref = reference(clip_media(media_dir, settings), mode=mode)
    assert by_id.model_extra["vreason"]["mode"] == by_body.model_extra["vreason"]["mode"] == mode
    assert by_id.model_extra["vreason"]["tokens"] == by_body.model_extra["vreason"]["tokens"] == ref.tokens


def test_reasoning_goes_to_reasoning_content_and_the_answer_to_content():
    """The engine splits `<think>` from `<answer>` as it streams (a random model never writes the tags, so
    the split is fed here as the engine yields it); the chunks and the message put each part in its field."""
    chunks = stream.Chunks("id", 0, NAME, include_usage=False)
    parts = [(("reasoning", "\nfirst "),), (("reasoning", "look"), ("answer", "\n")), (("answer", "a cat"),)]
    deltas = [d for i, p in enumerate(parts) for d in chunks.deltas(TokenEvent(i + 1, 0, "", 0.0, 0.0, None, p))]
    assert deltas == [
        {"reasoning_content": "first ", "reasoning": "first "},
        {"reasoning_content": "look", "reasoning": "look"},
        {"content": "a cat"},
    ]
    answer = Answer(mode="base", question="q", reasoning="first look", answer="a cat", stop_reason="answer")
    message = stream.completion("id", 0, NAME, answer, 0, telemetry=False)["choices"][0]
    assert message["message"] == {
        "role": "assistant",
        "content": "a cat",
        "reasoning_content": "first look",
        "reasoning": "first look",
    }
    assert message["finish_reason"] == "stop"


def test_health_needs_no_key_every_other_route_does(server):
    assert httpx.get(server + "/health").json()["status"] == "ok"
    for path in ("/v1/models", "/metrics"):
        for headers, code in (({}, "missing_api_key"), ({"Authorization": "Bearer wrong"}, "invalid_api_key")):
            r = httpx.get(server + path, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == code
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server + "/v1/chat/completions", json={"model": NAME, "messages": []})
    assert r.status_code == 401
    assert httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_body_over_the_cap_is_413_declared_or_not(tiny, settings, media_dir, tmp_path):
    with serving(tiny, settings, options(media_dir, tmp_path, max_body_bytes=1000)) as url:
        auth = {"Authorization": f"Bearer {KEY}"}
        body = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "x" * 2000}]}).encode()
        r = httpx.post(url + "/v1/chat/completions", content=body, headers=auth)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunked():  # no Content-Length: the cap holds while the body arrives
            yield body[:600]
            yield body[600:]

        r = httpx.post(url + "/v1/chat/completions", content=chunked(), headers=auth)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        small = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert httpx.post(url + "/v1/chat/completions", json=small, headers=auth).status_code == 200


def test_unknown_route_and_bad_json_are_openai_errors(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(server + "/v1/nothing", headers=auth)
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_cli_refuses_a_public_address_without_a_key(vreason):
    code, _, err = vreason(["serve", "--host", "0.0.0.0"])
    assert code == 2 and "--api-key" in err and len(err.strip().splitlines()) == 1


def test_cli_without_the_server_packages_says_how_to_install(vreason, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what `import uvicorn` meets where it is not installed
    code, _, err = vreason(["serve"])
    assert code == 2 and 'pip install "vreason-local[serve]"' in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("streamed", [False, True])
def test_a_stop_sequence_ends_the_answer_before_it(client, media_dir, settings, reference, streamed):
    full = reference(clip_media(media_dir, settings)).answer
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    kw = {"model": NAME, "messages": video_messages(media_dir), "stop": [stop, "never-there"]}
    if streamed:
        chunks = [c for c in client.chat.completions.create(stream=True, **kw) if c.choices]
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = client.chat.completions.create(**kw).choices[0]
        content, finish = choice.message.content, choice.finish_reason
    assert content == full[: full.index(stop)] and finish == "stop"


def test_stop_text_holds_back_what_may_become_a_stop_sequence():
    s = stream.StopText(("END", "xy"))
    assert [s.feed(t) for t in ("abE", "N", "c x", "E", "ND more")] == ["ab", "", "ENc ", "x", ""]
    assert s.hit and s.flush() == ""
    s = stream.StopText(("END",))
    assert s.feed("aEN") == "a" and s.flush() == "EN"


def test_the_command_serves_until_ctrl_c(tiny, media_dir):
    """`vreason serve` as a user starts it: one line with its URL, answers, one log line per request, and
    Ctrl-C ends it as it ends every command (exit 130, no traceback)."""
    import signal
    import subprocess

    args = ["--model", str(tiny.model_path), "--mmproj", str(tiny.mmproj_path), "--port", "0", "--max-tokens", "3"]
    p = subprocess.Popen(
        [sys.executable, "-m", "vreason_local.cli", "serve", *args, "--media-root", str(media_dir)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while "vreason serve: http://" not in (line := p.stderr.readline()):
            assert line, "the server ended before it said where it listens"
        url = line.split("vreason serve: ")[1].split("/v1")[0]
        assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = c.chat.completions.create(model=tiny.model_path.stem, messages=video_messages(media_dir))
        assert r.usage.completion_tokens <= 3 and r.usage.prompt_tokens > 100
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and "Traceback" not in err  # the house's exit code for Ctrl-C
    assert "POST /v1/chat/completions 200" in err


def test_a_port_in_use_is_one_line(vreason, tiny):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code, _, err = vreason(["serve", "--model", str(tiny.model_path), "--port", str(port)])
    assert code == 2 and f"127.0.0.1:{port}" in err and "--port" in err and len(err.strip().splitlines()) == 1


def test_an_error_after_the_stream_began_is_its_last_chunk(server, media_dir):
    """A video is encoded before its answer is checked against the context: an answer that cannot fit is
    found once the stream has begun (status 200), so it ends the stream as an error chunk, which the
    `openai` client raises."""
    clip = make_clip(media_dir / "unseen.mp4", seconds=4.0, fps=10.0, size=(224, 168), seed=5)
    messages = [{"role": "user", "content": [video_part(clip), {"type": "text", "text": "Go on."}]}]
    body = {"model": NAME, "messages": messages, "stream": True, "max_tokens": 4000}
    with httpx.stream(
        "POST", server + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        assert r.status_code == 200
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"} and "context" in error["message"]
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)
    fewer_frames = {"vreason": {"frames": {"max_frames": 4}}}  # other frames: encoded anew, so found in the stream
    with pytest.raises(openai.APIError, match="context"):
        list(
            client.chat.completions.create(
                model=NAME, messages=messages, stream=True, max_tokens=4000, extra_body=fewer_frames
            )
        )

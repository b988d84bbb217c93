"""`vreason serve` at the HTTP level, on a real server: bad requests of every kind (the right status,
OpenAI's error shape, and the server answering the next request), CORS only when asked, one log line per
request without keys or media, inline media removed once answered.
"""

from __future__ import annotations

import base64
import logging
import os
import time

import httpx
import pytest
from serve_support import KEY, NAME, options, running, server_settings, serving

from vreason_local.clips import make_clip, make_image
from vreason_local.engine import Engine

AUTH = {"Authorization": f"Bearer {KEY}"}
N_BAD = 33  # the bad requests below
CAP = 200_000  # the body cap of these tests' server
INLINE_CAP = 100_000  # and its cap on inline media (decoded)


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("http")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    make_clip(root / "a.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    make_clip(root / "b.mp4", seconds=4.0, fps=10.0, size=(160, 120), seed=3)
    make_clip(root / "big.mp4", seconds=4.0, fps=10.0, size=(640, 480))
    make_image(root / "still.png")
    (root / "notes.mp4").write_text("these are notes, not a video\n" * 20)
    make_clip(outside / "secret.mp4", seconds=2.0, fps=10.0, size=(160, 120))
    os.symlink(outside / "secret.mp4", root / "link.mp4")
    return {"root": root, "outside": outside, "tmp": base / "inline"}


@pytest.fixture(scope="module")
def settings(tiny):
    return server_settings(tiny, max_tokens=8)


@pytest.fixture(scope="module")
def server(tiny, settings, files):
    files["tmp"].mkdir(exist_ok=True)
    with serving(tiny, settings, options(files["root"], files["tmp"], INLINE_CAP, max_body_bytes=CAP)) as url:
        yield url


def video(url: str, text: str = "What happens?", kind: str = "video_url") -> dict:
    return {"role": "user", "content": [{"type": kind, kind: {"url": url}}, {"type": "text", "text": text}]}


def chat(**kw) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": "Hi"}]} | kw


def clip_url(files, name: str = "a.mp4") -> str:
    return f"file://{files['root'] / name}"


# (name, request body or raw bytes, headers, status, error code or None, param or None)
def bad_requests(files) -> list[tuple]:
    a = clip_url(files)
    big = {"fps": 10.0, "max_frames": 40, "max_pixels": 640 * 480}  # ~7,500 vision tokens: over the 4,096 context
    return [
        ("unknown model", chat(model="gpt-4o"), AUTH, 404, "model_not_found", "model"),
        ("n=2", chat(n=2), AUTH, 400, None, "n"),
        ("unknown part type", chat(messages=[{"role": "user", "content": [{"type": "audio", "audio": {}}]}]), AUTH, 400, None, None),
        ("remote url", chat(messages=[video("https://example.com/v.mp4")]), AUTH, 400, None, None),
        ("path outside the root", chat(messages=[video(f"file://{files['outside'] / 'secret.mp4'}")]), AUTH, 400, None, None),
        ("symlink escape", chat(messages=[video(clip_url(files, "link.mp4"))]), AUTH, 400, None, None),
        ("dot-dot", chat(messages=[video(f"file://{files['root']}/../outside/secret.mp4")]), AUTH, 400, None, None),
        ("bad base64", chat(messages=[video("data:video/mp4;base64,@@@@not*base64@@@@")]), AUTH, 400, None, None),
        ("text file as video", chat(messages=[video(clip_url(files, "notes.mp4"))]), AUTH, 400, None, None),
        ("text file as video, streamed", chat(messages=[video(clip_url(files, "notes.mp4"))], stream=True), AUTH, 400, None, None),
        ("video as image", chat(messages=[video(a, kind="image_url")]), AUTH, 400, None, None),
        ("missing key", chat(), {}, 401, "missing_api_key", None),
        ("wrong key", chat(), {"Authorization": "Bearer nope"}, 401, "invalid_api_key", None),
        ("malformed JSON", b'{"model": "tiny", ', AUTH, 400, "invalid_json", None),
        ("body not an object", [1, 2], AUTH, 400, None, None),
        ("oversized body", chat(messages=[{"role": "user", "content": "x" * CAP}]), AUTH, 413, "body_too_large", None),
        ("inline media over the cap", chat(messages=[video("data:video/mp4;base64," + "A" * (CAP - 1000))]), AUTH, 413, None, None),
        ("temperature below 0", chat(temperature=-1), AUTH, 400, None, "temperature"),
        ("top_p above 1", chat(top_p=2), AUTH, 400, None, "top_p"),
        ("max_tokens 0", chat(max_tokens=0), AUTH, 400, None, "max_tokens"),
        ("a string as max_tokens", chat(max_tokens="many"), AUTH, 400, None, "max_tokens"),
        ("an answer that does not fit", chat(messages=[video(a)], max_tokens=100_000), AUTH, 400, None, "max_tokens"),
        ("a video that does not fit", chat(messages=[video(clip_url(files, "big.mp4"))], vreason={"frames": big}), AUTH, 400, None, None),
        ("no messages", {"model": NAME}, AUTH, 400, None, "messages"),
        ("empty messages", chat(messages=[]), AUTH, 400, None, "messages"),
        ("last message not the user's", chat(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]), AUTH, 400, None, None),
        ("two videos", chat(messages=[video(a), {"role": "assistant", "content": "ok"}, video(clip_url(files, "b.mp4"))]), AUTH, 400, None, None),
        ("unknown mode", chat(vreason={"mode": "turbo"}), AUTH, 400, None, None),
        ("mode conflict", chat(model=f"{NAME}:lite", vreason={"mode": "vreason"}), AUTH, 400, None, None),
        ("unknown vreason key", chat(vreason={"betta": 0.5}), AUTH, 400, None, None),
        ("logprobs not a boolean", chat(logprobs="yes"), AUTH, 400, None, "logprobs"),
        ("top_logprobs out of range", chat(logprobs=True, top_logprobs=50), AUTH, 400, None, "top_logprobs"),
        ("unknown uuid", chat(messages=[{"role": "user", "content": [{"type": "video_url", "video_url": None, "uuid": "x"}, {"type": "text", "text": "Hi"}]}]), AUTH, 400, "unknown_media_uuid", None),
    ]  # fmt: skip


def test_at_least_25_bad_requests(files):
    assert len(bad_requests(files)) == N_BAD >= 25


@pytest.mark.parametrize("index", range(N_BAD))
def test_a_bad_request_gets_its_status_in_openai_shape_and_the_server_goes_on(server, files, index):
    name, payload, headers, status, code, param = bad_requests(files)[index]
    if isinstance(payload, bytes):
        r = httpx.post(server + "/v1/chat/completions", content=payload, headers=headers, timeout=60)
    else:
        r = httpx.post(server + "/v1/chat/completions", json=payload, headers=headers, timeout=60)
    assert r.status_code == status, (name, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], name
    assert "Traceback" not in error["message"] and str(files["tmp"]) not in error["message"]
    if code is not None:
        assert error["code"] == code, (name, error)
    if param is not None:
        assert error["param"] == param, (name, error)
    ok = httpx.post(server + "/v1/chat/completions", json=chat(max_tokens=2), headers=AUTH, timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_wrong_method_is_405_in_openai_shape(server):
    r = httpx.get(server + "/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_inline_media_is_answered_then_removed(server, files):
    data = base64.b64encode((files["root"] / "still.png").read_bytes()).decode()
    payload = chat(messages=[video(f"data:image/png;base64,{data}", "What is shown?", kind="image_url")])
    r = httpx.post(server + "/v1/chat/completions", json=payload, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 50  # the image's tokens are in it
    assert list(files["tmp"].iterdir()) == []


def _log_lines(caplog, n: int, limit_s: float = 10.0) -> list[str]:
    """The server's `n` log lines, waited for: each is written once its response is sent, in the server's
    thread, so the client may read the response first (CI once saw the 401's line not yet there)."""

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "vreason.serve"]

    t0 = time.monotonic()
    while len(lines()) < n:
        assert time.monotonic() - t0 < limit_s, lines()
        time.sleep(0.01)
    time.sleep(0.1)  # and no line beyond the n expected
    assert len(found := lines()) == n, found
    return found


def test_one_log_line_per_request_without_key_or_media(server, files, caplog):
    caplog.set_level(logging.INFO, logger="vreason.serve")
    data = base64.b64encode((files["root"] / "still.png").read_bytes()).decode()
    payload = chat(messages=[video(f"data:image/png;base64,{data}", "What is shown?", kind="image_url")])
    httpx.post(server + "/v1/chat/completions", json=payload, headers=AUTH, timeout=60)
    httpx.get(server + "/v1/models", headers={"Authorization": "Bearer wrong-key-value"})
    lines = _log_lines(caplog, 2)
    post, get = (next(line for line in lines if line.startswith(method)) for method in ("POST ", "GET "))
    assert post.startswith("POST /v1/chat/completions 200 ") and f"model={NAME}" in post
    assert "prompt=" in post and "completion=" in post
    assert get.startswith("GET /v1/models 401 ")
    assert not any(KEY in line or "wrong-key-value" in line or data[:40] in line for line in lines)


def test_cors_only_for_the_origins_given(tiny, settings, files, tmp_path):
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}
    with Engine(tiny.model_path, tiny.mmproj_path, settings.engine) as engine:
        with running(engine, settings, options(files["root"], tmp_path, cors_origins=("http://ui.example",))) as url:
            r = httpx.options(url + "/v1/chat/completions", headers=preflight)
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ui.example"
            r = httpx.get(url + "/v1/models", headers=AUTH | {"Origin": "http://ui.example"})
            assert r.headers["access-control-allow-origin"] == "http://ui.example"
            r = httpx.get(url + "/v1/models", headers=AUTH | {"Origin": "http://evil.example"})
            assert "access-control-allow-origin" not in r.headers
            r = httpx.get(url + "/v1/models", headers={"Origin": "http://ui.example"})  # the browser reads the 401
            assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://ui.example"
        with running(engine, settings, options(files["root"], tmp_path)) as url:
            r = httpx.get(url + "/v1/models", headers=AUTH | {"Origin": "http://ui.example"})
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_metrics_count_requests_by_status_and_tokens(server, files):
    def counters() -> dict[str, float]:
        text = httpx.get(server + "/metrics", headers=AUTH).text
        assert "# TYPE vreason_requests_total counter" in text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}

    before = counters()
    ok = httpx.post(server + "/v1/chat/completions", json=chat(max_tokens=3), headers=AUTH, timeout=60).json()
    httpx.post(server + "/v1/chat/completions", json=chat(top_p=2), headers=AUTH, timeout=60)
    httpx.post(server + "/v1/chat/completions", json=chat(), timeout=60)  # no key
    after = counters()

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert delta('vreason_requests_total{status="200"}') == 1
    assert delta('vreason_requests_total{status="400"}') == 1 and delta('vreason_requests_total{status="401"}') == 1
    assert delta("vreason_completion_tokens_total") == 3
    assert delta("vreason_prompt_tokens_total") == ok["usage"]["prompt_tokens"]
    assert after["vreason_queue_depth"] == 0 and after["vreason_busy"] == 0

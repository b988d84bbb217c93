"""What the server keeps between requests, on a real server: encodings (by content, frame settings and
system prompt, within --cache-gb), a conversation resent with its history (continued in the engine's cache,
`cached_tokens` saying how much), and a `uuid` that lets a follow-up omit the video.

Each answer is compared with a second engine's `Engine.ask` (with `follow_up` where the conversation goes on),
so reuse is checked to change nothing in the answers, only what is computed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil

import httpx
import openai
import pytest
from serve_support import KEY, NAME, client, options, running, server_settings

from vreason_local.clips import make_clip
from vreason_local.decoding import decoding_for
from vreason_local.engine import Engine
from vreason_local.media import load_video
from vreason_local.serve import cache
from vreason_local.serve.cache import encoding_bytes

AUTH = {"Authorization": f"Bearer {KEY}"}
TELEMETRY = {"vreason": {"telemetry": True}}


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    make_clip(d / "a.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    make_clip(d / "b.mp4", seconds=4.0, fps=10.0, size=(160, 120), seed=3)
    shutil.copy(d / "a.mp4", d / "a-copy.mp4")
    return d


@pytest.fixture(scope="module")
def settings(tiny):
    return server_settings(tiny)


@pytest.fixture(scope="module")
def engine(tiny, settings):
    with Engine(tiny.model_path, tiny.mmproj_path, settings.engine) as eng:
        yield eng


@pytest.fixture
def server(engine, settings, media_dir, tmp_path):
    """A fresh server (nothing kept yet) on the module's engine."""
    with running(engine, settings, options(media_dir, tmp_path)) as url:
        yield url


@pytest.fixture(scope="module")
def ref(tiny, settings, media_dir):
    """The reference engine, and the clip's media and prefix length as it computes them."""
    with Engine(tiny.model_path, tiny.mmproj_path, settings.engine) as eng:
        media = load_video(media_dir / "a.mp4", settings.frames, 14).media
        n_prefix = eng.encode(media).result().n_tokens
        yield eng, media, n_prefix


def ask_ref(ref, settings, question: str, follow_up=None):
    eng, media, _ = ref
    return eng.ask(media, question, settings.generation, decoding_for("base"), follow_up=follow_up).result()


def user(text: str, video: str | None = "a.mp4", media_dir=None, uuid: str | None = None) -> dict:
    parts: list[dict] = []
    if video or uuid:
        part: dict = {"type": "video_url", "video_url": {"url": f"file://{media_dir / video}"} if video else None}
        if uuid:
            part["uuid"] = uuid
        parts.append(part)
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def counter(url: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", httpx.get(url + "/metrics", headers=AUTH).text, re.M)
    return float(m[1])


def test_the_same_video_is_encoded_once_whatever_its_file_name(server, media_dir, ref):
    c, n_prefix = client(server), ref[2]
    c.chat.completions.create(model=NAME, messages=[user("What happens?", "b.mp4", media_dir)])  # another video first
    first = c.chat.completions.create(model=NAME, messages=[user("What happens?", media_dir=media_dir)])
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # encoded for this request
    again = c.chat.completions.create(model=NAME, messages=[user("Who is there?", "a-copy.mp4", media_dir)])
    assert again.usage.prompt_tokens_details.cached_tokens >= n_prefix
    assert counter(server, "vreason_encoding_cache_hits_total") == 1
    assert counter(server, "vreason_encoding_cache_misses_total") == 2
    # other frames (another frame limit) are another encoding
    c.chat.completions.create(
        model=NAME,
        messages=[user("What happens?", media_dir=media_dir)],
        extra_body={"vreason": {"frames": {"max_frames": 4}}},
    )
    assert counter(server, "vreason_encoding_cache_misses_total") == 3
    assert counter(server, "vreason_encoding_cache_entries") == 3


def test_no_cache_memory_means_encoding_again(engine, settings, media_dir, tmp_path):
    with running(engine, settings, options(media_dir, tmp_path, cache_bytes=0)) as url:
        for _ in range(2):
            client(url).chat.completions.create(model=NAME, messages=[user("What happens?", media_dir=media_dir)])
        assert counter(url, "vreason_encoding_cache_misses_total") == 2
        assert counter(url, "vreason_encoding_cache_bytes") == 0


def test_a_resent_conversation_continues_the_answer_in_the_cache(server, media_dir, settings, ref):
    c, n_prefix = client(server), ref[2]
    q1, q2 = "What happens?", "And then?"
    first = c.chat.completions.create(model=NAME, messages=[user(q1, media_dir=media_dir)], extra_body=TELEMETRY)
    history = [user(q1, media_dir=media_dir), {"role": "assistant", "content": first.choices[0].message.content}]
    second = c.chat.completions.create(model=NAME, messages=history + [user(q2, None)], extra_body=TELEMETRY)
    r1 = ask_ref(ref, settings, q1)
    r2 = ask_ref(ref, settings, q2, follow_up=r1)
    assert first.model_extra["vreason"]["tokens"] == r1.tokens
    assert second.model_extra["vreason"]["tokens"] == r2.tokens  # the follow-up is Engine.ask's follow-up
    assert second.usage.prompt_tokens == len(r2.prompt_tokens)
    # computed for it: the new turn's tokens (after the first answer's history) and the first answer's last
    # token, which was sampled but never decoded into the cache (unless it ended the answer)
    new = len(r2.prompt_tokens) - n_prefix - len(r1.history)
    expected = len(r2.prompt_tokens) - new - (0 if r1.stop_reason == "eos" else 1)
    assert second.usage.prompt_tokens_details.cached_tokens == expected


def test_a_history_the_server_never_saw_is_rebuilt_from_its_text(server, media_dir, ref):
    c, n_prefix = client(server), ref[2]
    c.chat.completions.create(model=NAME, messages=[user("Hi", "b.mp4", media_dir)])  # a is not in the engine now
    messages = [
        user("What happens?", media_dir=media_dir),
        {"role": "assistant", "content": "A red square moves to the left."},
        user("And then?", None),
    ]
    r = c.chat.completions.create(model=NAME, messages=messages)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0
    # the prefix was encoded for it (nothing was kept); the rest was prefilled from the text
    assert r.usage.prompt_tokens_details.cached_tokens == 0 and r.usage.prompt_tokens > n_prefix


def test_a_uuid_lets_a_follow_up_omit_the_video(server, media_dir, settings, ref):
    c = client(server)
    q1, q2 = "What happens?", "And then?"
    first = c.chat.completions.create(
        model=NAME, messages=[user(q1, media_dir=media_dir, uuid="clip-a")], extra_body=TELEMETRY
    )
    messages = [
        user(q1, None, uuid="clip-a"),
        {"role": "assistant", "content": first.choices[0].message.content},
        user(q2, None),
    ]
    second = c.chat.completions.create(model=NAME, messages=messages, extra_body=TELEMETRY)
    r2 = ask_ref(ref, settings, q2, follow_up=ask_ref(ref, settings, q1))
    assert second.model_extra["vreason"]["tokens"] == r2.tokens
    assert second.usage.prompt_tokens_details.cached_tokens > ref[2]
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model=NAME, messages=[user(q1, None, uuid="never-sent")])
    assert exc.value.body["code"] == "unknown_media_uuid"


def test_the_least_recently_used_encoding_goes_first_when_memory_is_full(engine, settings, media_dir, tmp_path):
    """Room for either clip's encoding but not both (their sizes as the cache counts them, measured on encodings
    of the same frames): asking about b drops a, and a is encoded again."""
    sizes = []
    for name in ("a.mp4", "b.mp4"):
        media = load_video(media_dir / name, settings.frames, 14).media
        sizes.append(encoding_bytes(engine.encode(media).result(), engine.info.kv_bytes_per_token))
    room = max(sizes) + min(sizes) // 2
    with running(engine, settings, options(media_dir, tmp_path, cache_bytes=room)) as url:
        c = client(url)
        for name in ("a.mp4", "a.mp4", "b.mp4", "a.mp4"):
            c.chat.completions.create(model=NAME, messages=[user("What happens?", name, media_dir)])
        assert counter(url, "vreason_encoding_cache_hits_total") == 1  # a's second question only
        assert counter(url, "vreason_encoding_cache_misses_total") == 3
        assert counter(url, "vreason_encoding_cache_entries") == 1
        assert counter(url, "vreason_encoding_cache_bytes") <= room


def test_a_restarted_server_loads_the_encoding_from_disk(tiny, media_dir, ref, tmp_path, monkeypatch):
    """The engine's disk cache on (as `vreason serve` runs by default): a second server process-alike (a new
    engine) answers the same question without encoding, says so in `cached_tokens` (the whole prefix) and in
    /metrics (no encoder seconds), and answers exactly as before."""
    monkeypatch.setenv("VREASON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VREASON_ENCODING_CACHE", "on")
    settings = server_settings(tiny, encoding_cache=True)
    n_prefix, answers = ref[2], []
    for life in range(2):
        with Engine(tiny.model_path, tiny.mmproj_path, settings.engine) as eng:
            with running(eng, settings, options(media_dir, tmp_path / f"inline{life}")) as url:
                done = client(url).chat.completions.create(
                    model=NAME, messages=[user("What happens?", media_dir=media_dir)]
                )
                answers.append((done.choices[0].message.content, done.usage.prompt_tokens_details.cached_tokens))
                encode_s = counter(url, "vreason_encode_seconds_total")
        assert (encode_s > 0) == (life == 0)
    assert answers[0][1] == 0  # encoded, and written to disk when its engine closed
    assert answers[1] == (answers[0][0], n_prefix)  # loaded: the same answer, the prefix not computed
    assert answers[0][0] == ask_ref(ref, settings, "What happens?").answer


def test_a_file_is_hashed_once_per_version(tmp_path, monkeypatch):
    """The server remembers a media file's digest by (path, size, mtime): asked again it reads nothing; the file
    rewritten (another mtime) is hashed again, so an edited video never keeps the old one's encoding."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"first version")
    digests, reads = cache.FileDigests(), []
    monkeypatch.setattr(cache, "file_sha256", lambda p: reads.append(p) or hashlib.sha256(p.read_bytes()).hexdigest())
    assert digests(path) == digests(path) == hashlib.sha256(b"first version").hexdigest()
    assert len(reads) == 1
    path.write_bytes(b"other version")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert digests(path) == hashlib.sha256(b"other version").hexdigest()
    assert len(reads) == 2

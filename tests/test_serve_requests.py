"""`vreason serve`'s request reading (issue 19): bodies to `ChatRequest`, media parts to files, without a server.

Every accepted shape is read on real generated clips and images, and the file a request ends up with is
checked against the one sent (its bytes, and what OpenCV probes in it); every refused one gives OpenAI's
error shape with the right status and `param`, a message naming the field as the caller sent it, and
leaves no temporary file behind.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from vreason_local.clips import make_clip, make_image
from vreason_local.errors import UserError
from vreason_local.serve import media as media_module
from vreason_local.serve.errors import ApiError
from vreason_local.serve.media import MediaLimits, MediaSource, resolve_media
from vreason_local.serve.requests import MODES_BY_SUFFIX, ChatRequest, Turn, model_ids, parse_chat_request
from vreason_local.settings import RunSettings, VReasonSettings
from vreason_local.video import probe

NAME = "tiny-vl"
CAP = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two media roots with a clip (MP4 and AVI), images, a clip with a space in its name, and, outside the
    roots, a secret file with a symlink to it from inside the first root."""
    base = tmp_path_factory.mktemp("serve-media")
    root, other, outside = base / "root", base / "other", base / "outside"
    for d in (root, other, outside, root / "sub"):
        d.mkdir()
    out = {
        "root": root,
        "other": other,
        "clip": make_clip(root / "clip.mp4", seconds=1.0, fps=8.0, size=(64, 48)),
        "avi": make_clip(other / "clip.avi", seconds=1.0, fps=8.0, size=(64, 48), codec="MJPG"),
        "spaced": make_clip(root / "sub" / "my clip.mp4", seconds=1.0, fps=8.0, size=(64, 48), seed=1),
        "png": make_image(root / "still.png"),
        "jpg": make_image(root / "still.jpg"),
        "secret": make_clip(outside / "secret.mp4", seconds=1.0, fps=8.0, size=(64, 48)),
        "text": base / "notes.txt",
    }
    out["text"].write_text("this is not a video\n" * 10)
    (root / "escape.mp4").symlink_to(out["secret"])
    (root / "inside.mp4").symlink_to(out["clip"])
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    out["alias"] = base / "alias"
    out["alias"].symlink_to(root)  # a root the user knows by a symlink
    return out


@pytest.fixture
def limits(files: dict[str, Path], tmp_path: Path) -> MediaLimits:
    return MediaLimits.create([files["root"], files["other"]], CAP, tmp_path / "private")


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def body(content: object = "What happens?", **fields: object) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": content}], **fields}


def with_media(part: dict, question: str = "What happens?", **fields: object) -> dict:
    return body([part, {"type": "text", "text": question}], **fields)


def parse(b: object, limits: MediaLimits, defaults: RunSettings | None = None) -> ChatRequest:
    return parse_chat_request(b, defaults or RunSettings(), NAME, limits)


# -- model ids, modes, conversation shapes ----------------------------------------------------------
def test_model_ids_list_one_id_per_mode() -> None:
    assert model_ids(NAME) == [NAME, f"{NAME}:vreason", f"{NAME}:lite"]
    assert set(MODES_BY_SUFFIX.values()) == {"base", "vreason", "lite"}


@pytest.mark.parametrize(
    ("model", "body_mode", "default_mode", "expected"),
    [
        (NAME, None, "base", "base"),
        (NAME, None, "vreason", "vreason"),  # the bare id is the server's default mode
        (f"{NAME}:vreason", None, "base", "vreason"),
        (f"{NAME}:lite", None, "vreason", "lite"),
        (NAME, "lite", "base", "lite"),  # the body's mode wins over a bare id
        (f"{NAME}:vreason", "vreason", "base", "vreason"),  # the two alike
    ],
)
def test_mode_from_model_id_or_body(
    limits: MediaLimits, model: str, body_mode: str | None, default_mode: str, expected: str
) -> None:
    b = body(model=model) | ({"vreason": {"mode": body_mode}} if body_mode else {})
    req = parse(b, limits, RunSettings(mode=default_mode))  # type: ignore[arg-type]
    assert req.mode == expected
    assert req.settings.mode == expected
    assert req.model_id == model


def test_text_only_request_keeps_the_server_defaults(limits: MediaLimits) -> None:
    defaults = RunSettings.from_values({"temperature": 0.5, "max_tokens": 77, "fps": 2.0})
    req = parse(body(), limits, defaults)
    assert req.turns == [Turn("user", "What happens?")]
    assert (req.system, req.media, req.media_uuid) == (None, None, None)
    assert req.settings.values() == defaults.values()
    assert (req.stream, req.include_usage, req.telemetry, req.logprobs, req.top_logprobs, req.stop) == (
        False,
        False,
        False,
        False,
        0,
        (),
    )


def test_conversation_roles_join_and_strip_reasoning(limits: MediaLimits) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "<think>long thoughts</think><answer>A cat.</answer>"},
        {"role": "user", "content": [{"type": "text", "text": "Second"}, {"type": "text", "text": "part two"}]},
        {"role": "user", "content": "and more?"},
        {"role": "assistant", "content": "<think>hmm</think> It runs."},
        {"role": "assistant", "content": "Plain answer."},
        {"role": "user", "content": "Last?", "name": "alice"},
    ]
    req = parse({"model": NAME, "messages": messages}, limits)
    assert req.system == "Be brief.\n\nAnswer in English."
    assert req.turns == [
        Turn("user", "First question?"),
        Turn("assistant", "A cat."),
        Turn("user", "Second\npart two\nand more?"),
        Turn("assistant", "It runs.\nPlain answer."),
        Turn("user", "Last?"),
    ]


def test_unknown_top_level_fields_are_ignored(limits: MediaLimits) -> None:
    req = parse(body(user="u1", frequency_penalty=0.5, response_format={"type": "text"}, tools=[]), limits)
    assert req.turns[-1].text == "What happens?"


# -- settings ---------------------------------------------------------------------------------------
def test_every_request_setting_reaches_the_run_settings(limits: MediaLimits) -> None:
    b = body(
        temperature=0.7,
        top_p=0.8,
        min_p=0.05,
        seed=1234,
        max_completion_tokens=99,
        mm_processor_kwargs={"fps": 2.5, "max_pixels": 200 * 200},
        vreason={
            "mode": "vreason",
            "telemetry": True,
            "reasoning": False,
            "beta": 0.5,
            "every": 3,
            "steps": 2,
            "lr": 0.01,
            "optimizer": "sgd",
            "head_error": 0.02,
            "head_max": 512,
            "head_skip": 0.75,
            "device": "cpu",
            "dtype": "float32",
            "frames": {"min_frames": 2, "max_frames": 6, "start": 0.5, "end": 3.0, "token_budget": 800},
        },
    )
    req = parse(b, limits)
    s = req.settings
    assert (s.generation.sampling.temperature, s.generation.sampling.top_p) == (0.7, 0.8)
    assert (s.generation.sampling.min_p, s.generation.sampling.seed, s.generation.max_tokens) == (0.05, 1234, 99)
    assert s.generation.reasoning is False
    assert (s.frames.fps, s.frames.max_pixels, s.frames.min_frames, s.frames.max_frames) == (2.5, 40000, 2, 6)
    assert (s.frames.start_s, s.frames.end_s, s.token_budget) == (0.5, 3.0, 800)
    assert s.vreason == VReasonSettings(0.5, 3, 2, 0.01, "sgd", 0.02, 512, 0.75, "cpu", "float32")
    assert (req.mode, req.telemetry) == ("vreason", True)


def test_num_frames_fixes_both_frame_limits_and_max_tokens_alias(limits: MediaLimits) -> None:
    req = parse(body(media_io_kwargs={"video": {"num_frames": 12, "fps": 3.0}}, max_tokens=5), limits)
    assert (req.settings.frames.min_frames, req.settings.frames.max_frames, req.settings.frames.fps) == (12, 12, 3.0)
    assert req.settings.generation.max_tokens == 5
    same = parse(body(max_tokens=5, max_completion_tokens=5, mm_processor_kwargs={"fps": 3.0}), limits)
    assert same.settings.generation.max_tokens == 5


def test_null_settings_mean_the_default(limits: MediaLimits) -> None:
    defaults = RunSettings.from_values({"temperature": 0.3})
    req = parse(body(temperature=None, top_p=None, stop=None, n=None, vreason=None, stream=None), limits, defaults)
    assert req.settings.values() == defaults.values()


@pytest.mark.parametrize(("stop", "expected"), [("END", ("END",)), (["a", "b"], ("a", "b")), (None, ())])
def test_streaming_logprobs_and_stop(limits: MediaLimits, stop: object, expected: tuple[str, ...]) -> None:
    req = parse(
        body(stream=True, stream_options={"include_usage": True}, logprobs=True, top_logprobs=5, stop=stop), limits
    )
    assert (req.stream, req.include_usage, req.logprobs, req.top_logprobs, req.stop) == (True, True, True, 5, expected)
    assert req.settings.generation.logprobs == 5  # what the engine reads: 5 alternatives a token
    plain = parse(body(stream_options={"include_usage": True}), limits)
    assert plain.include_usage is False  # usage chunks belong to streams only
    assert plain.settings.generation.logprobs is None  # not asked: none computed
    bare = parse(body(logprobs=True), limits)
    assert (bare.logprobs, bare.top_logprobs, bare.settings.generation.logprobs) == (True, 0, 0)


# -- media parts ------------------------------------------------------------------------------------
def part_shapes(files: dict[str, Path]) -> list[tuple[str, dict, Path, str]]:
    """(id, part, the file whose bytes the request must end up with, kind)."""
    clip, png, jpg = files["clip"], files["png"], files["jpg"]
    return [
        ("video_url-path", {"type": "video_url", "video_url": {"url": str(clip)}}, clip, "video"),
        ("video_url-relative", {"type": "video_url", "video_url": {"url": "clip.mp4"}}, clip, "video"),
        ("video_url-second-root", {"type": "video_url", "video_url": {"url": "clip.avi"}}, files["avi"], "video"),
        ("video_url-file-url", {"type": "video_url", "video_url": {"url": clip.as_uri()}}, clip, "video"),
        (
            "video_url-percent-encoded",
            {"type": "video_url", "video_url": {"url": files["spaced"].as_uri()}},
            files["spaced"],
            "video",
        ),
        (
            "video_url-file-localhost",
            {"type": "video_url", "video_url": {"url": f"file://localhost{clip}"}},
            clip,
            "video",
        ),
        ("video_url-symlink-inside", {"type": "video_url", "video_url": {"url": "inside.mp4"}}, clip, "video"),
        (
            "video_url-data",
            {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{b64(clip)}"}},
            clip,
            "video",
        ),
        ("video_url-string", {"type": "video_url", "video_url": str(clip)}, clip, "video"),
        ("input_video-data", {"type": "input_video", "input_video": {"data": b64(clip)}}, clip, "video"),
        ("input_video-url", {"type": "input_video", "input_video": {"url": clip.as_uri()}}, clip, "video"),
        ("video-string", {"type": "video", "video": str(clip)}, clip, "video"),
        (
            "video-object",
            {"type": "video", "video": {"url": f"data:;base64,{b64(files['avi'])}"}},
            files["avi"],
            "video",
        ),
        ("image_url-path", {"type": "image_url", "image_url": {"url": str(png), "detail": "auto"}}, png, "image"),
        (
            "image_url-data",
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(png)}"}},
            png,
            "image",
        ),
        ("image_url-raw-jpeg", {"type": "image_url", "image_url": {"url": b64(jpg)}}, jpg, "image"),
    ]


SHAPE_IDS = [
    "video_url-path",
    "video_url-relative",
    "video_url-second-root",
    "video_url-file-url",
    "video_url-percent-encoded",
    "video_url-file-localhost",
    "video_url-symlink-inside",
    "video_url-data",
    "video_url-string",
    "input_video-data",
    "input_video-url",
    "video-string",
    "video-object",
    "image_url-path",
    "image_url-data",
    "image_url-raw-jpeg",
]  # part_shapes' ids (checked below)


@pytest.mark.parametrize("shape", SHAPE_IDS)
def test_every_media_part_shape_gives_the_file_sent(files: dict[str, Path], limits: MediaLimits, shape: str) -> None:
    shapes = {s[0]: s[1:] for s in part_shapes(files)}
    assert list(shapes) == SHAPE_IDS
    part, expected, kind = shapes[shape]
    req = parse(with_media(part), limits)
    assert req.media is not None and req.media.kind == kind
    assert req.media.path.read_bytes() == expected.read_bytes()
    inline = req.media.temporary
    assert inline == req.media.path.is_relative_to(limits.tmp_dir)
    if not inline:
        assert req.media.path == expected.resolve()
    req.discard()
    assert req.media.path.exists() is not inline  # a file under a root is never removed
    assert list(limits.tmp_dir.iterdir()) == []
    assert req.turns == [Turn("user", "What happens?")]


def test_inline_video_is_a_private_file_that_opens_as_the_clip(files: dict[str, Path], limits: MediaLimits) -> None:
    src = resolve_media("video", f"data:video/mp4;base64,{b64(files['clip'])}", "clip-a", limits)
    assert (src.kind, src.temporary, src.uuid, src.path.suffix) == ("video", True, "clip-a", ".mp4")
    assert stat.S_IMODE(src.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(limits.tmp_dir.stat().st_mode) == 0o700
    got, want = probe(src.path), probe(files["clip"])
    assert (got.frame_count, got.width, got.height) == (want.frame_count, want.width, want.height)
    src.discard()
    src.discard()  # twice is harmless
    assert not src.path.exists()


@pytest.mark.parametrize(
    ("key", "mime", "kind", "suffix"),
    [
        ("clip", "", "video", ".mp4"),  # sniffed: ftyp
        ("avi", "application/octet-stream", "video", ".avi"),  # sniffed: RIFF AVI
        ("png", "", "image", ".png"),
        ("jpg", "image/jpeg", "image", ".jpg"),
        ("text", "video/webm", "video", ".webm"),  # nothing to sniff: the mime type's
        ("text", "", "video", ".mp4"),  # nothing at all: the kind's
        ("text", "", "image", ".png"),
    ],
)
def test_inline_suffix_from_magic_bytes_then_mime(
    files: dict[str, Path], limits: MediaLimits, key: str, mime: str, kind: str, suffix: str
) -> None:
    src = resolve_media(kind, f"data:{mime};base64,{b64(files[key])}", None, limits)  # type: ignore[arg-type]
    try:
        assert src.path.suffix == suffix
    finally:
        src.discard()


def test_text_posing_as_video_is_left_to_the_video_checks(files: dict[str, Path], limits: MediaLimits) -> None:
    src = resolve_media("video", f"data:video/mp4;base64,{b64(files['text'])}", None, limits)
    try:
        assert src.path.suffix == ".mp4"
        with pytest.raises(UserError):
            probe(src.path)
    finally:
        src.discard()


@pytest.mark.parametrize("variant", ["wrapped", "urlsafe-unpadded"])
def test_base64_variants_decode_alike_in_chunks(
    files: dict[str, Path], limits: MediaLimits, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    data = files["clip"].read_bytes()[:1001]  # 1001 bytes: the standard form ends in one '='
    text = (
        base64.encodebytes(data).decode()  # 76-character lines, as `base64` and email write it
        if variant == "wrapped"
        else base64.urlsafe_b64encode(data).decode().rstrip("=")
    )
    monkeypatch.setattr(media_module, "DECODE_CHUNK", 8)  # many chunks, each a multiple of 4 characters
    src = resolve_media("video", text, None, limits)
    try:
        assert src.path.read_bytes() == data
    finally:
        src.discard()


def test_inline_cap_is_the_decoded_size(files: dict[str, Path], tmp_path: Path) -> None:
    data = files["clip"].read_bytes()
    exact = MediaLimits.create([], len(data), tmp_path / "a")
    src = resolve_media("video", b64(files["clip"]), None, exact)
    assert src.path.stat().st_size == len(data)
    src.discard()
    under = MediaLimits.create([], len(data) - 1, tmp_path / "b")
    with pytest.raises(ApiError) as caught:
        resolve_media("video", b64(files["clip"]), None, under)
    assert (caught.value.status, caught.value.code) == (413, "media_too_large")
    assert not under.tmp_dir.exists() or list(under.tmp_dir.iterdir()) == []


def test_uuid_follow_up_and_repeated_media(files: dict[str, Path], limits: MediaLimits) -> None:
    follow = parse(with_media({"type": "video_url", "video_url": None, "uuid": "clip-a"}), limits)
    assert (follow.media, follow.media_uuid) == (None, "clip-a")
    part = {"type": "video_url", "video_url": {"url": "clip.mp4", "uuid": "clip-a"}}
    messages = [
        {"role": "user", "content": [part, {"type": "text", "text": "Q1"}]},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": [part, {"type": "text", "text": "Q2"}]},  # a client resending the video
        {"role": "user", "content": [{"type": "video_url", "video_url": None, "uuid": "clip-a"}]},
    ]
    req = parse({"model": NAME, "messages": messages}, limits)
    assert req.media is not None and req.media.path == files["clip"].resolve()
    assert (req.media_uuid, req.media.uuid) == ("clip-a", "clip-a")
    assert [t.text for t in req.turns] == ["Q1", "A1", "Q2"]


# -- refused requests -------------------------------------------------------------------------------
def bad_requests(files: dict[str, Path]) -> list[tuple[str, object, int, str | None, str]]:
    """(id, body, status, param, words the message must hold)."""
    clip = files["clip"]
    video = {"type": "video_url", "video_url": {"url": "clip.mp4"}}
    m0 = "messages[0].content[0].video_url.url"

    def url(u: str) -> dict:
        return with_media({"type": "video_url", "video_url": {"url": u}})

    user = {"role": "user", "content": "q"}
    return [
        ("body-not-object", [1, 2], 400, None, "must be a JSON object"),
        ("no-model", {"messages": [user]}, 400, "model", "'model' must be one of"),
        ("unknown-model", body(model="gpt-4o"), 404, "model", "'gpt-4o' does not exist"),
        ("unknown-mode-suffix", body(model=f"{NAME}:fast"), 404, "model", f"{NAME}:lite"),
        ("n=2", body(n=2), 400, "n", "one choice per request"),
        ("n=0", body(n=0), 400, "n", "send n=1"),
        (
            "unknown-part",
            body([{"type": "input_audio", "input_audio": {}}]),
            400,
            "messages[0].content[0].type",
            "input_audio",
        ),
        (
            "part-no-type",
            body([{"text": "hi"}]),
            400,
            "messages[0].content[0].type",
            "unsupported content part type None",
        ),
        ("http", url("http://example.com/a.mp4"), 400, m0, "fetches nothing from the network"),
        ("https", url("HTTPS://example.com/a.mp4"), 400, m0, "fetches nothing from the network"),
        ("ftp", url("ftp://example.com/a.mp4"), 400, m0, "scheme 'ftp:' is not supported"),
        ("outside-root", url(str(files["secret"])), 400, m0, "outside every --media-root"),
        ("symlink-escape", url("escape.mp4"), 400, m0, "leads outside every --media-root folder"),
        ("dotdot", url("sub/../../outside/secret.mp4"), 400, m0, "'..' is not allowed"),
        ("dotdot-inside", url(f"{files['root']}/sub/../clip.mp4"), 400, m0, "'..' is not allowed"),
        ("dotdot-file-url", url("file://" + str(files["root"]) + "/%2E%2E/outside/secret.mp4"), 400, m0, "'..'"),
        ("not-found", url("missing.mp4"), 400, m0, "not found under --media-root"),
        ("outside-missing", url("/nowhere/missing.mp4"), 400, m0, "outside every --media-root"),
        ("symlink-loop", url("loop.mp4"), 400, m0, "cannot be read"),
        ("directory", url("sub"), 400, m0, "is not a file"),
        ("remote-file-host", url(f"file://server{clip}"), 400, m0, "names the host 'server'"),
        ("bad-base64", url("data:video/mp4;base64,AAAA!!!!"), 400, m0, "'!', which is not base64"),
        ("base64-cut-short", url("data:video/mp4;base64,AAAAA"), 400, m0, "cut short"),
        ("data-not-base64", url("data:video/mp4,hello"), 400, m0, "must be base64-encoded"),
        ("data-no-comma", url("data:video/mp4;base64"), 400, m0, "no ','"),
        ("image-data-in-video-part", url("data:image/png;base64,iVBORw0KGgo="), 400, m0, "image part"),
        ("empty-base64", url("data:video/mp4;base64,"), 400, m0, "empty"),
        ("oversized-inline", url("data:video/mp4;base64," + "A" * (CAP // 3 * 4 + 8)), 413, m0, "over this server's"),
        (
            "second-video",
            body([video, {"type": "video_url", "video_url": {"url": "clip.avi"}}, {"type": "text", "text": "q"}]),
            400,
            "messages[0].content[1].video_url.url",
            "one video or image per conversation",
        ),
        (
            "video-and-image",
            body([video, {"type": "image_url", "image_url": {"url": "still.png"}}, {"type": "text", "text": "q"}]),
            400,
            "messages[0].content[1].image_url.url",
            "one video or image",
        ),
        (
            "two-uuids",
            body(
                [
                    {"type": "video_url", "video_url": None, "uuid": "a"},
                    {"type": "video_url", "video_url": None, "uuid": "b"},
                    {"type": "text", "text": "q"},
                ]
            ),
            400,
            "messages[0].content[1].video_url",
            "one video or image",
        ),
        (
            "media-no-source",
            body([{"type": "video_url", "video_url": {}}, {"type": "text", "text": "q"}]),
            400,
            "messages[0].content[0].video_url",
            "no video_url url or data",
        ),
        (
            "url-and-data",
            body([{"type": "input_video", "input_video": {"url": "a", "data": "b"}}, "q"]),
            400,
            "messages[0].content[0].input_video",
            "both url and data",
        ),
        ("url-not-string", url(5), 400, m0, "must be a string"),  # type: ignore[arg-type]
        (
            "uuid-not-string",
            body([{"type": "video_url", "video_url": None, "uuid": 7}]),
            400,
            "messages[0].content[0].uuid",
            "non-empty string",
        ),
        (
            "video-from-assistant",
            {"model": NAME, "messages": [user, {"role": "assistant", "content": [video]}, user]},
            400,
            "messages[1].content[0].type",
            "only user messages",
        ),
        ("messages-missing", {"model": NAME}, 400, "messages", "non-empty array"),
        ("messages-empty", body() | {"messages": []}, 400, "messages", "non-empty array"),
        ("message-not-object", {"model": NAME, "messages": ["hi"]}, 400, "messages[0]", "must be an object"),
        (
            "role-tool",
            {"model": NAME, "messages": [{"role": "tool", "content": "x"}, user]},
            400,
            "messages[0].role",
            "no tools",
        ),
        ("content-missing", {"model": NAME, "messages": [{"role": "user"}]}, 400, "messages[0].content", "got null"),
        ("content-number", body(42), 400, "messages[0].content", "got a number"),
        ("part-not-object", body(["hi"]), 400, "messages[0].content[0]", "must be an object"),
        (
            "text-not-string",
            body([{"type": "text", "text": 3}]),
            400,
            "messages[0].content[0].text",
            "must be a string",
        ),
        (
            "last-is-assistant",
            {"model": NAME, "messages": [user, {"role": "assistant", "content": "a"}]},
            400,
            "messages[1]",
            "last message must be the user's",
        ),
        (
            "first-is-assistant",
            {"model": NAME, "messages": [{"role": "assistant", "content": "a"}, user]},
            400,
            "messages[0].role",
            "must start with a user message",
        ),
        (
            "system-after-user",
            {"model": NAME, "messages": [user, {"role": "system", "content": "s"}, user]},
            400,
            "messages[1].role",
            "must come before the conversation",
        ),
        ("empty-question", body([video]), 400, "messages[0]", "has no text"),
        ("temperature-range", body(temperature=200), 400, "temperature", "temperature must be from 0 to 100"),
        ("temperature-type", body(temperature="hot"), 400, "temperature", "got 'hot'"),
        ("top_p-range", body(top_p=2), 400, "top_p", "try top_p=1.0"),
        ("max_tokens-zero", body(max_tokens=0), 400, "max_tokens", "max tokens must be from 1"),
        (
            "max_completion_tokens-zero",
            body(max_completion_tokens=0),
            400,
            "max_completion_tokens",
            "try max_completion_tokens=1024",
        ),
        ("seed-range", body(seed=-5), 400, "seed", "seed must be from -1"),
        (
            "fps-zero",
            body(mm_processor_kwargs={"fps": 0}),
            400,
            "mm_processor_kwargs.fps",
            "mm_processor_kwargs.fps: fps",
        ),
        (
            "max_pixels-small",
            body(mm_processor_kwargs={"max_pixels": 100}),
            400,
            "mm_processor_kwargs.max_pixels",
            "try mm_processor_kwargs.max_pixels=3136",
        ),
        (
            "num_frames-one",
            body(media_io_kwargs={"video": {"num_frames": 1}}),
            400,
            "media_io_kwargs.video.num_frames",
            "try media_io_kwargs.video.num_frames=2",
        ),
        (
            "min-over-max",
            body(vreason={"frames": {"min_frames": 40}}),
            400,
            "vreason.frames.min_frames",
            "vreason.frames.min_frames=32",
        ),
        (
            "window-reversed",
            body(vreason={"frames": {"start": 5, "end": 2}}),
            400,
            "vreason.frames.end",
            "clip start (5 s) must be before clip end (2 s)",
        ),
        ("beta-range", body(vreason={"beta": 1}), 400, "vreason.beta", "try vreason.beta=0.9"),
        ("optimizer-choice", body(vreason={"optimizer": "rmsprop"}), 400, "vreason.optimizer", "one of adam, sgd"),
        (
            "conflicting-mode",
            body(model=f"{NAME}:lite", vreason={"mode": "vreason"}),
            400,
            "vreason.mode",
            "asks for mode lite but vreason.mode is vreason",
        ),
        ("unknown-mode", body(vreason={"mode": "fast"}), 400, "vreason.mode", "one of base, vreason, lite"),
        (
            "max_tokens-twice",
            body(max_tokens=5, max_completion_tokens=6),
            400,
            "max_completion_tokens",
            "set the same thing",
        ),
        (
            "fps-twice",
            body(mm_processor_kwargs={"fps": 2}, vreason={"frames": {"fps": 3}}),
            400,
            "vreason.frames.fps",
            "mm_processor_kwargs.fps=2 and vreason.frames.fps=3",
        ),
        ("vreason-unknown-key", body(vreason={"betta": 0.5}), 400, "vreason.betta", "unknown field vreason.betta"),
        ("frames-unknown-key", body(vreason={"frames": {"frames": 3}}), 400, "vreason.frames.frames", "unknown field"),
        (
            "mm-unknown-key",
            body(mm_processor_kwargs={"min_pixels": 5}),
            400,
            "mm_processor_kwargs.min_pixels",
            "takes fps, max_pixels",
        ),
        ("media-io-unknown-key", body(media_io_kwargs={"audio": {}}), 400, "media_io_kwargs.audio", "takes video"),
        ("vreason-not-object", body(vreason="on"), 400, "vreason", "must be a JSON object, got a string"),
        ("telemetry-not-bool", body(vreason={"telemetry": "yes"}), 400, "vreason.telemetry", "true or false"),
        ("stream-not-bool", body(stream="true"), 400, "stream", "true or false"),
        (
            "include_usage-not-bool",
            body(stream=True, stream_options={"include_usage": 1}),
            400,
            "stream_options.include_usage",
            "true or false",
        ),
        ("top_logprobs-range", body(logprobs=True, top_logprobs=21), 400, "top_logprobs", "from 0 to 20"),
        ("top_logprobs-alone", body(top_logprobs=2), 400, "top_logprobs", "needs logprobs"),
        ("stop-too-many", body(stop=list("abcde")), 400, "stop", "up to 4"),
        ("stop-empty", body(stop=""), 400, "stop", "non-empty string"),
    ]


BAD_IDS = [case[0] for case in bad_requests({k: Path("/") for k in ("clip", "secret", "root")})]  # ids only


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_request_is_refused_in_openai_shape(files: dict[str, Path], limits: MediaLimits, case: str) -> None:
    cases = {c[0]: c[1:] for c in bad_requests(files)}
    b, status, param, words = cases[case]
    with pytest.raises(ApiError) as caught:
        parse(b, limits)
    err = caught.value.body()["error"]
    assert (caught.value.status, err["param"]) == (status, param), err["message"]
    assert err["type"] == "invalid_request_error"
    assert words in err["message"]
    assert "\n" not in err["message"] and " --" not in err["message"].replace(" --media-root", "")  # no CLI flags
    assert not limits.tmp_dir.exists() or list(limits.tmp_dir.iterdir()) == []  # nothing left behind


def test_at_least_25_bad_requests_are_covered() -> None:
    assert len(BAD_IDS) >= 25 and len(set(BAD_IDS)) == len(BAD_IDS)


def test_local_paths_refused_without_a_media_root(files: dict[str, Path], tmp_path: Path) -> None:
    none = MediaLimits.create([], CAP, tmp_path / "t")
    for source in (str(files["clip"]), files["clip"].as_uri(), "clip.mp4"):
        with pytest.raises(ApiError) as caught:
            resolve_media("video", source, None, none)
        assert caught.value.status == 400
        assert "started without --media-root" in caught.value.message


def test_media_limits_create_checks_the_roots(tmp_path: Path, files: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="no such folder"):
        MediaLimits.create([tmp_path / "nope"])
    made = MediaLimits.create([files["root"]], CAP)
    try:
        assert made.roots == (files["root"].resolve(),)
        assert stat.S_IMODE(made.tmp_dir.stat().st_mode) == 0o700
    finally:
        os.rmdir(made.tmp_dir)


def test_a_failed_request_after_media_leaves_no_file(files: dict[str, Path], limits: MediaLimits) -> None:
    """A body whose media is fine but whose settings are not: media is resolved last, so nothing is written."""
    b = with_media({"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{b64(files['clip'])}"}})
    with pytest.raises(ApiError):
        parse(b | {"temperature": -1}, limits)
    assert not limits.tmp_dir.exists() or list(limits.tmp_dir.iterdir()) == []
    req = parse(b, limits)
    assert isinstance(req.media, MediaSource) and req.media.temporary
    req.discard()


def test_a_root_given_through_a_symlink_contains_its_files(files: dict[str, Path], tmp_path: Path) -> None:
    by_alias = MediaLimits.create([files["alias"]], CAP, tmp_path / "t")
    assert by_alias.roots == (files["root"].resolve(),)
    for source in (str(files["alias"] / "clip.mp4"), (files["alias"] / "clip.mp4").as_uri(), "clip.mp4"):
        src = resolve_media("video", source, None, by_alias)
        assert (src.path, src.temporary) == (files["clip"].resolve(), False)

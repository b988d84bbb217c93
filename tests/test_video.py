"""Tests for vreason_local.video and vreason_local.clips, on real files decoded by real OpenCV.

Clips come from `make_clip`, whose frames carry their own frame number (`read_frame_number`), so
"the sampler returned frame i" is checked on pixels, not on the sampler's own bookkeeping.
Broken inputs (truncated, corrupt, rotated, count-less) are fabricated by patching bytes of
generated files, because OpenCV can only write well-formed ones.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from vreason_local.clips import make_clip, make_image, read_frame_number
from vreason_local.errors import UserError
from vreason_local.video import (
    MIN_FRAME_PIXELS,
    SEEK_MIN_GAP,
    FrameSampling,
    SamplingPlan,
    VideoInfo,
    fit_token_budget,
    plan_sampling,
    probe,
    sample_frames,
    smart_resize,
    video_tokens,
)

# ---------------------------------------------------------------- fixtures and fabrication


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def clip_mp4(media: Path) -> Path:
    """4 s, 10 fps, 160x120, MPEG-4 Part 2 in MP4: 40 frames."""
    return make_clip(media / "clip.mp4")


@pytest.fixture(scope="module")
def long_avi(media: Path) -> Path:
    """60 s, 10 fps MJPEG: 600 frames, long enough that the sampler seeks between samples."""
    return make_clip(media / "long.avi", seconds=60, fps=10, codec="MJPG")


@pytest.fixture(scope="module")
def long_h264(media: Path) -> Path:
    """60 s, 10 fps H.264 in MP4 (libx264 through PyAV): the format of most users' clips. Unlike MJPEG,
    frames depend on each other (B-frames, keyframes seconds apart), so a seek has to decode from a
    keyframe and reorder frames to land on the planned one."""
    return make_clip(media / "long_h264.mp4", seconds=60, fps=10, codec="avc1")


def avi_frame_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset of payload, size) of each video chunk in the 'movi' list of an AVI."""
    chunks = []
    pos = data.index(b"movi") + 4
    while pos + 8 <= len(data) and data[pos : pos + 4] != b"idx1":
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if data[pos : pos + 4] == b"00dc":
            chunks.append((pos + 8, size))
        pos += 8 + size + (size & 1)
    return chunks


def corrupt_avi_frames(source: Path, target: Path, frames: set[int] | None = None) -> Path:
    """Copy of an AVI with the payload of `frames` (all if None) zeroed: same header, bad data."""
    data = bytearray(source.read_bytes())
    for number, (offset, size) in enumerate(avi_frame_chunks(bytes(data))):
        if frames is None or number in frames:
            data[offset : offset + size] = bytes(size)
    target.write_bytes(bytes(data))
    return target


def avi_without_frame_count(source: Path, target: Path) -> Path:
    """Copy of an AVI whose headers claim 0 frames (avih.dwTotalFrames, strh.dwLength)."""
    data = bytearray(source.read_bytes())
    avih = data.index(b"avih") + 8
    data[avih + 16 : avih + 20] = bytes(4)
    strh = data.index(b"strh") + 8
    data[strh + 32 : strh + 36] = bytes(4)
    target.write_bytes(bytes(data))
    return target


def rotate_mp4(source: Path, target: Path, degrees: int) -> Path:
    """Copy of an MP4 whose track matrix (tkhd) says: display rotated clockwise by `degrees`."""
    data = bytearray(source.read_bytes())
    tkhd = data.index(b"tkhd")
    assert data[tkhd + 4] == 0, "expects a version-0 tkhd box"
    cos, sin = round(math.cos(math.radians(degrees))), round(math.sin(math.radians(degrees)))
    matrix = struct.pack(">9i", cos << 16, sin << 16, 0, -sin << 16, cos << 16, 0, 0, 0, 1 << 30)
    data[tkhd + 44 : tkhd + 80] = matrix
    target.write_bytes(bytes(data))
    return target


def truncate(source: Path, target: Path, fraction: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def truncate_avi_after(source: Path, target: Path, frames: int) -> Path:
    """Copy of an AVI cut right after its first `frames` frames, headers still promising all."""
    data = source.read_bytes()
    offset, size = avi_frame_chunks(data)[frames - 1]
    target.write_bytes(data[: offset + size])
    return target


def markers(frames) -> list[int]:
    return [read_frame_number(frame.rgb) for frame in frames]


def fake_info(width: int = 1920, height: int = 1080, seconds: float = 60.0, fps: float = 30.0) -> VideoInfo:
    """A VideoInfo for planning tests that need no file."""
    return VideoInfo(Path("fake.mp4"), seconds, fps, round(seconds * fps), width, height, 0, "avc1")


def plan_cost(info: VideoInfo, settings: FrameSampling, patch: int = 14, temporal: int = 2) -> int:
    plan = plan_sampling(info, settings)
    return video_tokens(len(plan.indices), plan.height, plan.width, patch=patch, temporal=temporal)


def assert_user_error(excinfo: pytest.ExceptionInfo[UserError], *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# ---------------------------------------------------------------- probe


@pytest.mark.parametrize(
    ("name", "codec", "seconds", "fps", "size", "fourcc"),
    [
        ("a.mp4", "mp4v", 4.0, 10.0, (160, 120), "FMP4"),
        ("b.avi", "MJPG", 3.0, 25.0, (96, 64), "MJPG"),
        ("c.mkv", "FFV1", 2.0, 30.0, (200, 112), "ffv1"),
    ],
)
def test_probe_reports_generated_clip(media, name, codec, seconds, fps, size, fourcc):
    info = probe(make_clip(media / name, seconds=seconds, fps=fps, size=size, codec=codec))
    assert info.fps == pytest.approx(fps)
    assert info.frame_count == round(seconds * fps)
    assert info.duration_s == pytest.approx(seconds)
    assert (info.width, info.height) == size
    assert info.rotation_deg == 0
    assert info.codec == fourcc
    assert info.path.is_absolute()


def test_probe_counts_frames_when_header_has_none(media):
    path = avi_without_frame_count(make_clip(media / "counted.avi", seconds=2, codec="MJPG"), media / "nocount.avi")
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 0  # precondition: OpenCV really reports nothing
    cap.release()
    info = probe(path)
    assert info.frame_count == 20
    assert info.duration_s == pytest.approx(2.0)


def test_probe_corrects_count_of_truncated_file(media, long_avi):
    path = truncate_avi_after(long_avi, media / "truncated.avi", 300)
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 600  # the header still promises every frame
    cap.release()
    info = probe(path)
    assert info.frame_count == 300
    assert info.duration_s == pytest.approx(30.0)
    last = sample_frames(path, plan_sampling(info, FrameSampling(start_s=info.duration_s - 0.5)))
    assert markers(last)[-1] == info.frame_count - 1


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_is_reported_and_applied(media, clip_mp4, degrees):
    path = rotate_mp4(clip_mp4, media / f"rot{degrees}.mp4", degrees)
    info = probe(path)
    assert info.rotation_deg == degrees
    assert (info.width, info.height) == ((120, 160) if degrees % 180 else (160, 120))
    plan = plan_sampling(info)
    undo = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}[degrees]
    for frame in sample_frames(path, plan):
        assert frame.rgb.shape[:2] == (plan.height, plan.width)
        assert read_frame_number(cv2.rotate(frame.rgb, undo)) == frame.index


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(UserError) as excinfo:
        probe(tmp_path / "nope.mp4")
    assert_user_error(excinfo, "not found", "nope.mp4")


def test_directory(tmp_path):
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    with pytest.raises(UserError) as excinfo:
        probe(folder)
    assert_user_error(excinfo, "directory", "folder.mp4")


def test_text_file(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are not frames\n" * 20)
    with pytest.raises(UserError) as excinfo:
        probe(text)
    assert_user_error(excinfo, "notes.mp4", "not a video file")


@pytest.mark.parametrize("name", ["photo.jpg", "photo.png"])
def test_still_image_suggests_image_option(tmp_path, name):
    with pytest.raises(UserError) as excinfo:
        probe(make_image(tmp_path / name))
    assert_user_error(excinfo, name, "still image")
    assert [(r.setting, Path(str(r.value)).name) for r in excinfo.value.remedies] == [("image", name)]


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(UserError) as excinfo:
        probe(empty)
    assert_user_error(excinfo, "empty.mp4", "0 bytes")


def test_zero_frame_avi(tmp_path):
    path = tmp_path / "zero.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    writer.release()
    assert path.stat().st_size > 0
    with pytest.raises(UserError) as excinfo:
        probe(path)
    assert_user_error(excinfo, "zero.avi", "no video frames")


def test_zero_frame_mp4_cannot_be_told_from_a_non_video(tmp_path):
    """OpenCV refuses to open an MP4 without frames at all, so the message is the generic one."""
    path = tmp_path / "zero.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    writer.release()
    with pytest.raises(UserError) as excinfo:
        probe(path)
    assert_user_error(excinfo, "zero.mp4", "cannot open", "re-encode")


def test_truncated_mp4(tmp_path, clip_mp4):
    """OpenCV's MP4 muxer writes the index (moov) last, so a cut-off MP4 does not open."""
    with pytest.raises(UserError) as excinfo:
        probe(truncate(clip_mp4, tmp_path / "cut.mp4", 0.6))
    assert_user_error(excinfo, "cut.mp4", "cannot open")


def test_undecodable_stream_names_codec(tmp_path, media):
    source = make_clip(media / "garbage-src.avi", seconds=2, codec="MJPG")
    path = corrupt_avi_frames(source, tmp_path / "garbage.avi")
    with pytest.raises(UserError) as excinfo:
        probe(path)
    assert_user_error(excinfo, "garbage.avi", "cannot decode", "'MJPG'", "H.264/MP4")


def test_codec_without_decoder(tmp_path, media):
    """A FourCC FFmpeg has no decoder for: OpenCV does not open it, like a non-video."""
    source = make_clip(media / "xxxx-src.avi", seconds=1, codec="MJPG")
    path = tmp_path / "xxxx.avi"
    path.write_bytes(source.read_bytes().replace(b"MJPG", b"XXXX"))
    with pytest.raises(UserError) as excinfo:
        probe(path)
    assert_user_error(excinfo, "xxxx.avi", "cannot open", "codec", "H.264/MP4")


def test_sample_frames_checks_its_file(tmp_path, clip_mp4):
    plan = plan_sampling(probe(clip_mp4))
    with pytest.raises(UserError) as excinfo:
        sample_frames(tmp_path / "gone.mp4", plan)
    assert_user_error(excinfo, "not found")


def test_sample_frames_when_nothing_decodes(tmp_path, media):
    path = corrupt_avi_frames(make_clip(media / "dead-src.avi", seconds=2, codec="MJPG"), tmp_path / "dead.avi")
    plan = SamplingPlan((0, 10), (0.0, 1.0), 160, 120, 0.0, 2.0, 10.0)
    with pytest.raises(UserError) as excinfo:
        sample_frames(path, plan)
    assert_user_error(excinfo, "dead.avi", "could be decoded")


# ---------------------------------------------------------------- planning

INFO_4S = fake_info(160, 120, seconds=4, fps=10)


def assert_well_formed(plan: SamplingPlan, info: VideoInfo, settings: FrameSampling) -> None:
    n = len(plan.indices)
    assert n % 2 == 0 and n >= 2
    assert n <= settings.max_frames
    assert list(plan.indices) == sorted(plan.indices)
    assert all(0 <= i < info.frame_count for i in plan.indices)
    assert plan.timestamps_s == tuple(i / info.fps for i in plan.indices)
    if len(set(plan.indices)) == n and n > 2:
        gaps = np.diff(plan.indices)
        assert gaps.max() - gaps.min() <= 1  # uniform up to rounding to whole frames
    if len(set(plan.indices)) == n:
        assert all(plan.start_s - 1e-9 <= t < plan.end_s for t in plan.timestamps_s)


@pytest.mark.parametrize(
    "settings",
    [
        FrameSampling(),
        FrameSampling(fps=2.0),
        FrameSampling(fps=0.5, min_frames=3, max_frames=9),
        FrameSampling(fps=30.0, max_frames=64),
        FrameSampling(start_s=1.0, end_s=3.0),
        FrameSampling(start_s=1.05, end_s=2.95, fps=4.0),
        FrameSampling(start_s=3.5),
        FrameSampling(end_s=100.0),
    ],
)
def test_plan_is_even_uniform_and_inside_window(settings):
    plan = plan_sampling(INFO_4S, settings)
    assert_well_formed(plan, INFO_4S, settings)


@pytest.mark.parametrize(
    ("seconds", "settings", "expected"),
    [
        (60, FrameSampling(), 32),  # 60 frames at 1 fps, capped at max_frames
        (4, FrameSampling(), 4),  # 4 frames
        (2, FrameSampling(), 4),  # 2 frames wanted, raised to min_frames
        (10, FrameSampling(fps=0.5), 6),  # 5 wanted, made even upwards
        (60, FrameSampling(max_frames=31), 30),  # odd cap: even count below it
        (60, FrameSampling(fps=0.05, min_frames=5), 6),  # odd floor: even count above it
    ],
)
def test_frame_count(seconds, settings, expected):
    assert len(plan_sampling(fake_info(seconds=seconds), settings).indices) == expected


def test_frames_are_centred_in_equal_slices():
    plan = plan_sampling(INFO_4S)
    assert plan.indices == (5, 15, 25, 35)
    assert plan.timestamps_s == (0.5, 1.5, 2.5, 3.5)


def test_window_selects_frames_inside_it():
    plan = plan_sampling(INFO_4S, FrameSampling(start_s=1.0, end_s=3.0, fps=2.0))
    assert plan.indices == (12, 17, 22, 27)
    assert (plan.start_s, plan.end_s) == (1.0, 3.0)


def test_end_past_duration_is_clamped():
    plan = plan_sampling(INFO_4S, FrameSampling(start_s=2.0, end_s=99.0))
    assert plan.end_s == 4.0
    assert max(plan.indices) < 40


def test_short_window_uses_distinct_frames_it_has():
    plan = plan_sampling(INFO_4S, FrameSampling(start_s=1.0, end_s=1.25))  # frames 10, 11, 12
    assert plan.indices == (10, 12)


def test_window_with_one_frame_duplicates_it():
    plan = plan_sampling(INFO_4S, FrameSampling(start_s=1.0, end_s=1.05))
    assert plan.indices == (10, 10)
    between = plan_sampling(INFO_4S, FrameSampling(start_s=1.02, end_s=1.08))  # no frame starts inside
    assert between.indices == (10, 10)


def test_one_frame_video(media):
    info = probe(make_clip(media / "single.mp4", seconds=0.1, fps=10))
    assert info.frame_count == 1
    plan = plan_sampling(info)
    assert plan.indices == (0, 0)
    frames = sample_frames(info.path, plan)
    assert [f.index for f in frames] == [0, 0] and markers(frames) == [0, 0]


def test_plan_output_size_follows_smart_resize():
    settings = FrameSampling(max_pixels=336 * 336)
    plan = plan_sampling(fake_info(640, 360), settings)
    assert (plan.height, plan.width) == smart_resize(360, 640, 28, settings.min_pixels, 336 * 336) == (252, 448)
    qwen3 = plan_sampling(fake_info(640, 360), replace(settings, factor=32))
    assert qwen3.height % 32 == 0 and qwen3.width % 32 == 0


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (dict(start_s=4.0), "beyond the end"),
        (dict(start_s=10.0, end_s=20.0), "beyond the end"),
    ],
)
def test_window_outside_video(settings, fragment):
    with pytest.raises(UserError) as excinfo:
        plan_sampling(INFO_4S, FrameSampling(**settings))
    assert_user_error(excinfo, fragment, "fake.mp4")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (dict(start_s=-1.0), "clip start must be at least 0"),
        (dict(end_s=-0.5), "clip end must be at least 0"),
        (dict(start_s=2.0, end_s=2.0), "before clip end"),
        (dict(start_s=3.0, end_s=1.0), "before clip end"),
        (dict(fps=0.0), "fps"),
        (dict(min_frames=8, max_frames=4), "frame limits"),
        (dict(min_frames=3, max_frames=3), "even"),
        (dict(max_frames=1, min_frames=1), "even"),
        (dict(max_pixels=1000, min_pixels=2000), "smallest frame size"),
    ],
)
def test_invalid_settings(settings, fragment):
    with pytest.raises(UserError) as excinfo:
        FrameSampling(**settings)
    assert_user_error(excinfo, fragment)


# ---------------------------------------------------------------- frames


def test_sampled_frames_are_the_planned_ones(clip_mp4):
    info = probe(clip_mp4)
    plan = plan_sampling(info, FrameSampling(fps=3.0))
    frames = sample_frames(clip_mp4, plan)
    assert [f.index for f in frames] == list(plan.indices)
    assert markers(frames) == list(plan.indices)
    assert [f.timestamp_s for f in frames] == list(plan.timestamps_s)
    for frame in frames:
        assert frame.rgb.dtype == np.uint8
        assert frame.rgb.shape == (plan.height, plan.width, 3)
        assert frame.rgb.flags.c_contiguous


def test_frames_are_rgb_resized_with_inter_area(clip_mp4):
    """Pixel-exact against decoding the same frame by hand."""
    plan = plan_sampling(probe(clip_mp4))
    frame = sample_frames(clip_mp4, plan)[1]
    cap = cv2.VideoCapture(str(clip_mp4))
    for _ in range(frame.index + 1):
        ok, bgr = cap.read()
    cap.release()
    expected = cv2.cvtColor(cv2.resize(bgr, (plan.width, plan.height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    assert np.array_equal(frame.rgb, expected)


def test_seeking_over_long_gaps_lands_on_the_right_frames(long_avi):
    info = probe(long_avi)
    plan = plan_sampling(info, FrameSampling(max_frames=4))
    assert min(np.diff(plan.indices)) > SEEK_MIN_GAP  # the sampler must seek here
    assert markers(sample_frames(long_avi, plan)) == list(plan.indices)
    window = plan_sampling(info, FrameSampling(start_s=41.0, end_s=47.0, fps=2.0))
    assert markers(sample_frames(long_avi, window)) == list(window.indices)


def test_h264_mp4_is_probed_and_sampled_frame_exact(long_h264):
    import av
    from av.video.frame import PictureType

    with av.open(str(long_h264)) as container:  # the premise, read by FFmpeg itself: real H.264 with B-frames
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        kinds = [PictureType(frame.pict_type) for frame in container.decode(stream)]
    assert len(kinds) == 600 and PictureType.B in kinds and kinds.count(PictureType.I) < len(kinds) // 20

    info = probe(long_h264)
    assert info.codec in ("avc1", "h264")
    assert (info.frame_count, info.fps, info.width, info.height) == (600, 10.0, 160, 120)
    spread = plan_sampling(info, FrameSampling(max_frames=8))
    assert min(np.diff(spread.indices)) > SEEK_MIN_GAP  # the sampler must seek here
    window = plan_sampling(info, FrameSampling(start_s=41.0, end_s=47.0, fps=2.0))  # read straight through
    for plan in (spread, window):
        frames = sample_frames(long_h264, plan)
        assert [f.index for f in frames] == list(plan.indices)
        assert markers(frames) == list(plan.indices)


def test_corrupt_frame_is_replaced_by_nearest_readable(media, long_avi):
    path = corrupt_avi_frames(long_avi, media / "holes.avi", frames={300, 301})
    info = probe(path)
    plan = SamplingPlan((0, 300, 450), (0.0, 30.0, 45.0), 160, 120, 0.0, 60.0, info.fps)
    frames = sample_frames(path, plan)
    assert [f.index for f in frames] == [0, 302, 450]
    assert markers(frames) == [0, 302, 450]
    assert frames[1].timestamp_s == pytest.approx(30.2)


def test_seek_that_stops_at_a_corrupt_frame_still_reaches_target(media, long_avi):
    """OpenCV pre-rolls 16 frames before a seek target and gives up at a corrupt one."""
    path = corrupt_avi_frames(long_avi, media / "holes2.avi", frames={300, 301})
    plan = SamplingPlan((0, 310, 312), (0.0, 31.0, 31.2), 160, 120, 0.0, 60.0, 10.0)
    assert markers(sample_frames(path, plan)) == [0, 310, 312]


def test_frames_past_a_lying_header_use_nearest_decoded(media, long_avi):
    """A plan made from the header of a truncated file asks for frames that are not there."""
    path = truncate_avi_after(long_avi, media / "lying.avi", 300)
    plan = SamplingPlan((100, 200, 500, 590), (10.0, 20.0, 50.0, 59.0), 160, 120, 0.0, 60.0, 10.0)
    frames = sample_frames(path, plan)
    assert [f.index for f in frames][:2] == [100, 200]
    assert frames[2].index == frames[3].index == 200
    assert frames[2].rgb is frames[1].rgb


# ---------------------------------------------------------------- smart_resize and tokens


@pytest.mark.parametrize(
    ("height", "width"), [(120, 160), (360, 640), (1080, 1920), (2160, 3840), (1920, 1080), (50, 900)]
)
@pytest.mark.parametrize("max_pixels", [224 * 224, 336 * 336, 448 * 448, 16384 * 28 * 28])
@pytest.mark.parametrize("factor", [28, 32])
def test_smart_resize_grid_budget_and_aspect(height, width, max_pixels, factor):
    h, w = smart_resize(height, width, factor=factor, min_pixels=4 * 28 * 28, max_pixels=max_pixels)
    assert h % factor == 0 and w % factor == 0
    assert h * w <= max(max_pixels, factor * factor)
    if min(h, w) > 2 * factor:  # the grid allows little precision on very short sides
        assert w / h == pytest.approx(width / height, rel=0.15)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((1080, 1920), (1092, 1932)),  # under the default budget: sides rounded to 28
        ((360, 640, 28, 3136, 336 * 336), (252, 448)),  # scaled by sqrt(230400/112896), floored
        ((20, 30), (56, 84)),  # below min_pixels: scaled up, ceiled
        ((360, 640, 32, 3136, 336 * 336), (224, 448)),  # Qwen3-VL grid: 252 floors to 224
    ],
)
def test_smart_resize_known_values(args, expected):
    assert smart_resize(*args) == expected


def test_smart_resize_rejects_extreme_aspect():
    with pytest.raises(UserError) as excinfo:
        smart_resize(10, 2010)
    assert_user_error(excinfo, "aspect ratio")


def qwen_grid_tokens(n_frames: int, height: int, width: int, patch: int, merge: int, temporal: int) -> int:
    """Independent count in the HF processor's terms: grid_thw product / merge^2."""
    grid_t = -(-n_frames // temporal)
    grid_h, grid_w = height // patch, width // patch
    return grid_t * grid_h * grid_w // (merge * merge)


@pytest.mark.parametrize(
    ("n", "h", "w", "patch", "temporal"),
    [
        (2, 28, 28, 14, 2),
        (32, 252, 448, 14, 2),
        (16, 336, 588, 14, 2),
        (5, 56, 84, 14, 2),
        (8, 256, 448, 16, 2),
        (3, 224, 224, 14, 1),
    ],
)
def test_video_tokens(n, h, w, patch, temporal):
    assert video_tokens(n, h, w, patch=patch, temporal=temporal) == qwen_grid_tokens(n, h, w, patch, 2, temporal)


def test_video_tokens_worked_examples():
    assert video_tokens(32, 252, 448) == 16 * 9 * 16 == 2304
    assert video_tokens(4, 448, 448, patch=16) == 2 * 14 * 14


def test_video_tokens_needs_whole_tokens():
    with pytest.raises(ValueError):
        video_tokens(4, 100, 100)


# ---------------------------------------------------------------- fit_token_budget


def test_budget_that_fits_changes_nothing():
    settings = FrameSampling()
    info = fake_info()
    assert fit_token_budget(info, settings, 10_000) == settings


def test_budget_lowers_resolution_first():
    info, settings = fake_info(), FrameSampling()
    fitted = fit_token_budget(info, settings, 1500)
    assert plan_cost(info, fitted) <= 1500
    assert fitted.max_frames == settings.max_frames
    assert MIN_FRAME_PIXELS <= fitted.max_pixels < settings.max_pixels


def test_budget_then_lowers_frame_count():
    info, settings = fake_info(), FrameSampling()
    fitted = fit_token_budget(info, settings, 300)
    assert fitted.max_pixels == MIN_FRAME_PIXELS
    assert 2 <= len(plan_sampling(info, fitted).indices) < 32
    assert plan_cost(info, fitted) <= 300


@pytest.mark.parametrize("budget", [128, 250, 700, 1024, 2000, 4096])
@pytest.mark.parametrize(("patch", "temporal"), [(14, 2), (16, 2), (14, 1)])
def test_budget_always_fits(budget, patch, temporal):
    info = fake_info(1280, 720)
    fitted = fit_token_budget(info, FrameSampling(max_frames=64, fps=2.0), budget, patch=patch, temporal=temporal)
    assert fitted.factor == patch * 2
    assert plan_cost(info, fitted, patch=patch, temporal=temporal) <= budget


def test_budget_too_small_says_what_is_needed():
    with pytest.raises(UserError) as excinfo:
        fit_token_budget(fake_info(), FrameSampling(), 20)
    # 2 frames at the 224*224 floor for 16:9: 168x280 -> 6x10 tokens per frame pair
    assert_user_error(excinfo, "20", "need 60", "280x168")


# ---------------------------------------------------------------- clips


def test_make_clip_is_deterministic(tmp_path):
    def pixels(path: Path) -> list[np.ndarray]:
        cap = cv2.VideoCapture(str(path))
        frames = []
        while (got := cap.read())[0]:
            frames.append(got[1])
        return frames

    first = pixels(make_clip(tmp_path / "a.mp4", seconds=1, seed=3))
    again = pixels(make_clip(tmp_path / "b.mp4", seconds=1, seed=3))
    other = pixels(make_clip(tmp_path / "c.mp4", seconds=1, seed=4))
    assert len(first) == 10
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))
    assert not np.array_equal(first[0], first[1])


def test_make_image_writes_png(tmp_path):
    path = make_image(tmp_path / "still.png", size=(64, 48))
    image = cv2.imread(str(path))
    assert image.shape == (48, 64, 3)
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=(16, 16)),
        dict(seconds=0.0),
        dict(fps=0.0),
        dict(codec="avc1", size=(161, 120)),  # H.264's yuv420p needs even sides
        dict(codec="XXXX"),
        dict(codec="mp4v", faststart=True),  # OpenCV's writer cannot move the index
        dict(codec="h264x"),
    ],
)
def test_make_clip_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(UserError):
        make_clip(tmp_path / "bad.mp4", **kwargs)


# ---------------------------------------------------------------- warnings a user is shown


def test_truncated_file_warns_with_the_duration_that_decodes(media, long_avi):
    from vreason_local.media import load_video

    path = truncate_avi_after(long_avi, media / "warned.avi", 300)
    info = probe(path)
    assert len(info.warnings) == 1 and "\n" not in info.warnings[0]
    for words in ("warned.avi", "60.0 s (600 frames)", "30.0 s (300 frames)"):
        assert words in info.warnings[0], info.warnings[0]
    loaded = load_video(path, FrameSampling(max_frames=4), patch=14)
    assert loaded.warnings == info.warnings  # what the front ends print


def test_whole_files_have_no_warnings(long_avi, media):
    assert probe(long_avi).warnings == ()
    nocount = avi_without_frame_count(make_clip(media / "count-src.avi", seconds=1, codec="MJPG"), media / "nc.avi")
    assert probe(nocount).warnings == ()  # no count in the header promises nothing to fall short of


def frames_ffmpeg_decodes(path: Path) -> int:
    """How many frames FFmpeg's own decoder (through PyAV) gets out of `path` before its data ends:
    the independent count a probe of a truncated file must arrive at."""
    import av

    count = 0
    with av.open(str(path)) as container:
        try:
            for _ in container.decode(video=0):
                count += 1
        except av.error.InvalidDataError:  # the cut: a packet the index lists runs past the end of the file
            pass
    return count


def cut_h264_clip(media: Path, name: str) -> tuple[Path, int]:
    """A 30 s, 10 fps H.264 clip cut to a third of its bytes, and the frames FFmpeg decodes from it.

    The MP4 has its index (moov) in front, as web and phone exports do, so the cut file still opens
    and the index still lists all 300 frames; the MKV's header states the full duration.
    """
    source = make_clip(media / f"whole-{name}", seconds=30, fps=10, codec="avc1", faststart=name.endswith(".mp4"))
    if name.endswith(".mp4"):
        data = source.read_bytes()
        assert data.index(b"moov") < data.index(b"mdat")  # premise: the index comes first
    path = truncate(source, media / f"cut-{name}", 1 / 3)
    decodable = frames_ffmpeg_decodes(path)
    assert 60 < decodable < 150  # premise: about a third decodes
    return path, decodable


@pytest.fixture(scope="module", params=["faststart.mp4", "h264.mkv"])
def cut_h264(request: pytest.FixtureRequest, media: Path) -> tuple[Path, int]:
    return cut_h264_clip(media, request.param)


@pytest.fixture(scope="module")
def cut_mp4(media: Path) -> tuple[Path, int]:
    """The case of issue 18: the cut MP4 with its index in front, which used to give no warning."""
    return cut_h264_clip(media, "front.mp4")


def test_cut_h264_warns_with_the_length_that_decodes(cut_h264):
    from vreason_local.media import load_video

    path, decodable = cut_h264
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 300  # the header still promises every frame
    cap.release()
    info = probe(path)
    assert info.frame_count == decodable
    assert info.duration_s == pytest.approx(decodable / 10)
    assert len(info.warnings) == 1 and "\n" not in info.warnings[0]
    for words in (path.name, "30.0 s (300 frames)", f"{decodable / 10:.1f} s ({decodable} frames)"):
        assert words in info.warnings[0], info.warnings[0]
    assert load_video(path, FrameSampling(max_frames=4), patch=14).warnings == info.warnings


def test_cut_h264_samples_distinct_frames_from_what_decodes(cut_h264):
    path, decodable = cut_h264
    plan = plan_sampling(probe(path), FrameSampling(fps=3.0, max_frames=32))
    # made from the decodable length (9-12 s at 3 fps, rounded to even), not the header's 30 s (32 frames)
    assert len(plan.indices) == 2 * math.floor(decodable / 10 * 3 / 2 + 0.5) < 32
    assert plan.indices[-1] >= decodable - decodable / len(plan.indices)  # spread to the end of what decodes
    frames = sample_frames(path, plan)
    assert [f.index for f in frames] == list(plan.indices)
    assert markers(frames) == list(plan.indices)  # the pixels, too: distinct frames, all inside the decodable part
    assert len(set(plan.indices)) == len(plan.indices) and plan.indices[-1] < decodable


def test_seek_past_the_data_of_a_cut_mp4_still_grabs(cut_mp4):
    """Why the cut MP4 used to slip through: its index lists every frame, so a seek past the data stops at
    the last frame that decodes and grab() succeeds there. Only the frame's timestamp tells."""
    path, decodable = cut_mp4
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_POS_FRAMES, 299)
    assert cap.grab()
    assert cap.get(cv2.CAP_PROP_POS_MSEC) / 100 < decodable + 1  # landed at the end of the data, not at 299
    cap.release()


def test_run_json_on_a_cut_mp4_warns_and_repeats_no_frame(cut_mp4, tiny_model_factory, vreason):
    path, decodable = cut_mp4
    tiny = tiny_model_factory()
    model = ["--model", str(tiny.model_path), "--mmproj", str(tiny.mmproj_path), "--threads", "1"]
    rc, out, err = vreason(["run", "--json", "--video", str(path), *model, "--max-tokens", "2", "-q", "What happens?"])
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{decodable / 10:.1f} s ({decodable} frames)" in warnings[0], err
    frames = json.loads(out)["frames"]
    indices = [f["index"] for f in frames]
    assert len(frames) >= 8 and len(set(indices)) == len(indices)
    assert indices == sorted(indices) and indices[-1] < decodable
    assert all(f["timestamp_s"] < decodable / 10 for f in frames)


def test_whole_h264_files_have_no_warnings(media):
    """The healthy counterparts of the cut clips: one seek to the last frame, and it is there."""
    for name in ("ok-faststart.mp4", "ok.mp4", "ok.mkv"):
        path = make_clip(media / name, seconds=5, fps=10, codec="avc1", faststart=name == "ok-faststart.mp4")
        info = probe(path)
        assert (info.frame_count, info.warnings) == (50, ()), name

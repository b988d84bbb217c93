"""Video input: probe a file, plan which frames to sample, decode them, estimate their token cost.

Data flows one way: file -> `probe` -> `plan_sampling` -> `sample_frames` -> the vision encoder.
Decoding uses OpenCV only (its wheel bundles FFmpeg), so there is no ffmpeg executable to find.
Every problem a user can fix is raised as a one-line `UserError` that names the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from vreason_local.errors import Remedy, UserError
from vreason_local.settings import MIN_PIXELS, QWEN2_FACTOR, FrameSampling, even_frame_range

# FFmpeg prints decoder complaints ("moov atom not found", "No JPEG data found") straight to
# stderr, ahead of our own one-line error. OpenCV reads this variable when it first starts
# FFmpeg, so it must be set before any capture is opened; setdefault lets a user turn the
# messages back on (OPENCV_FFMPEG_LOGLEVEL=32) when debugging a file.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

MAX_ASPECT_RATIO = 200  # qwen-vl-utils rejects frames more elongated than this
MAX_PLAUSIBLE_FPS = 1000.0  # high-speed cameras stay below; larger values are header garbage
# fit_token_budget never shrinks frames below this: at 224x224 a frame is an 8x8 token grid,
# about where objects and text stop being recognisable, so dropping frames is the better loss.
MIN_FRAME_PIXELS = 224 * 224
# OpenCV's seek restarts decoding 16 frames before the target (and from the keyframe before
# that), so one seek costs about 16 + GOP/2 + a few decodes: ~30 grabs on the benchmark clip
# (GOP 12), ~40-55 for phone footage (GOP 1-2 s), ~150 for x264's default GOP of 250. Gaps up
# to this many frames are walked with grab() instead; 64 is never more than ~2x off the best.
SEEK_MIN_GAP = 64
# After a frame fails to decode, how many following frames to try before giving up on it.
FORWARD_TRIES = 8


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learned about a video; width and height are as displayed (after rotation)."""

    path: Path
    duration_s: float
    fps: float
    frame_count: int
    width: int
    height: int
    rotation_deg: int
    codec: str
    # What the user should know before trusting the answer, e.g. that the file ends before its header
    # says (one line each; front ends print them).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SamplingPlan:
    """Which frames to decode and the size to scale them to.

    `timestamps_s[i]` is the presentation time of `indices[i]` (index / fps), so the model is
    told when each frame was shown, not when we wished to sample. `fps` is the source rate the
    sampler uses to turn decoded timestamps back into indices.
    """

    indices: tuple[int, ...]
    timestamps_s: tuple[float, ...]
    width: int
    height: int
    start_s: float
    end_s: float
    fps: float


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame, upright RGB uint8 (height, width, 3), C-contiguous.

    `index` and `timestamp_s` are those of the frame actually decoded: when a planned frame
    cannot be decoded they name the nearest readable one that replaced it.
    """

    index: int
    timestamp_s: float
    rgb: np.ndarray


# ---------------------------------------------------------------- probing


def probe(path: str | Path) -> VideoInfo:
    """Open a video, check that it decodes, and report its geometry and timing.

    Header values are checked, not trusted: a frame count that is missing is counted by
    reading, and one whose last frame does not decode (a truncated file) is corrected by a
    binary search with seeks, so `plan_sampling` never picks frames that do not exist. The
    user is then warned (`VideoInfo.warnings`): the answer covers only the part that decodes.
    """
    path = check_video_file(path)
    with _capture(path) as cap:
        first = _first_frame(cap, path)
        fps = _checked_fps(cap, path)
        count, promised = _verified_frame_count(cap, path, fps)
        rotation = int(cap.get(cv2.CAP_PROP_ORIENTATION_META)) % 360
        codec = _fourcc(cap)
    height, width = first.shape[:2]
    warnings: tuple[str, ...] = ()
    if count < promised:
        warnings = (
            f"{path.name} ends early: its header promises {promised / fps:.1f} s ({promised} frames) but "
            f"only the first {count / fps:.1f} s ({count} frames) can be decoded; the answer covers only those",
        )
    return VideoInfo(path, count / fps, fps, count, width, height, rotation, codec, warnings)


def check_video_file(path: str | Path) -> Path:
    """Reject what is not a non-empty regular file before OpenCV gives a vaguer answer."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"video file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a video file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes), not a video")
    return path.resolve()  # absolute, so FFmpeg never reads "name:rest" as a protocol


@contextmanager
def _capture(path: Path) -> Iterator[cv2.VideoCapture]:
    """An opened FFmpeg capture that rotates frames upright, released on exit.

    The FFmpeg backend is named so behaviour (auto-rotation, seeking) does not depend on which
    backend OpenCV would guess. OpenCV's own warnings are silenced while opening because every
    failure here becomes a clearer UserError.
    """
    with _quiet_opencv():
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        _reject_unopenable(cap, path)
        # Passing this in the constructor's params makes OpenCV 5 refuse to open at all.
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        yield cap
    finally:
        cap.release()


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's logger for the duration (it warns on every file it cannot open)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _reject_unopenable(cap: cv2.VideoCapture, path: Path) -> None:
    """Raise for still images and for files FFmpeg cannot demux or has no decoder for.

    FFmpeg opens JPEG and PNG files as one-frame videos, so images are told apart by
    OpenCV's image reader recognising the file and the capture holding at most one frame
    (an animated GIF with many frames stays a video).
    """
    opened = cap.isOpened()
    if cv2.haveImageReader(str(path)) and (not opened or not cap.get(cv2.CAP_PROP_FRAME_COUNT) > 1):
        raise UserError(f"{path} is a still image, not a video", [Remedy("give it as the image", "image", str(path))])
    if not opened:
        raise UserError(
            f"cannot open {path} as a video: not a video file, or its container or codec is not "
            "supported by OpenCV's FFmpeg (if it is a video, re-encode it to H.264/MP4)"
        )


def _first_frame(cap: cv2.VideoCapture, path: Path) -> np.ndarray:
    """Decode frame 0, telling an empty stream apart from one whose codec we cannot decode."""
    ok, frame = cap.read()
    if ok:
        return frame
    if cap.get(cv2.CAP_PROP_FRAME_COUNT) <= 0:
        raise UserError(f"{path} contains no video frames")
    raise UserError(
        f"cannot decode {path} (codec {_fourcc(cap)!r}): the codec is unsupported by OpenCV's FFmpeg "
        "or the data is corrupt; re-encode it to H.264/MP4"
    )


def _checked_fps(cap: cv2.VideoCapture, path: Path) -> float:
    """The stream's frame rate; FFmpeg substitutes 25 when a header has none, so junk is rare."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    if not 0 < fps <= MAX_PLAUSIBLE_FPS:
        raise UserError(f"{path} reports an unusable frame rate ({fps}); re-encode it to H.264/MP4")
    return fps


def _verified_frame_count(cap: cv2.VideoCapture, path: Path, fps: float) -> tuple[int, int]:
    """(frames that decode, frames the header promises): the header's count when its last frame
    decodes, else measured (the promise is then the measured count when the header has none).

    A healthy file costs one seek to its last frame; only a file that fails it pays for the search.
    """
    reported = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    if not 1 <= reported < 2**40:  # 0, negative or absurd: some containers do not store it
        count = _count_by_reading(path)
        return count, count
    promised = int(reported)
    if _decodes_at(cap, promised - 1, fps):
        return promised, promised
    return _last_decodable(cap, promised - 1, fps) + 1, promised


def _count_by_reading(path: Path) -> int:
    """Count frames by grabbing them all: a full decode, used only when the header has no count."""
    with _capture(path) as cap:
        count = 0
        while cap.grab():
            count += 1
    return count


def _decodes_at(cap: cv2.VideoCapture, index: int, fps: float) -> bool:
    """Whether a seek to `index` yields that frame (False past the real end of a truncated file).

    A successful grab is not enough: in an MP4 whose index (moov) comes first and lists every
    frame, a seek past the end of the data stops at the last frame it could decode and grab()
    still succeeds there. The frame's timestamp says where the seek really landed.
    """
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    return cap.grab() and _grabbed_index(cap, fps, index) >= index


def _grabbed_index(cap: cv2.VideoCapture, fps: float, expected: int) -> int:
    """Index of the frame just grabbed, from its timestamp; `expected` if it has none (0 ms)."""
    msec = cap.get(cv2.CAP_PROP_POS_MSEC)
    return round(msec * fps / 1000) if msec > 0 else expected


def _last_decodable(cap: cv2.VideoCapture, bad: int, fps: float) -> int:
    """Binary search for the last index that decodes, given 0 does and `bad` does not.

    A truncated file keeps its full header, so this finds where the data really ends in
    log2(count) seeks instead of decoding the whole file.
    """
    good = 0
    while bad - good > 1:
        middle = (good + bad) // 2
        if _decodes_at(cap, middle, fps):
            good = middle
        else:
            bad = middle
    return good


def _fourcc(cap: cv2.VideoCapture) -> str:
    """The codec's FourCC as text, e.g. 'avc1', 'FMP4', 'MJPG' (unprintable bytes dropped)."""
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    chars = (chr((code >> shift) & 0xFF) for shift in (0, 8, 16, 24))
    return "".join(c for c in chars if c.isprintable()).strip() or "unknown"


# ---------------------------------------------------------------- resizing and planning


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN2_FACTOR,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = 16384 * 28 * 28,
) -> tuple[int, int]:
    """Qwen-VL's resize rule (qwen-vl-utils): sides multiples of `factor`, area within budget.

    Each side is rounded to the nearest multiple of `factor`; if the area then leaves
    [min_pixels, max_pixels], both sides are scaled by the same ratio and ceiled (or floored)
    to multiples, which keeps the aspect ratio as closely as the grid allows. The budget wins
    over min_pixels, and unlike qwen-vl-utils it also holds for very elongated frames, whose
    short side cannot go below one grid cell: the long side then gives up the area. So any
    max_pixels of at least factor**2 (one token) is honoured.
    """
    if min(height, width) < 1 or max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise UserError(f"frame size {width}x{height} is unusable: aspect ratio must be at most {MAX_ASPECT_RATIO}:1")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
        cells = max(1, max_pixels // (factor * factor))  # the budget in grid cells
        if h_bar == factor:
            w_bar = min(w_bar, cells * factor)
        elif w_bar == factor:
            h_bar = min(h_bar, cells * factor)
    return h_bar, w_bar


def plan_sampling(info: VideoInfo, settings: FrameSampling = FrameSampling()) -> SamplingPlan:
    """Pick an even number of uniformly spaced, distinct frames from the clip window.

    The count is window length x target fps, clamped to [min_frames, max_frames] and made even
    because Qwen packs consecutive frame pairs into one temporal patch. Each frame is the
    middle of one of `count` equal slices of the window, so the spacing is even and neither
    the (often black) first frame nor the last is favoured. A window holding fewer frames than
    that gets every frame it has (rounded down to even); one holding a single frame gets it
    twice. An end past the video's end is clamped silently when the start lies inside, so
    "from 50 s to the end" can be written with any large end.
    """
    start_s, end_s = _clip_window(info, settings)
    first, last = _window_frames(info, start_s, end_s)
    available = last - first + 1
    count = _frame_count_for(end_s - start_s, settings, available)
    step = available / count  # >= 1 unless the window holds a single frame, so indices differ
    indices = tuple(first + math.floor((k + 0.5) * step) for k in range(count))
    height, width = smart_resize(info.height, info.width, settings.factor, settings.min_pixels, settings.max_pixels)
    timestamps = tuple(index / info.fps for index in indices)
    return SamplingPlan(indices, timestamps, width, height, start_s, end_s, info.fps)


def _clip_window(info: VideoInfo, settings: FrameSampling) -> tuple[float, float]:
    """The [start, end) window in seconds, checked against the video's duration."""
    start_s = settings.start_s or 0.0
    if start_s >= info.duration_s:
        raise UserError(f"clip start {start_s} s is beyond the end of {info.path.name} ({info.duration_s:.2f} s long)")
    end_s = info.duration_s if settings.end_s is None else min(settings.end_s, info.duration_s)
    return start_s, end_s


def _window_frames(info: VideoInfo, start_s: float, end_s: float) -> tuple[int, int]:
    """First and last index of the frames that start inside [start, end).

    A window falling between two frame starts (or inside the last frame) holds none; it then
    gets the frame on screen at its start.
    """
    first = math.ceil(start_s * info.fps - 1e-6)  # the epsilon keeps 2.0 s * 30 fps at frame 60
    last = min(math.ceil(end_s * info.fps - 1e-6), info.frame_count) - 1
    if last < first:
        first = last = min(math.floor(start_s * info.fps), info.frame_count - 1)
    return first, last


def _frame_count_for(window_s: float, settings: FrameSampling, available: int) -> int:
    """Even frame count for a window: target fps, clamped to the limits and to the frames there."""
    low, high = even_frame_range(settings.min_frames, settings.max_frames)
    wanted = 2 * math.floor(window_s * settings.fps / 2 + 0.5)
    count = min(high, max(low, wanted))
    return max(2, min(count, available - available % 2))


# ---------------------------------------------------------------- decoding


def sample_frames(path: str | Path, plan: SamplingPlan) -> list[Frame]:
    """Decode the planned frames, upright, scaled to the plan's size with INTER_AREA, as RGB.

    Frames are read in one forward pass: short gaps are skipped with grab() (decode without the
    colour conversion), long ones with a seek. A frame that will not decode is replaced by the
    nearest one that does (see `Frame`); only a file where no planned frame decodes is an error.
    Repeated indices in the plan share one array.
    """
    path = check_video_file(path)
    decoded: dict[int, np.ndarray] = {}
    with _capture(path) as cap:
        reader = _FrameReader(cap, plan.fps)
        for target in sorted(set(plan.indices)):
            if target in decoded or reader.next_index > target:
                continue  # already read, or passed over while replacing an unreadable frame
            got = reader.read_near(target)
            if got is not None:
                decoded[got[0]] = _to_rgb(got[1], plan.width, plan.height)
    if not decoded:
        raise UserError(f"none of the {len(plan.indices)} planned frames of {path} could be decoded")
    return [_nearest_frame(decoded, target, plan.fps) for target in plan.indices]


class _FrameReader:
    """Forward-only reader that knows the index of the frame its next grab() returns.

    The index is re-anchored on each decoded frame's timestamp, because OpenCV's seek can stop
    short of its target (it gives up its pre-roll at a corrupt frame) and a failed grab leaves
    no other trace of where the stream is.
    """

    def __init__(self, cap: cv2.VideoCapture, fps: float) -> None:
        self._cap = cap
        self._fps = fps
        self.next_index = 0

    def read_near(self, target: int) -> tuple[int, np.ndarray] | None:
        """Frame `target` as BGR with its index, else the first decodable one after it, else None."""
        self._move_to(target)
        for _ in range(FORWARD_TRIES):
            got = self._read_next()
            if got is not None and got[0] >= target:
                return got
            if got is not None:
                self._move_to(target)  # a seek stopped short: walk on to the target
        return None

    def _move_to(self, target: int) -> None:
        """Position so the next grab() returns `target` (callers never ask to go backwards)."""
        gap = target - self.next_index
        if gap > SEEK_MIN_GAP:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, target)
        else:
            for _ in range(gap):
                self._cap.grab()
        self.next_index = target

    def _read_next(self) -> tuple[int, np.ndarray] | None:
        """Decode the next frame; None if it fails (a failed grab still consumes that frame)."""
        expected = self.next_index
        self.next_index += 1
        if not self._cap.grab():
            return None
        index = _grabbed_index(self._cap, self._fps, expected)
        self.next_index = index + 1
        ok, bgr = self._cap.retrieve()
        return (index, bgr) if ok else None


def _to_rgb(bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale (INTER_AREA: averages source pixels, no aliasing when shrinking) and convert to RGB."""
    if bgr.shape[:2] != (height, width):
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def _nearest_frame(decoded: dict[int, np.ndarray], target: int, fps: float) -> Frame:
    """The decoded frame closest to `target` (the earlier one on a tie)."""
    index = min(decoded, key=lambda i: (abs(i - target), i))
    return Frame(index, index / fps, decoded[index])


# ---------------------------------------------------------------- token cost


def video_tokens(n_frames: int, height: int, width: int, patch: int = 14, merge: int = 2, temporal: int = 2) -> int:
    """LLM tokens for `n_frames` frames of height x width through a Qwen-VL vision encoder.

    Frames are grouped `temporal` at a time (an odd last group is padded, as Qwen does by
    repeating the last frame), each group is cut into patch x patch squares and merge x merge
    squares become one token: ceil(n / temporal) * (h / (patch*merge)) * (w / (patch*merge)).
    Qwen2/2.5-VL: patch 14 (28 px per token); Qwen3-VL: patch 16 (32 px per token). Use
    temporal=1 for a runtime that encodes each frame as its own image.
    """
    side = patch * merge
    if height % side or width % side:
        raise ValueError(f"{width}x{height} is not a multiple of {side}; smart_resize it first")
    return math.ceil(n_frames / temporal) * (height // side) * (width // side)


def fit_token_budget(
    info: VideoInfo,
    settings: FrameSampling,
    budget_tokens: int,
    patch: int = 14,
    merge: int = 2,
    temporal: int = 2,
) -> FrameSampling:
    """Settings whose plan for `info` costs at most `budget_tokens` video tokens.

    Resolution goes first, down to MIN_FRAME_PIXELS (or the caller's own lower max_pixels),
    because questions about a video are mostly about what happens when, which needs the
    frames more than fine detail; below that floor frames stop being legible, so the frame
    count goes next, down to 2. The returned settings use the model's grid (patch * merge).
    """
    settings = replace(settings, factor=patch * merge)
    frames = len(plan_sampling(info, settings).indices)
    settings = _with_max_pixels(settings, _pixels_for(settings, budget_tokens, frames, temporal))
    plan = plan_sampling(info, settings)
    if video_tokens(len(plan.indices), plan.height, plan.width, patch, merge, temporal) <= budget_tokens:
        return settings
    per_group = video_tokens(temporal, plan.height, plan.width, patch, merge, temporal)
    affordable = min(frames, budget_tokens // per_group * temporal)
    affordable -= affordable % 2  # plans hold an even number of frames
    if affordable < 2:
        needed = video_tokens(2, plan.height, plan.width, patch, merge, temporal)
        raise UserError(
            f"a budget of {budget_tokens} video tokens is too small for {info.path.name}: even 2 frames "
            f"at {plan.width}x{plan.height} need {needed}; raise the budget or the context size"
        )
    return replace(settings, max_frames=affordable, min_frames=min(settings.min_frames, affordable))


def _pixels_for(settings: FrameSampling, budget_tokens: int, frames: int, temporal: int) -> int:
    """Largest max_pixels that fits the budget at `frames` frames, not below the floor."""
    tokens_per_group = budget_tokens // math.ceil(frames / temporal)
    floor = min(MIN_FRAME_PIXELS, settings.max_pixels)
    return max(floor, min(settings.max_pixels, tokens_per_group * settings.factor**2))


def _with_max_pixels(settings: FrameSampling, max_pixels: int) -> FrameSampling:
    """`settings` with a new pixel cap, lowering min_pixels with it so the pair stays valid."""
    return replace(settings, max_pixels=max_pixels, min_pixels=min(settings.min_pixels, max_pixels))

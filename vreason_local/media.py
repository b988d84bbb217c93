"""From what the user names (a video, an image, or nothing) to the `Media` the engine encodes.

The only place that knows both the files and the model's vision grid, so front ends stay thin.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2

from .errors import UserError
from .video import (
    Frame,
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


@dataclass(frozen=True)
class Media:
    """What the user asks about: a video's sampled frames, one still image, or nothing."""

    kind: Literal["video", "image", "none"]
    frames: Sequence[Frame] = ()
    source: str = ""

    @staticmethod
    def none() -> Media:
        return Media("none")

    def frame_times(self) -> list[dict]:
        """Each frame's index in the video and when it was shown (to the millisecond), as the JSON outputs list them."""
        return [{"index": f.index, "timestamp_s": round(f.timestamp_s, 3)} for f in self.frames]


@dataclass(frozen=True)
class LoadedMedia:
    """The media plus what the user is shown before encoding (the estimate) and in the JSON."""

    media: Media
    n_tokens: int  # vision tokens the media will occupy
    info: VideoInfo | None = None
    plan: SamplingPlan | None = None
    sampling_s: float = 0.0
    # One line each, for the user before the answer (e.g. a video that ends before its header says):
    # the answer is still given, but covers less than they may think.
    warnings: tuple[str, ...] = ()

    def summary(self, requested: FrameSampling, token_budget: int | None) -> dict | None:
        """The frames as asked for and as sampled, for `run --json` and eval rows alike: a video's requested
        settings (`requested_frames`) with the count, size and window sampled; an image's size; None without
        media. The window is the one sampled (a clip's end clamped to the video), to the millisecond."""
        if self.media.kind == "none":
            return None
        if self.media.kind == "image":
            h, w = self.media.frames[0].rgb.shape[:2]
            return {"count": 1, "width": w, "height": h, "max_pixels": requested.max_pixels}
        out = requested_frames(requested, token_budget)
        if self.plan is not None:
            p = self.plan
            out.update(count=len(self.media.frames), width=p.width, height=p.height)
            out.update(start_s=round(p.start_s, 3), end_s=round(p.end_s, 3))
        return out


def requested_frames(requested: FrameSampling, token_budget: int | None) -> dict:
    """The frame settings a user sets (rate, frame limits, window, pixel budget) and the token budget: what a
    video's frames were asked to be, also where they never were sampled (an eval row whose video failed)."""
    keys = ("fps", "min_frames", "max_frames", "start_s", "end_s", "max_pixels")
    return {**{k: getattr(requested, k) for k in keys}, "token_budget": token_budget}


def load_video(path: Path, settings: FrameSampling, patch: int, token_budget: int | None = None) -> LoadedMedia:
    """Probe, plan (fitting `token_budget` if given) and decode the frames of a video."""
    t0 = time.perf_counter()
    info, plan = _plan(path, settings, patch, token_budget)
    frames = sample_frames(path, plan)
    n = video_tokens(len(frames), plan.height, plan.width, patch=patch)
    return LoadedMedia(Media("video", frames, str(path)), n, info, plan, time.perf_counter() - t0, info.warnings)


def plan_video_tokens(
    path: Path, settings: FrameSampling, patch: int, token_budget: int | None = None
) -> tuple[int, int]:
    """The frames and vision tokens `load_video` will take, planned from the video's header, not decoded."""
    _, plan = _plan(path, settings, patch, token_budget)
    return len(plan.indices), video_tokens(len(plan.indices), plan.height, plan.width, patch=patch)


def _plan(path: Path, settings: FrameSampling, patch: int, token_budget: int | None) -> tuple[VideoInfo, SamplingPlan]:
    info = probe(path)
    settings = replace(settings, factor=patch * 2)
    if token_budget:
        settings = fit_token_budget(info, settings, token_budget, patch=patch)
    return info, plan_sampling(info, settings)


def check_image_file(path: Path) -> None:
    if not Path(path).is_file():
        raise UserError(f"image not found: {path}")


def load_image(path: Path, max_pixels: int, patch: int) -> LoadedMedia:
    """Read a still image and resize it to the model's grid within the pixel budget."""
    t0 = time.perf_counter()
    check_image_file(path)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"{path} is not an image OpenCV can read (PNG, JPEG, WebP, BMP, TIFF)")
    h, w = smart_resize(bgr.shape[0], bgr.shape[1], factor=patch * 2, max_pixels=max_pixels)
    rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    n = video_tokens(1, h, w, patch=patch, temporal=1)  # one image: no temporal merge
    return LoadedMedia(Media("image", [Frame(0, 0.0, rgb)], str(path)), n, sampling_s=time.perf_counter() - t0)

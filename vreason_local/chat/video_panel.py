"""The video panel: what the model will see before it sees it.

File name, duration and resolution (`video.probe`, via the plan), the sampled frames as thumbnails with
their timestamps, and the token / memory / time estimate (`planning.plan_run`'s `Estimate`). Frame
settings (fps, frame count, resolution, clip window) can be edited: the estimate and thumbnails follow
as you type (a plan is cheap next to an encode), and Apply encodes the video with them. Another video
can be opened by path without restarting.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import PIL.Image
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, HorizontalScroll, Vertical
from textual.message import Message
from textual.widgets import Button, Collapsible, Input, Label, Static

from ..errors import UserError
from ..fit import format_bytes
from ..planning import Plan
from ..settings import render_error
from ..video import FrameSampling
from .widgets import seconds_text

THUMBS_MAX = 16  # thumbnails drawn; the count of all frames is in the caption


def parse_pixels(text: str) -> int:
    """A frame pixel budget written `336x336` or `112896`."""
    t = text.lower().replace(" ", "")
    if "x" in t:
        w, h = t.split("x", 1)
        return int(w) * int(h)
    return int(t)


def _optional_float(text: str) -> float | None:
    return float(text) if text.strip() else None


class VideoPanel(Vertical):
    """Info, thumbnails, estimate and frame settings of the current video."""

    class Apply(Message):
        """Encode the video with these frame settings."""

        def __init__(self, frames: FrameSampling) -> None:
            super().__init__()
            self.frames = frames

    class Preview(Message):
        """The frame settings changed: plan them (estimate only)."""

        def __init__(self, frames: FrameSampling) -> None:
            super().__init__()
            self.frames = frames

    class Open(Message):
        """Open another video by path."""

        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

    def __init__(self, image_class: type) -> None:
        super().__init__(id="video")
        self.border_title = "Video"
        self.image_class = image_class
        self.frames = FrameSampling()
        self._timer = None

    def compose(self) -> ComposeResult:
        yield Static("no video", id="video-info")
        yield HorizontalScroll(id="thumbs")
        yield Static("", id="estimate")
        with Collapsible(title="Frames, resolution, clip", collapsed=True, id="frame-settings"):
            for key, label in (
                ("fps", "fps"),
                ("max_frames", "max frames"),
                ("pixels", "max pixels"),
                ("start", "start s"),
                ("end", "end s"),
            ):
                with Horizontal(classes="field"):
                    yield Label(label)
                    yield Input(id=f"set-{key}", classes="setting")
            yield Button("Apply (encode again)", id="apply", variant="primary")
        with Horizontal(classes="field"):
            yield Input(placeholder="open another video: path", id="video-path")

    def show_settings(self, frames: FrameSampling) -> None:
        """Fill the inputs from the settings in use (without triggering a preview)."""
        self.frames = frames
        values = {
            "fps": f"{frames.fps:g}",
            "max_frames": str(frames.max_frames),
            "pixels": str(frames.max_pixels),
            "start": "" if frames.start_s is None else f"{frames.start_s:g}",
            "end": "" if frames.end_s is None else f"{frames.end_s:g}",
        }
        for key, value in values.items():
            box = self.query_one(f"#set-{key}", Input)
            with box.prevent(Input.Changed):
                box.value = value

    def read_settings(self) -> FrameSampling:
        """The frame settings typed in; `UserError` (from FrameSampling's own checks) or ValueError."""
        v = {k: self.query_one(f"#set-{k}", Input).value for k in ("fps", "max_frames", "pixels", "start", "end")}
        return replace(
            self.frames,
            fps=float(v["fps"]),
            max_frames=int(v["max_frames"]),
            min_frames=min(self.frames.min_frames, max(2, int(v["max_frames"]))),
            max_pixels=parse_pixels(v["pixels"]),
            start_s=_optional_float(v["start"]),
            end_s=_optional_float(v["end"]),
        )

    @on(Input.Changed, ".setting")
    def _changed(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(0.4, self._preview)

    def _preview(self) -> None:
        try:
            self.post_message(self.Preview(self.read_settings()))
        except (ValueError, UserError) as exc:
            self.query_one("#estimate", Static).update(f"[$error]{_problem(exc)}[/]")

    @on(Button.Pressed, "#apply")
    def _apply(self) -> None:
        try:
            self.post_message(self.Apply(self.read_settings()))
        except (ValueError, UserError) as exc:
            self.app.notify(_problem(exc), severity="error")

    @on(Input.Submitted, "#video-path")
    def _open(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.post_message(self.Open(event.value.strip()))

    async def show_plan(self, plan: Plan) -> None:
        """Info, thumbnails and estimate of a plan."""
        media = plan.media
        info = media.info
        if info is not None:
            self.query_one("#video-info", Static).update(
                f"[b]{info.path.name}[/b]\n{info.duration_s:.1f} s · {info.width}x{info.height} · {info.fps:.3g} fps"
            )
        elif media.media.kind == "image":
            h, w = media.media.frames[0].rgb.shape[:2]
            self.query_one("#video-info", Static).update(f"[b]{Path(media.media.source).name}[/b]\nimage · {w}x{h}")
        else:
            self.query_one("#video-info", Static).update("no video: questions are text only")
        thumbs = self.query_one("#thumbs", HorizontalScroll)
        await thumbs.remove_children()
        frames = list(media.media.frames) if media.media.kind in ("video", "image") else []
        cells = []
        for frame in frames[:THUMBS_MAX]:
            image = self.image_class(PIL.Image.fromarray(frame.rgb), classes="thumb")
            cells.append(Vertical(image, Label(f"{frame.timestamp_s:.1f}s", classes="stamp"), classes="thumbcell"))
        if cells:
            await thumbs.mount_all(cells)
        thumbs.display = bool(cells)
        self.query_one("#estimate", Static).update(estimate_text(self.app, plan))


def _problem(exc: ValueError | UserError) -> str:
    """A value typed in that cannot work: a `UserError` with its remedy in the panel's words, or what Python
    could not read as a number."""
    return render_error(exc, "label") if isinstance(exc, UserError) else str(exc)


def estimate_text(app: object, plan: Plan) -> str:
    """Frames, vision tokens, context, memory (model + projector + KV cache) and encode time."""
    e = plan.estimate
    media = plan.media
    lines = []
    if media.plan is not None:
        p = media.plan
        lines.append(f"{len(media.media.frames)} frames {p.width}x{p.height} · {p.start_s:.1f}–{p.end_s:.1f} s")
    lines.append(f"{e.n_media_tokens:,} vision tokens · context {e.n_ctx:,}")
    weights = plan.info.file_bytes + (plan.projector.file_bytes if plan.projector else 0)
    lines.append(f"memory ≈ {format_bytes(weights + e.kv_bytes)} (KV {format_bytes(e.kv_bytes)})")
    if e.stored_s is not None:  # the encoding cache on disk holds this video's encoding
        lines.append(f"encoding on disk: loads in place of {seconds_text(app, e.stored_s)}")
    else:
        guess = "" if e.measured or not getattr(app, "show_timings", True) else " (guess)"
        lines.append(f"encode + prefill ~{seconds_text(app, e.prefill_s)}{guess}")
    return "\n".join(lines)

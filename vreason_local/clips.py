"""Synthetic test media: small, deterministic videos and images written with OpenCV.

Tests and `vreason demo` need real files without shipping binaries or calling an ffmpeg
executable. Every frame of a generated clip carries its own frame number as a row of
black/white cells (see `read_frame_number`), so a test can check that the sampler returned
exactly the frames it planned, even after lossy encoding and resizing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from vreason_local.errors import UserError

# The marker is a band across the top of the frame, split into MARKER_BITS equal cells, most
# significant bit on the left. 12 bits number 4096 frames (6.8 min at 10 fps, 2.3 min at
# 30 fps); longer clips wrap around, which is harmless for tests that look at a few frames.
MARKER_BITS = 12
MARKER_BAND = 0.125  # fraction of the frame height the band takes
MIN_SIZE = (48, 32)  # below this, marker cells and the moving square shrink to a few pixels
# FourCCs written as H.264 with PyAV (its wheels bundle FFmpeg with libx264): the opencv-python wheels
# carry no software H.264 encoder, yet H.264 in MP4 is what users' clips almost always are.
H264_CODECS = ("avc1", "h264", "H264")


def make_clip(
    path: str | Path,
    seconds: float = 4.0,
    fps: float = 10.0,
    size: tuple[int, int] = (160, 120),
    codec: str = "mp4v",
    seed: int = 0,
    faststart: bool = False,
) -> Path:
    """Write a clip of round(seconds * fps) frames and return its path.

    Frames differ in three visible ways (background hue, a bouncing square, the frame number
    as text) so a person or a model can tell them apart, and in one machine-readable way (the
    marker band). `seed` picks the colours and the square's path; the same arguments always
    give the same pixels. `codec` is a FourCC that OpenCV's bundled FFmpeg can encode: "mp4v"
    for .mp4, "MJPG" for .avi; or one of `H264_CODECS` for H.264 with libx264's defaults (B-frames,
    keyframes up to 250 frames apart), which needs PyAV (`pip install av`, in the test extra) and an
    even width and height. `faststart` (H.264 in MP4/MOV only) puts the index (moov) before the frames,
    as web and phone exports do: such a file cut short still opens, its index promising every frame.
    """
    path = Path(path)
    width, height = _checked_size(size)
    n_frames = round(seconds * fps)
    if fps <= 0 or n_frames < 1:
        raise UserError(f"make_clip: need fps > 0 and at least one frame, got {seconds} s at {fps} fps")
    style = _ClipStyle(np.random.default_rng(seed), width, height)
    frames = (style.frame(index) for index in range(n_frames))
    return write_clip(path, frames, fps, (width, height), codec, faststart=faststart)


def write_clip(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    size: tuple[int, int],
    codec: str = "mp4v",
    faststart: bool = False,
) -> Path:
    """Encode BGR `frames` of `size` (width, height) as a video at `path` with `codec` (see `make_clip`).

    Shared by every generator of synthetic clips (`make_clip`, the evaluator's sample dataset), so all
    write the same containers and fail with the same messages.
    """
    path = Path(path)
    width, height = size
    if len(codec) != 4:
        raise UserError(f"make_clip: codec must be a four-character code such as 'mp4v', got {codec!r}")
    if codec in H264_CODECS:
        _write_h264(path, iter(frames), fps, width, height, faststart)
        return path
    if faststart:  # OpenCV's writer has no way to move the index
        raise UserError(f"make_clip: faststart needs an H.264 codec ({', '.join(H264_CODECS)}), got {codec!r}")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise UserError(
            f"cannot write {path} with codec {codec!r}: OpenCV's FFmpeg has no such encoder for "
            "this container, or the folder is not writable"
        )
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


def _write_h264(path: Path, frames: Iterator[np.ndarray], fps: float, width: int, height: int, faststart: bool) -> None:
    """Encode BGR `frames` as H.264 (yuv420p) with libx264 through PyAV, in the container `path`'s suffix names."""
    if width % 2 or height % 2:
        raise UserError(f"make_clip: H.264 (yuv420p) needs an even width and height, got {width}x{height}")
    if faststart and path.suffix.lower() not in (".mp4", ".mov", ".m4v"):
        raise UserError(f"make_clip: faststart moves the index of an MP4/MOV file, not of {path.name}")
    try:
        import av
    except ImportError:
        raise UserError("make_clip: H.264 clips are written with PyAV; install it with `pip install av`") from None
    try:
        # The MP4 muxer writes the frames, then rewrites the file with the index in front.
        container = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot write {path}: {exc}") from None
    try:
        try:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        except ValueError:  # av.codec.codec.UnknownCodecError: a PyAV built without libx264
            raise UserError("make_clip: this PyAV's FFmpeg has no libx264 encoder for H.264") from None
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode(None))  # flush the frames the encoder still holds (B-frame lookahead)
    finally:
        container.close()


def make_image(path: str | Path, size: tuple[int, int] = (160, 120)) -> Path:
    """Write a still test image (format from the suffix: .png for the demo, .jpg for tests).

    It has a gradient and a disc so it is not mistaken for a blank frame.
    """
    path = Path(path)
    width, height = _checked_size(size)
    ramp = np.linspace(0, 255, width, dtype=np.float32)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = ramp.astype(np.uint8)
    image[:, :, 1] = ramp[::-1].astype(np.uint8)
    cv2.circle(image, (width // 2, height // 2), min(width, height) // 4, (0, 0, 255), -1)
    if not cv2.imwrite(str(path), image):
        raise UserError(f"cannot write image {path}: unknown image suffix or unwritable folder")
    return path


def read_frame_number(rgb: np.ndarray) -> int:
    """Decode the frame number that `make_clip` drew in the marker band of an upright frame.

    Works at any output size because the band is defined in fractions of the frame; each cell
    is judged by the mean of its central half, which survives codec blur and INTER_AREA.
    """
    height, width = rgb.shape[:2]
    gray = rgb.mean(axis=2)
    band = gray[: max(1, round(height * MARKER_BAND))]
    number = 0
    for bit in range(MARKER_BITS):
        left, right = _cell_span(bit, width)
        quarter = max(0, (right - left) // 4)
        rows = slice(band.shape[0] // 4, max(band.shape[0] // 4 + 1, 3 * band.shape[0] // 4))
        cell = band[rows, left + quarter : right - quarter]
        number = number * 2 + int(cell.mean() > 127)
    return number


def _checked_size(size: tuple[int, int]) -> tuple[int, int]:
    """Reject sizes too small for the marker; return (width, height) as ints."""
    width, height = int(size[0]), int(size[1])
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise UserError(f"test media size must be at least {MIN_SIZE[0]}x{MIN_SIZE[1]}, got {width}x{height}")
    return width, height


def _cell_span(bit: int, width: int) -> tuple[int, int]:
    """Column range [left, right) of marker cell `bit`; shared by writer and reader."""
    return round(bit * width / MARKER_BITS), round((bit + 1) * width / MARKER_BITS)


class _ClipStyle:
    """The per-clip constants (colours, square path) drawn from the seed once."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.band = round(height * MARKER_BAND)
        self.hue0 = int(rng.integers(0, 180))
        self.square = max(4, min(width, height) // 4)
        self.square_bgr = tuple(int(c) for c in rng.integers(0, 256, 3))
        self.start = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        self.speed = (int(rng.integers(2, 7)), int(rng.integers(2, 7)))

    def frame(self, index: int) -> np.ndarray:
        """Draw frame `index` as BGR (what cv2.VideoWriter expects)."""
        hsv = np.array([[[(self.hue0 + 3 * index) % 180, 160, 200]]], np.uint8)
        image = np.empty((self.height, self.width, 3), np.uint8)
        image[:] = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
        x = _bounce(self.start[0] + self.speed[0] * index, self.width - self.square)
        y = self.band + _bounce(self.start[1] + self.speed[1] * index, self.height - self.band - self.square)
        cv2.rectangle(image, (x, y), (x + self.square - 1, y + self.square - 1), self.square_bgr, -1)
        self._draw_text(image, str(index))
        self._draw_marker(image, index % (1 << MARKER_BITS))
        return image

    def _draw_text(self, image: np.ndarray, text: str) -> None:
        """Frame number in the bottom-left corner, outlined so it reads on any background."""
        scale = self.height / 160
        origin = (2, self.height - 4)
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)

    def _draw_marker(self, image: np.ndarray, number: int) -> None:
        """Binary frame number in the top band: white cell = 1, black = 0."""
        for bit in range(MARKER_BITS):
            left, right = _cell_span(bit, self.width)
            on = (number >> (MARKER_BITS - 1 - bit)) & 1
            image[: self.band, left:right] = 255 if on else 0


def _bounce(position: int, span: int) -> int:
    """Fold a position running past either edge back into [0, span], like a ball off walls."""
    if span <= 0:
        return 0
    period = 2 * span
    folded = position % period
    return folded if folded <= span else period - folded

"""A small generated dataset whose answers are known from how its clips were drawn, to try `vreason eval` offline.

Each clip shows one to three flat shapes on a grey background; one of them crosses the frame in a
straight line (left, right, up or down) while the others stay in the corners, out of its path. The
questions ask what the drawing decided: the moving shape's colour and form (multiple-choice), how many
shapes there are (numeric) and which way the mover goes (free-form and multiple-choice).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..clips import write_clip
from ..errors import UserError

SIZE = (256, 192)  # (width, height): large enough that a 2B model sees the shapes after resizing
FPS = 8.0
SECONDS = 4.0
BACKGROUND_BGR = (128, 128, 128)
COLOURS_BGR = {
    "red": (0, 0, 255),
    "green": (0, 200, 0),
    "blue": (255, 0, 0),
    "yellow": (0, 255, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
FORMS = ("square", "circle")
DIRECTIONS = ("left", "right", "up", "down")
MOVER = 40  # side (or diameter) of the moving shape, pixels
STILL = 36  # of the shapes that stay put
INSET = 8  # distance of the still shapes from the frame's edges
DATASET_NAME = "sample.jsonl"


@dataclass(frozen=True)
class Shape:
    """One drawn shape: its form (square or circle), colour name and size in pixels."""

    form: str
    colour: str
    size: int


@dataclass(frozen=True)
class SampleClip:
    """What one generated clip shows, from which its questions and answers follow."""

    mover: Shape
    direction: str
    still: tuple[tuple[Shape, tuple[int, int]], ...]  # shape and its fixed top-left corner

    @property
    def n_shapes(self) -> int:
        return 1 + len(self.still)

    def mover_corner(self, t: float) -> tuple[int, int]:
        """Top-left corner of the mover at `t` in [0, 1]: a straight crossing along the middle row or column."""
        width, height = SIZE
        span_x, span_y = width - 2 * INSET - MOVER, height - 2 * INSET - MOVER
        forward = {"right": t, "left": 1 - t, "down": t, "up": 1 - t}[self.direction]
        if self.direction in ("left", "right"):
            return INSET + round(forward * span_x), (height - MOVER) // 2
        return (width - MOVER) // 2, INSET + round(forward * span_y)

    def frame(self, t: float) -> np.ndarray:
        image = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
        image[:] = BACKGROUND_BGR
        for shape, corner in self.still:
            _draw(image, shape, corner)
        _draw(image, self.mover, self.mover_corner(t))
        return image


def _draw(image: np.ndarray, shape: Shape, corner: tuple[int, int]) -> None:
    x, y = corner
    colour = COLOURS_BGR[shape.colour]
    if shape.form == "square":
        cv2.rectangle(image, (x, y), (x + shape.size - 1, y + shape.size - 1), colour, -1)
    else:
        radius = shape.size // 2
        cv2.circle(image, (x + radius, y + radius), radius, colour, -1, cv2.LINE_AA)


def _corners() -> list[tuple[int, int]]:
    """Top-left corners of the still shapes: the frame's four corners, clear of the mover's middle row/column."""
    width, height = SIZE
    far_x, far_y = width - INSET - STILL, height - INSET - STILL
    return [(INSET, INSET), (far_x, INSET), (INSET, far_y), (far_x, far_y)]


def random_clip(rng: np.random.Generator) -> SampleClip:
    """Draw a clip's content: distinct colours, one mover, zero to two still shapes in random corners."""
    n_shapes = int(rng.integers(1, 4))
    colours = [str(c) for c in rng.permutation(list(COLOURS_BGR))[:n_shapes]]
    forms = [str(rng.choice(FORMS)) for _ in range(n_shapes)]
    corners = [_corners()[i] for i in rng.permutation(4)[: n_shapes - 1]]
    still = tuple((Shape(f, c, STILL), corner) for f, c, corner in zip(forms[1:], colours[1:], corners))
    return SampleClip(Shape(forms[0], colours[0], MOVER), str(rng.choice(DIRECTIONS)), still)


def _options(rng: np.random.Generator, right: str, pool: tuple[str, ...], n: int) -> tuple[list[str], str]:
    """`n` shuffled options from `pool` that include `right`, and the letter of `right`."""
    others = [str(o) for o in rng.permutation([p for p in pool if p != right])[: n - 1]]
    options = [str(o) for o in rng.permutation([right, *others])]
    return options, chr(ord("A") + options.index(right))


# Each question kind: (rng, clip) -> the row's question fields. Ordered so that the first three already
# cover all three answer types.
def _colour_question(rng: np.random.Generator, clip: SampleClip) -> dict:
    options, letter = _options(rng, clip.mover.colour, tuple(COLOURS_BGR), 4)
    return dict(type="multiple-choice", question="What colour is the moving shape?", options=options, answer=letter)


def _count_question(rng: np.random.Generator, clip: SampleClip) -> dict:
    return dict(type="numeric", question="How many shapes are there in the video?", answer=clip.n_shapes)


def _direction_free_question(rng: np.random.Generator, clip: SampleClip) -> dict:
    question = "In which direction does the moving shape travel: left, right, up or down?"
    return dict(type="free-form", question=question, answer=clip.direction)


def _direction_choice_question(rng: np.random.Generator, clip: SampleClip) -> dict:
    options, letter = _options(rng, clip.direction, DIRECTIONS, 4)
    return dict(
        type="multiple-choice", question="Which way does the moving shape move?", options=options, answer=letter
    )


def _form_question(rng: np.random.Generator, clip: SampleClip) -> dict:
    options, letter = _options(rng, clip.mover.form, (*FORMS, "triangle"), 3)
    return dict(type="multiple-choice", question="What shape is the moving object?", options=options, answer=letter)


QUESTION_KINDS: tuple[Callable[[np.random.Generator, SampleClip], dict], ...] = (
    _colour_question,
    _count_question,
    _direction_free_question,
    _direction_choice_question,
    _form_question,
)


def make_sample(out_dir: Path, n_videos: int = 3, questions_per_video: int = 4, seed: int = 0) -> Path:
    """Write `n_videos` clips under `out_dir`/videos and their questions to `out_dir`/sample.jsonl; return that file.

    The same seed always gives the same clips and questions, so a user can compare runs of the sample.
    """
    if n_videos < 1:
        raise UserError(f"the sample needs at least one video, got {n_videos}")
    if not 1 <= questions_per_video <= len(QUESTION_KINDS):
        raise UserError(f"the sample asks 1 to {len(QUESTION_KINDS)} questions per video, got {questions_per_video}")
    out_dir = Path(out_dir).expanduser()
    try:
        (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the sample folder {out_dir}: {exc.strerror or exc}") from None
    rng = np.random.default_rng(seed)
    n_frames = round(SECONDS * FPS)
    rows = []
    for v in range(1, n_videos + 1):
        clip = random_clip(rng)
        video = f"videos/sample-{v}.mp4"
        write_clip(out_dir / video, (clip.frame(i / (n_frames - 1)) for i in range(n_frames)), FPS, SIZE)
        for q, kind in enumerate(QUESTION_KINDS[:questions_per_video], 1):
            rows.append(dict(id=f"sample-{v}-{q}", video=video, **kind(rng, clip)))
    path = out_dir / DATASET_NAME
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path

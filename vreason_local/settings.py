"""Run settings: every setting a run takes, described once, and the types that hold them.

One table (`SETTINGS`) says for each setting its name, type, range or choices, default and help. The
command line's options (`options.py`), the chat's settings form and a JSON request body are read through
it (`RunSettings.from_values`), and each settings type checks its own fields against it when it is built,
so a bad value is one `SettingError` before any work, whatever the front end and whether or not it came
through a front end at all (the Python API builds the same types).

A setting is named by its dotted *path* in the settings types (`generation.sampling.top_p`), as
`errors.Remedy.setting` names it; each front end words that path its own way (`wording`): the command
line as its flag (`--top-p`), the TUI as the field's label ("top-p"), a JSON body as its key (`top_p`).
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from .errors import Remedy, SettingError, UserError
from .events import MODES, Mode
from .registry import DEFAULT_MODEL

QWEN2_FACTOR = 28  # Qwen2/2.5-VL: 14 px patches, 2x2 merged -> one token per 28x28 px
# The smallest frame the model is given (qwen-vl-utils' floor: 2x2 tokens of 28 px, 56x56): smaller
# frames are scaled up to it, and the pixel budget may not go below it. It is above one token of every
# family's grid (28x28, and 32x32 for Qwen3-VL), so `smart_resize` honours any budget from here up.
MIN_PIXELS = 4 * 28 * 28
MAX_THREADS_DEFAULT = 8  # beyond this llama.cpp's CPU decode gains little and the controller's threads contend
RANDOM_SEED = -1  # a seed of -1 asks for a random one, drawn when the settings are made and recorded with them


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, where the OS has one: a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    return max(1, min(MAX_THREADS_DEFAULT, cpu_count()))


@dataclass(frozen=True)
class Setting:
    """One setting: `path` in the settings types, `name` as a flat key (option, form field, JSON key)."""

    path: str
    name: str
    kind: type  # int, float, str or bool
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the range excludes `low`
    high_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is a value: automatic, or not given
    label: str = ""  # the TUI's words (default: the name with spaces)
    flag: str = ""  # the command line's (default: --name with dashes)
    hint: str = ""  # what the values mean, added to the error of a bad one
    finite: bool = True  # a float that must be finite (else +-inf pass where the range holds them; NaN never)
    default_text: str = ""  # the default as help shows it, where the bare value says less ("112896 (336x336)")

    @property
    def words(self) -> str:
        return self.label or self.name.replace("_", " ")

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """`in (0, 1]`, `at least 1`, `one of adam, sgd`: what the setting takes, for help and errors."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        low = self.low is not None and f"{'above' if self.low_open else 'at least'} {_num(self.low)}"
        high = self.high not in (None, math.inf) and f"{'below' if self.high_open else 'at most'} {_num(self.high)}"
        if low and high and not self.low_open and not self.high_open:
            return f"from {_num(self.low)} to {_num(self.high)}"
        if low or high:
            return " and ".join(x for x in (low, high) if x)
        return {int: "a whole number", float: "a number", str: "text", bool: "on or off"}[self.kind]

    def check(self, value: object) -> None:
        """Raise `SettingError` unless `value` is one this setting takes."""
        if value is None:
            if self.optional:
                return
            raise SettingError(self.path, value, f"{self.words} needs a value ({self.range_text()})")
        ok_type = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            str: isinstance(value, str),
        }[self.kind]
        if not ok_type:
            self._refuse(value, f"{self.words} must be {self.range_text()}, got {value!r}")
        if self.kind is float and (math.isnan(value) or self.finite and not math.isfinite(value)):
            number = "a finite number" if self.finite else "a number"
            self._refuse(value, f"{self.words} must be {number}, {self.range_text()}, got {value}")
        if self.choices and value not in self.choices:
            self._refuse(value, f"{self.words} must be {self.range_text()}, got '{value}'")
        if self.kind in (int, float) and not self._in_range(value):
            self._refuse(value, f"{self.words} must be {self.range_text()}, got {value}")

    def _refuse(self, value: object, problem: str) -> None:
        """A `SettingError` whose remedy is the default (a value that certainly passes), where there is one."""
        remedies = [Remedy("the default", self.path, self.default)] if self.default is not None else []
        raise SettingError(self.path, value, problem + (f" ({self.hint})" if self.hint else ""), remedies)

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else f"{x:,}"


DEFAULT_SYSTEM = "You are a helpful assistant."  # Qwen's own chat template's system turn

_S = Setting
SETTINGS: tuple[Setting, ...] = (
    _S(
        "model",
        "model",
        str,
        None,
        "Registry name (see `vreason models list`) or path to a GGUF file.",
        optional=True,
        default_text=DEFAULT_MODEL,  # None reads as the registry's default model (RunSettings.from_values)
    ),
    _S(
        "mmproj",
        "mmproj",
        str,
        None,
        "Vision projector GGUF (default: the one beside the model, or the registry's).",
        optional=True,
    ),
    _S(
        "mode",
        "mode",
        str,
        "base",
        "Decoding: plain, V-Reason, or V-Reason Lite (prunes half the video tokens).",
        choices=MODES,
    ),
    _S(
        "engine.system",
        "system",
        str,
        DEFAULT_SYSTEM,
        "System prompt: the instructions before the media and every question (-: from standard input, @FILE: "
        "from a file).",
        label="system prompt",
    ),
    _S("generation.max_tokens", "max_tokens", int, 1024, "Most tokens in the answer.", 1, 1 << 20),
    _S("generation.sampling.temperature", "temperature", float, 0.0, "0 = greedy.", 0, 100),
    _S(
        "generation.sampling.top_p",
        "top_p",
        float,
        1.0,
        "Nucleus sampling's mass (0: the most probable token).",
        0,
        1,
        label="top-p",
    ),
    _S(
        "generation.sampling.min_p",
        "min_p",
        float,
        0.0,
        "Keep tokens at least this times the top one's probability.",
        0,
        1,
        label="min-p",
    ),
    _S(
        "generation.sampling.seed",
        "seed",
        int,
        0,
        "Sampling seed; -1 draws a random one (recorded in the output).",
        RANDOM_SEED,
        2**32 - 1,
    ),
    _S("generation.reasoning", "reasoning", bool, True, "Ask for <think>/<answer> (--no-reasoning: answer directly)."),
    _S("frames.fps", "fps", float, 1.0, "Frames sampled per second of video.", 0, 1000, low_open=True),
    _S(
        "frames.min_frames",
        "min_frames",
        int,
        4,
        "Fewest frames to sample (made even: the model takes frames in pairs).",
        0,
        100_000,
    ),
    _S(
        "frames.max_frames",
        "max_frames",
        int,
        32,
        "Most frames to sample (made even; at least 2, and at least --min-frames).",
        0,
        100_000,
    ),
    _S(
        "frames.start_s",
        "start",
        float,
        None,
        "Clip window start (seconds).",
        0,
        None,
        optional=True,
        label="clip start",
    ),
    _S("frames.end_s", "end", float, None, "Clip window end (seconds).", 0, None, optional=True, label="clip end"),
    _S(
        "frames.max_pixels",
        "max_pixels",
        int,
        336 * 336,
        f"Pixel budget per frame, at least {MIN_PIXELS} (56x56).",
        MIN_PIXELS,
        1 << 28,
        default_text=f"{336 * 336} (336x336)",
    ),
    _S(
        "frames.token_budget",
        "token_budget",
        int,
        None,
        "Fit frames and resolution to this many video tokens.",
        1,
        1 << 24,
        optional=True,
    ),
    _S(
        "engine.n_ctx",
        "ctx",
        int,
        None,
        "Context size in tokens, at most the model's trained context (default: what the prompt needs).",
        256,
        1 << 24,
        optional=True,
        label="context size",
    ),
    _S(
        "engine.n_threads",
        "threads",
        int,
        None,
        "CPU threads (default: all, up to 8; more than the CPUs is capped).",
        1,
        4096,
        optional=True,
    ),
    _S(
        "engine.n_gpu_layers",
        "gpu_layers",
        int,
        -1,
        "Layers offloaded to the GPU: -1 all, 0 none (CPU only), or a count.",
        -1,
        100_000,
        label="GPU layers",
        hint="-1 for all layers, 0 for none, or how many layers to put on the GPU",
    ),
    _S(
        "engine.repack",
        "repack",
        str,
        "auto",
        "llama.cpp's repacking of quantised weights (auto: off where it crashes, e.g. AMX CPUs).",
        choices=("auto", "on", "off"),
    ),
    _S(
        "engine.encoding_cache",
        "encoding_cache",
        bool,
        True,
        "Keep encoded media on disk (the user cache folder) and load it instead of encoding it again "
        "(`vreason cache` lists and clears it).",
    ),
    _S(
        "engine.encoding_cache_gb",
        "encoding_cache_gb",
        float,
        None,
        "Size cap of the encoding cache in GB; least recently used encodings go first "
        "(default: 10 GB or 10% of the free disk, whichever is less).",
        0,
        1e6,
        optional=True,
        label="encoding cache GB",
    ),
    _S("vreason.beta", "beta", float, 0.9, "V-Reason: EMA factor.", 0, 1, high_open=True),
    _S("vreason.every", "every", int, 2, "V-Reason: update every k tokens.", 1, 10_000),
    _S("vreason.steps", "steps", int, 1, "V-Reason: optimiser steps per update.", 1, 1_000),
    _S("vreason.lr", "lr", float, 1e-3, "V-Reason: learning rate.", 0, 1000, label="learning rate"),
    _S("vreason.optimizer", "optimizer", str, "adam", "V-Reason: optimiser.", choices=("adam", "sgd")),
    _S("vreason.device", "device", str, "auto", "V-Reason controller device: auto, cpu, cuda (or cuda:N), mps."),
    _S(
        "vreason.dtype",
        "tail_dtype",
        str,
        "auto",
        "V-Reason: how the controller holds the last layer's weights: gguf (read in place from the model file, CPU; "
        "auto's choice for Q8_0, Q4_K and Q6_K), or a copy in float32, bfloat16, float16, int8.",
        choices=("auto", "gguf", "float32", "bfloat16", "float16", "int8"),
        label="tail dtype",
    ),
    _S(
        "vreason.head_error",
        "head_error",
        float,
        0.01,
        "V-Reason: bound on the relative gradient error from the LM-head rows left out of the backward.",
        0,
        1,
        low_open=True,
    ),
    _S(
        "vreason.head_max",
        "head_max",
        int,
        2048,
        "V-Reason: most LM-head rows in the backward (a notice says when the error bound needs more).",
        1,
        1 << 22,
    ),
    _S(
        "vreason.head_skip",
        "head_skip",
        float,
        0.5,
        "V-Reason: skip an update step whose gradient bound is above this where the LM-head rows are capped "
        "(inf: never).",
        0,
        math.inf,
        low_open=True,
        finite=False,
    ),
)
del _S
BY_PATH: dict[str, Setting] = {s.path: s for s in SETTINGS}
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

# Names a front end words that are not run settings (the media, an evaluation's cluster, the environment).
_OTHER_NAMES = {
    "video": ("--video", "video", "video"),
    "image": ("--image", "image", "image"),
    "cluster.ray": ("--ray", "Ray cluster", "ray"),
    "cluster.workers": ("--workers", "Ray workers", "workers"),
    "simd": ("VREASON_SIMD", "VREASON_SIMD", "VREASON_SIMD"),
}
Wording = Literal["flag", "label", "param"]


def setting_name(path: str, wording: Wording) -> str | None:
    """How a front end names the setting at `path`: its flag, its form label, or its JSON key."""
    s = BY_PATH.get(path)
    if s is not None:
        return {"flag": s.option, "label": s.words, "param": s.name}[wording]
    other = _OTHER_NAMES.get(path)
    return other and other[("flag", "label", "param").index(wording)]


def render_remedy(r: Remedy, wording: Wording = "flag") -> str:
    """`--max-frames 16` when the remedy names a setting and a value, else its words (with the setting's name)."""
    name = setting_name(r.setting or "", wording)
    if name and r.value is not None:
        return {"flag": f"{name} {r.value}", "label": f"setting {name} to {r.value}", "param": f"{name}={r.value!r}"}[
            wording
        ]
    if name:
        return f"{r.text} ({name})"
    return r.text


def render_error(exc: UserError, wording: Wording = "flag") -> str:
    """One line: the fact, then what to do, in the front end's words."""
    if not exc.remedies:
        return exc.message
    return f"{exc.message}; try {' or '.join(render_remedy(r, wording) for r in exc.remedies)}"


def check_fields(obj: object, prefix: str) -> None:
    """Check every field of a settings dataclass that the table describes (called by their __post_init__)."""
    for f in fields(obj):  # type: ignore[arg-type]
        s = BY_PATH.get(f"{prefix}.{f.name}")
        if s is not None:
            s.check(getattr(obj, f.name))


# -- the settings types -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenSampling:
    """How the next token is chosen. Greedy (temperature 0) by default, as the method specifies.

    With temperature > 0, top-p and min-p both apply to softmax(logits / temperature) and the kept
    sets intersect (sampling.py's docstring). `seed=-1` draws a random seed, kept here (and so recorded
    wherever the settings are), so the answer can be repeated.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "generation.sampling")
        if self.seed == RANDOM_SEED:
            object.__setattr__(self, "seed", secrets.randbelow(2**31))


# Described as the table's settings are, but not in it: no front end but the server's API asks for it (a table row
# would be a `run` flag whose output no file format has a place for), so it is no flag, form field or body name.
LOGPROBS = Setting(
    "generation.logprobs",
    "top_logprobs",
    int,
    None,
    "Log-probability of each chosen token and of this many most likely alternatives (None: off).",
    0,
    20,  # OpenAI's most
    optional=True,
    label="top logprobs",
)


@dataclass(frozen=True)
class GenerationSettings:
    """One answer's decoding settings. `logprobs` (`LOGPROBS`): None computes none (no cost); k >= 0 puts the
    chosen token's log-probability and the k most likely tokens' on every `TokenEvent` (sampling.logprobs)."""

    max_tokens: int = 1024
    sampling: TokenSampling = TokenSampling()
    reasoning: bool = True  # ask for <think>...</think><answer>...</answer>
    stop_at_answer: bool = True  # stop once </answer> is written
    logprobs: int | None = None

    def __post_init__(self) -> None:
        check_fields(self, "generation")
        LOGPROBS.check(self.logprobs)


@dataclass(frozen=True)
class EngineSettings:
    """How llama.cpp runs. `n_ctx=None` sizes the context from the real prompt and grows it when a
    conversation needs more; a number fixes it. `hook=False` leaves the value-cache hook out
    (base answers only). `system`: the system prompt the engine puts before media where a call names
    none (an engine setting so that every front end that opens an engine from the run's settings has it)."""

    n_ctx: int | None = None
    n_batch: int = 512
    n_threads: int = field(default_factory=default_threads)
    n_gpu_layers: int = -1
    repack: str = "auto"
    flash_attn: str = "auto"
    hook: bool = True
    system: str = DEFAULT_SYSTEM
    encoding_cache: bool = True  # encodings kept on disk across processes (encoding_store.py)
    encoding_cache_gb: float | None = None  # its size cap (None: min(10 GB, 10% of the free disk))

    def __post_init__(self) -> None:
        check_fields(self, "engine")


@dataclass(frozen=True)
class VReasonSettings:
    """The method's settings; those marked [ours] are not published by the paper: our defaults."""

    beta: float = 0.9  # EMA factor [ours]
    every: int = 2  # update every k-th token (the paper's best)
    steps: int = 1  # optimiser steps per update [ours]
    lr: float = 1e-3  # [ours]
    optimizer: str = "adam"  # adam | sgd [ours]
    head_error: float = 0.01  # the LM-head rows kept bound the gradient's relative error at h by this [ours]
    head_max: int = 2048  # ...with at most this many rows: a safety cap; a notice says when it binds [ours]
    # Where the cap binds, an optimiser step whose gradient bound (HeadStep.bound: ||G - G_K|| <= bound·||G||
    # at the final hidden state) is above this is skipped, and the rest of its update with it [ours]. Below 1
    # the computed gradient G_K is within arcsin(bound) of the exact G, so a step along it still changes the
    # loss in the intended direction (G·G_K >= (1 - bound)·||G||²); at 1 or above (inf: unknown) it may be
    # orthogonal or opposite, and the step could raise the entropy it was meant to lower. Shrinking the step
    # would not help: its direction is what is unknown, and Adam's step is ~lr whatever the gradient's size
    # (its first is exactly lr per value). 0.5 keeps the direction within 30° (cosine >= 0.87) and lets the
    # capped bound measured on random-weight models (~0.25) through.
    head_skip: float = 0.5
    device: str = "auto"  # where the tail runs: auto (cuda, mps, cpu), or one of them
    dtype: str = "auto"  # the tail's matrices: auto (tail_weights.pick_dtype), gguf (in place), float32, ..., int8

    def __post_init__(self) -> None:
        check_fields(self, "vreason")


@dataclass(frozen=True)
class FrameSampling:
    """How many frames to take and how large, before any model-specific budget fitting.

    Defaults are for a laptop. At most 336*336 px a frame, a pair of frames (one temporal
    patch) is 144 tokens, a 12x12 grid for a square video or 9x16 for 16:9. So a clip of up
    to 4 s (the 4-frame minimum) costs 288 video tokens, 10 s at 1 fps costs 720, and even
    the 32-frame cap (2304) leaves room in a 4k context for the prompt and the answer.
    448*448 would cost 4096 at the cap; qwen-vl-utils' default allows 768 tokens a pair.
    """

    fps: float = 1.0
    min_frames: int = 4
    max_frames: int = 32
    start_s: float | None = None
    end_s: float | None = None
    max_pixels: int = 336 * 336
    min_pixels: int = MIN_PIXELS  # only tiny videos get upscaled; not a user setting
    factor: int = QWEN2_FACTOR  # patch * merge of the target model (32 for Qwen3-VL)

    def __post_init__(self) -> None:
        """Check the user's limits as soon as they are set, so a front end reports them before any work."""
        if self.min_pixels < 1:
            raise ValueError(f"min_pixels must be positive, got {self.min_pixels}")
        for name in ("fps", "min_frames", "max_frames", "start_s", "end_s"):
            BY_PATH[f"frames.{name}"].check(getattr(self, name))
        self._check_frame_limits()
        if not isinstance(self.max_pixels, int) or self.max_pixels < self.min_pixels:
            raise SettingError(
                "frames.max_pixels",
                self.max_pixels,
                f"a pixel budget of {self.max_pixels:,} per frame is below the smallest frame size the model "
                f"is given ({self.min_pixels:,} pixels)",
                [Remedy("the smallest frame size", "frames.max_pixels", self.min_pixels)],
            )
        BY_PATH["frames.max_pixels"].check(self.max_pixels)
        if self.start_s is not None and self.end_s is not None and self.start_s >= self.end_s:
            raise SettingError(
                "frames.end_s", self.end_s, f"clip start ({self.start_s} s) must be before clip end ({self.end_s} s)"
            )

    def _check_frame_limits(self) -> None:
        """Qwen takes frames in pairs, so the limits must leave room for an even count of at least 2;
        the remedies are values that make them do so when changed alone."""
        low, high = even_frame_range(self.min_frames, self.max_frames)
        if low <= high:
            return
        if self.max_frames < 2:
            problem = (
                f"frame limits allow at most {self.max_frames} frame{'' if self.max_frames == 1 else 's'}, "
                "but a video is given to the model as an even number of frames, at least 2"
            )
        else:
            problem = (
                f"frame limits of at least {self.min_frames} and at most {self.max_frames} frames leave "
                "no even frame count (a video is given to the model in pairs of frames)"
            )
        remedies = [Remedy("more frames", "frames.max_frames", low)]
        if high >= 2:
            remedies.append(Remedy("a lower minimum", "frames.min_frames", high))
        raise SettingError("frames.max_frames", self.max_frames, problem, remedies)


def even_frame_range(min_frames: int, max_frames: int) -> tuple[int, int]:
    """Bounds of the even frame counts the limits allow: min rounded up (to 2 at least), max down."""
    return max(2, min_frames + min_frames % 2), max_frames - max_frames % 2


# -- one run's settings, read from flat values ------------------------------------------------------
@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run: the model, the mode and its settings, the frames, the engine.

    `vreason` is always set (the mode can be switched to V-Reason in the chat at any question); whether
    the engine loads the value-cache hook is `engine.hook`. `notes` are what reading the values changed
    or drew (threads capped to the CPUs, a random seed): a front end shows them as warnings/notes.
    """

    model: str = DEFAULT_MODEL
    mmproj: str | None = None
    mode: Mode = "base"
    generation: GenerationSettings = GenerationSettings()
    frames: FrameSampling = FrameSampling()
    engine: EngineSettings = field(default_factory=EngineSettings)
    vreason: VReasonSettings = VReasonSettings()
    token_budget: int | None = None
    notes: tuple[tuple[str, str], ...] = ()  # (setting path, what happened), for the front end to word

    def __post_init__(self) -> None:
        for path in ("model", "mmproj", "mode", "frames.token_budget"):
            BY_PATH[path].check(self.token_budget if path == "frames.token_budget" else getattr(self, path))

    @classmethod
    def from_values(cls, values: Mapping[str, object], hook: bool | None = None) -> RunSettings:
        """Read flat values keyed by `Setting.name` (click's parameters, the form's fields, a JSON body).

        Missing names take their defaults; an unknown name or a bad value is a `SettingError`. `hook`:
        load the value-cache hook (None: only when the mode needs it).
        """
        unknown = sorted(set(values) - set(BY_NAME))
        if unknown:
            raise UserError(f"unknown setting{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
        v = {s.name: s.default for s in SETTINGS} | dict(values)
        BY_NAME["threads"].check(v["threads"])  # compared with the CPUs below; the types check the rest
        notes: list[tuple[str, str]] = []
        threads = v["threads"]
        if threads is not None and threads > cpu_count():
            notes.append(
                ("engine.n_threads", f"{threads} is more than this machine's {cpu_count()} CPUs; using {cpu_count()}")
            )
            threads = cpu_count()
        sampling = TokenSampling(v["temperature"], v["top_p"], v["min_p"], v["seed"])
        if v["seed"] == RANDOM_SEED:
            notes.append(("generation.sampling.seed", f"-1: drew the random seed {sampling.seed}"))
        return cls(
            model=v["model"] or DEFAULT_MODEL,
            mmproj=v["mmproj"],
            mode=v["mode"],
            generation=GenerationSettings(v["max_tokens"], sampling, v["reasoning"], stop_at_answer=v["reasoning"]),
            frames=FrameSampling(v["fps"], v["min_frames"], v["max_frames"], v["start"], v["end"], v["max_pixels"]),
            engine=EngineSettings(
                n_ctx=v["ctx"],
                n_threads=threads or default_threads(),
                n_gpu_layers=v["gpu_layers"],
                repack=v["repack"],
                hook=v["mode"] != "base" if hook is None else hook,
                system=v["system"],
                encoding_cache=v["encoding_cache"],
                encoding_cache_gb=v["encoding_cache_gb"],
            ),
            vreason=VReasonSettings(
                beta=v["beta"],
                every=v["every"],
                steps=v["steps"],
                lr=v["lr"],
                optimizer=v["optimizer"],
                head_error=v["head_error"],
                head_max=v["head_max"],
                head_skip=v["head_skip"],
                device=v["device"],
                dtype=v["tail_dtype"],
            ),
            token_budget=v["token_budget"],
            notes=tuple(notes),
        )

    def values(self) -> dict[str, object]:
        """The flat values these settings were read from (`from_values(s.values())` gives them back)."""
        out: dict[str, object] = {"token_budget": self.token_budget}
        for s in SETTINGS:
            if s.name not in out:
                obj: object = self
                for part in s.path.split("."):
                    obj = getattr(obj, part)
                out[s.name] = obj
        return out

    def with_values(self, values: Mapping[str, object]) -> RunSettings:
        """These settings with some values changed (the form's, a request's), checked as `from_values`."""
        merged = self.values() | dict(values)
        return replace(RunSettings.from_values(merged, hook=self.engine.hook), notes=())

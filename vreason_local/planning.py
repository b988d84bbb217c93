"""Planning a run before anything heavy happens: which files, which frames, how much context and memory.

`plan_run` resolves the model, reads its metadata, samples the media, sizes the context and checks that
it all fits, and returns an `Estimate` the front end shows the user *before* the vision encoder runs.
`open_engine` then loads the model. The CLI, the TUI and the evaluator all go through here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from . import gguf_info
from .cache import cache_dir
from .checks import check_model_settings
from .engine import Engine, stored_encoding
from .errors import Remedy, UserError
from .fit import ContextUse, check_context, check_fit, context_size, format_bytes
from .hub import resolve_model
from .llama_backend import supports_gpu_offload
from .media import LoadedMedia, Media, check_image_file, load_image, load_video, plan_video_tokens
from .prompt import prefix_parts, question_text, text_token_bound
from .settings import EngineSettings, FrameSampling, RunSettings
from .video import check_video_file
from .wording import count

QUESTION_ALLOWANCE = 512  # bytes of question (and the reasoning instruction) assumed when none is given yet


@dataclass(frozen=True)
class Estimate:
    """What a run will cost, shown before encoding."""

    n_media_tokens: int
    n_ctx: int
    kv_bytes: int
    prefill_s: float
    measured: bool  # prefill speed measured on this machine before, not guessed
    stored_s: float | None = None  # the media's encoding is on disk (encoding_store.py): what it cost to make

    def prompt_cost(self, work: str = "encode + prefill") -> str:
        """The time before the first token: a load from the encoding cache, or `work` (encode + prefill)."""
        if self.stored_s is not None:
            return f"encoding on disk: loads in place of {_seconds(self.stored_s)} s {work}"
        guess = "" if self.measured else " (a guess until measured here)"
        return f"{work} ~{_seconds(self.prefill_s)} s{guess}"

    def describe(self, media: LoadedMedia) -> str:
        what = "no media"
        if media.plan:
            p = media.plan
            frames = count(len(media.media.frames), "frame")
            what = f"{frames} {p.width}x{p.height} from {p.start_s:.1f}-{p.end_s:.1f} s"
        elif media.media.kind == "image":
            h, w = media.media.frames[0].rgb.shape[:2]
            what = f"image {w}x{h}"
        if media.media.kind == "none":
            return (
                f"text only; context {self.n_ctx:,} tokens, KV cache {format_bytes(self.kv_bytes)}; "
                f"{self.prompt_cost('prefill')}"
            )
        return (
            f"{what} -> {count(self.n_media_tokens, 'vision token')}; context {self.n_ctx:,} tokens, "
            f"KV cache {format_bytes(self.kv_bytes)}; {self.prompt_cost()}"
        )


def _seconds(s: float) -> str:
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}"


@dataclass(frozen=True)
class Plan:
    model_path: Path
    mmproj_path: Path | None
    info: gguf_info.ModelInfo
    projector: gguf_info.ProjectorInfo | None
    media: LoadedMedia
    engine: EngineSettings
    estimate: Estimate
    frame_settings: FrameSampling
    token_budget: int | None


def _speed_file() -> Path:
    return cache_dir() / "prefill-speed.json"


def _speed_key(info: gguf_info.ModelInfo, settings: EngineSettings) -> str:
    return f"{info.path.name}|{info.file_bytes}|t{settings.n_threads}|g{settings.n_gpu_layers}"


def record_prefill_speed(info: gguf_info.ModelInfo, settings: EngineSettings, n_tokens: int, seconds: float) -> None:
    """Remember this machine's prefill speed so the next estimate is a measurement, not a guess."""
    if n_tokens < 64 or seconds <= 0:
        return
    path = _speed_file()
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
        data[_speed_key(info, settings)] = n_tokens / seconds
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    except (OSError, ValueError):
        pass  # an estimate is a convenience; never fail a run over it


def _prefill_speed(info: gguf_info.ModelInfo, settings: EngineSettings) -> tuple[float, bool]:
    try:
        return float(json.loads(_speed_file().read_text())[_speed_key(info, settings)]), True
    except (OSError, ValueError, KeyError):
        pass
    # ~2 FLOPs per weight per token at ~20 GFLOP/s per CPU thread; GPUs are far faster.
    params = info.n_layer * 12 * info.n_embd**2 + info.n_vocab * info.n_embd
    flops = 20e9 * settings.n_threads * (30 if settings.n_gpu_layers != 0 and supports_gpu_offload() else 1)
    return flops / (2 * params), False


def plan_run(
    settings: RunSettings, video: Path | None = None, image: Path | None = None, question: str | None = None
) -> Plan:
    """Resolve, sample and size a run; raise `UserError` with remedies when it cannot work.

    `settings.engine.n_ctx` is the user's context size (None: automatic). `question`, when known, sizes
    the estimate. The CLI, the chat and (per video, through `plan_videos`' check) the evaluator plan here.
    """
    if video and image:
        raise UserError("a run takes a video or an image, not both")
    if video:  # the user's own files first: a typo should not be answered with "download the model"
        check_video_file(video)
    if image:
        check_image_file(image)
    info, projector = _model(settings, needs_vision=bool(video or image))
    patch = projector.patch_size if projector else 14
    if video:
        loaded = load_video(video, settings.frames, patch, settings.token_budget)
    elif image:
        loaded = load_image(image, settings.frames.max_pixels, patch)
    else:
        loaded = LoadedMedia(Media.none(), 0)
    n_frames = len(loaded.media.frames) if loaded.plan else 0
    ctx, n_prompt = _check_size(
        settings,
        info,
        projector,
        loaded.media,
        loaded.n_tokens,
        n_frames,
        loaded.n_tokens if loaded.plan else 0,
        question,
    )
    speed, measured = _prefill_speed(info, settings.engine)
    stored = stored_encoding(settings.engine, info.path, projector.path if projector else None, loaded.media)
    est = Estimate(loaded.n_tokens, ctx, ctx * info.kv_bytes_per_token, n_prompt / speed, measured, stored)
    return Plan(
        info.path,
        projector.path if projector else None,
        info,
        projector,
        loaded,
        settings.engine,
        est,
        settings.frames,
        settings.token_budget,
    )


@dataclass(frozen=True)
class VideosPlan:
    """An evaluation's model and the largest of its videos' prompts, known to fit before the first answer."""

    info: gguf_info.ModelInfo
    projector: gguf_info.ProjectorInfo
    largest: Path | None  # the video whose frames cost the most tokens (None: no video could be probed)
    n_media_tokens: int
    n_ctx: int


def plan_videos(
    settings: RunSettings, videos: Sequence[tuple[Path, float | None, float | None]], questions: Sequence[str]
) -> VideosPlan:
    """Check once, before any answer, that the model and the largest prompt among `videos` (path, clip start
    and end: each item's own window) with the longest of `questions` fit, as `plan_run` checks one video.

    Each video is probed and its frames planned, not decoded (milliseconds each). A video that cannot be
    probed is left to fail as its own items' error rows: it does not stop the run here."""
    info, projector = _model(settings, needs_vision=True)
    if projector is None:
        raise UserError(
            f"{info.path.name} needs its vision projector for video questions", [Remedy("its projector", "mmproj")]
        )
    patch = projector.patch_size
    largest: tuple[int, int, Path | None] = (0, 0, None)
    for path, start, end in dict.fromkeys(videos):
        frames = (
            settings.frames if start is None and end is None else replace(settings.frames, start_s=start, end_s=end)
        )
        try:
            n_frames, n_tokens = plan_video_tokens(path, frames, patch, settings.token_budget)
        except UserError:
            continue
        largest = max(largest, (n_tokens, n_frames, path), key=lambda t: t[0])
    n_tokens, n_frames, path = largest
    question = max(questions, key=len, default=None)
    media = Media("video", [], str(path)) if path else Media.none()
    ctx, _ = _check_size(settings, info, projector, media, n_tokens, n_frames, n_tokens, question)
    return VideosPlan(info, projector, path, n_tokens, ctx)


def _model(settings: RunSettings, needs_vision: bool) -> tuple[gguf_info.ModelInfo, gguf_info.ProjectorInfo | None]:
    """The model's and projector's metadata, read from their headers, and the settings that depend on them."""
    model_path, mmproj_path = resolve_files(settings.model, settings.mmproj, needs_vision)
    info, projector = gguf_info.read_pair(model_path, mmproj_path)
    check_model_settings(info, settings.engine.n_ctx)  # before the video is sampled
    return info, projector


def _check_size(
    settings: RunSettings,
    info: gguf_info.ModelInfo,
    projector: gguf_info.ProjectorInfo | None,
    media: Media,
    n_media_tokens: int,
    n_frames: int,
    n_video_tokens: int,
    question: str | None,
) -> tuple[int, int]:
    """The context a prompt of this media and question needs, checked against the model's context and the
    memory there is (`UserError` with remedies naming values that fit); returns (context, prompt tokens).

    The prompt is an upper bound (the engine counts it exactly before encoding, and sizes an automatic
    context from that): what the fit check and the estimate use, so neither is ever too small."""
    gen, n_ctx = settings.generation, settings.engine.n_ctx
    text, _ = prefix_parts(media, "", settings.engine.system)
    asked = question_text(question, gen.reasoning, follow_up=False) if question else QUESTION_ALLOWANCE * "x"
    n_prompt = n_media_tokens + text_token_bound(text) + text_token_bound(asked)
    needed = n_prompt + gen.max_tokens
    use = ContextUse(
        needed, gen.max_tokens, n_frames, n_video_tokens, settings.frames.min_frames, user_set=n_ctx is not None
    )
    check_context(needed, n_ctx, info.n_ctx_train, use)
    ctx = n_ctx or min(info.n_ctx_train, context_size(needed))
    check_fit(
        info.file_bytes,
        projector.file_bytes if projector else 0,
        ctx,
        info.kv_bytes_per_token,
        cpu_only=settings.engine.n_gpu_layers == 0 or not supports_gpu_offload(),
        use=use,
    ).require()
    return ctx, n_prompt


def resolve_files(model: str, mmproj: str | None, needs_vision: bool) -> tuple[Path, Path | None]:
    """The model and projector files; a text-only question uses a projector if there is one, never demands it."""
    try:
        r = resolve_model(model, mmproj)
        return r.model_path, r.mmproj_path
    except UserError:
        path = Path(model).expanduser()
        if needs_vision or mmproj or not path.is_file():
            raise
        return path, None


def open_engine(plan: Plan) -> Engine:
    return Engine(plan.model_path, plan.mmproj_path, plan.engine, infos=(plan.info, plan.projector))

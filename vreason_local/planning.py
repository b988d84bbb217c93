"""Planning a run before anything heavy happens: which files, which frames, how much context and memory.

`plan_run` resolves the model, reads its metadata, samples the media, sizes the context and checks that
it all fits, and returns an `Estimate` the front end shows the user *before* the vision encoder runs.
`open_engine` then loads the model. The CLI, the TUI and the evaluator all go through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from . import gguf_info
from .cache import cache_dir
from .checks import check_model_settings
from .engine import Engine, EngineSettings, GenerationSettings, check_context
from .errors import UserError
from .fit import ContextUse, check_fit, context_size, format_bytes
from .hub import resolve_model
from .llama_backend import supports_gpu_offload
from .media import LoadedMedia, Media, check_image_file, load_image, load_video
from .prompt import prefix_parts, question_text, text_token_bound
from .video import FrameSampling, check_video_file

QUESTION_ALLOWANCE = 512  # bytes of question (and the reasoning instruction) assumed when none is given yet


@dataclass(frozen=True)
class Estimate:
    """What a run will cost, shown before encoding."""

    n_media_tokens: int
    n_ctx: int
    kv_bytes: int
    prefill_s: float
    measured: bool  # prefill speed measured on this machine before, not guessed

    def describe(self, media: LoadedMedia) -> str:
        what = "no media"
        if media.plan:
            p = media.plan
            what = f"{len(media.media.frames)} frames {p.width}x{p.height} from {p.start_s:.1f}-{p.end_s:.1f} s"
        elif media.media.kind == "image":
            h, w = media.media.frames[0].rgb.shape[:2]
            what = f"image {w}x{h}"
        guess = "" if self.measured else " (a guess until measured here)"
        seconds = f"{self.prefill_s:.0f}" if self.prefill_s >= 10 else f"{self.prefill_s:.1f}"
        if media.media.kind == "none":
            return (
                f"text only; context {self.n_ctx:,} tokens, KV cache {format_bytes(self.kv_bytes)}; "
                f"prefill ~{seconds} s{guess}"
            )
        return (
            f"{what} -> {self.n_media_tokens:,} vision tokens; context {self.n_ctx:,} tokens, "
            f"KV cache {format_bytes(self.kv_bytes)}; encode + prefill ~{seconds} s{guess}"
        )


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
    model: str,
    mmproj: str | None,
    video: Path | None,
    image: Path | None,
    sampling: FrameSampling,
    gen: GenerationSettings,
    engine: EngineSettings,
    token_budget: int | None = None,
    n_ctx: int | None = None,
    question: str | None = None,
) -> Plan:
    """Resolve, sample and size a run; raise `UserError` with remedies when it cannot work.

    `n_ctx`: the user's context size (None: automatic). `question`, when known, sizes the estimate.
    """
    if video and image:
        raise UserError("a run takes a video or an image, not both")
    if video:  # the user's own files first: a typo should not be answered with "download the model"
        check_video_file(video)
    if image:
        check_image_file(image)
    model_path, mmproj_path = resolve_files(model, mmproj, needs_vision=bool(video or image))
    info, projector = gguf_info.read_pair(model_path, mmproj_path)
    check_model_settings(info, n_ctx)  # before the video is sampled
    patch = projector.patch_size if projector else 14
    if video:
        loaded = load_video(video, sampling, patch, token_budget)
    elif image:
        loaded = load_image(image, sampling.max_pixels, patch)
    else:
        loaded = LoadedMedia(Media.none(), 0)
    # An upper bound of the prompt (the engine counts it exactly before encoding, and sizes an automatic
    # context from that): what the fit check and the estimate use, so neither is ever too small.
    text, _ = prefix_parts(loaded.media, "")
    asked = question_text(question, gen.reasoning, follow_up=False) if question else QUESTION_ALLOWANCE * "x"
    n_prompt = loaded.n_tokens + text_token_bound(text) + text_token_bound(asked)
    check_context(loaded.n_tokens + gen.max_tokens, n_ctx, info.n_ctx_train)  # certainly needed
    needed = n_prompt + gen.max_tokens
    ctx = n_ctx or min(info.n_ctx_train, context_size(needed))
    settings = replace(engine, n_ctx=n_ctx)  # None: the engine sizes it from the real prompt
    kv = ctx * info.kv_bytes_per_token
    check_fit(
        info.file_bytes,
        projector.file_bytes if projector else 0,
        ctx,
        info.kv_bytes_per_token,
        cpu_only=engine.n_gpu_layers == 0 or not supports_gpu_offload(),
        use=ContextUse(
            needed,
            gen.max_tokens,
            len(loaded.media.frames) if loaded.plan else 0,
            loaded.n_tokens if loaded.plan else 0,
            sampling.min_frames,
            user_set=n_ctx is not None,
        ),
    ).require()
    speed, measured = _prefill_speed(info, settings)
    est = Estimate(loaded.n_tokens, ctx, kv, n_prompt / speed, measured)
    return Plan(
        info.path, projector.path if projector else None, info, projector, loaded, settings, est, sampling, token_budget
    )


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

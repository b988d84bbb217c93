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
from .engine import Engine, EngineSettings, GenerationSettings
from .errors import UserError
from .fit import check_fit, format_bytes
from .hub import resolve_model
from .media import LoadedMedia, Media, check_image_file, load_image, load_video
from .video import FrameSampling, check_video_file

PROMPT_OVERHEAD = 128  # system prompt, timestamps, question and instruction, in tokens (generous)


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
        guess = "" if self.measured else " (rough guess until measured here)"
        return (f"{what} -> {self.n_media_tokens:,} vision tokens; context {self.n_ctx:,} tokens, "
                f"KV cache {format_bytes(self.kv_bytes)}; encode + prefill ~{self.prefill_s:.0f} s{guess}")


@dataclass(frozen=True)
class Plan:
    model_path: Path
    mmproj_path: Path | None
    info: gguf_info.ModelInfo
    projector: gguf_info.ProjectorInfo | None
    media: LoadedMedia
    engine: EngineSettings
    estimate: Estimate


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
    flops = 20e9 * settings.n_threads * (30 if settings.n_gpu_layers != 0 and _has_gpu() else 1)
    return flops / (2 * params), False


def _has_gpu() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def plan_run(model: str, mmproj: str | None, video: Path | None, image: Path | None, sampling: FrameSampling,
             gen: GenerationSettings, engine: EngineSettings, token_budget: int | None = None,
             n_ctx: int | None = None) -> Plan:
    """Resolve, sample and size a run; raise `UserError` with advice when it cannot work."""
    if video and image:
        raise UserError("give either --video or --image, not both")
    if video:  # the user's own files first: a typo should not be answered with "download the model"
        check_video_file(video)
    if image:
        check_image_file(image)
    model_path, mmproj_path = _resolve(model, mmproj, needs_vision=bool(video or image))
    info, projector = gguf_info.read_pair(model_path, mmproj_path)
    patch = projector.patch_size if projector else 14
    if video:
        loaded = load_video(video, sampling, patch, token_budget)
    elif image:
        loaded = load_image(image, sampling.max_pixels, patch)
    else:
        loaded = LoadedMedia(Media.none(), 0)
    needed = loaded.n_tokens + PROMPT_OVERHEAD + gen.max_tokens
    ctx = n_ctx or max(2048, -(-needed // 256) * 256)
    if needed > min(ctx, info.n_ctx_train):
        raise UserError(
            f"the prompt needs ~{needed:,} tokens ({loaded.n_tokens:,} vision + {gen.max_tokens} to generate) but the "
            f"context holds {min(ctx, info.n_ctx_train):,}; use --token-budget N, fewer frames (--max-frames), "
            "a lower --max-pixels or --max-tokens" + ("" if n_ctx is None else ", or a larger --ctx"))
    settings = replace(engine, n_ctx=ctx)
    kv = ctx * info.kv_bytes_per_token
    check_fit(info.file_bytes, projector.file_bytes if projector else 0, ctx, info.kv_bytes_per_token,
              frames=len(loaded.media.frames) or None,
              tokens_per_frame=(loaded.n_tokens // max(1, len(loaded.media.frames))) or None).require()
    speed, measured = _prefill_speed(info, settings)
    est = Estimate(loaded.n_tokens, ctx, kv, (loaded.n_tokens + PROMPT_OVERHEAD) / speed, measured)
    return Plan(info.path, projector.path if projector else None, info, projector, loaded, settings, est)


def _resolve(model: str, mmproj: str | None, needs_vision: bool) -> tuple[Path, Path | None]:
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

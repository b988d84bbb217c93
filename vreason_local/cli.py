"""The `vreason` command: a thin layer over planning/engine that renders the event stream.

Exit codes: 0 ok, 2 bad input (one line on stderr), 1 internal error, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from .errors import Remedy, UserError
from .events import MODES

if TYPE_CHECKING:
    from .engine import AnswerHandle

DEFAULT_MODEL_HELP = "Registry name (see `vreason models list`) or path to a GGUF file."


def _engine_options(f: Callable) -> Callable:
    """Options shared by every command that runs the model."""
    opts = [
        click.option("--model", "-m", default=None, help=DEFAULT_MODEL_HELP + " [default: qwen2.5-vl-3b]"),
        click.option(
            "--mmproj",
            default=None,
            help="Vision projector GGUF (default: the one beside the model, or the registry's).",
        ),
        click.option(
            "--mode",
            type=click.Choice(MODES),
            default="base",
            show_default=True,
            help="Decoding: plain, V-Reason, or V-Reason Lite (prunes half the video tokens).",
        ),
        click.option("--max-tokens", type=click.IntRange(1), default=1024, show_default=True),
        click.option("--temperature", type=click.FloatRange(0), default=0.0, show_default=True, help="0 = greedy."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True),
        click.option("--min-p", type=click.FloatRange(0, 1), default=0.0, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--no-reasoning", is_flag=True, help="Do not ask for <think>/<answer>; answer directly."),
        click.option("--fps", type=float, default=1.0, show_default=True, help="Frames sampled per second of video."),
        click.option(
            "--min-frames",
            type=int,
            default=4,
            show_default=True,
            help="Fewest frames to sample (made even: the model takes frames in pairs).",
        ),
        click.option(
            "--max-frames",
            type=int,
            default=32,
            show_default=True,
            help="Most frames to sample (made even; at least 2, and at least --min-frames).",
        ),
        click.option("--start", type=float, default=None, help="Clip window start (seconds)."),
        click.option("--end", type=float, default=None, help="Clip window end (seconds)."),
        # 3136 = video.MIN_PIXELS (56x56, the smallest frame the model is given); the core checks it.
        click.option(
            "--max-pixels",
            type=int,
            default=336 * 336,
            show_default=True,
            help="Pixel budget per frame, at least 3136 (56x56).",
        ),
        click.option(
            "--token-budget",
            type=click.IntRange(1),
            default=None,
            help="Fit frames and resolution to this many video tokens.",
        ),
        click.option(
            "--ctx",
            type=click.IntRange(256),
            default=None,
            help="Context size in tokens, at most the model's trained context (default: what the prompt needs).",
        ),
        click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: all, up to 8)."),
        click.option(
            "--gpu-layers",
            type=int,
            default=-1,
            show_default=True,
            help="Layers offloaded to the GPU: -1 all, 0 none (CPU only), or a count.",
        ),
        click.option(
            "--repack",
            type=click.Choice(["auto", "on", "off"]),
            default="auto",
            show_default=True,
            help="llama.cpp's repacking of quantised weights (auto: off where it crashes, e.g. AMX CPUs).",
        ),
        click.option(
            "--beta",
            type=click.FloatRange(0, 1, max_open=True),
            default=0.9,
            show_default=True,
            help="V-Reason: EMA factor.",
        ),
        click.option(
            "--every", type=click.IntRange(1), default=2, show_default=True, help="V-Reason: update every k tokens."
        ),
        click.option(
            "--steps",
            type=click.IntRange(1),
            default=1,
            show_default=True,
            help="V-Reason: optimiser steps per update.",
        ),
        click.option(
            "--lr", type=click.FloatRange(0), default=1e-3, show_default=True, help="V-Reason: learning rate."
        ),
        click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            help="V-Reason controller device: auto, cpu, cuda (or cuda:N), mps.",
        ),
        click.option(
            "--tail-dtype",
            type=click.Choice(["auto", "gguf", "float32", "bfloat16", "float16", "int8"]),
            default="auto",
            show_default=True,
            help="V-Reason: how the controller holds the last layer's weights: gguf (read in place from the "
            "model file, CPU; auto's choice for Q8_0, Q4_K and Q6_K), or a copy in float32, bfloat16, float16, int8.",
        ),
        click.option(
            "--head-error",
            type=click.FloatRange(0, 1, min_open=True),
            default=0.01,
            show_default=True,
            help="V-Reason: bound on the relative gradient error from the LM-head rows left out of the backward.",
        ),
        click.option(
            "--head-max",
            type=click.IntRange(1),
            default=2048,
            show_default=True,
            help="V-Reason: most LM-head rows in the backward (a notice says when the error bound needs more).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def settings_from_options(o: dict):
    """Turn the parsed options of `vreason run` (which chat and eval take too) into the core's settings objects."""
    from .engine import EngineSettings, GenerationSettings
    from .llama_backend import default_threads
    from .sampling import TokenSampling
    from .video import FrameSampling

    gen = GenerationSettings(
        o["max_tokens"],
        TokenSampling(o["temperature"], o["top_p"], o["min_p"], o["seed"]),
        reasoning=not o["no_reasoning"],
        stop_at_answer=not o["no_reasoning"],
    )
    frames = FrameSampling(
        fps=o["fps"],
        min_frames=o["min_frames"],
        max_frames=o["max_frames"],
        start_s=o["start"],
        end_s=o["end"],
        max_pixels=o["max_pixels"],
    )
    eng = EngineSettings(
        n_threads=o["threads"] or default_threads(),
        n_gpu_layers=o["gpu_layers"],
        repack=o["repack"],
        hook=o["mode"] != "base",
    )
    vr = None
    if o["mode"] != "base":  # .vreason imports torch (~1 s): base runs and input errors do without it
        from .vreason import VReasonSettings

        vr = VReasonSettings(
            beta=o["beta"],
            every=o["every"],
            steps=o["steps"],
            lr=o["lr"],
            optimizer=o["optimizer"],
            device=o["device"],
            dtype=o["tail_dtype"],
            head_error=o["head_error"],
            head_max=o["head_max"],
        )
    return gen, frames, eng, vr


@click.group()
@click.version_option(package_name="vreason-local")
def cli() -> None:
    """Ask questions about a video with a local Qwen-VL model, with V-Reason decoding."""


@cli.command()
@click.option("--video", "-v", type=click.Path(path_type=Path), default=None, help="Video file.")
@click.option("--image", "-i", type=click.Path(path_type=Path), default=None, help="Still image instead of a video.")
@click.option("--question", "-q", required=True, help="What to ask.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
@_engine_options
def run(video: Path | None, image: Path | None, question: str, as_json: bool, **o) -> None:
    """Answer one question about a video (or an image, or none) and exit.

    \b
    vreason run --video clip.mp4 -q "What happens after the door opens?"
    vreason run --video clip.mp4 -q "How many people?" --mode vreason --json
    """
    from .prompt import require_question
    from .report import answer_json, stream_text

    require_question(question)  # before anything slow, as the engine would later
    gen, frames, eng, vr = settings_from_options(o)
    from .checks import check_options
    from .planning import open_engine, plan_run

    check_options(eng, vr.device if vr else None)
    from .registry import DEFAULT_MODEL

    plan = plan_run(
        o["model"] or DEFAULT_MODEL, o["mmproj"], video, image, frames, gen, eng, o["token_budget"], o["ctx"], question
    )
    click.echo(plan.estimate.describe(plan.media), err=True)
    for warning in plan.media.warnings:
        click.echo(f"warning: {warning}", err=True)
    with open_engine(plan) as engine:
        handle = engine.ask(plan.media.media, question, gen, o["mode"], vr)
        if as_json:
            out = until_done(handle, lambda: answer_json(plan, handle))
            click.echo(json.dumps(out, ensure_ascii=False))
            stop = out["stop_reason"]
        else:
            stop = until_done(handle, lambda: stream_text(plan, handle)).stop_reason
    if stop == "cancelled":
        sys.exit(130)


T = TypeVar("T")


def until_done(handle: AnswerHandle, view: Callable[[], T]) -> T:
    """Run `view` (which consumes the answer's events) in a worker thread, so that Ctrl-C is seen at once
    even while llama.cpp computes: the first Ctrl-C cancels the answer at its next safe point (between
    vision chunks, prefill batches or tokens) and what was generated is still shown; a second aborts now."""
    result: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(view())
        except BaseException as exc:  # handed to the main thread, which reports it
            failure.append(exc)

    def on_sigint(signum: int, frame: object) -> None:
        if handle.cancel_requested:
            click.echo("\naborted", err=True)
            os._exit(130)
        handle.cancel()
        click.echo("\n[stopping at the next safe point; Ctrl-C again to abort]", err=True)

    worker = threading.Thread(target=work, name="vreason-answer", daemon=True)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
    finally:
        signal.signal(signal.SIGINT, previous)
    if failure:
        raise failure[0]
    return result[0]


@cli.command()
@click.option(
    "--dir",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the generated model and clip (default: a cache folder).",
)
@click.option("--mode", type=click.Choice(MODES), default="vreason", show_default=True)
@click.option("--max-tokens", type=click.IntRange(1), default=48, show_default=True)
def demo(out_dir: Path | None, mode: str, max_tokens: int) -> None:
    """Check an install end to end, with no download: a generated tiny model and a generated clip.

    The model has RANDOM WEIGHTS: its answer is gibberish by design. What the demo shows is that video
    decoding, the vision encoder, llama.cpp, the value-cache hook and the V-Reason controller all run.
    """
    from .cache import cache_dir
    from .clips import make_clip
    from .engine import EngineSettings, GenerationSettings
    from .planning import open_engine, plan_run
    from .report import stream_text
    from .tiny import make_tiny
    from .video import FrameSampling
    from .vreason import VReasonSettings

    out_dir = out_dir or cache_dir() / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"demo: generating a tiny Qwen2.5-VL model with RANDOM WEIGHTS and a test clip in {out_dir}", err=True)
    tiny = make_tiny(out_dir, arch="qwen25vl", shape="tiny")
    clip = make_clip(out_dir / "demo-clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    gen = GenerationSettings(max_tokens=max_tokens)
    question = "What happens in this video?"
    plan = plan_run(
        str(tiny.model_path),
        str(tiny.mmproj_path),
        clip,
        None,
        FrameSampling(fps=2.0, max_frames=8),
        gen,
        EngineSettings(),
        question=question,
    )
    click.echo(plan.estimate.describe(plan.media), err=True)
    with open_engine(plan) as engine:
        stream_text(plan, engine.ask(plan.media.media, question, gen, mode, VReasonSettings()))
    click.echo(
        "demo: OK (the text above is from random weights; real answers need a real model: vreason models pull)",
        err=True,
    )


def _register_models() -> None:
    from .model_commands import models

    cli.add_command(models)


_register_models()


def _register_eval() -> None:
    from .evaluate.command import make_eval_command  # built here: it takes `vreason run`'s options

    cli.add_command(make_eval_command(_engine_options))


_register_eval()


def _register_chat() -> None:
    from .chat.command import chat_command

    cli.add_command(chat_command(_engine_options))


_register_chat()


# The core names settings (errors.Remedy.setting); the command line words them as its flags.
FLAGS = {
    "model": "--model",
    "mmproj": "--mmproj",
    "video": "--video",
    "image": "--image",
    "mode": "--mode",
    "frames.fps": "--fps",
    "frames.min_frames": "--min-frames",
    "frames.max_frames": "--max-frames",
    "frames.start_s": "--start",
    "frames.end_s": "--end",
    "frames.max_pixels": "--max-pixels",
    "frames.token_budget": "--token-budget",
    "generation.max_tokens": "--max-tokens",
    "generation.sampling.temperature": "--temperature",
    "generation.sampling.top_p": "--top-p",
    "generation.sampling.min_p": "--min-p",
    "engine.n_ctx": "--ctx",
    "engine.n_threads": "--threads",
    "engine.n_gpu_layers": "--gpu-layers",
    "engine.repack": "--repack",
    "vreason.device": "--device",
    "vreason.dtype": "--tail-dtype",
    "vreason.head_error": "--head-error",
    "vreason.head_max": "--head-max",
    "cluster.ray": "--ray",
    "cluster.workers": "--workers",
}


def render_remedy(r: Remedy) -> str:
    """`--max-frames 16` when the remedy names a setting and a value, else its words (with the flag)."""
    flag = FLAGS.get(r.setting or "")
    if flag and r.value is not None:
        return f"{flag} {r.value}"
    if flag:
        return f"{r.text} ({flag})"
    return r.text


def render_error(exc: UserError) -> str:
    """One line: the fact, then what to do."""
    if not exc.remedies:
        return exc.message
    return f"{exc.message}; try {' or '.join(render_remedy(r) for r in exc.remedies)}"


# click >= 8.2 raises this (a UsageError whose message is the whole help page) for a group run with no
# arguments; older click prints the help and exits by itself.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and exit 2 for bad input, exit 1 for bugs, never a bare traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {render_error(exc)}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except _NO_ARGS_IS_HELP as exc:  # bare `vreason` / `vreason models`: the help, not an "error: Usage: ..." block
        exc.show()
        sys.exit(2)
    except click.ClickException as exc:
        click.echo("error: " + " ".join(exc.format_message().splitlines()), err=True)
        sys.exit(2)
    except Exception as exc:  # a bug: say so in one line; VREASON_DEBUG=1 shows the traceback
        if os.environ.get("VREASON_DEBUG") == "1":
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (set VREASON_DEBUG=1 for details)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The `vreason` command: a thin layer over planning/engine that renders the event stream.

Exit codes: 0 ok, 2 bad input (one line on stderr), 1 internal error, 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .errors import UserError
from .events import MODES
from .interrupt import abort_on_next_ctrl_c, until_done
from .options import read_settings, read_text, run_options
from .settings import render_error


@click.group()
@click.version_option(package_name="vreason-local")
def cli() -> None:
    """Ask questions about a video with a local Qwen-VL model, with V-Reason decoding."""


@cli.command()
@click.option("--video", "-v", type=click.Path(path_type=Path), default=None, help="Video file.")
@click.option("--image", "-i", type=click.Path(path_type=Path), default=None, help="Still image instead of a video.")
@click.option(
    "--question",
    "-q",
    required=True,
    help="What to ask; - reads it from standard input, @FILE from a file.",
    callback=lambda ctx, param, value: read_text(value, "question"),
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
@run_options
def run(video: Path | None, image: Path | None, question: str, as_json: bool, **o) -> None:
    """Answer one question about a video (or an image, or none) and exit.

    \b
    vreason run --video clip.mp4 -q "What happens after the door opens?"
    vreason run --video clip.mp4 -q "How many people?" --mode vreason --json
    vreason run --video clip.mp4 -q @question.txt --system @system.txt
    """
    from .checks import check_options
    from .decoding import decoding_for
    from .planning import open_engine, plan_run
    from .prompt import require_question
    from .report import answer_json, stream_text

    require_question(question)  # before anything slow, as the engine would later
    settings = read_settings(o)
    check_options(settings)
    plan = plan_run(settings, video, image, question)
    click.echo(plan.estimate.describe(plan.media), err=True)
    for warning in plan.media.warnings:
        click.echo(f"warning: {warning}", err=True)
    with open_engine(plan) as engine:
        decoding = decoding_for(settings.mode, settings.vreason)
        handle = engine.ask(plan.media.media, question, settings.generation, decoding)
        if as_json:
            out = until_done(handle, lambda: answer_json(plan, handle))
            click.echo(json.dumps(out, ensure_ascii=False))
            stop = out["stop_reason"]
        else:
            stop = until_done(handle, lambda: stream_text(plan, handle)).stop_reason
    if stop == "cancelled":
        sys.exit(130)


@cli.command()
@click.option(
    "--dir",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the generated model and clip (default: a cache folder).",
)
@click.option(
    "--mode", type=click.Choice(MODES), default="vreason", show_default=True, help="Decoding mode of the demo's answer."
)
@click.option("--max-tokens", type=click.IntRange(1), default=48, show_default=True, help="Most tokens in the answer.")
def demo(out_dir: Path | None, mode: str, max_tokens: int) -> None:
    """Check an install end to end, with no download: a generated tiny model and a generated clip.

    The model has RANDOM WEIGHTS: its answer is gibberish by design. What the demo shows is that video
    decoding, the vision encoder, llama.cpp, the value-cache hook and the V-Reason controller all run.
    """
    from .cache import cache_dir
    from .clips import make_clip
    from .decoding import decoding_for
    from .planning import open_engine, plan_run
    from .report import stream_text
    from .settings import FrameSampling, GenerationSettings, RunSettings
    from .tiny import make_tiny

    out_dir = out_dir or cache_dir() / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"demo: generating a tiny Qwen2.5-VL model with RANDOM WEIGHTS and a test clip in {out_dir}", err=True)
    tiny = make_tiny(out_dir, arch="qwen25vl", shape="tiny")
    clip = make_clip(out_dir / "demo-clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    settings = RunSettings(
        model=str(tiny.model_path),
        mmproj=str(tiny.mmproj_path),
        mode=mode,
        generation=GenerationSettings(max_tokens=max_tokens),
        frames=FrameSampling(fps=2.0, max_frames=8),
    )
    question = "What happens in this video?"
    plan = plan_run(settings, clip, None, question)
    click.echo(plan.estimate.describe(plan.media), err=True)
    with open_engine(plan) as engine:
        stream_text(
            plan, engine.ask(plan.media.media, question, settings.generation, decoding_for(mode, settings.vreason))
        )
    click.echo(
        "demo: OK (the text above is from random weights; real answers need a real model: vreason models pull)",
        err=True,
    )


def _register_models() -> None:
    from .model_commands import models

    cli.add_command(models)


_register_models()


def _register_cache() -> None:
    from .cache_commands import cache

    cli.add_command(cache)


_register_cache()


def _register_eval() -> None:
    from .evaluate.command import make_eval_command

    cli.add_command(make_eval_command())


_register_eval()


def _register_chat() -> None:
    from .chat.command import chat_command

    cli.add_command(chat_command())


_register_chat()


def _register_serve() -> None:
    from .serve.command import serve_command

    cli.add_command(serve_command())


_register_serve()


# click >= 8.2 raises this (a UsageError whose message is the whole help page) for a group run with no
# arguments; older click prints the help and exits by itself.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and exit 2 for bad input, exit 1 for bugs, never a bare traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {render_error(exc, 'flag')}", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        abort_on_next_ctrl_c()  # exiting now: a second Ctrl-C must not interrupt the interpreter's shutdown
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

"""The `vreason chat` command. Textual (and the engine) are imported inside the command, so other
`vreason` commands do not pay for them at start-up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click


def chat_command(engine_options: Callable[[Callable], Callable]) -> click.Command:
    """The command, decorated with `vreason run`'s model/frame/generation/V-Reason options (handed in by
    cli.py, which this module cannot import at its own import time: cli.py imports it)."""

    @click.command("chat")
    @click.argument("video", required=False, type=click.Path(path_type=Path))
    @click.option("--resume", is_flag=True, help="Reopen the latest saved session (its video, model and settings).")
    @engine_options
    def chat(video: Path | None, resume: bool, **o) -> None:
        """Chat about a video in the terminal: the model loads once, the video is encoded once, and every
        question (in base, V-Reason or Lite mode, or all compared) is answered on that encoding. Sessions
        are saved as they happen.

        \b
        vreason chat clip.mp4
        vreason chat clip.mp4 --mode vreason --max-frames 16
        vreason chat --resume
        """
        from ..checks import check_options
        from .app import ChatApp
        from .config import load_config
        from .options import ChatOptions
        from .store import ChatStore

        options = ChatOptions.from_cli(video, o)
        check_options(options.engine, options.vreason.device)
        config = load_config()
        with ChatStore() as store:
            app = ChatApp(options, store, resume=resume, config=config)
            try:
                app.run()
            finally:
                app.close_engine()

    return chat

"""The `vreason chat` command. Textual (and the engine) are imported inside the command, so other
`vreason` commands do not pay for them at start-up."""

from __future__ import annotations

from pathlib import Path

import click

from ..options import read_settings, run_options


def chat_command() -> click.Command:
    """The command, with `vreason run`'s model/frame/generation/V-Reason options."""

    @click.command("chat")
    @click.argument("video", required=False, type=click.Path(path_type=Path))
    @click.option("--resume", is_flag=True, help="Reopen the latest saved session (its video, model and settings).")
    @run_options
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

        options = ChatOptions.from_settings(read_settings(o, hook=True), video)
        check_options(options.settings)
        config = load_config()
        with ChatStore() as store:
            app = ChatApp(options, store, resume=resume, config=config)
            try:
                app.run()
            finally:
                app.close_engine()

    return chat

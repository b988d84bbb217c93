"""The `vreason serve` command: load the model once, then answer OpenAI chat requests on a local port.

FastAPI and uvicorn are the `serve` extra, imported inside the command, so the rest of `vreason` neither
needs nor loads them; without them the command says how to install them, in one line.
"""

from __future__ import annotations

import logging
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import click

from ..errors import UserError
from ..options import read_settings, run_options
from .config import GIB, MIB, is_loopback, served_name

INSTALL_HINT = 'vreason serve needs the server packages: pip install "vreason-local[serve]"'


def serve_command() -> click.Command:
    """The command, with `vreason run`'s options as every request's defaults."""

    @click.command("serve")
    @click.option(
        "--host",
        default="127.0.0.1",
        show_default=True,
        help="Address to listen on (any but loopback needs --api-key).",
    )
    @click.option(
        "--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port (0: any free one)."
    )
    @click.option(
        "--api-key", default=None, help="Key every request but /health must send (Authorization: Bearer KEY)."
    )
    @click.option(
        "--api-key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Read the key from a file (keeps it out of the process list).",
    )
    @click.option(
        "--media-root",
        "media_roots",
        multiple=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="A folder whose files requests may name by path or file:// URL (repeatable; none: only inline media).",
    )
    @click.option(
        "--queue",
        type=click.IntRange(0),
        default=16,
        show_default=True,
        help="Requests that may wait behind the running one; more get 429.",
    )
    @click.option(
        "--cache-gb",
        type=click.FloatRange(0),
        default=4.0,
        show_default=True,
        help="Host memory for encodings kept for later questions.",
    )
    @click.option(
        "--cors-origin",
        "cors_origins",
        multiple=True,
        help="A browser origin allowed to call the API (repeatable; none: no CORS).",
    )
    @click.option(
        "--max-body-mb",
        type=click.FloatRange(0, min_open=True),
        default=256.0,
        show_default=True,
        help="Largest request body (inline media included); larger gets 413.",
    )
    @click.option(
        "--time-limit",
        type=click.FloatRange(0, min_open=True),
        default=3600.0,
        show_default=True,
        help="Seconds a request may take, queue included.",
    )
    @run_options
    def serve(
        host: str,
        port: int,
        api_key: str | None,
        api_key_file: Path | None,
        media_roots: tuple[Path, ...],
        queue: int,
        cache_gb: float,
        cors_origins: tuple[str, ...],
        max_body_mb: float,
        time_limit: float,
        **o,
    ) -> None:
        """Serve the model over OpenAI's chat-completions API, with video, on this machine.

        \b
        vreason serve --media-root ~/videos
        vreason serve --model qwen2.5-vl-7b --port 8000 --max-frames 16
        vreason serve --host 0.0.0.0 --api-key-file key.txt --media-root /data/clips

        Model ids: NAME (the --mode given, base by default), NAME:vreason and NAME:lite pick the mode per request.
        """
        try:
            import uvicorn  # noqa: F401

            from .app import create_app
        except ImportError:
            raise UserError(INSTALL_HINT) from None
        from ..checks import check_options
        from ..planning import open_engine, plan_run
        from .config import ServeOptions
        from .media import MediaLimits

        key = _api_key(api_key, api_key_file)
        if not is_loopback(host) and key is None:
            raise UserError(
                f"--host {host} lets other machines in; set --api-key or --api-key-file, or listen on 127.0.0.1"
            )
        settings = read_settings(o, hook=True)  # every mode may be asked for, per request
        check_options(settings)
        max_body = int(max_body_mb * MIB)
        tmp = Path(tempfile.mkdtemp(prefix="vreason-serve-"))  # 0700: decoded inline media
        sock = None
        try:
            # base64 is 4/3 of the bytes it carries: inline media up to 3/4 of the body fit in it
            media = MediaLimits.create(media_roots, max_body * 3 // 4, tmp)
            plan = plan_run(settings)
            sock = _bind(host, port)
            options = ServeOptions(
                model_name=served_name(settings.model),
                media=media,
                api_key=key,
                queue=queue,
                cache_bytes=int(cache_gb * GIB),
                cors_origins=cors_origins,
                max_body_bytes=max_body,
                time_limit_s=time_limit,
            )
            with open_engine(plan) as engine:
                app = create_app(engine, settings, options)
                _log_to_stderr()
                bound = sock.getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                click.echo(
                    f"vreason serve: http://{shown}:{bound}/v1 (model {options.model_name}: "
                    f"{options.model_name}, {options.model_name}:vreason, {options.model_name}:lite)"
                    f"{'' if key else '; no API key'}; Ctrl-C stops",
                    err=True,
                )
                # Ctrl-C: open streams get 5 s to end, then the app's shutdown cancels whatever still runs
                config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
                server = uvicorn.Server(config)
                server.run(sockets=[sock])
        finally:
            if sock is not None:
                sock.close()
            shutil.rmtree(tmp, ignore_errors=True)

    return serve


def _api_key(key: str | None, path: Path | None) -> str | None:
    if key and path:
        raise UserError("give --api-key or --api-key-file, not both")
    if path is not None:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"the API key file {path} could not be read: {exc}") from None
        if not key:
            raise UserError(f"the API key file {path} is empty")
    return key or None


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads, so a port in use is said at once, not after the wait."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or --host"
        ) from None
    sock.listen(128)
    return sock


def _log_to_stderr() -> None:
    """One line per request on stderr (the request's figures; never media bytes or keys)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("vreason.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

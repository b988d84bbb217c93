"""The command line's run options, made from the settings table, and its wording of settings.

Every command that runs the model (`run`, `chat`, `eval`) takes the same options: one `click.option` per
`settings.Setting`, with its flag, default and help. Click only parses their types; the ranges and choices
are checked by the settings layer (`RunSettings.from_values`), the one place every front end shares.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from .errors import UserError
from .settings import BY_NAME, SETTINGS, RunSettings, Setting, setting_name

_SHORT = {"model": "-m"}
_TEXT_FROM_FILE = {"system"}  # settings whose value may be `@FILE` (and `-`: stdin), as a question may
_NOTE_PATHS = {"generation.sampling.seed"}  # what reading drew, not a value it had to change


def _option(s: Setting) -> Callable:
    """A click option for `s`; a bool that is on by default is a --name/--no-name pair."""
    if s.kind is bool:
        flag = s.option
        return click.option(f"{flag}/--no-{flag[2:]}", s.name, default=s.default, show_default=True, help=s.help)
    decls = [s.option, *([_SHORT[s.name]] if s.name in _SHORT else [])]
    shown = s.range_text() if s.low is not None or s.high is not None else None
    # click writes a default of its own as "[default: VALUE]"; one in words is added to the help the same way
    default_text = s.default_text
    return click.option(
        *decls,
        s.name,
        type=s.kind,
        default=s.default,
        show_default=s.default is not None and not default_text,
        metavar=f"[{'|'.join(s.choices)}]" if s.choices else None,
        callback=(lambda ctx, param, value: read_text(value, s.words)) if s.name in _TEXT_FROM_FILE else None,
        help=s.help + (f" ({shown})" if shown else "") + (f"  [default: {default_text}]" if default_text else ""),
    )


def read_text(value: str | None, what: str) -> str | None:
    """A text option as llama.cpp's CLI takes it: `-` reads standard input, `@FILE` reads the file, anything
    else is the text itself. Read at parsing, so what a run records (eval's run.json) is the text."""
    if value == "-":
        return _one_text(sys.stdin.read())
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return _one_text(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"the {what} file {path} was not found (@FILE reads the {what} from a file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise UserError(f"the {what} file {path} could not be read: {reason}") from None


def _one_text(text: str) -> str:
    """A file's or a pipe's text without the newline that ends its last line (an editor's, `echo`'s)."""
    return text.removesuffix("\n").removesuffix("\r")


def _show_llama_log(ctx: click.Context, param: click.Parameter, verbose: bool) -> None:
    if verbose:
        from .llama_backend import show_log

        show_log()


def run_options(f: Callable) -> Callable:
    """Decorate a command with every run setting's option (the model, frames, generation, engine, V-Reason),
    and `--verbose`, which changes no answer (so it is no setting, and no command sees it)."""
    for s in reversed(SETTINGS):
        f = _option(s)(f)
    return click.option(
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=_show_llama_log,
        help="Show llama.cpp's and the vision encoder's own log on stderr (as VREASON_LLAMA_LOG=1 does).",
    )(f)


def read_settings(o: dict, hook: bool | None = None) -> RunSettings:
    """The run settings in the parsed options `o` (other options of the command are left out), checked;
    what reading changed or drew is said on stderr (`--threads 64 is more than ...; using 2`)."""
    settings = RunSettings.from_values({k: v for k, v in o.items() if k in BY_NAME}, hook=hook)
    for path, text in settings.notes:
        kind = "note" if path in _NOTE_PATHS else "warning"
        click.echo(f"{kind}: {setting_name(path, 'flag')} {text}", err=True)
    return settings

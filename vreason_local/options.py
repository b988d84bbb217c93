"""The command line's run options, made from the settings table, and its wording of settings.

Every command that runs the model (`run`, `chat`, `eval`) takes the same options: one `click.option` per
`settings.Setting`, with its flag, default and help. Click only parses their types; the ranges and choices
are checked by the settings layer (`RunSettings.from_values`), the one place every front end shares.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from .settings import DEFAULT_MODEL, SETTINGS, RunSettings, Setting, setting_name

_SHORT = {"model": "-m"}
_NOTE_PATHS = {"generation.sampling.seed"}  # what reading drew, not a value it had to change


def _option(s: Setting) -> Callable:
    """A click option for `s`; a bool that is on by default is a --name/--no-name pair."""
    if s.kind is bool:
        flag = s.option
        return click.option(f"{flag}/--no-{flag[2:]}", s.name, default=s.default, show_default=True, help=s.help)
    decls = [s.option, *([_SHORT[s.name]] if s.name in _SHORT else [])]
    shown = s.range_text() if s.low is not None or s.high is not None else None
    return click.option(
        *decls,
        s.name,
        type=s.kind,
        default=s.default,
        show_default=s.default is not None,
        metavar=f"[{'|'.join(s.choices)}]" if s.choices else None,
        help=s.help + (f" ({shown})" if shown else "") + (f" [default: {DEFAULT_MODEL}]" if s.name == "model" else ""),
    )


def run_options(f: Callable) -> Callable:
    """Decorate a command with every run setting's option (the model, frames, generation, engine, V-Reason)."""
    for s in reversed(SETTINGS):
        f = _option(s)(f)
    return f


def read_settings(o: dict, hook: bool | None = None) -> RunSettings:
    """The run settings in the parsed options `o` (other options of the command are left out), checked;
    what reading changed or drew is said on stderr (`--threads 64 is more than ...; using 2`)."""
    settings = RunSettings.from_values({k: v for k, v in o.items() if k in _NAMES}, hook=hook)
    for path, text in settings.notes:
        kind = "note" if path in _NOTE_PATHS else "warning"
        click.echo(f"{kind}: {setting_name(path, 'flag')} {text}", err=True)
    return settings


_NAMES = frozenset(s.name for s in SETTINGS)

"""Errors a user can act on, stated as facts with structured remedies.

The core never names a command-line flag: a `Remedy` names the *setting* to change (the field name of a
settings dataclass, e.g. `frames.max_frames`) and, where one is known to work, a value. Each front end
words it: the CLI as `--max-frames 16`, the TUI as the form field of that setting. Front ends print a
`UserError` as one line and exit with its code; anything else is a bug and exits 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Remedy:
    """One thing the user can do. `setting` is a dotted settings path (None: an action in words only);
    `value` a value of that setting that is known to fix the problem (None: change it in `text`'s direction).
    """

    text: str
    setting: str | None = None
    value: object | None = None


class UserError(Exception):
    """Bad input or an environment the user can fix (missing file, model too large, ...).

    `str(err)` is one line that says what is wrong in the user's terms; `remedies` say what to change.
    """

    exit_code = 2

    def __init__(self, message: str, remedies: Sequence[Remedy] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.remedies = tuple(remedies)


class SettingError(UserError):
    """A setting's value cannot work (checked before any slow step)."""

    def __init__(self, setting: str, value: object, problem: str, remedies: Sequence[Remedy] = ()) -> None:
        super().__init__(problem, remedies)
        self.setting = setting
        self.value = value


class ContextTooSmall(UserError):
    """The prompt and the answer need more context than there is. `user_set`: the user chose the size."""

    def __init__(self, needed: int, available: int, user_set: bool, remedies: Sequence[Remedy] = ()) -> None:
        who = "the context size you set" if user_set else "the context"
        super().__init__(f"this needs {needed:,} tokens of context but {who} holds {available:,}", remedies)
        self.needed = needed
        self.available = available
        self.user_set = user_set


class ModelMissing(UserError):
    """The model asked for is not there to load: a registry name that is unknown or not downloaded, or no
    usable model file at the path given. A front end can offer what fixes it (the chat: its model screen,
    which downloads or picks another) instead of only saying it."""


class DoesNotFit(UserError):
    """Not enough memory for the weights, the projector and the KV cache (see `fit.FitReport`)."""


class EngineBusy(RuntimeError):
    """A second answer was asked of an engine while one is still running (one at a time per engine)."""

"""The chat's user configuration: theme and keybindings, from `chat.toml` in the user config folder.

    theme = "textual-light"
    [keys]
    "chat.compare" = "ctrl+b,f6"     # binding id = keys (replaces the default keys of that binding)

Keys are bound by id (`App.set_keymap`), so a user remaps an action without knowing its method; alt+
keys are refused, because macOS terminals turn Option into a character unless configured otherwise.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

from ..errors import UserError


def default_config_path() -> Path:
    return platformdirs.user_config_path("vreason", appauthor=False) / "chat.toml"


@dataclass(frozen=True)
class ChatConfig:
    theme: str = "textual-dark"
    keys: dict[str, str] = field(default_factory=dict)


def load_config(path: Path | None = None) -> ChatConfig:
    """The config at `path` (default: the user's); none there gives the defaults; a broken one, a
    `UserError` naming the file."""
    path = path or default_config_path()
    if not path.is_file():
        return ChatConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"cannot read the chat config {path}: {exc}") from None
    keys = data.get("keys", {})
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise UserError(f'{path}: [keys] must map binding ids to key strings, e.g. "chat.stop" = "escape"')
    for binding_id, spec in keys.items():
        if any(k.strip().startswith("alt+") or "+alt+" in k for k in spec.split(",")):
            raise UserError(f"{path}: {binding_id} = {spec!r} uses alt, which macOS terminals send as a character")
    theme = data.get("theme", ChatConfig.theme)
    if not isinstance(theme, str):
        raise UserError(f"{path}: theme must be a theme name such as textual-light")
    return ChatConfig(theme, dict(keys))

"""Errors in OpenAI's shape, so every client library (openai, Open WebUI, curl scripts) can read them.

Every failure the server reports, from bad JSON to a full queue, goes through ApiError so the body is
always {"error": {"message", "type", "param", "code"}} with a meaningful HTTP status.
"""

from __future__ import annotations

from ..errors import Remedy, SettingError, UserError
from ..settings import render_error, render_remedy, setting_name

# Settings no request can change (the server's command line sets them): a remedy naming one is for its operator.
_SERVER_ONLY = ("engine.", "model", "mmproj")


class ApiError(Exception):
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        """The JSON body OpenAI clients parse into their exception's .message/.param/.code."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def from_user_error(exc: UserError, status: int = 400) -> ApiError:
    """The engine's and settings' one-line errors, worded for an API caller: a remedy the request can apply
    in its JSON keys (`param` names the first), one only the server's operator can apply as its flag."""
    mine = [r for r in exc.remedies if not _server_only(r)]
    theirs = [r for r in exc.remedies if _server_only(r)]
    message = render_error(UserError(exc.message, mine), "param")
    if theirs:
        message += f" (or start the server with {' or '.join(render_remedy(r, 'flag') for r in theirs)})"
    param = next((setting_name(r.setting, "param") for r in mine if r.setting), None)
    if param is None and isinstance(exc, SettingError) and not exc.setting.startswith(_SERVER_ONLY):
        param = setting_name(exc.setting, "param")
    return ApiError(status, message, param=param)


def _server_only(r: Remedy) -> bool:
    return r.setting is not None and r.setting.startswith(_SERVER_ONLY)

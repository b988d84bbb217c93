"""From a `POST /v1/chat/completions` body to a checked `ChatRequest`, or one `ApiError` saying what is wrong.

API (for the app): `parse_chat_request(body, defaults, model_name, limits) -> ChatRequest`, where `body` is
the parsed JSON, `defaults` the server's `RunSettings` and `limits` its `media.MediaLimits`; then
`ChatRequest.discard()` once the request is over (it removes a temporary media file). `model_ids(name)`
lists the ids `/v1/models` shows. Everything is checked here, before the request is queued, so a bad
request costs no engine time; media is resolved last, so a request refused for anything else leaves no
file behind.

What a body may hold (anything else at the top level is ignored, as OpenAI's servers ignore fields they
do not know; inside the objects that are ours or vLLM's an unknown key is refused, because there it is a typo):
- `model`: `NAME` (the server's default mode), `NAME:vreason`, `NAME:lite` (Open WebUI cannot send extra
  fields per model, so the mode can be the model id). Unknown ids: 404 `model_not_found`.
- `messages`: `system` (or `developer`) messages first, then `user` and `assistant` turns; consecutive
  messages of one role are joined; the last must be the user's. Content is a string or a list of parts:
  `text`, `video_url` (vLLM: `{"video_url": {"url", "uuid"?}, "uuid"?}`, url null to reuse a uuid),
  `input_video` (llama-server: `{"input_video": {"data"|"url"}}`), `video` (`{"video": url | {...}}`),
  `image_url`. Media only in user messages, and one video or image per conversation (a part repeating
  the same one is fine, as clients that resend history do). Assistant content keeps only the answer:
  `<think>` text is dropped (`channels.split_answer`), since the engine puts its own history in.
- Settings, read by the run-settings layer (`RunSettings.with_values` on the server's defaults):
  `temperature`, `top_p`, `min_p`, `seed`, `max_tokens` / `max_completion_tokens`; vLLM's
  `mm_processor_kwargs` {`fps`, `max_pixels`} and `media_io_kwargs` {`video`: {`num_frames`, `fps`}}
  (num_frames sets both frame limits); ours, `vreason`: {`mode`, `telemetry`, `reasoning`, every
  V-Reason setting (`beta`, `every`, `steps`, `lr`, `optimizer`, `head_error`, `head_max`, `head_skip`,
  `device`, `dtype`), `frames`: {`fps`, `min_frames`, `max_frames`, `start`, `end`, `max_pixels`,
  `token_budget`}}. One setting given twice with different values (`max_tokens` and
  `max_completion_tokens`, `mm_processor_kwargs.fps` and `vreason.frames.fps`) is refused.
- `stop` (a string or up to 4), `stream`, `stream_options.include_usage`, `logprobs`, `top_logprobs`
  (0..20, needs `logprobs`; together they set `GenerationSettings.logprobs`), `n` (only 1).
A bad value's error names the field as the caller sent it (`param`: `top_p`, `mm_processor_kwargs.fps`,
`vreason.frames.max_frames`, `messages[1].content[0].type`), in its message and in the remedy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from ..channels import split_answer
from ..errors import Remedy, SettingError, UserError
from ..events import MODES, Mode
from ..settings import LOGPROBS, RunSettings, setting_name
from .errors import ApiError
from .media import MediaKind, MediaLimits, MediaSource, resolve_media

MODES_BY_SUFFIX: dict[str, Mode] = {"": "base", ":vreason": "vreason", ":lite": "lite"}
MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_TOP_LOGPROBS = int(LOGPROBS.high)  # OpenAI's

# Request fields that are run settings: where in the body -> the setting's name in `settings.SETTINGS`.
TOP_LEVEL = {
    "temperature": "temperature",
    "top_p": "top_p",
    "min_p": "min_p",
    "seed": "seed",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
}
MM_PROCESSOR = {"fps": "fps", "max_pixels": "max_pixels"}
MEDIA_IO_VIDEO = {"num_frames": ("min_frames", "max_frames"), "fps": ("fps",)}
VREASON = {
    name: name
    for name in ("beta", "every", "steps", "lr", "optimizer", "head_error", "head_max", "head_skip", "device")
} | {"dtype": "tail_dtype", "reasoning": "reasoning"}
VREASON_FRAMES = {n: n for n in ("fps", "min_frames", "max_frames", "start", "end", "max_pixels", "token_budget")}
VREASON_OWN = ("mode", "telemetry", "frames")  # the `vreason` object's keys that are not run settings
MEDIA_PARTS: dict[str, MediaKind] = {
    "video_url": "video",
    "input_video": "video",
    "video": "video",
    "image_url": "image",
}
PART_TYPES = ("text", *MEDIA_PARTS)


def model_ids(name: str) -> list[str]:
    """The ids `/v1/models` lists for the served model: one per mode."""
    return [name + suffix for suffix in MODES_BY_SUFFIX]


@dataclass
class Turn:
    """One message of the conversation after the system prompt: the user's text, or an earlier answer's."""

    role: Literal["user", "assistant"]
    text: str


@dataclass
class ChatRequest:
    """A checked request. `mode`: from the model id's suffix or `vreason.mode` (a bare id: the server's
    default mode). `settings`: the server's defaults with this request's values. `system`: the system
    messages' text (None: the engine's own). `media`: the conversation's one video or image (None: none
    sent, or only its `media_uuid` to reuse one sent before). `turns`: user and assistant turns in
    order, the last the user's question. `stop`: stop sequences (text that ends the answer, not returned).
    The request's `logprobs`/`top_logprobs` are `settings.generation.logprobs` (None: not asked)."""

    model_id: str
    mode: Mode
    settings: RunSettings
    system: str | None
    media: MediaSource | None
    media_uuid: str | None
    turns: list[Turn]
    stream: bool
    include_usage: bool
    telemetry: bool
    stop: tuple[str, ...] = field(default=())

    @property
    def logprobs(self) -> bool:
        return self.settings.generation.logprobs is not None

    @property
    def top_logprobs(self) -> int:
        return self.settings.generation.logprobs or 0

    def discard(self) -> None:
        """Remove the temporary media file, if the media was sent inline (safe to call more than once)."""
        if self.media is not None:
            self.media.discard()


def parse_chat_request(body: object, defaults: RunSettings, model_name: str, limits: MediaLimits) -> ChatRequest:
    """Read and check a chat-completions body (see the module's docstring); raises `ApiError`."""
    if not isinstance(body, Mapping):
        raise ApiError(400, f"the request body must be a JSON object, got {_json_type(body)}")
    model_id, id_mode = _model(body, model_name)
    _check_n(body)
    vreason = _object(body, "vreason")
    mode = _mode(vreason, model_id, id_mode, defaults.mode)
    settings = _settings(body, vreason, defaults, mode)
    telemetry = _bool(vreason, "telemetry", "vreason.telemetry")
    stream = _bool(body, "stream", "stream")
    stream_options = _object(body, "stream_options")
    logprobs = _bool(body, "logprobs", "logprobs")
    top_logprobs = _top_logprobs(body, logprobs)
    settings = replace(settings, generation=replace(settings.generation, logprobs=top_logprobs if logprobs else None))
    stop = _stop(body)
    system, turns, parts = _messages(body.get("messages"))
    media, uuid = _media(parts, limits)
    return ChatRequest(
        model_id=model_id,
        mode=mode,
        settings=settings,
        system=system,
        media=media,
        media_uuid=uuid,
        turns=turns,
        stream=stream,
        include_usage=stream and _bool(stream_options, "include_usage", "stream_options.include_usage"),
        telemetry=telemetry,
        stop=stop,
    )


# -- model, mode, the small fields ------------------------------------------------------------------
def _model(body: Mapping, name: str) -> tuple[str, Mode | None]:
    """(the model id, the mode its suffix names; None for the bare name, which takes the default)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, f"'model' must be one of {', '.join(model_ids(name))}", param="model")
    for suffix, mode in MODES_BY_SUFFIX.items():
        if model == name + suffix:
            return model, mode if suffix else None
    raise ApiError(
        404,
        f"the model '{model}' does not exist: this server has {', '.join(model_ids(name))}",
        param="model",
        code="model_not_found",
    )


def _check_n(body: Mapping) -> None:
    n = body.get("n")
    if n is None or n == 1 and not isinstance(n, bool):
        return
    raise ApiError(400, f"n={n!r}: this server gives one choice per request; send n=1 or leave it out", param="n")


def _mode(vreason: Mapping, model_id: str, id_mode: Mode | None, default: Mode) -> Mode:
    """The body's `vreason.mode`, else the id's, else the server's default; refused where body and id disagree."""
    body_mode = vreason.get("mode")
    if body_mode is None:
        return id_mode or default
    if body_mode not in MODES:
        raise ApiError(400, f"vreason.mode must be one of {', '.join(MODES)}, got {body_mode!r}", param="vreason.mode")
    if id_mode is not None and body_mode != id_mode:
        raise ApiError(
            400,
            f"the model id '{model_id}' asks for mode {id_mode} but vreason.mode is {body_mode}: "
            "send one of them, or the two alike",
            param="vreason.mode",
        )
    return body_mode


def _bool(obj: Mapping, key: str, where: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{where} must be true or false, got {value!r}", param=where)
    return value


def _top_logprobs(body: Mapping, logprobs: bool) -> int:
    n = body.get("top_logprobs")
    if n is None:
        return 0
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_TOP_LOGPROBS:
        raise ApiError(
            400, f"top_logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS}, got {n!r}", param="top_logprobs"
        )
    if n and not logprobs:
        raise ApiError(400, 'top_logprobs needs logprobs: send "logprobs": true as well', param="top_logprobs")
    return n


def _stop(body: Mapping) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or len(items) > MAX_STOP:
        raise ApiError(400, f"stop must be a non-empty string or a list of up to {MAX_STOP} of them", param="stop")
    return tuple(items)


def _object(obj: Mapping, key: str, where: str | None = None) -> Mapping:
    """`obj[key]` when it is a JSON object, {} when it is absent or null, else a 400."""
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        where = where or key
        raise ApiError(400, f"{where} must be a JSON object, got {_json_type(value)}", param=where)
    return value


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# -- run settings ---------------------------------------------------------------------------------------
def _settings(body: Mapping, vreason: Mapping, defaults: RunSettings, mode: Mode) -> RunSettings:
    """The defaults with the request's values; a bad value is an `ApiError` naming the field as sent."""
    sent: dict[str, tuple[object, str]] = {}  # setting name -> (value, where in the body)

    def take(obj: Mapping, table: Mapping[str, str | tuple[str, ...]], prefix: str, strict: bool) -> None:
        for key, value in obj.items():
            where = prefix + key
            if key not in table:
                if strict:
                    known = ", ".join(sorted(table))
                    raise ApiError(400, f"unknown field {where}: {prefix[:-1]} takes {known}", param=where)
                continue
            if value is None:
                continue
            names = table[key]
            for name in (names,) if isinstance(names, str) else names:
                if name in sent and sent[name][0] != value:
                    raise ApiError(
                        400,
                        f"{sent[name][1]}={sent[name][0]!r} and {where}={value!r} set the same thing: send one",
                        param=where,
                    )
                sent[name] = (value, where)

    take(body, TOP_LEVEL, "", strict=False)
    take(_object(body, "mm_processor_kwargs"), MM_PROCESSOR, "mm_processor_kwargs.", strict=True)
    media_io = _object(body, "media_io_kwargs")
    extra = sorted(set(media_io) - {"video"})
    if extra:
        where = "media_io_kwargs." + extra[0]
        raise ApiError(400, f"unknown field {where}: media_io_kwargs takes video", param=where)
    take(_object(media_io, "video", "media_io_kwargs.video"), MEDIA_IO_VIDEO, "media_io_kwargs.video.", strict=True)
    own = {k: v for k, v in vreason.items() if k not in VREASON_OWN}
    take(own, VREASON, "vreason.", strict=False)
    unknown = sorted(set(own) - set(VREASON))
    if unknown:
        known = ", ".join(sorted((*VREASON, *VREASON_OWN)))
        where = "vreason." + unknown[0]
        raise ApiError(400, f"unknown field {where}: vreason takes {known}", param=where)
    take(_object(vreason, "frames", "vreason.frames"), VREASON_FRAMES, "vreason.frames.", strict=True)
    values = {name: value for name, (value, _) in sent.items()} | {"mode": mode}
    try:
        return defaults.with_values(values)
    except UserError as exc:
        raise _setting_error(exc, {name: where for name, (_, where) in sent.items()}) from None


def _setting_error(exc: UserError, sent: Mapping[str, str]) -> ApiError:
    """The settings layer's error (`render_error`'s one line) worded with the fields as this request sent
    them: a setting the request did not send is named where it could be (`vreason.frames.max_frames`)."""

    def where(path: str | None) -> str | None:
        name = setting_name(path, "param") if path else None
        return name and (sent.get(name) or _default_place(name))

    # The field to blame: the erring setting, else one its remedies change, preferring one the request sent.
    paths = [exc.setting] if isinstance(exc, SettingError) else []
    paths += [r.setting for r in exc.remedies if r.setting]
    names = [setting_name(p, "param") for p in paths]
    param = next((sent[n] for n in names if n in sent), None) or next(filter(None, map(where, paths)), None)
    message = exc.message
    if exc.remedies:
        message += "; try " + " or ".join(_remedy(r, where(r.setting)) for r in exc.remedies)
    if param and not message.startswith(param):
        message = f"{param}: {message}"
    return ApiError(400, message, param=param)


def _remedy(r: Remedy, name: str | None) -> str:
    if name and r.value is not None:
        return f"{name}={r.value!r}"
    return f"{r.text} ({name})" if name else r.text


def _default_place(name: str) -> str:
    """Where a request sets the setting `name` when it did not (the first place this module reads it)."""
    for table, prefix in ((TOP_LEVEL, ""), (VREASON, "vreason."), (VREASON_FRAMES, "vreason.frames.")):
        key = next((k for k, v in table.items() if v == name), None)
        if key:
            return prefix + key
    return name


# -- messages and media -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Part:
    """A media part as found: its kind, source (None: a uuid alone), uuid, and where it was."""

    kind: MediaKind
    source: str | None
    uuid: str | None
    where: str


def _messages(messages: object) -> tuple[str | None, list[Turn], list[_Part]]:
    """(system text, turns, media parts) of the `messages` array, its shape checked."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty array of {role, content} objects", param="messages")
    system: list[str] = []
    turns: list[Turn] = []
    parts: list[_Part] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise ApiError(400, f"{where} must be an object with role and content", param=where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(
                400,
                f"{where}.role must be system, user or assistant, got {role!r}"
                + (" (this server has no tools)" if role in ("tool", "function") else ""),
                param=f"{where}.role",
            )
        text, found = _content(message.get("content"), f"{where}.content", media_ok=role == "user")
        parts += found
        if role in ("system", "developer"):
            if turns:
                raise ApiError(
                    400, f"{where}: a system message must come before the conversation", param=f"{where}.role"
                )
            system.append(text)
            continue
        if role == "assistant":
            text = split_answer(text)[1]  # an earlier answer's <think> text is not part of the history
        if turns and turns[-1].role == role:
            turns[-1].text = "\n".join(t for t in (turns[-1].text, text) if t)
        elif not turns and role == "assistant":
            raise ApiError(400, f"{where}: the conversation must start with a user message", param=f"{where}.role")
        else:
            turns.append(Turn(role, text))
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "the last message must be the user's question", param=f"messages[{len(messages) - 1}]")
    if not turns[-1].text.strip():
        raise ApiError(400, "the last user message has no text: ask a question", param=f"messages[{len(messages) - 1}]")
    return ("\n\n".join(system) if system else None), turns, parts


def _content(content: object, where: str, media_ok: bool) -> tuple[str, list[_Part]]:
    """A message's text (its text parts joined) and media parts."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ApiError(400, f"{where} must be a string or an array of parts, got {_json_type(content)}", param=where)
    texts: list[str] = []
    parts: list[_Part] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, Mapping):
            raise ApiError(400, f"{at} must be an object with a type", param=at)
        kind = part.get("type")
        if kind not in PART_TYPES:
            raise ApiError(
                400,
                f"unsupported content part type {kind!r}: this server takes {', '.join(PART_TYPES)}",
                param=f"{at}.type",
            )
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(400, f"{at}.text must be a string", param=f"{at}.text")
            texts.append(text)
        elif not media_ok:
            raise ApiError(400, f"{at}: only user messages may carry a video or an image", param=f"{at}.type")
        else:
            parts.append(_media_part(part, kind, at))
    return "\n".join(texts), parts


def _media_part(part: Mapping, kind: str, at: str) -> _Part:
    """Source and uuid of a media part in any of the shapes the module's docstring lists."""
    inner = part.get(kind)
    uuid = part.get("uuid")
    if isinstance(inner, Mapping):
        uuid = uuid if uuid is not None else inner.get("uuid")
        keys = [k for k in ("url", "data") if inner.get(k) is not None]
        if len(keys) > 1:
            raise ApiError(400, f"{at}.{kind} has both url and data: send one", param=f"{at}.{kind}")
        source = inner.get(keys[0]) if keys else None
        where = f"{at}.{kind}.{keys[0]}" if keys else f"{at}.{kind}"
    else:
        source, where = inner, f"{at}.{kind}"
    if uuid is not None and (not isinstance(uuid, str) or not uuid):
        raise ApiError(400, f"{at}.uuid must be a non-empty string", param=f"{at}.uuid")
    if source is not None and not isinstance(source, str):
        raise ApiError(400, f"{where} must be a string (a data: URI, base64 or a path)", param=where)
    if source is None and uuid is None:
        raise ApiError(400, f"{at} has no {kind} url or data, and no uuid of one sent before", param=where)
    return _Part(MEDIA_PARTS[kind], source, uuid, where)


def _media(parts: list[_Part], limits: MediaLimits) -> tuple[MediaSource | None, str | None]:
    """The conversation's one media (resolved to a file) and its uuid; a second, different one is refused."""
    first: _Part | None = None
    for part in parts:
        if first is None:
            first = part
            continue
        same_source = part.source is None or first.source is None or part.source == first.source
        same_uuid = part.uuid is None or first.uuid is None or part.uuid == first.uuid
        if part.kind != first.kind or not (same_source and same_uuid):
            raise ApiError(
                400,
                f"{part.where}: this server answers about one video or image per conversation, and "
                f"{first.where} already sent one",
                param=part.where,
            )
        where = first.where if first.source is not None else part.where
        first = _Part(first.kind, first.source or part.source, first.uuid or part.uuid, where)
    if first is None:
        return None, None
    if first.source is None:
        return None, first.uuid
    try:
        return resolve_media(first.kind, first.source, first.uuid, limits), first.uuid
    except ApiError as exc:
        exc.param = exc.param or first.where
        raise

"""The chat's modal screens: an error with its remedy, the model picker (or, when nothing is downloaded,
how to get a model), sampling and V-Reason settings, earlier sessions, and export."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static, Switch
from textual.widgets.option_list import Option

from ..engine import GenerationSettings
from ..errors import UserError
from ..fit import format_bytes
from ..hub import list_models
from ..sampling import TokenSampling
from .store import SessionRecord

CLOSE = [Binding("escape", "dismiss", "Close", id="screen.close")]


class ErrorScreen(ModalScreen[None]):
    """A problem the user can fix: the one-line error with its remedy (`cli.render_error`'s wording)."""

    AUTO_FOCUS = "#ok"
    BINDINGS = CLOSE

    def __init__(self, title: str, message: str) -> None:
        super().__init__(classes="dialog")
        self.title_text, self.message = title, message

    def compose(self) -> ComposeResult:
        with Vertical(classes="box error"):
            yield Static(f"[b]{self.title_text}[/b]", classes="heading")
            yield Static(self.message, id="error-message")
            yield Button("OK", id="ok", variant="error")

    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        self.dismiss()


@dataclass(frozen=True)
class ModelChoice:
    model: str
    mmproj: str | None = None


NO_MODEL_TEXT = (
    "No model is downloaded yet. In another terminal, download one (about 2.8 GB):\n\n"
    "    vreason models pull qwen2.5-vl-3b\n\n"
    "then choose it here, or start with a GGUF file you already have:\n\n"
    "    vreason chat --model PATH/model.gguf --mmproj PATH/mmproj.gguf VIDEO\n\n"
    "or type the path of a model file below. `vreason models list` shows what is known and downloaded."
)


class ModelScreen(ModalScreen[ModelChoice | None]):
    """Pick a registry model (downloaded ones first) or a local GGUF file; explains how to get a model
    when nothing is downloaded."""

    AUTO_FOCUS = "#registry"
    BINDINGS = CLOSE

    def __init__(self, problem: str = "") -> None:
        super().__init__()
        self.problem = problem

    def compose(self) -> ComposeResult:
        statuses = list_models()
        downloaded = [s for s in statuses if s.downloaded]
        with Vertical(classes="box"):
            yield Static("[b]Model[/b]", classes="heading")
            if self.problem:
                yield Static(f"[$error]{escape(self.problem)}[/]", id="model-problem")
            if not downloaded:
                yield Static(NO_MODEL_TEXT, id="no-model")
            options = [
                Option(
                    f"{s.spec.name}  ({s.spec.quant}, {format_bytes(s.local_bytes or s.spec.total_bytes)}) "
                    + ("downloaded" if s.downloaded else f"not downloaded: vreason models pull {s.spec.name}"),
                    id=s.spec.name,
                    disabled=not s.downloaded,
                )
                for s in sorted(statuses, key=lambda s: not s.downloaded)
            ]
            yield OptionList(*options, id="registry")
            yield Input(placeholder="or a local model .gguf path", id="model-path")
            yield Input(placeholder="its projector (mmproj) .gguf, if not beside it", id="mmproj-path")
            with Horizontal(classes="buttons"):
                yield Button("Use this file", id="use-path", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(OptionList.OptionSelected, "#registry")
    def _pick(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(ModelChoice(str(event.option.id)))

    @on(Button.Pressed, "#use-path")
    @on(Input.Submitted, "#model-path")
    def _use_path(self) -> None:
        path = self.query_one("#model-path", Input).value.strip()
        mmproj = self.query_one("#mmproj-path", Input).value.strip() or None
        if not path:
            self.app.notify("type the path of a model .gguf file", severity="warning")
            return
        self.dismiss(ModelChoice(str(Path(path).expanduser()), mmproj))

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class SettingsResult:
    gen: GenerationSettings
    vreason: object  # VReasonSettings


class SettingsScreen(ModalScreen[SettingsResult | None]):
    """Sampling and V-Reason settings for the next questions."""

    AUTO_FOCUS = "Input"
    BINDINGS = CLOSE

    def __init__(self, gen: GenerationSettings, vreason: object) -> None:
        super().__init__()
        self.gen, self.vreason = gen, vreason

    def compose(self) -> ComposeResult:
        g, s, v = self.gen, self.gen.sampling, self.vreason
        fields = [
            ("max_tokens", "max tokens", g.max_tokens),
            ("temperature", "temperature (0 = greedy)", s.temperature),
            ("top_p", "top-p", s.top_p),
            ("min_p", "min-p", s.min_p),
            ("seed", "seed", s.seed),
            ("beta", "V-Reason beta (EMA)", v.beta),
            ("every", "update every k tokens", v.every),
            ("steps", "optimiser steps", v.steps),
            ("lr", "learning rate", v.lr),
        ]
        with VerticalScroll(classes="box"):
            yield Static("[b]Settings[/b] (next questions)", classes="heading")
            for key, label, value in fields:
                with Horizontal(classes="field"):
                    yield Label(label)
                    yield Input(f"{value:g}" if isinstance(value, float) else str(value), id=f"s-{key}")
            with Horizontal(classes="field"):
                yield Label("optimizer")
                yield Select([("adam", "adam"), ("sgd", "sgd")], value=v.optimizer, allow_blank=False, id="s-optimizer")
            with Horizontal(classes="field"):
                yield Label("ask for <think>/<answer>")
                yield Switch(value=g.reasoning, id="s-reasoning")
            with Horizontal(classes="buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    def _value(self, key: str, kind: type) -> object:
        text = self.query_one(f"#s-{key}", Input).value
        try:
            return kind(text)
        except ValueError:
            raise UserError(f"{key.replace('_', ' ')}: {text!r} is not a number") from None

    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        try:
            result = self.read()
        except UserError as exc:
            self.app.notify(exc.message, severity="error")
            return
        self.dismiss(result)

    def read(self) -> SettingsResult:
        """The settings typed in, checked (a value out of range: `UserError`)."""
        v = {k: self._value(k, float) for k in ("temperature", "top_p", "min_p", "beta", "lr")}
        n = {k: self._value(k, int) for k in ("max_tokens", "seed", "every", "steps")}
        checks = [
            (n["max_tokens"] >= 1, "max tokens must be at least 1"),
            (v["temperature"] >= 0, "temperature must be >= 0"),
            (0 < v["top_p"] <= 1, "top-p must be in (0, 1]"),
            (0 <= v["min_p"] <= 1, "min-p must be in [0, 1]"),
            (0 <= v["beta"] < 1, "beta must be in [0, 1)"),
            (n["every"] >= 1 and n["steps"] >= 1, "every and steps must be at least 1"),
            (v["lr"] >= 0, "the learning rate must be >= 0"),
        ]
        for ok, problem in checks:
            if not ok:
                raise UserError(problem)
        reasoning = self.query_one("#s-reasoning", Switch).value
        gen = replace(
            self.gen,
            max_tokens=n["max_tokens"],
            sampling=TokenSampling(v["temperature"], v["top_p"], v["min_p"], n["seed"]),
            reasoning=reasoning,
            stop_at_answer=reasoning,
        )
        vr = replace(
            self.vreason,
            beta=v["beta"],
            every=n["every"],
            steps=n["steps"],
            lr=v["lr"],
            optimizer=str(self.query_one("#s-optimizer", Select).value),
        )
        return SettingsResult(gen, vr)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class SessionsScreen(ModalScreen[int | None]):
    """Earlier sessions, newest first; Enter opens one."""

    AUTO_FOCUS = "#session-list"
    BINDINGS = CLOSE

    def __init__(self, sessions: list[SessionRecord]) -> None:
        super().__init__()
        self.sessions = sessions

    def compose(self) -> ComposeResult:
        with Vertical(classes="box"):
            yield Static(f"[b]Sessions[/b] ({len(self.sessions)})", classes="heading")
            options = [Option(session_label(s), id=str(s.id)) for s in self.sessions]
            yield OptionList(*options, id="session-list")
            if not options:
                yield Static("no saved sessions yet")

    @on(OptionList.OptionSelected, "#session-list")
    def _open(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(str(event.option.id)))


def session_label(s: SessionRecord) -> str:
    when = datetime.fromtimestamp(s.updated_at).strftime("%Y-%m-%d %H:%M")
    video = Path(s.video_path).name if s.video_path else "no video"
    return f"{when}  {s.title or '(no question)'}  · {video}"


class ExportScreen(ModalScreen[Path | None]):
    """Where to write the export (.md or .json by the suffix)."""

    AUTO_FOCUS = "#export-path"
    BINDINGS = CLOSE

    def __init__(self, default: Path) -> None:
        super().__init__()
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(classes="box"):
            yield Static("[b]Export this session[/b] (.md or .json)", classes="heading")
            yield Input(str(self.default), id="export-path")

    @on(Input.Submitted, "#export-path")
    def _done(self, event: Input.Submitted) -> None:
        self.dismiss(Path(event.value.strip()).expanduser() if event.value.strip() else None)

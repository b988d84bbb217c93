"""The chat's modal screens: an error with its remedy, the model picker (which downloads registry models
with progress, and explains how to get a model when nothing is downloaded), sampling and V-Reason settings,
earlier sessions, and export."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, ProgressBar, Select, Static, Switch
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from ..download import pull
from ..errors import UserError
from ..fit import format_bytes
from ..hub import ModelStatus, list_models
from ..settings import BY_NAME, RunSettings, render_error
from .store import SessionRecord

CLOSE = [Binding("escape", "dismiss", "Close", id="screen.close")]


class ErrorScreen(ModalScreen[None]):
    """A problem the user can fix: the one-line error with its remedies (`settings.render_error`, in labels)."""

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
    "No model is downloaded yet. Download one below (qwen2.5-vl-3b is about 2.8 GB), or in another terminal:\n\n"
    "    vreason models pull qwen2.5-vl-3b\n\n"
    "then choose it here, or use a GGUF file you already have: type its path below (and its projector's, "
    "if that is not beside it). `vreason models list` shows what is known and downloaded."
)


def _model_label(status: ModelStatus, downloaded: bool) -> str:
    spec = status.spec
    size = format_bytes(status.local_bytes if downloaded and status.local_bytes else spec.total_bytes)
    return f"{spec.name}  ({spec.quant}, {size}) " + ("downloaded" if downloaded else "not downloaded")


class ModelScreen(ModalScreen[ModelChoice | None]):
    """Pick a registry model (downloaded ones first) or a local GGUF file, or download a registry model here.

    A download runs `download.pull` in a thread so the screen stays live: its progress comes back as messages,
    Esc or "Stop download" sets the cancel event `pull` checks between chunks (the partial file is kept, so
    the next download continues it), and a finished model becomes selectable in the list. Failures show
    `pull`'s one-line `UserError` here; nothing else stops."""

    AUTO_FOCUS = "#registry"
    BINDINGS = [Binding("escape", "close", "Close", id="screen.close")]
    DEFAULT_CSS = """
    ModelScreen .download-row { height: auto; }
    ModelScreen .download-row Label { margin-left: 1; }
    """

    class Progress(Message):
        """Bytes of one file received so far (posted from the download thread)."""

        def __init__(self, filename: str, done: int, total: int | None) -> None:
            super().__init__()
            self.filename, self.done, self.total = filename, done, total

    def __init__(self, problem: str = "") -> None:
        super().__init__()
        self.problem = problem
        self.cancel = threading.Event()
        self.downloading: str | None = None  # the registry name being downloaded

    def compose(self) -> ComposeResult:
        statuses = sorted(list_models(), key=lambda s: not s.downloaded)
        with VerticalScroll(classes="box"):
            yield Static("[b]Model[/b]", classes="heading")
            if self.problem:
                yield Static(f"[$error]{escape(self.problem)}[/]", id="model-problem")
            if not any(s.downloaded for s in statuses):
                yield Static(NO_MODEL_TEXT, id="no-model")
            options = [
                Option(_model_label(s, s.downloaded), id=s.spec.name, disabled=not s.downloaded) for s in statuses
            ]
            yield OptionList(*options, id="registry")
            for s in statuses:
                if not s.downloaded:
                    with Horizontal(classes="download-row", name=s.spec.name):
                        yield Button("Download", name=s.spec.name, classes="download", compact=True)
                        yield Label(f"{s.spec.name} ({format_bytes(s.spec.total_bytes)})")
            yield ProgressBar(show_eta=False, id="download-bar")
            yield Static("", id="download-status")
            yield Input(placeholder="or a local model .gguf path", id="model-path")
            yield Input(placeholder="its projector (mmproj) .gguf, if not beside it", id="mmproj-path")
            with Horizontal(classes="buttons"):
                yield Button("Use this file", id="use-path", variant="primary")
                yield Button("Stop download", id="stop-download", variant="warning", disabled=True)
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#download-bar", ProgressBar).display = False
        # focusing the list scrolls it into view: the problem and how to get a model come first
        self.call_after_refresh(lambda: self.query_one(VerticalScroll).scroll_home(animate=False))

    def on_unmount(self) -> None:
        self.cancel.set()  # a download left running stops at its next chunk, keeping its bytes

    @on(OptionList.OptionSelected, "#registry")
    def _pick(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(ModelChoice(str(event.option.id)))

    @on(Button.Pressed, ".download")
    def _start_download(self, event: Button.Pressed) -> None:
        name = str(event.button.name)
        self.downloading = name
        self.cancel.clear()
        for button in self.query(".download").results(Button):
            button.disabled = True
        self.query_one("#stop-download", Button).disabled = False
        bar = self.query_one("#download-bar", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self.query_one("#download-status", Static).update(f"downloading {escape(name)}…")
        self._download(name)

    @work(thread=True, exit_on_error=False, group="download")
    def _download(self, name: str) -> str:
        def report(filename: str, done: int, total: int | None) -> None:
            self.post_message(self.Progress(filename, done, total))  # post_message is thread-safe

        pull(name, progress=False, on_progress=report, cancel=self.cancel)
        return name

    @on(Progress)
    def _progress(self, event: Progress) -> None:
        self.query_one("#download-bar", ProgressBar).update(total=event.total, progress=event.done)
        of = f" of {format_bytes(event.total)}" if event.total is not None else ""
        self.query_one("#download-status", Static).update(escape(f"{event.filename}: {format_bytes(event.done)}{of}"))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "download" or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        name, self.downloading = self.downloading, None
        self.query_one("#stop-download", Button).disabled = True
        for button in self.query(".download").results(Button):
            button.disabled = False
        status = self.query_one("#download-status", Static)
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            message = (
                render_error(error, "label") if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
            )
            status.update(f"[$error]{escape(message)}[/]")
            return
        registry = self.query_one("#registry", OptionList)
        registry.replace_option_prompt(
            str(name), _model_label(next(s for s in list_models() if s.spec.name == name), True)
        )
        registry.enable_option(str(name))
        for row in self.query(".download-row"):
            if row.name == name:
                row.remove()
        status.update(escape(f"{name} downloaded: choose it in the list above"))
        registry.highlighted = registry.get_option_index(str(name))
        registry.focus()

    def action_close(self) -> None:
        """Esc: stop the download in progress (its bytes are kept), else close the screen."""
        if self.downloading is not None:
            self.cancel.set()
        else:
            self.dismiss(None)

    @on(Button.Pressed, "#stop-download")
    def _stop_download(self) -> None:
        self.cancel.set()

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


# The settings the form offers, by their names in the settings table (settings.SETTINGS), which gives each its
# label, type, choices and help; the frame settings are the video panel's, the model the model screen's.
FORM_SETTINGS = ("max_tokens", "temperature", "top_p", "min_p", "seed", "reasoning", "beta", "every", "steps", "lr",
                 "optimizer", "head_error", "head_max", "head_skip")  # fmt: skip


class SettingsScreen(ModalScreen[RunSettings | None]):
    """Sampling and V-Reason settings for the next questions: a form made from the settings table, read and
    checked by the same `RunSettings.with_values` as the command line's options (a bad value: its error)."""

    AUTO_FOCUS = "Input"
    BINDINGS = CLOSE

    def __init__(self, settings: RunSettings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        values = self.settings.values()
        with VerticalScroll(classes="box"):
            yield Static("[b]Settings[/b] (next questions)", classes="heading")
            for name in FORM_SETTINGS:
                setting, value = BY_NAME[name], values[name]
                with Horizontal(classes="field"):
                    yield Label(setting.words)
                    if setting.kind is bool:
                        yield Switch(value=bool(value), id=f"s-{name}", tooltip=setting.help)
                    elif setting.choices:
                        options = [(c, c) for c in setting.choices]
                        yield Select(options, value=value, allow_blank=False, id=f"s-{name}", tooltip=setting.help)
                    else:
                        text = f"{value:g}" if isinstance(value, float) else str(value)
                        yield Input(text, id=f"s-{name}", tooltip=setting.help)
            with Horizontal(classes="buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    def _value(self, name: str) -> object:
        setting, widget = BY_NAME[name], self.query_one(f"#s-{name}")
        if isinstance(widget, Switch | Select):
            return widget.value
        text = widget.value.strip()  # type: ignore[attr-defined]
        try:
            return setting.kind(text)
        except ValueError:
            kind = "a whole number" if setting.kind is int else "a number"
            raise UserError(f"{setting.words} must be {kind}, got {text!r}") from None

    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        try:
            result = self.read()
        except UserError as exc:
            self.app.notify(render_error(exc, "label"), severity="error")
            return
        self.dismiss(result)

    def read(self) -> RunSettings:
        """The settings with the values typed in (a value out of range: `SettingError`)."""
        return self.settings.with_values({name: self._value(name) for name in FORM_SETTINGS})

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

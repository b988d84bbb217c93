"""`vreason chat`: a conversation about one video with a local Qwen-VL model, in the terminal.

The model is loaded once and the video encoded once (`Engine.encode`); every question is one
`Engine.ask` on that encoding, run in a thread worker whose events are posted to the UI unchanged. The UI
only renders those events and stores what they carry (from message handlers: sqlite connections stay on
the UI thread). There is no second generation path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, ProgressBar, Static
from textual.worker import Worker, get_current_worker
from textual_image.widget import Image

from ..decoding import Decoding, decoding_for
from ..engine import Encoding, Engine, GenerationSettings
from ..errors import UserError
from ..events import MODES, Answer, Encoded, Event, Finished, Notice, Prefilled, Progress, TokenEvent
from ..hub import resolve_model
from ..planning import Plan, open_engine, plan_run, record_prefill_speed
from ..settings import render_error
from ..telemetry import summarize
from .config import ChatConfig
from .export import export_session
from .messages import EncodingReady, EngineEvents, EngineReady, PlanReady, WorkDone, forward_events
from .options import ChatOptions
from .screens import ErrorScreen, ExportScreen, ModelChoice, ModelScreen, SessionsScreen, SettingsScreen
from .store import ChatStore, MessageRecord
from .telemetry_view import TelemetryPanel
from .video_panel import VideoPanel
from .widgets import MODE_LABELS, AnswerView, CompareView, QuestionView, seconds_text

WELCOME = (
    "Ask a question about the video below and press Enter. "
    "[b]ctrl+t[/b] switches the mode, [b]ctrl+b[/b] compares base and V-Reason, [b]Esc[/b] stops an answer."
)


class AnswerStream(Protocol):
    """An answer as the chat uses it: its events in order (iterated in the engine worker) and `cancel()` (Esc,
    from the UI thread). `Engine.ask`'s `AnswerHandle` is one."""

    def __iter__(self) -> Iterator[Event]: ...

    def cancel(self) -> None: ...


StartAnswer = Callable[
    [Engine, Encoding, str, GenerationSettings, Decoding, "Answer | None", threading.Event],
    AnswerStream,
]
"""How the chat starts an answer: `Engine.ask`, with its arguments in that order (the default). Tests pass one that
replays a recorded answer (pictures with the same figures on every CPU) or holds the engine's own answer until
it is cancelled (the model cannot end it first)."""


@dataclass
class AskJob:
    """One question being answered, in one mode or (compare) several, on one encoding."""

    id: int
    question: str
    modes: tuple[str, ...]
    follow_up: Answer | None
    group: int | None  # the user message id when the answers are compared
    views: dict[str, AnswerView]
    compare: CompareView | None = None
    answers: dict[str, Answer] = field(default_factory=dict)
    cursor_blink: bool = True  # the prompt's, restored when the answer ends (no blinking meanwhile)


class ChatApp(App):
    """The chat. `show_timings=False` shows no measured times (snapshot tests); `image_class` draws the
    thumbnails (tests pass `HalfcellImage`, whose output does not depend on the terminal); `start_answer`
    starts each answer on the engine (`StartAnswer`)."""

    CSS_PATH = "chat.tcss"
    TITLE = "vreason chat"
    AUTO_FOCUS = "#prompt"
    BINDINGS = [
        Binding("escape", "stop", "Stop", id="chat.stop"),
        Binding("ctrl+t", "cycle_mode", "Mode", id="chat.mode"),
        Binding("ctrl+b", "compare", "Compare", id="chat.compare"),
        Binding("ctrl+o", "open_video", "Video", id="chat.open"),
        Binding("ctrl+s", "sessions", "Sessions", id="chat.sessions"),
        Binding("ctrl+r", "export", "Export", id="chat.export"),
        Binding("ctrl+g", "settings", "Settings", id="chat.settings"),
        Binding("ctrl+l", "model", "Model", id="chat.model"),
        Binding("ctrl+n", "new_session", "New", id="chat.new"),
        # Ctrl+C quits like ctrl+q (the answer is stopped and saved first), also while the prompt has focus
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="chat.interrupt"),
    ]

    mode: reactive[str] = reactive("base")

    def __init__(
        self,
        options: ChatOptions,
        store: ChatStore,
        *,
        resume: bool = False,
        config: ChatConfig | None = None,
        show_timings: bool = True,
        image_class: type = Image,
        start_answer: StartAnswer = Engine.ask,
    ) -> None:
        super().__init__()
        self.options = options
        self.store = store
        self.resume = resume
        self.config = config or ChatConfig()
        self.show_timings = show_timings
        self.image_class = image_class
        self.start_answer = start_answer
        self.engine: Engine | None = None
        self.plan: Plan | None = None
        self.encoding: Encoding | None = None
        self.encode_s = 0.0  # the current encoding's first encode (what a follow-up saves)
        self.session_id: int | None = None
        self.follow_up: Answer | None = None
        self.job: AskJob | None = None
        self.loading: Worker | None = None
        self.lock = threading.Lock()  # the engine is used by one thread at a time; a cancelled one may linger
        self._handle = None  # the engine operation running now, for an immediate cancel()
        self._jobs = 0
        self._quitting = False
        self._stored_follow_up: Answer | None = None  # a resumed conversation's last answer
        self.set_reactive(ChatApp.mode, options.mode)

    # -- layout ------------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with VerticalScroll(id="conversation"):
                yield Static(WELCOME, id="welcome")
            with VerticalScroll(id="side"):
                yield VideoPanel(self.image_class)
                yield TelemetryPanel()
        with Horizontal(id="statusbar"):
            yield Static("", id="mode-indicator")
            yield ProgressBar(id="progress", show_eta=False)
            yield Static("starting…", id="status")
        yield Input(placeholder="Ask about the video… (Enter)", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.theme = self.config.theme
        if self.config.keys:
            self.set_keymap(self.config.keys)
        self.query_one("#progress").display = False
        self.query_one("#conversation", VerticalScroll).anchor()
        self._show_mode()
        self.query_one(VideoPanel).show_settings(self.options.frames)
        if self.resume and (latest := self.store.latest()) is not None:
            self.call_after_refresh(self.open_session, latest.id)
        else:
            self.start_load(self.options, new_engine=True)

    def watch_mode(self) -> None:
        if self.is_mounted:
            self._show_mode()

    def _show_mode(self) -> None:
        self.query_one("#mode-indicator", Static).update(f"[b]{MODE_LABELS[self.mode]}[/b]")

    def status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    # -- loading: plan, engine, encoding -------------------------------------------------------------------
    def start_load(self, options: ChatOptions, new_engine: bool) -> None:
        """Plan (sample frames), load the engine if needed, encode the video; all in the engine worker."""
        self.status(f"loading {Path(options.video).name if options.video else 'no video'}…")
        self.loading = self._load_worker(options, new_engine)

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False, name="load")
    def _load_worker(self, options: ChatOptions, new_engine: bool) -> None:
        worker = get_current_worker()
        error = None
        with self.lock:
            try:
                self._load(options, new_engine, worker.cancelled_event)
            except Exception as exc:  # shown by the UI (WorkDone); the app goes on
                error = exc
            finally:
                self._handle = None
        self.post_message(WorkDone("load", 0, error))

    def _load(self, options: ChatOptions, new_engine: bool, cancel: threading.Event) -> None:
        """In the worker: plan, (re)load the engine, encode with progress events."""
        if new_engine or self.engine is None:
            resolve_model(options.model, options.mmproj)  # a missing model: the model screen (UserError)
        plan = _plan(options)
        self.post_message(PlanReady(plan, options))
        if cancel.is_set():
            return
        if new_engine or self.engine is None:
            if self.engine is not None:
                self.engine.close()
                self.engine = None
            self.engine = open_engine(plan)
            self.post_message(EngineReady(self.engine))
        job = self.engine.encode(plan.media.media, cancel=cancel)
        self._handle = job
        forward_events(self.post_message, 0, "", job)
        if not cancel.is_set() and not job.cancel_requested:
            self.post_message(EncodingReady(job.result(), options))

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False, name="plan")
    def _plan_worker(self, options: ChatOptions) -> None:
        try:
            self.post_message(PlanReady(_plan(options), options, estimate_only=True))
        except Exception as exc:  # a setting that cannot work: shown in place of the estimate
            self.post_message(WorkDone("plan", 0, exc))

    async def on_plan_ready(self, message: PlanReady) -> None:
        panel = self.query_one(VideoPanel)
        await panel.show_plan(message.plan)
        if message.estimate_only:
            return
        self.plan = message.plan
        self.options = message.options
        panel.show_settings(message.options.frames)
        for warning in message.plan.media.warnings:
            self.notify(warning, severity="warning", timeout=10)

    def on_engine_ready(self, message: EngineReady) -> None:
        self.sub_title = message.engine.info.path.name

    def on_encoding_ready(self, message: EncodingReady) -> None:
        enc = message.encoding
        if self.session_id is not None and self._session_video() != _video_str(message.options.video):
            self.session_id = None  # another video: a new conversation (the old one stays in its session)
            self.follow_up = None
        self.encoding = enc
        self.encode_s = enc.encode_s + enc.prefill_s
        self.query_one("#progress").display = False
        stored = self._stored_follow_up
        self._stored_follow_up = None
        if stored is not None:
            if stored.settings.get("media_key") == enc.key:
                self.follow_up = stored
            else:
                self.notify(
                    "the video's frames are not those of the stored conversation: new questions start afresh",
                    severity="warning",
                    timeout=10,
                )
        if self.plan is not None and enc.n_media_tokens and self.engine is not None:
            record_prefill_speed(self.engine.info, self.plan.engine, enc.n_tokens, self.encode_s)
        what = f"{enc.n_frames} frames, {enc.n_media_tokens:,} vision tokens" if enc.n_media_tokens else "no video"
        self.status(f"ready · {what} · encoded in {seconds_text(self, self.encode_s)}")

    def _session_video(self) -> str | None:
        return self.store.session(self.session_id).video_path if self.session_id is not None else None

    # -- asking ---------------------------------------------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    async def _submitted(self, event: Input.Submitted) -> None:
        question = event.value.strip()
        if question and await self.ask(question, (self.mode,)):
            event.input.value = ""

    async def ask(self, question: str, modes: tuple[str, ...]) -> bool:
        """Start answering `question` in `modes` (several: a compare); False when it cannot start now."""
        if self.job is not None:
            self.notify("an answer is still being written: Esc stops it", severity="warning")
            return False
        if self.encoding is None or self.engine is None:
            self.notify("the video is not encoded yet (see the status line)", severity="warning")
            return False
        if self.session_id is None:
            frames = [{"index": f.index, "timestamp_s": f.timestamp_s} for f in self.encoding.media.frames]
            session = self.store.create_session(self.options.video, self.options.model, self.options.as_dict(), frames)
            self.session_id = session.id
        user = self.store.add_question(self.session_id, question)
        follow = (
            self.follow_up if self.follow_up and self.follow_up.settings.get("media_key") == self.encoding.key else None
        )
        self._jobs += 1
        conversation = self.query_one("#conversation", VerticalScroll)
        await conversation.mount(QuestionView(question))
        if len(modes) > 1:
            compare = CompareView(modes)
            await conversation.mount(compare)
            job = AskJob(self._jobs, question, modes, follow, user.id, compare.views, compare)
        else:
            view = AnswerView(modes[0])
            await conversation.mount(view)
            job = AskJob(self._jobs, question, modes, follow, None, {modes[0]: view})
        self.job = job
        # a blinking cursor redraws the screen twice a second, each frame UI time taken from llama.cpp
        prompt = self.query_one("#prompt", Input)
        job.cursor_blink, prompt.cursor_blink = prompt.cursor_blink, False
        self.status(f"answering ({', '.join(MODE_LABELS[m] for m in modes)}) · Esc stops")
        self._answer_worker(job, self.encoding, self.options)
        return True

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False, name="answer")
    def _answer_worker(self, job: AskJob, encoding: Encoding, options: ChatOptions) -> None:
        cancel = get_current_worker().cancelled_event
        error = None
        with self.lock:
            try:
                for mode in job.modes:
                    if cancel.is_set():
                        break
                    decoding = decoding_for(mode, options.vreason)
                    handle = self.start_answer(
                        self.engine, encoding, job.question, options.gen, decoding, job.follow_up, cancel
                    )
                    self._handle = handle
                    forward_events(self.post_message, job.id, mode, handle)
            except Exception as exc:  # shown by the UI (WorkDone); the app goes on
                error = exc
            finally:
                self._handle = None
        self.post_message(WorkDone("answer", job.id, error))

    async def on_engine_events(self, message: EngineEvents) -> None:
        tokens = [ev for ev in message.events if isinstance(ev, TokenEvent)]
        job = self.job
        mine = message.job != 0 and job is not None and message.job == job.id
        if tokens and mine:
            await job.views[message.mode].feed(tokens)
            telemetry = self.query_one(TelemetryPanel)
            for ev in tokens:
                telemetry.add(ev)
                if job.compare is not None:
                    job.compare.record(message.mode, ev)
            telemetry.flush()  # one redraw per batch, in the frame that shows its text
            if job.compare is not None:
                job.compare.chart.redraw()
        for ev in message.events:
            if isinstance(ev, Progress):
                self._progress(ev)
            elif mine and not isinstance(ev, TokenEvent):
                await self._other_event(job, message.mode, ev)

    async def _other_event(self, job: AskJob, mode: str, ev: object) -> None:
        view = job.views[mode]
        if isinstance(ev, Encoded):
            self.query_one("#progress").display = False
            self.query_one(TelemetryPanel).start(MODE_LABELS[mode])
            if ev.reused and ev.n_media_tokens:
                view.add_note(
                    f"[dim]reused the encoded video ({ev.n_frames} frames): saved {seconds_text(self, self.encode_s)}[/]"
                )
            elif not ev.reused and ev.n_media_tokens:
                view.add_note(f"[dim]encoded the video again ({seconds_text(self, ev.encode_s + ev.prefill_s)})[/]")
        elif isinstance(ev, Prefilled) and ev.n_video_tokens_kept is not None:
            view.add_note(f"[dim]Lite kept {ev.n_video_tokens_kept:,} video tokens[/]")
        elif isinstance(ev, Notice):
            view.add_note(f"[$warning]{ev.message}[/]" if ev.level == "warning" else f"[dim]{ev.message}[/]")
        elif isinstance(ev, Finished):
            await self._finished(job, mode, ev.answer)

    async def _finished(self, job: AskJob, mode: str, answer: Answer) -> None:
        job.answers[mode] = answer
        await job.views[mode].finish(answer)
        self.query_one(TelemetryPanel).finish(summarize(answer))
        if self.session_id is not None:
            self.store.add_answer(self.session_id, answer, compare_group=job.group)
        # the conversation continues from the answer in the current mode (a compare's, if it has one)
        if mode == self.mode or self.mode not in job.modes:
            self.follow_up = answer

    def _progress(self, ev: Progress) -> None:
        bar = self.query_one("#progress", ProgressBar)
        bar.display = True
        bar.update(total=max(1, ev.total), progress=ev.done)
        stage = "encoding video" if ev.stage == "encode" else "reading the prompt"
        rate = f", {ev.rate:.0f} tokens/s" if self.show_timings else ""
        self.status(f"{stage}: {ev.done:,}/{ev.total:,} tokens{rate} · Esc cancels")

    def on_work_done(self, message: WorkDone) -> None:
        if message.error is not None:
            self._failed(message.kind, message.error)
        if message.kind == "answer" and self.job is not None and self.job.id == message.job:
            self._job_done(self.job, message.error)
        elif message.kind == "load":
            self.loading = None
            self.query_one("#progress").display = False
            if message.error is None and self.encoding is None:
                self.status("encoding stopped · Apply in the video panel or ctrl+o to encode again")
        if self._quitting and self.job is None and self.loading is None:
            self.exit()

    def _job_done(self, job: AskJob, error: BaseException | None) -> None:
        self.job = None
        self.query_one("#prompt", Input).cursor_blink = job.cursor_blink
        if error is None:  # an error was shown on the views already (_failed)
            for mode, view in job.views.items():
                if mode not in job.answers:
                    view.fail("stopped before it started")
        cancelled = any(a.stop_reason == "cancelled" for a in job.answers.values())
        self.status("answer cancelled · partial answer kept" if cancelled else "ready")

    def _failed(self, kind: str, error: BaseException) -> None:
        """Bad input or a failing answer: say what and how to fix it; the app keeps running."""
        message = describe_error(error)
        if kind == "load":
            if isinstance(error, UserError) and _model_problem(error):
                self.push_screen(ModelScreen(message), self._model_chosen)
            else:
                self.push_screen(ErrorScreen("Cannot use this video or model", message))
            self.status("not ready · " + message[:80])
        elif kind == "plan":
            self.query_one("#estimate", Static).update(f"[$error]{message}[/]")
        else:
            if self.job is not None:
                for mode, view in self.job.views.items():
                    if mode not in self.job.answers:
                        view.fail(message)
            self.notify(message, title="The answer failed", severity="error", timeout=15)

    # -- actions -------------------------------------------------------------------------------------------
    def action_stop(self) -> None:
        """Esc: stop the answer (or the encoding) now; the partial answer is kept and marked cancelled."""
        handle = self._handle
        if handle is not None:
            handle.cancel()
        self.workers.cancel_group(self, "engine")

    async def action_quit(self) -> None:
        """ctrl+q / Ctrl+C: stop what runs, let its partial answer be saved, then exit."""
        if self.job is None and self.loading is None:
            self.exit()
            return
        self._quitting = True
        self.notify("stopping, saving, then quitting…")
        self.action_stop()
        self.set_timer(15, self.exit)  # the engine stops within a token or a frame pair; never hang on it

    def action_cycle_mode(self) -> None:
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]
        self.notify(f"mode: {MODE_LABELS[self.mode]} (next questions)", timeout=2)

    def set_mode(self, mode: str) -> None:
        self.mode = mode

    async def action_compare(self, lite: bool = False) -> None:
        """Answer the prompt's question (or the last one) in base and V-Reason (and Lite) side by side."""
        prompt = self.query_one("#prompt", Input)
        question = prompt.value.strip() or self._last_question()
        if not question:
            self.notify("type a question to compare", severity="warning")
            return
        if await self.ask(question, ("base", "vreason", "lite") if lite else ("base", "vreason")):
            prompt.value = ""

    def _last_question(self) -> str:
        views = list(self.query(QuestionView))
        return views[-1].text if views else ""

    def action_open_video(self) -> None:
        self.query_one("#video-path", Input).focus()

    def on_video_panel_open(self, message: VideoPanel.Open) -> None:
        self.start_load(replace(self.options, video=Path(message.path).expanduser()), new_engine=False)
        self.query_one("#prompt", Input).focus()

    def on_video_panel_preview(self, message: VideoPanel.Preview) -> None:
        self._plan_worker(replace(self.options, frames=message.frames))

    def on_video_panel_apply(self, message: VideoPanel.Apply) -> None:
        self.start_load(replace(self.options, frames=message.frames), new_engine=False)

    def action_sessions(self) -> None:
        self.push_screen(SessionsScreen(self.store.sessions()), self._session_chosen)

    async def _session_chosen(self, session_id: int | None) -> None:
        if session_id is not None:
            await self.open_session(session_id)

    async def open_session(self, session_id: int) -> None:
        """Show a stored conversation and load its video (and model) to continue it."""
        session = self.store.session(session_id)
        messages = self.store.messages(session_id)
        conversation = self.query_one("#conversation", VerticalScroll)
        await conversation.remove_children()
        await render_messages(conversation, messages)
        state = session.video_status()
        if state == "missing":
            self.notify(
                f"the video of this session is missing ({session.video_path}); the conversation is shown, "
                "ctrl+o opens a video to ask more",
                severity="warning",
                timeout=15,
            )
        elif state == "changed":
            self.notify(f"{session.video_path} has changed since this conversation", severity="warning", timeout=15)
        options = replace(
            self.options.with_stored(session.settings),
            model=session.model,  # the stored token history is in this model's vocabulary
            video=Path(session.video_path) if state in ("ok", "changed") else None,
        )
        answers = [m for m in messages if m.role == "assistant"]
        questions = {m.id: m.text for m in messages if m.role == "user"}
        if answers:
            last = answers[-1]
            asked = last.compare_group or max(i for i in questions if i < last.id)
            self._stored_follow_up = last.as_answer(questions.get(asked, ""))
        self.session_id = session_id
        self.follow_up = None
        self.start_load(options, new_engine=self.engine is None or options.model != self.options.model)

    def action_new_session(self) -> None:
        self.session_id = None
        self.follow_up = None
        self.call_later(self._clear_conversation)

    async def _clear_conversation(self) -> None:
        conversation = self.query_one("#conversation", VerticalScroll)
        await conversation.remove_children()
        await conversation.mount(Static(WELCOME, id="welcome"))

    def action_export(self, suffix: str = ".md") -> None:
        if self.session_id is None:
            self.notify("nothing to export yet: ask a question first", severity="warning")
            return
        default = Path.cwd() / f"vreason-chat-{self.session_id}{suffix}"
        self.push_screen(ExportScreen(default), self._export_to)

    def _export_to(self, path: Path | None) -> None:
        if path is None or self.session_id is None:
            return
        try:
            written = export_session(self.store, self.session_id, path)
        except UserError as exc:
            self.notify(describe_error(exc), severity="error")
        except OSError as exc:
            self.notify(f"cannot write {path}: {exc.strerror}", severity="error")
        else:
            self.notify(f"exported to {written}")

    def action_settings(self) -> None:
        self.push_screen(SettingsScreen(self.options.gen, self.options.vreason), self._settings_saved)

    def _settings_saved(self, result) -> None:
        if result is not None:
            self.options = replace(self.options, gen=result.gen, vreason=result.vreason)
            self.notify("settings saved for the next questions", timeout=3)

    def action_model(self) -> None:
        self.push_screen(ModelScreen(), self._model_chosen)

    def _model_chosen(self, choice: ModelChoice | None) -> None:
        if choice is None:
            return
        self.session_id = None  # another model: a new conversation
        self.follow_up = None
        self.encoding = None
        self.start_load(replace(self.options, model=choice.model, mmproj=choice.mmproj), new_engine=True)

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Export as Markdown", "Write this session to a .md file", self.action_export)
        yield SystemCommand("Export as JSON", "Write this session to a .json file", lambda: self.action_export(".json"))
        yield SystemCommand("Compare base and V-Reason", "The prompt's question in both modes", self.action_compare)
        yield SystemCommand(
            "Compare base, V-Reason and Lite",
            "The prompt's question in all three modes",
            lambda: self.call_later(self.action_compare, True),
        )
        for mode in MODES:
            yield SystemCommand(f"Mode: {MODE_LABELS[mode]}", "For the next questions", lambda m=mode: self.set_mode(m))
        yield SystemCommand("Sessions", "Open an earlier conversation", self.action_sessions)
        yield SystemCommand("New session", "Start a new conversation about this video", self.action_new_session)
        yield SystemCommand("Model", "Choose the model", self.action_model)
        yield SystemCommand("Settings", "Sampling and V-Reason settings", self.action_settings)
        yield SystemCommand("Open video", "Open another video by path", self.action_open_video)
        yield SystemCommand(
            "Light / dark theme", "Switch between textual-light and textual-dark", self.action_toggle_theme
        )

    def close_engine(self) -> None:
        """Free the model once no worker uses it (called after the app has exited)."""
        if self.lock.acquire(timeout=30) and self.engine is not None:
            self.engine.close()
            self.engine = None


async def render_messages(parent: VerticalScroll, messages: list[MessageRecord]) -> None:
    """A stored conversation: questions, answers, and compare groups side by side."""
    i = 0
    while i < len(messages):
        m = messages[i]
        if m.role == "user":
            await parent.mount(QuestionView(m.text))
            i += 1
            continue
        if m.compare_group is None:
            await AnswerView.from_record(parent, m)
            i += 1
            continue
        row = Horizontal(classes="compare-row")
        await parent.mount(Vertical(row, classes="compare"))
        while i < len(messages) and messages[i].role == "assistant" and messages[i].compare_group == m.compare_group:
            await AnswerView.from_record(row, messages[i])
            i += 1


def _plan(options: ChatOptions) -> Plan:
    return plan_run(options.settings, options.video)


def _video_str(video: Path | None) -> str | None:
    return str(video) if video is not None else None


def _model_problem(error: UserError) -> bool:
    """A model that is not there (not downloaded, no such file): the model screen is the remedy."""
    text = error.message
    return "not downloaded" in text or "model file" in text or "unknown model" in text


def describe_error(error: BaseException | None) -> str:
    """One line: a `UserError` with its remedies worded as this app's settings, anything else as a bug."""
    if isinstance(error, UserError):
        return render_error(error, "label")
    return f"internal error: {type(error).__name__}: {error}"

"""`vreason chat`: a conversation about one video with a local Qwen-VL model, in the terminal.

The work is a `ChatSession`'s (session.py: the model loaded once, the video encoded once, every question one
`Engine.ask` on that encoding). This app runs its loading and answering in thread workers, posts the events
they yield to the UI unchanged, renders them, and hands each finished answer back to the session to store
(from message handlers: sqlite connections stay on the UI thread). There is no second generation path.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import Worker, get_current_worker
from textual_image.widget import Image

from ..engine import Engine
from ..errors import ModelMissing, UserError
from ..events import MODES, Answer, Encoded, Finished, Progress, TokenEvent
from ..settings import RunSettings
from ..telemetry import summarize
from .config import ChatConfig
from .messages import EngineEvents, PlanPreview, WorkDone, forward_events
from .options import ChatOptions
from .screens import ErrorScreen, ExportScreen, ModelChoice, ModelScreen, SessionsScreen, SettingsScreen
from .session import ChatSession, LoadEvent, ModelLoaded, Planned, Ready, StartAnswer, Turn
from .store import ChatStore, MessageRecord
from .telemetry_view import TelemetryPanel
from .video_panel import VideoPanel
from .widgets import MODE_LABELS, AnswerView, CompareView, Conversation, StatusBar, describe_error, seconds_text

WELCOME = (
    "Ask a question about the video below and press Enter. "
    "[b]ctrl+t[/b] switches the mode, [b]ctrl+b[/b] compares base and V-Reason, [b]Esc[/b] stops an answer, "
    "[b]Up[/b] edits an earlier question, [b]ctrl+p[/b] lists every command."
)


@dataclass
class AskJob:
    """A question being answered (the session's `Turn`) and the views its answers stream into."""

    turn: Turn
    views: dict[str, AnswerView]
    compare: CompareView | None = None
    cursor_blink: bool = True  # the prompt's, restored when the answer ends (no blinking meanwhile)


class ChatApp(App):
    """The chat. `show_timings=False` shows no measured times (snapshot tests); `image_class` draws the
    thumbnails (tests pass `HalfcellImage`, whose output does not depend on the terminal); `start_answer`
    starts each answer on the engine (`session.StartAnswer`)."""

    CSS_PATH = "chat.tcss"
    TITLE = "vreason chat"
    AUTO_FOCUS = "#prompt"
    # The footer shows the keys used at every question; it fits 80 columns (test_chat_app). The rest are in the
    # command palette (ctrl+p) and the README, and work all the same.
    BINDINGS = [
        Binding("escape", "stop", "Stop", id="chat.stop"),
        Binding("ctrl+t", "cycle_mode", "Mode", id="chat.mode"),
        Binding("ctrl+b", "compare", "Compare", id="chat.compare"),
        Binding("f5", "regenerate", "Again", id="chat.regenerate"),
        Binding("up", "edit_question", "Edit", id="chat.edit", show=False),
        Binding("ctrl+y", "copy_answer", "Copy", id="chat.copy"),
        Binding("ctrl+o", "open_video", "Video", id="chat.open"),
        Binding("ctrl+s", "sessions", "Sessions", id="chat.sessions", show=False),
        Binding("ctrl+r", "export", "Export", id="chat.export", show=False),
        Binding("ctrl+g", "settings", "Settings", id="chat.settings", show=False),
        Binding("ctrl+l", "model", "Model", id="chat.model", show=False),
        Binding("ctrl+n", "new_session", "New", id="chat.new", show=False),
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
        self.session = ChatSession(options, store, start_answer)
        self.resume = resume
        self.config = config or ChatConfig()
        self.show_timings = show_timings
        self.image_class = image_class
        self.job: AskJob | None = None
        self.loading: Worker | None = None
        self.pending: tuple[str, tuple[str, ...]] | None = None  # a question asked while loading: asked when Ready
        self.editing: MessageRecord | None = None  # the earlier question the prompt holds (Up), resent on Enter
        self._quitting = False
        self.set_reactive(ChatApp.mode, options.mode)

    # -- layout ------------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield Conversation(WELCOME)
            with VerticalScroll(id="side"):
                yield VideoPanel(self.image_class)
                yield TelemetryPanel()
        yield StatusBar()
        yield Input(placeholder="Ask about the video… (Enter)", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.theme = self.config.theme
        if self.config.keys:
            self.set_keymap(self.config.keys)
        self.query_one(StatusBar).show_mode(self.mode)
        self.query_one(VideoPanel).show_settings(self.session.options.frames)
        if self.session.store.damaged is not None:
            self.notify(self.session.store.damaged, title="Damaged chat database", severity="error", timeout=30)
        if self.resume and (latest := self.session.store.latest()) is not None:
            self.call_after_refresh(self.open_session, latest.id)
        else:
            self.start_load(self.session.options, new_engine=True)

    def watch_mode(self, mode: str) -> None:
        self.session.mode = mode
        if self.is_mounted:
            self.query_one(StatusBar).show_mode(mode)

    def status(self, text: str) -> None:
        self.query_one(StatusBar).say(text)

    # -- the session's work, in workers --------------------------------------------------------------------
    def start_load(self, options: ChatOptions, new_engine: bool) -> None:
        """Plan (sample frames), load the engine if needed, encode the video; all in the engine worker."""
        self.status(f"loading {Path(options.video).name if options.video else 'no video'}…")
        self.loading = self._load_worker(options, new_engine)

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False, name="load")
    def _load_worker(self, options: ChatOptions, new_engine: bool) -> None:
        with closing(self.session.load(options, new_engine, get_current_worker().cancelled_event)) as events:
            self._forward("load", 0, (("", ev) for ev in events))

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False, name="answer")
    def _answer_worker(self, turn: Turn) -> None:
        with closing(self.session.answer(turn, get_current_worker().cancelled_event)) as events:
            self._forward("answer", turn.id, events)

    def _forward(self, kind: str, job: int, events: Iterable[tuple[str, LoadEvent]]) -> None:
        """In a worker: post the session's events as they come, then `WorkDone` with what it raised (shown by
        the UI; the app goes on). The workers close the session's generator whatever happens: it holds the
        engine's lock until then, and the error's traceback would keep it alive."""
        error = None
        try:
            forward_events(self.post_message, job, events)
        except Exception as exc:
            error = exc
        self.post_message(WorkDone(kind, job, error))

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False, name="plan")
    def _plan_worker(self, options: ChatOptions) -> None:
        try:
            self.post_message(PlanPreview(self.session.plan(options)))
        except Exception as exc:  # a setting that cannot work: shown in place of the estimate
            self.post_message(WorkDone("plan", 0, exc))

    async def on_plan_preview(self, message: PlanPreview) -> None:
        await self.query_one(VideoPanel).show_plan(message.plan)

    # -- rendering the session's events --------------------------------------------------------------------
    async def on_engine_events(self, message: EngineEvents) -> None:
        if message.job == 0:
            for ev in message.events:
                await self._load_event(ev)
            return
        tokens = [ev for ev in message.events if isinstance(ev, TokenEvent)]
        job = self.job
        mine = job is not None and message.job == job.turn.id
        if tokens and mine:
            await job.views[message.mode].feed(tokens)
            telemetry = self.query_one(TelemetryPanel)
            for ev in tokens:
                telemetry.add(ev)
                if job.compare is not None:
                    job.compare.record(message.mode, ev.entropy)
            telemetry.flush()  # one redraw per batch, in the frame that shows its text
            if job.compare is not None:
                job.compare.chart.redraw()
        for ev in message.events:
            if isinstance(ev, Progress):
                self.query_one(StatusBar).progress(ev)
            elif mine and not isinstance(ev, TokenEvent):
                await self._answer_event(job, message.mode, ev)

    async def _load_event(self, ev: LoadEvent) -> None:
        if isinstance(ev, Progress):
            self.query_one(StatusBar).progress(ev)
        elif isinstance(ev, Planned):
            panel = self.query_one(VideoPanel)
            await panel.show_plan(ev.plan)
            panel.show_settings(ev.options.frames)
            for warning in ev.plan.media.warnings:
                self.notify(warning, severity="warning", timeout=10)
        elif isinstance(ev, ModelLoaded):
            self.sub_title = ev.info.path.name
        elif isinstance(ev, Ready):
            self.query_one(StatusBar).progress_done()
            for warning in ev.warnings:
                self.notify(warning, severity="warning", timeout=10)
            enc = ev.encoding
            what = f"{enc.n_frames} frames, {enc.n_media_tokens:,} vision tokens" if enc.n_media_tokens else "no video"
            took = (
                "encoded earlier, used again"
                if ev.reused
                else f"loaded from the encoding cache, saved {seconds_text(self, enc.saved_s)}"
                if enc.source == "disk"
                else f"encoded in {seconds_text(self, self.session.encode_s)}"
            )
            self.status(f"ready · {what} · {took}")
            if self.pending is not None:
                question, modes = self.pending
                self.pending = None
                self.call_later(self.ask, question, modes)

    async def _answer_event(self, job: AskJob, mode: str, ev: object) -> None:
        if isinstance(ev, Finished):
            await self._finished(job, mode, ev.answer)
            return
        if isinstance(ev, Encoded):
            self.query_one(StatusBar).progress_done()
            self.query_one(TelemetryPanel).start(MODE_LABELS[mode])
        saved = job.turn.saves_encoding and mode == job.turn.modes[0]  # said once, on the first of a compare
        job.views[mode].show_event(ev, self.session.encode_s, saved)

    async def _finished(self, job: AskJob, mode: str, answer: Answer) -> None:
        self.session.finish(job.turn, mode, answer)  # stored; the conversation goes on from it
        await job.views[mode].finish(answer)
        self.query_one(TelemetryPanel).finish(summarize(answer))

    def on_work_done(self, message: WorkDone) -> None:
        if message.error is not None:
            self._failed(message.kind, message.error)
        if message.kind == "answer" and self.job is not None and self.job.turn.id == message.job:
            self._job_done(self.job, message.error)
        elif message.kind == "load":
            self.loading = None
            self.query_one(StatusBar).progress_done()
            if self.pending is not None and not self.session.ready:  # failed or stopped: say what was not asked
                self.notify(f"not asked: {self.pending[0]}", severity="warning")
                self.pending = None
            if message.error is None and self.session.encoding is None:
                self.status("encoding stopped · Apply in the video panel or ctrl+o to encode again")
        if self._quitting and self.job is None and self.loading is None:
            self.exit()

    def _job_done(self, job: AskJob, error: BaseException | None) -> None:
        self.job = None
        self.query_one("#prompt", Input).cursor_blink = job.cursor_blink
        if error is None:  # an error was shown on the views already (_failed)
            for mode, view in job.views.items():
                if mode not in job.turn.answers:
                    view.fail("stopped before it started")
        cancelled = any(a.stop_reason == "cancelled" for a in job.turn.answers.values())
        self.status("answer cancelled · partial answer kept" if cancelled else "ready")

    def _failed(self, kind: str, error: BaseException) -> None:
        """Bad input or a failing answer: say what and how to fix it; the app keeps running."""
        message = describe_error(error)
        if kind == "load":
            if isinstance(error, ModelMissing):
                self.push_screen(ModelScreen(message), self._model_chosen)
            else:
                self.push_screen(ErrorScreen("Cannot use this video or model", message))
            self.status("not ready · " + message[:80])
        elif kind == "plan":
            self.query_one("#estimate", Static).update(f"[$error]{message}[/]")
        else:
            if self.job is not None:
                for mode, view in self.job.views.items():
                    if mode not in self.job.turn.answers:
                        view.fail(message)
            self.notify(message, title="The answer failed", severity="error", timeout=15)

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
        if not self.session.ready:
            return self._ask_when_loaded(question, modes)
        conversation = self.query_one(Conversation)
        editing, self.editing = self.editing, None
        if editing is not None and editing.session_id == self.session.session_id:  # still that conversation's
            kept, answers = self.session.branch(editing.id)  # the conversation goes on from before that question
            await conversation.show_stored(kept, answers)
        turn = self.session.begin(question, modes)
        views, compare = await conversation.add_question(question, modes)
        self.job = job = AskJob(turn, views, compare)
        # a blinking cursor redraws the screen twice a second, each frame UI time taken from llama.cpp
        prompt = self.query_one("#prompt", Input)
        job.cursor_blink, prompt.cursor_blink = prompt.cursor_blink, False
        self.status(f"answering ({', '.join(MODE_LABELS[m] for m in modes)}) · Esc stops")
        self._answer_worker(turn)
        return True

    def _ask_when_loaded(self, question: str, modes: tuple[str, ...]) -> bool:
        """Nothing to answer on yet: ask once the running load is done; with none running (no video was given,
        or it failed or was stopped), load no video and answer text only, as `vreason run` does."""
        if self.pending is not None:
            self.notify("a question is already waiting for the model", severity="warning")
            return False
        self.pending = (question, modes)
        if self.loading is not None:
            self.notify("asked once the model and video are loaded", timeout=3)
        else:
            self.notify("no video is encoded: answering text only (ctrl+o opens a video)", timeout=5)
            self.start_load(replace(self.session.options, video=None), new_engine=self.session.engine is None)
        return True

    # -- actions -------------------------------------------------------------------------------------------
    def action_stop(self) -> None:
        """Esc: stop the answer (or the encoding) now; the partial answer is kept and marked cancelled. With
        nothing running, stop editing an earlier question."""
        if self.editing is not None and self.job is None and self.loading is None:
            self.editing = None
            self.query_one("#prompt", Input).value = ""
            return
        self.session.cancel()
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
        question = prompt.value.strip() or self.query_one(Conversation).last_question()
        if not question:
            self.notify("type a question to compare", severity="warning")
            return
        if await self.ask(question, ("base", "vreason", "lite") if lite else ("base", "vreason")):
            prompt.value = ""

    async def action_regenerate(self, mode: str | None = None) -> None:
        """Answer the last question again (in `mode`, else the current one), continuing from the answer before
        it; the new answer goes on in a branch, the conversation with the old one is kept (Sessions)."""
        questions = self.session.questions()
        if not questions:
            self.notify("nothing to regenerate yet: ask a question first", severity="warning")
            return
        self.editing = questions[-1]
        if not await self.ask(questions[-1].text, (mode or self.mode,)):
            self.editing = None

    def action_edit_question(self) -> None:
        """Up in the prompt: put the question before the one being edited (at first the last one) in the prompt;
        Enter resends it, edited, and the conversation goes on from there. A typed draft is never replaced."""
        prompt = self.query_one("#prompt", Input)
        if self.focused is not prompt or (prompt.value and (self.editing is None or prompt.value != self.editing.text)):
            return
        questions = self.session.questions()
        if self.editing is not None:
            questions = [q for q in questions if q.seq < self.editing.seq]
        if not questions:
            return
        self.editing = questions[-1]
        prompt.value = self.editing.text
        self.status("editing an earlier question · Enter resends it (the answers after it stay in the old session)")

    @on(Input.Changed, "#prompt")
    def _prompt_changed(self, event: Input.Changed) -> None:
        if not event.value and self.editing is not None:  # the prompt emptied: no longer editing
            self.editing = None
            self.status("ready")

    def action_copy_answer(self) -> None:
        """Copy the last answer's text to the clipboard (OSC 52: the terminal's clipboard, over SSH too)."""
        views = [v for v in self.query(AnswerView) if v.answer is not None]
        if not views:
            self.notify("no answer to copy yet", severity="warning")
            return
        answer = views[-1].answer
        self.copy_to_clipboard(answer.answer or answer.text)
        self.notify(f"copied the {MODE_LABELS[answer.mode]} answer ({len(answer.answer or answer.text)} characters)")

    def action_open_video(self) -> None:
        self.query_one("#video-path", Input).focus()

    def on_video_panel_open(self, message: VideoPanel.Open) -> None:
        self.start_load(replace(self.session.options, video=Path(message.path).expanduser()), new_engine=False)
        self.query_one("#prompt", Input).focus()

    def on_video_panel_preview(self, message: VideoPanel.Preview) -> None:
        self._plan_worker(replace(self.session.options, frames=message.frames))

    def on_video_panel_apply(self, message: VideoPanel.Apply) -> None:
        self.start_load(replace(self.session.options, frames=message.frames), new_engine=False)

    def action_sessions(self) -> None:
        self.push_screen(SessionsScreen(self.session.store.sessions()), self._session_chosen)

    async def _session_chosen(self, session_id: int | None) -> None:
        if session_id is not None:
            await self.open_session(session_id)

    async def open_session(self, session_id: int) -> None:
        """Show a stored conversation and load its video (and model) to continue it."""
        restored = self.session.restore(session_id)
        self.mode = restored.options.mode  # the mode the conversation was in
        await self.query_one(Conversation).show_stored(restored.messages, restored.answers)
        last = [restored.answers[m.id] for m in restored.messages if m.role == "assistant"]
        if last:
            self.query_one(TelemetryPanel).show_answer(MODE_LABELS[last[-1].mode], last[-1])
        video = restored.record.video_path
        if restored.video == "missing":
            self.notify(
                f"the video of this session is missing ({video}); the conversation is shown, "
                "ctrl+o opens a video to ask more",
                severity="warning",
                timeout=15,
            )
        elif restored.video == "changed":
            self.notify(f"{video} has changed since this conversation", severity="warning", timeout=15)
        self.start_load(restored.options, new_engine=restored.new_engine)

    def action_new_session(self) -> None:
        self.session.new()
        self.call_later(self.query_one(Conversation).clear)

    def action_export(self, suffix: str = ".md") -> None:
        if self.session.session_id is None:
            self.notify("nothing to export yet: ask a question first", severity="warning")
            return
        default = Path.cwd() / f"vreason-chat-{self.session.session_id}{suffix}"
        self.push_screen(ExportScreen(default), self._export_to)

    def _export_to(self, path: Path | None) -> None:
        if path is None:
            return
        try:
            written = self.session.export(path)
        except UserError as exc:
            self.notify(describe_error(exc), severity="error")
        except OSError as exc:
            self.notify(f"cannot write {path}: {exc.strerror}", severity="error")
        else:
            self.notify(f"exported to {written}")

    def action_settings(self) -> None:
        options = self.session.options
        self.push_screen(SettingsScreen(options.settings), self._settings_saved)

    def _settings_saved(self, result: RunSettings | None) -> None:
        if result is not None:
            self.session.options = replace(self.session.options, gen=result.generation, vreason=result.vreason)
            self.notify("settings saved for the next questions", timeout=3)

    def action_model(self) -> None:
        self.push_screen(ModelScreen(), self._model_chosen)

    def _model_chosen(self, choice: ModelChoice | None) -> None:
        if choice is not None:  # another model: a new conversation
            self.start_load(self.session.choose_model(choice.model, choice.mmproj), new_engine=True)

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
        for mode in MODES:
            yield SystemCommand(
                f"Regenerate in {MODE_LABELS[mode]}",
                "Answer the last question again (the old answer stays in its session)",
                lambda m=mode: self.call_later(self.action_regenerate, m),
            )
        yield SystemCommand(
            "Edit the last question", "Put it in the prompt: Enter resends it", self.action_edit_question
        )
        yield SystemCommand("Copy the last answer", "To the clipboard (OSC 52)", self.action_copy_answer)
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
        self.session.close()

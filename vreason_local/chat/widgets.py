"""The conversation's widgets: a question, an answer that streams (reasoning folded away once the answer
starts), a side-by-side group for compare, the conversation that holds them (a stored one as it was), and
the status bar. They render engine events and finished `Answer`s only; errors are worded here, in the
app's words."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Collapsible, Markdown, ProgressBar, Static

from ..errors import UserError
from ..events import Encoded, Notice, Prefilled, Progress, TokenEvent
from ..settings import render_error
from ..telemetry import summarize
from .telemetry_view import EntropyChart, summary_line

if TYPE_CHECKING:
    from textual.widget import Widget

    from ..events import Answer
    from .store import MessageRecord

MODE_LABELS = {"base": "base", "vreason": "V-Reason", "lite": "V-Reason Lite"}


def seconds_text(app: object, seconds: float | None) -> str:
    """A time as the app shows it; an app made for snapshots (`show_timings=False`) shows none, so that a
    picture of the screen is the same on every run and machine."""
    if seconds is None or not getattr(app, "show_timings", True):
        return "–"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def describe_error(error: BaseException | None) -> str:
    """One line: a `UserError` with its remedies worded as the app's settings (their labels, never a command-line
    flag), anything else as a bug."""
    if isinstance(error, UserError):
        return render_error(error, "label")
    return f"internal error: {type(error).__name__}: {error}"


def rate_text(app: object, rate: float | None) -> str:
    if rate is None or not getattr(app, "show_timings", True):
        return "–"
    return f"{rate:.1f} tok/s"


class QuestionView(Static):
    """The user's question, as sent."""

    def __init__(self, text: str) -> None:
        super().__init__(f"[b]You:[/b] {_escape(text)}", classes="question")
        self.text = text


class StreamingMarkdown(Vertical):
    """Markdown that grows while an answer streams.

    Textual's Markdown parses its last block again at every append, so a long paragraph costs more with
    each batch of tokens, on the UI thread that shares the CPU with llama.cpp (measured on the 3B shape,
    256-token answers without paragraph breaks: decoding at 0.91x of a plain loop). Here only complete
    blocks, up to the last blank line outside a code fence, go to the Markdown; the block being written
    shows as plain text under it until it ends, and `close` renders the rest."""

    def __init__(self, classes: str) -> None:
        super().__init__(classes=classes)
        self.md = Markdown()
        self.tail = Static("", markup=False, classes="streaming-tail")
        self.tail.display = False
        self._pending = ""

    def compose(self) -> ComposeResult:
        yield self.md
        yield self.tail

    @property
    def source(self) -> str:
        """All the text so far, rendered or not."""
        return self.md.source + self._pending

    async def append(self, text: str) -> None:
        self._pending += text
        cut = _blocks_end(self._pending)
        if cut:
            await self.md.append(self._pending[:cut])
            self._pending = self._pending[cut:]
        self.tail.update(self._pending)
        self.tail.display = bool(self._pending)

    async def close(self) -> None:
        """The text is complete: render what is left as Markdown too."""
        if self._pending:
            await self.md.append(self._pending)
            self._pending = ""
        self.tail.update("")
        self.tail.display = False

    async def update(self, text: str) -> None:
        """Show `text` whole (a stored answer)."""
        self._pending = ""
        self.tail.update("")
        self.tail.display = False
        await self.md.update(text)


def _blocks_end(text: str) -> int:
    """Where the complete Markdown blocks of `text` end: after its last blank line that is not inside a
    ``` fence (0: none yet)."""
    cut = text.rfind("\n\n")
    while cut >= 0 and text.count("```", 0, cut) % 2:
        cut = text.rfind("\n\n", 0, cut)
    return cut + 2 if cut >= 0 else 0


class AnswerView(Vertical):
    """One answer. Reasoning streams into a Collapsible that folds once the answer channel starts; the
    answer streams as Markdown and stands out; a line under it gives mode, tokens, time and tokens/s."""

    def __init__(self, mode: str) -> None:
        super().__init__(classes=f"answer mode-{mode}")
        self.mode = mode
        self.reasoning_md = StreamingMarkdown(classes="reasoning")
        self.thinking = Collapsible(self.reasoning_md, title="Thinking…", collapsed=False)
        self.thinking.display = False
        self.answer_md = StreamingMarkdown(classes="final")
        self.note = Static("", classes="note")
        self.stats = Static(f"{MODE_LABELS.get(mode, mode)} · waiting…", classes="stats")
        self.answer: Answer | None = None
        self.n_reasoning = 0
        self._answer_started = False

    def compose(self) -> ComposeResult:
        yield self.thinking
        yield self.answer_md
        yield self.note
        yield self.stats

    def add_note(self, text: str) -> None:
        current = str(self.note.content)
        self.note.update(f"{current}\n{text}" if current else text)

    def show_event(self, ev: object, encode_s: float, saved: bool = True) -> None:
        """A note for what an engine event says about this answer: the video's encoding reused (saving
        `encode_s`, what encoding it took; said only where `saved`: not on the first answer after the encoding,
        which waited for it, and once per compare) or made again, what Lite kept, the engine's notices."""
        if isinstance(ev, Encoded) and ev.n_media_tokens:
            if ev.reused and not saved:
                return
            if ev.reused:
                saved = seconds_text(self.app, encode_s)
                self.add_note(f"[dim]reused the encoded video ({ev.n_frames} frames): saved {saved}[/]")
            elif ev.source == "disk":
                saved = seconds_text(self.app, ev.saved_s)
                self.add_note(f"[dim]loaded the encoded video from the encoding cache: saved {saved}[/]")
            else:
                self.add_note(f"[dim]encoded the video again ({seconds_text(self.app, ev.encode_s + ev.prefill_s)})[/]")
        elif isinstance(ev, Prefilled) and ev.n_video_tokens_kept is not None:
            self.add_note(f"[dim]Lite kept {ev.n_video_tokens_kept:,} video tokens[/]")
        elif isinstance(ev, Notice):
            self.add_note(f"[$warning]{ev.message}[/]" if ev.level == "warning" else f"[dim]{ev.message}[/]")

    async def feed(self, events: list[TokenEvent]) -> None:
        """Append tokens' visible text to the reasoning or the answer (runs of one channel written at once)."""
        runs: list[list[str]] = []  # [channel, text]
        for ev in events:
            for channel, text in ev.segments:
                if channel == "reasoning":
                    self.n_reasoning += 1
                if runs and runs[-1][0] == channel:
                    runs[-1][1] += text
                else:
                    runs.append([channel, text])
        for channel, text in runs:
            if channel == "reasoning":
                self.thinking.display = True
            elif not self._answer_started:
                self._answer_started = True
                if self.thinking.display:
                    self.thinking.title = f"Thought for {self.n_reasoning} tokens"
                    self.thinking.collapsed = True
            # appended here, not through a MarkdownStream's own task: the text then lands in the same frame
            # as the batch's telemetry (each frame costs the UI thread ~20-40 ms, taken from llama.cpp)
            await (self.reasoning_md if channel == "reasoning" else self.answer_md).append(text)
        if events and events[0].step == 1:  # figures per token are in the telemetry panel, redrawn on a timer
            self.stats.update(f"{MODE_LABELS.get(self.mode, self.mode)} · streaming…")

    async def finish(self, answer: Answer) -> None:
        """The answer is complete (or cancelled): render the rest of its text and show its figures."""
        await self.reasoning_md.close()
        await self.answer_md.close()
        self.answer = answer
        if answer.reasoning and not self._answer_started:
            self.thinking.title = f"Thought for {len(answer.reasoning.split())} words (no answer)"
        if answer.stop_reason == "cancelled":
            self.add_note("[b $warning]cancelled[/] – the partial answer is kept")
        self.stats.update(stats_line(self.app, answer))

    def fail(self, message: str) -> None:
        self.add_note(f"[b $error]failed:[/] {_escape(message)}")
        self.stats.update(f"{MODE_LABELS.get(self.mode, self.mode)} · failed")

    @classmethod
    async def from_record(cls, parent: Widget, record: MessageRecord, answer: Answer) -> AnswerView:
        """A stored answer (`answer`: the one `record` was saved from), mounted in `parent` as it was shown."""
        view = cls(record.mode or "base")
        await parent.mount(view)
        await view.show_stored(record, answer)
        return view

    async def show_stored(self, record: MessageRecord, answer: Answer) -> None:
        """Show a stored answer with the figures and telemetry summary it had when it was written."""
        if record.reasoning:
            self.thinking.display = True
            self.thinking.title = "Thought (stored)"
            self.thinking.collapsed = True
            await self.reasoning_md.update(record.reasoning)
        await self.answer_md.update(record.answer or record.text)
        self.answer = answer
        if record.stop_reason == "cancelled":
            self.add_note("[b $warning]cancelled[/] – the partial answer is kept")
        self.stats.update(stats_line(self.app, answer))


def stats_line(app: object, answer: Answer) -> str:
    """mode · tokens · decode time · tokens/s · stop reason · telemetry summary."""
    decode_s = answer.timings.get("decode_s")
    parts = [
        f"[b]{MODE_LABELS.get(answer.mode, answer.mode)}[/b]",
        f"{len(answer.tokens)} tokens",
        seconds_text(app, decode_s),
        rate_text(app, answer.timings.get("tokens_per_s")),
        answer.stop_reason or "?",
    ]
    return " · ".join(parts) + "\n" + summary_line(summarize(answer))


class CompareView(Vertical):
    """The same question answered in several modes on one encoding: answers side by side, their entropy
    curves overlaid in one chart, and a line per mode with tokens and time (in each answer's stats)."""

    def __init__(self, modes: tuple[str, ...]) -> None:
        super().__init__(classes="compare")
        self.modes = modes
        self.row = Horizontal(classes="compare-row")
        self.views = {m: AnswerView(m) for m in modes}
        self.chart = EntropyChart(classes="compare-chart")

    def compose(self) -> ComposeResult:
        with self.row:
            yield from self.views.values()
        yield self.chart

    def record(self, mode: str, entropy: float) -> None:
        self.chart.add(MODE_LABELS.get(mode, mode), entropy)

    @classmethod
    async def from_records(
        cls, parent: Widget, records: list[MessageRecord], answers: dict[int, Answer]
    ) -> CompareView:
        """A stored compare, mounted in `parent`: its answers side by side and their entropy curves."""
        view = cls(tuple(r.mode or "base" for r in records))
        await parent.mount(view)
        for record in records:
            answer = answers[record.id]
            await view.views[answer.mode].show_stored(record, answer)
            for h in answer.entropy:
                view.record(answer.mode, h)
        view.chart.call_after_refresh(view.chart.redraw)  # once laid out: the chart's width sets its points
        return view


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


class Conversation(VerticalScroll):
    """The questions and answers, newest at the bottom (kept in view while answers stream)."""

    def __init__(self, welcome: str) -> None:
        super().__init__(id="conversation")
        self.welcome = welcome

    def compose(self) -> ComposeResult:
        yield Static(self.welcome, id="welcome")

    def on_mount(self) -> None:
        self.anchor()

    async def add_question(
        self, question: str, modes: tuple[str, ...]
    ) -> tuple[dict[str, AnswerView], CompareView | None]:
        """The question, and a view for its answer in each mode (several: side by side, with their chart)."""
        await self.mount(QuestionView(question))
        if len(modes) > 1:
            compare = CompareView(modes)
            await self.mount(compare)
            return compare.views, compare
        view = AnswerView(modes[0])
        await self.mount(view)
        return {modes[0]: view}, None

    def last_question(self) -> str:
        views = list(self.query(QuestionView))
        return views[-1].text if views else ""

    async def clear(self) -> None:
        await self.remove_children()
        await self.mount(Static(self.welcome, id="welcome"))

    async def show_stored(self, messages: list[MessageRecord], answers: dict[int, Answer]) -> None:
        """A stored conversation in place of this one: questions, answers, and compare groups side by side
        (`answers`: each answer message's `Answer`, `session.stored_answers`)."""
        await self.remove_children()
        i = 0
        while i < len(messages):
            m = messages[i]
            if m.role == "user":
                await self.mount(QuestionView(m.text))
                i += 1
                continue
            if m.compare_group is None:
                await AnswerView.from_record(self, m, answers[m.id])
                i += 1
                continue
            group = []
            while (
                i < len(messages) and messages[i].role == "assistant" and messages[i].compare_group == m.compare_group
            ):
                group.append(messages[i])
                i += 1
            await CompareView.from_records(self, group, answers)


class StatusBar(Horizontal):
    """The line above the prompt: the mode, a progress bar while a video is encoded or a prompt read, and
    what the app is doing."""

    def __init__(self) -> None:
        super().__init__(id="statusbar")

    def compose(self) -> ComposeResult:
        yield Static("", id="mode-indicator")
        bar = ProgressBar(id="progress", show_eta=False)
        bar.display = False
        yield bar
        yield Static("starting…", id="status")

    def show_mode(self, mode: str) -> None:
        self.query_one("#mode-indicator", Static).update(f"[b]{MODE_LABELS[mode]}[/b]")

    def say(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    def progress(self, ev: Progress) -> None:
        bar = self.query_one(ProgressBar)
        bar.display = True
        bar.update(total=max(1, ev.total), progress=ev.done)
        stage = "encoding video" if ev.stage == "encode" else "reading the prompt"
        rate = f", {ev.rate:.0f} tokens/s" if getattr(self.app, "show_timings", True) else ""
        self.say(f"{stage}: {ev.done:,}/{ev.total:,} tokens{rate} · Esc cancels")

    def progress_done(self) -> None:
        self.query_one(ProgressBar).display = False

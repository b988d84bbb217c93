"""Live reasoning telemetry: per-token entropy with the controller's EMA and peak, where alpha switched,
|dV| and update time, as numbers and a chart; a compact summary (`telemetry.summarize`) after the answer.

Plotting costs ~6-9 ms for a few hundred points and every screen update ~20-40 ms of layout and
rendering on the UI thread, which shares the CPU with llama.cpp: so nothing here redraws per token or on
its own timer. Values are collected as tokens arrive and drawn by `flush`, which the app calls once per
batch of tokens (at most twice a second, messages.BATCH_S), in the same frame as the answer's text;
charts are downsampled to about twice their width.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static
from textual_plotext import PlotextPlot

from ..events import Answer, ControlState, TokenEvent
from ..telemetry import Summary, SwitchWatch, summarize


def downsample(ys: list[float], n: int) -> tuple[list[float], list[float]]:
    """(x, y) with at most `n` points: the maximum of each bin, so entropy spikes stay visible."""
    if len(ys) <= n or n < 1:
        return [float(i + 1) for i in range(len(ys))], list(ys)
    size = len(ys) / n
    xs, out = [], []
    for b in range(n):
        lo, hi = int(b * size), max(int(b * size) + 1, int((b + 1) * size))
        out.append(max(ys[lo:hi]))
        xs.append(float(hi))
    return xs, out


class EntropyChart(PlotextPlot):
    """Named series of per-token values, overlaid (entropy, EMA, peak; or one entropy curve per mode)."""

    def __init__(self, classes: str = "") -> None:
        super().__init__(classes=classes)
        self.series: dict[str, list[float]] = {}
        self._dirty = False

    def add(self, name: str, value: float) -> None:
        self.series.setdefault(name, []).append(value)
        self._dirty = True

    def clear(self) -> None:
        self.series = {}
        self._dirty = True

    def redraw(self) -> None:
        """Draw the series if they changed since the last time."""
        if not self._dirty:
            return
        self._dirty = False
        plt = self.plt
        plt.clear_data()
        plt.xlabel("token")
        width = max(8, self.size.width * 2)
        for name, ys in self.series.items():
            if ys:
                xs, values = downsample(ys, width)
                plt.plot(xs, values, marker="braille", label=name)
        self.refresh()


class TelemetryPanel(Vertical):
    """The answer being written: the latest token's entropy, EMA, peak, alpha (and where it switched),
    |dV| and update time, a chart of entropy with EMA and peak, and the last answer's summary."""

    def __init__(self) -> None:
        super().__init__(id="telemetry")
        self.now = Static("no answer yet", classes="now")
        self.chart = EntropyChart(classes="chart")
        self.summary = Static("", classes="summary")
        self._switch = SwitchWatch()  # telemetry's definition, as in the summary after the answer
        self._latest: TokenEvent | None = None

    def flush(self) -> None:
        """Show what the tokens added since the last call changed: the latest figures and the chart."""
        self.chart.redraw()
        if self._latest is not None:
            # two lines always (CSS): no layout pass, which costs ~25 ms of the UI thread on a busy screen
            self.now.update(
                now_line(self._latest, self._switch.step, getattr(self.app, "show_timings", True)), layout=False
            )
            self._latest = None

    def compose(self) -> ComposeResult:
        yield self.now
        yield self.chart
        yield self.summary

    def start(self, label: str) -> None:
        self.chart.clear()
        self.border_title = f"Telemetry · {label}"
        self.now.update("waiting for the first token…")
        self.summary.update("")
        self._switch = SwitchWatch()

    def add(self, ev: TokenEvent) -> None:
        self.chart.add("entropy", ev.entropy)
        c = ev.control
        if c is not None:
            self.chart.add("EMA", c.ema)
            self.chart.add("peak", c.peak)
        self._switch.see(ev.step, c)
        self._latest = ev

    @property
    def switch_step(self) -> int | None:
        """The token at which alpha turned from +1 to -1 in the answer being written (None: not yet)."""
        return self._switch.step

    def show_answer(self, label: str, answer: Answer) -> None:
        """A finished (stored) answer's telemetry, as it looked when that answer ended."""
        self.start(label)
        for step, (h, c) in enumerate(zip(answer.entropy, answer.control, strict=True), start=1):
            self.chart.add("entropy", h)
            if c is not None:
                self.chart.add("EMA", c.ema)
                self.chart.add("peak", c.peak)
            self._switch.see(step, c)
        self.now.update("stored answer")
        self.chart.call_after_refresh(self.chart.redraw)
        self.summary.update(summary_line(summarize(answer)))

    def finish(self, summary: Summary) -> None:
        self.flush()
        self.summary.update(summary_line(summary))


def now_line(ev: TokenEvent, switch: int | None, timings: bool = True) -> str:
    """The latest token's figures (entropies in nats)."""
    line = f"token {ev.step}  H {ev.entropy:.3f}"
    c: ControlState | None = ev.control
    if c is None:
        return line
    alpha = "–" if c.alpha is None else f"{c.alpha:+d}"
    where = f" (switched at {switch})" if switch else ""
    update = "–" if c.update_ms is None or not timings else f"{c.update_ms:.0f} ms"
    return f"{line}  EMA {c.ema:.3f}  peak {c.peak:.3f}\nα {alpha}{where}  |dV| {c.dv_norm:.4f}  update {update}"


def summary_line(s: Summary) -> str:
    """A compact summary of one answer's telemetry (from `telemetry.summarize`)."""
    if not s.n_tokens:
        return "no tokens"
    parts = [f"mean H {s.mean_entropy:.2f}", f"max H {s.max_entropy:.2f}"]
    if s.peak_ema is not None:
        parts.append(f"peak EMA {s.peak_ema:.2f}")
    if s.n_updates is not None:
        parts.append(f"{s.n_updates} updates")
        parts.append(f"switch at {s.switch_step}" if s.switch_step else "no switch")
    if s.max_dv_norm is not None:
        parts.append(f"max |dV| {s.max_dv_norm:.3g}")
    return " · ".join(parts)

"""Pictures of the chat's main screens (pytest-textual-snapshot), dark and light, at 80x24 and large.

The same on every machine, by construction:
- The answer shown is a recorded one (`RECORDING`: the engine's events for this question, replayed through the
  app's `start_answer`). A live answer's entropies, EMA and |dV| are figures of the CPU's llama.cpp kernels
  (the AVX-512 and the AVX2-only builds differ in the second decimal), and greedy tokens can follow them. The
  replayed events go through the same worker, messages and widgets as live ones; test_chat_app checks the live
  flow against the engine, and `test_the_recording_is_an_answer_of_the_engine` the recording.
- The clip is lossless (PNG frames in AVI): its thumbnails are the generated pixels, where an MPEG-4 clip's
  decoded colours change with the FFmpeg in OpenCV's wheel.
- No measured time is drawn (`show_timings=False`), thumbnails use `HalfcellImage`, no cursor blinks, and the
  state each picture shows is asserted before it is taken (a lost click must not pass as an empty screen).

`--snapshot-update` records the answer again (on the machine it runs on: its figures, fixed from then on) before
it draws the pictures again: run it after a change to the events, the tiny model or the question.
"""

from __future__ import annotations

import codecs
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from test_chat_app import FRAMES, GEN, VR, ask, ready, until
from textual.widgets import Input
from textual_image.widget import HalfcellImage

from vreason_local.chat.app import ChatApp
from vreason_local.chat.config import ChatConfig
from vreason_local.chat.options import ChatOptions
from vreason_local.chat.screens import ModelScreen
from vreason_local.chat.store import ChatStore
from vreason_local.chat.telemetry_view import TelemetryPanel
from vreason_local.clips import make_clip
from vreason_local.decoding import Decoding, VReasonDecoding
from vreason_local.engine import Encoding, Engine, EngineSettings, GenerationSettings
from vreason_local.events import Answer, ControlState, Encoded, Event, Finished, Notice, Prefilled, Progress, TokenEvent
from vreason_local.media import load_video

RECORDING = Path(__file__).parent / "data" / "chat_answer_vreason.json"
QUESTION = "What happens?"
_PLAIN_EVENTS = {cls.__name__: cls for cls in (Progress, Encoded, Prefilled, Notice)}


def events_to_json(events: list[Event]) -> str:
    """The events as JSON, one per line, each with its type's name (floats as Python writes them: exact)."""
    return "[\n" + ",\n".join(json.dumps({"type": type(ev).__name__, **asdict(ev)}) for ev in events) + "\n]\n"


def events_from_json(text: str) -> list[Event]:
    """The events `events_to_json` wrote. A field the events no longer have, or lack, raises: record again."""
    events: list[Event] = []
    for fields in json.loads(text):
        kind = fields.pop("type")
        if kind == "TokenEvent":
            fields["control"] = _control(fields["control"])
            fields["segments"] = tuple((channel, part) for channel, part in fields["segments"])
            fields["top_logprobs"] = tuple((token, logprob) for token, logprob in fields["top_logprobs"])
            events.append(TokenEvent(**fields))
        elif kind == "Finished":
            answer = fields["answer"]
            answer["control"] = [_control(c) for c in answer["control"]]
            answer["history"] = tuple(answer["history"])
            events.append(Finished(Answer(**answer)))
        else:
            events.append(_PLAIN_EVENTS[kind](**fields))
    return events


def _control(fields: dict | None) -> ControlState | None:
    return None if fields is None else ControlState(**fields)


def answer_live(engine: Engine, encoding: Encoding) -> list[Event]:
    """The events of the answer the pictures show, from the engine (what `RECORDING` holds, made on some CPU)."""
    return list(engine.ask(encoding, QUESTION, GEN, VReasonDecoding(VR)))


class Replay:
    """A `StartAnswer` that answers with recorded events, as the engine yielded them; it keeps what the app asked,
    for the test to check that the recording answers it (`check_asked`)."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.asked: list[tuple[Encoding, str, GenerationSettings, Decoding, Answer | None]] = []

    def __call__(
        self,
        engine: Engine,
        encoding: Encoding,
        question: str,
        gen: GenerationSettings,
        decoding: Decoding,
        follow_up: Answer | None,
        cancel: threading.Event,
    ) -> Replay:
        self.asked.append((encoding, question, gen, decoding, follow_up))
        return self

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def cancel(self) -> None:
        """Nothing runs that could be stopped: the recording is all there at once."""

    def check_asked(self) -> None:
        """The app asked once, and the recording answers that: the question, mode and settings (V-Reason's device:
        the one "auto" ran on), as many frames and media tokens, not a follow-up. Else: record again."""
        [(encoding, question, gen, decoding, follow_up)] = self.asked
        encoded, finished = self.events[0], self.events[-1]
        assert isinstance(encoded, Encoded) and isinstance(finished, Finished)
        answer = finished.answer
        assert (answer.question, answer.mode, follow_up) == (question, decoding.mode, None)
        assert (encoded.n_frames, encoded.n_media_tokens) == (encoding.n_frames, encoding.n_media_tokens)
        assert answer.settings["generation"] == asdict(gen), "other settings: record again (--snapshot-update)"
        assert isinstance(decoding, VReasonDecoding)
        asked = {k: v for k, v in asdict(decoding.settings).items() if k != "device"}
        recorded = {k: answer.settings["vreason"].get(k) for k in asked}
        assert recorded == asked, "other V-Reason settings: record again (--snapshot-update)"


async def still(pilot) -> None:
    """No blinking cursor in the picture (its phase depends on when it is taken)."""
    for box in pilot.app.query(Input):
        box.cursor_blink = False
    await pilot.pause(0.05)


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("snap") / "clip.avi"
    return make_clip(path, seconds=4.0, fps=10.0, size=(224, 168), codec="png ")


@pytest.fixture(scope="module")
def recording(request, tiny, clip) -> list[Event]:
    """The recorded answer (with --snapshot-update recorded again first, from this machine's engine)."""
    if request.config.getoption("--snapshot-update"):
        with Engine(tiny.model_path, tiny.mmproj_path) as engine:
            encoding = engine.encode(load_video(clip, FRAMES, engine.projector.patch_size).media).result()
            RECORDING.write_text(events_to_json(answer_live(engine, encoding)))
    return events_from_json(RECORDING.read_text())


@pytest.fixture
def make(tiny, clip, tmp_path):
    apps = []

    def factory(theme: str = "textual-dark", start_answer=Engine.ask, **changes) -> ChatApp:
        options = ChatOptions(str(tiny.model_path), str(tiny.mmproj_path), clip, FRAMES, GEN, EngineSettings(), VR)
        store = ChatStore(tmp_path / f"chats{len(apps)}.db")
        app = ChatApp(
            replace(options, **changes),
            store,
            config=ChatConfig(theme),
            show_timings=False,
            image_class=HalfcellImage,
            start_answer=start_answer,
        )
        apps.append((app, store))
        return app

    yield factory
    for app, store in apps:
        app.close_engine()
        store.close()


def test_the_recording_is_an_answer_of_the_engine(tiny, clip, recording):
    """The recording is what the engine yields for this question, but for the figures and tokens that depend on
    the CPU: the same events around the tokens, the same prompt, and the tokens' texts the tiny vocabulary's."""
    with Engine(tiny.model_path, tiny.mmproj_path) as engine:
        encoding = engine.encode(load_video(clip, FRAMES, engine.projector.patch_size).media).result()
        live = answer_live(engine, encoding)
        answer = recording[-1].answer
        pieces = [engine.model.piece(token) for token in answer.tokens]
    assert events_from_json(events_to_json(live)) == live  # the file keeps every field of every event exactly
    assert [type(e) for e in recording if not isinstance(e, TokenEvent)] == [Encoded, Prefilled, Finished]
    assert [type(e) for e in live if not isinstance(e, TokenEvent)] == [Encoded, Prefilled, Finished]
    assert replace(recording[0], encode_s=0.0, prefill_s=0.0) == replace(live[0], encode_s=0.0, prefill_s=0.0)
    assert replace(recording[1], prefill_s=0.0) == replace(live[1], prefill_s=0.0)
    assert answer.prompt_tokens == live[-1].answer.prompt_tokens
    tokens = [e for e in recording if isinstance(e, TokenEvent)]
    assert [e.step for e in tokens] == list(range(1, GEN.max_tokens + 1)) and answer.stop_reason == "max_tokens"
    assert [e.token for e in tokens] == answer.tokens and [e.control for e in tokens] == answer.control
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # as the engine decodes them
    assert not any(eog for _, eog in pieces)
    assert [utf8.decode(raw) for raw, _ in pieces] == [e.text for e in tokens] == answer.token_text
    assert "".join(answer.token_text) == answer.text and all(c is not None for c in answer.control)


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_main_screen_80x24(snap_compare, make, theme):
    app = make(theme)

    async def run_before(pilot):
        await ready(pilot)
        assert len(app.query(".thumb")) == 6
        await still(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_answered_large(snap_compare, make, recording, theme):
    replay = Replay(recording)
    app = make(theme, start_answer=replay, mode="vreason")

    async def run_before(pilot):
        await ready(pilot)
        view = await ask(pilot, QUESTION)
        replay.check_asked()
        assert view.answer == recording[-1].answer  # the recorded answer is the one shown
        assert app.query_one(TelemetryPanel).chart.series["entropy"] == view.answer.entropy
        await pilot.pause(0.3)  # the chart's redraw timer
        await still(pilot)

    assert snap_compare(app, terminal_size=(150, 45), run_before=run_before)


def test_no_model_screen(snap_compare, make):
    app = make(model="qwen2.5-vl-3b", mmproj=None)

    async def run_before(pilot):
        await until(pilot, lambda: isinstance(app.screen, ModelScreen) and app.screen.query("#no-model"))
        problem = app.screen.query_one("#model-problem")
        assert "not downloaded" in str(problem.content)
        # The message names this run's temporary Hugging Face cache: masked, once the line is mounted. Textual
        # keeps a widget's measured height through an update made before its mount, so the short text would
        # stay in the long one's height (two full runs drew that, or never laid it out again).
        await until(pilot, lambda: problem.is_mounted)
        problem.update("model qwen2.5-vl-3b is not downloaded (cache path masked)")
        app.status("not ready · model not downloaded (masked)")
        await until(pilot, lambda: problem.size.height == 1)  # laid out again: one line
        await still(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)

"""`vreason chat` driven by Textual's pilot on the real engine: a generated tiny model and clip.

Every answer shown is checked against what the engine itself produces (a plain `Engine.ask` on the same
model, settings and frames), and every answer stored against the one shown. Conditions are polled,
since `wait_for_complete` can return before a worker exists or with its messages still queued.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from textual.widgets import Footer, Input, Static
from textual.widgets._footer import FooterKey
from textual.widgets._toast import Toast
from textual_image.widget import HalfcellImage

from vreason_local.chat.app import ChatApp
from vreason_local.chat.config import ChatConfig, load_config
from vreason_local.chat.options import ChatOptions
from vreason_local.chat.screens import ErrorScreen, ExportScreen, ModelScreen, SettingsScreen
from vreason_local.chat.store import ChatStore
from vreason_local.chat.telemetry_view import TelemetryPanel, downsample, summary_line
from vreason_local.chat.widgets import MODE_LABELS, AnswerView, CompareView, QuestionView
from vreason_local.clips import make_clip
from vreason_local.decoding import decoding_for
from vreason_local.engine import AnswerHandle, Engine, EngineSettings, GenerationSettings
from vreason_local.events import Event, TokenEvent
from vreason_local.media import Media, load_image, load_video
from vreason_local.telemetry import summarize
from vreason_local.video import FrameSampling
from vreason_local.vreason import VReasonSettings

GEN = GenerationSettings(max_tokens=12)
FRAMES = FrameSampling(fps=2.0, max_frames=6)
VR = VReasonSettings(every=1, lr=0.05)
# An answer without the reasoning format and without stopping at </answer>: it ends at max_tokens, at the model's
# own end of turn (greedy, after a few hundred tokens on the tiny model, where depends on the CPU's llama.cpp
# kernels), or when cancelled. The cancel tests hold it (`HeldAnswer`) so that only the cancel can end it.
LONG = GenerationSettings(max_tokens=4000, stop_at_answer=False, reasoning=False)
LONG_QUESTION = "Count the frames."


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("chat") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))


@pytest.fixture
def options(tiny, clip) -> ChatOptions:
    return ChatOptions(str(tiny.model_path), str(tiny.mmproj_path), clip, FRAMES, GEN, EngineSettings(), VR)


@pytest.fixture
def store(tmp_path):
    with ChatStore(tmp_path / "chats.db") as s:
        yield s


def make_app(options: ChatOptions, store: ChatStore, **kw) -> ChatApp:
    return ChatApp(options, store, image_class=HalfcellImage, **kw)


async def until(pilot, condition, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


async def ready(pilot) -> None:
    await until(pilot, lambda: pilot.app.session.encoding is not None and pilot.app.loading is None)


async def ask(pilot, question: str) -> AnswerView:
    app = pilot.app
    app.query_one("#prompt", Input).value = question
    await pilot.press("enter")
    await until(pilot, lambda: app.job is None and len(app.query(AnswerView)) > 0)
    return app.query(AnswerView).last()


def reference(tiny, clip, question: str, mode: str = "base", follow: str | None = None) -> list[int]:
    """The tokens a plain engine gives for the same question (the app must show exactly these)."""
    with Engine(tiny.model_path, tiny.mmproj_path) as engine:
        media = load_video(clip, FRAMES, engine.projector.patch_size).media
        enc = engine.encode(media).result()
        first = engine.ask(enc, question, GEN, decoding_for(mode, VR)).result()
        if follow is None:
            return first.tokens
        return engine.ask(enc, follow, GEN, decoding_for(mode, VR), follow_up=first).result().tokens


async def test_ask_streams_the_engines_answer_with_telemetry_and_saves_it(options, store, tiny, clip):
    app = make_app(replace(options, mode="vreason"), store)
    async with app.run_test(size=(100, 34)) as pilot:
        await ready(pilot)
        assert "6 frames" in str(app.query_one("#status", Static).content)
        view = await ask(pilot, "What happens?")
        answer = view.answer
        assert answer is not None and answer.mode == "vreason" and len(answer.tokens) == 12
        assert view.answer_md.source.strip() == answer.answer.strip()  # streamed text = the engine's answer
        assert "12 tokens" in str(view.stats.content) and "max_tokens" in str(view.stats.content)
        # encoded once, up front, and waited for: the first answer saved nothing, so no "reused … saved" note
        assert answer.reused_encoding and "reused the encoded video" not in str(view.note.content)
        chart = app.query_one(TelemetryPanel).chart
        assert chart.series["entropy"] == answer.entropy
        assert chart.series["EMA"] == [c.ema for c in answer.control]
        assert chart.series["peak"] == [c.peak for c in answer.control]
        assert "updates" in str(app.query_one(TelemetryPanel).summary.content)
        rows = store.messages(app.session.session_id)
        assert [r.role for r in rows] == ["user", "assistant"]
        assert rows[0].text == "What happens?" and rows[1].n_tokens == 12 and rows[1].mode == "vreason"
    app.close_engine()
    assert answer.tokens == reference(tiny, clip, "What happens?", "vreason")


async def test_follow_up_reuses_the_encoding_and_continues_the_conversation(options, store, tiny, clip):
    app = make_app(options, store)
    async with app.run_test(size=(100, 34)) as pilot:
        await ready(pilot)
        first_view = await ask(pilot, "What happens?")
        first = first_view.answer
        second_view = await ask(pilot, "And then?")
        second = second_view.answer
        assert second.reused_encoding and "reused the encoded video" in str(second_view.note.content)
        assert "reused" not in str(first_view.note.content)
        assert second.prompt_tokens[: len(first.prompt_tokens)] == first.prompt_tokens  # it continued the first
    app.close_engine()
    assert second.tokens == reference(tiny, clip, "What happens?", follow="And then?")


async def test_mode_switch_and_compare_side_by_side(options, store, tiny, clip):
    app = make_app(options, store)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        assert "base" in str(app.query_one("#mode-indicator", Static).content)
        await pilot.press("ctrl+t")
        assert app.mode == "vreason" and "V-Reason" in str(app.query_one("#mode-indicator", Static).content)
        app.query_one("#prompt", Input).value = "What happens?"
        await pilot.press("ctrl+b")
        await until(pilot, lambda: app.job is None and app.query(CompareView))
        compare = app.query_one(CompareView)
        answers = {m: v.answer for m, v in compare.views.items()}
        assert set(answers) == {"base", "vreason"} and all(a is not None for a in answers.values())
        assert set(compare.chart.series) == {"base", "V-Reason"}
        assert compare.chart.series["base"] == answers["base"].entropy
        rows = [r for r in store.messages(app.session.session_id) if r.role == "assistant"]
        assert {r.mode for r in rows} == {"base", "vreason"}
        assert len({r.compare_group for r in rows}) == 1 and rows[0].compare_group is not None
        assert app.session.follow_up is answers["vreason"]  # the conversation goes on in the current mode
    app.close_engine()
    assert answers["base"].tokens == reference(tiny, clip, "What happens?")


class HeldAnswer:
    """A `StartAnswer` for the cancel tests: the engine's own answer, its events passed on unchanged, but the engine
    waits after token `k` until the answer is asked to stop (Esc or quit), so that only the cancel can end it.

    Left to run, the tiny model ends the long answer on its own (EOS) after 334 tokens, in under 0.2 s, with both
    the AVX-512 and the AVX2-only llama.cpp build here: before a key press lands. Held, the engine next checks, for
    token `k`, an end of turn (none: see below), </answer> (not looked for), max_tokens (4,000) and then the
    cancel: the answer ends cancelled with exactly `k` tokens. Tokens 1-3 are never an end of turn: greedy, the
    chosen token's logit is above every end-of-turn token's by 17.6, 12.0 and 7.1 on both the AVX-512 and the
    AVX2-only build, whose logits differ there by < 0.01.
    """

    WAIT_S = 20.0  # longest hold: a cancel that never comes fails the test (the worker's error), not hangs it

    def __init__(self, k: int) -> None:
        self.k = k
        self.holding = threading.Event()  # token k is made and the engine waits
        self._handle: AnswerHandle | None = None

    def __call__(self, engine: Engine, *args: Any) -> HeldAnswer:
        assert self._handle is None, "one answer per HeldAnswer"
        self._handle = engine.ask(*args)
        return self

    def __iter__(self) -> Iterator[Event]:
        assert self._handle is not None
        for ev in self._handle:
            yield ev
            if isinstance(ev, TokenEvent) and ev.step == self.k:
                self.holding.set()
                deadline = time.monotonic() + self.WAIT_S
                while not self._handle.cancel_requested:  # the app's cancel() or its worker's cancel event
                    assert time.monotonic() < deadline, f"the answer was not cancelled within {self.WAIT_S} s"
                    time.sleep(0.005)

    def cancel(self) -> None:
        assert self._handle is not None
        self._handle.cancel()


async def start_held_answer(pilot, app: ChatApp, held: HeldAnswer) -> None:
    """Ask the long question and wait until the engine holds its answer at token `held.k`."""
    await ready(pilot)
    app.query_one("#prompt", Input).value = LONG_QUESTION
    await pilot.press("enter")
    await until(pilot, held.holding.is_set)


async def test_escape_cancels_and_keeps_the_partial_answer(options, store):
    held = HeldAnswer(3)
    app = make_app(replace(options, gen=LONG), store, start_answer=held)
    async with app.run_test(size=(100, 34)) as pilot:
        await start_held_answer(pilot, app, held)
        await pilot.press("escape")
        await until(pilot, lambda: app.job is None)
        view = app.query(AnswerView).last()
        answer = view.answer
        assert answer.stop_reason == "cancelled" and len(answer.tokens) == 3
        assert view.answer_md.source.strip() == answer.answer.strip() != ""  # the partial answer is shown
        assert app.query_one(TelemetryPanel).chart.series["entropy"] == answer.entropy
        assert "cancelled" in str(view.note.content)
        assert "answer cancelled" in str(app.query_one("#status", Static).content)
        stored = store.messages(app.session.session_id)[-1]
        assert stored.stop_reason == "cancelled" and stored.n_tokens == 3 and stored.text == answer.text
    app.close_engine()


async def test_quit_while_answering_saves_the_conversation(options, store):
    held = HeldAnswer(2)
    app = make_app(replace(options, gen=LONG), store, start_answer=held)
    async with app.run_test(size=(100, 34)) as pilot:
        await start_held_answer(pilot, app, held)
        t0 = time.monotonic()
        await pilot.press("ctrl+q")
        await until(pilot, lambda: app._exit, timeout=20)
    assert time.monotonic() - t0 < 10
    app.close_engine()
    rows = store.messages(store.latest().id)
    assert [r.role for r in rows] == ["user", "assistant"]
    assert rows[1].stop_reason == "cancelled" and rows[1].n_tokens == 2


async def test_resume_shows_the_conversation_continues_it_and_exports(options, store, tmp_path):
    app = make_app(options, store)
    async with app.run_test(size=(100, 34)) as pilot:
        await ready(pilot)
        first = (await ask(pilot, "What happens?")).answer
    app.close_engine()

    again = make_app(options, store, resume=True)
    async with again.run_test(size=(100, 34)) as pilot:
        await ready(pilot)
        assert [q.text for q in again.query(QuestionView)] == ["What happens?"]
        assert again.session.follow_up is not None and again.session.follow_up.history == first.history
        follow = (await ask(pilot, "And then?")).answer
        assert follow.prompt_tokens[: len(first.prompt_tokens)] == first.prompt_tokens
        for suffix in (".md", ".json"):
            again.action_export(suffix)
            await until(pilot, lambda: isinstance(again.screen, ExportScreen) and again.screen.query(Input))
            target = tmp_path / f"out{suffix}"
            again.screen.query_one(Input).value = str(target)
            await pilot.press("enter")
            await until(pilot, target.exists)
    again.close_engine()
    assert "What happens?" in (tmp_path / "out.md").read_text() and "And then?" in (tmp_path / "out.md").read_text()
    data = json.loads((tmp_path / "out.json").read_text())
    assert "schema_version" in data
    assert len(store.messages(store.latest().id)) == 4  # the resumed conversation went on in its session


async def test_resume_with_the_video_moved_still_shows_the_conversation(options, store, tmp_path):
    moved = shutil.copy(options.video, tmp_path / "moving.mp4")
    app = make_app(replace(options, video=Path(moved)), store)
    async with app.run_test(size=(100, 34)) as pilot:
        await ready(pilot)
        await ask(pilot, "What happens?")
    app.close_engine()
    Path(moved).unlink()
    again = make_app(options, store, resume=True)
    async with again.run_test(size=(100, 34)) as pilot:
        await until(pilot, lambda: again.query(QuestionView) and again.loading is None)
        assert [q.text for q in again.query(QuestionView)] == ["What happens?"]
        # the warning follows the conversation's rendering, later on a busy machine: wait for it
        await until(pilot, lambda: any("missing" in n.message for n in again._notifications))
    again.close_engine()


async def test_a_file_that_is_not_a_video_shows_the_error_and_the_app_goes_on(options, store, tmp_path, clip):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    app = make_app(replace(options, video=bad), store)
    async with app.run_test(size=(100, 34)) as pilot:
        # the screen is pushed before its widgets are mounted: wait for the message itself
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen) and app.screen.query("#error-message"))
        assert "cannot open" in str(app.screen.query_one("#error-message", Static).content)
        await pilot.press("escape")
        app.query_one("#video-path", Input).value = str(clip)  # open another video, no restart
        app.query_one("#video-path", Input).focus()
        await pilot.press("enter")
        await ready(pilot)
        view = await ask(pilot, "What happens?")
        assert view.answer is not None and len(view.answer.tokens) == 12
    app.close_engine()


async def test_a_model_not_downloaded_opens_the_model_screen_that_explains_pull(options, store):
    app = make_app(replace(options, model="qwen2.5-vl-3b", mmproj=None), store)
    async with app.run_test(size=(100, 34)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ModelScreen) and app.screen.query("#no-model"))
        text = str(app.screen.query_one("#no-model", Static).content)
        assert "vreason models pull" in text and "type its path below" in text and "--" not in text
        assert "not downloaded" in str(app.screen.query_one("#model-problem", Static).content)
    app.close_engine()


async def test_a_projector_of_another_model_is_an_error_with_its_remedy(options, store, tiny_model_factory):
    other = tiny_model_factory("qwen3vl")
    app = make_app(replace(options, mmproj=str(other.mmproj_path)), store)
    async with app.run_test(size=(100, 34)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen) and app.screen.query("#error-message"))
        assert "projector" in str(app.screen.query_one("#error-message", Static).content)
    app.close_engine()


async def test_video_panel_estimate_follows_the_frame_settings(options, store):
    app = make_app(options, store)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        assert len(app.query(".thumb")) == 6
        assert "6 frames" in str(app.query_one("#estimate", Static).content)
        app.query_one("#set-max_frames", Input).value = "4"
        await until(pilot, lambda: "4 frames" in str(app.query_one("#estimate", Static).content))
        assert len(app.query(".thumb")) == 4 and app.session.options.frames.max_frames == 6  # an estimate, not applied
        app.query_one("#apply").press()
        await until(
            pilot,
            lambda: app.loading is None and app.session.encoding is not None and app.session.encoding.n_frames == 4,
        )
    app.close_engine()


async def test_settings_screen_changes_the_next_answers(options, store):
    app = make_app(options, store)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen) and app.screen.query(Input))
        app.screen.query_one("#s-lr", Input).value = "nan"  # refused by the settings layer, as `--lr nan` is
        app.screen.query_one("#save").press()
        await until(pilot, lambda: any("learning rate" in n.message for n in app._notifications))
        (note,) = [n.message for n in app._notifications if "learning rate" in n.message]
        assert note.startswith("learning rate must be a finite number") and "setting learning rate to 0.001" in note
        assert isinstance(app.screen, SettingsScreen) and "--" not in note  # still open; no CLI flag in the TUI
        app.screen.query_one("#s-max_tokens", Input).value = "5"
        app.screen.query_one("#s-lr", Input).value = "0.01"
        app.screen.query_one("#save").press()
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.session.options.gen.max_tokens == 5 and app.session.options.vreason.lr == 0.01
        view = await ask(pilot, "What happens?")
        assert len(view.answer.tokens) == 5
    app.close_engine()


async def test_keys_are_remapped_from_the_config_and_none_use_alt(options, store, tmp_path):
    assert not [b for b in ChatApp.BINDINGS if "alt+" in b.key]
    config_file = tmp_path / "chat.toml"
    config_file.write_text('theme = "textual-light"\n[keys]\n"chat.mode" = "f5"\n')
    config = load_config(config_file)
    assert config == ChatConfig("textual-light", {"chat.mode": "f5"})
    app = make_app(options, store, config=config)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.theme == "textual-light"
        await pilot.press("f5")
        assert app.mode == "vreason"
    app.close_engine()
    config_file.write_text('[keys]\n"chat.mode" = "alt+m"\n')
    with pytest.raises(Exception, match="alt"):
        load_config(config_file)


def test_downsample_keeps_the_peaks():
    xs, ys = downsample([0.0, 5.0, 1.0, 0.0, 2.0, 0.0], 3)
    assert ys == [5.0, 1.0, 2.0] and xs == [2.0, 4.0, 6.0]
    assert downsample([1.0, 2.0], 8) == ([1.0, 2.0], [1.0, 2.0])


async def test_a_damaged_database_is_set_aside_with_one_message_and_resume_starts_afresh(options, tmp_path):
    path = tmp_path / "chats.db"
    with ChatStore(path) as first:
        s = first.create_session(options.video, options.model, {}, [])
        first.add_question(s.id, "What happens?")
    with closing(sqlite3.connect(path)) as raw, raw:  # a JSON column broken by hand
        raw.execute("UPDATE sessions SET frames = '[{\"index\": 3' WHERE id = ?", (s.id,))
    with ChatStore(path) as store:
        app = make_app(options, store, resume=True)
        async with app.run_test(size=(100, 34)) as pilot:
            await ready(pilot)  # no stored session to resume: the video is loaded as given
            (note,) = [n for n in app._notifications if n.title == "Damaged chat database"]
            assert "moved to" in note.message and "JSON that does not parse" in note.message
            assert not app.query(QuestionView) and app.session.session_id is None
            view = await ask(pilot, "What happens?")
            assert view.answer is not None and len(store.messages(app.session.session_id)) == 2
        app.close_engine()
    assert len(list(tmp_path.glob("chats.db.damaged-*"))) == 1


async def test_resume_restores_the_mode_the_answers_figures_and_the_compare_chart(options, store):
    app = make_app(options, store)  # base on the command line; switched to V-Reason, then a compare
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")
        first = (await ask(pilot, "What happens?")).answer
        app.query_one("#prompt", Input).value = "And then?"
        await pilot.press("ctrl+b")
        await until(pilot, lambda: app.job is None and app.query(CompareView))
        shown = {m: str(v.stats.content) for m, v in app.query_one(CompareView).views.items()}
        notes = {m: str(v.note.content) for m, v in app.query_one(CompareView).views.items()}
        assert "reused the encoded video" in notes["base"] and "reused" not in notes["vreason"]  # once per compare
        compared = {m: v.answer for m, v in app.query_one(CompareView).views.items()}
    app.close_engine()

    again = make_app(options, store, resume=True)
    async with again.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        assert again.mode == again.session.mode == "vreason"
        assert "V-Reason" in str(again.query_one("#mode-indicator", Static).content)
        single = again.query(AnswerView).first()
        assert single.answer.tokens == first.tokens and "stored" not in str(single.stats.content)
        assert summary_line(summarize(first)) in str(single.stats.content)
        compare = again.query_one(CompareView)
        assert {m: str(v.stats.content) for m, v in compare.views.items()} == shown  # as they were shown live
        assert compare.chart.series == {MODE_LABELS[m]: a.entropy for m, a in compared.items()}
        panel = again.query_one(TelemetryPanel)  # the last answer's telemetry (the compare's V-Reason one)
        assert panel.chart.series["entropy"] == compared["vreason"].entropy
        assert panel.chart.series["EMA"] == [c.ema for c in compared["vreason"].control]
        assert summary_line(summarize(compared["vreason"])) == str(panel.summary.content)
    again.close_engine()


def text_only_reference(tiny, question: str) -> list[int]:
    """The tokens a plain engine gives for `question` with no video (what `vreason run -q` answers)."""
    with Engine(tiny.model_path, tiny.mmproj_path) as engine:
        return engine.ask(engine.encode(Media.none()).result(), question, GEN, "base").result().tokens


async def test_a_question_without_a_video_is_answered_text_only(options, store, tiny, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    app = make_app(replace(options, video=bad), store)  # the video fails: nothing is encoded
    async with app.run_test(size=(100, 34)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ErrorScreen) and app.loading is None)
        await pilot.press("escape")
        assert not app.session.ready
        view = await ask(pilot, "Explain entropy.")
        assert any("answering text only" in n.message for n in app._notifications)
        answer = view.answer
        assert answer is not None and answer.n_media_tokens == 0 and len(answer.tokens) == 12
        assert store.session(app.session.session_id).video_path is None  # stored as a text-only conversation
    app.close_engine()
    assert answer.tokens == text_only_reference(tiny, "Explain entropy.")


async def test_a_question_asked_while_the_model_loads_is_answered_once_it_is_ready(options, store, tiny):
    app = make_app(replace(options, video=None), store)
    app.session.lock.acquire()  # the load waits for the engine's lock: the question comes first
    async with app.run_test(size=(100, 34)) as pilot:
        await until(pilot, lambda: app.loading is not None)
        app.query_one("#prompt", Input).value = "Explain entropy."
        await pilot.press("enter")
        assert app.pending == ("Explain entropy.", ("base",)) and not app.query(AnswerView)
        assert any("asked once the model" in n.message for n in app._notifications)
        app.session.lock.release()
        await until(pilot, lambda: app.job is None and app.query(AnswerView) and app.query_one(AnswerView).answer)
        answer = app.query_one(AnswerView).answer
        assert app.query_one("#prompt", Input).value == ""
    app.close_engine()
    assert answer.tokens == text_only_reference(tiny, "Explain entropy.")


async def test_at_80x24_the_footer_shows_every_shown_key_and_toasts_never_cover_the_prompt(options, store):
    app = make_app(options, store)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+t")  # "mode: V-Reason (next questions)"
        for i in range(6):  # more than fit: the rack stays above the prompt
            app.notify(f"exported to /a/rather/long/path/number/{i}/vreason-chat-1.md", timeout=30)
        await until(pilot, lambda: len(app.screen.query(Toast)) >= 4)
        await pilot.pause(0.2)
        on_top = {  # what is drawn in each cell, toasts included
            (x, y): app.screen.get_widget_at(x, y)[0] for x in range(80) for y in range(24)
        }
        assert any(isinstance(w, Toast) for w in on_top.values())  # the toasts are on the screen
        for region in (app.query_one("#prompt", Input).region, app.query_one(Footer).region):
            covered = [xy for xy, w in on_top.items() if region.contains(*xy) and isinstance(w, Toast)]
            assert not covered, covered[:3]
        keys = list(app.query(FooterKey))
        shown = {b.action for b in ChatApp.BINDINGS if b.show}
        assert {k.action for k in keys} >= shown and len(shown) >= 6
        for key in keys:  # each whole on the screen and on its own
            assert key.region.right <= 80 and key.region.width > len(key.description), key.description
        assert all(a.region.right <= b.region.x for a, b in zip(keys, keys[1:], strict=False))
    app.close_engine()


async def test_regenerate_edit_and_resend_and_copy(options, store, tiny, clip):
    app = make_app(options, store)
    async with app.run_test(size=(100, 34)) as pilot:
        await ready(pilot)
        first = (await ask(pilot, "What happens?")).answer
        second = (await ask(pilot, "And then?")).answer
        original = app.session.session_id

        writes: list[str] = []  # what the app sends the terminal: the copy is an OSC 52 sequence
        app._driver.write = lambda data, write=app._driver.write: (writes.append(data), write(data))[1]
        await pilot.press("ctrl+y")
        (osc,) = [w for w in writes if w.startswith("\x1b]52;c;")]
        assert base64.b64decode(osc[len("\x1b]52;c;") : -1]).decode() == second.answer == app.clipboard

        await app.action_regenerate("vreason")  # the palette's "Regenerate in V-Reason"
        await until(pilot, lambda: app.job is None and app.query(AnswerView).last().answer is not None)
        again = app.query(AnswerView).last().answer
        assert [q.text for q in app.query(QuestionView)] == ["What happens?", "And then?"]
        assert again.mode == "vreason" and len(app.query(AnswerView)) == 2
        assert again.prompt_tokens[: len(first.prompt_tokens)] == first.prompt_tokens  # continues the first
        await pilot.press("f5")  # again, in the current mode (base): greedy, so the first answer comes back
        await until(pilot, lambda: app.job is None and app.query(AnswerView).last().answer is not again)
        assert app.query(AnswerView).last().answer.tokens == second.tokens

        prompt = app.query_one("#prompt", Input)
        await pilot.press("up")
        assert prompt.value == "And then?"
        await pilot.press("up")
        assert prompt.value == "What happens?" and app.editing.text == "What happens?"
        prompt.value = "What moves?"
        await pilot.press("enter")
        await until(pilot, lambda: app.job is None and app.query(AnswerView).last().answer is not None)
        edited = app.query(AnswerView).last().answer
        assert [q.text for q in app.query(QuestionView)] == ["What moves?"] and app.editing is None
        rows = store.messages(app.session.session_id)
        assert [(m.role, m.text) for m in rows] == [("user", "What moves?"), ("assistant", edited.text)]
        assert [m.text for m in store.messages(original) if m.role == "user"] == ["What happens?", "And then?"]
        assert len(store.sessions()) == 4  # the original and three branches, each kept
    app.close_engine()
    with Engine(tiny.model_path, tiny.mmproj_path) as engine:  # the same on a plain engine
        enc = engine.encode(load_video(clip, FRAMES, engine.projector.patch_size).media).result()
        plain_first = engine.ask(enc, "What happens?", GEN, "base").result()
        plain_again = engine.ask(enc, "And then?", GEN, decoding_for("vreason", VR), follow_up=plain_first).result()
        plain_edited = engine.ask(enc, "What moves?", GEN, "base").result()
    assert (again.tokens, edited.tokens) == (plain_again.tokens, plain_edited.tokens)


async def test_a_still_image_is_asked_about_and_the_clip_before_it_is_not_encoded_again(options, store, tiny, tmp_path):
    image = tmp_path / "still.png"
    rng = np.random.default_rng(3)
    cv2.imwrite(str(image), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    app = make_app(options, store)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        clip_encoding = app.session.encoding
        app.query_one("#video-path", Input).value = str(image)
        app.query_one("#video-path", Input).focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.loading is None and app.session.encoding is not clip_encoding)
        assert "image · " in str(app.query_one("#video-info", Static).content) and len(app.query(".thumb")) == 1
        answer = (await ask(pilot, "What is in the picture?")).answer
        assert answer.n_media_tokens > 0 and store.session(app.session.session_id).video_path == str(image)
        app.query_one("#video-path", Input).value = str(options.video)  # back to the clip: kept, not encoded
        app.query_one("#video-path", Input).focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.loading is None and app.session.encoding is clip_encoding)
        assert "encoded earlier, used again" in str(app.query_one("#status", Static).content)
    app.close_engine()
    with Engine(tiny.model_path, tiny.mmproj_path) as engine:  # what `vreason run --image` answers
        media = load_image(image, FRAMES.max_pixels, engine.projector.patch_size).media
        assert engine.ask(engine.encode(media).result(), "What is in the picture?", GEN, "base").result().tokens == (
            answer.tokens
        )

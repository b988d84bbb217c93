"""`ChatSession` driven without a screen, on the real engine: a generated tiny model and clip.

The answers are checked against what a plain engine gives for the same questions (same model, settings and
frames), and what the store holds against the answers; a restored session is checked against a plain engine
continuing the same stored answer.
"""

# ruff: noqa: F811  (the fixtures imported from test_chat_app are the tests' arguments)

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from test_chat_app import FRAMES, GEN, LONG, LONG_QUESTION, VR, clip, options, store, tiny  # noqa: F401  (fixtures)

from vreason_local.chat.options import ChatOptions
from vreason_local.chat.session import ChatSession, ModelLoaded, Planned, Ready
from vreason_local.chat.store import ChatStore
from vreason_local.clips import make_clip
from vreason_local.decoding import decoding_for
from vreason_local.engine import Engine
from vreason_local.errors import ModelMissing, UserError
from vreason_local.events import Answer, Encoded, Event, Finished, TokenEvent
from vreason_local.media import load_video
from vreason_local.telemetry import summarize


def answered(events: list[tuple[str, Event]]) -> dict[str, Answer]:
    """The finished answers of one question, by mode."""
    return {mode: ev.answer for mode, ev in events if isinstance(ev, Finished)}


def loaded(chat: ChatOptions, db: ChatStore) -> tuple[ChatSession, list]:
    """A session with the model loaded and the video encoded; the events that took."""
    session = ChatSession(chat, db)
    return session, list(session.load(chat))


def test_load_encodes_once_and_a_vreason_follow_up_reuses_the_encoding(options, store, tiny, clip):
    session, events = loaded(options, store)
    assert isinstance(events[0], Planned) and isinstance(events[1], ModelLoaded) and isinstance(events[-1], Ready)
    assert session.options == options and events[-1].encoding is session.encoding and session.encoding.n_frames == 6
    first_events = list(session.ask("What happens?"))  # in the starting mode: base
    session.mode = "vreason"  # the app's mode switch
    second_events = list(session.ask("And then?"))
    key = session.encoding.key
    session.close()
    encodes = [ev for ev in events + [e for _, e in first_events + second_events] if isinstance(ev, Encoded)]
    assert [e.reused for e in encodes] == [False, True, True]  # encoded once, at load
    first, second = answered(first_events)["base"], answered(second_events)["vreason"]
    assert first.reused_encoding and second.reused_encoding
    assert second.prompt_tokens[: len(first.prompt_tokens)] == first.prompt_tokens  # it continued the first
    assert second.history[: len(first.history)] == first.history

    rows = store.messages(session.session_id)
    assert [(r.role, r.mode) for r in rows] == [
        ("user", None),
        ("assistant", "base"),
        ("user", None),
        ("assistant", "vreason"),
    ]
    assert [rows[0].text, rows[2].text] == ["What happens?", "And then?"]
    for row, answer in ((rows[1], first), (rows[3], second)):
        assert (row.text, row.n_tokens, row.history) == (answer.text, len(answer.tokens), list(answer.history))
        assert row.reused_encoding and row.settings["media_key"] == key
    assert store.session(session.session_id).video_path == str(clip.resolve())

    with Engine(tiny.model_path, tiny.mmproj_path) as engine:  # the same questions on a plain engine
        enc = engine.encode(load_video(clip, FRAMES, engine.projector.patch_size).media).result()
        plain_first = engine.ask(enc, "What happens?", GEN, decoding_for("base", VR)).result()
        plain = engine.ask(enc, "And then?", GEN, decoding_for("vreason", VR), follow_up=plain_first).result()
    assert (first.tokens, second.tokens) == (plain_first.tokens, plain.tokens)


def test_a_restored_session_gives_back_the_conversation_and_follows_it_up(options, store, tiny, clip):
    session, _ = loaded(options, store)
    first = answered(list(session.ask("What happens?")))["base"]
    session_id = session.session_id
    session.close()

    again = ChatSession(options, store)
    restored = again.restore(session_id)
    assert [(m.role, m.text) for m in restored.messages] == [("user", "What happens?"), ("assistant", first.text)]
    assert restored.video == "ok" and restored.new_engine and restored.options.video == clip.resolve()
    assert again.follow_up is None  # not before the video is encoded again with the same frames
    list(again.load(restored.options, restored.new_engine))
    assert again.follow_up is not None and again.follow_up.history == first.history
    follow = answered(list(again.ask("And then?")))["base"]
    again.close()
    assert follow.prompt_tokens[: len(first.prompt_tokens)] == first.prompt_tokens
    assert again.session_id == session_id and [m.role for m in store.messages(session_id)] == ["user", "assistant"] * 2

    with Engine(tiny.model_path, tiny.mmproj_path) as engine:  # a plain engine continuing the stored answer
        enc = engine.encode(load_video(clip, FRAMES, engine.projector.patch_size).media).result()
        plain = engine.ask(enc, "And then?", GEN, "base", follow_up=first).result()
    assert follow.tokens == plain.tokens


def test_other_frames_of_the_same_video_keep_the_conversation_and_another_video_starts_one(
    options,
    store,
    clip,
    tmp_path,
    monkeypatch,
):
    monkeypatch.chdir(clip.parent)
    relative = replace(options, video=Path(clip.name))  # stored as an absolute path: still the same video
    session, _ = loaded(relative, store)
    list(session.ask("What happens?"))
    first_id = session.session_id
    list(session.load(replace(relative, frames=replace(FRAMES, max_frames=4))))
    assert session.session_id == first_id and session.encoding.n_frames == 4
    assert session.follow_up is not None  # kept, but about other frames: the next question does not follow it
    assert session.begin("And now?", ("base",)).follow_up is None

    other = Path(tmp_path / "copy.mp4")
    other.write_bytes(clip.read_bytes())
    list(session.load(replace(relative, video=other)))
    session.close()
    assert session.session_id is None and session.follow_up is None  # another video: a new conversation


def test_an_answer_finished_after_new_session_is_stored_with_its_question(options, store):
    session, _ = loaded(options, store)
    turn = session.begin("What happens?", ("base",))
    session.new()  # ctrl+n while the answer is written
    for mode, ev in session.answer(turn):
        if isinstance(ev, Finished):
            session.finish(turn, mode, ev.answer)
    session.close()
    assert [m.role for m in store.messages(turn.session_id)] == ["user", "assistant"]
    assert session.session_id is None and session.follow_up is None  # the new conversation does not continue it


def test_a_compare_stores_its_answers_as_one_group_and_continues_in_the_current_mode(options, store):
    session, _ = loaded(options, store)  # in base mode: the compare's base answer is the one followed up
    events = list(session.ask("What happens?", ("base", "vreason", "lite")))
    session.close()
    assert [m for m, ev in events if isinstance(ev, Finished)] == ["base", "vreason", "lite"]
    answers = answered(events)
    rows = [r for r in store.messages(session.session_id) if r.role == "assistant"]
    assert [r.mode for r in rows] == ["base", "vreason", "lite"] and len({r.compare_group for r in rows}) == 1
    assert rows[0].compare_group == store.messages(session.session_id)[0].id
    assert session.follow_up is answers["base"]


def test_cancel_stops_the_running_answer_which_is_kept_and_stored(options, store):
    """`cancel()` (Esc) as token 3 arrives: the engine checks it before the next token (tokens 1-3 are never an
    end of turn on the tiny model: test_chat_app.HeldAnswer), so the answer ends with exactly 3 tokens."""
    session, _ = loaded(replace(options, gen=LONG), store)
    events = []
    for _, ev in session.ask(LONG_QUESTION):
        events.append(ev)
        if isinstance(ev, TokenEvent) and ev.step == 3:
            session.cancel()
    session.close()
    answer = events[-1].answer
    assert answer.stop_reason == "cancelled" and len(answer.tokens) == 3
    stored = store.messages(session.session_id)[-1]
    assert (stored.stop_reason, stored.n_tokens, stored.text) == ("cancelled", 3, answer.text)


@pytest.mark.parametrize(
    ("model", "mmproj", "words"),
    [
        ("no-such-model", None, "unknown model 'no-such-model'"),
        ("qwen2.5-vl-3b", None, "model qwen2.5-vl-3b is not downloaded"),  # the tests' Hugging Face cache is empty
        ("missing/model.gguf", None, "model file not found"),
    ],
)
def test_a_missing_model_raises_model_missing_before_any_video_work(options, store, model, mmproj, words):
    session = ChatSession(options, store)
    load = session.load(replace(options, model=model, mmproj=mmproj))
    with pytest.raises(ModelMissing, match=words):
        next(load)  # before `Planned`: no frame was read
    assert session.engine is None and not session.ready


def test_a_missing_projector_is_another_error(options, store, tmp_path):
    """The model is there: the model screen is not the remedy (`UserError`, not `ModelMissing`)."""
    load = ChatSession(options, store).load(replace(options, mmproj=str(tmp_path / "mmproj.gguf")))
    with pytest.raises(UserError, match="projector not found") as raised:
        next(load)
    assert not isinstance(raised.value, ModelMissing)


def test_the_session_imports_no_textual():
    """Drivable without a screen: importing it (in a fresh interpreter) loads no Textual module."""
    code = "import sys, vreason_local.chat.session; print(sorted(m for m in sys.modules if m.startswith('textual')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_restored_session_comes_back_in_its_mode_with_each_answers_telemetry(options, store):
    session, _ = loaded(options, store)  # started in base, switched to V-Reason, then a compare
    base = answered(list(session.ask("What happens?")))["base"]
    session.mode = "vreason"
    compared = answered(list(session.ask("And then?", ("base", "vreason"))))
    session_id = session.session_id
    session.close()

    again = ChatSession(options, store)  # `--resume` with the command line's mode: base
    restored = again.restore(session_id)
    assert again.mode == restored.options.mode == "vreason"
    rows = [m for m in restored.messages if m.role == "assistant"]
    for row, original in zip(rows, (base, compared["base"], compared["vreason"]), strict=True):
        back = restored.answers[row.id]
        assert (back.mode, back.tokens, back.entropy, back.control) == (
            original.mode,
            original.tokens,
            original.entropy,
            original.control,
        )
        assert back.question == original.question and summarize(back) == summarize(original)
    list(again.load(restored.options, restored.new_engine))
    again.close()
    assert again.follow_up.tokens == compared["vreason"].tokens  # the compare's answer in the restored mode


def asked(session: ChatSession, question: str, modes: tuple[str, ...]) -> dict[str, Answer]:
    """Answer `question` as begun after a `branch` (the app's regenerate and edit-and-resend)."""
    turn = session.begin(question, modes)
    out = {}
    for mode, ev in session.answer(turn):
        if isinstance(ev, Finished):
            session.finish(turn, mode, ev.answer)
            out[mode] = ev.answer
    return out


def test_regenerate_and_edit_continue_from_before_the_question_in_a_branch(options, store, tiny, clip):
    session, _ = loaded(options, store)
    first = answered(list(session.ask("What happens?")))["base"]
    answered(list(session.ask("And then?")))
    original = session.session_id
    original_rows = store.messages(original)
    last_q = session.questions()[-1]
    kept, answers = session.branch(last_q.id)  # regenerate the last answer, in V-Reason this time
    assert [(m.role, m.text) for m in kept] == [("user", "What happens?"), ("assistant", first.text)]
    assert answers[kept[1].id].tokens == first.tokens and session.session_id != original
    again = asked(session, last_q.text, ("vreason",))["vreason"]
    branch = session.session_id
    first_q = session.questions()[0]
    kept, _ = session.branch(first_q.id)  # edit the first question and resend it
    assert kept == [] and session.follow_up is None
    edited = answered(list(session.ask("What moves?")))["base"]
    then = answered(list(session.ask("And then?")))["base"]
    session.close()

    assert store.messages(original) == original_rows  # the original conversation is kept as it was
    assert [m.text for m in store.messages(branch) if m.role == "user"] == ["What happens?", "And then?"]
    assert [m.mode for m in store.messages(branch) if m.role == "assistant"] == ["base", "vreason"]
    assert [m.text for m in store.messages(session.session_id) if m.role == "user"] == ["What moves?", "And then?"]
    with Engine(tiny.model_path, tiny.mmproj_path) as engine:  # the same conversations on a plain engine
        enc = engine.encode(load_video(clip, FRAMES, engine.projector.patch_size).media).result()
        plain_first = engine.ask(enc, "What happens?", GEN, "base").result()
        plain_again = engine.ask(enc, "And then?", GEN, decoding_for("vreason", VR), follow_up=plain_first).result()
        plain_edited = engine.ask(enc, "What moves?", GEN, "base").result()
        plain_then = engine.ask(enc, "And then?", GEN, "base", follow_up=plain_edited).result()
    assert again.tokens == plain_again.tokens and edited.tokens == plain_edited.tokens
    assert then.tokens == plain_then.tokens and then.prompt_tokens[: len(edited.prompt_tokens)] == edited.prompt_tokens


def test_going_back_to_a_video_encoded_earlier_uses_its_encoding_again(options, store, tiny, clip, tmp_path):
    other = make_clip(tmp_path / "other.mp4", seconds=3.0, fps=10.0, size=(168, 224))
    session, _ = loaded(options, store)
    first_encoding = session.encoding
    list(session.ask("What happens?"))
    list(session.load(replace(options, video=other)))  # a second clip, encoded: it takes the engine's cache
    on_other = answered(list(session.ask("What moves?")))["base"]
    assert session.encoding is not first_encoding
    back = list(session.load(options))  # the first clip again: nothing encoded
    assert [type(ev).__name__ for ev in back] == ["Planned", "Ready"] and back[-1].reused
    assert session.encoding is first_encoding
    again = answered(list(session.ask("What happens?")))["base"]
    session.close()
    with Engine(tiny.model_path, tiny.mmproj_path) as engine:  # each clip on a fresh engine
        for path, question, answer in ((other, "What moves?", on_other), (clip, "What happens?", again)):
            enc = engine.encode(load_video(path, FRAMES, engine.projector.patch_size).media).result()
            assert engine.ask(enc, question, GEN, "base").result().tokens == answer.tokens

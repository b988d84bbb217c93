"""The chat session store and its exports, on answers from the real engine (tiny random-weight model).

Saved answers must come back exactly (per-token entropy and controller state included) and continue the
conversation after a restart; older files upgrade in place; foreign, newer and broken files are refused
with one line; a process killed in the middle of saving an answer leaves an intact file with the question.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from vreason_local.chat.export import export_session, session_json, session_markdown
from vreason_local.chat.store import ChatStore, default_db_path, video_fingerprint
from vreason_local.clips import make_clip
from vreason_local.decoding import VReasonDecoding
from vreason_local.engine import Encoding, Engine, GenerationSettings
from vreason_local.errors import UserError
from vreason_local.events import Answer, TokenEvent
from vreason_local.media import load_video
from vreason_local.telemetry import summarize
from vreason_local.video import FrameSampling
from vreason_local.vreason import VReasonSettings

GEN = GenerationSettings(max_tokens=8, stop_at_answer=False)
STRONG = VReasonSettings(every=1, lr=0.05)  # large enough that the values really move on a tiny model
Q1, Q2, Q3 = "What happens in the clip?", "And after that?", "Is anything red | blue?"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    engine: Engine
    encoding: Encoding
    clip: Path
    frames: list[dict]
    base: Answer  # Q1
    vreason: Answer  # Q1 again, V-Reason: the other half of a "compare"
    follow: Answer  # Q2, following `base`
    cancelled: Answer  # Q3, V-Reason, cancelled after 3 tokens


@pytest.fixture(scope="module")
def run(tiny_model_factory, tmp_path_factory) -> Run:
    tiny = tiny_model_factory("qwen25vl")
    clip = make_clip(tmp_path_factory.mktemp("chat") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    with Engine(tiny.model_path, tiny.mmproj_path) as engine:
        media = load_video(clip, FrameSampling(fps=1.0, max_frames=4), engine.projector.patch_size).media
        enc = engine.encode(media).result()
        base = engine.ask(enc, Q1, GEN, "base").result()
        vreason = engine.ask(enc, Q1, GEN, VReasonDecoding(STRONG)).result()
        follow = engine.ask(enc, Q2, GEN, "base", follow_up=base).result()
        handle = engine.ask(enc, Q3, GEN, VReasonDecoding(STRONG))
        for ev in handle:
            if isinstance(ev, TokenEvent) and ev.step == 3:
                handle.cancel()
        frames = [{"index": f.index, "timestamp_s": f.timestamp_s} for f in media.frames]
        yield Run(engine, enc, clip, frames, base, vreason, follow, handle.result())


def sql(path: Path, statements: str) -> list[tuple]:
    """Run SQL on the file directly, as another program (or an older vreason) would, and close it again."""
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        if statements.count(";") > 1:
            raw.executescript(statements)
            return []
        return raw.execute(statements).fetchall()


@pytest.fixture
def store(tmp_path):
    with ChatStore(tmp_path / "chats.db") as s:
        yield s


def conversation(store: ChatStore, run: Run, video: Path | None = None):
    """A session as the app saves it: Q1 compared in two modes, Q2 following the base answer, Q3 cancelled."""
    s = store.create_session(video or run.clip, "tiny-qwen25vl", {"frames": {"fps": 1.0}, "mode": "base"}, run.frames)
    q1 = store.add_question(s.id, Q1)
    store.add_answer(s.id, run.base, compare_group=q1.id)
    store.add_answer(s.id, run.vreason, compare_group=q1.id)
    store.add_question(s.id, Q2)
    store.add_answer(s.id, run.follow)
    store.add_question(s.id, Q3)
    store.add_answer(s.id, run.cancelled)
    return store.session(s.id)


def test_the_answers_are_real(run):
    assert run.base.mode == "base" and all(c is None for c in run.base.control)
    assert any(c is not None and c.alpha is not None for c in run.vreason.control)  # the controller ran
    assert run.cancelled.stop_reason == "cancelled" and len(run.cancelled.tokens) == 3
    assert len(run.frames) == 4 and run.follow.history[: len(run.base.history)] == run.base.history


def test_default_location_is_the_user_data_directory(tmp_path, monkeypatch):
    if sys.platform != "linux":
        pytest.skip("XDG_DATA_HOME decides the location on Linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_db_path() == tmp_path / "data" / "vreason" / "chats.db"
    assert (tmp_path / "data" / "vreason").is_dir()
    ChatStore().close()
    assert (tmp_path / "data" / "vreason" / "chats.db").stat().st_mode & 0o777 == 0o600  # private conversations


@pytest.mark.parametrize("size", [1000, (1 << 20) + 7, 3 << 20])
def test_fingerprint_is_size_and_both_ends(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "v").write_bytes(data)
    mib = 1 << 20
    expected = hashlib.sha256(f"{size}:".encode() + data[:mib] + data[-mib:]).hexdigest()
    assert video_fingerprint(tmp_path / "v") == expected


def test_a_saved_conversation_comes_back_exactly_after_reopening(tmp_path, run):
    path = tmp_path / "chats.db"
    with ChatStore(path) as store:
        s = conversation(store, run)
    with ChatStore(path) as store:
        assert store.session(s.id) == s
        assert s.title == Q1 and s.video_path == str(run.clip.resolve()) and s.frames == run.frames
        assert s.video_hash == video_fingerprint(run.clip) and s.settings["frames"] == {"fps": 1.0}
        msgs = store.messages(s.id)
    assert [m.role for m in msgs] == ["user", "assistant", "assistant", "user", "assistant", "user", "assistant"]
    assert [m.seq for m in msgs] == list(range(1, 8))
    assert [m.text for m in msgs if m.role == "user"] == [Q1, Q2, Q3]
    saved = [m for m in msgs if m.role == "assistant"]
    questions = [Q1, Q1, Q2, Q3]
    for m, answer, question in zip(saved, [run.base, run.vreason, run.follow, run.cancelled], questions):
        assert (m.mode, m.text, m.reasoning, m.answer) == (answer.mode, answer.text, answer.reasoning, answer.answer)
        assert m.stop_reason == answer.stop_reason and m.n_tokens == len(answer.tokens)
        assert m.timings == answer.timings and m.settings == answer.settings and m.history == list(answer.history)
        assert m.telemetry["entropy"] == answer.entropy  # exactly, not rounded
        assert m.telemetry["ema"] == [None if c is None else c.ema for c in answer.control]
        assert m.telemetry["alpha"] == [None if c is None else c.alpha for c in answer.control]
        assert m.telemetry["summary"] == summarize(answer).as_dict()
        # the Answer rebuilt from the row is the one saved, minus what is not stored (the prompt's token ids)
        unsaved = {"prompt_tokens": [], "n_media_tokens": 0, "n_video_tokens_kept": None}
        assert m.as_answer(question) == replace(answer, **unsaved)
    assert saved[-1].stop_reason == "cancelled"


def test_a_resumed_conversation_continues_like_the_original(tmp_path, run):
    path = tmp_path / "chats.db"
    with ChatStore(path) as store:
        s = store.create_session(run.clip, "tiny", {}, run.frames)
        store.add_question(s.id, Q1)
        store.add_answer(s.id, run.base)
    with ChatStore(path) as store:  # "vreason chat --resume" after a restart
        saved = store.messages(store.latest().id)[-1].as_answer(Q1)
    again = run.engine.ask(run.encoding, Q2, GEN, "base", follow_up=saved).result()
    assert again.tokens == run.follow.tokens and again.history == run.follow.history


def test_sessions_are_listed_by_last_activity(store, run):
    assert store.latest() is None and store.sessions() == []
    a = store.create_session(None, "m", {}, [])
    b = store.create_session(None, "m", {}, [])
    assert [s.id for s in store.sessions()] == [b.id, a.id] and store.latest().id == b.id
    store.add_question(a.id, "  a long question " + "word " * 30)
    assert [s.id for s in store.sessions()] == [a.id, b.id] and store.latest().id == a.id
    title = store.session(a.id).title
    assert title.startswith("a long question word") and title.endswith("…") and len(title) == 60
    store.add_question(a.id, "second")
    assert store.session(a.id).title == title  # the first question names the session
    store.add_answer(b.id, run.base)
    assert store.latest().id == b.id and [s.id for s in store.sessions(limit=1)] == [b.id]
    assert store.session(b.id).updated_at >= store.session(a.id).updated_at > a.created_at


def test_video_status_says_when_the_video_moved_or_changed(store, run, tmp_path):
    video = tmp_path / "copy.mp4"
    video.write_bytes(run.clip.read_bytes())
    s = conversation(store, run, video)
    assert s.video_status() == "ok"
    moved = tmp_path / "moved.mp4"
    video.rename(moved)
    assert store.session(s.id).video_status() == "missing"
    assert len(store.messages(s.id)) == 7  # the conversation is still there to show
    moved.rename(video)
    assert store.session(s.id).video_status() == "ok"
    data = bytearray(video.read_bytes())
    data[-10] ^= 0xFF  # same size, last MiB differs
    video.write_bytes(bytes(data))
    assert store.session(s.id).video_status() == "changed"
    s = store.update_session(s.id, video=video)  # the user accepts the new content
    assert s.video_status() == "ok" and s.model == "tiny-qwen25vl" and s.frames == run.frames
    assert store.create_session(None, "m", {}, []).video_status() == "none"
    with pytest.raises(UserError, match="cannot read the video .*moved.mp4"):
        store.update_session(s.id, video=moved)


def test_compare_groups_and_deletion(store, run, tmp_path):
    s = conversation(store, run)
    other = conversation(store, run)
    msgs = store.messages(s.id)
    q1 = msgs[0]
    assert [m.compare_group for m in msgs] == [None, q1.id, q1.id, None, None, None, None]
    assert {m.mode for m in msgs if m.compare_group == q1.id} == {"base", "vreason"}
    store.delete_session(s.id)
    with pytest.raises(UserError, match=f"no chat session {s.id}"):
        store.messages(s.id)
    assert [x.id for x in store.sessions()] == [other.id] and len(store.messages(other.id)) == 7
    store.delete_session(s.id)  # already gone: nothing to do
    # the messages went with the session: none are left orphaned
    assert sql(store.path, f"SELECT count(*) FROM messages WHERE session_id = {s.id}") == [(0,)]
    with pytest.raises(UserError, match="no chat session 999"):
        store.add_question(999, "hello?")


# The schema of version 1, frozen as vreason wrote it: the upgrade must work on files that exist out there.
V1_SCHEMA = """
PRAGMA application_id = 1448231752;
CREATE TABLE sessions (id INTEGER PRIMARY KEY, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    title TEXT NOT NULL DEFAULT '', video_path TEXT, video_hash TEXT, model TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}', frames TEXT NOT NULL DEFAULT '[]');
CREATE INDEX sessions_by_update ON sessions (updated_at);
CREATE TABLE messages (id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    created_at REAL NOT NULL, role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), text TEXT NOT NULL,
    mode TEXT, reasoning TEXT NOT NULL DEFAULT '', answer TEXT NOT NULL DEFAULT '',
    stop_reason TEXT NOT NULL DEFAULT '', n_tokens INTEGER NOT NULL DEFAULT 0, timings TEXT NOT NULL DEFAULT '{}',
    reused_encoding INTEGER NOT NULL DEFAULT 0, telemetry TEXT NOT NULL DEFAULT '{}',
    settings TEXT NOT NULL DEFAULT '{}', UNIQUE (session_id, seq));
INSERT INTO sessions VALUES (1, 100.0, 200.0, 'old question', '/nowhere/clip.mp4', 'abc', 'qwen2.5-vl-3b',
    '{"mode": "vreason"}', '[{"index": 0, "timestamp_s": 0.5}]');
INSERT INTO messages VALUES (1, 1, 1, 150.0, 'user', 'old question', NULL, '', '', '', 0, '{}', 0, '{}', '{}');
INSERT INTO messages VALUES (2, 1, 2, 160.0, 'assistant', '<answer>yes</answer>', 'base', '', 'yes', 'eos', 2,
    '{"decode_s": 0.5}', 1, '{"entropy": [1.5, 0.25], "summary": {"n_tokens": 2}}', '{"media_key": "k"}');
PRAGMA user_version = 1;
"""


def test_a_version_1_file_is_upgraded_in_place_keeping_its_rows(tmp_path, run):
    path = tmp_path / "v1.db"
    sql(path, V1_SCHEMA)
    with ChatStore(path) as store:
        assert store.SCHEMA_VERSION == 2
        s = store.latest()
        assert (s.id, s.title, s.model, s.settings, s.frames) == (
            1,
            "old question",
            "qwen2.5-vl-3b",
            {"mode": "vreason"},
            [{"index": 0, "timestamp_s": 0.5}],
        )
        assert s.video_status() == "missing"
        old = store.messages(1)
        assert [(m.role, m.text) for m in old] == [("user", "old question"), ("assistant", "<answer>yes</answer>")]
        assert (old[1].answer, old[1].telemetry["entropy"], old[1].reused_encoding) == ("yes", [1.5, 0.25], True)
        assert (old[1].compare_group, old[1].history, old[1].notices) == (None, [], [])  # the new columns
        # and the old row reads back as an answer: no controller columns then, so no states
        assert old[1].as_answer("old question") == Answer(
            "base", "old question", "<answer>yes</answer>", answer="yes", stop_reason="eos", entropy=[1.5, 0.25],
            control=[None, None], timings={"decode_s": 0.5}, reused_encoding=True, settings={"media_key": "k"},
        )  # fmt: skip
        store.add_answer(1, run.vreason, compare_group=1)  # and the new columns take values
        assert store.messages(1)[-1].compare_group == 1
    assert sql(path, "PRAGMA user_version") == [(2,)] and sql(path, "PRAGMA integrity_check") == [("ok",)]


def test_an_upgrade_killed_half_way_leaves_the_old_file(tmp_path):
    path = tmp_path / "v1.db"
    sql(path, V1_SCHEMA)
    result = _killed_at(
        path, "ALTER TABLE messages ADD COLUMN history", "sqlite3.connect = armed_connect\nChatStore(db)"
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert sql(path, "PRAGMA user_version") == [(1,)]
    assert "compare_group" not in {r[1] for r in sql(path, "PRAGMA table_info(messages)")}
    with ChatStore(path) as store:  # and the next start upgrades it
        assert store.messages(1)[0].history == []


def test_a_file_from_a_newer_vreason_is_refused_untouched(tmp_path):
    path = tmp_path / "chats.db"
    ChatStore(path).close()
    sql(path, "PRAGMA user_version = 7")
    with pytest.raises(
        UserError, match=r"chats\.db was written by a newer vreason \(chat schema 7; this one reads up to 2\)"
    ):
        ChatStore(path)
    assert sql(path, "PRAGMA user_version") == [(7,)]


def test_files_that_are_not_chat_databases_are_refused_with_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not a database\n" * 200)
    with pytest.raises(UserError, match=r"notes\.txt is not a vreason chat database") as err:
        ChatStore(text)
    assert "\n" not in str(err.value) and text.read_text().startswith("these are my notes")
    other = tmp_path / "other.db"
    sql(other, "CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(UserError, match=r"other\.db is an SQLite database of another program"):
        ChatStore(other)
    with pytest.raises(UserError, match="cannot open the chat database .*no-such-dir"):
        ChatStore(tmp_path / "no-such-dir" / "chats.db")


def _killed_at(db: Path, statement: str, then: str, answer: Path | None = None) -> subprocess.CompletedProcess:
    """Run `then` in a new process that SIGKILLs itself when SQLite starts `statement` (kill -9 mid-write)
    on a connection armed with `kill_at` (or made by `armed_connect`)."""
    script = f"""
import os, pickle, signal, sqlite3, sys
from pathlib import Path
from vreason_local.chat.store import ChatStore

def kill_at(sql):
    if sql.strip().startswith({statement!r}):
        os.kill(os.getpid(), signal.SIGKILL)

def armed_connect(*args, real_connect=sqlite3.connect, **kwargs):
    db = real_connect(*args, **kwargs)
    db.set_trace_callback(kill_at)
    return db

db = Path(sys.argv[1])
{then}
"""
    args = [sys.executable, "-c", script, str(db)] + ([str(answer)] if answer else [])
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_process_killed_while_saving_an_answer_loses_only_that_answer(tmp_path, run):
    path = tmp_path / "chats.db"
    with ChatStore(path) as store:
        s = conversation(store, run)
    big = replace(run.vreason, text=run.vreason.text + "x" * (8 << 20))  # more than SQLite's page cache holds,
    pickled = tmp_path / "answer.pickle"  # so the uncommitted answer is partly written to the WAL file
    pickled.write_bytes(pickle.dumps(big))
    then = f"""
store = ChatStore(db)
store.add_question({s.id}, "Will this survive?")
answer = pickle.loads(Path(sys.argv[2]).read_bytes())
store._db.set_trace_callback(kill_at)
store.add_answer({s.id}, answer)
"""
    result = _killed_at(path, "COMMIT", then, pickled)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert Path(f"{path}-wal").stat().st_size > 4 << 20  # the killed transaction had reached the disk
    assert sql(path, "PRAGMA integrity_check") == [("ok",)]
    with ChatStore(path) as store:
        msgs = store.messages(s.id)
        assert len(msgs) == 8 and (msgs[-1].role, msgs[-1].text) == ("user", "Will this survive?")
        store.add_answer(s.id, run.vreason)  # and the file takes new writes
        assert store.messages(s.id)[-1].answer == run.vreason.answer


def test_markdown_export_has_questions_answers_frames_and_telemetry(store, run):
    s = conversation(store, run)
    # a model's answer with a reasoning part and characters that Markdown tables need escaped
    thought = replace(run.vreason, reasoning="Frame 2 | frame 3:\nthe door opens.", answer="It opens | wide.")
    store.add_question(s.id, "Why?")
    q = store.add_question(s.id, "Compare again?")
    store.add_answer(s.id, thought, compare_group=q.id)
    store.add_answer(s.id, run.base, compare_group=q.id)
    md = session_markdown(store, s.id)
    assert md.startswith(f"# {Q1}\n")
    for q in (Q1, Q2, Q3, "Why?", "Compare again?"):
        assert f"> {q}\n" in md
    assert f"`{run.clip.resolve()}`" in md and "unchanged" in md and "`tiny-qwen25vl`" in md
    assert "- **Frames (4), seconds:** " + ", ".join(f"{f['timestamp_s']:.2f}" for f in run.frames) + "\n" in md
    assert md.count("**Compared answers**") == 2 and md.count("**Answer**") == 2  # Q2 and Q3 alone
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert all(len(re.findall(r"(?<!\\)\|", line)) == 4 for line in table)  # every row has 3 cells
    assert table[0] == "| | base | vreason |" and "| | vreason | base |" in table
    mean = [f"{summarize(a).mean_entropy:.3f} nats" for a in (run.base, run.vreason)]
    assert f"| mean entropy | {mean[0]} | {mean[1]} |" in table
    assert f"| answer | It opens \\| wide. | {run.base.answer.strip() or '-'} |" in table
    assert f"| controller updates | - | {summarize(run.vreason).n_updates} |" in table
    assert "<details><summary>Reasoning (vreason)</summary>\n\nFrame 2 | frame 3:\nthe door opens.\n\n</details>" in md
    follow = summarize(run.follow)
    assert (
        f"*Telemetry:* mean entropy {follow.mean_entropy:.3f} nats; max entropy {follow.max_entropy:.3f} nats\n" in md
    )
    assert f"base · tokens {len(run.follow.tokens)} · decode time {run.follow.timings['decode_s']:.2f} s" in md
    assert f"tokens/s {run.follow.timings['tokens_per_s']:.1f} · stop {run.follow.stop_reason})" in md
    assert "stop cancelled (partial answer))" in md and f"{run.follow.answer.strip()}\n" in md


def test_json_export_round_trips_with_per_token_telemetry(store, run, tmp_path):
    s = conversation(store, run)
    data = session_json(store, s.id)
    path = export_session(store, s.id, tmp_path / "chat.json")
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert loaded.pop("exported_at") >= data.pop("exported_at") and loaded == json.loads(json.dumps(data))
    assert loaded["schema_version"] == 2 and loaded["session"]["video_status"] == "ok"
    assert loaded["session"]["frames"] == run.frames
    answers = [m for m in loaded["messages"] if m["role"] == "assistant"]
    assert [m["telemetry"]["entropy"] for m in answers] == [
        a.entropy for a in (run.base, run.vreason, run.follow, run.cancelled)
    ]
    assert answers[1]["telemetry"]["dv_norm"] == [None if c is None else c.dv_norm for c in run.vreason.control]
    assert answers[1]["compare_group"] == loaded["messages"][0]["id"]
    md = export_session(store, s.id, tmp_path / "chat.md")
    assert md.read_text(encoding="utf-8") == session_markdown(store, s.id)
    with pytest.raises(UserError, match=r"chat\.txt: the file name must end in \.md .* or \.json"):
        export_session(store, s.id, tmp_path / "chat.txt")
    with pytest.raises(UserError, match="cannot write .*missing-dir"):
        export_session(store, s.id, tmp_path / "missing-dir" / "chat.md")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".chat")) == []  # no temporary left


def test_every_summary_figure_has_an_export_label():
    """A figure added to telemetry.Summary is exported with a label, not silently left out."""
    from dataclasses import fields

    from vreason_local.chat.export import SUMMARY_LABELS
    from vreason_local.telemetry import Summary

    assert set(SUMMARY_LABELS) == {f.name for f in fields(Summary)} - {"n_tokens"}


def _set_aside(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("chats.db.damaged-*"))


def test_a_file_with_damaged_pages_is_moved_aside_and_a_new_one_started(tmp_path, run):
    path = tmp_path / "chats.db"
    with ChatStore(path) as store:
        for _ in range(6):  # several pages of messages, so that the middle ones are b-tree pages of rows
            s = conversation(store, run)
    page = sql(path, "PRAGMA page_size")[0][0]
    n_pages = path.stat().st_size // page
    assert n_pages > 8 and sql(path, "PRAGMA quick_check") == [("ok",)]
    with open(path, "r+b") as f:  # overwrite pages in the middle of the file, as a failing disk would
        f.seek(n_pages // 2 * page)
        f.write(bytes(range(256)) * (3 * page // 256))
    damaged = path.read_bytes()
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):  # SQLite itself sees the damage
        sql(path, "SELECT count(*), sum(length(telemetry)) FROM messages")

    with ChatStore(path) as store:
        (kept,) = _set_aside(tmp_path)
        assert kept.read_bytes() == damaged  # moved, byte for byte: nothing deleted, nothing rewritten
        assert store.damaged is not None and "\n" not in store.damaged
        assert f"moved to {kept}" in store.damaged and "kept, not deleted" in store.damaged
        assert store.sessions() == []  # a new, working file at the old path
        store.add_question(store.create_session(None, "m", {}, []).id, "Still works?")
        assert sql(path, "PRAGMA quick_check") == [("ok",)] and s.id > 1
    with ChatStore(path) as store:  # the new file is sound: nothing more is moved aside
        assert store.damaged is None and len(_set_aside(tmp_path)) == 1 and len(store.sessions()) == 1


@pytest.mark.parametrize(("table", "column"), [("messages", "telemetry"), ("sessions", "settings")])
def test_a_json_column_that_does_not_parse_is_found_at_open(tmp_path, run, table, column):
    path = tmp_path / "chats.db"
    with ChatStore(path) as store:
        s = conversation(store, run)
        assert json.loads(sql(path, f"SELECT {column} FROM {table} LIMIT 1")[0][0]) is not None
        sql(path, f"UPDATE {table} SET {column} = '{{\"entropy\": [0.5, ' WHERE id = (SELECT max(id) FROM {table})")
        # damaged while open: reading it is one clear error naming the row, not a JSONDecodeError
        with pytest.raises(UserError, match=f"damaged {column} in row"):
            store.messages(s.id) if table == "messages" else store.sessions()
    with ChatStore(path) as store:
        (kept,) = _set_aside(tmp_path)
        assert f"a {table[:-1]} (" in store.damaged and "JSON that does not parse" in store.damaged
        assert store.sessions() == [] and sql(kept, f"SELECT count(*) FROM {table}")[0][0] >= 1


def test_a_branch_copies_the_messages_before_a_question_with_their_compare_group(store, run):
    s = conversation(store, run)
    rows = store.messages(s.id)
    q3 = [m for m in rows if m.role == "user"][2]
    branch = store.branch_session(s.id, q3.id)
    copied = store.messages(branch.id)
    assert branch.id != s.id and branch.title.endswith("(branch)") and branch.video_hash == s.video_hash
    assert branch.frames == s.frames and branch.settings == s.settings and branch.model == s.model
    assert len(copied) == 5 and [m.seq for m in copied] == [1, 2, 3, 4, 5]
    strip = {"id", "session_id", "created_at", "compare_group"}
    assert [{k: v for k, v in vars(m).items() if k not in strip} for m in copied] == [
        {k: v for k, v in vars(m).items() if k not in strip} for m in rows[:5]
    ]
    assert copied[1].compare_group == copied[2].compare_group == copied[0].id  # the copy's own question
    assert copied[4].compare_group is None and store.messages(s.id) == rows  # the original is untouched

"""One answer schema: `Answer.to_dict`/`from_dict`, and the three outputs built from it.

An answer is written by `vreason run --json`, by the evaluator's results rows and by the chat store. Each is
the answer's record (or a documented projection of it) plus that output's own fields, so the same answer
carries the same values in all three, and every one of them reads back as an `Answer`. Answers come from the
real engine on a generated tiny model (random weights); the hand-written records are the layouts written
before the schema had a number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path

import pytest

from vreason_local.chat.export import session_json
from vreason_local.chat.store import ChatStore
from vreason_local.clips import make_clip
from vreason_local.decoding import decoding_for
from vreason_local.engine import Engine, GenerationSettings
from vreason_local.errors import UserError
from vreason_local.evaluate.items import Item
from vreason_local.evaluate.runner import EvalSettings, answer_row, error_row
from vreason_local.events import ANSWER_SCHEMA, Answer, ControlState
from vreason_local.media import LoadedMedia, load_video
from vreason_local.telemetry import summarize
from vreason_local.video import FrameSampling
from vreason_local.vreason import VReasonSettings

GEN = GenerationSettings(max_tokens=8, stop_at_answer=False)
STRONG = VReasonSettings(every=1, lr=0.05)  # large enough that the values really move on a tiny model
FRAMES = FrameSampling(fps=2.0, max_frames=4)
QUESTION = "What happens in the clip?"
ROUNDING = 5e-7  # entropies in run --json and eval rows are rounded to 6 places

FULL = ControlState(
    ema=2.5,
    peak=3.25,
    alpha=-1,
    dv_norm=0.125,
    update_ms=4.5,
    selfcheck=1e-6,
    head_rows=512,
    head_bound=math.inf,
    written_ratio=0.75,
    skipped=True,
)
HAND = Answer(
    mode="vreason",
    question="Why?",
    text="<think>a</think><answer>b</answer>",
    reasoning="a",
    answer="b",
    stop_reason="answer",
    tokens=[5, 6, 7],
    token_text=["<think>a", "</think>", "<answer>b</answer>"],
    entropy=[0.1, 0.2, 0.30000000000000004],
    control=[FULL, None, ControlState(1.0, 1.0, None, 0.0, None, None)],
    timings={"decode_s": 0.5, "tokens_per_s": 6.0},
    prompt_tokens=[1, None, None, 2],
    n_media_tokens=2,
    n_video_tokens_kept=1,
    reused_encoding=True,
    settings={"media_key": "k", "generation": {"max_tokens": 3, "sampling": {"seed": 7}}, "n_ctx": 512},
    notices=["a notice"],
    history=(2, 5, 6, 7),
)


def json_trip(record: dict) -> dict:
    return json.loads(json.dumps(record))


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("schema") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))


@pytest.fixture(scope="module")
def real(tiny, clip) -> Iterator[tuple[Engine, LoadedMedia, dict[str, Answer]]]:
    with Engine(tiny.model_path, tiny.mmproj_path) as engine:
        loaded = load_video(clip, FRAMES, engine.projector.patch_size)
        enc = engine.encode(loaded.media).result()
        answers = {mode: engine.ask(enc, QUESTION, GEN, decoding_for(mode, STRONG)).result()
                   for mode in ("base", "vreason", "lite")}  # fmt: skip
        yield engine, loaded, answers


def test_every_field_round_trips_exactly(real):
    record = HAND.to_dict()
    assert set(record) == {f.name for f in fields(Answer)} | {"schema"}  # a new field must join the schema
    assert record["schema"] == ANSWER_SCHEMA == 1
    assert record["control"] == [
        {"ema": 2.5, "peak": 3.25, "alpha": -1, "dv_norm": 0.125, "update_ms": 4.5, "selfcheck": 1e-6,
         "head_rows": 512, "head_bound": math.inf, "written_ratio": 0.75, "skipped": True},
        None,
        {"ema": 1.0, "peak": 1.0, "alpha": None, "dv_norm": 0.0, "update_ms": None, "selfcheck": None,
         "head_rows": None, "head_bound": None, "written_ratio": None, "skipped": False},
    ]  # fmt: skip
    assert record["history"] == [2, 5, 6, 7] and record["n_media_tokens"] == 2
    assert Answer.from_dict(record) == HAND and Answer.from_dict(json_trip(record)) == HAND
    # the record is a copy: changing it leaves the answer alone
    record["tokens"].append(9)
    record["settings"]["generation"]["sampling"]["seed"] = 8
    record["control"][0]["ema"] = 0.0
    assert HAND.tokens == [5, 6, 7] and HAND.settings["generation"]["sampling"]["seed"] == 7

    _, _, answers = real
    assert any(c is not None and c.alpha is not None for c in answers["vreason"].control)  # real controller states
    assert answers["lite"].n_video_tokens_kept is not None and answers["base"].n_media_tokens > 0
    for answer in answers.values():
        assert Answer.from_dict(json_trip(answer.to_dict())) == answer


def test_records_without_a_schema_number_still_read():
    # a chat message as exported before the controller's later figures existed: per-token columns under
    # "telemetry", no head_rows/head_bound/written_ratio/skipped columns, mode null
    message = {
        "id": 2, "session_id": 1, "seq": 2, "created_at": 1.0, "role": "assistant", "text": "t", "mode": None,
        "reasoning": "", "answer": "t", "stop_reason": "eos", "compare_group": None, "n_tokens": 2,
        "timings": {"decode_s": 0.5}, "reused_encoding": True, "history": [4, 5], "settings": {"media_key": "k"},
        "notices": [],
        "telemetry": {"tokens": [4, 5], "token_text": ["a", "b"], "entropy": [1.5, 0.25], "ema": [1.5, None],
                      "peak": [1.5, None], "alpha": [None, None], "dv_norm": [0.0, None], "update_ms": [None, None],
                      "selfcheck": [None, None], "summary": {"n_tokens": 2}},
    }  # fmt: skip
    old = Answer.from_dict(message)
    assert (old.mode, old.tokens, old.entropy, old.history, old.reused_encoding) == (
        "base",
        [4, 5],
        [1.5, 0.25],
        (4, 5),
        True,
    )
    assert old.control == [ControlState(1.5, 1.5, None, 0.0, None, None), None]  # later figures at their defaults
    # an eval row as written today: no controller columns, n_media_tokens under its old name
    row = {"id": "q", "mode": "lite", "question": "Which?", "answer": "A", "text": "<answer>A</answer>",
           "stop_reason": "answer", "n_tokens": 1, "tokens": [3], "entropy": [0.5], "reused_encoding": False,
           "n_video_tokens": 96, "n_video_tokens_kept": 48, "timings": {"answer_s": 1.0}, "telemetry": {"n_tokens": 1},
           "settings": {"frames": {"count": 4}}, "notices": [], "warnings": [], "error": None}  # fmt: skip
    back = Answer.from_dict(row)
    assert (back.n_media_tokens, back.n_video_tokens_kept, back.control) == (96, 48, [None])
    assert (back.mode, back.question, back.answer, back.tokens) == ("lite", "Which?", "A", [3])
    # today's record, with its number taken away, is the same answer
    unnumbered = HAND.to_dict()
    del unnumbered["schema"]
    assert Answer.from_dict(unnumbered) == HAND
    with pytest.raises(UserError, match=r"answer schema 2, newer than this vreason reads \(1\): update vreason"):
        Answer.from_dict({**HAND.to_dict(), "schema": 2})


def test_an_eval_row_and_a_chat_message_agree_on_one_answer(real, clip, tmp_path):
    _, loaded, answers = real
    answer = answers["lite"]
    item = Item("q1", clip, QUESTION, "free-form", "a ball", source="data.jsonl:1")
    settings = EvalSettings(GEN, FRAMES, STRONG)
    row = json_trip(answer_row(item, answer, loaded, settings, answer_s=1.25, sampling_s=0.5))
    with ChatStore(tmp_path / "chats.db") as store:
        session = store.create_session(clip, "tiny", {}, loaded.media.frame_times())
        store.add_question(session.id, QUESTION)
        message = store.add_answer(session.id, answer)
        exported = [m for m in session_json(store, session.id)["messages"] if m["role"] == "assistant"][0]

    # the fields both write, against the answer itself
    for name in ("mode", "text", "answer", "stop_reason", "reused_encoding", "notices"):
        assert row[name] == getattr(message, name) == getattr(answer, name), name
    assert row["n_tokens"] == message.n_tokens == len(answer.tokens) == 8
    assert row["tokens"] == message.telemetry["tokens"] == answer.tokens
    assert message.telemetry["entropy"] == answer.entropy  # the store keeps them exact
    assert row["entropy"] == pytest.approx(answer.entropy, abs=ROUNDING)
    assert row["timings"] == {**message.timings, "sampling_s": 0.5, "answer_s": 1.25}
    assert message.timings == answer.timings
    for name in ("generation", "vreason", "n_ctx"):
        assert row["settings"][name] == message.settings[name] == answer.settings[name], name
    assert row["telemetry"] == message.telemetry["summary"] == summarize(answer).as_dict()
    assert row["n_video_tokens"] == answer.n_media_tokens and row["n_video_tokens_kept"] == answer.n_video_tokens_kept
    frames = row["settings"]["frames"]
    assert (frames["count"], frames["width"], frames["height"], frames["fps"]) == (4, 224, 168, 2.0)

    # each reads back as the answer, less what it does not keep
    stored = message.as_answer(QUESTION)
    assert Answer.from_dict(exported) == replace(stored, question="")  # the export's message is a record too
    assert stored == replace(answer, prompt_tokens=[], n_media_tokens=0, n_video_tokens_kept=None)
    from_row = Answer.from_dict(row)
    assert from_row.tokens == stored.tokens and from_row.entropy == pytest.approx(stored.entropy, abs=ROUNDING)
    assert from_row.control == [None] * 8 and from_row.question == QUESTION  # rows keep no controller states
    assert (from_row.n_media_tokens, from_row.n_video_tokens_kept) == (answer.n_media_tokens, 48)

    failed = error_row(item, "lite", settings, ValueError("no frames"))
    assert set(failed) == set(row) and failed["error"] == "ValueError: no frames"
    assert {k for k, v in failed.items() if v is None} >= {"answer", "tokens", "entropy", "n_video_tokens", "score"}
    assert failed["settings"]["frames"] == {
        **FRAMES_REQUESTED,
        "min_pixels": FRAMES.min_pixels,
        "factor": FRAMES.factor,
    }


FRAMES_REQUESTED = {"fps": 2.0, "min_frames": 4, "max_frames": 4, "start_s": None, "end_s": None,
                    "max_pixels": 336 * 336, "token_budget": None}  # fmt: skip
RUN_JSON_KEYS = {
    "model", "model_path", "random_weights", "mode", "question", "media", "prompt_tokens", "n_prompt_tokens",
    "n_video_tokens", "n_video_tokens_kept", "frames", "text", "reasoning", "answer", "stop_reason", "n_tokens",
    "tokens", "token_text", "entropy", "ema", "peak", "alpha", "dv_norm", "update_ms", "selfcheck", "head_rows",
    "head_bound", "written_ratio", "skipped", "controller", "settings", "warnings", "notices", "timings",
    "encoding_source",
}  # fmt: skip


def test_run_json_is_the_record_plus_the_runs_own_fields(real, tiny, clip, vreason):
    engine, loaded, _ = real
    args = ["run", "--json", "--mode", "vreason", "--every", "1", "--lr", "0.05", "--video", str(clip), "--fps", "2",
            "--max-frames", "4", "--model", str(tiny.model_path), "--mmproj", str(tiny.mmproj_path),
            "--max-tokens", "8", "--threads", "1", "-q", QUESTION]  # fmt: skip
    rc, out, err = vreason(args)
    assert rc == 0, err
    obj = json.loads(out)
    assert set(obj) == RUN_JSON_KEYS
    assert obj["settings"]["frames"] == {**FRAMES_REQUESTED, "count": 4, "width": 224, "height": 168,
                                         "start_s": 0.0, "end_s": 4.0}  # fmt: skip
    assert obj["frames"] == [{"index": f.index, "timestamp_s": round(f.timestamp_s, 3)} for f in loaded.media.frames]

    # the same question asked here, on the engine: the JSON reads back as that answer
    alone = engine.ask(
        loaded.media, QUESTION, replace(GEN, stop_at_answer=True), decoding_for("vreason", STRONG)
    ).result()
    back = Answer.from_dict(obj)
    assert (back.mode, back.question, back.tokens, back.token_text) == (
        "vreason",
        QUESTION,
        alone.tokens,
        alone.token_text,
    )
    assert back.prompt_tokens == alone.prompt_tokens and back.n_media_tokens == alone.n_media_tokens == 96
    assert back.entropy == pytest.approx(alone.entropy, abs=ROUNDING)
    assert [None if c is None else c.alpha for c in back.control] == [
        None if c is None else c.alpha for c in alone.control
    ]
    assert sum(c is not None and c.alpha is not None for c in back.control) == obj["controller"]["n_updates"] > 0

"""`vreason eval --rescore RUN`: scores, summary.json and report.md again from a finished run's stored replies.

The run folder is written by hand (run.json and a results.jsonl whose rows hold what a real run's rows hold:
the item's answer, options, categories, rule, prompt and the model's whole output), so no model is loaded,
exactly as for a user who rescores a run made elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROW = {
    "source": "q.json:1", "video": "v.mp4", "start": None, "end": None, "options": [], "stop_reason": "eos",
    "n_tokens": 4, "tokens": [], "entropy": [0.3], "reused_encoding": False, "n_video_tokens": 8,
    "n_video_tokens_kept": 8, "notices": [], "timings": {"answer_s": 1.0, "encode_s": 0.1, "prefill_media_s": 0.1},
    "telemetry": {}, "settings": {}, "warnings": [], "error": None,
}  # fmt: skip


def _row(i: str, mode: str, text: str, **fields) -> dict:
    """A row as the runner writes it, with deliberately stale scores (rescoring must not read them)."""
    row = {**ROW, "id": i, "mode": mode, "text": text, "answer": text, "extracted": "stale", "correct": False}
    return {**row, "score": 0.123, **fields}


def _vsi(i: str, mode: str, truth: float, text: str, qtype: str = "object_counting") -> dict:
    """VSI-Bench numeric (thinking-in-space@51e089c: lmms_eval/tasks/vsibench/utils.py: MRA with <=)."""
    return _row(i, mode, text, dataset="vsibench", type="numeric", question="How many?", truth=truth,
                categories={"question_type": qtype}, rule="vsibench:na",
                prompt="These are frames of a video.\nHow many?\nPlease answer the question using a single word or phrase.")  # fmt: skip


def _write(path: Path, rows: list[dict], scoring: str | None = "reference") -> Path:
    path.mkdir()
    run = {"created": "2026-12-05", "dataset": "/data/vsi.json", "dataset_format": "vsibench", "dataset_sha256": "0",
           "item_ids": list(dict.fromkeys(r["id"] for r in rows)), "model": {"name": "m", "path": "m.gguf"},
           "skipped": [], "options": {"modes": ["base", "vreason"]}}  # fmt: skip
    if scoring:
        run["scoring"] = scoring
    (path / "run.json").write_text(json.dumps(run))
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


def test_rescore_switches_scoring_from_the_stored_replies(tmp_path, vreason):
    rows = [
        _vsi("a", "base", 4.0, "5"),  # reference MRA (<=) 0.6, lenient (<) 0.5: issue 21's example
        _vsi("a", "vreason", 4.0, "5 objects"),  # reference reads the first word: 5 -> 0.6
        _vsi("b", "base", 20.0, "21"),  # reference 1.0, lenient 0.9
        _vsi("b", "vreason", 20.0, "I count 21"),  # reference: "I" is no number -> 0; lenient: the last number, 0.9
        {**_vsi("c", "base", 2.0, ""), "error": "RuntimeError: boom", "text": None, "score": None},  # failed: kept
        _vsi("c", "vreason", 2.0, "3"),  # reference 0.1, lenient 0.0
    ]
    run = _write(tmp_path / "run", rows)
    rc, out, err = vreason(["eval", "--rescore", str(run)])
    assert rc == 0, err
    got = {(r["id"], r["mode"]): r for r in _read(run)}
    expected = {
        ("a", "base"): 0.6,
        ("a", "vreason"): 0.6,
        ("b", "base"): 1.0,
        ("b", "vreason"): 0.0,
        ("c", "vreason"): 0.1,
    }
    for key, value in expected.items():
        assert got[key]["score"] == pytest.approx(value) and got[key]["scoring"] == "reference"
        assert got[key]["reference"]["score"] == pytest.approx(value)
    assert got[("b", "vreason")]["lenient"]["score"] == pytest.approx(0.9)
    assert got[("c", "base")] == rows[4]  # a failed answer is left exactly as it was
    assert [(r["id"], r["mode"]) for r in _read(run)] == [(r["id"], r["mode"]) for r in rows]  # order kept
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"]["scoring"] == "reference"
    # VSI-Bench's overall: one question type here, so the mean of its rows' MRA
    assert summary["reference"]["vsibench"]["overall"]["base"] == pytest.approx((0.6 + 1.0) / 2)
    assert summary["modes"]["vreason"]["mean_score"] == pytest.approx((0.6 + 0.0 + 0.1) / 3)
    assert "rescored 5 answers" in err and "| base |" in out

    rc, _, err = vreason(["eval", "--rescore", str(run), "--scoring", "lenient"])
    assert rc == 0, err
    got = {(r["id"], r["mode"]): r for r in _read(run)}
    lenient = {
        ("a", "base"): 0.5,
        ("a", "vreason"): 0.5,
        ("b", "base"): 0.9,
        ("b", "vreason"): 0.9,
        ("c", "vreason"): 0.0,
    }
    for key, value in lenient.items():
        assert got[key]["score"] == pytest.approx(value) and got[key]["scoring"] == "lenient"
        assert got[key]["reference"]["score"] == pytest.approx(expected[key])  # still beside it
    meta = json.loads((run / "run.json").read_text())
    assert meta["scoring"] == meta["options"]["scoring"] == "lenient"  # a resume scores new rows alike
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"]["scoring"] == "lenient"
    assert summary["modes"]["base"]["mean_score"] == pytest.approx((0.5 + 0.9) / 2)
    assert "- scoring: lenient" in (run / "report.md").read_text()


def test_rescore_an_old_run_scores_leniently_with_a_note(tmp_path, vreason):
    """Rows from before issue 21 have no rule, categories or prompt: scored leniently, said in one line."""
    old = [
        _row("x", "base", "<answer>B</answer>", dataset="sample", type="multiple-choice", question="Which?",
             options=["red", "green"], truth="B"),
        _row("x", "vreason", "<answer>red</answer>", dataset="sample", type="multiple-choice", question="Which?",
             options=["red", "green"], truth="B"),
    ]  # fmt: skip
    run = _write(tmp_path / "old", old, scoring=None)
    rc, _, err = vreason(["eval", "--rescore", str(run)])
    assert rc == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "2 rows" in notes[0] and "leniently" in notes[0]
    got = {r["mode"]: r for r in _read(run)}
    assert (got["base"]["correct"], got["base"]["extracted"], got["base"]["scoring"]) == (True, "B", "lenient")
    assert (got["vreason"]["correct"], got["vreason"]["extracted"]) == (False, "A")  # the option's text: A
    assert got["base"]["reference"] is None


def test_rescore_refuses_what_is_not_a_finished_run(tmp_path, vreason):
    rc, _, err = vreason(["eval", "--rescore", str(tmp_path)])
    assert rc != 0 and "holds no run" in err and "Traceback" not in err
    empty = _write(tmp_path / "empty", [])
    rc, _, err = vreason(["eval", "--rescore", str(empty)])
    assert rc != 0 and "no answers to rescore" in err
    rc, _, err = vreason(["eval", "--rescore", str(empty), "--report", str(empty)])
    assert rc != 0 and "each run alone" in err


def test_a_real_benchmark_run_keeps_what_rescoring_needs(tiny_model_factory, tmp_path, vreason):
    """`vreason eval` on a VSI-Bench file (its published fields: thinking-in-space@51e089c's vsibench.yaml
    dataset, nyu-visionx/VSI-Bench's rows) with the generated tiny model: rows keep the categories, rule and
    prompt, run.json the scoring and the prompt per rule; a rescore reproduces the rows' scores exactly, and a
    lenient rescore gives the lenient scorer's, computed here from each stored reply."""
    from vreason_local.evaluate.datasets import make_sample
    from vreason_local.evaluate.row_scores import item_from_row
    from vreason_local.evaluate.scoring import score

    tiny = tiny_model_factory("qwen25vl")
    make_sample(tmp_path / "clips", n_videos=1, questions_per_video=1)
    (tmp_path / "arkitscenes").mkdir()
    next((tmp_path / "clips" / "videos").glob("*.mp4")).rename(tmp_path / "arkitscenes" / "scene0.mp4")
    rows = [
        {"id": 1, "dataset": "arkitscenes", "scene_name": "scene0", "question_type": "object_counting",
         "question": "How many chairs are there?", "ground_truth": "4", "options": None},
        {"id": 2, "dataset": "arkitscenes", "scene_name": "scene0", "question_type": "object_rel_direction_easy",
         "question": "Is the door left or right of the bed?", "ground_truth": "A",
         "options": ["A. left", "B. right"]},
    ]  # fmt: skip
    data = tmp_path / "vsibench.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    model = ["--model", str(tiny.model_path), "--mmproj", str(tiny.mmproj_path)]
    args = ["eval", str(data), "--out", str(run), "--modes", "base", "--max-tokens", "4", "--max-frames", "4"]
    rc, _, err = vreason([*args, *model, "--fps", "1", "--threads", "1"])
    assert rc == 0, err
    meta = json.loads((run / "run.json").read_text())
    assert meta["scoring"] == "reference" and set(meta["prompts"]["vsibench"]) == {"vsibench:na", "vsibench:mca"}
    stored = _read(run)
    assert [r["rule"] for r in stored] == ["vsibench:na", "vsibench:mca"]
    assert stored[0]["categories"] == {"question_type": "object_counting"}
    assert meta["prompts"]["vsibench"]["vsibench:na"] == stored[0]["prompt"]
    assert all(r["scoring"] == "reference" and r["error"] is None for r in stored)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["categories"]["vsibench"]["question_type"]) == {"object_counting", "object_rel_direction_easy"}

    assert vreason(["eval", "--rescore", str(run)])[0] == 0
    assert _read(run) == stored  # the same replies, the same scoring: the same rows
    assert vreason(["eval", "--rescore", str(run), "--scoring", "lenient"])[0] == 0
    for row in _read(run):
        expected = score(item_from_row(row), row["text"])
        assert (row["scoring"], row["score"], row["correct"]) == ("lenient", expected.score, expected.correct)

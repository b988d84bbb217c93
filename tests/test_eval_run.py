"""`vreason eval`'s runner, results file and command on the real engine: a generated tiny model (random
weights), the generated sample dataset and a video that does not decode. Nothing is mocked.

What is checked: every row's fields; one encoding per video, reused by every question and mode; answers
that do not depend on what was asked before (each equals the same question asked on a fresh engine); a
failing video recorded with its error while the run goes on; Ctrl-C (stops after the answers that are
complete, exit 130, no cancelled answer written), kill -9 and a half-written last line, each followed by
--resume, giving exactly one row per item and mode; and the command's refusals of bad input.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vreason_local.decoding import decoding_for
from vreason_local.engine import Engine, GenerationSettings
from vreason_local.evaluate.datasets import load_dataset, make_sample
from vreason_local.evaluate.results import ResultsWriter, read_results
from vreason_local.evaluate.runner import EvalSettings, Stop, evaluate_group, group_by_video, run_eval
from vreason_local.evaluate.scoring import score
from vreason_local.events import TokenEvent
from vreason_local.media import load_video
from vreason_local.video import FrameSampling
from vreason_local.vreason import VReasonSettings

MODES = ("base", "vreason", "lite")
FRAMES = FrameSampling(fps=2.0, max_frames=4)
SETTINGS = EvalSettings(GenerationSettings(max_tokens=8), FRAMES, VReasonSettings(every=1, lr=0.05))
TIMEOUT_S = 120
ROW_FIELDS = {
    "id", "mode", "dataset", "source", "video", "start", "end", "type", "question", "options", "truth",
    "answer", "text", "extracted", "correct", "score", "stop_reason", "n_tokens", "tokens", "entropy",
    "reused_encoding", "n_video_tokens", "n_video_tokens_kept", "timings", "telemetry", "settings",
    "notices", "warnings", "error", "categories", "rule", "prompt", "scoring", "reference", "lenient",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The generated sample (2 videos x 3 questions), plus two questions about a file that is not a video,
    placed between them so the run must go on after it."""
    d = tmp_path_factory.mktemp("eval_data")
    rows = make_sample(d, n_videos=2, questions_per_video=3).read_text().splitlines()
    (d / "videos" / "broken.mp4").write_bytes(b"this is not a video, whatever its name says\n" * 20)
    broken = [
        json.dumps({"id": f"broken-{i}", "video": "videos/broken.mp4", "question": "Which?", "answer": "A",
                    "options": ["one", "two"]})
        for i in (1, 2)
    ]  # fmt: skip
    path = d / "data.jsonl"
    path.write_text("\n".join(rows[:3] + broken + rows[3:]) + "\n")
    return path


@pytest.fixture(scope="module")
def engine(tiny):
    with Engine(tiny.model_path, tiny.mmproj_path) as eng:
        yield eng


def test_rows_fields_one_encoding_per_video_and_failures_recorded(engine, tiny, data, tmp_path):
    items = load_dataset(data).items
    with ResultsWriter(tmp_path / "results.jsonl") as writer:
        assert run_eval(engine, items, MODES, SETTINGS, writer) == len(items) * len(MODES)
    rows = read_results(tmp_path / "results.jsonl").rows
    assert [(r["id"], r["mode"]) for r in rows] == [(i.id, m) for g in group_by_video(items) for i in g for m in MODES]
    by_id = {i.id: i for i in items}
    for row in rows:
        assert set(row) == ROW_FIELDS
        if row["id"].startswith("broken"):
            assert row["error"] and "broken.mp4" in row["error"] and row["answer"] is None
            continue
        assert row["error"] is None and row["stop_reason"] == "max_tokens"
        assert row["n_tokens"] == len(row["tokens"]) == len(row["entropy"]) == 8
        t = row["telemetry"]
        assert t["n_tokens"] == 8 and t["mean_entropy"] == pytest.approx(np.mean(row["entropy"]), abs=1e-5)
        assert (t["n_updates"] is None) == (row["mode"] == "base")
        assert (row["settings"]["vreason"] is None) == (row["mode"] == "base")
        assert row["settings"]["frames"]["count"] == 4 and row["n_video_tokens"] > 0
        expected = score(by_id[row["id"]], row["text"])
        assert (row["extracted"], row["correct"], row["score"]) == (
            expected.extracted,
            expected.correct,
            expected.score,
        )
        item = by_id[row["id"]]  # what was asked, and no reference rule for the project's own format: lenient
        assert (row["prompt"], row["rule"], row["categories"]) == (item.prompt(), None, {})
        assert (row["scoring"], row["reference"], row["lenient"]["score"]) == ("lenient", None, expected.score)
        assert row["timings"]["answer_s"] > 0 and "decode_s" in row["timings"]
    for row in rows:  # Lite keeps the higher-norm half of the video tokens
        if row["mode"] == "lite" and row["error"] is None:
            assert row["n_video_tokens_kept"] == row["n_video_tokens"] - row["n_video_tokens"] // 2
    # Encoded once per video: the first answer about it encodes, every other question and mode reuses it.
    answered = [r for r in rows if r["error"] is None]
    videos = list(dict.fromkeys(r["video"] for r in answered))
    assert len(videos) == 2
    for video in videos:
        mine = [r["reused_encoding"] for r in answered if r["video"] == video]
        assert mine == [False] + [True] * (len(mine) - 1)
    # Independent answers: the second question of the first video, asked alone on a fresh engine, in each mode.
    item = items[1]
    with Engine(tiny.model_path, tiny.mmproj_path) as fresh:
        media = load_video(item.video, FRAMES, fresh.projector.patch_size).media
        for mode in MODES:
            alone = fresh.ask(media, item.prompt(), SETTINGS.generation, decoding_for(mode, SETTINGS.vreason)).result()
            row = next(r for r in rows if (r["id"], r["mode"]) == (item.id, mode))
            assert row["tokens"] == alone.tokens and row["text"] == alone.text


def test_a_cancelled_answer_is_not_a_result_and_the_rest_follow(engine, data):
    """Stop while the second answer decodes: one row; asked again skipping what is done: the others, once each."""
    group = group_by_video(load_dataset(data).items)[0]
    stop = Stop()
    seen = []

    def on_event(item, mode, event):
        seen.append((item.id, mode))
        if isinstance(event, TokenEvent) and event.step == 3 and len(set(seen)) == 2:
            stop.cancel()

    first = list(evaluate_group(engine, group, ("base", "vreason"), SETTINGS, stop, on_event=on_event))
    assert [(r["id"], r["mode"]) for r in first] == [(group[0].id, "base")]
    rest = list(evaluate_group(engine, group, ("base", "vreason"), SETTINGS, skip={(group[0].id, "base")}))
    pairs = [(r["id"], r["mode"]) for r in first + rest]
    assert sorted(pairs) == sorted((i.id, m) for i in group for m in ("base", "vreason"))
    assert all(r["stop_reason"] == "max_tokens" for r in first + rest)


# -- the command, as a user runs it ---------------------------------------------------------------------
def _args(tiny, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval", str(data), "--out", str(out), "--model", str(tiny.model_path), "--mmproj", str(tiny.mmproj_path),
        "--fps", "2", "--max-frames", "4", "--threads", "1", *extra,
    ]  # fmt: skip


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vreason_local.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _interrupt_after_first_row(p: subprocess.Popen, results: Path, sig: int, before: int = 0) -> tuple[int, str]:
    deadline = time.monotonic() + TIMEOUT_S
    while _lines(results) <= before:
        assert p.poll() is None, p.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    p.send_signal(sig)
    _, err = p.communicate(timeout=TIMEOUT_S)
    return p.returncode, err.decode()


def test_ctrl_c_kill_and_half_written_line_then_resume_gives_each_answer_once(tiny, tmp_path):
    data = make_sample(tmp_path / "data", n_videos=4, questions_per_video=4)
    out = tmp_path / "run"
    results = out / "results.jsonl"
    args = _args(tiny, data, out, "--modes", "base,vreason", "--max-tokens", "48")
    total = 16 * 2

    rc, err = _interrupt_after_first_row(_start(args), results, signal.SIGINT)
    assert rc == 130 and "stopped:" in err and "--resume" in err and "Traceback" not in err, err
    after_int = read_results(results)
    assert 0 < len(after_int.rows) < total and after_int.dropped is None
    assert all(r["stop_reason"] != "cancelled" for r in after_int.rows)

    rc, err = _interrupt_after_first_row(_start([*args, "--resume"]), results, signal.SIGKILL, len(after_int.rows))
    assert rc == -signal.SIGKILL
    killed = read_results(results)
    assert len(after_int.rows) < len(killed.rows) < total, "the run ended before it was killed"

    # Power loss while a row was written: its second half never reached the disk.
    data_bytes = results.read_bytes()
    last_start = data_bytes.rstrip(b"\n").rfind(b"\n") + 1
    half = data_bytes[: last_start + (len(data_bytes) - last_start) // 2]
    results.write_bytes(half)
    lost = json.loads(data_bytes[last_start:])
    assert read_results(results).dropped is not None

    p = subprocess.run(
        [sys.executable, "-m", "vreason_local.cli", *args, "--resume"], capture_output=True, timeout=TIMEOUT_S
    )
    err = p.stderr.decode()
    assert p.returncode == 0, err
    assert "half-written" in err and f"{total}/{total} answers" in err  # the progress line's last word
    final = read_results(results)
    assert final.dropped is None
    pairs = [(r["id"], r["mode"]) for r in final.rows]
    assert len(pairs) == len(set(pairs)) == total
    assert (lost["id"], lost["mode"]) in pairs
    assert all(r["error"] is None and r["stop_reason"] != "cancelled" for r in final.rows)
    assert (out / "summary.json").is_file() and (out / "report.md").is_file()


def test_bad_input_is_refused_and_invalid_rows_are_listed(tiny, data, tmp_path, vreason):
    bad = tmp_path / "mixed.jsonl"
    good = data.read_text().splitlines()[:2]
    broken_rows = [json.dumps({"id": f"x{i}", "question": "Where?", "answer": "left"}) for i in range(7)]
    bad.write_text("\n".join(good + broken_rows) + "\n")
    (tmp_path / "videos").symlink_to(data.parent / "videos")
    out = tmp_path / "run"
    rc, stdout, err = vreason(_args(tiny, bad, out, "--modes", "base", "--max-tokens", "4"))
    assert rc == 0, err
    assert "7 rows of" in err and "mixed.jsonl:3: missing field 'video'" in err and "... and 2 more" in err
    assert _lines(out / "results.jsonl") == 2 and "| base |" in stdout
    # every skipped row is kept with its reason, and the report quotes its accuracy over 2 items, saying why not 9
    run = json.loads((out / "run.json").read_text())
    assert run["skipped"] == [{"source": f"mixed.jsonl:{n}", "reason": "missing field 'video'"} for n in range(3, 10)]
    summary = json.loads((out / "summary.json").read_text())["run"]
    assert summary["n_skipped"] == 7 and summary["skipped_reasons"] == {"missing field 'video'": 7}
    report = (out / "report.md").read_text()
    assert "2 items (7 rows of the dataset skipped: missing field 'video' (7))" in report
    assert "## Skipped rows of the dataset (7)" in report and "- mixed.jsonl:9: missing field 'video'" in report

    rc, _, err = vreason(_args(tiny, bad, out, "--modes", "base"))
    assert rc == 2 and "is not empty; add --resume" in err
    rc, _, err = vreason(_args(tiny, bad, out, "--modes", "base", "--max-tokens", "5", "--resume"))
    assert rc == 2 and "--max-tokens 5 differs from the run's 4" in err
    rc, _, err = vreason(["eval", "--resume", "--out", str(tmp_path / "nothing")])
    assert rc == 2 and "holds no run" in err
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("\n".join(broken_rows) + "\n")
    rc, _, err = vreason(_args(tiny, only_bad, tmp_path / "run2", "--format", "vreason"))
    assert rc == 2 and "nothing to run" in err and "bad.jsonl:1" in err
    rc, _, err = vreason(_args(tiny, bad, tmp_path / "run3", "--modes", "base,fast"))
    assert rc == 2 and "--modes takes" in err
    # a resumed run with nothing left to do only rewrites the report; a machine option may change
    rc, _, err = vreason(["eval", "--resume", "--out", str(out), "--threads", "2"])
    assert rc == 0 and "0 answers to go" in err and _lines(out / "results.jsonl") == 2
    assert "warning: --threads 2 differs from the run's 1: V-Reason answers can differ" in err
    # a run folder from before skipped rows were recorded still reports, without the claim
    old = {k: v for k, v in json.loads((out / "run.json").read_text()).items() if k not in ("skipped", "model_files")}
    (out / "run.json").write_text(json.dumps(old))
    rc, _, err = vreason(["eval", "--report", str(out)])
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text())["run"]["n_skipped"] is None
    assert "), 2 items\n" in (out / "report.md").read_text()
    rc, _, err = vreason(["eval", "--resume", "--out", str(out)])  # and resumes, unchecked, as before
    assert rc == 0 and "0 answers to go" in err, err


def test_the_writer_cuts_off_only_a_half_written_line_never_a_complete_row(tmp_path):
    from vreason_local.errors import UserError

    path = tmp_path / "results.jsonl"
    with ResultsWriter(path) as writer:
        writer.append({"id": "a", "mode": "base"})
    back = read_results(path)
    with ResultsWriter(path, back.good_bytes) as other:  # written after `back` was read, by someone else
        other.append({"id": "b", "mode": "base"})
    before = path.read_bytes()
    with pytest.raises(UserError, match="grew since it was read"):
        ResultsWriter(path, back.good_bytes)
    assert path.read_bytes() == before
    path.write_bytes(before + b'{"id": "c", "mo')  # a half-written last line: that one goes
    ResultsWriter(path, len(before)).close()
    assert path.read_bytes() == before


def test_a_new_run_in_an_empty_folder_that_fails_leaves_no_lock_file(tiny, data, tmp_path, vreason):
    rc, _, err = vreason(_args(tiny, data, tmp_path / "new", "--media-root", str(tmp_path / "none")))
    assert rc == 2 and "media folder not found" in err and not (tmp_path / "new").exists(), err


def test_the_run_folder_is_locked_and_a_changed_model_file_is_refused(tiny, data, tmp_path, vreason):
    """A second process on the same folder (resume or new run) is refused while the lock is held; the model
    file a run started with is checked on resume by its fingerprint, not its path."""
    import fcntl
    import shutil

    model = tmp_path / "model.gguf"
    shutil.copy(tiny.model_path, model)
    args = ["eval", str(data), "--out", str(tmp_path / "run"), "--model", str(model), "--mmproj",
            str(tiny.mmproj_path), "--fps", "2", "--max-frames", "4", "--threads", "1", "--modes", "base",
            "--max-tokens", "2", "--limit", "1"]  # fmt: skip
    rc, _, err = vreason(args)
    assert rc == 0, err
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["model_files"]["model"]["fingerprint"]["size"] == model.stat().st_size

    with open(tmp_path / "run" / "run.lock", "a+b") as held:  # another process's lock: a separate open file
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, _, err = vreason(["eval", "--resume", "--out", str(tmp_path / "run")])
        assert rc == 2 and f"{tmp_path / 'run'} is in use by another vreason eval" in err, err
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    rc, _, err = vreason(["eval", "--resume", "--out", str(tmp_path / "run")])
    assert rc == 0 and "0 answers to go" in err, err

    empty = tmp_path / "empty"
    empty.mkdir()
    with open(empty / "run.lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, _, err = vreason([*args[:2], "--out", str(empty), *args[4:]])
        assert rc == 2 and "is in use by another vreason eval" in err, err

    data_bytes = bytearray(model.read_bytes())  # the same path, another file: one byte of its last tensor
    data_bytes[-3] ^= 0xFF
    model.write_bytes(bytes(data_bytes))
    rc, _, err = vreason(["eval", "--resume", "--out", str(tmp_path / "run")])
    assert rc == 2 and f"the model file {model} is not the one the run started with" in err, err
    assert "Traceback" not in err and err.count("\n") <= 2


def test_retry_errors_asks_failed_answers_again_and_the_new_row_wins(tiny, data, tmp_path, vreason):
    import shutil

    shutil.copytree(data.parent, tmp_path / "d")
    dataset = tmp_path / "d" / data.name
    out = tmp_path / "run"
    args = _args(tiny, dataset, out, "--modes", "base", "--max-tokens", "3")
    rc, _, err = vreason(args)
    assert rc == 0, err
    failed = {r["id"] for r in read_results(out / "results.jsonl").rows if r["error"] is not None}
    assert failed == {"broken-1", "broken-2"}
    rc, _, err = vreason(["eval", "--retry-errors", "--out", str(out), str(dataset)])
    assert rc == 2 and "give --resume too" in err
    rc, _, err = vreason(["eval", "--resume", "--out", str(out)])  # without the flag: errors stay done
    assert rc == 0 and "0 answers to go" in err, err

    good_video = next(p for p in (tmp_path / "d" / "videos").iterdir() if p.name != "broken.mp4")
    shutil.copy(good_video, tmp_path / "d" / "videos" / "broken.mp4")  # the user fixed the video
    rc, _, err = vreason(["eval", "--resume", "--retry-errors", "--out", str(out)])
    assert rc == 0 and "2 answers to go" in err, err
    rows = read_results(out / "results.jsonl").rows
    n_items = len(load_dataset(dataset).items)
    assert len(rows) == n_items + 2  # append-only: the error rows stay in the file ...
    summary = json.loads((out / "summary.json").read_text())["modes"]["base"]
    assert summary["n_rows"] == n_items and summary["n_errors"] == 0  # ... and the later rows replace them
    assert "Failed answers" not in (out / "report.md").read_text()

"""`vreason eval`'s report and comparison, checked against figures recomputed here from results.jsonl.

The runs are real (`vreason eval` on the generated tiny model and sample dataset, one video that does not
decode). A random-weight model answers nothing right, which would make every accuracy and paired figure
zero, so after the run the test gives the rows known outcomes (a seeded share correct per mode) and asks
for the report again: the report reads nothing but run.json and results.jsonl, so this is exactly the
situation of a real model's run.
"""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from vreason_local.cli import main
from vreason_local.evaluate.datasets import make_sample

SHARE_CORRECT = {"base": 0.3, "vreason": 0.6, "lite": 0.5}


@pytest.fixture(scope="module")
def runs(tiny_model_factory, tmp_path_factory) -> dict[str, Path]:
    tiny = tiny_model_factory("qwen25vl")
    d = tmp_path_factory.mktemp("eval_report")
    data = make_sample(d, n_videos=3, questions_per_video=4)
    (d / "videos" / "broken.mp4").write_bytes(b"not a video\n" * 50)
    broken = {"id": "broken", "video": "videos/broken.mp4", "question": "How many?", "answer": 3}
    data.write_text(data.read_text() + json.dumps(broken) + "\n")
    common = [
        "--model",
        str(tiny.model_path),
        "--mmproj",
        str(tiny.mmproj_path),
        "--fps",
        "2",
        "--max-frames",
        "4",
        "--threads",
        "1",
    ]
    out = {"a": d / "a", "b": d / "b"}
    for name, extra in (("a", ["--max-tokens", "8"]), ("b", ["--max-tokens", "6", "--modes", "base,vreason"])):
        rc = main_rc(["eval", str(data), "--out", str(out[name]), *common, *extra])
        assert rc == 0
    return out


def main_rc(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def _give_outcomes(run: Path, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = _rows(run)
    for row in rows:
        if row["error"] is None:
            row["correct"] = bool(rng.random() < SHARE_CORRECT[row["mode"]])
            row["score"] = float(row["correct"])
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_report_figures_match_the_rows(runs, vreason):
    run = runs["a"]
    assert {p.name for p in run.iterdir()} >= {"summary.json", "report.md", "entropy.png", "tokens.png", "accuracy.png"}
    rows = _give_outcomes(run, seed=1)
    rc, out, _ = vreason(["eval", "--report", str(run)])
    assert rc == 0 and str(run / "report.md") in out
    summary = json.loads((run / "summary.json").read_text())
    report = (run / "report.md").read_text()
    ok = {m: {r["id"]: r for r in rows if r["mode"] == m and r["error"] is None} for m in SHARE_CORRECT}
    assert summary["run"]["n_rows"] == len(rows) == 13 * 3
    for mode, mine in ok.items():
        s = summary["modes"][mode]
        accuracy = np.mean([r["correct"] for r in mine.values()])
        assert s["accuracy"] == pytest.approx(accuracy) and f"{100 * accuracy:.1f}%" in report
        assert s["n_answered"] == len(mine) == 12 and s["n_errors"] == 1
        assert s["mean_tokens"] == pytest.approx(np.mean([r["n_tokens"] for r in mine.values()]))
        t = [r["timings"] for r in mine.values()]
        assert s["mean_answer_s"] == pytest.approx(
            np.mean([x["answer_s"] - x["encode_s"] - x["prefill_media_s"] for x in t])
        )
        assert summary["datasets"]["sample"][mode]["accuracy"] == pytest.approx(accuracy)  # one dataset
        if mode == "base":
            assert "vs_base" not in s
            continue
        base = ok["base"]
        wins = sum(1 for i, r in mine.items() if r["correct"] and not base[i]["correct"])
        losses = sum(1 for i, r in mine.items() if base[i]["correct"] and not r["correct"])
        n = wins + losses
        p = min(1.0, 2 * sum(comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n) if n else 1.0
        vs = s["vs_base"]
        assert (vs["wins"], vs["losses"], vs["n_pairs"]) == (wins, losses, 12)
        assert vs["mcnemar_p"] == pytest.approx(p)
        assert vs["score_diff"] == pytest.approx(accuracy - np.mean([r["correct"] for r in base.values()]))
        assert vs["score_diff_ci"][0] <= vs["score_diff"] <= vs["score_diff_ci"][1]
        saved = 1 - sum(r["n_tokens"] for r in mine.values()) / sum(r["n_tokens"] for r in base.values())
        assert vs["tokens_saved"] == pytest.approx(saved)
        assert f"{wins} / {losses}" in report
    assert "## Failed answers (3)" in report and "broken.mp4" in report
    # the mean entropy curve over normalised position, recomputed for base
    grid = np.linspace(0, 1, 50)
    hs = [np.asarray(r["entropy"]) for r in ok["base"].values()]
    curve = np.mean([np.interp(grid, (np.arange(len(h)) + 0.5) / len(h), h) for h in hs], axis=0)
    np.testing.assert_allclose(summary["entropy_curves"]["base"]["normalised"], curve, rtol=1e-9)
    lengths = [len(h) for h in hs]  # by token index: while at least a tenth of the answers are that long
    reach = [i for i in range(max(lengths)) if sum(n > i for n in lengths) >= max(1, len(hs) / 10)]
    by_index = [np.mean([h[i] for h in hs if len(h) > i]) for i in reach]
    np.testing.assert_allclose(summary["entropy_curves"]["base"]["by_index"], by_index, rtol=1e-9)
    for name in ("entropy.png", "tokens.png", "accuracy.png"):
        image = imread(run / name)
        assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 600 and image.std() > 0
    # regenerable: the same figures again from the same rows
    (run / "summary.json").unlink()
    assert vreason(["eval", "--report", str(run)])[0] == 0
    assert json.loads((run / "summary.json").read_text()) == summary


def test_compare_two_runs(runs, vreason):
    a, b = runs["a"], runs["b"]
    rows_a, rows_b = _give_outcomes(a, seed=2), _give_outcomes(b, seed=3)
    rc, out, _ = vreason(["eval", "--compare", str(a), str(b)])
    assert rc == 0
    assert "- options.max_tokens: A 8, B 6" in out and "options.modes" in out
    table = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert "lite" not in table and set(table) >= {"base", "vreason"}
    for mode in ("base", "vreason"):
        ra = {r["id"]: r for r in rows_a if r["mode"] == mode and r["error"] is None}
        rb = {r["id"]: r for r in rows_b if r["mode"] == mode and r["error"] is None}
        wins = sum(1 for i in ra if rb[i]["correct"] and not ra[i]["correct"])
        losses = sum(1 for i in ra if ra[i]["correct"] and not rb[i]["correct"])
        cells = [c.strip() for c in table[mode].strip("|").split("|")]
        assert cells[1] == "12"
        assert cells[2] == f"{100 * np.mean([r['correct'] for r in ra.values()]):.1f}%"
        assert cells[3] == f"{100 * np.mean([r['correct'] for r in rb.values()]):.1f}%"
        assert cells[5] == f"{np.mean([r['n_tokens'] for r in rb.values()]):.1f}"
        assert cells[8] == f"{wins} / {losses}"
    rc, out, _ = vreason(["eval", "--compare", str(a), str(a)])
    assert rc == 0 and "same settings" in out and "| 0 / 0 |" in out
    rc, _, err = vreason(["eval", "--compare", str(a), str(a.parent)])
    assert rc == 2 and "holds no run" in err


# ---------------------------------------------------------------- benchmarks: categories, reference overall, judged
# Hand-written runs (run.json + results.jsonl, rows made by the runner's own score_fields from items with the
# benchmark's categories and rules): the report reads nothing else, so no model is needed.


def _bench_rows(outcomes: dict[str, list[bool]]) -> list[dict]:
    """Video-MME rows for modes base and vreason: item i is right in a mode when outcomes[mode][i]; its
    categories cycle through two durations and three task types. Plus one VSI-Bench item per question type
    and a TempCompass captioning item (LLM-judged in the reference)."""
    from vreason_local.evaluate.items import Item

    rows = []
    n = len(next(iter(outcomes.values())))
    for i in range(n):
        cats = (("duration", ["short", "long"][i % 2]), ("task_type", ["Counting", "OCR", "Action"][i % 3]))
        item = Item(f"v{i}", Path("v.mp4"), "Q?", "multiple-choice", "C", ("a", "b", "c", "d"), dataset="videomme",
                    categories=cats, rule="videomme:mc", reference_prompt="Q?\nA. a\nB. b\nC. c\nD. d")  # fmt: skip
        for mode, right in outcomes.items():
            rows.append(_row(item, mode, "C" if right[i] else "Answer: C", i))  # "Answer: C" reads A
    vsi = [("object_counting", 4.0, "5"), ("object_counting", 10.0, "10"), ("object_rel_direction_easy", "A", "A"),
           ("object_rel_direction_hard", "A", "B")]  # fmt: skip
    for k, (qtype, truth, reply) in enumerate(vsi):
        rule = "vsibench:na" if isinstance(truth, float) else "vsibench:mca"
        kind = "numeric" if isinstance(truth, float) else "multiple-choice"
        item = Item(f"s{k}", Path("s.mp4"), "Q?", kind, truth, () if kind == "numeric" else ("x", "y"),  # type: ignore[arg-type]
                    dataset="vsibench", categories=(("question_type", qtype),), rule=rule)  # fmt: skip
        rows += [_row(item, mode, reply, k) for mode in outcomes]
    cap = Item("c0", Path("c.mp4"), "Describe.", "free-form", "B. x", dataset="tempcompass",
               categories=(("dimension", "speed"), ("question_type", "captioning")), rule="tempcompass:captioning")  # fmt: skip
    rows += [_row(cap, mode, "A caption.", 0) for mode in outcomes]
    return rows


def _row(item, mode: str, reply: str, k: int) -> dict:
    from vreason_local.evaluate.row_scores import score_fields

    return {
        "id": item.id, "mode": mode, "dataset": item.dataset, "source": f"f.json:{item.id}", "video": str(item.video),
        "start": None, "end": None, "type": item.type, "question": item.question, "options": list(item.options),
        "truth": item.answer, "categories": dict(item.categories), "rule": item.rule, "prompt": item.prompt(),
        "answer": reply, "text": reply, "stop_reason": "eos", "n_tokens": 3 + k % 4, "tokens": [], "entropy": [0.5, 0.4],
        "reused_encoding": False, "n_video_tokens": 10, "n_video_tokens_kept": 10, "notices": [],
        **score_fields(item, reply, "reference"),
        "timings": {"answer_s": 1.0, "encode_s": 0.1, "prefill_media_s": 0.1}, "telemetry": {}, "settings": {},
        "warnings": [], "error": None,
    }  # fmt: skip


def _write_run(path: Path, rows: list[dict], scoring: str = "reference") -> Path:
    path.mkdir(parents=True)
    ids = list(dict.fromkeys(r["id"] for r in rows))
    run = {"created": "2026-12-05T00:00:00+0000", "dataset": str(path / "data.json"), "dataset_format": "videomme",
           "dataset_sha256": "0", "item_ids": ids, "model": {"name": "tiny", "path": "tiny.gguf"}, "skipped": [],
           "scoring": scoring, "options": {"modes": ["base", "vreason"]}}  # fmt: skip
    (path / "run.json").write_text(json.dumps(run))
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _outcomes(seed: int, n: int = 24) -> dict[str, list[bool]]:
    rng = np.random.default_rng(seed)
    return {"base": list(rng.random(n) < 0.4), "vreason": list(rng.random(n) < 0.6)}


def _mcnemar(wins: int, losses: int) -> float:
    n = wins + losses
    return min(1.0, 2 * sum(comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n) if n else 1.0


def test_report_breaks_benchmarks_down_by_their_categories(tmp_path, vreason):
    outcomes = _outcomes(seed=4)
    run = _write_run(tmp_path / "run", _bench_rows(outcomes))
    rc, _, err = vreason(["eval", "--report", str(run)])
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    report = (run / "report.md").read_text()
    cats = summary["categories"]["videomme"]
    assert list(cats) == ["duration", "task_type"] and list(cats["duration"]) == ["short", "long"]
    for name, values in (("duration", ["short", "long"]), ("task_type", ["Counting", "OCR", "Action"])):
        for j, value in enumerate(values):
            idx = [i for i in range(24) if i % len(values) == j]  # the items of this value, computed independently
            base = [outcomes["base"][i] for i in idx]
            vr = [outcomes["vreason"][i] for i in idx]
            got = cats[name][value]
            assert got["base"]["accuracy"] == pytest.approx(np.mean(base))
            assert got["vreason"]["accuracy"] == pytest.approx(np.mean(vr))
            wins = sum(v and not b for b, v in zip(base, vr, strict=True))
            losses = sum(b and not v for b, v in zip(base, vr, strict=True))
            vs = got["vreason"]["vs_base"]
            assert (vs["n_pairs"], vs["wins"], vs["losses"]) == (len(idx), wins, losses)
            assert vs["mcnemar_p"] == pytest.approx(_mcnemar(wins, losses))
            assert vs["score_diff"] == pytest.approx(np.mean(vr) - np.mean(base))
            assert f"| {value} | vreason | {len(idx)} | {100 * np.mean(vr):.1f}% |" in report
    assert "#### videomme by duration" in report and "#### videomme by task_type" in report
    # Video-MME's overall (lmms-eval: correct / all) is the item mean of the reference scores
    ref = summary["reference"]["videomme"]
    assert ref["overall"]["vreason"] == pytest.approx(np.mean(outcomes["vreason"]))
    assert "lmms_eval/tasks/videomme/utils.py" in ref["source"]
    # lenient beside reference: "Answer: C" is C to the lenient reader, A to Video-MME's
    assert summary["datasets"]["videomme"]["base"]["accuracy_lenient"] == 1.0
    assert summary["datasets"]["videomme"]["base"]["accuracy_reference"] == pytest.approx(np.mean(outcomes["base"]))
    # VSI-Bench: per type (counting (.6 + 1) / 2 = .8; rel_direction (1 + 0) / 2 = .5), then their mean .65
    assert summary["reference"]["vsibench"]["overall"]["base"] == pytest.approx((0.8 + 0.5) / 2)
    assert summary["datasets"]["vsibench"]["base"]["mean_score"] == pytest.approx((0.6 + 1 + 1 + 0) / 4)
    # TempCompass captioning: judged in the reference, unscored, counted and listed once
    tc = summary["datasets"]["tempcompass"]["base"]
    assert (tc["n_answered"], tc["n_scored"], tc["n_judged"], tc["accuracy"]) == (1, 0, 1, None)
    assert summary["judged"] == [{"dataset": "tempcompass", "id": "c0", "rule": "tempcompass:captioning"}]
    assert "## Judged by an LLM in the reference: unscored (1)" in report and "`c0` (tempcompass" in report


def test_report_of_an_old_run_without_categories_or_scorings(tmp_path, vreason):
    """Rows written before issue 21 (no categories, rule, reference or lenient) still make a report."""
    rows = _bench_rows(_outcomes(seed=5, n=6))
    for r in rows:
        for key in ("categories", "rule", "prompt", "scoring", "reference", "lenient"):
            del r[key]
    run = _write_run(tmp_path / "old", rows)
    old = json.loads((run / "run.json").read_text())
    del old["scoring"]
    (run / "run.json").write_text(json.dumps(old))
    rc, _, err = vreason(["eval", "--report", str(run)])
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"]["scoring"] == "lenient" and summary["categories"]["videomme"] == {}
    assert summary["reference"]["videomme"]["overall"] == {"base": None, "vreason": None}
    assert summary["datasets"]["videomme"]["base"]["accuracy_reference"] is None


def test_compare_breaks_down_by_category(tmp_path, vreason):
    oa, ob = _outcomes(seed=6), _outcomes(seed=7)
    a = _write_run(tmp_path / "a", _bench_rows(oa))
    b = _write_run(tmp_path / "b", _bench_rows(ob))
    rc, out, err = vreason(["eval", "--compare", str(a), str(b)])
    assert rc == 0, err
    assert "## videomme" in out and "## vsibench" in out
    for mode in ("base", "vreason"):
        overall = f"- {mode}: overall as the reference computes it: A {100 * np.mean(oa[mode]):.1f}%, "
        assert overall + f"B {100 * np.mean(ob[mode]):.1f}%" in out
        idx = [i for i in range(24) if i % 2 == 1]  # duration "long"
        ra, rb = [oa[mode][i] for i in idx], [ob[mode][i] for i in idx]
        wins = sum(y and not x for x, y in zip(ra, rb, strict=True))
        losses = sum(x and not y for x, y in zip(ra, rb, strict=True))
        line = next(x for x in out.splitlines() if x.startswith(f"| duration | long | {mode} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3:7] == [
            str(len(idx)),
            f"{100 * np.mean(ra):.1f}%",
            f"{100 * np.mean(rb):.1f}%",
            f"{wins} / {losses}",
        ]
        assert float(cells[7]) == pytest.approx(_mcnemar(wins, losses), rel=1e-2)

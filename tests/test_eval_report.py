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

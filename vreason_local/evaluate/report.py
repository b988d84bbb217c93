"""The report of a run: summary.json, report.md and PNG plots, computed from run.json and results.jsonl only,
so `vreason eval --report DIR` rewrites them at any time (after a resumed run, or with a newer version).

Per mode and per dataset: accuracy (share correct) and mean score (MRA for numeric questions), mean output
tokens and answer time, and against base on the same items: tokens saved, wins and losses, the exact
McNemar p of the wins/losses split, and a paired bootstrap of the score difference. Failed answers are
counted, never scored as wrong; paired figures use the items answered in both modes. Plots: the mean
entropy curve per mode (the V-Reason paper's figure 1 view: entropy against normalised position in the
answer, and against token index), tokens per answer, and accuracy per mode.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import click
import numpy as np

from ..wording import count
from .reference import OVERALL_METHODS, SOURCES, UNMATCHED, overall
from .results import RunDir, read_results
from .row_scores import JUDGED
from .scoring import Score
from .stats import mcnemar_exact, paired_bootstrap

SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.md"
ENTROPY_PNG, TOKENS_PNG, ACCURACY_PNG = "entropy.png", "tokens.png", "accuracy.png"
CURVE_POINTS = 50  # points of the normalised-position entropy curve
MIN_SHARE_AT_INDEX = 0.1  # the per-index curve stops where fewer answers than this share are that long


def load_run(path: Path) -> tuple[dict, list[dict]]:
    """run.json and the complete rows of a run folder, one per (item, mode): the last written, since an answer
    asked again (`--retry-errors`) is appended after the row it replaces."""
    run_dir = RunDir(Path(path))
    return run_dir.read_run(), read_results(run_dir.results_file).latest()


def _mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return float(np.mean(xs)) if xs else None


def answer_time(row: dict) -> float:
    """An answer's seconds once its video was encoded: the encoding happens once per video, in whichever
    mode asks first, so leaving it out is what makes the modes' times comparable."""
    t = row["timings"]
    return t["answer_s"] - t.get("encode_s", 0.0) - t.get("prefill_media_s", 0.0)


def _sub_accuracy(rows: Sequence[dict], scoring: str) -> float | None:
    """Accuracy under one scoring, from the row's `reference` or `lenient` copy (rows written before both were
    kept have neither: None)."""
    subs = [r.get(scoring) for r in rows]
    return _mean(float(s["correct"]) for s in subs if s and s["score"] is not None)


def mode_stats(rows: Sequence[dict]) -> dict:
    """Figures of one mode's rows: answered and failed counts, accuracy, mean score, tokens and time; both
    scorings' accuracies side by side; how many the reference leaves to an LLM judge (unscored, `n_judged`)
    or would have asked one about (`n_unmatched`, scored by its no-judge fallback)."""
    ok = [r for r in rows if r["error"] is None]
    scored = [r for r in ok if r["score"] is not None]
    notes = Counter((r.get("reference") or {}).get("note") for r in ok)
    return {
        "n_rows": len(rows),
        "n_answered": len(ok),
        "n_errors": len(rows) - len(ok),
        "n_scored": len(scored),
        "n_judged": notes[JUDGED],
        "n_unmatched": notes[UNMATCHED],
        "accuracy": _mean(float(r["correct"]) for r in scored),
        "mean_score": _mean(r["score"] for r in scored),
        "accuracy_reference": _sub_accuracy(ok, "reference"),
        "accuracy_lenient": _sub_accuracy(ok, "lenient"),
        "mean_tokens": _mean(r["n_tokens"] for r in ok),
        "mean_answer_s": _mean(answer_time(r) for r in ok),
    }


def reference_overall(dataset: str, rows: Sequence[dict]) -> float | None:
    """The benchmark's headline figure for these rows (one mode's), aggregated as its reference does, from the
    rows' reference scores; None for a format without a reference, or rows written before scores were kept."""
    scored = [
        (r.get("categories") or {}, Score(ref["extracted"], bool(ref["correct"]), ref["score"], ref.get("note")))
        for r in rows
        if r["error"] is None and (ref := r.get("reference")) and ref["score"] is not None
    ]
    return overall(dataset, scored) if scored else None


def category_names(rows: Sequence[dict]) -> list[str]:
    """The category names the rows carry, in the order the benchmark's paper reports them (as items keep them)."""
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r.get("categories") or {}))
    return list(names)


def category_groups(rows: Sequence[dict], name: str) -> dict[str, list[dict]]:
    """The rows of each value of category `name`, values in the order first met (rows without it left out)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        value = (r.get("categories") or {}).get(name)
        if value is not None:
            groups.setdefault(value, []).append(r)
    return groups


def by_category(rows: Sequence[dict], modes: Sequence[str]) -> dict[str, dict[str, dict]]:
    """{category name: {value: each mode's figures and pairs with base}} for one dataset's rows."""
    return {
        name: {value: _by_mode(group, modes) for value, group in category_groups(rows, name).items()}
        for name in category_names(rows)
    }


def paired_stats(a_rows: Sequence[dict], b_rows: Sequence[dict], seed: int = 0) -> dict:
    """B against A on the items both answered, paired by (dataset, id): tokens saved by B, B's wins (B right,
    A wrong) and losses, the exact McNemar p of that split, and a paired bootstrap of mean(score B - score A)."""
    a = {(r["dataset"], r["id"]): r for r in a_rows if r["error"] is None}
    pairs = [(a[(r["dataset"], r["id"])], r) for r in b_rows if r["error"] is None and (r["dataset"], r["id"]) in a]
    scored = [(x, y) for x, y in pairs if x["score"] is not None and y["score"] is not None]
    wins = sum(1 for x, y in scored if y["correct"] and not x["correct"])
    losses = sum(1 for x, y in scored if x["correct"] and not y["correct"])
    tokens_a = sum(x["n_tokens"] for x, _ in pairs)
    boot = (
        paired_bootstrap([x["score"] for x, _ in scored], [y["score"] for _, y in scored], seed=seed)
        if scored
        else None
    )
    return {
        "n_pairs": len(pairs),
        "n_scored_pairs": len(scored),
        "tokens_saved": 1 - sum(y["n_tokens"] for _, y in pairs) / tokens_a if tokens_a else None,
        "wins": wins,
        "losses": losses,
        "mcnemar_p": mcnemar_exact(wins, losses),
        "score_diff": boot.mean_diff if boot else None,
        "score_diff_ci": [boot.ci_low, boot.ci_high] if boot else None,
        "bootstrap_p": boot.p_value if boot else None,
    }


def _by_mode(rows: Sequence[dict], modes: Sequence[str]) -> dict:
    """Each mode's figures, and (where base was run) its paired comparison with base."""
    out = {}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        stats = mode_stats(mine)
        if mode != "base" and "base" in modes:
            stats["vs_base"] = paired_stats([r for r in rows if r["mode"] == "base"], mine)
        out[mode] = stats
    return out


def summarize_run(run: dict, rows: Sequence[dict]) -> dict:
    """summary.json's content."""
    modes = run["options"]["modes"]
    datasets = sorted({r["dataset"] for r in rows})
    in_ds = {ds: [r for r in rows if r["dataset"] == ds] for ds in datasets}
    return {
        "run": {
            "scoring": run.get("scoring") or "lenient",  # runs stored before --scoring were scored leniently
            "dataset": run["dataset"],
            "model": run["model"],
            "created": run.get("created"),
            "modes": modes,
            "n_items": len(run["item_ids"]),
            "n_rows": len(rows),
            "n_expected_rows": len(run["item_ids"]) * len(modes),
            # rows of the dataset file the load left out (None: a run stored before they were recorded)
            "n_skipped": len(run["skipped"]) if "skipped" in run else None,
            "skipped_reasons": skipped_reasons(run.get("skipped", [])),
        },
        "modes": _by_mode(rows, modes),
        "datasets": {ds: _by_mode(in_ds[ds], modes) for ds in datasets},
        "categories": {ds: by_category(in_ds[ds], modes) for ds in datasets},
        "reference": {
            ds: {
                "overall": {m: reference_overall(ds, [r for r in in_ds[ds] if r["mode"] == m]) for m in modes},
                "method": OVERALL_METHODS[ds],
                "source": SOURCES[ds],
            }
            for ds in datasets
            if ds in OVERALL_METHODS
        },
        "judged": judged_items(rows),
        "plots": [ENTROPY_PNG, TOKENS_PNG, ACCURACY_PNG],
    }


def judged_items(rows: Sequence[dict]) -> list[dict]:
    """The items the reference scores with an LLM judge (unscored here), once each, with their rule."""
    seen = {
        (r["dataset"], r["id"]): r.get("rule")
        for r in rows
        if r["error"] is None and (r.get("reference") or {}).get("note") == JUDGED
    }
    return [{"dataset": ds, "id": i, "rule": rule} for (ds, i), rule in seen.items()]


def skipped_reasons(skipped: Sequence[dict]) -> dict[str, int]:
    """How many skipped rows for each kind of reason ("video not found", "missing field 'video'"): the
    reason up to its first colon, so that rows failing alike count together, most frequent first."""
    kinds = Counter(entry["reason"].split(":")[0].strip() for entry in skipped)
    return dict(kinds.most_common())


def items_text(summary_run: dict) -> str:
    """ "60 items", and beside it the dataset rows left out and why, so no accuracy reads as the whole file's."""
    text = count(summary_run["n_items"], "item")
    n_skipped = summary_run.get("n_skipped")
    if n_skipped:
        reasons = ", ".join(f"{why} ({n})" for why, n in summary_run["skipped_reasons"].items())
        text += f" ({count(n_skipped, 'row')} of the dataset skipped: {reasons})"
    return text


# -- text -----------------------------------------------------------------------------------------------
def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def number(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def paired_cells(p: dict | None) -> list[str]:
    """Wins/losses, McNemar p and the bootstrap's score difference, as table cells ('-' without pairs)."""
    if p is None or not p["n_pairs"]:
        return ["-", "-", "-"]
    diff = "-"
    if p["score_diff"] is not None:
        lo, hi = p["score_diff_ci"]
        diff = f"{p['score_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] (p {_p(p['bootstrap_p'])})"
    return [f"{p['wins']} / {p['losses']}", _p(p["mcnemar_p"]), diff]


def mode_table(by_mode: dict) -> str:
    header = [
        "mode",
        "answered",
        "failed",
        "accuracy",
        "mean score",
        "mean tokens",
        "mean time (s)",
        "tokens saved vs base",
        "wins / losses vs base",
        "McNemar p",
        "score - base [95% CI] (bootstrap p)",
    ]
    rows = []
    for mode, s in by_mode.items():
        vs = s.get("vs_base")
        rows.append(
            [
                mode,
                str(s["n_answered"]),
                str(s["n_errors"]),
                percent(s["accuracy"]),
                number(s["mean_score"], ".3f"),
                number(s["mean_tokens"]),
                number(s["mean_answer_s"], ".2f"),
                percent(vs["tokens_saved"]) if vs else "-",
                *paired_cells(vs),
            ]
        )
    return markdown_table(header, rows)


def scoring_table(by_mode: dict, reference: dict | None) -> str:
    """Per mode: accuracy under each scoring side by side, the overall figure as the benchmark's reference
    computes it, and the items the reference leaves to (or would ask) an LLM judge."""
    header = ["mode", "accuracy (reference)", "accuracy (lenient)", "overall as the reference computes it"]
    header += ["judged (unscored)", "no rule matched (judge fallback)"]
    rows = [
        [
            mode,
            percent(s.get("accuracy_reference")),
            percent(s.get("accuracy_lenient")),
            percent(reference["overall"].get(mode)) if reference else "-",
            str(s.get("n_judged", 0)),
            str(s.get("n_unmatched", 0)),
        ]
        for mode, s in by_mode.items()
    ]
    return markdown_table(header, rows)


def category_table(name: str, by_value: dict[str, dict]) -> str:
    """Accuracy per value of one category, per mode, with each mode's pairs against base in that value."""
    header = [name, "mode", "answered", "accuracy", "mean score", "wins / losses vs base", "McNemar p"]
    header.append("score - base [95% CI] (bootstrap p)")
    rows = [
        [value, mode, str(s["n_answered"]), percent(s["accuracy"]), number(s["mean_score"], ".3f")]
        + paired_cells(s.get("vs_base"))
        for value, by_mode in by_value.items()
        for mode, s in by_mode.items()
    ]
    return markdown_table(header, rows)


def report_markdown(run: dict, summary: dict, rows: Sequence[dict]) -> str:
    r = summary["run"]
    model = run["model"]
    parts = [
        f"# vreason eval: {Path(r['dataset']).name}",
        "",
        f"- dataset: `{r['dataset']}` ({run['dataset_format']}), {items_text(r)}",
        f"- model: {model['name']}, `{model['path']}`",
        f"- modes: {', '.join(r['modes'])}; {r['n_rows']} of {count(r['n_expected_rows'], 'answer')} in results.jsonl",
        f"- started {r['created']}; settings in run.json",
        f"- scoring: {r.get('scoring', 'lenient')} (a benchmark's questions by its reference's rules, or leniently; "
        "the project's own formats always leniently; both are in every row)",
        "",
        "Accuracy is the share of correct answers and mean score the mean of the per-item score (1/0, or the "
        "MRA of a numeric answer); failed answers are counted, not scored. Mean time is per answer once its "
        "video is encoded (each video is encoded once, by its first answer). Comparisons with base pair the "
        "items answered in both modes: wins are items only this mode got right, losses items only base got "
        "right; McNemar's exact test asks whether that split could be chance.",
        "",
        "## All items",
        "",
        mode_table(summary["modes"]),
        "",
        "## Per dataset",
    ]
    for ds, by_mode in summary["datasets"].items():
        parts += ["", f"### {ds}", "", mode_table(by_mode)]
        reference = summary.get("reference", {}).get(ds)
        if reference:
            parts += [
                "",
                f"Overall as the reference computes it: {reference['method']} ({reference['source']}).",
                "",
                scoring_table(by_mode, reference),
            ]
        for name, by_value in summary.get("categories", {}).get(ds, {}).items():
            parts += ["", f"#### {ds} by {name}", "", category_table(name, by_value)]
    parts += [
        "",
        "## Plots",
        "",
        f"![mean entropy per mode]({ENTROPY_PNG})",
        "",
        f"![tokens per answer]({TOKENS_PNG})",
        "",
        f"![accuracy per mode]({ACCURACY_PNG})",
    ]
    judged = [f"- `{j['id']}` ({j['dataset']}, {j['rule']})" for j in summary.get("judged", [])]
    parts += _listed("Judged by an LLM in the reference: unscored", judged, "`judged` in summary.json")
    failed = [f"- `{r['id']}` ({r['mode']}, {r['source']}): {r['error']}" for r in rows if r["error"] is not None]
    parts += _listed("Failed answers", failed, "field `error` in results.jsonl")
    skipped = [f"- {entry['source']}: {entry['reason']}" for entry in run.get("skipped", [])]
    parts += _listed("Skipped rows of the dataset", skipped, "`skipped` in run.json")
    return "\n".join(parts) + "\n"


def _listed(title: str, lines: list[str], where: str, most: int = 20) -> list[str]:
    """A section listing the first `most` of `lines` and how many more there are (`where`: where all of them
    are kept); nothing when there are none."""
    if not lines:
        return []
    more = [f"- ... and {len(lines) - most} more ({where})"] if len(lines) > most else []
    return ["", f"## {title} ({len(lines)})", "", *lines[:most], *more]


# -- plots ---------------------------------------------------------------------------------------------
def entropy_curves(rows: Sequence[dict], modes: Sequence[str]) -> dict[str, dict]:
    """Per mode: the mean entropy at CURVE_POINTS normalised positions (each answer interpolated onto them,
    then averaged over answers) and the mean entropy at each token index while enough answers are that long."""
    curves = {}
    grid = np.linspace(0.0, 1.0, CURVE_POINTS)
    for mode in modes:
        hs = [np.asarray(r["entropy"], float) for r in rows if r["mode"] == mode and r["entropy"]]
        if not hs:
            continue
        normalised = np.mean([np.interp(grid, (np.arange(len(h)) + 0.5) / len(h), h) for h in hs], axis=0)
        lengths = np.array([len(h) for h in hs])
        reach = np.array([(lengths > i).sum() for i in range(lengths.max())])  # answers this long, per index
        n_index = int((reach >= max(1, MIN_SHARE_AT_INDEX * len(hs))).sum())
        by_index = [float(np.mean([h[i] for h in hs if len(h) > i])) for i in range(n_index)]
        curves[mode] = {
            "n": len(hs),
            "position": grid.tolist(),
            "normalised": normalised.tolist(),
            "by_index": by_index,
        }
    return curves


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure  # no pyplot: no global backend state, nothing drawn on screen

    return Figure(figsize=(width, height), layout="constrained")


def plot_entropy(curves: dict[str, dict], path: Path) -> None:
    fig = _figure(11.0, 4.0)
    left, right = fig.subplots(1, 2)
    for mode, c in curves.items():
        left.plot(c["position"], c["normalised"], label=f"{mode} (n={c['n']})")
        right.plot(np.arange(1, len(c["by_index"]) + 1), c["by_index"], label=mode)
    left.set(xlabel="position in the answer (0 = first token, 1 = last)", ylabel="mean entropy (nats)")
    left.set_title("Mean entropy over the answer")
    right.set(xlabel="token index", ylabel="mean entropy (nats)")
    right.set_title("Mean entropy by token")
    if curves:
        left.legend()
    fig.savefig(path, dpi=100)


def plot_tokens(rows: Sequence[dict], modes: Sequence[str], path: Path) -> None:
    fig = _figure()
    ax = fig.subplots()
    data = {m: [r["n_tokens"] for r in rows if r["mode"] == m and r["error"] is None] for m in modes}
    data = {m: v for m, v in data.items() if v}
    if data:
        ax.boxplot(list(data.values()), showmeans=True)
        ax.set_xticks(range(1, len(data) + 1), list(data))
    ax.set(xlabel="mode", ylabel="tokens per answer")
    ax.set_title("Tokens per answer (box: quartiles, triangle: mean)")
    fig.savefig(path, dpi=100)


def plot_accuracy(summary: dict, path: Path) -> None:
    fig = _figure()
    ax = fig.subplots()
    groups = (
        {"all": summary["modes"], **summary["datasets"]} if len(summary["datasets"]) > 1 else {"all": summary["modes"]}
    )
    modes = list(summary["modes"])
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        values = [100 * (g[mode]["accuracy"] or 0.0) for g in groups.values()]
        bars = ax.bar(np.arange(len(groups)) + j * width, values, width, label=mode)
        ax.bar_label(bars, fmt="%.0f%%")
    ax.set_xticks(np.arange(len(groups)) + width * (len(modes) - 1) / 2, list(groups))
    ax.set(ylabel="accuracy (%)", ylim=(0, 100))
    ax.set_title("Accuracy per mode")
    ax.legend()
    fig.savefig(path, dpi=100)


def write_report(path: Path) -> list[Path]:
    """Write summary.json, report.md and the plots into run folder `path`; return their paths."""
    path = Path(path)
    run, rows = load_run(path)
    modes = run["options"]["modes"]
    summary = summarize_run(run, rows)
    summary["entropy_curves"] = entropy_curves(rows, modes)
    out = [path / SUMMARY_NAME, path / REPORT_NAME, path / ENTROPY_PNG, path / TOKENS_PNG, path / ACCURACY_PNG]
    out[0].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    out[1].write_text(report_markdown(run, summary, rows), encoding="utf-8")
    plot_entropy(summary["entropy_curves"], out[2])
    plot_tokens(rows, modes, out[3])
    plot_accuracy(summary, out[4])
    return out


def print_summary(path: Path) -> None:
    """The run's per-mode table on stdout (from summary.json, as written)."""
    summary = json.loads((Path(path) / SUMMARY_NAME).read_text(encoding="utf-8"))
    click.echo(mode_table(summary["modes"]))

"""`vreason eval --compare A B`: two runs (say, two models, or two V-Reason settings) item by item.

For each mode both runs answered, B is set against A on the items both answered (paired by dataset and
id), with the same figures the report gives a mode against base; the settings that differ are listed
first, so the table says what was compared.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..wording import count
from .report import (
    category_groups,
    category_names,
    load_run,
    markdown_table,
    mode_stats,
    number,
    paired_cells,
    paired_stats,
    percent,
    reference_overall,
)


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def setting_differences(run_a: dict, run_b: dict) -> list[tuple[str, object, object]]:
    """(setting, value in A, value in B) for every run setting that differs, model and dataset included."""
    keys = ("dataset", "dataset_sha256", "model", "options")
    a = _flat({k: run_a.get(k) for k in keys})
    b = _flat({k: run_b.get(k) for k in keys})
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def compare_runs(a: Path, b: Path) -> str:
    """The comparison as Markdown: both runs, what differs between them, and per shared mode B against A."""
    run_a, rows_a = load_run(a)
    run_b, rows_b = load_run(b)
    modes = [m for m in run_a["options"]["modes"] if m in run_b["options"]["modes"]]
    if not modes:
        raise UserError(
            f"{a} ran {', '.join(run_a['options']['modes'])} and {b} ran {', '.join(run_b['options']['modes'])}: "
            "no mode in common to compare"
        )
    lines = [
        f"# A: {a} ({run_a['model']['name']}, {count(len(rows_a), 'answer')})",
        f"# B: {b} ({run_b['model']['name']}, {count(len(rows_b), 'answer')})",
        "",
    ]
    diffs = setting_differences(run_a, run_b)
    if diffs:
        lines += ["Settings that differ:", ""]
        lines += [f"- {key}: A {va!r}, B {vb!r}" for key, va, vb in diffs]
    else:
        lines.append("The two runs have the same settings.")
    header = [
        "mode",
        "paired items",
        "accuracy A",
        "accuracy B",
        "mean tokens A",
        "mean tokens B",
        "mean time A (s)",
        "mean time B (s)",
        "B wins / losses",
        "McNemar p",
        "score B - A [95% CI] (bootstrap p)",
    ]
    table = []
    for mode in modes:
        ma = [r for r in rows_a if r["mode"] == mode]
        mb = [r for r in rows_b if r["mode"] == mode]
        sa, sb, p = mode_stats(ma), mode_stats(mb), paired_stats(ma, mb)
        table.append(
            [
                mode,
                str(p["n_pairs"]),
                percent(sa["accuracy"]),
                percent(sb["accuracy"]),
                number(sa["mean_tokens"]),
                number(sb["mean_tokens"]),
                number(sa["mean_answer_s"], ".2f"),
                number(sb["mean_answer_s"], ".2f"),
                *paired_cells(p),
            ]
        )
    lines += ["", markdown_table(header, table)]
    lines += category_comparison(rows_a, rows_b, modes)
    return "\n".join(lines)


def category_comparison(rows_a: list[dict], rows_b: list[dict], modes: list[str]) -> list[str]:
    """Per benchmark: its overall figure as the reference computes it in A and in B, and B against A in each
    value of each of its categories (pairs, accuracies, wins/losses, McNemar p, bootstrap), per mode."""
    lines: list[str] = []
    for ds in sorted({r["dataset"] for r in rows_a} & {r["dataset"] for r in rows_b}):
        da = [r for r in rows_a if r["dataset"] == ds]
        db = [r for r in rows_b if r["dataset"] == ds]
        overall = [
            (
                m,
                reference_overall(ds, [r for r in da if r["mode"] == m]),
                reference_overall(ds, [r for r in db if r["mode"] == m]),
            )
            for m in modes
        ]
        names = category_names(da + db)
        if not names and all(a is None and b is None for _, a, b in overall):
            continue
        lines += ["", f"## {ds}"]
        if any(a is not None or b is not None for _, a, b in overall):
            lines += [""] + [
                f"- {m}: overall as the reference computes it: A {percent(a)}, B {percent(b)}" for m, a, b in overall
            ]
        header = [
            "category", "value", "mode", "paired items", "accuracy A", "accuracy B", "B wins / losses", "McNemar p",
            "score B - A [95% CI] (bootstrap p)",
        ]  # fmt: skip
        table = []
        for name in names:
            in_a, in_b = category_groups(da, name), category_groups(db, name)
            for value in dict.fromkeys([*in_a, *in_b]):
                for mode in modes:
                    ma = [r for r in in_a.get(value, []) if r["mode"] == mode]
                    mb = [r for r in in_b.get(value, []) if r["mode"] == mode]
                    p = paired_stats(ma, mb)
                    sa, sb = mode_stats(ma), mode_stats(mb)
                    table.append(
                        [name, value, mode, str(p["n_pairs"]), percent(sa["accuracy"]), percent(sb["accuracy"])]
                        + paired_cells(p)
                    )
        if table:
            lines += ["", markdown_table(header, table)]
    return lines

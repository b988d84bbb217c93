"""`vreason eval`: answer a dataset of video questions in several modes, then report how the modes compare.

    vreason eval DATASET --out DIR [--modes base,vreason,lite] [--limit N] [--sample N --seed S] [run options]
    vreason eval --resume --out DIR      continue an interrupted run with the settings in DIR/run.json
    vreason eval --report DIR            (re)write DIR's summary.json, report.md and plots
    vreason eval --compare A B           two runs, item by item
    vreason eval --rescore DIR [--scoring reference|lenient]   score DIR's stored replies again, then report
    vreason eval --list-formats          the dataset formats read
    vreason eval --make-sample DIR       generated clips and questions with known answers

Only the command line lives here (options, messages, Ctrl-C, progress); the work is in runner.py,
results.py, report.py and compare.py, imported when a command needs them (llama.cpp, matplotlib).
It takes `vreason run`'s options (`options.run_options`), read and checked by the same settings layer, and
plans with the same `planning` module: the model and the largest video's prompt are checked to fit before
the first answer.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from ..errors import UserError
from ..events import MODES, Event, Progress, TokenEvent
from ..options import read_settings, run_options
from ..wording import count

if TYPE_CHECKING:
    from ..engine import Engine
    from ..events import Mode
    from .cluster import WorkerPool
    from .datasets import Dataset
    from .items import Item
    from .results import ReadBack, RunDir
    from .runner import EvalSettings

SHOW_INVALID = 5  # rows that could not be used: how many are listed (the count is always given)
# Options that change how fast a run goes, not what it answers: a resumed run may take new values.
MACHINE_OPTIONS = ("threads", "gpu_layers", "repack")
# Options that are about this invocation, not the run: never stored nor compared.
# --ray and --workers are where this invocation runs: a run may be resumed on one machine or a cluster.
ACTIONS = (
    "out", "resume", "list_formats", "make_sample", "report_dir", "compare", "mode", "ray", "workers", "retry_errors",
    "rescore",
)  # fmt: skip
FINGERPRINT_CHUNK = 1 << 20  # bytes hashed at the start, middle and end of a model file


def _flag(name: str) -> str:
    return {"dataset": "DATASET", "dataset_format": "--format"}.get(name, "--" + name.replace("_", "-"))


def make_eval_command() -> click.Command:
    """The `eval` command, with every engine, frame and V-Reason option `vreason run` takes."""

    @click.command("eval")
    @click.argument("dataset", required=False, type=click.Path(path_type=Path))
    @click.option("--out", "-o", type=click.Path(path_type=Path), help="Folder of the run (results, report).")
    @click.option("--resume", is_flag=True, help="Continue the run in --out, with the settings it started with.")
    @click.option(
        "--retry-errors",
        is_flag=True,
        help="With --resume: ask the answers that failed again (the new row replaces the old in the report).",
    )
    @click.option(
        "--modes",
        default="base,vreason,lite",
        show_default=True,
        help="Comma-separated modes to answer every question in.",
    )
    @click.option(
        "--format", "dataset_format", default="auto", show_default=True, help="Dataset format (--list-formats)."
    )
    @click.option(
        "--media-root",
        type=click.Path(path_type=Path),
        default=None,
        help="Folder the dataset's video paths are relative to (default: the dataset file's folder).",
    )
    @click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N items.")
    @click.option("--sample", type=click.IntRange(1), default=None, help="N items drawn at random with --seed.")
    @click.option("--list-formats", is_flag=True, help="List the dataset formats read, and exit.")
    @click.option(
        "--make-sample",
        type=click.Path(path_type=Path),
        default=None,
        help="Write generated clips and a dataset with known answers into DIR, and exit.",
    )
    @click.option(
        "--report", "report_dir", type=click.Path(path_type=Path), default=None, help="Rewrite the report of run DIR."
    )
    @click.option("--compare", nargs=2, type=click.Path(path_type=Path), default=None, help="Compare runs A and B.")
    @click.option(
        "--scoring",
        type=click.Choice(["reference", "lenient"]),
        default="reference",
        show_default=True,
        help="Score a benchmark's questions by its reference's rules, or leniently (the letter, number or phrase "
        "inside <answer>, with fallbacks); the project's own formats are always scored leniently. Every row keeps both.",
    )
    @click.option(
        "--rescore",
        metavar="DIR",
        type=click.Path(path_type=Path),
        default=None,
        help="Score run DIR's stored replies again with --scoring and rewrite its report (no model is loaded).",
    )
    @click.option(
        "--ray",
        metavar="auto|local|ADDRESS",
        default=None,
        help="Spread the videos over Ray workers: auto joins this machine's cluster, local starts one, "
        "or the cluster at HOST:PORT.",
    )
    @click.option(
        "--workers", type=click.IntRange(1), default=None, help="Ray workers (default: as many as the cluster holds)."
    )
    @run_options
    def eval_command(**o) -> None:
        """Answer every question of a dataset in each mode, item by item, with one loaded model.

        \b
        vreason eval questions.jsonl --out runs/a --modes base,vreason --max-tokens 512
        vreason eval --resume --out runs/a
        vreason eval --report runs/a
        vreason eval --compare runs/a runs/b
        vreason eval --rescore runs/a --scoring lenient
        """
        actions = [o["list_formats"], o["make_sample"], o["report_dir"], o["compare"], o["rescore"]]
        if sum(bool(a) for a in actions) > 1:
            raise UserError("--list-formats, --make-sample, --report, --compare and --rescore each run alone; give one")
        if o["list_formats"]:
            _list_formats()
        elif o["make_sample"]:
            _make_sample(o["make_sample"])
        elif o["report_dir"]:
            _report(o["report_dir"])
        elif o["compare"]:
            from .compare import compare_runs

            click.echo(compare_runs(*o["compare"]))
        elif o["rescore"]:
            _rescore(o["rescore"], o["scoring"])
        else:
            _run(o, _given(click.get_current_context()))

    hidden = next(p for p in eval_command.params if p.name == "mode")
    hidden.hidden = True  # `--mode X` still works, as `--modes X`
    return eval_command


def _given(ctx: click.Context) -> set[str]:
    """Options the user set (command line or environment), as opposed to defaults."""
    return {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }


def _list_formats() -> None:
    from .datasets import FORMATS

    for info in FORMATS.values():
        click.echo(f"{info.name}\n  {info.description}\n  reads: {info.expects}")


def _make_sample(out_dir: Path) -> None:
    from .datasets import make_sample

    path = make_sample(out_dir)
    click.echo(path)
    click.echo(f"try: vreason eval {path} --out {out_dir / 'run'} --modes base,vreason", err=True)


def _report(run_dir: Path) -> None:
    from .report import write_report

    for path in write_report(run_dir):
        click.echo(path)


def _rescore(run_dir: Path, scoring: str) -> None:
    from .report import print_summary, write_report
    from .rescore import rescore_run

    result = rescore_run(run_dir, scoring)  # type: ignore[arg-type]
    if result.note:
        click.echo(f"note: {result.note}", err=True)
    click.echo(f"rescored {count(result.n_rows, 'answer')} of {run_dir} ({scoring} scoring)", err=True)
    paths = write_report(run_dir)
    print_summary(run_dir)
    click.echo(f"report: {', '.join(str(p) for p in paths)}", err=True)


# -- a run --------------------------------------------------------------------------------------------
def _parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise UserError(f"--modes takes a comma-separated list of {', '.join(MODES)}; got '{text}'")
    return list(dict.fromkeys(modes))


def _stored_options(o: dict, given: set[str]) -> dict:
    """The run's identity as run.json keeps it: every option that decides an answer, paths made absolute."""
    out = {k: v for k, v in o.items() if k not in ACTIONS}
    if "mode" in given and "modes" in given:
        raise UserError("give --modes (a comma-separated list); --mode is the same for one mode")
    out["modes"] = _parse_modes(o["mode"] if "mode" in given else o["modes"])
    for key in ("dataset", "media_root", "model", "mmproj"):
        value = out.get(key)
        if value is not None and (key in ("dataset", "media_root") or Path(value).expanduser().is_file()):
            out[key] = str(Path(value).expanduser().resolve())
    return out


def _resume_options(stored: dict, current: dict, given: set[str], run_file: Path) -> dict:
    """The run's own options; any the user gave again must agree (machine options may change)."""
    merged = dict(stored)
    if "no_reasoning" in merged:  # runs stored before the option became --reasoning/--no-reasoning
        merged["reasoning"] = not merged.pop("no_reasoning")
    for name in sorted(given & set(current)):
        if name in MACHINE_OPTIONS:
            if name == "threads" and current[name] != stored.get(name):
                click.echo(
                    f"warning: --threads {current[name]} differs from the run's {stored.get(name) or 'default'}: "
                    "V-Reason answers can differ with the thread count (floating-point sums in another order)",
                    err=True,
                )
            merged[name] = current[name]
        elif name in stored and current[name] != stored[name]:
            raise UserError(
                f"--resume: {_flag(name)} {current[name]} differs from the run's {stored[name]} ({run_file}); "
                "leave it out to continue with the run's, or start a new run in another --out"
            )
    return merged


def file_fingerprint(path: Path) -> dict:
    """A model file's identity, cheap on a 5 GB file: its size and a sha256 of its first, middle and last MB.
    Two different GGUF files agree on all three only by design, not by accident (their headers differ)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - FINGERPRINT_CHUNK // 2), max(0, size - FINGERPRINT_CHUNK)}):
            f.seek(offset)
            digest.update(f.read(FINGERPRINT_CHUNK))
    return {"size": size, "sha256_sampled": digest.hexdigest()}


def _check_same_model(run: dict, files: dict[str, Path], run_file: Path) -> None:
    """A resumed run answers with the model it started with: runs stored with fingerprints refuse another file
    (a run stored without them, before they were kept, resumes as it always did)."""
    stored = run.get("model_files") or {}
    for role, path in files.items():
        if role in stored and file_fingerprint(path) != stored[role]["fingerprint"]:
            flag = "--model" if role == "model" else "--mmproj"
            raise UserError(
                f"--resume: the {role} file {path} is not the one the run started with ({stored[role]['path']}, "
                f"{run_file}); give {flag} with that file, or start a new run in another --out"
            )


def skipped_rows(dataset: Dataset) -> list[dict]:
    """The rows the load left out, as run.json keeps them, so the report names them."""
    return [{"source": entry.source, "reason": entry.reason} for entry in dataset.invalid]


def prompt_examples(items: Sequence[Item]) -> dict[str, dict[str, str]]:
    """Per benchmark and reference rule ("generic": the project's own prompt), the prompt of its first item:
    the template the model was asked with, as run.json keeps it (every row also keeps its own `prompt`)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        out.setdefault(item.dataset, {}).setdefault(item.rule or "generic", item.prompt())
    return out


def _show_invalid(dataset: Dataset) -> None:
    bad = dataset.invalid
    if not bad:
        return
    click.echo(f"warning: {count(len(bad), 'row')} of {dataset.path} skipped:", err=True)
    for entry in bad[:SHOW_INVALID]:
        click.echo(f"  {entry}", err=True)
    if len(bad) > SHOW_INVALID:
        click.echo(f"  ... and {len(bad) - SHOW_INVALID} more", err=True)


def _run(o: dict, given: set[str]) -> None:
    from .results import RunDir

    if o["dataset"] is None and not o["resume"]:
        raise UserError("name the dataset file: vreason eval DATASET --out DIR (--make-sample DIR writes one)")
    if o["workers"] is not None and not o["ray"]:
        raise UserError("--workers is the number of Ray workers; give --ray too (auto, local or an address)")
    if o["ray"]:  # without Ray installed, say how to get it before any slow step
        from .cluster import import_ray

        import_ray()
    if o["out"] is None:
        raise UserError("--out DIR is needed: the folder that holds the run (results.jsonl, run.json, the report)")
    if o["retry_errors"] and not o["resume"]:
        raise UserError("--retry-errors asks a run's failed answers again; give --resume too")
    run_dir = RunDir(o["out"])
    if o["resume"]:
        run_dir.read_run()  # a folder that holds no run is said so before anything is locked or made
    with run_dir.locked():
        _run_locked(o, given, run_dir)


def _run_locked(o: dict, given: set[str], run_dir: RunDir) -> None:
    """The run, with its folder locked to this process."""
    from ..checks import check_options
    from ..planning import plan_videos
    from .datasets import dataset_sha256, load_dataset
    from .results import read_results
    from .runner import EvalSettings, select_items

    if "mode" in given:  # --mode X is --modes X
        given = given | {"modes"}
    current = _stored_options(o, given)
    run: dict | None = None
    if o["resume"]:
        run = run_dir.read_run()
        opts = _resume_options(run["options"], current, given, run_dir.run_file)
    else:
        run_dir.require_new()
        opts = current
    modes = opts["modes"]
    settings = read_settings(opts, hook=any(m != "base" for m in modes))
    opts["seed"] = settings.generation.sampling.seed  # a drawn seed (-1) is the run's: resumed, it draws no other
    check_options(settings)
    dataset = load_dataset(
        Path(opts["dataset"]), opts["dataset_format"], opts["media_root"] and Path(opts["media_root"])
    )
    _show_invalid(dataset)
    if not dataset.items:
        raise UserError(f"nothing to run: no usable question in {dataset.path} (the skipped rows are listed above)")
    items = select_items(dataset.items, opts["sample"], opts["limit"], opts["seed"])
    ids = [item.id for item in items]
    data_hash = dataset_sha256(dataset.path)
    if run is not None and (run["dataset_sha256"] != data_hash or run["item_ids"] != ids):
        raise UserError(
            f"--resume: the dataset {dataset.path} (or the videos it finds) changed since the run started; "
            "start a new run in another --out"
        )
    plan = plan_videos(settings, [(i.video, i.start, i.end) for i in items], [i.prompt() for i in items])
    info, projector = plan.info, plan.projector
    model_files = {"model": info.path, "mmproj": projector.path}
    if run is not None:
        _check_same_model(run, model_files, run_dir.run_file)

    back = read_results(run_dir.results_file)
    if back.dropped is not None:
        click.echo(f"note: the last line of {run_dir.results_file} was half-written; that answer is redone", err=True)
    done = back.done(o["retry_errors"])
    kept = [row for row in back.latest() if (row["id"], row["mode"]) in done]
    todo = len(items) * len(modes) - sum(1 for item in items for m in modes if (item.id, m) in done)
    click.echo(
        f"{count(len(items), 'question')} about {count(len({i.video_key for i in items}), 'video')} x "
        f"{count(len(modes), 'mode')} ({', '.join(modes)}): {count(todo, 'answer')} to go"
        + (f", {len(kept)} done" if kept else ""),
        err=True,
    )
    scoring = opts.get("scoring") or "lenient"  # a run stored before --scoring existed was scored leniently
    eval_settings = EvalSettings(settings.generation, settings.frames, settings.vreason, settings.token_budget, scoring)
    if todo:
        from ..engine import Engine

        if o["ray"]:  # a loaded engine per worker, on the cluster
            from .cluster import WorkerPool

            videos = [item.video for item in items]
            engine = WorkerPool(  # threads the run never set: the workers share each node's CPUs
                o["ray"], o["workers"], info.path, projector.path, settings.engine, videos,
                split_cpus=opts.get("threads") is None,
            )  # fmt: skip
        else:
            engine = Engine(info.path, projector.path, settings.engine, infos=(info, projector))
        if run is None:  # written once the model loads: a run that never started leaves --out as it was
            run_dir.write_run(
                {
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "dataset": str(dataset.path),
                    "dataset_format": dataset.format,
                    "dataset_sha256": data_hash,
                    "item_ids": ids,
                    "model": {"name": info.name, "path": str(info.path), "random_weights": info.random_weights},
                    "model_files": {
                        role: {"path": str(path), "fingerprint": file_fingerprint(path)}
                        for role, path in model_files.items()
                    },
                    "skipped": skipped_rows(dataset),
                    "scoring": scoring,
                    "prompts": prompt_examples(items),
                    "options": opts,
                }
            )
        with engine:
            written, stopped = _drive(engine, items, modes, eval_settings, run_dir, back, kept, done)
        if stopped:
            click.echo(
                f"stopped: {count(written, 'answer')} written this time, {len(kept) + written} in all; "
                f"`vreason eval --resume --out {run_dir.path}` continues the run",
                err=True,
            )
            sys.exit(130)
    from .report import print_summary, write_report

    paths = write_report(run_dir.path)
    print_summary(run_dir.path)
    click.echo(f"report: {', '.join(str(p) for p in paths)}", err=True)


def _drive(
    engine: Engine | WorkerPool,
    items: Sequence[Item],
    modes: Sequence[Mode],
    settings: EvalSettings,
    run_dir: RunDir,
    back: ReadBack,
    kept: Sequence[dict],
    done: set[tuple[str, str]],
) -> tuple[int, bool]:
    """The runner in a worker thread, so that Ctrl-C is seen at once (cli's pattern: the first cancels the
    answer running now, a second aborts), with the progress line; returns (rows written, stopped)."""
    from ..interrupt import until_done
    from .cluster import WorkerPool
    from .results import ResultsWriter
    from .runner import Stop, run_eval

    stop = Stop()
    view = EvalProgress(len(items) * len(modes), kept, modes)
    with ResultsWriter(run_dir.results_file, back.good_bytes) as writer:
        try:
            written = until_done(
                stop,  # type: ignore[arg-type]  # a Stop cancels like an AnswerHandle
                lambda: (
                    engine.run_eval(items, modes, settings, writer, done, stop, view.on_row)
                    if isinstance(engine, WorkerPool)  # rows only: the workers' events stay on their machines
                    else run_eval(engine, items, modes, settings, writer, done, stop, view.on_row, view.on_event)
                ),
            )
        finally:
            view.end()
    return written, stop.cancel_requested


class EvalProgress:
    """The run's progress on a `report.StatusLine`: answers done of all, answers a minute, time left, and
    per mode the running accuracy and mean tokens, plus what is being answered now. On a terminal it is
    redrawn after every answer; otherwise a plain line every `every_s` seconds and when the last is in."""

    def __init__(self, total: int, rows: Sequence[dict], modes: Sequence[str], stream=None, every_s: float = 5.0):
        from ..report import StatusLine

        self.line = StatusLine(stream, every_s)
        self.total = total
        self.modes = list(modes)
        self.done = 0
        self.errors = 0
        self.scores: dict[str, list[float]] = {m: [] for m in modes}
        self.tokens: dict[str, list[int]] = {m: [] for m in modes}
        for row in rows:
            self._count(row)
        self.start_done = self.done
        self.t0 = time.monotonic()
        self.now = ""

    def _count(self, row: dict) -> None:
        self.done += 1
        if row["error"] is not None:
            self.errors += 1
            return
        if row["mode"] in self.scores:
            if row["score"] is not None:
                self.scores[row["mode"]].append(row["score"])
            self.tokens[row["mode"]].append(row["n_tokens"])

    def on_row(self, row: dict) -> None:
        self._count(row)
        self.now = ""
        self._show(force=self.line.tty or self.done >= self.total)

    def on_event(self, item: Item, mode: str, event: Event) -> None:
        from ..events import Encoded

        if isinstance(event, Progress) and event.stage == "encode":
            self.now = f"{item.id}: encoding {event.done}/{event.total}"
        elif isinstance(event, Encoded) and event.source == "disk":  # the encoding cache spared the encoder
            self.now = f"{item.id}: encoding loaded from the cache, saved {event.saved_s:.1f} s"
        elif isinstance(event, TokenEvent):
            self.now = f"{item.id} {mode}: {event.step} tokens"
        else:
            return
        self._show(force=False)

    def line_text(self) -> str:
        new = self.done - self.start_done
        elapsed = time.monotonic() - self.t0
        parts = [f"{self.done}/{self.total} answers"]
        if new and elapsed > 0:
            rate = new / elapsed
            parts.append(f"{rate * 60:.1f}/min")
            if self.done < self.total:
                parts.append(f"~{_duration((self.total - self.done) / rate)} left")
        for mode in self.modes:
            scores, tokens = self.scores[mode], self.tokens[mode]
            if tokens:
                acc = f"{100 * sum(scores) / len(scores):.0f}%" if scores else "-"
                parts.append(f"{mode} {acc} {sum(tokens) / len(tokens):.0f} tok")
        if self.errors:
            parts.append(f"{self.errors} failed")
        return " | ".join(parts)

    def _show(self, force: bool) -> None:
        status = self.line_text() + (f" | {self.now}" if self.now else "")
        self.line.show(self.done / max(1, self.total), status, force)

    def end(self) -> None:
        self.line.end()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

"""The run-settings layer: one table, read by every front end, checked by the settings types themselves.

The bad inputs a new user tried are refused with one line and exit 2 before any encoding, in `run`,
`chat` and `eval` alike; `eval` refuses a run that does not fit before its first item.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import pytest

from vreason_local import fit, gguf_info
from vreason_local.clips import make_clip
from vreason_local.errors import Remedy, SettingError, UserError
from vreason_local.evaluate.datasets import make_sample
from vreason_local.settings import (
    SETTINGS,
    EngineSettings,
    FrameSampling,
    GenerationSettings,
    RunSettings,
    TokenSampling,
    VReasonSettings,
    cpu_count,
    render_error,
)
from vreason_local.wording import count

# What a new user typed (issue 17): each must be one line and exit 2, whatever the command.
BAD = [
    (["--lr", "nan"], "learning rate must be a finite number"),
    (["--lr", "inf"], "learning rate must be a finite number"),
    (["--lr", "1e30"], "learning rate must be from 0 to 1,000, got 1e+30"),
    (["--seed", "-2"], "seed must be from -1"),
    (["--temperature", "-0.5"], "temperature must be from 0 to 100"),
    (["--beta", "1"], "beta must be at least 0 and below 1"),
    (["--top-p", "nan"], "top-p must be a finite number"),
    (["--fps", "inf"], "fps must be a finite number"),
    (["--head-skip", "0"], "head skip must be above 0"),
    (["--head-skip", "nan"], "head skip must be a number, above 0, got nan"),
    (["--tail-dtype", "f8"], "tail dtype must be one of auto"),
    (["--gpu-layers", "-3"], "GPU layers must be from -1"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("settings")
    tiny = tiny_model_factory("qwen25vl")
    sample = make_sample(d / "sample", n_videos=2, questions_per_video=2)
    return {
        "model": tiny.model_path,
        "mmproj": tiny.mmproj_path,
        "clip": make_clip(d / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168)),
        "dataset": sample,
        "root": d,
    }


def _model(f: dict[str, Path]) -> list[str]:
    return ["--model", str(f["model"]), "--mmproj", str(f["mmproj"])]


def _command(name: str, f: dict[str, Path], out: Path) -> list[str]:
    if name == "run":
        return ["run", "--video", str(f["clip"]), "-q", "What happens?", *_model(f)]
    if name == "chat":  # refused before the app starts: no terminal is needed
        return ["chat", str(f["clip"]), *_model(f)]
    return ["eval", str(f["dataset"]), "--out", str(out), *_model(f)]


@pytest.mark.parametrize("command", ["run", "chat", "eval"])
@pytest.mark.parametrize(("extra", "words"), BAD)
def test_bad_values_are_one_line_and_exit_2_in_every_command(vreason, files, tmp_path, command, extra, words):
    out = tmp_path / "run"
    code, stdout, err = vreason([*_command(command, files, out), *extra])
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err, err
    assert "vision tokens" not in err and not out.exists()  # nothing planned, encoded or written


def test_every_setting_has_one_option_in_every_command(vreason):
    """The options are made from the table: each setting's flag, in run, chat and eval alike."""
    for command in ("run", "chat", "eval"):
        code, out, _ = vreason([command, "--help"])
        text = " ".join(out.split())
        for s in SETTINGS:
            flag = f"{s.option} / --no-{s.option[2:]}" if s.kind is bool else s.option
            assert flag in text or s.option in text, (command, s.option)
    assert len({s.name for s in SETTINGS}) == len(SETTINGS) == len({s.path for s in SETTINGS})


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, cmd in group.commands.items():
        found.append(((*prefix, name), cmd))
        if isinstance(cmd, click.Group):
            found += _commands(cmd, (*prefix, name))
    return found


def test_every_option_of_every_command_says_what_it_does(vreason):
    """No option shows only its type in --help (issue 18: --max-tokens, --top-p ... had none)."""
    from vreason_local.cli import cli

    commands = _commands(cli)
    assert {("run",), ("eval",), ("chat",), ("demo",), ("models", "pull"), ("models", "make-tiny")} <= {
        path for path, _ in commands
    }
    for path, cmd in commands:
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert p.help and p.help.strip(), (path, p.opts)
    code, out, _ = vreason(["run", "--help"])
    text = " ".join(out.split())
    assert "--max-pixels" in text and "[default: 112896 (336x336)]" in text, text
    assert "[default: qwen2.5-vl-3b]" in text


def test_counts_are_worded_in_the_singular_for_one():
    assert count(1, "token") == "1 token" and count(2, "token") == "2 tokens" and count(0, "frame") == "0 frames"
    assert count(1_024, "vision token") == "1,024 vision tokens" and count(1, "query", "queries") == "1 query"
    assert count(3, "query", "queries") == "3 queries"


def test_every_setting_is_a_field_of_the_types_and_its_default_is_theirs():
    """The table describes the types (a path that names no field would check nothing)."""
    settings = RunSettings()
    values = settings.values()
    assert set(values) == {s.name for s in SETTINGS}
    for s in SETTINGS:
        if s.name == "threads":
            assert values["threads"] == settings.engine.n_threads  # the default: the CPUs, up to 8
        elif s.name != "model":
            assert values[s.name] == s.default, s.name
    assert RunSettings.from_values(values, hook=settings.engine.hook) == settings


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.kind in (int, float)], ids=lambda s: s.name)
def test_each_number_is_checked_at_its_bounds(s):
    """The bounds are accepted and one step past each is refused, through the flat reader."""

    def read(value):
        return RunSettings.from_values({s.name: value, **({"min_frames": 0} if s.name == "max_frames" else {})})

    for bound, is_open, step in ((s.low, s.low_open, -1), (s.high, s.high_open, 1)):
        if bound is None or math.isinf(bound):
            continue
        inside = bound - step * (1e-6 if s.kind is float else 1) if is_open else bound
        outside = bound if is_open else bound + step * (1e-6 if s.kind is float else 1)
        if s.name not in ("min_frames", "max_frames", "threads"):  # frame pairs and the CPUs: below
            read(s.kind(inside))
        with pytest.raises(SettingError) as e:
            read(s.kind(outside))
        assert e.value.setting == s.path and "\n" not in e.value.message
    if s.kind is float:
        for value in (math.nan, math.inf, -math.inf) if s.finite else (math.nan, -math.inf):
            with pytest.raises(SettingError, match="number" if s.finite or math.isnan(value) else "above"):
                read(value)
        if not s.finite:  # head_skip: inf is "never skip"
            read(math.inf)


def test_the_types_check_themselves_without_a_front_end():
    """The Python API builds the same types: a bad value is the same SettingError there."""
    for make, path in [
        (lambda: VReasonSettings(lr=math.nan), "vreason.lr"),
        (lambda: VReasonSettings(every=0), "vreason.every"),
        (lambda: TokenSampling(top_p=1.5), "generation.sampling.top_p"),
        (lambda: GenerationSettings(max_tokens=0), "generation.max_tokens"),
        (lambda: EngineSettings(n_threads=0), "engine.n_threads"),
        (lambda: EngineSettings(repack="maybe"), "engine.repack"),
        (lambda: FrameSampling(fps=math.nan), "frames.fps"),
        (lambda: RunSettings(mode="fast"), "mode"),
    ]:
        with pytest.raises(SettingError) as e:
            make()
        assert e.value.setting == path


def test_unknown_names_are_refused():
    with pytest.raises(UserError, match="unknown setting: temprature"):
        RunSettings.from_values({"temprature": 0.5})


def test_seed_minus_one_draws_a_seed_and_records_it(vreason, files):
    seeds = set()
    for _ in range(2):
        code, out, err = vreason(
            ["run", "-q", "Say something.", "--model", str(files["model"]), "--seed", "-1", "--temperature", "0.8",
             "--max-tokens", "2", "--json"]
        )  # fmt: skip
        assert code == 0, err
        seed = json.loads(out)["settings"]["generation"]["sampling"]["seed"]
        assert 0 <= seed < 2**31 and f"note: --seed -1: drew the random seed {seed}" in err
        seeds.add(seed)
    assert len(seeds) == 2  # two draws of 2^31 agree once in two billion


def test_threads_above_the_cpus_warn_and_are_capped(vreason, files):
    code, out, err = vreason(
        ["run", "-q", "Say something.", "--model", str(files["model"]), "--threads", "1000", "--max-tokens", "2",
         "--json"]
    )  # fmt: skip
    assert code == 0, err
    assert f"warning: --threads 1000 is more than this machine's {cpu_count()} CPUs; using {cpu_count()}" in err
    assert RunSettings.from_values({"threads": 1000}).engine.n_threads == cpu_count()


def test_context_remedies_name_only_values_that_fit(vreason, files):
    """A long answer gets a --max-tokens that fits; a question too long for any setting, a shorter question."""
    code, _, err = vreason(["run", "-q", "Hi?", "--model", str(files["model"]), "--max-tokens", "100000"])
    assert code == 2 and "--max-tokens" in err and "fewer frames" not in err and "resolution" not in err, err
    value = int(err.split("--max-tokens ")[1].split()[0].rstrip(";"))
    assert 0 < value < 100000
    code, _, err = vreason(["run", "-q", "Hi?", "--model", str(files["model"]), "--max-tokens", str(value), "--json"])
    assert code == 0, err  # the value named fits
    question = "why " * 40_000
    code, _, err = vreason(["run", "-q", question, "--model", str(files["model"]), "--max-tokens", "4"])
    assert code == 2 and err.count("\n") == 1 and err.rstrip().endswith("try a shorter question"), err[-300:]


def test_remedies_in_each_front_ends_words():
    exc = UserError("too long", [Remedy("fewer frames", "frames.max_frames", 16), Remedy("less", "engine.n_ctx")])
    assert render_error(exc, "flag") == "too long; try --max-frames 16 or less (--ctx)"
    assert render_error(exc, "label") == "too long; try setting max frames to 16 or less (context size)"
    assert render_error(exc, "param") == "too long; try max_frames=16 or less (ctx)"


def test_eval_refuses_a_context_that_does_not_fit_before_its_first_item(vreason, files, tmp_path):
    out = tmp_path / "run"
    code, _, err = vreason(["eval", str(files["dataset"]), "--out", str(out), *_model(files), "--ctx", "256"])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: this needs"), err
    assert "try --ctx " in err  # a context that holds the largest video's prompt
    assert not (out / "results.jsonl").exists() and not (out / "run.json").exists()


def test_eval_refuses_a_run_that_does_not_fit_in_memory_before_its_first_item(vreason, files, tmp_path, monkeypatch):
    """The largest video's prompt is sized and checked against memory: here a machine with room for the
    weights and 64 tokens of KV cache, far less than any question about a video needs."""
    kv = gguf_info.read_model_info(files["model"]).kv_bytes_per_token
    fixed = files["model"].stat().st_size + files["mmproj"].stat().st_size + fit.DEFAULT_OVERHEAD_BYTES
    small = fit.MemoryInfo(total=fixed * 2, available=fixed + 64 * kv, limit=None, source="test")
    monkeypatch.setattr(fit, "available_memory", lambda use_gpu=True: small)
    out = tmp_path / "run"
    code, _, err = vreason(["eval", str(files["dataset"]), "--out", str(out), *_model(files)])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: needs"), err
    assert not (out / "results.jsonl").exists() and not (out / "run.json").exists()


def test_chat_and_the_settings_form_read_the_same_table():
    """The chat's settings form takes its values through the same reader: a bad one is the same error."""
    settings = RunSettings()
    with pytest.raises(SettingError) as form:
        settings.with_values({"lr": math.inf})
    with pytest.raises(SettingError) as flag:
        RunSettings.from_values({"lr": math.inf})
    assert form.value.message == flag.value.message
    assert settings.with_values({"lr": 0.01}).vreason.lr == 0.01


def test_the_engine_names_an_answer_length_that_fits(files):
    """The Python API, which plans nothing, gets the same remedy from the engine's exact count."""
    from vreason_local.engine import Engine
    from vreason_local.errors import ContextTooSmall
    from vreason_local.media import Media

    with Engine(files["model"], None, EngineSettings(hook=False)) as engine:
        with pytest.raises(ContextTooSmall) as e:
            engine.ask(Media.none(), "Hi?", GenerationSettings(max_tokens=100_000))
        (remedy,) = e.value.remedies
        assert remedy.setting == "generation.max_tokens" and 0 < remedy.value < 100_000
        answer = engine.ask(Media.none(), "Hi?", GenerationSettings(max_tokens=remedy.value)).result()
        assert answer.stop_reason in ("eos", "max_tokens", "answer")  # the value named fits: it runs


def test_an_eval_folder_from_before_the_settings_layer_resumes(vreason, files, tmp_path):
    """run.json of older runs holds `no_reasoning` (the flag's old name) and no `head_skip`: --resume reads it."""
    out = tmp_path / "run"
    args = ["eval", str(files["dataset"]), "--out", str(out), *_model(files), "--modes", "base", "--limit", "2"]
    code, _, err = vreason([*args, "--max-tokens", "2"])
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    options = run["options"]
    options["no_reasoning"] = not options.pop("reasoning")
    del options["head_skip"]
    (out / "run.json").write_text(json.dumps(run))
    rows = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(rows[0] + "\n")  # one answer left to do, with the old options
    code, _, err = vreason(["eval", "--resume", "--out", str(out)])
    assert code == 0, err
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(again) == 2 and again[1]["settings"]["generation"]["reasoning"] is True

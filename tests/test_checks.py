"""Settings and input files are checked before any work: one line, exit 2, in the user's terms.

Real components only: generated tiny GGUF models (random weights), a generated clip, the real `vreason`
entry point (`cli.main`, in this process: each case stops before a model is loaded), real PyTorch for
device availability. Each CLI case asserts the exit code, that stderr is exactly one `error:` line, and
what it says to set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vreason_local import gguf_info
from vreason_local.checks import check_model_settings
from vreason_local.cli import main
from vreason_local.clips import make_clip
from vreason_local.devices import check_device
from vreason_local.engine import EngineSettings
from vreason_local.errors import Remedy, SettingError, UserError
from vreason_local.settings import render_error
from vreason_local.video import MIN_PIXELS, FrameSampling, VideoInfo, plan_sampling


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("checks")
    tiny, tiny3 = tiny_model_factory("qwen25vl"), tiny_model_factory("qwen3vl")
    data = tiny.model_path.read_bytes()
    (d / "cut.gguf").write_bytes(data[: len(data) * 9 // 10])  # header intact, tensor data cut short
    (d / "header-cut.gguf").write_bytes(data[:200])  # ends inside the metadata
    (d / "mmproj-cut.gguf").write_bytes(tiny.mmproj_path.read_bytes()[:-4096])
    (d / "notes.gguf").write_text("these are notes, not a model\n")
    (d / "empty.gguf").write_bytes(b"")
    return {
        "model": tiny.model_path,
        "mmproj": tiny.mmproj_path,
        "mmproj3": tiny3.mmproj_path,
        "clip": make_clip(d / "clip.mp4", seconds=2.0, fps=10.0, size=(112, 84)),
        **{p.stem: p for p in d.glob("*.gguf")},
    }


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's caches under tmp_path, never the user's."""
    monkeypatch.setenv("VREASON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `vreason ARGS`, expect exit 2 with nothing but one `error:` line on stderr, and return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    assert e.value.code == 2, err
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def run_args(f: dict[str, Path], *extra: str, model: str = "model", mmproj: str = "mmproj") -> list[str]:
    return [
        "run",
        "--model",
        str(f[model]),
        "--mmproj",
        str(f[mmproj]),
        "--video",
        str(f["clip"]),
        "-q",
        "What happens?",
        "--max-tokens",
        "4",
        "--threads",
        "1",
        *extra,
    ]


# ---------------------------------------------------------------- through the command line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--max-frames", "1"], ["at most 1 frame,", "even number of frames", "try --max-frames 4"]),
        (
            ["--min-frames", "8", "--max-frames", "4"],
            ["at least 8 and at most 4", "try --max-frames 8 or --min-frames 4"],
        ),
        (["--max-pixels", "784"], ["pixel budget of 784", "3,136 pixels", "try --max-pixels 3136"]),
    ],
)
def test_frame_settings_say_what_to_set(files, isolated, capsys, extra, expected):
    line = error_line(run_args(files, *extra), capsys)
    for words in expected:
        assert words in line, line


@pytest.mark.parametrize(
    ("model", "mmproj", "expected"),
    [
        ("cut", "mmproj", ["cut.gguf is incomplete", "before its data does", "download or copy it again"]),
        ("header-cut", "mmproj", ["header-cut.gguf is incomplete", "inside its header"]),
        ("model", "mmproj-cut", ["mmproj-cut.gguf is incomplete"]),
        ("notes", "mmproj", ["notes.gguf is not a GGUF file", "GGUF signature"]),
        ("empty", "mmproj", ["empty.gguf is empty (0 bytes), not a GGUF file"]),
        (
            "model",
            "mmproj3",
            [
                "the projector is for Qwen3-VL but the model is Qwen2.5-VL",
                "try the projector released with the model (--mmproj)",
            ],
        ),
    ],
)
def test_bad_model_files_are_reported_before_the_video(files, isolated, capsys, model, mmproj, expected):
    """The clip window is also wrong (it starts after the clip ends): the model file is named first."""
    line = error_line(run_args(files, "--start", "999", model=model, mmproj=mmproj), capsys)
    for words in expected:
        assert words in line, line
    assert "beyond the end" not in line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--gpu-layers", "-2"], ["GPU layers must be from -1", "got -2 (-1 for all layers", "try --gpu-layers -1"]),
        (["--ctx", "300000"], ["300,000 tokens", "trained for (8,192 tokens)", "try --ctx 8192"]),
        (["--mode", "vreason", "--device", "gpu"], ["'gpu' is not a device", "try --device auto"]),
        pytest.param(
            ["--mode", "lite", "--device", "cuda"],
            ["CUDA is not available", "try --device cpu"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_engine_settings_are_checked_before_any_work(files, isolated, capsys, extra, expected):
    line = error_line(run_args(files, *extra), capsys)
    for words in expected:
        assert words in line, line


def test_help_promises_the_pixel_minimum_that_is_enforced(capsys):
    try:
        main(["run", "--help"])
    except SystemExit as e:  # click versions differ: --help returns, or exits 0
        assert e.code in (0, None)
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"at least {MIN_PIXELS} (56x56)" in help_text and "x>=784" not in help_text
    FrameSampling(max_pixels=MIN_PIXELS)  # the promised minimum is accepted
    with pytest.raises(SettingError):
        FrameSampling(max_pixels=MIN_PIXELS - 1)


# ---------------------------------------------------------------- the checks themselves


def test_gpu_layers_below_minus_one():
    EngineSettings(n_gpu_layers=-1)
    EngineSettings(n_gpu_layers=0)
    with pytest.raises(SettingError) as e:
        EngineSettings(n_gpu_layers=-5)
    assert e.value.setting == "engine.n_gpu_layers" and e.value.value == -5
    assert [r.value for r in e.value.remedies] == [-1]


def test_context_above_the_trained_length(files):
    info = gguf_info.read_model_info(files["model"])
    check_model_settings(info, None)
    check_model_settings(info, info.n_ctx_train)
    with pytest.raises(SettingError) as e:
        check_model_settings(info, info.n_ctx_train + 1)
    assert e.value.setting == "engine.n_ctx"
    assert e.value.remedies == (Remedy("the model's trained context", "engine.n_ctx", info.n_ctx_train),)


@pytest.mark.parametrize("name", ["auto", "cpu"])
def test_devices_that_always_work(name):
    check_device(name)


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "mps:0", ""])
def test_unknown_device_names(name):
    with pytest.raises(SettingError) as e:
        check_device(name)
    assert e.value.setting == "vreason.device" and e.value.remedies[0].value == "auto"


@pytest.mark.parametrize(
    ("name", "available"),
    [
        ("cuda", torch.cuda.is_available()),
        (f"cuda:{torch.cuda.device_count()}", False),  # one past the last GPU
        ("mps", torch.backends.mps.is_available()),
    ],
)
def test_gpu_devices_follow_what_pytorch_has(name, available):
    if available:
        check_device(name)
        return
    with pytest.raises(SettingError) as e:
        check_device(name)
    assert e.value.setting == "vreason.device" and "\n" not in e.value.message


def test_base_runs_and_bad_names_cost_no_torch_import():
    """Base runs check no device; a misspelt device is refused by name alone. Neither imports torch."""
    code = (
        "import sys\n"
        "from vreason_local.checks import check_options\n"
        "from vreason_local.errors import SettingError\n"
        "from vreason_local.settings import RunSettings\n"
        "check_options(RunSettings.from_values({'device': 'gpu'}))\n"
        "try:\n    check_options(RunSettings.from_values({'mode': 'vreason', 'device': 'gpu'}))\nexcept SettingError:\n    pass\n"
        "else:\n    raise SystemExit('accepted')\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("low", "high"), [(4, 1), (4, 0), (4, -3), (8, 4), (3, 3), (1, 1), (5, 4), (10, 2)])
def test_frame_limit_remedies_are_values_that_work(low, high):
    """Each remedy alone turns the limits into ones that sample an even number of frames, at least 2."""
    with pytest.raises(SettingError) as e:
        FrameSampling(min_frames=low, max_frames=high)
    assert e.value.setting == "frames.max_frames" and "--" not in e.value.message
    assert e.value.remedies
    for remedy in e.value.remedies:
        fixed = {"min_frames": low, "max_frames": high, remedy.setting.split(".")[1]: remedy.value}
        plan = plan_sampling(VideoInfo(Path("v.mp4"), 60.0, 10.0, 600, 160, 120, 0, "avc1"), FrameSampling(**fixed))
        assert len(plan.indices) % 2 == 0 and 2 <= len(plan.indices) <= max(2, fixed["max_frames"])


@pytest.mark.parametrize("factor", [28, 32])
@pytest.mark.parametrize(("width", "height"), [(1920, 1080), (640, 480), (500, 500), (1080, 1920), (4000, 300)])
def test_the_minimum_pixel_budget_is_honoured_for_every_grid(factor, width, height):
    info = VideoInfo(Path("v.mp4"), 10.0, 10.0, 100, width, height, 0, "avc1")
    plan = plan_sampling(info, FrameSampling(max_pixels=MIN_PIXELS, factor=factor))
    assert plan.width * plan.height <= MIN_PIXELS
    assert plan.width % factor == 0 and plan.height % factor == 0


def test_setting_errors_render_as_one_line_naming_the_flag():
    with pytest.raises(UserError) as e:
        FrameSampling(max_pixels=1000)
    assert render_error(e.value) == (
        "a pixel budget of 1,000 per frame is below the smallest frame size the model is given (3,136 pixels); "
        "try --max-pixels 3136"
    )

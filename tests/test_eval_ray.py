"""`vreason eval` on Ray: a local two-CPU cluster, two workers with one real engine each (a generated tiny
model, the generated sample dataset). Nothing is mocked.

What is checked: the rows equal a single-process run's (greedy tokens, text, scores, encode reuse, per
item and mode); a worker SIGKILLed (Ray restarts it) or `ray.kill`ed (gone for good) after the first row
still gives exactly one row per item and mode, the same rows; a driver SIGKILLed mid-run, then `--resume`
on one machine or on the cluster, completes the run with each answer once; a node without the model, a
model that does not load, a cluster too small, a bad address, --workers without --ray and a Python
without Ray each give one clear error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from vreason_local.cli import main  # noqa: E402
from vreason_local.engine import Engine, EngineSettings, GenerationSettings  # noqa: E402
from vreason_local.errors import UserError  # noqa: E402
from vreason_local.evaluate.cluster import Demand, WorkerPool, connect, split_threads  # noqa: E402
from vreason_local.evaluate.datasets import load_dataset, make_sample  # noqa: E402
from vreason_local.evaluate.results import ResultsWriter, read_results  # noqa: E402
from vreason_local.evaluate.runner import EvalSettings, evaluate_group, group_by_video  # noqa: E402
from vreason_local.video import FrameSampling  # noqa: E402
from vreason_local.vreason import VReasonSettings  # noqa: E402

MODES = ("base", "vreason", "lite")
ENGINE = EngineSettings(n_threads=1)  # two 1-thread workers on the 2-CPU cluster
SETTINGS = EvalSettings(
    GenerationSettings(max_tokens=6), FrameSampling(fps=2.0, max_frames=4), VReasonSettings(every=1, lr=0.05)
)
# Everything a row says about its answer; timings (and the telemetry's times) differ from run to run.
SAME = ("text", "answer", "extracted", "correct", "score", "stop_reason", "tokens", "entropy", "n_video_tokens")
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """3 videos x 5 questions: with two workers, each is busy with a video when the first row arrives."""
    return load_dataset(make_sample(tmp_path_factory.mktemp("ray_data"), n_videos=3, questions_per_video=5)).items


@pytest.fixture(scope="module")
def reference(tiny, items) -> dict[tuple[str, str], dict]:
    """The rows of a single-process run, video by video, on an engine of this process."""
    with Engine(tiny.model_path, tiny.mmproj_path, ENGINE) as engine:
        return {
            (r["id"], r["mode"]): r for g in group_by_video(items) for r in evaluate_group(engine, g, MODES, SETTINGS)
        }


def _pool(tiny, items, workers: int = 2, **kw) -> WorkerPool:
    return WorkerPool("local", workers, tiny.model_path, tiny.mmproj_path, ENGINE, [i.video for i in items], **kw)


def _by_pair(rows: list[dict]) -> dict[tuple[str, str], dict]:
    pairs = [(r["id"], r["mode"]) for r in rows]
    assert len(pairs) == len(set(pairs)), "an answer came back twice"
    return dict(zip(pairs, rows))


def test_rows_equal_a_single_process_run_and_are_written_as_they_arrive(ray_local, tiny, items, reference, tmp_path):
    arrivals: list[int] = []
    results = tmp_path / "results.jsonl"
    with _pool(tiny, items) as pool, ResultsWriter(results) as writer:
        assert {info.pid for info in pool.infos} != {os.getpid()} and len({i.pid for i in pool.infos}) == 2
        written = pool.run_eval(
            items, MODES, SETTINGS, writer, on_row=lambda row: arrivals.append(len(read_results(results).rows))
        )
    assert written == len(items) * len(MODES) == len(reference)
    assert arrivals == list(range(1, written + 1))  # each row on disk before the next arrived
    got = _by_pair(read_results(results).rows)
    assert got.keys() == reference.keys()
    for pair, row in got.items():
        assert {k: row[k] for k in SAME} == {k: reference[pair][k] for k in SAME}, pair
        assert row["error"] is None and row["reused_encoding"] == reference[pair]["reused_encoding"]
    # Both workers answered: the videos were spread, each encoded once (its first row), on one worker.
    assert sum(not r["reused_encoding"] for r in got.values()) == len(group_by_video(items))


@pytest.mark.parametrize("how", ["sigkill", "ray.kill"])
def test_a_worker_killed_mid_run_loses_nothing_and_repeats_nothing(ray_local, tiny, items, reference, how):
    done = {next(iter(reference))}  # one answer a previous run already has: never asked again
    rows = []
    with _pool(tiny, items) as pool:
        for row in pool.rows(items, MODES, SETTINGS, done):
            rows.append(row)
            if len(rows) == 1:
                if how == "sigkill":  # a crash: Ray restarts the worker, which reloads its model
                    os.kill(pool.infos[0].pid, signal.SIGKILL)
                else:  # gone for good: the other worker takes its video
                    ray.kill(pool.actors[0])
    got = _by_pair(rows)
    assert got.keys() == reference.keys() - done
    for pair, row in got.items():
        assert row["error"] is None and row["tokens"] == reference[pair]["tokens"], pair
    # Worker 0 was given the first video; it was encoded again where its unfinished answers were taken up
    # (so twice if one of its rows had arrived before the kill).
    killed_video = str(group_by_video(items)[0][0].video)
    again = rows[0]["video"] == killed_video
    assert sum(not r["reused_encoding"] for r in rows) == len(group_by_video(items)) + again


def _eval(tiny, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vreason_local.cli", "eval", str(data), "--out", str(out),
        "--model", str(tiny.model_path), "--mmproj", str(tiny.mmproj_path),
        "--fps", "2", "--max-frames", "4", "--threads", "1", "--modes", "base,vreason", "--max-tokens", "24", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("resume_on", ["one machine", "ray"])
def test_driver_killed_then_resumed_gives_each_answer_once(ray_local, tiny, tmp_path, resume_on):
    data = make_sample(tmp_path / "data", n_videos=3, questions_per_video=4)
    out = tmp_path / "run"
    results = out / "results.jsonl"
    total = 12 * 2
    p = subprocess.Popen(_eval(tiny, data, out, "--ray", ray_local, "--workers", "2"), stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT_S
    while not (results.exists() and results.read_bytes().count(b"\n")):
        assert p.poll() is None, p.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    p.kill()
    p.communicate(timeout=TIMEOUT_S)
    killed = read_results(results)
    assert 0 < len(killed.rows) < total, "the run ended before its driver was killed"

    again = ["--ray", ray_local] if resume_on == "ray" else []  # the killed driver's workers went with it
    p = subprocess.run([*_eval(tiny, data, out), "--resume", *again], capture_output=True, timeout=TIMEOUT_S)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    assert f"{total - len(killed.rows)} answers to go" in err
    final = read_results(results)
    assert final.rows[: len(killed.rows)] == killed.rows  # what the Ray run wrote is kept as it was
    pairs = {(r["id"], r["mode"]) for r in final.rows}
    assert len(final.rows) == len(pairs) == total and all(r["error"] is None for r in final.rows)
    assert (out / "report.md").is_file()


def test_a_node_without_the_model_is_named(ray_local, tiny, items, tmp_path):
    gone = tmp_path / "model.gguf"  # a path that was never copied to the node
    with pytest.raises(UserError, match=rf"Ray node \S+ \([\d.]+\) lacks {gone}: each node reads the model"):
        WorkerPool("local", 2, gone, tiny.mmproj_path, ENGINE)
    missing_video = tmp_path / "clip.mp4"
    with pytest.raises(UserError, match=rf"lacks {missing_video}"):
        WorkerPool("local", 2, tiny.model_path, tiny.mmproj_path, ENGINE, [items[0].video, missing_video])


def test_a_model_that_does_not_load_on_a_worker_names_its_node(ray_local, tiny, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a GGUF file at all" * 100)
    with pytest.raises(UserError, match=r"^Ray worker on \S+ \([\d.]+\): .*broken\.gguf"):
        WorkerPool("local", 2, bad, tiny.mmproj_path, ENGINE)


def test_a_cluster_too_small_or_an_address_without_one_is_refused(ray_local, tiny):
    with pytest.raises(UserError, match=r"holds 2 workers of 1 CPU \(one per thread\) each, not 3") as exc:
        WorkerPool("local", 3, tiny.model_path, tiny.mmproj_path, ENGINE)
    assert exc.value.remedies[0].value == 2
    with pytest.raises(
        UserError, match=r"no Ray node has 64 CPUs \(one per thread\) for one worker \(the largest has 2 CPUs\)"
    ) as exc:
        WorkerPool("local", None, tiny.model_path, tiny.mmproj_path, EngineSettings(n_threads=64))
    assert exc.value.remedies[0].setting == "engine.n_threads" and exc.value.remedies[0].value == 2
    with pytest.raises(UserError, match="no Ray cluster answers at 127.0.0.1:1"):
        connect("127.0.0.1:1")
    with pytest.raises(UserError, match="give auto, local or HOST:PORT"):
        connect("nowhere")
    with pytest.raises(UserError, match=r"'127.0.0.1:99999' is not a Ray cluster address: port 99999 is not between"):
        connect("127.0.0.1:99999")


def test_two_workers_of_two_threads_on_two_cpus_are_refused_with_both_remedies(ray_local, tiny):
    from vreason_local.settings import render_error

    with pytest.raises(UserError) as exc:
        WorkerPool("local", 2, tiny.model_path, tiny.mmproj_path, EngineSettings(n_threads=2))
    assert render_error(exc.value, "flag") == (
        "the Ray cluster holds 1 worker of 2 CPUs (one per thread) each, not 2; try --workers 1 or --threads 1"
    )


def test_without_threads_the_workers_share_each_nodes_cpus():
    nodes = [{"Resources": {"CPU": 2.0}}, {"Resources": {"CPU": 8.0}}]
    assert split_threads(nodes, 2, 8) == 4  # 0 + 2 workers of 4 threads: the most that still holds 2
    assert split_threads(nodes, 5, 8) == 2  # 1 + 4
    assert split_threads(nodes, 1, 8) == 8 and split_threads(nodes, 1, 4) == 4  # never more than asked
    assert split_threads(nodes, 40, 8) == 1  # too many for any split: 1 each, and the pool says it is too small


def test_a_two_worker_run_on_a_two_cpu_machine_without_threads_runs_and_shows_no_ray_notice(tiny, tmp_path):
    """The issue's case, as a user types it: --ray local --workers 2 on this machine (2 CPUs in CI), no
    --threads: each worker gets its share of the CPUs. Ray's token-authentication notice is not printed."""
    data = make_sample(tmp_path / "data", n_videos=2, questions_per_video=1)
    args = _eval(tiny, data, tmp_path / "run", "--ray", "local", "--workers", "2")
    args = [a for i, a in enumerate(args) if a != "--threads" and args[i - 1] != "--threads"]
    args[args.index("--modes") + 1] = "base"
    p = subprocess.run(args, capture_output=True, timeout=TIMEOUT_S)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    assert len(read_results(tmp_path / "run" / "results.jsonl").rows) == 2
    assert "Token authentication" not in err and "2 questions about 2 videos x 1 mode (base)" in err


def test_a_worker_asks_for_a_gpu_where_the_cluster_has_them_else_a_cpu_per_thread():
    gpu = Demand.for_engine(EngineSettings(n_threads=8), cluster_gpus=4)
    assert gpu == Demand(cpus=1, gpus=1) and str(gpu) == "1 GPU and 1 CPU"
    assert gpu.fits({"CPU": 32.0, "GPU": 4.0}) == 4 and gpu.fits({"CPU": 2.0, "GPU": 4.0}) == 2
    assert gpu.fits({"CPU": 64.0}) == 0  # a node without GPUs holds none
    cpu = Demand.for_engine(EngineSettings(n_threads=8, n_gpu_layers=0), cluster_gpus=4)  # --gpu-layers 0
    assert cpu == Demand(cpus=8, gpus=0) and cpu.fits({"CPU": 20.0, "GPU": 4.0}) == 2
    assert Demand.for_engine(EngineSettings(n_threads=3), cluster_gpus=0).fits({"CPU": 8.0}) == 2


def test_without_ray_the_error_says_how_to_install_it(tiny, items, tmp_path):
    data = items[0].video.parent.parent / "sample.jsonl"
    hide_ray = "import sys; sys.modules['ray'] = None; from vreason_local.cli import main; main()"
    args = _eval(tiny, data, tmp_path / "run", "--ray", "local")[3:]
    p = subprocess.run([sys.executable, "-c", hide_ray, *args], capture_output=True, timeout=TIMEOUT_S)
    err = p.stderr.decode()
    assert p.returncode == 2 and "Traceback" not in err, err
    assert err.strip() == (
        "error: running on a Ray cluster needs the ray package, which is not installed; "
        'try install it with pip install "vreason-local[ray]"'
    )
    assert not (tmp_path / "run").exists()  # a run that could not start leaves --out as it was


def test_workers_without_ray_is_refused(tiny, items, tmp_path, capsys):
    data = items[0].video.parent.parent / "sample.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(_eval(tiny, data, tmp_path / "run", "--workers", "2")[3:])
    assert exc.value.code == 2
    assert "error: --workers is the number of Ray workers; give --ray too" in capsys.readouterr().err

"""`vreason eval --ray` on this machine: answers per minute in one process vs on a local Ray cluster with
one worker (all cores) and with two workers (the cores split between them), side by side in one run.

Run: python benchmarks/bench_eval_ray.py [--shape fast] [--videos 4] [--questions 4] [--frames 4]
     [--tokens 16] [--modes base] [--rounds 3]
Prints, per way (the three alternate round by round, so the machine's noise falls on all alike):
- answers per minute, and the ratio to one process;
- the per-answer cost the rows record: the first answer of a video (sampling + encoding + answer) and
  the others (the encoding reused), the figures the README's sizing of a cluster starts from;
- the workers' start-up (model loads), paid once per run.
All three ways share this machine's cores: one worker against one process is Ray's overhead; two workers
(half the threads each) against one process is how well the cores are used, not a cluster's speed-up,
which needs a worker per GPU or per machine. Measured on 2 cores, fast shape: 1 worker x1.04, 2 workers
x1.75 (one 2-thread engine leaves the cores half idle on so small a model; two 1-thread engines do not). Answers are greedy and exactly --tokens long,
and each way must give the tokens one process gives with the same threads per engine (checked).
Shapes: tiny (seconds), fast (default; the real vocabulary, tiny layers), 3b, 7b (see _setup.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ray
from bench_eval import items, setup

from vreason_local.engine import Engine, EngineSettings
from vreason_local.evaluate.cluster import WorkerPool
from vreason_local.evaluate.runner import evaluate_group, group_by_video


def tokens(rows: list[dict]) -> dict[tuple[str, str], list[int]]:
    return {(r["id"], r["mode"]): r["tokens"] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="fast", choices=("tiny", "fast", "3b", "7b"))
    ap.add_argument("--quant", default="q4_k_m", choices=("q4_k_m", "q8_0"), help="3b/7b only")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--questions", type=int, default=4, help="questions per video")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--modes", default="base", help="comma-separated, as vreason eval --modes")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    m, modes, settings = setup(args)
    qs = items(args.videos, args.questions)
    videos = [i.video for i in qs]
    n_answers = len(qs) * len(modes)
    cores = os.cpu_count() or 1
    # Both pools stay up between rounds: Ray's CPUs are logical, and an idle worker uses none.
    ray.init(address="local", num_cpus=2 * cores, include_dashboard=False, log_to_driver=False)
    ways = ["one process", "Ray, 1 worker", "Ray, 2 workers"]
    times = dict.fromkeys(ways, 0.0)
    rows_of: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    one = WorkerPool("local", 1, m.model_path, m.mmproj_path, EngineSettings(n_threads=cores), videos)
    start = {"Ray, 1 worker": time.perf_counter() - t0}
    t0 = time.perf_counter()
    two = WorkerPool("local", 2, m.model_path, m.mmproj_path, EngineSettings(n_threads=max(1, cores // 2)), videos)
    start["Ray, 2 workers"] = time.perf_counter() - t0
    with Engine(m.model_path, m.mmproj_path, EngineSettings(n_threads=cores)) as engine, one, two:
        runs = {
            "one process": lambda: [r for g in group_by_video(qs) for r in evaluate_group(engine, g, modes, settings)],
            "Ray, 1 worker": lambda: list(one.rows(qs, modes, settings)),
            "Ray, 2 workers": lambda: list(two.rows(qs, modes, settings)),
        }
        for _ in range(args.rounds):
            for way in ways:
                t0 = time.perf_counter()
                rows_of[way] = runs[way]()
                times[way] += time.perf_counter() - t0
    ray.shutdown()
    # llama.cpp's sums depend on its thread count, which can flip a random model's near-ties: each way's
    # tokens are checked against one process with the same threads per engine.
    with Engine(m.model_path, m.mmproj_path, EngineSettings(n_threads=max(1, cores // 2))) as engine:
        half = [r for g in group_by_video(qs) for r in evaluate_group(engine, g, modes, settings)]

    first = rows_of["one process"]
    print(f"model: {m.model_path.name} ({args.shape} shape, random weights); {cores} cores")
    print(
        f"{args.videos} videos x {args.questions} questions x {len(modes)} mode(s) = {n_answers} answers of "
        f"{args.tokens} tokens, {first[0]['n_video_tokens']} vision tokens per video; {args.rounds} round(s)"
    )
    base = n_answers * args.rounds / times["one process"] * 60
    for way in ways:
        rate = n_answers * args.rounds / times[way] * 60
        rows = rows_of[way]
        enc = [r["timings"]["answer_s"] + r["timings"]["sampling_s"] for r in rows if not r["reused_encoding"]]
        reuse = [r["timings"]["answer_s"] for r in rows if r["reused_encoding"]]
        extra = f"; start-up {start[way]:.2f} s" if way in start else ""
        print(
            f"{way}: {rate:.1f} answers/min (x{rate / base:.2f}); a video's first answer {statistics.mean(enc):.3f} s "
            f"({len(enc)} encodings), another {statistics.mean(reuse):.3f} s{extra}"
        )
    same = tokens(rows_of["Ray, 1 worker"]) == tokens(first) and tokens(rows_of["Ray, 2 workers"]) == tokens(half)
    print(f"same tokens as one process with the same threads per engine: {same}")
    print(
        f"note: all ways share these {cores} cores. 1 worker / one process is Ray's overhead; 2 workers / one "
        f"process is how much better two {max(1, cores // 2)}-thread engines use the cores than one {cores}-thread "
        "engine (on a small shape llama.cpp's threads wait on each other), not what more machines or GPUs give"
    )


if __name__ == "__main__":
    main()

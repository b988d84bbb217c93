"""V-Reason's cost on generated models of real shapes (Qwen2.5-VL-3B or -7B dimensions, random weights) at
Q4_K_M (the registry's default) or Q8_0, side by side.

Run: python benchmarks/bench_vreason.py [--shape 3b|7b] [--quant q4_k_m|q8_0] [--tokens 24] [--rounds 3] [--frames 4]
As a laptop without AVX-512 runs it: VREASON_SIMD=avx2 (the package's kernels), with llama-cpp-python built
for AVX2 (README, "Testing as a laptop"); the first lines say which kernels ran.
Prints ratios measured in one run, configurations interleaved round by round (shared, noisy machine):
  A. the eval callback: none / C hook off / C hook capturing / plain ctypes callback (no / capturing)
  B. time per generated token, V-Reason (k=2, one Adam step) over base, on the same encoded video
  C. peak memory (max RSS) of `vreason run` processes, V-Reason over base
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time

import llama_cpp as L
import numpy as np
from _setup import QUANTS, clip, median, model, steady_step_s

from vreason_local.decoding import decoding_for
from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.events import TokenEvent
from vreason_local.gguf_info import read_model_info
from vreason_local.hook import ValueHook
from vreason_local.llama_backend import Context, Model
from vreason_local.media import load_video
from vreason_local.native import GGMLInitParams, available_simd, library, simd_level
from vreason_local.native import ggml as ggml_base
from vreason_local.settings import default_threads
from vreason_local.video import FrameSampling

PROMPT = (
    "<|im_start|>user\n"
    + "Describe the scene in careful detail, frame by frame. " * 24
    + "<|im_end|>\n<|im_start|>assistant\n"
)


def python_callback(names: set[bytes], capture: list[bool], sizes: dict[bytes, int]):
    """The same job as native/vr_hook.c, written as a plain ctypes callback (for comparison)."""
    lib, ggml = library(), ggml_base()
    off = lib.vr_name_offset()
    bufs = {n: np.empty(s // 4, np.float32) for n, s in sizes.items()}

    @L.ggml_backend_sched_eval_callback
    def cb(t, ask, _ud):
        name = ctypes.string_at(t + off)
        if ask:
            return capture[0] and name in names
        n = 1
        for d in range(4):
            n *= lib.vr_tensor_ne(t, d)
        ggml.ggml_backend_tensor_get(t, bufs[name].ctypes.data, 0, n * 4)
        return True

    return cb


def captured_nodes(hook: ValueHook) -> dict[bytes, int]:
    """The nodes the C hook captures (name -> bytes of one token's data), for the ctypes callback to do the same."""
    return {hook.names[k].encode(): hook.sizes[k] for k in hook.names}


def bench_invocation(info, nodes_per_token: int, decode_s: float, calls: int = 200_000) -> None:
    """Cost of one callback invocation made from C, as llama.cpp's scheduler makes it: the C hook
    answering "no" (capture off) against a plain ctypes callback doing the same name test."""
    lib, ggml = library(), ggml_base()
    ctx = ggml.ggml_init(GGMLInitParams(1 << 16, None, True))
    t = ggml.ggml_new_tensor_2d(ctx, 0, 4, 4)
    ggml.ggml_set_name(t, b"blk.7.attn_norm")
    hook = ValueHook(info)
    sizes = captured_nodes(hook)
    py_cb = python_callback(set(sizes), [False], sizes)
    c_fn = ctypes.cast(lib.vr_hook_callback, ctypes.c_void_p).value
    py_fn = ctypes.cast(py_cb, ctypes.c_void_p).value
    c_ns = lib.vr_time_callback(c_fn, t, hook.h, calls) / calls * 1e9
    py_ns = lib.vr_time_callback(py_fn, t, None, calls // 10) / (calls // 10) * 1e9
    ggml.ggml_free(ctx)
    hook.close()
    for name, ns in (("C hook (native/vr_hook.c)", c_ns), ("plain ctypes callback", py_ns)):
        per_token = ns * nodes_per_token * 1e-6
        print(
            f"   {name:28s} {ns:8.0f} ns per node -> {per_token:6.3f} ms per token at {nodes_per_token} nodes "
            f"({per_token / (decode_s * 1e3) * 100:.2f}% of a {decode_s * 1e3:.0f} ms decode)"
        )


def decode_loop(ctx: Context, model: Model, n: int, capture=None) -> list[float]:
    """Greedy decode `n` tokens after PROMPT; seconds per decode call. `capture(on)` toggles capturing,
    kept off for the prompt (its buffers are sized for one token at a time, as in the engine)."""
    ctx.clear()
    ids = model.tokenize(PROMPT)
    if capture:
        capture(False)
    ctx.decode_tokens(ids, 0)
    pos, times = len(ids), []
    for _ in range(n):
        tok = int(np.argmax(ctx.logits()))
        if capture:
            capture(True)
        t0 = time.perf_counter()
        ctx.decode_tokens([tok], pos)
        times.append(time.perf_counter() - t0)
        pos += 1
    return times[1:]


def bench_callbacks(path, tokens: int, rounds: int, label: str) -> None:
    info = read_model_info(path)
    model = Model(path, n_gpu_layers=0, repack=True)
    threads = default_threads()
    n_ctx = 1024
    hook = ValueHook(info)
    capture = [False]
    sizes = captured_nodes(hook)
    py_cb = python_callback(set(sizes), capture, sizes)
    ctxs = {
        "no callback": Context(model, n_ctx, 512, threads, "auto"),
        "C hook installed, capture off": Context(model, n_ctx, 512, threads, "auto", *hook.callback_args()),
        "ctypes callback, answers no": Context(model, n_ctx, 512, threads, "auto", py_cb, None),
    }
    runs = {k: [] for k in ctxs}
    runs["C hook capturing (the 5 nodes an update reads)"] = []
    runs["ctypes callback capturing (the same 5 nodes)"] = []
    for _ in range(rounds):
        hook.prepare(False)
        capture[0] = False
        for name, ctx in ctxs.items():
            runs[name] += decode_loop(ctx, model, tokens)
        runs["C hook capturing (the 5 nodes an update reads)"] += decode_loop(
            ctxs["C hook installed, capture off"], model, tokens, hook.prepare
        )
        runs["ctypes callback capturing (the same 5 nodes)"] += decode_loop(
            ctxs["ctypes callback, answers no"], model, tokens, lambda on: capture.__setitem__(0, on)
        )
    decode_loop(ctxs["C hook installed, capture off"], model, 1, hook.prepare)
    nodes = hook.counts[0]  # nodes asked since the last prepare(): one token's graph
    ref = median(runs["no callback"])
    print(
        f"A. eval callback cost, {label} ({nodes} graph nodes per token; ms per decoded token, median of "
        f"{len(runs['no callback'])}; ratio to no callback)"
    )
    for name, ts in runs.items():
        extra_ns = (median(ts) - ref) / nodes * 1e9
        print(f"   {name:44s} {median(ts) * 1e3:8.3f} ms   x{median(ts) / ref:.3f}   ({extra_ns:+.0f} ns per node)")
    print("   callback invocation cost, measured by calling it from C in a loop:")
    bench_invocation(info, nodes, ref)
    for ctx in ctxs.values():
        ctx.close()
    hook.close()
    model.close()


def bench_decode(model, tokens: int, rounds: int, frames: int, dtype: str) -> None:
    from vreason_local.vreason import VReasonSettings  # imports torch: after bench_memory (main)

    lm = load_video(clip(), FrameSampling(fps=1.0, min_frames=frames, max_frames=frames), patch=14)
    gen = GenerationSettings(max_tokens=tokens, stop_at_answer=False)
    per: dict[str, list[float]] = {"base": [], "vreason": []}
    rounds_ratio: list[float] = []  # each round's V-Reason / base: the spread says how noisy the machine was
    updates: list[float] = []
    selfchecks: list[float] = []
    with Engine(model.model_path, model.mmproj_path, EngineSettings(n_ctx=2048, hook=True)) as engine:
        encoding = engine.encode(lm.media).result()  # one encoding for every answer: only decoding differs
        for _ in range(rounds):
            round_mean: dict[str, float] = {}
            for mode in ("base", "vreason"):
                t_s = []
                decoding = decoding_for(mode, VReasonSettings(every=2, steps=1, dtype=dtype))
                handle = engine.ask(encoding, "What happens in this video?", gen, decoding)
                for ev in handle:
                    if isinstance(ev, TokenEvent):
                        t_s.append(ev.t_s)
                        if ev.control and ev.control.update_ms is not None:
                            updates.append(ev.control.update_ms)
                            selfchecks.append(ev.control.selfcheck)
                per[mode] += steady_step_s(t_s)
                round_mean[mode] = float(np.mean(steady_step_s(t_s)))
                if mode == "vreason":
                    used = handle.result().settings["vreason"]
                    rows, tail_kind = used["n_rows"], used["tail_dtype"]
            rounds_ratio.append(round_mean["vreason"] / round_mean["base"])
    base, vr = float(np.mean(per["base"])), float(np.mean(per["vreason"]))
    print(
        f"B. time per generated token ({lm.n_tokens} video tokens controlled: {rows}; mean of {len(per['base'])} steps each)"
    )
    print(
        f"   base {base * 1e3:.1f} ms, V-Reason (k=2, 1 step, tail {tail_kind}) {vr * 1e3:.1f} ms: "
        f"V-Reason/base = x{vr / base:.3f}; median round x{median(rounds_ratio):.3f} "
        f"(rounds: {' '.join(f'x{r:.3f}' for r in rounds_ratio)})"
    )
    print(
        f"   controller update: median {median(updates):.1f} ms per update (every 2nd token); "
        f"self-check max |logit diff| {max(selfchecks):.2e}"
    )


# A lean parent for the measured run: a child forked from this (large) benchmark process would start
# with this process's resident pages and report them as its own peak.
_MEASURE = (
    "import json, resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True); "
    "print(json.dumps([p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.stdout.decode()]))"
)


def peak_rss(args: list[str]) -> tuple[float, dict]:
    """Peak resident memory (bytes) of one `vreason` run, and its JSON output."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "vreason_local.cli", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    code, max_rss_kb, stdout = json.loads(out)
    if code != 0:
        raise SystemExit(f"vreason run failed: {args}")
    return max_rss_kb * 1024, json.loads(stdout)


def bench_memory(model, tokens: int, frames: int, dtype: str) -> None:
    """Peak RSS of `vreason run`, base and V-Reason, each alone in its process. Run before this process
    imports torch: V-Reason drops the file pages torch's import touched (tail_weights.release_torch_pages),
    which it cannot while another process maps the same libraries (measured +46 MB at peak then)."""
    common = [
        "run",
        "--model",
        str(model.model_path),
        "--mmproj",
        str(model.mmproj_path),
        "--video",
        str(clip()),
        "-q",
        "What happens?",
        "--json",
        "--max-tokens",
        str(tokens),
        "--min-frames",
        str(frames),
        "--max-frames",
        str(frames),
    ]
    base, _ = peak_rss(common + ["--mode", "base"])
    vr, out = peak_rss(common + ["--mode", "vreason", "--tail-dtype", dtype])
    print(f"C. peak memory (max RSS of `vreason run`, {out['n_video_tokens']} video tokens, {tokens} tokens)")
    print(f"   base {base / 1e9:.2f} GB, V-Reason (tail {dtype}) {vr / 1e9:.2f} GB: V-Reason/base = x{vr / base:.3f}")


_PARTS = """
import json, sys
from pathlib import Path
import numpy as np

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))

out = {"start": rss()}
from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.media import Media
out["base imports"] = rss()
engine = Engine(Path(sys.argv[1]), Path(sys.argv[2]), EngineSettings(n_ctx=1024))
engine.ask(Media("none"), "Hello", GenerationSettings(max_tokens=2), "base").result()  # llama.cpp reads its weights
out["the model, one answer (base)"] = rss()
import torch
out["torch"] = rss()
from vreason_local.tail import Tail
from vreason_local.tail_weights import release_torch_pages
release_torch_pages()  # as Tail.from_gguf does first
out["torch's start-up pages dropped"] = rss()
tail = Tail.from_gguf(engine.info, "cpu", sys.argv[3], engine.hook.weight_view)  # as an answer loads it
out["tail matrices (" + tail.kind + ")"] = rss()
ids, rows = tail.head.rows(np.arange(0, engine.model.n_vocab, 74))
if rows is None:  # read in place: the pages of 2048 rows
    tail.head.in_place.axpy(ids, torch.ones(len(ids)))
out["LM-head rows, 2048 (" + ("in place" if rows is None else "ring") + ")"] = rss()
print(json.dumps(out))
"""


def bench_memory_parts(model, dtype: str) -> None:
    """Where V-Reason's memory goes, in a fresh process: resident memory after each part is loaded."""
    out = subprocess.run(
        [sys.executable, "-c", _PARTS, str(model.model_path), str(model.mmproj_path), dtype],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    steps = json.loads(out.strip().splitlines()[-1])
    print("D. where the controller's memory goes (resident memory added by each part, one process)")
    previous = None
    for name, value in steps.items():
        if previous is not None:
            print(f"   {name:32s} +{(value - previous) / 1e6:7.1f} MB")
        previous = value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--only", choices=["A", "B", "C", "D"], default=None)
    ap.add_argument("--shape", choices=["3b", "7b"], default="3b")
    ap.add_argument("--quant", choices=QUANTS, default="q4_k_m")
    ap.add_argument(
        "--tail-dtype",
        default="auto",
        help="storage of the controller's weights (auto, gguf, float32, bfloat16, float16, int8)",
    )
    args = ap.parse_args()
    bench_model = model(args.shape, args.quant)
    system = L.llama_print_system_info().decode(errors="replace").strip()
    print(f"model: {bench_model.model_path.name} (random weights), {default_threads()} threads")
    print(
        f"SIMD: vreason kernels {simd_level()} (VREASON_SIMD; this CPU: {', '.join(available_simd())}); llama.cpp: {system}"
    )
    if args.only in (None, "C"):  # first, before this process imports torch (B, D): see bench_memory
        bench_memory(bench_model, args.tokens, args.frames, args.tail_dtype)
    if args.only in (None, "A"):
        from vreason_local.tiny import make_tiny

        tiny = make_tiny(bench_model.model_path.parent, arch="qwen25vl", shape="tiny")
        bench_callbacks(tiny.model_path, 400, args.rounds, "tiny model (callback cost visible)")
        bench_callbacks(bench_model.model_path, args.tokens, args.rounds, f"{args.shape} shape")
    if args.only in (None, "B"):
        bench_decode(bench_model, args.tokens, args.rounds, args.frames, args.tail_dtype)
    if args.only in (None, "D"):
        bench_memory_parts(bench_model, args.tail_dtype)


if __name__ == "__main__":
    main()

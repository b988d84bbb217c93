"""The decode loop's own cost per token: the engine against a bare llama-cpp-python loop.

Run: python benchmarks/bench_decode.py [--tokens 200] [--reps 5] [--threads 2] [--wtype f16]

On the `fast` shape model (Qwen2.5-VL layout, 3 layers of width 128, Qwen's full 151,936-token
vocabulary, random weights) llama_decode is fast, so what the loop does around it shows. The weights are
f16 by default: the small shapes' default type, no repacking question (quantised weights may be
repacked, and on AMX CPUs the engine probes that first), and a step time near a 3B model's on a laptop
GPU; `--wtype q8_0` makes the step about 1.4 times as fast and the comparison stricter.

In one process, interleaved over --reps repetitions so that all see the same machine load, it runs
(a) a bare loop on its own context: llama_decode of one token, then the logits (greedy: a copy and
np.argmax; sampled: llama.cpp's own sampler chain temp -> top_p / min_p -> dist, which reads them in
place); (b) the same loop with the project's Sampler on a view of the logits instead, which isolates the
sampler's cost; and (c) the engine answering a text-only question, greedy and sampled the same way.
The bare loops decode exactly as many tokens as the engine produced (a random model may stop early).
All figures are seconds between the first and the last token over the tokens in between, so each
interval is one decode and one token's processing. Prints ms/token, the ratios to (a) per repetition
(median and range), and each piece's cost per token, in the loop and alone on logits this model produced.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp as L
import numpy as np
from _setup import median, model_fast

from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.events import Answer, Finished, TokenEvent
from vreason_local.media import Media
from vreason_local.sampling import Sampler, TokenSampling, entropy, kernel_lanes

QUESTION = "Describe a cat."
MODES = {
    "greedy": TokenSampling(),
    "T 0.7, top-p 0.9": TokenSampling(temperature=0.7, top_p=0.9, seed=1),
    "T 0.7, min-p 0.05": TokenSampling(temperature=0.7, min_p=0.05, seed=1),
}


def llama_chain(s: TokenSampling) -> ctypes.c_void_p:
    """llama.cpp's sampler chain for `s`: temp -> top_p -> min_p -> dist (the order that intersects the
    two filters on softmax(l / T), as TokenSampling means them)."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
    if s.top_p < 1.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p > 0.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(s.min_p, 1))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(s.seed))
    return chain


@dataclass
class BareRun:
    per_token_s: float
    piece_s: list[float]  # the logits' processing alone, per token
    logits: list[np.ndarray]  # copies of a few steps' logits, for timing pieces alone


class Bare:
    """A plain llama-cpp-python loop: its own model and context, nothing else."""

    def __init__(self, path: str, n_threads: int, n_ctx: int = 1024, n_batch: int = 512) -> None:
        self.model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        params = L.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_threads = params.n_threads_batch = n_threads
        self.ctx = L.llama_init_from_model(self.model, params)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.n_batch = n_batch
        self.batch = L.llama_batch_init(n_batch, 0, 1)

    def decode(self, tokens: list[int], pos: int) -> None:
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            b = self.batch
            b.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos + start + i, 1, start + i == len(tokens) - 1
                b.seq_id[i][0] = 0
            assert L.llama_decode(self.ctx, b) == 0

    def run(self, prompt: list[int], n: int, s: TokenSampling, ours: bool = False, keep_logits: int = 0) -> BareRun:
        """n tokens after `prompt`. The logits step: `ours`, the project's Sampler on a view of the logits
        (as the engine does); else greedy a copy and np.argmax, sampled llama.cpp's chain."""
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        self.decode(prompt, 0)
        chain = None if ours or s.temperature <= 0 else llama_chain(s)
        sampler = Sampler(s, self.n_vocab) if ours else None
        stamps, pieces, kept = [], [], []
        try:
            for k in range(n):
                t = time.perf_counter()
                if sampler is not None:
                    tok, _ = sampler(np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)))
                elif chain is None:
                    logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)).copy()
                    tok = int(np.argmax(logits))
                    if k < keep_logits:
                        kept.append(logits)
                else:
                    tok = L.llama_sampler_sample(chain, self.ctx, -1)
                stamps.append(time.perf_counter())
                pieces.append(stamps[-1] - t)
                if k < n - 1:
                    self.decode([tok], len(prompt) + k)
        finally:
            if chain is not None:
                L.llama_sampler_free(chain)
        return BareRun((stamps[-1] - stamps[0]) / (n - 1), pieces, kept)

    def close(self) -> None:
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


def engine_run(engine: Engine, tokens: int, s: TokenSampling) -> tuple[float, Answer]:
    """(seconds per token between the first and the last token, the answer)."""
    gen = GenerationSettings(max_tokens=tokens, sampling=s, reasoning=False, stop_at_answer=False)
    t_s: list[float] = []
    for ev in engine.ask(Media.none(), QUESTION, gen):
        if isinstance(ev, TokenEvent):
            t_s.append(ev.t_s)
        elif isinstance(ev, Finished):
            answer = ev.answer
    assert len(answer.tokens) == len(t_s) >= 3, f"the engine produced {len(t_s)} tokens"
    return (t_s[-1] - t_s[0]) / (len(t_s) - 1), answer


def per_call_s(fn: Callable[[np.ndarray], object], logits: list[np.ndarray], repeat: int = 20) -> float:
    """Median over the logits of the mean time of `repeat` calls of fn on them."""
    times = []
    for x in logits:
        fn(x)
        t = time.perf_counter()
        for _ in range(repeat):
            fn(x)
        times.append((time.perf_counter() - t) / repeat)
    return median(times)


def numpy_entropy32() -> Callable[[np.ndarray], float]:
    """The float32 numpy formulation (reused buffers, log1p), for comparison with the native kernel."""
    z = e = None

    def h(x: np.ndarray) -> float:
        nonlocal z, e
        if z is None:
            z, e = np.empty_like(x), np.empty_like(x)
        i = int(x.argmax())
        np.subtract(x, x[i], out=z)
        np.maximum(z, -1e4, out=z)
        np.exp(z, out=e)
        e[i] = 0.0
        r = float(e.sum())
        return math.log1p(r) - float(np.dot(e, z)) / (1.0 + r)

    return h


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wtype", choices=["f16", "q8_0"], default="f16")
    args = ap.parse_args()
    model = model_fast(args.wtype)

    with Engine(model.model_path, None, EngineSettings(n_ctx=1024, n_threads=args.threads)) as engine:
        bare = Bare(str(model.model_path), args.threads)
        try:
            _, answer = engine_run(engine, 8, TokenSampling())  # warm both up; learn the prompt the engine decodes
            prompt = [t for t in answer.prompt_tokens if t is not None]
            bare.run(prompt, 8, TokenSampling())
            results = {m: {"bare": [], "ours": [], "engine": [], "n": []} for m in MODES}
            pieces: dict[str, dict[str, list[float]]] = {m: {"bare": [], "ours": []} for m in MODES}
            sample_logits: list[np.ndarray] = []
            for rep in range(args.reps):
                for mode, s in MODES.items():
                    e_s, answer = engine_run(engine, args.tokens, s)
                    n = len(answer.tokens)
                    b = bare.run(prompt, n, s, keep_logits=64 if rep == 0 and s.temperature <= 0 else 0)
                    o = bare.run(prompt, n, s, ours=True)
                    for key, value in (("engine", e_s), ("bare", b.per_token_s), ("ours", o.per_token_s), ("n", n)):
                        results[mode][key].append(value)
                    pieces[mode]["bare"] += b.piece_s
                    pieces[mode]["ours"] += o.piece_s
                    sample_logits += b.logits
        finally:
            bare.close()

    print(
        f"model: {model.model_path.name} (fast shape, {args.wtype}, random weights); {args.threads} threads; "
        f"sampling kernels: {kernel_lanes()} lanes"
    )
    print(
        f"{args.reps} repetitions, interleaved; up to {args.tokens} tokens a run (the bare loops decode as many as "
        f"the engine produced: {sorted(set(results['greedy']['n']))} greedy)"
    )
    print("ms/token. bare: the bare loop's own logits step (greedy: copy + np.argmax; sampled: llama.cpp's chain);")
    print("bare+Sampler: the same loop with the project's Sampler on a view of the logits instead; engine: engine.ask")
    print(
        f"{'mode':18s} {'bare':>7s} {'bare+Sampler':>13s} {'engine':>7s}   {'engine/bare':>21s}   {'(bare+Sampler)/bare':>21s}"
    )
    for mode, r in results.items():
        cols = []
        for num in ("engine", "ours"):
            ratios = [x / y for x, y in zip(r[num], r["bare"])]
            cols.append(f"{median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
        print(
            f"{mode:18s} {median(r['bare']) * 1e3:7.3f} {median(r['ours']) * 1e3:13.3f} {median(r['engine']) * 1e3:7.3f}"
            f"   {cols[0]:>21s}   {cols[1]:>21s}"
        )
    greedy_bare = median(results["greedy"]["bare"])
    for mode in list(MODES)[1:]:
        print(
            f"against the bare greedy loop: engine {mode} {median(results[mode]['engine']) / greedy_bare:.3f}, "
            f"bare+Sampler {median(results[mode]['ours']) / greedy_bare:.3f}"
        )

    print(
        "\nper token, each piece (ms): in the loops (right after llama_decode wrote the logits), medians over all steps;"
    )
    print(f"alone: medians over {len(sample_logits)} logit vectors this model produced, each called 20 times in a row")
    rows = [("in the loop: copy + np.argmax", median(pieces["greedy"]["bare"]))]
    for mode in MODES:
        if mode != "greedy":
            rows.append((f"in the loop: llama.cpp chain, {mode}", median(pieces[mode]["bare"])))
    for mode in MODES:
        rows.append((f"in the loop: Sampler, {mode}", median(pieces[mode]["ours"])))
    rows += [
        ("alone: np.argmax", per_call_s(np.argmax, sample_logits)),
        ("alone: logits copy", per_call_s(np.copy, sample_logits)),
        ("alone: entropy(), native argmax + entropy", per_call_s(entropy, sample_logits)),
        ("alone: entropy, numpy float32 + log1p", per_call_s(numpy_entropy32(), sample_logits)),
    ]
    for mode, s in MODES.items():
        rows.append((f"alone: Sampler, {mode}", per_call_s(Sampler(s, bare.n_vocab), sample_logits)))
    for name, sec in rows:
        print(f"  {name:46s} {sec * 1e3:8.4f}")


if __name__ == "__main__":
    main()

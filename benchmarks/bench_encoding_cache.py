"""The encoding cache across processes: time to first token of a second process over the first's, and its file size.

Run: python benchmarks/bench_encoding_cache.py [--shape 3b|fast|tiny] [--quant q4_k_m] [--frames 16] [--tokens 4]
Three processes, one after the other, on one clip and question, each loading the model anew, with their own
empty cache folder (never the user's):
- `off`: `--no-encoding-cache` (the baseline: what every process paid before the cache);
- `first`: the cache on and empty: it encodes and writes the file (in the background; `close_s` is the wait for
  the write at exit);
- `second`: the cache on: it loads the first's file.
Prints each one's time to first token (from `ask`, the model already loaded), where its encoding came from, the
second's TTFT over the first's (goal <= 0.05 on the 3b shape with 16 frames) and over `off`'s, `first`'s TTFT
over `off`'s (the cost of taking the state for the write), the file size and its size per video token, and
whether the three answers are token for token the same (they must be).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _setup import BENCH_DIR, clip, model

from vreason_local.tiny import make_tiny


def _model(shape: str, quant: str):
    if shape in ("3b", "7b"):
        return model(shape, quant)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return make_tiny(BENCH_DIR, arch="qwen25vl", shape=shape, wtype="f16")


def child(args: argparse.Namespace) -> None:
    """One process: load, answer, close; one JSON line of what it measured."""
    from vreason_local.engine import Engine, EngineSettings, GenerationSettings
    from vreason_local.events import TokenEvent
    from vreason_local.media import load_video
    from vreason_local.video import FrameSampling

    pair = _model(args.shape, args.quant)
    t0 = time.perf_counter()
    engine = Engine(pair.model_path, pair.mmproj_path, EngineSettings(encoding_cache=args.cache, hook=False))
    load_s = time.perf_counter() - t0
    sampling = FrameSampling(fps=4.0, min_frames=args.frames, max_frames=args.frames)
    media = load_video(clip(), sampling, patch=engine.projector.patch_size).media
    gen = GenerationSettings(max_tokens=args.tokens, stop_at_answer=False)
    t0 = time.perf_counter()
    handle = engine.ask(media, "What happens in this video?", gen)
    ttft = None
    for ev in handle:
        if isinstance(ev, TokenEvent) and ttft is None:
            ttft = time.perf_counter() - t0
    answer = handle.result()
    t0 = time.perf_counter()
    engine.close()  # waits for the encoding cache's write
    close_s = time.perf_counter() - t0
    out = {
        "ttft_s": ttft,
        "load_s": load_s,
        "close_s": close_s,
        "source": answer.encoding_source,
        "n_media_tokens": answer.n_media_tokens,
        "timings": answer.timings,
        "tokens": answer.tokens,
    }
    print(json.dumps(out))


def run(args: argparse.Namespace, cache: Path, on: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--shape", args.shape, "--quant", args.quant]
    cmd += ["--frames", str(args.frames), "--tokens", str(args.tokens), *([] if on else ["--no-cache"])]
    env = {**os.environ, "VREASON_CACHE": str(cache), "VREASON_BENCH_DIR": str(BENCH_DIR)}  # the models stay put
    env["VREASON_ENCODING_CACHE"] = "on"  # `off` is the --no-cache child's own setting
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"child failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="3b", choices=("3b", "7b", "fast", "tiny"))
    ap.add_argument("--quant", default="q4_k_m", choices=("q4_k_m", "q8_0"))
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-cache", dest="cache", action="store_false", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    _model(args.shape, args.quant)  # built once here, not timed in a child
    clip()
    with tempfile.TemporaryDirectory(prefix="vreason-bench-enc-") as tmp:
        cache = Path(tmp)
        off = run(args, cache / "off", False)
        first = run(args, cache / "on", True)
        second = run(args, cache / "on", True)
        files = list((cache / "on" / "encodings").glob("*.enc"))
        size = sum(f.stat().st_size for f in files)
    n = first["n_media_tokens"]
    print(f"{args.shape} {args.quant}, {args.frames} frames, {n} video tokens")
    for name, r in (("off", off), ("first", first), ("second", second)):
        t = r["timings"]
        print(
            f"  {name:6s} TTFT {r['ttft_s']:.3f} s  source {r['source']:7s}  encode {t.get('encode_s', 0):.2f} s  "
            f"load {t.get('encoding_load_s', 0):.3f} s  saved {t.get('encoding_saved_s', 0):.2f} s  "
            f"close {r['close_s']:.3f} s"
        )
    print(f"  second / first TTFT: {second['ttft_s'] / first['ttft_s']:.4f}  (goal <= 0.05)")
    print(f"  second / off TTFT:   {second['ttft_s'] / off['ttft_s']:.4f}")
    print(f"  first / off TTFT:    {first['ttft_s'] / off['ttft_s']:.4f}  (the write's cost on the answer's path)")
    print(f"  file: {len(files)} x {size / 1e6:.2f} MB, {size / max(n, 1) / 1e3:.1f} kB per video token")
    same = off["tokens"] == first["tokens"] == second["tokens"]
    print(f"  answers token for token the same: {same}")
    if not same or second["source"] != "disk":
        sys.exit(1)


if __name__ == "__main__":
    main()

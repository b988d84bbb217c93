"""Engine speed on the `3b` shape model (Qwen2.5-VL-3B dimensions, Q8_0, random weights).

Run: python benchmarks/bench_engine.py [--frames 8] [--tokens 24]
Prints: vision encode and prefill tokens/s, decode tokens/s, and the follow-up question's
time-to-first-token as a ratio of the first question's (the encoded video is reused).
"""

from __future__ import annotations

import argparse
import time

from _setup import clip, median, model_3b, steady_step_s

from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.events import Encoded, Prefilled, TokenEvent
from vreason_local.media import load_video
from vreason_local.video import FrameSampling


def ask(engine: Engine, media, question: str, tokens: int) -> dict:
    t0 = time.perf_counter()
    out: dict = {"t_s": []}
    for ev in engine.ask(media, question, GenerationSettings(max_tokens=tokens, stop_at_answer=False)):
        if isinstance(ev, Encoded):
            out["encoded"] = ev
        elif isinstance(ev, Prefilled):
            out["prefilled"] = ev
        elif isinstance(ev, TokenEvent):
            out.setdefault("ttft_s", time.perf_counter() - t0)
            out["t_s"].append(ev.t_s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()
    model = model_3b()
    lm = load_video(clip(), FrameSampling(fps=1.0, min_frames=args.frames, max_frames=args.frames), patch=14)
    with Engine(model.model_path, model.mmproj_path, EngineSettings(n_ctx=4096)) as engine:
        first = ask(engine, lm.media, "What happens in this video?", args.tokens)
        follow = ask(engine, lm.media, "What colour is the square?", args.tokens)
    enc: Encoded = first["encoded"]
    steps = steady_step_s(first["t_s"]) + steady_step_s(follow["t_s"])
    print(f"model: {model.model_path.name} (3b shape, Q8_0, random weights); load {engine.load_s:.2f} s")
    print(f"video: {enc.n_frames} frames -> {enc.n_media_tokens} vision tokens, prompt {enc.n_tokens} tokens")
    print(f"vision encode: {enc.encode_s:.2f} s ({enc.n_media_tokens / enc.encode_s:.1f} tokens/s)")
    print(f"prefill: {enc.n_tokens / enc.prefill_s:.1f} tokens/s ({enc.prefill_s:.2f} s for {enc.n_tokens} tokens)")
    print(
        f"decode: {1 / median(steps):.2f} tokens/s (median of {len(steps)} steps, {median(steps) * 1e3:.0f} ms/token)"
    )
    print(
        f"time to first token: first question {first['ttft_s']:.2f} s, follow-up {follow['ttft_s']:.2f} s "
        f"(reused={follow['encoded'].reused}); follow-up/first = {follow['ttft_s'] / first['ttft_s']:.3f}"
    )


if __name__ == "__main__":
    main()

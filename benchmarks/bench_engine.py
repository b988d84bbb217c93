"""Engine speed and the costs of its API on the `3b` shape model (Qwen2.5-VL-3B dimensions, Q8_0, random weights).

Run: python benchmarks/bench_engine.py [--frames 8] [--tokens 24] [--rounds 3]
Prints, measured side by side in one run:
- vision encode, prefill and decode speed;
- time to first token (TTFT) of a follow-up, of an independent question, and of a V-Reason and a Lite
  answer on the same encoding, each as a ratio of the first question's (which encoded the video);
- base decode with the value-cache hook installed vs an engine without it (interleaved rounds);
- how long a cancel during encoding takes to end the answer, next to one vision chunk's time.
"""

from __future__ import annotations

import argparse
import threading
import time

from _setup import clip, median, model_3b, steady_step_s

from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.events import Encoded, Finished, Progress, TokenEvent
from vreason_local.media import load_video
from vreason_local.video import FrameSampling


def ask(engine: Engine, source, question: str, tokens: int, mode: str = "base", follow_up=None) -> dict:
    """One answer: its TTFT, step times and events of interest."""
    t0 = time.perf_counter()
    out: dict = {"t_s": []}
    gen = GenerationSettings(max_tokens=tokens, stop_at_answer=False)
    handle = engine.ask(source, question, gen, mode, follow_up=follow_up)
    for ev in handle:
        if isinstance(ev, Encoded):
            out["encoded"] = ev
        elif isinstance(ev, TokenEvent):
            out.setdefault("ttft_s", time.perf_counter() - t0)
            out["t_s"].append(ev.t_s)
    out["answer"] = handle.result()
    out["encoding"] = handle.encoding
    return out


def cancel_latency(engine: Engine, media) -> tuple[float, float]:
    """(seconds from cancel() to the end of the answer, median seconds per vision chunk), cancelling half
    way through a frame pair's encoding, as a Ctrl-C at a random moment would."""
    handle = engine.ask(media, "What happens?", GenerationSettings(max_tokens=4))
    chunk_s: list[float] = []
    last = None
    t_cancel: list[float] = []

    def cancel() -> None:
        t_cancel.append(time.perf_counter())
        handle.cancel()

    for ev in handle:
        if isinstance(ev, Progress):
            if last is not None:
                chunk_s.append(ev.elapsed_s - last)
            last = ev.elapsed_s
            if len(chunk_s) == 3:  # a text chunk and a frame pair timed: cancel half way into the next pair
                threading.Timer(max(chunk_s) / 2, cancel).start()
        elif isinstance(ev, Finished):
            assert ev.answer.stop_reason == "cancelled"
    return time.perf_counter() - t_cancel[0], max(chunk_s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the hook on/off comparison")
    args = ap.parse_args()
    model = model_3b()
    sampling = FrameSampling(fps=1.0, min_frames=args.frames, max_frames=args.frames)
    lm = load_video(clip(), sampling, patch=14)
    q = "What happens in this video?"
    with Engine(model.model_path, model.mmproj_path) as engine:
        first = ask(engine, lm.media, q, args.tokens)
        enc = first["encoding"]  # held: every later question reuses it
        follow = ask(engine, enc, "What colour is the square?", args.tokens, follow_up=first["answer"])
        again = ask(engine, enc, "Where does the square go?", args.tokens)
        vreason = ask(engine, enc, q, args.tokens, "vreason")
        lite = ask(engine, enc, q, args.tokens, "lite")
        other = load_video(clip(12.0), sampling, patch=14).media
        cancel_s, chunk_s = cancel_latency(engine, other)
        steps = steady_step_s(first["t_s"]) + steady_step_s(again["t_s"])
        on_steps: list[float] = []
        with Engine(model.model_path, model.mmproj_path, EngineSettings(hook=False)) as plain:
            penc = plain.encode(lm.media).result()
            off_steps: list[float] = []
            for _ in range(args.rounds):  # interleaved: the machine's noise falls on both alike
                off_steps += steady_step_s(ask(plain, penc, q, args.tokens)["t_s"])
                on_steps += steady_step_s(ask(engine, enc, q, args.tokens)["t_s"])
    e: Encoded = first["encoded"]
    print(f"model: {model.model_path.name} (3b shape, Q8_0, random weights); load {engine.load_s:.2f} s")
    print(f"video: {e.n_frames} frames -> {e.n_media_tokens} vision tokens, prompt {e.n_tokens} tokens")
    print(f"vision encode: {e.encode_s:.2f} s ({e.n_media_tokens / e.encode_s:.1f} tokens/s)")
    print(f"prefill: {e.n_tokens / e.prefill_s:.1f} tokens/s ({e.prefill_s:.2f} s for {e.n_tokens} tokens)")
    print(f"decode: {1 / median(steps):.2f} tokens/s ({median(steps) * 1e3:.0f} ms/token, median of {len(steps)})")
    print(f"TTFT first question (encodes the video): {first['ttft_s']:.2f} s")
    for name, r in (("follow-up", follow), ("independent question", again), ("vreason", vreason), ("lite", lite)):
        reused = r["answer"].reused_encoding
        print(f"TTFT {name}: {r['ttft_s']:.2f} s, / first = {r['ttft_s'] / first['ttft_s']:.3f} (reused={reused})")
    ratio = median(on_steps) / median(off_steps)
    print(
        f"base decode, hook installed / no hook: {ratio:.3f} ({median(on_steps) * 1e3:.1f} vs {median(off_steps) * 1e3:.1f} ms/token)"
    )
    print(
        f"cancel while encoding: answer ended {cancel_s * 1e3:.0f} ms after cancel(); one frame pair takes {chunk_s * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()

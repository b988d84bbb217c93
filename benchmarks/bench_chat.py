"""What the chat app costs on top of the engine: decode speed inside `vreason chat` vs a plain `engine.ask`
loop on the same engine, encoding and settings (interleaved rounds), and input latency while decoding.

Run: python benchmarks/bench_chat.py [--shape fast] [--quant q4_k_m] [--tokens 128] [--rounds 3]
`--shape` is any `make-tiny` shape (`fast`: 3 small layers with Qwen's real 151,936-token vocabulary, quick;
`3b`/`7b`: the real dimensions, built by _setup). The app runs headless (Textual's pilot) with its real
widgets: streamed Markdown, the telemetry chart, the store (a temporary file).
Prints, measured side by side in one run:
- decode tokens/s per answer inside the app (engine timings) and a plain loop, and their ratio;
- wall time per answer from Enter to the answer shown (app) vs the plain loop's ask-to-result;
- keypress -> its echo in the prompt while an answer streams (median and max of 20 presses).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _setup import BENCH_DIR, clip, median
from _setup import model as bench_model
from textual import events
from textual.widgets import Input
from textual_image.widget import HalfcellImage

from vreason_local.chat.app import ChatApp
from vreason_local.chat.options import ChatOptions
from vreason_local.chat.store import ChatStore
from vreason_local.chat.telemetry_view import TelemetryPanel
from vreason_local.engine import EngineSettings, GenerationSettings
from vreason_local.tiny import TinyModel, make_tiny
from vreason_local.video import FrameSampling
from vreason_local.vreason import VReasonSettings

QUESTION = "Count the frames."


def pick_model(shape: str, quant: str) -> TinyModel:
    if shape in ("3b", "7b"):
        return bench_model(shape, quant)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return make_tiny(BENCH_DIR, arch="qwen25vl", shape=shape, wtype="f16")


async def until(pilot, condition, timeout: float = 600.0, step: float = 0.005) -> None:
    """Wait for `condition`, checking every `step` s. With asyncio.sleep, not `pilot.pause`: a pause
    forces a screen update (layout and render, ~30-40 ms on a busy screen here) each time, which would
    charge the harness's polling to the app."""
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the app did not get there")
        await asyncio.sleep(step)


async def measure(options: ChatOptions, rounds: int) -> dict:
    out: dict = {"app_tps": [], "plain_tps": [], "app_wall": [], "plain_wall": [], "latency": []}
    with tempfile.TemporaryDirectory() as tmp, ChatStore(Path(tmp) / "bench.db") as store:
        app = ChatApp(options, store, image_class=HalfcellImage)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.encoding is not None and app.loading is None)
            prompt = app.query_one("#prompt", Input)
            for _ in range(rounds):  # interleaved: the machine's noise falls on both alike
                prompt.value = QUESTION
                t0 = time.perf_counter()
                await pilot.press("enter")
                await until(pilot, lambda: app.job is None and app.follow_up is not None, step=0.05)
                out["app_wall"].append(time.perf_counter() - t0)
                out["app_tps"].append(app.follow_up.timings["tokens_per_s"])
                app.follow_up = None  # independent questions, like the plain loop's
                with app.lock:
                    t0 = time.perf_counter()
                    plain = app.engine.ask(app.encoding, QUESTION, options.gen).result()
                    out["plain_wall"].append(time.perf_counter() - t0)
                    out["plain_tps"].append(plain.timings["tokens_per_s"])
            # input latency: keys typed while answers stream (a new question when one ends). The key goes
            # through the app's message queue as a terminal's would (pilot.press waits for an idle app).
            app.options = replace(options, gen=replace(options.gen, max_tokens=100_000))
            prompt.value = ""
            deadline = time.monotonic() + 120
            while len(out["latency"]) < 20 and time.monotonic() < deadline:
                if app.job is None:
                    await app.ask(QUESTION, ("base",))
                before = prompt.value.count("x")
                t0 = time.perf_counter()
                prompt.post_message(events.Key("x", "x"))
                await until(pilot, lambda n=before + 1: prompt.value.count("x") >= n)
                if app.job is not None and app.query_one(TelemetryPanel).chart.series.get("entropy"):
                    out["latency"].append(time.perf_counter() - t0)  # tokens were streaming throughout
                await asyncio.sleep(0.02)
            out["n_tokens"] = len(plain.tokens)
            app.action_stop()
            await until(pilot, lambda: app.job is None)
        app.close_engine()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="fast", help="make-tiny shape: tiny, fast, mid, 3b, 7b, ...")
    ap.add_argument("--quant", default="q4_k_m", help="3b/7b only: q4_k_m or q8_0")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    m = pick_model(args.shape, args.quant)
    gen = GenerationSettings(max_tokens=args.tokens, stop_at_answer=False, reasoning=False)
    frames = FrameSampling(fps=1.0, min_frames=4, max_frames=4)
    options = ChatOptions(
        str(m.model_path), str(m.mmproj_path), clip(), frames, gen, EngineSettings(), VReasonSettings()
    )
    r = asyncio.run(measure(options, args.rounds))
    app_tps, plain_tps = median(r["app_tps"]), median(r["plain_tps"])
    print(f"model: {m.model_path.name} (random weights); {r['n_tokens']} tokens per answer, {args.rounds} rounds")
    print(f"decode inside the app: {app_tps:.1f} tokens/s; plain engine.ask loop: {plain_tps:.1f} tokens/s")
    print(f"app / plain decode speed: {app_tps / plain_tps:.3f}")
    app_wall, plain_wall = median(r["app_wall"]), median(r["plain_wall"])
    print(
        f"per answer, Enter to shown (app) / ask to result (plain): {app_wall:.3f} / {plain_wall:.3f} s = {app_wall / plain_wall:.3f}"
    )
    lat = r["latency"]
    if not lat:
        print("keypress latency: no key landed while tokens streamed (answers ended too soon)")
        return
    print(
        f"keypress -> echo while decoding: median {median(lat) * 1e3:.1f} ms, max {max(lat) * 1e3:.1f} ms ({len(lat)} keys)"
    )


if __name__ == "__main__":
    main()

"""What `vreason serve` adds to the engine's own speed, measured side by side in one run on one engine.

Run: python benchmarks/bench_serve.py [--shape 3b|fast] [--frames 8] [--tokens 64] [--rounds 3]
(`3b`: the 3b shape model, Q4_K_M, random weights, as the issue's targets are stated for; `fast`: a
seconds-long check that the benchmark works.) Prints, each as a ratio measured in the same run:
- streamed decode rate through the server (tokens/s as the client receives them) / in-process
  `Engine.ask` (tokens/s as its events come): target >= 0.97;
- time added to the first token: the server's TTFT (request sent -> first token's chunk) minus the
  in-process TTFT (`ask()` -> first TokenEvent), both on a kept encoding: target < 20 ms;
- a follow-up's TTFT through the server (the conversation resent with a new question) / the first
  question's (which encoded the video): target <= 0.1 on the 3b shape.
In-process and server answers alternate (interleaved rounds, medians), with distinct questions of the same
token count (`question_pairs`) so that neither reuses the other's question tokens nor prefills more; the
server runs in this process (uvicorn in a thread, loopback),
as a client on the same machine sees it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from _setup import clip, median, model, model_fast

from vreason_local.decoding import decoding_for
from vreason_local.engine import Engine
from vreason_local.events import TokenEvent
from vreason_local.media import load_video
from vreason_local.serve.app import create_app
from vreason_local.serve.config import ServeOptions
from vreason_local.serve.media import MediaLimits
from vreason_local.settings import RunSettings

NAME = "bench"
WORDS = ("Describe", "Explain", "Summarise", "Tell", "Say", "List", "Name", "Count", "Show", "Give")


def in_process(engine: Engine, encoding, question: str, settings: RunSettings) -> tuple[float, float, int]:
    """(TTFT s, decode tokens/s, tokens) of `Engine.ask` on a kept encoding, timed as its events arrive."""
    t0 = time.perf_counter()
    handle = engine.ask(encoding, question, settings.generation, decoding_for("base"))
    times = [time.perf_counter() for ev in handle if isinstance(ev, TokenEvent)]
    return times[0] - t0, _rate(times, len(times)), len(times)


def served(http: httpx.Client, url: str, messages: list[dict]) -> tuple[float, float, int, str]:
    """(TTFT s, decode tokens/s, tokens, content) of a streamed request, timed as its chunks arrive. Telemetry
    is asked for so that every token has its chunk (one whose text is a tag held back has none otherwise)."""
    body = {"model": NAME, "messages": messages, "stream": True, "vreason": {"telemetry": True}}
    t0 = time.perf_counter()
    times: list[float] = []
    content = ""
    with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "token" in (chunk.get("vreason") or {}):
                times.append(time.perf_counter())
                content += chunk["choices"][0]["delta"].get("content") or ""
    return times[0] - t0, _rate(times, len(times)), len(times), content


def question_pairs(engine: Engine, rounds: int) -> list[tuple[str, str]]:
    """Per round, two questions of the same token count that differ from their first word: neither side reuses
    the other's question tokens from the KV cache, and neither prefills more tokens (on the 3b shape each
    question token costs ~90 ms on 2 cores, which a one-token difference would add to the TTFT compared)."""
    pairs = []
    for k in range(rounds):
        by_length: dict[int, list[str]] = {}
        for word in WORDS:
            question = f"{word} the video, take {k}."
            by_length.setdefault(len(engine.model.tokenize(question)), []).append(question)
        same = max(by_length.values(), key=len)
        if len(same) < 2:
            raise SystemExit("no two questions of the same token count: add words to WORDS")
        pairs.append((same[k % len(same)], same[(k + 1) % len(same)]))
    return pairs


def _rate(times: list[float], n_tokens: int) -> float:
    """Tokens per second from the first to the last arrival (the first token's wait is TTFT's, not decode's)."""
    return (n_tokens - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")


def user(text: str, video: Path | None = None) -> dict:
    parts = [{"type": "video_url", "video_url": {"url": f"file://{video}"}}] if video else []
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=("3b", "fast"), default="3b")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    m = model("3b", "q4_k_m") if args.shape == "3b" else model_fast()
    video = clip()
    settings = RunSettings.from_values(
        {
            "model": str(m.model_path),
            "mmproj": str(m.mmproj_path),
            "max_tokens": args.tokens,
            "fps": 1.0,
            "min_frames": args.frames,
            "max_frames": args.frames,
        },
        hook=True,
    )
    with tempfile.TemporaryDirectory() as tmp, Engine(m.model_path, m.mmproj_path, settings.engine) as engine:
        options = ServeOptions(NAME, MediaLimits.create([video.parent], 1 << 20, Path(tmp)))
        server = uvicorn.Server(uvicorn.Config(create_app(engine, settings, options), port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        try:
            with httpx.Client(timeout=600) as http:
                q = "What happens in this video?"
                first_ttft, _, _, first_text = served(http, url, [user(q, video)])  # encodes the video
                history = [user(q, video), {"role": "assistant", "content": first_text}]
                follow_ttft = served(http, url, history + [user("What colour is the square?")])[0]
                media = load_video(video, settings.frames, engine.projector.patch_size, settings.token_budget).media
                encoding = engine.encode(media).result()  # resident already: no encoding
                local, remote = [], []
                for k, (mine, theirs) in enumerate(question_pairs(engine, args.rounds)):
                    # sides swap which of the pair they ask, so that neither always has the costlier words
                    mine, theirs = (mine, theirs) if k % 2 == 0 else (theirs, mine)
                    local.append(in_process(engine, encoding, mine, settings))
                    remote.append(served(http, url, [user(theirs, video)]))
        finally:
            server.should_exit = True
            thread.join(30)
    ttft_local, ttft_remote = median([r[0] for r in local]), median([r[0] for r in remote])
    rate_local, rate_remote = median([r[1] for r in local]), median([r[1] for r in remote])
    print(
        f"model: {m.model_path.name} ({args.shape} shape, random weights); {args.frames} frames, {args.tokens} tokens"
    )
    print(
        f"streamed decode rate, server / in-process: {rate_remote / rate_local:.3f} "
        f"({rate_remote:.2f} vs {rate_local:.2f} tokens/s; target >= 0.97)"
    )
    print(
        f"time added to the first token: {(ttft_remote - ttft_local) * 1e3:.1f} ms "
        f"({ttft_remote * 1e3:.1f} vs {ttft_local * 1e3:.1f} ms; target < 20 ms)"
    )
    print(
        f"follow-up TTFT / first question's: {follow_ttft / first_ttft:.3f} "
        f"({follow_ttft:.3f} vs {first_ttft:.3f} s; target <= 0.1 on the 3b shape)"
    )


if __name__ == "__main__":
    main()

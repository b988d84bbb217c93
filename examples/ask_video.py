"""The Python API in one script: load a model once, encode a video once, ask it in every mode, follow up.

    python examples/ask_video.py --model M.gguf --mmproj P.gguf --video clip.mp4

Prints one JSON object per answer (mode, question, whether the video was encoded again, tokens, time to
first token, the answer). With no arguments it generates a tiny random-weight model and a clip first
(the text is gibberish by design; the point is the API).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from vreason_local.decoding import decoding_for
from vreason_local.engine import Engine
from vreason_local.events import Progress, TokenEvent
from vreason_local.media import load_video
from vreason_local.settings import FrameSampling, GenerationSettings, VReasonSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="language model GGUF (default: generate a tiny one)")
    parser.add_argument("--mmproj", type=Path, help="its vision projector GGUF")
    parser.add_argument("--video", type=Path, help="a video file (default: generate a clip)")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.model is None or args.video is None:
        from vreason_local.clips import make_clip
        from vreason_local.tiny import make_tiny

        out = Path(tempfile.mkdtemp(prefix="vreason-example-"))
        tiny = make_tiny(out, arch="qwen25vl", shape="tiny")
        args.model, args.mmproj = args.model or tiny.model_path, args.mmproj or tiny.mmproj_path
        args.video = args.video or make_clip(out / "clip.mp4", seconds=4.0)

    with Engine(args.model, args.mmproj) as engine:  # loaded once
        patch = engine.projector.patch_size
        media = load_video(args.video, FrameSampling(fps=1.0, max_frames=16), patch).media
        encoding = engine.encode(media).result()  # encoded once; iterate the job instead for Progress events
        gen = GenerationSettings(max_tokens=args.max_tokens)
        question = "What happens in this video?"
        last = None
        for mode in ("base", "vreason", "lite"):
            last = report(engine.ask(encoding, question, gen, decoding_for(mode, VReasonSettings())), question)
        report(engine.ask(encoding, "And what happens next?", gen, "base", follow_up=last), "And what happens next?")


def report(handle, question: str):
    """Stream one answer and print its summary as a JSON line."""
    t0 = time.perf_counter()
    first_token_s = None
    for event in handle:
        if isinstance(event, TokenEvent) and first_token_s is None:
            first_token_s = time.perf_counter() - t0
        elif isinstance(event, Progress):
            pass  # a front end would draw a progress bar here
    answer = handle.result()
    print(
        json.dumps(
            {
                "mode": answer.mode,
                "question": question,
                "reused": answer.reused_encoding,
                "n_tokens": len(answer.tokens),
                "time_to_first_token_s": round(first_token_s or 0.0, 3),
                "stop_reason": answer.stop_reason,
                "answer": answer.answer,
            },
            ensure_ascii=False,
        )
    )
    return answer


if __name__ == "__main__":
    main()

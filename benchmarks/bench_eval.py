"""`vreason eval`'s answers per minute with each video encoded once for its questions (the runner) vs
encoded again for every question (a runner that asks in dataset order, question after question).

Run: python benchmarks/bench_eval.py [--shape 3b] [--quant q4_k_m] [--videos 3] [--questions 4] [--frames 8]
     [--tokens 24] [--modes base] [--rounds 1]
Prints, measured side by side in one run on one loaded engine (the two ways alternate, round by round):
- answers per minute with encoding reuse (runner.evaluate_group, one video's questions together);
- answers per minute without: the same questions asked video after video (q1 of every video, then q2 ...),
  each answer sampling the frames and encoding the video again, as `engine.ask(media, ...)` must when
  another video was asked about last;
- their ratio, and the encodings each way made (counted from the answers' `reused_encoding`).
Answers are greedy and exactly --tokens long (no stop at </answer>), so both ways produce the same text.
Shapes: tiny (random, seconds), fast, 3b, 7b (built once into the benchmark folder, see _setup.py).
"""

from __future__ import annotations

import argparse
import time

from _setup import BENCH_DIR, model, model_fast

from vreason_local.clips import make_clip
from vreason_local.decoding import decoding_for
from vreason_local.engine import Engine, GenerationSettings
from vreason_local.evaluate.items import Item
from vreason_local.evaluate.runner import EvalSettings, evaluate_group
from vreason_local.media import load_video
from vreason_local.tiny import TinyModel, make_tiny
from vreason_local.video import FrameSampling

QUESTIONS = (
    ("What colour is the moving square?", "multiple-choice", "A", ("red", "green", "blue", "white")),
    ("How many squares are in the video?", "numeric", 1.0, ()),
    ("Which way does the square move?", "free-form", "left", ()),
    ("Does the background change colour?", "multiple-choice", "B", ("no", "yes")),
)


def items(n_videos: int, n_questions: int) -> list[Item]:
    """n_questions questions about each of n_videos generated clips (640x360, 8 s), video by video."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    out = []
    for v in range(n_videos):
        clip = make_clip(BENCH_DIR / f"bench-eval-{v}.mp4", seconds=8.0, fps=15.0, size=(640, 360), seed=v)
        for q in range(n_questions):
            text, kind, answer, options = QUESTIONS[q % len(QUESTIONS)]
            out.append(Item(f"v{v}-q{q}", clip, f"{text} (question {q + 1})", kind, answer, options))
    return out


def with_reuse(engine: Engine, groups: list[list[Item]], modes: tuple[str, ...], settings: EvalSettings) -> list:
    return [row for group in groups for row in evaluate_group(engine, group, modes, settings)]


def without_reuse(engine: Engine, groups: list[list[Item]], modes: tuple[str, ...], settings: EvalSettings) -> list:
    """Question-major order: every answer is about a different video than the one before, so it encodes."""
    answers = []
    patch = engine.projector.patch_size
    for q in range(max(len(g) for g in groups)):
        for group in groups:
            if q >= len(group):
                continue
            for mode in modes:
                media = load_video(group[q].video, settings.frames, patch).media
                decoding = decoding_for(mode, settings.vreason)
                answers.append(engine.ask(media, group[q].prompt(), settings.generation, decoding).result())
    return answers


def setup(args: argparse.Namespace) -> tuple[TinyModel, tuple[str, ...], EvalSettings]:
    """The model of `--shape` (and `--quant`), the modes and the settings every answer of the run uses."""
    if args.shape == "tiny":
        m = make_tiny(BENCH_DIR, arch="qwen25vl", shape="tiny")
    elif args.shape == "fast":
        m = model_fast()
    else:
        m = model(args.shape, args.quant)
    modes = tuple(args.modes.split(","))
    vr = None
    if any(mode != "base" for mode in modes):
        from vreason_local.vreason import VReasonSettings

        vr = VReasonSettings()
    settings = EvalSettings(
        GenerationSettings(max_tokens=args.tokens, stop_at_answer=False),
        FrameSampling(fps=1.0, min_frames=args.frames, max_frames=args.frames),
        vr,
    )
    return m, modes, settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="3b", choices=("tiny", "fast", "3b", "7b"))
    ap.add_argument("--quant", default="q4_k_m", choices=("q4_k_m", "q8_0"), help="3b/7b only")
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--questions", type=int, default=4, help="questions per video")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--modes", default="base", help="comma-separated, as vreason eval --modes")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    if args.videos < 2:
        ap.error("--videos must be at least 2: with one video nothing would make an answer encode again")
    m, modes, settings = setup(args)
    qs = items(args.videos, args.questions)
    groups = [qs[v * args.questions : (v + 1) * args.questions] for v in range(args.videos)]
    n_answers = len(qs) * len(modes)
    times = {"reuse": 0.0, "no reuse": 0.0}
    encodes = {}
    texts = {}
    with Engine(m.model_path, m.mmproj_path) as engine:
        for _ in range(args.rounds):  # alternating: the machine's noise falls on both alike
            t0 = time.perf_counter()
            rows = with_reuse(engine, groups, modes, settings)
            times["reuse"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            answers = without_reuse(engine, groups, modes, settings)
            times["no reuse"] += time.perf_counter() - t0
            encodes = {
                "reuse": sum(not r["reused_encoding"] for r in rows),
                "no reuse": sum(not a.reused_encoding for a in answers),
            }
            texts = {"reuse": sorted(r["text"] for r in rows), "no reuse": sorted(a.text for a in answers)}
        frames = rows[0]["settings"]["frames"]
        video_tokens = rows[0]["n_video_tokens"]
    print(f"model: {m.model_path.name} ({args.shape} shape, random weights); load {engine.load_s:.2f} s")
    print(
        f"{args.videos} videos x {args.questions} questions x {len(modes)} mode(s) ({', '.join(modes)}) = "
        f"{n_answers} answers of {args.tokens} tokens; {frames['count']} frames {frames['width']}x{frames['height']} "
        f"-> {video_tokens} vision tokens per video; {args.rounds} round(s)"
    )
    per_min = {k: n_answers * args.rounds / t * 60 for k, t in times.items()}
    for k in times:
        print(f"{k}: {per_min[k]:.1f} answers/min ({times[k] / args.rounds:.2f} s a round, {encodes[k]} encodings)")
    print(f"answers/min with reuse / without: {per_min['reuse'] / per_min['no reuse']:.2f}")
    print(f"same answers both ways: {texts['reuse'] == texts['no reuse']}")


if __name__ == "__main__":
    main()

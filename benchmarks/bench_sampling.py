"""Time probing and frame sampling on a generated 60 s, 640x360, 30 fps clip.

Run: python benchmarks/bench_sampling.py [--repeats N]
Prints one line per figure; times are medians over the repeats, in milliseconds. The clip is
MPEG-4 Part 2 (the only MP4 codec the opencv-python wheels can write), whose frames decode
faster than H.264 camera footage, so treat the figures as a lower bound.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2

from vreason_local.clips import make_clip
from vreason_local.video import FrameSampling, plan_sampling, probe, sample_frames

SECONDS, FPS, SIZE = 60.0, 30.0, (640, 360)
SETTINGS = {
    "1fps/32frames": FrameSampling(fps=1.0, max_frames=32),
    "2fps/64frames": FrameSampling(fps=2.0, max_frames=64),
    "0.25fps/16frames": FrameSampling(fps=0.25, max_frames=16),
    "1fps/32frames/448px": FrameSampling(fps=1.0, max_frames=32, max_pixels=448 * 448),
}


def median_ms(action: Callable[[], object], repeats: int) -> float:
    """Median wall time of `action` in milliseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def grab_all(path: Path) -> int:
    """Decode every frame without colour conversion: the cost of walking the whole clip."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    count = 0
    while cap.grab():
        count += 1
    cap.release()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        path = make_clip(Path(folder) / "bench.mp4", seconds=SECONDS, fps=FPS, size=SIZE)
        print(f"clip {SIZE[0]}x{SIZE[1]} {FPS:g} fps {SECONDS:g} s: written in {time.perf_counter() - started:.2f} s")
        info = probe(path)
        print(f"probe_ms {median_ms(lambda: probe(path), repeats):.1f}")
        minutes = info.duration_s / 60
        print(f"grab_all_frames ms_per_video_minute {median_ms(lambda: grab_all(path), repeats) / minutes:.1f}")
        for name, settings in SETTINGS.items():
            plan = plan_sampling(info, settings)
            ms = median_ms(lambda plan=plan: sample_frames(path, plan), repeats)
            print(
                f"sample {name}: frames {len(plan.indices)} size {plan.width}x{plan.height} "
                f"ms_per_video_minute {ms / minutes:.1f} ms_per_frame {ms / len(plan.indices):.2f}"
            )


if __name__ == "__main__":
    main()

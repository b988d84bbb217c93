"""An answer's timings name what they measured: the vision encoder's time is `encode_s`, never hidden in a prefill.

Real llama.cpp and mtmd on the generated tiny model and clip. The llama.cpp calls are wrapped in stopwatches (they
still run): the engine's figures must agree with an independent timing of the very calls they claim to time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from llama_cpp import mtmd_cpp as M

from vreason_local import llama_backend
from vreason_local.clips import make_clip
from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.media import load_video
from vreason_local.video import FrameSampling

# every timing an answer of the engine carries (README "`--json` fields", `timings`); controller_setup_s only in
# the controlled modes
ANSWER_TIMINGS = {"load_s", "encode_s", "prefill_media_s", "prefill_question_s", "prefill_s", "decode_s"}
ANSWER_TIMINGS |= {"controller_s", "tokens_per_s"}


def _stopwatch(spent: dict[str, float], name: str, call: Callable) -> Callable:
    def timed(*args: object) -> object:
        t0 = time.perf_counter()
        try:
            return call(*args)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

    return timed


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    # 448x336 frames: the tiny projector's encoder costs several times the embeddings' decode (measured 3.7x)
    clip = make_clip(tmp_path_factory.mktemp("timings") / "clip.mp4", seconds=4.0, fps=10.0, size=(448, 336))
    return load_video(clip, FrameSampling(fps=2.0, max_frames=8), patch=14).media


def test_encode_s_is_the_vision_encoders_time(tiny_model_factory, media, monkeypatch):
    tiny = tiny_model_factory("qwen25vl")
    spent: dict[str, float] = {}
    monkeypatch.setattr(M, "mtmd_encode_chunk", _stopwatch(spent, "encoder", M.mtmd_encode_chunk))
    decode = _stopwatch(spent, "embeddings", M.mtmd_helper_decode_image_chunk)
    monkeypatch.setattr(M, "mtmd_helper_decode_image_chunk", decode)
    text = _stopwatch(spent, "text", llama_backend.Context.decode_tokens)
    monkeypatch.setattr(llama_backend.Context, "decode_tokens", text)
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(n_threads=1)) as engine:
        answer = engine.ask(media, "What happens?", GenerationSettings(max_tokens=4)).result()
    t = answer.timings
    assert set(t) == ANSWER_TIMINGS, t
    # the encoder's own calls, and only they, make encode_s (a 2 ms margin covers the loop around them)
    assert spent["encoder"] - 0.002 <= t["encode_s"] <= spent["encoder"] + 0.002, (t, spent)
    assert t["encode_s"] > spent["embeddings"]  # the vision-heavy projector: an attribution swap fails here
    # the prefix's prefill: the embeddings' decode and the prefix's text chunks, the encoder's time not in it
    assert spent["embeddings"] - 0.002 <= t["prefill_media_s"] <= spent["embeddings"] + spent["text"] + 0.002, spent
    assert t["prefill_s"] == pytest.approx(t["prefill_media_s"] + t["prefill_question_s"], abs=2e-4)

"""V-Reason with llama.cpp on a GPU and the controller on CUDA. Marked `gpu`: skipped where this build of
llama.cpp cannot offload or PyTorch sees no CUDA device (CI, most laptops); `benchmarks/gpu_check.sh` runs
them on a GPU machine.

With the model offloaded, the value cache lives in device memory: the hook reads and writes it with
ggml_backend_tensor_get/set, and the controller's tail runs in float16 on the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vreason_local.clips import make_clip
from vreason_local.decoding import VReasonDecoding
from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.events import TokenEvent
from vreason_local.llama_backend import supports_gpu_offload
from vreason_local.media import load_video
from vreason_local.video import FrameSampling
from vreason_local.vreason import SELFCHECK_TOL, VReasonSettings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (supports_gpu_offload() and torch.cuda.is_available()),
        reason="needs llama.cpp built with GPU offload and a CUDA device for PyTorch",
    ),
]


@pytest.fixture(scope="module")
def setup(tiny_model_factory, tmp_path_factory):
    t = tiny_model_factory("qwen25vl")
    clip = make_clip(tmp_path_factory.mktemp("gpu") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    media = load_video(clip, FrameSampling(fps=2.0, max_frames=6), patch=14).media
    with Engine(t.model_path, t.mmproj_path, EngineSettings(n_gpu_layers=-1)) as engine:
        yield engine, engine.encode(media).result()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_controller_on_cuda_describes_the_offloaded_model(setup, dtype):
    engine, enc = setup
    gen = GenerationSettings(max_tokens=8, stop_at_answer=False)
    handle = engine.ask(
        enc, "What happens?", gen, VReasonDecoding(VReasonSettings(every=1, lr=0.05, device="cuda", dtype=dtype))
    )
    checks = []
    for ev in handle:
        if isinstance(ev, TokenEvent) and ev.control.selfcheck is not None:
            checks.append(ev.control.selfcheck)
            c = handle.controller
            cached = engine.hook.read_values(c.rows, engine.v_transposed)  # from the device's KV buffer
            np.testing.assert_array_equal(cached, c.v_cache.reshape(c.n_rows, -1).cpu().numpy().astype(np.float16))
    answer = handle.result()
    assert answer.settings["vreason"]["device"].startswith("cuda")
    # from the second update on, llama.cpp computed its logits with the rows the first update wrote into
    # device memory: the tail at the cached offset must reproduce them
    assert len(checks) >= 2 and max(checks) < SELFCHECK_TOL, checks
    assert any(c.dv_norm > 0 for c in answer.control)


def test_base_answer_after_vreason_on_gpu_is_unchanged(setup):
    engine, enc = setup
    gen = GenerationSettings(max_tokens=8, stop_at_answer=False)
    before = engine.ask(enc, "What happens?", gen).result().tokens
    engine.ask(enc, "What happens?", gen, VReasonDecoding(VReasonSettings(every=1, lr=0.05, device="cuda"))).result()
    assert engine.ask(enc, "What happens?", gen).result().tokens == before  # the device rows were restored

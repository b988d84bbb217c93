"""The engine on real llama.cpp + mtmd with generated tiny models and generated clips."""

from __future__ import annotations

import threading
from pathlib import Path

import llama_cpp as L
import numpy as np
import pytest
import torch

from vreason_local.channels import split_answer
from vreason_local.clips import make_clip, make_image
from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.errors import ContextTooSmall, UserError
from vreason_local.events import Encoded, Finished, Prefilled, Progress, TokenEvent
from vreason_local.media import Media, load_image, load_video
from vreason_local.prompt import prefix_parts, question_text
from vreason_local.repack import cpu_has_amx, probe, repack_allowed
from vreason_local.video import FrameSampling, video_tokens


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def engine(tiny):
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(n_ctx=2048)) as eng:
        yield eng


def run(engine: Engine, media: Media, question: str = "What happens?", **kw) -> tuple[list, object]:
    """The answer's events less progress (tested on its own), and the finished answer."""
    events = [ev for ev in engine.ask(media, question, **kw) if not isinstance(ev, Progress)]
    assert isinstance(events[-1], Finished)
    return events, events[-1].answer


def test_split_answer():
    assert split_answer("<think>look</think><answer>B</answer>") == ("look", "B")
    assert split_answer("<think>a</think> C") == ("a", "C")
    assert split_answer("just text") == ("", "just text")
    assert split_answer("<think>cut off") == ("cut off", "")


def test_video_answer_events(engine, clip):
    lm = load_video(clip, FrameSampling(fps=2.0, max_frames=8), patch=14)
    events, answer = run(engine, lm.media, gen=GenerationSettings(max_tokens=10))
    kinds = [type(e) for e in events]
    assert kinds[0] is Encoded and kinds[1] is Prefilled and kinds[-1] is Finished
    enc = events[0]
    h, w = lm.media.frames[0].rgb.shape[:2]
    assert enc.n_frames == 8 and enc.n_media_tokens == video_tokens(8, h, w) == lm.n_tokens
    toks = [e for e in events if isinstance(e, TokenEvent)]
    assert [t.step for t in toks] == list(range(1, len(toks) + 1)) and len(toks) <= 10
    assert answer.tokens == [t.token for t in toks] and answer.entropy == [t.entropy for t in toks]
    assert answer.text == "".join(t.text for t in toks)
    assert all(0 <= t.entropy <= np.log(engine.model.n_vocab) + 1e-6 for t in toks)
    assert answer.stop_reason in ("eos", "max_tokens", "answer")
    assert answer.prompt_tokens.count(None) == enc.n_media_tokens


def test_first_entropy_matches_plain_llama_cpp(engine, tiny):
    """Text-only: the engine's first entropy equals one computed from a separate plain llama.cpp run."""
    events, answer = run(engine, Media.none(), "Name a colour.", gen=GenerationSettings(max_tokens=1))
    prompt = prefix_parts(Media.none(), "<__media__>")[0] + question_text("Name a colour.", True, False)
    params = L.llama_context_default_params()
    params.n_ctx = 512
    ctx = L.llama_init_from_model(engine.model.ptr, params)
    try:
        ids = engine.model.tokenize(prompt)
        assert ids == answer.prompt_tokens
        arr = (L.llama_token * len(ids))(*ids)  # keep referenced while llama.cpp reads it
        batch = L.llama_batch_get_one(arr, len(ids))
        assert L.llama_decode(ctx, batch) == 0
        z = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(engine.model.n_vocab,))
        ref = torch.distributions.Categorical(logits=torch.from_numpy(z.copy()).double()).entropy().item()
        assert answer.entropy[0] == pytest.approx(ref, abs=1e-3)
        assert answer.tokens[0] == int(np.argmax(z))
    finally:
        L.llama_free(ctx)


def test_follow_up_reuses_encoding(engine, clip):
    lm = load_video(clip, FrameSampling(fps=2.0, max_frames=6), patch=14)
    first, a1 = run(engine, lm.media, gen=GenerationSettings(max_tokens=8))
    again, a2 = run(engine, lm.media, gen=GenerationSettings(max_tokens=8))
    assert not first[0].reused and again[0].reused
    assert a2.tokens == a1.tokens  # rewound to the end of the video: the same question, the same answer
    chat, a3 = run(engine, lm.media, "And then?", gen=GenerationSettings(max_tokens=4), follow_up=a2)
    assert chat[0].reused and len(a3.tokens) >= 1
    assert a3.prompt_tokens[: len(a2.prompt_tokens) + len(a2.tokens)] == a2.prompt_tokens + a2.tokens


def test_image_and_text_only(engine, tmp_path):
    img = load_image(make_image(tmp_path / "x.png", (200, 150)), 336 * 336, 14)
    events, answer = run(engine, img.media, gen=GenerationSettings(max_tokens=3))
    assert events[0].n_media_tokens == img.n_tokens > 0 and answer.tokens
    events, answer = run(engine, Media.none(), gen=GenerationSettings(max_tokens=3))
    assert events[0].n_media_tokens == 0 and answer.tokens


def test_cancel_stops_after_the_current_token(engine):
    handle = engine.ask(Media.none(), "What happens?", GenerationSettings(max_tokens=50, stop_at_answer=False))
    for ev in handle:
        if isinstance(ev, TokenEvent):
            handle.cancel()
    answer = handle.result()
    assert answer.stop_reason == "cancelled" and len(answer.tokens) == 1


def test_cancel_before_decoding_gives_an_empty_cancelled_answer(engine):
    cancel = threading.Event()
    cancel.set()  # e.g. a front end's worker cancelled before the answer started
    _, answer = run(engine, Media.none(), gen=GenerationSettings(max_tokens=50), cancel=cancel)
    assert answer.stop_reason == "cancelled" and answer.tokens == []


def test_bad_inputs_raise_when_asked(tiny):
    """Checked when the answer is created, before anything runs: no iteration needed."""
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(hook=False)) as eng:
        with pytest.raises(UserError, match="empty"):
            eng.ask(Media.none(), "   ")
        with pytest.raises(UserError, match="hook"):
            eng.ask(Media.none(), "q", decoding="vreason")
        with pytest.raises(UserError, match="unknown mode"):
            eng.ask(Media.none(), "q", decoding="fast")
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(n_ctx=256)) as small:
        with pytest.raises(ContextTooSmall, match="context size you set holds 256") as err:
            small.ask(Media.none(), "q", GenerationSettings(max_tokens=400))
        assert err.value.remedies[0].setting == "engine.n_ctx" and err.value.remedies[0].value >= err.value.needed


def test_quantised_model_answers_here(tiny_model_factory):
    """Q8_0 weights decode on this machine with the repack setting chosen automatically (AMX-safe)."""
    q = tiny_model_factory("qwen25vl", "q8_0")
    with Engine(q.model_path, q.mmproj_path, EngineSettings(n_ctx=1024)) as eng:
        _, answer = run(eng, Media.none(), gen=GenerationSettings(max_tokens=4))
    assert len(answer.tokens) >= 1 and np.isfinite(answer.entropy).all()
    assert eng.repack == repack_allowed("auto")


def test_repack_settings_and_probe(monkeypatch):
    assert repack_allowed("on") is True and repack_allowed("off") is False
    monkeypatch.setenv("VREASON_REPACK", "off")
    assert repack_allowed("on") is False  # the environment overrides, e.g. for a whole shell
    if not cpu_has_amx():
        assert probe() is True  # without AMX the repacked path must work; the probe must say so

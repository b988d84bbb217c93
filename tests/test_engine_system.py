"""A system prompt is part of the media's encoded prefix: another one is another encoding, never a reused one.

Real llama.cpp and mtmd on the generated tiny model and clip.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from vreason_local.clips import make_clip
from vreason_local.engine import Engine, EngineSettings, GenerationSettings, media_key
from vreason_local.errors import UserError
from vreason_local.events import Progress
from vreason_local.media import load_video
from vreason_local.settings import DEFAULT_SYSTEM
from vreason_local.video import FrameSampling

GEN = GenerationSettings(max_tokens=2)
PIRATE = "You are a pirate. Answer in one word."


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    clip = make_clip(tmp_path_factory.mktemp("system") / "clip.mp4", seconds=2.0, fps=10.0, size=(112, 84))
    return load_video(clip, FrameSampling(fps=2.0, max_frames=4), patch=14).media


@pytest.fixture(scope="module")
def engine(tiny_model_factory):
    tiny = tiny_model_factory("qwen25vl")
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(n_threads=1, hook=False)) as eng:
        yield eng


def _system_turn(engine: Engine, system: str) -> list[int]:
    return engine.model.tokenize(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")


def test_the_default_prompts_key_is_the_one_stored_before_there_was_a_choice(media):
    """Chat databases hold answers' media keys: the default system prompt must not change them."""
    h = hashlib.sha1(media.kind.encode())
    for f in media.frames:
        h.update(np.ascontiguousarray(f.rgb).tobytes())
        h.update(f"{f.timestamp_s:.3f}".encode())
    assert media_key(media) == media_key(media, DEFAULT_SYSTEM) == h.hexdigest()
    assert media_key(media, PIRATE) != media_key(media)


def test_another_system_prompt_encodes_the_media_again(engine, media):
    default = engine.encode(media).result()
    handle = engine.ask(media, "What happens?", GEN, system=PIRATE)
    events = list(handle)
    answer = handle.result()
    assert any(isinstance(e, Progress) and e.stage == "encode" for e in events)  # encoded, not reused
    assert not answer.reused_encoding and answer.settings["system"] == PIRATE
    pirate_turn = _system_turn(engine, PIRATE)
    assert answer.prompt_tokens[: len(pirate_turn)] == pirate_turn  # the prompt the model read begins with it
    assert handle.encoding.system == PIRATE and handle.encoding.key != default.key

    # the same prompt again reuses its encoding; the default again is the default's prefix, not the pirate's
    again = engine.ask(media, "And then?", GEN, system=PIRATE).result()
    assert again.reused_encoding
    back = engine.ask(default, "What happens?", GEN).result()
    assert back.settings["system"] == DEFAULT_SYSTEM
    default_turn = _system_turn(engine, DEFAULT_SYSTEM)
    assert back.prompt_tokens[: len(default_turn)] == default_turn


def test_an_encoding_refuses_another_system_prompt(engine, media):
    encoding = engine.encode(media, system=PIRATE).result()
    with pytest.raises(UserError, match="another system prompt"):
        engine.ask(encoding, "What happens?", GEN, system=DEFAULT_SYSTEM)
    assert engine.ask(encoding, "What happens?", GEN, system=PIRATE).result().reused_encoding
    assert engine.ask(encoding, "What happens?", GEN).result().settings["system"] == PIRATE

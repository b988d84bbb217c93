"""Decodings (decoding.py): a mode and its settings as one value, and the hooks the engine calls, in order.

The hooks' order is what the protocol promises a custom decoding; it is checked on the real engine, with a
decoding that records each call next to the events the answer yields.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest

from vreason_local.clips import make_clip
from vreason_local.decoding import (
    BaseDecoding,
    LiteDecoding,
    TextStream,
    VReasonDecoding,
    decoding_for,
    lite_keep,
    stop_reason,
)
from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.errors import UserError
from vreason_local.events import ControlState, Event
from vreason_local.media import Media, load_video
from vreason_local.settings import VReasonSettings
from vreason_local.video import FrameSampling

GEN = GenerationSettings(max_tokens=5, stop_at_answer=False)
QUESTION = "What happens?"
STRONG = VReasonSettings(every=1, lr=0.05)  # large enough that the values really move on a tiny model


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def engine(tiny):
    with Engine(tiny.model_path, tiny.mmproj_path) as eng:
        yield eng


@pytest.fixture(scope="module")
def enc(engine, tmp_path_factory):
    clip = make_clip(tmp_path_factory.mktemp("decoding") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    media = load_video(clip, FrameSampling(fps=2.0, max_frames=4), patch=engine.projector.patch_size).media
    return engine.encode(media).result()


class RecordingController:
    """A controller that changes nothing: it logs each call and says something at step 2."""

    def __init__(self, log: list, fail_at: int | None, host) -> None:
        self.log, self.fail_at, self.host = log, fail_at, host
        self.warning: str | None = None

    def step(self, k: int, logits: np.ndarray, h: float, n_cells: int) -> ControlState:
        self.log.append(("step", k, n_cells, int(np.argmax(logits)), h))
        if k == self.fail_at:
            raise RuntimeError("injected failure")
        if k == 2:
            self.warning = "step 2 says"
        return ControlState(float(k), float(k), None, 0.0, None, None)

    def prepare(self, next_step: int) -> None:
        self.log.append(("prepare", next_step, self.host.n_cells))

    def restore(self) -> None:
        self.log.append(("restore",))


@dataclass(frozen=True)
class Recording(BaseDecoding):
    """A custom decoding: logs each hook call with the cache cells in use then."""

    log: list = field(default_factory=list)
    fail_at: int | None = None

    def prefilled(self, host, answer):
        self.log.append(("prefilled", host.n_cells))
        return "prefilled says"

    def start(self, host, answer):
        self.log.append(("start", host.n_cells))
        return RecordingController(self.log, self.fail_at, host), "start says"


def logged(event: Event) -> tuple:
    return ("event", type(event).__name__, getattr(event, "message", getattr(event, "step", None)))


def test_a_custom_decodings_hooks_run_in_the_documented_order(engine, enc):
    reference = engine.ask(enc, QUESTION, GEN).result()
    decoding = Recording()
    handle = engine.ask(enc, QUESTION, GEN, decoding)
    for event in handle:
        decoding.log.append(logged(event))
    answer = handle.result()
    n, p = len(answer.tokens), len(answer.prompt_tokens)
    assert n >= 2, "the warning at step 2 needs a second token"
    expected = [
        ("event", "Encoded", None),
        ("prefilled", p - 1),  # the question is in the cache but its last token
        ("event", "Notice", "prefilled says"),
        ("start", p),  # the last prompt token decoded
        ("event", "Notice", "start says"),
        ("event", "Prefilled", None),
    ]
    for k in range(1, n + 1):
        if k > 1:
            expected.append(("prepare", k, p + k - 2))  # before the decode that yields step k's logits
        # step k sees the logits its (greedy) token came from, its entropy, and one more cell per token
        expected.append(("step", k, p + k - 1, answer.tokens[k - 1], answer.entropy[k - 1]))
        if k == 2:
            expected.append(("event", "Notice", "step 2 says"))
        expected.append(("event", "TokenEvent", k))
    expected += [("restore",), ("event", "Finished", None)]
    assert decoding.log == expected
    assert answer.tokens == reference.tokens  # hooks that change nothing change nothing
    assert [c.ema for c in answer.control] == [float(k) for k in range(1, n + 1)]  # the controller's states
    assert answer.notices == ["prefilled says", "start says", "step 2 says"]
    assert answer.mode == "base" and isinstance(handle.controller, RecordingController)


def test_the_controller_is_restored_when_the_answer_fails(engine, enc):
    reference = engine.ask(enc, QUESTION, GEN).result()
    decoding = Recording(fail_at=2)
    handle = engine.ask(enc, QUESTION, GEN, decoding)
    with pytest.raises(RuntimeError, match="injected"):
        for event in handle:
            decoding.log.append(logged(event))
    assert [e[0] for e in decoding.log[-3:]] == ["prepare", "step", "restore"]
    assert handle.done and engine.ask(enc, QUESTION, GEN).result().tokens == reference.tokens


@pytest.mark.parametrize("mode", ["vreason", "lite"])
def test_a_mode_name_is_that_mode_with_its_default_settings(engine, enc, mode):
    by_name = engine.ask(enc, QUESTION, GEN, mode).result()
    by_value = engine.ask(enc, QUESTION, GEN, decoding_for(mode, VReasonSettings())).result()
    assert by_name.mode == by_value.mode == mode
    assert by_name.tokens == by_value.tokens and by_name.entropy == by_value.entropy
    assert [(c.alpha, c.dv_norm) for c in by_name.control] == [(c.alpha, c.dv_norm) for c in by_value.control]
    assert by_name.settings["vreason"] == by_value.settings["vreason"]
    assert by_name.n_video_tokens_kept == by_value.n_video_tokens_kept
    if mode == "lite":
        assert by_name.n_video_tokens_kept == enc.n_media_tokens - enc.n_media_tokens // 2
    # the defaults reached the controller: every=2 updates at even steps only
    assert [c.alpha is not None for c in by_name.control] == [k % 2 == 0 for k in range(1, len(by_name.tokens) + 1)]


def test_a_decodings_own_settings_reach_the_controller_and_the_record(engine, enc):
    answer = engine.ask(enc, QUESTION, GEN, decoding_for("vreason", STRONG)).result()
    recorded = answer.settings["vreason"]
    assert (recorded["every"], recorded["lr"], recorded["n_rows"]) == (1, 0.05, enc.n_media_tokens)
    assert all(c.alpha is not None for c in answer.control) and answer.control[-1].dv_norm > 0


def test_an_unknown_mode_is_one_user_error_before_anything_runs(engine, enc):
    for ask in (lambda: engine.ask(enc, QUESTION, GEN, "fast"), lambda: decoding_for("fast")):
        with pytest.raises(UserError) as err:
            ask()
        assert str(err.value) == "unknown mode 'fast'; the modes are base, vreason, lite"
        assert [(r.setting, r.value) for r in err.value.remedies] == [("mode", "vreason")]
    assert engine.ask(enc, QUESTION, GEN).result().tokens  # not left busy


def test_v_reason_and_lite_are_refused_on_an_engine_without_the_hook(tiny):
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(hook=False)) as eng:
        for decoding in ("vreason", "lite", VReasonDecoding(STRONG), LiteDecoding()):
            with pytest.raises(UserError, match="needs the engine loaded with the value-cache hook") as err:
                eng.ask(Media.none(), QUESTION, GEN, decoding)
            assert "\n" not in str(err.value)
        assert eng.ask(Media.none(), QUESTION, GEN, BaseDecoding()).result().tokens  # base runs, not left busy


def test_decoding_for_gives_each_mode_its_settings():
    assert decoding_for("base", STRONG) == BaseDecoding()  # base has no settings to carry
    assert decoding_for("vreason", STRONG) == VReasonDecoding(STRONG)
    assert decoding_for("lite") == LiteDecoding(VReasonSettings())
    assert [(d.mode, d.needs_hook, d.prunes) for d in (BaseDecoding(), VReasonDecoding(), LiteDecoding())] == [
        ("base", False, False),
        ("vreason", True, False),
        ("lite", True, True),
    ]


def test_decodings_cost_no_torch_import_until_v_reason_runs():
    code = (
        "import sys\n"
        "from vreason_local.decoding import decoding_for\n"
        "import vreason_local.engine\n"
        "[decoding_for(m) for m in ('base', 'vreason', 'lite')]\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_text_stream_decodes_utf8_across_pieces_and_splits_channels():
    s = TextStream()
    e_acute = "é".encode()
    assert s.feed(b"<think>caf" + e_acute[:1], False) == ("<think>caf", (("reasoning", "caf"),))
    assert s.feed(e_acute[1:] + b"</think>ok", False) == ("é</think>ok", (("reasoning", "é"), ("answer", "ok")))
    assert s.feed(b"\xff", True) == ("", ())  # an end-of-generation token's bytes are not text
    assert s.text == "<think>café</think>ok" and s.recent == "<think>café</think>ok"[-16:]


def test_stop_reason_takes_the_first_that_holds():
    gen = GenerationSettings(max_tokens=3, stop_at_answer=True)
    assert stop_reason(gen, 1, False, "thinking", False) == ""
    assert stop_reason(gen, 3, True, "</answer>", True) == "eos"
    assert stop_reason(gen, 3, False, "x</answer>", True) == "answer"
    assert stop_reason(GenerationSettings(max_tokens=3, stop_at_answer=False), 3, False, "</answer>", True) == (
        "max_tokens"
    )
    assert stop_reason(gen, 2, False, "", True) == "cancelled"


def test_lite_keeps_the_larger_half_by_summed_head_norms():
    # 5 rows, 2 kv heads of dim 2; per-row sums of head norms: 2, 10, 5, 10, 0 -> keep 3 (5 - 5 // 2)
    heads = np.array([[1, 1], [5, 5], [3, 2], [5, 5], [0, 0]], np.float32)  # the two heads' norms
    values = np.stack([np.concatenate([[a, 0], [0, b]]) for a, b in heads]).astype(np.float16)
    np.testing.assert_array_equal(lite_keep(values, 2, 2), [1, 2, 3])
    np.testing.assert_array_equal(lite_keep(np.ones((4, 4), np.float16), 2, 2), [0, 1])  # ties: the earlier rows

"""The engine's API for long-lived front ends, on real llama.cpp with a generated model and clips.

One loaded engine, encodings held by the caller, a mode per answer, answer handles that leave the cache
clean whatever happens to them, progress events, cancellation, and a context sized from the real prompt.
"""

from __future__ import annotations

import pytest

from vreason_local.channels import ChannelSplitter, split_answer
from vreason_local.clips import make_clip
from vreason_local.decoding import VReasonDecoding, decoding_for
from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.errors import EngineBusy, UserError
from vreason_local.events import Encoded, Finished, Prefilled, Progress, TokenEvent
from vreason_local.fit import CONTEXT_FLOOR
from vreason_local.media import Media, load_video
from vreason_local.video import FrameSampling
from vreason_local.vreason import VReason, VReasonSettings

GEN = GenerationSettings(max_tokens=8, stop_at_answer=False)
STRONG = VReasonSettings(every=1, lr=0.05)  # large enough that the values really move on a tiny model


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Media]:
    d = tmp_path_factory.mktemp("api")
    a = make_clip(d / "a.mp4", seconds=4.0, fps=10.0, size=(224, 168))
    b = make_clip(d / "b.mp4", seconds=6.0, fps=10.0, size=(160, 120), seed=3)
    sampling = FrameSampling(fps=2.0, max_frames=6)
    return {"a": load_video(a, sampling, patch=14).media, "b": load_video(b, sampling, patch=14).media}


@pytest.fixture(scope="module")
def engine(tiny):
    # the in-process API: its encodings are made here (an earlier module's on disk would spare the encoder)
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(encoding_cache=False)) as eng:
        yield eng


def tokens(engine: Engine, source, question: str = "What happens?", mode: str = "base", **kw) -> list[int]:
    return engine.ask(source, question, GEN, decoding_for(mode, STRONG), **kw).result().tokens


def test_one_encoding_serves_every_mode_in_any_order(engine, clips):
    job = engine.encode(clips["a"])
    events = list(job)
    progress = [e for e in events if isinstance(e, Progress)]
    assert isinstance(events[-1], Encoded) and not events[-1].reused
    assert progress and progress[-1].done == progress[-1].total == events[-1].n_tokens
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    enc = job.result()
    base = tokens(engine, enc)
    answers = {}
    for mode in ("vreason", "lite", "base", "lite", "vreason", "base"):
        handle = engine.ask(enc, "What happens?", GEN, decoding_for(mode, STRONG))
        kinds = [type(e) for e in handle]
        assert kinds[:2] == [Encoded, Prefilled] and kinds[-1] is Finished  # no Progress: nothing encoded
        answer = handle.result()
        assert answer.reused_encoding and handle.encoding is enc
        answers.setdefault(mode, []).append(answer.tokens)
    assert answers["base"] == [base, base]  # V-Reason and Lite in between changed nothing for base
    assert answers["vreason"][0] == answers["vreason"][1] and answers["lite"][0] == answers["lite"][1]


def test_another_video_and_back_restores_without_encoding(engine, clips):
    a = engine.encode(clips["a"]).result()
    first = tokens(engine, a)
    b = engine.encode(clips["b"]).result()
    tokens(engine, b, mode="lite")
    handle = engine.ask(a, "What happens?", GEN)
    assert not any(isinstance(e, Progress) for e in handle)  # restored from the kept state, not encoded
    assert handle.result().tokens == first and a.snapshot is not None


def test_follow_up_continues_the_conversation_after_other_questions(engine, clips):
    enc = engine.encode(clips["a"]).result()
    first = engine.ask(enc, "What happens?", GEN).result()
    reference = engine.ask(enc, "And then?", GEN, follow_up=first).result()
    tokens(engine, enc, "Something else entirely?", mode="vreason")  # the cache now holds another question
    again = engine.ask(enc, "And then?", GEN, follow_up=first).result()
    assert again.tokens == reference.tokens
    assert again.prompt_tokens[: len(first.prompt_tokens)] == first.prompt_tokens
    with pytest.raises(UserError, match="same media"):
        engine.ask(clips["b"], "And then?", GEN, follow_up=first)


def test_an_open_answer_makes_the_engine_busy_and_an_abandoned_one_restores_the_values(engine, clips):
    enc = engine.encode(clips["a"]).result()
    base = tokens(engine, enc)
    handle = engine.ask(enc, "What happens?", GEN, VReasonDecoding(STRONG))
    for ev in handle:
        if isinstance(ev, TokenEvent) and ev.step == 3:
            break
    assert handle.controller.v_cache.ne(handle.controller.v_base).any()  # the cache holds modified values
    with pytest.raises(EngineBusy):
        engine.ask(enc, "What happens?", GEN)
    del handle, ev  # abandoned mid-answer: collected at once, and the engine cleans up
    assert tokens(engine, enc) == base


def test_a_failure_inside_an_answer_leaves_the_cache_clean(engine, clips, monkeypatch):
    enc = engine.encode(clips["a"]).result()
    base = tokens(engine, enc)
    real_step = VReason.step

    def failing_step(self, k, *args):
        if k == 2:
            raise RuntimeError("injected failure after the first update")
        return real_step(self, k, *args)

    monkeypatch.setattr(VReason, "step", failing_step)
    handle = engine.ask(enc, "A question that will fail half way?", GEN, VReasonDecoding(STRONG))
    with pytest.raises(RuntimeError, match="injected"):
        list(handle)
    monkeypatch.undo()
    assert handle.done
    assert tokens(engine, enc) == base  # no partial question left behind, the original values back


def test_cancel_while_encoding_stops_after_one_chunk(engine, clips):
    handle = engine.ask(clips["b"], "What happens?", GEN)
    seen = []
    for ev in handle:
        seen.append(ev)
        if isinstance(ev, Progress):
            handle.cancel()
    assert [type(e) for e in seen] == [Progress, Finished]
    assert seen[-1].answer.stop_reason == "cancelled" and seen[-1].answer.tokens == []
    again = engine.ask(clips["b"], "What happens?", GEN)
    assert any(isinstance(e, Progress) for e in again)  # the partial encoding was dropped, not reused
    assert again.result().tokens


def test_tokens_stream_into_reasoning_and_answer():
    s = ChannelSplitter()
    pieces = ["<thi", "nk>Look at", " the door.</th", "ink>\n<ans", "wer>It ", "opens.</answer>", "tail"]
    parts = [p for piece in pieces for p in s.feed(piece)]
    reasoning = "".join(t for c, t in parts if c == "reasoning")
    answer = "".join(t for c, t in parts if c == "answer")
    assert reasoning == "Look at the door." and answer.strip() == "It opens."
    assert (reasoning, answer.strip()) == split_answer("".join(pieces))
    plain = ChannelSplitter()
    assert plain.feed("a < b") == (("answer", "a < b"),)  # a lone '<' is text, not a tag


def test_streamed_channels_add_up_to_the_text(engine):
    handle = engine.ask(Media.none(), "Say something.", GEN)
    events = [e for e in handle if isinstance(e, TokenEvent)]
    answer = handle.result()
    streamed = "".join(t for e in events for _, t in e.segments)
    assert streamed == answer.text.replace("<think>", "").replace("</think>", "").replace("<answer>", "")
    assert answer.token_text == [e.text for e in events]


def test_context_is_sized_from_the_real_prompt_and_grows_for_a_conversation(tiny, clips):
    with Engine(tiny.model_path, tiny.mmproj_path) as eng:
        assert eng.n_ctx == 0  # nothing allocated before the first prompt
        enc = eng.encode(clips["a"]).result()
        assert eng.n_ctx == CONTEXT_FLOOR
        long = GenerationSettings(max_tokens=3000, stop_at_answer=False)
        handle = eng.ask(enc, "What happens?", long)
        for ev in handle:
            if isinstance(ev, TokenEvent) and ev.step == 5:
                handle.cancel()
        grown = handle.result()
        assert eng.n_ctx >= enc.n_tokens + 3000 and grown.reused_encoding
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(n_ctx=4096)) as fixed:
        reference = fixed.ask(clips["a"], "What happens?", long)
        for ev in reference:
            if isinstance(ev, TokenEvent) and ev.step == 5:
                reference.cancel()
        assert reference.result().tokens == grown.tokens  # the carried-over cache is the same cache


def test_a_failed_load_frees_what_it_loaded(tiny, tmp_path, monkeypatch):
    """The projector fails to load after the model did: the model is freed, once, by the constructor."""
    import dataclasses

    from vreason_local import gguf_info, llama_backend

    info, projector = gguf_info.read_pair(tiny.model_path, tiny.mmproj_path)
    broken = tmp_path / "mmproj-broken.gguf"
    broken.write_bytes(tiny.mmproj_path.read_bytes()[:4096])  # passes the metadata check, not mtmd's load
    closed = []
    real_close = llama_backend.Model.close

    def recording_close(self):
        closed.append(self.ptr is not None)
        real_close(self)

    monkeypatch.setattr(llama_backend.Model, "close", recording_close)
    with pytest.raises(UserError, match="could not load the projector"):
        Engine(tiny.model_path, broken, infos=(info, dataclasses.replace(projector, path=broken)))
    assert closed == [True]


def test_encoding_belongs_to_its_engine(tiny, engine, clips):
    enc = engine.encode(clips["a"]).result()
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(hook=False)) as other:
        with pytest.raises(UserError, match="another engine"):
            other.ask(enc, "What happens?")


def test_progress_reports_rate_and_eta():
    p = Progress("encode", 50, 200, 2.0)
    assert p.rate == 25 and p.eta_s == 6.0
    assert Progress("prefill", 0, 10, 0.0).eta_s is None


def test_the_cancel_flag_stops_llama_cpp_and_the_vision_encoder_part_way(engine, clips):
    """cancel() sets a flag that llama.cpp reads between graph nodes: a batch or a frame pair being
    computed stops there (Aborted), and the cache keeps none of the stopped batch."""
    import struct

    from vreason_local.llama_backend import Aborted

    enc = engine.encode(clips["a"]).result()
    tokens(engine, enc)
    cells = struct.unpack_from("<I", engine.ctx.state_get(), 12)[0]
    engine._abort.set()
    try:
        with pytest.raises(Aborted):
            engine.ctx.decode_tokens(
                engine.model.tokenize("a question that will never be read " * 20), enc.n_past + 500
            )
        assert struct.unpack_from("<I", engine.ctx.state_get(), 12)[0] == cells
        with engine.vision.tokenize(engine.vision.marker, [clips["b"].frames[0].rgb], mergeable=False) as prompt:
            image = next(c for c in prompt.chunks if c.tokens is None)
            asked = engine._abort.n
            with pytest.raises(Aborted):
                prompt.encode_and_decode(image, engine.ctx, enc.n_past + 500)
            assert engine._abort.n == asked + 1  # the encoder stopped after its first graph node
    finally:
        engine._abort.clear()
    assert engine.encode(clips["a"]).result() is enc  # the cached encoding is untouched


def _ask(engine: Engine, source, question: str, mode: str = "base", **kw) -> tuple[Encoded, Prefilled, object]:
    """(Encoded, Prefilled, the answer) of one answer."""
    handle = engine.ask(source, question, GEN, decoding_for(mode, STRONG), **kw)
    events = list(handle)
    encoded = next(e for e in events if isinstance(e, Encoded))
    return encoded, next(e for e in events if isinstance(e, Prefilled)), handle.result()


def _held(answer) -> list[int]:
    """The conversation tokens the cache holds after `answer`: its history, less its last token unless that
    ended it (a token is decoded into the cache when the next step is computed, so the last one never is)."""
    return list(answer.history[: len(answer.history) - (0 if answer.stop_reason == "eos" else 1)])


def _kept(before, answer, n_prefix: int) -> int:
    """What of `answer`'s conversation the cache held after `before`: the longest common start, all but the last
    token of the conversation at most (that one is decoded for the first step's logits)."""
    held, wanted = _held(before), answer.prompt_tokens[n_prefix:-1]
    return next((i for i, (a, b) in enumerate(zip(held, wanted)) if a != b), min(len(held), len(wanted)))


def test_prefilled_counts_the_prompt_tokens_the_answer_did_not_compute(engine, clips):
    _ask(engine, Media.none(), "Something else first?")  # another prefix resident: "b" is not
    encoded, p, first = _ask(engine, clips["b"], "What happens?")
    assert encoded.source == "encoded" and p.n_reused == 0  # fresh media: everything computed
    n = encoded.n_tokens
    encoded, p, other = _ask(engine, clips["b"], "What happens next?")  # the prefix and the question's common start
    assert encoded.source == "memory" and p.n_reused == n + _kept(first, other, n) and 0 < _kept(first, other, n)
    enc = engine.encode(clips["b"]).result()
    _, p, second = _ask(engine, enc, "And then?", follow_up=first)  # the other question's tokens are held now
    assert p.n_reused == n + _kept(other, second, n) < n + len(_held(first))
    _, p, third = _ask(engine, enc, "And after that?", follow_up=second)
    assert p.n_reused == n + len(_held(second))  # a follow-up of the last answer: its whole conversation
    # Lite: its first answer on the whole prefix saves it, with no conversation; a Lite follow-up keeps the pruned
    # prefix and the conversation; another mode's answer gets the whole prefix back, with no conversation
    _, p, lite = _ask(engine, enc, "What happens?", "lite")
    assert p.n_reused == n and p.n_video_tokens_kept < enc.n_media_tokens
    _, p, _ = _ask(engine, enc, "And then?", "lite", follow_up=lite)
    assert p.n_reused == n + len(_held(lite))
    _, p, _ = _ask(engine, enc, "And after that?", follow_up=third)
    assert p.n_reused == n


def test_prefilled_counts_a_prefix_read_from_the_encoding_cache_on_disk(tiny, clips, tmp_path, monkeypatch):
    monkeypatch.setenv("VREASON_CACHE", str(tmp_path / "cache"))  # an encoding cache of this test's own
    monkeypatch.setenv("VREASON_ENCODING_CACHE", "on")
    counts = []
    for _ in range(2):  # the first engine encodes it, the second reads it from disk
        with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(n_ctx=4096)) as eng:
            encoded, p, _ = _ask(eng, clips["a"], "What happens?")
            counts.append((encoded.source, p.n_reused, encoded.n_tokens))
    assert counts == [("encoded", 0, counts[0][2]), ("disk", counts[0][2], counts[0][2])]


def test_token_events_carry_logprobs_only_when_asked(engine):
    from dataclasses import replace

    plain = [e for e in engine.ask(Media.none(), "Say something.", GEN) if isinstance(e, TokenEvent)]
    assert plain and all(e.logprob is None and e.top_logprobs == () for e in plain)
    asked = [
        e for e in engine.ask(Media.none(), "Say something.", replace(GEN, logprobs=2)) if isinstance(e, TokenEvent)
    ]
    assert [e.token for e in asked] == [e.token for e in plain]  # greedy: the same answer
    for e in asked:  # greedy picks the most likely token, which heads the alternatives
        assert len(e.top_logprobs) == 2 and e.top_logprobs[0] == (e.token, e.logprob) and e.logprob <= 0
    with pytest.raises(UserError, match="top logprobs must be from 0 to 20"):
        replace(GEN, logprobs=21)

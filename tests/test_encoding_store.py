"""The persistent encoding cache: a video encoded once per machine, not once per process.

Real llama.cpp on generated tiny models and clips. An answer on an encoding loaded from disk (by another
process than the one that wrote it) must be token for token the answer on a fresh encoding, in every mode and
family; a damaged, truncated or mismatched file, a model replaced under the same path, two processes at once
and the size cap must never give a wrong answer or a crash; the files are the user's alone.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vreason_local.chat.options import ChatOptions
from vreason_local.chat.session import ChatSession
from vreason_local.chat.store import ChatStore
from vreason_local.chat.video_panel import estimate_text
from vreason_local.clips import make_clip
from vreason_local.decoding import decoding_for
from vreason_local.encoding_store import DamagedEntry, EncodingStore, file_identity, pack
from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.evaluate.command import EvalProgress
from vreason_local.evaluate.items import Item
from vreason_local.events import Encoded, Notice
from vreason_local.media import Media, load_video
from vreason_local.planning import open_engine, plan_run
from vreason_local.settings import RunSettings
from vreason_local.tiny import make_tiny
from vreason_local.video import FrameSampling
from vreason_local.vreason import VReasonSettings

GEN = GenerationSettings(max_tokens=8, stop_at_answer=False)
STRONG = VReasonSettings(every=1, lr=0.05)  # large enough that the values really move on a tiny model
MODES = ("base", "vreason", "lite")
SAMPLING = FrameSampling(fps=2.0, max_frames=6)
QUESTION = "What happens?"
TIMEOUT_S = 300

# Run in a child process: load the engine with the encoding cache on, answer in base mode, print the tokens.
CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from vreason_local.decoding import decoding_for
    from vreason_local.engine import Engine, GenerationSettings
    from vreason_local.media import load_video
    from vreason_local.video import FrameSampling
    model, mmproj, clip = sys.argv[1:4]
    with Engine(Path(model), Path(mmproj)) as eng:
        media = load_video(Path(clip), FrameSampling(fps=2.0, max_frames=6), patch=eng.projector.patch_size).media
        a = eng.ask(media, "What happens?", GenerationSettings(max_tokens=8, stop_at_answer=False)).result()
    print(json.dumps({"tokens": a.tokens, "source": a.encoding_source, "notices": a.notices}))
    """
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("enc") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))


@pytest.fixture(scope="module")
def other_clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("enc2") / "other.mp4", seconds=3.0, fps=10.0, size=(160, 120), seed=3)


@pytest.fixture
def store_dir(tmp_path, monkeypatch) -> Path:
    """Each test its own cache folder (VREASON_CACHE is read when an engine opens its store), the cache on
    (a test session may turn it off for every other test with VREASON_ENCODING_CACHE=off)."""
    monkeypatch.setenv("VREASON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VREASON_ENCODING_CACHE", "on")
    return tmp_path / "cache" / "encodings"


def _media(engine: Engine, clip: Path) -> Media:
    return load_video(clip, SAMPLING, patch=engine.projector.patch_size).media


def _answer(tiny, clip: Path, mode: str = "base", **settings):
    """(answer, its events) from a new engine: a new process's view of the cache."""
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(**settings)) as eng:
        events = list(eng.ask(_media(eng, clip), QUESTION, GEN, decoding_for(mode, STRONG)))
    return events[-1].answer, events


def _reference(tiny, clip: Path) -> dict[str, list[int]]:
    """Each mode's answer on a fresh encoding, the cache off."""
    with Engine(tiny.model_path, tiny.mmproj_path, EngineSettings(encoding_cache=False)) as eng:
        enc = eng.encode(_media(eng, clip)).result()
        assert enc.source == "encoded"
        return {m: eng.ask(enc, QUESTION, GEN, decoding_for(m, STRONG)).result().tokens for m in MODES}


def _child(tiny, clip: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "VREASON_CACHE": str(cache)}
    args = [sys.executable, "-c", CHILD, str(tiny.model_path), str(tiny.mmproj_path), str(clip)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _child_result(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=TIMEOUT_S)
    assert p.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.enc"))


@pytest.mark.parametrize("arch", ["qwen2vl", "qwen25vl", "qwen3vl"])
def test_loaded_encoding_answers_token_for_token(tiny_model_factory, clip, store_dir, arch):
    """Another process writes the encoding; every mode answers on the loaded one exactly as on a fresh one."""
    tiny = tiny_model_factory(arch)
    reference = _reference(tiny, clip)
    written = _child_result(_child(tiny, clip, store_dir.parent))
    assert written["source"] == "encoded" and written["tokens"] == reference["base"]
    assert len(_entries(store_dir)) == 1
    for mode in MODES:  # each on its own engine, so each answers on the encoding as loaded
        answer, _ = _answer(tiny, clip, mode)
        assert answer.encoding_source == "disk" and not answer.reused_encoding, mode
        assert answer.tokens == reference[mode], mode
        assert answer.timings["encoding_saved_s"] > 0 and answer.timings["encode_s"] == 0.0
    # and the other way round: this process writes, a child loads
    shutil.rmtree(store_dir)
    fresh, _ = _answer(tiny, clip)
    assert fresh.encoding_source == "encoded" and fresh.tokens == reference["base"]
    loaded = _child_result(_child(tiny, clip, store_dir.parent))
    assert loaded["source"] == "disk" and loaded["tokens"] == reference["base"]


def _damage_flip(path: Path, other: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a byte of the KV state
    path.write_bytes(bytes(data))


def _damage_truncate(path: Path, other: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _damage_swap(path: Path, other: Path) -> None:
    path.write_bytes(other.read_bytes())  # a whole, valid file: another video's encoding under this name


@pytest.mark.parametrize("damage", [_damage_flip, _damage_truncate, _damage_swap], ids=["flip", "truncate", "swap"])
def test_unusable_file_warns_once_and_encodes_again(tiny_model_factory, clip, other_clip, store_dir, damage):
    tiny = tiny_model_factory("qwen25vl")
    reference = _reference(tiny, clip)
    _answer(tiny, other_clip)
    (other,) = _entries(store_dir)
    _answer(tiny, clip)
    (path,) = set(_entries(store_dir)) - {other}
    damage(path, other)
    answer, events = _answer(tiny, clip)
    warnings = [e.message for e in events if isinstance(e, Notice) and e.level == "warning"]
    assert len(warnings) == 1 and "encoding cache" in warnings[0] and "encoding again" in warnings[0], warnings
    assert answer.notices == warnings  # kept with the answer (run --json, eval rows)
    assert answer.encoding_source == "encoded" and answer.tokens == reference["base"]
    again, events = _answer(tiny, clip)  # written anew: whole, and used
    assert again.encoding_source == "disk" and again.tokens == reference["base"]
    assert not [e for e in events if isinstance(e, Notice)]


def test_model_replaced_under_the_same_path_is_not_matched(tiny_model_factory, clip, store_dir, tmp_path):
    """Another model's file under the old name (a new mtime): its hash is taken again, the old encoding unused."""
    first = tiny_model_factory("qwen25vl")
    second = make_tiny(tmp_path / "second", arch="qwen25vl", shape="tiny", wtype="f16", seed=7)
    model = tmp_path / "models" / "model.gguf"
    model.parent.mkdir()
    shutil.copy(first.model_path, model)
    pair = SimpleNamespace(model_path=model, mmproj_path=first.mmproj_path)
    before = file_identity(model, store_dir)
    answer, _ = _answer(pair, clip)
    assert answer.encoding_source == "encoded" and _answer(pair, clip)[0].encoding_source == "disk"
    shutil.copy(second.model_path, model)
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))  # a copy within the same tick
    assert file_identity(model, store_dir) != before
    replaced, _ = _answer(pair, clip)
    expected, _ = _answer(pair, clip, encoding_cache=False)
    assert replaced.encoding_source == "encoded" and replaced.tokens == expected.tokens
    assert replaced.tokens != answer.tokens  # the models differ, so reusing the old encoding would show
    assert len(_entries(store_dir)) == 2


def test_two_processes_answer_at_once(tiny_model_factory, clip, store_dir):
    """Both start on an empty cache at once: both answer right, with no warning, and one whole entry remains."""
    tiny = tiny_model_factory("qwen25vl")
    reference = _reference(tiny, clip)
    children = [_child(tiny, clip, store_dir.parent) for _ in range(2)]
    for result in map(_child_result, children):
        assert result["tokens"] == reference["base"] and result["notices"] == []
    assert len(_entries(store_dir)) == 1 and not list(store_dir.glob(".tmp-*"))
    assert _answer(tiny, clip)[0].encoding_source == "disk"


# A child that saves and loads one key many times, alternating two payloads that both children know: any read of
# a torn or half-written file fails its checksum (DamagedEntry) or shows a payload that is neither.
RACER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from vreason_local.encoding_store import EncodingStore
    folder, me = Path(sys.argv[1]), int(sys.argv[2])
    payloads = [bytes([i]) * (3 << 20) + bytes(range(256)) for i in (1, 2)]
    store = EncodingStore(folder, cap_bytes=1 << 30)
    seen = 0
    for i in range(40):
        store.save("k", {"identity": {"x": 1}, "i": i}, payloads[(i + me) % 2])
        found = store.load("k", {"x": 1})
        assert found is None or found[1] in payloads, "a payload neither child wrote"
        seen += found is not None
    print(seen)
    """
)


def test_concurrent_writers_and_readers_never_see_a_torn_file(tmp_path):
    folder = tmp_path / "encodings"
    args = [[sys.executable, "-c", RACER, str(folder), str(me)] for me in (0, 1)]
    children = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in args]
    for p in children:
        out, err = p.communicate(timeout=TIMEOUT_S)
        assert p.returncode == 0, err.decode()  # DamagedEntry or a wrong payload would have raised
        assert int(out) >= 1
    assert [p.name for p in _entries(folder)] == ["k.enc"] and not list(folder.glob(".tmp-*"))


def test_eviction_keeps_the_most_recently_used_under_the_cap(tmp_path):
    folder = tmp_path / "encodings"
    blob = bytes(100_000)
    size = sum(map(len, pack({"identity": {"k": "a"}}, blob)))
    store = EncodingStore(folder, cap_bytes=int(2.5 * size))
    for i, key in enumerate("ab"):
        store.save(key, {"identity": {"k": key}}, blob)
        os.utime(store.path_for(key), (1000 + i, 1000 + i))  # a written first, b later
    assert store.load("a", {"k": "a"}) is not None  # a is used now: b is the least recently used
    store.save("c", {"identity": {"k": "c"}}, blob)
    assert sorted(p.stem for p in _entries(folder)) == ["a", "c"]
    assert store.total_bytes() <= store.cap()
    assert store.save("big", {"identity": {}}, bytes(3 * size)) is None  # larger than the cap: not written
    assert sorted(p.stem for p in _entries(folder)) == ["a", "c"]


def test_engine_evicts_at_its_cap(tiny_model_factory, clip, other_clip, store_dir):
    tiny = tiny_model_factory("qwen25vl")
    _answer(tiny, clip)
    (first,) = _entries(store_dir)
    cap_gb = first.stat().st_size * 1.5 / 1e9  # room for one encoding of this size, not two
    _answer(tiny, other_clip, encoding_cache_gb=cap_gb)
    (kept,) = _entries(store_dir)
    assert kept != first
    assert _answer(tiny, clip, encoding_cache_gb=cap_gb)[0].encoding_source == "encoded"


def test_files_are_private(tiny_model_factory, clip, store_dir):
    old = os.umask(0)  # even a permissive umask gives 0700/0600
    try:
        _answer(tiny_model_factory("qwen25vl"), clip)
    finally:
        os.umask(old)
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700
    files = list(store_dir.iterdir())
    assert {p.name for p in files} >= {"identities.json"} and len(_entries(store_dir)) == 1
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)


def test_store_refuses_what_it_cannot_trust(tmp_path):
    """The checks themselves, on a hand-made file: another identity, another format, a bad magic."""
    store = EncodingStore(tmp_path / "encodings")
    store.save("k", {"identity": {"model": 1}}, b"state")
    assert store.load("k", {"model": 1}) == ({"identity": {"model": 1}}, b"state")
    with pytest.raises(DamagedEntry, match="another model"):
        store.load("k", {"model": 2})
    assert not store.path_for("k").exists()  # removed: encoded again and rewritten
    store.save("k", {"identity": {}}, b"state")
    data = bytearray(store.path_for("k").read_bytes())
    data[8] = 99  # the format number
    store.path_for("k").write_bytes(bytes(data))
    with pytest.raises(DamagedEntry, match="format 99"):
        store.load("k", {})
    store.path_for("k").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(DamagedEntry, match="not an encoding cache file"):
        store.load("k", {})


def test_no_encoding_cache_writes_and_reads_nothing(tiny_model_factory, clip, store_dir, vreason, monkeypatch):
    tiny = tiny_model_factory("qwen25vl")
    monkeypatch.setenv("VREASON_ENCODING_CACHE", "off")
    assert _answer(tiny, clip)[0].encoding_source == "encoded" and not _entries(store_dir)
    monkeypatch.setenv("VREASON_ENCODING_CACHE", "on")
    _answer(tiny, clip)
    (entry,) = _entries(store_dir)
    answer, _ = _answer(tiny, clip, encoding_cache=False)
    assert answer.encoding_source == "encoded"
    monkeypatch.setenv("VREASON_ENCODING_CACHE", "off")
    assert _answer(tiny, clip)[0].encoding_source == "encoded"
    monkeypatch.setenv("VREASON_ENCODING_CACHE", "on")
    entry.unlink()
    common = ["--model", str(tiny.model_path), "--mmproj", str(tiny.mmproj_path), "--video", str(clip)]
    common += ["--fps", "2", "--max-frames", "6", "--max-tokens", "4", "-q", QUESTION]
    code, out, err = vreason(["run", "--json", "--no-encoding-cache", *common])
    assert code == 0 and "; encode + prefill ~" in err.splitlines()[0], err
    assert json.loads(out)["encoding_source"] == "encoded" and not _entries(store_dir)
    code, out, err = vreason(["run", "--json", *common])
    assert code == 0 and json.loads(out)["encoding_source"] == "encoded" and len(_entries(store_dir)) == 1
    code, out, err = vreason(["run", *common])  # the estimate and the stream say where the encoding comes from
    assert code == 0 and "from the encoding cache" in err and "saved" in err, err
    assert "encoding on disk: loads in place of" in err.splitlines()[0], err
    code, out, err = vreason(["run", "--json", *common])
    record = json.loads(out)
    t = record["timings"]
    assert record["encoding_source"] == "disk" and t["encoding_saved_s"] > 0 and t["encoding_load_s"] > 0


def test_cache_command_lists_prunes_and_clears(tiny_model_factory, clip, other_clip, store_dir, vreason):
    tiny = tiny_model_factory("qwen25vl")
    code, out, _ = vreason(["cache", "list"])
    assert code == 0 and "empty" in out
    _answer(tiny, clip)
    _answer(tiny, other_clip)
    code, out, _ = vreason(["cache", "list"])
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["video", "model", "frames", "size", "last", "used"]
    assert str(clip) in out and str(other_clip) in out and tiny.model_path.name in out
    assert "2 encodings" in lines[-1] and str(store_dir) in lines[-1]
    code, out, _ = vreason(["cache", "list", "--json"])
    listed = json.loads(out)
    sizes = {p.stem: p.stat().st_size for p in _entries(store_dir)}
    assert {e["key"]: e["size_bytes"] for e in listed} == sizes
    assert {e["video"] for e in listed} == {str(clip), str(other_clip)}
    assert all(e["frames"] == 6 and e["n_tokens"] > 0 for e in listed)
    newest = listed[0]["key"]
    code, out, _ = vreason(["cache", "prune", "--max-gb", str(sizes[newest] / 1e9)])
    assert code == 0 and out.startswith("removed 1 encoding (") and [p.stem for p in _entries(store_dir)] == [newest]
    code, out, _ = vreason(["cache", "clear"])
    assert code == 0 and out.startswith("removed 1 encoding") and not _entries(store_dir)


def test_loaded_cells_and_positions_are_the_fresh_ones(tiny_model_factory, clip, store_dir):
    """What an `Encoding` says of its prefix (tokens, positions, media cells) comes back from disk unchanged."""
    tiny = tiny_model_factory("qwen3vl")
    with Engine(tiny.model_path, tiny.mmproj_path) as eng:
        fresh = eng.encode(_media(eng, clip)).result()
    with Engine(tiny.model_path, tiny.mmproj_path) as eng:
        loaded = eng.encode(_media(eng, clip)).result()
    assert loaded.source == "disk" and fresh.source == "encoded"
    assert (loaded.tokens, loaded.n_past, loaded.key) == (fresh.tokens, fresh.n_past, fresh.key)
    np.testing.assert_array_equal(loaded.media_cells, fresh.media_cells)
    assert loaded.cost_s == pytest.approx(fresh.encode_s + fresh.prefill_s)


def test_eval_progress_says_the_cache_spared_the_encoder():
    progress = EvalProgress(2, [], ["base"], stream=io.StringIO())
    item = Item("q1", Path("v.mp4"), "What?", "multiple-choice", "A", options=("yes", "no"))
    progress.on_event(item, "base", Encoded(100, 96, 4, 0.0, 0.0, False, "disk", saved_s=12.5, load_s=0.1))
    assert progress.now == "q1: encoding loaded from the cache, saved 12.5 s"
    progress.on_event(item, "base", Encoded(100, 96, 4, 1.0, 0.5, False))  # encoded here: nothing to say
    assert progress.now == "q1: encoding loaded from the cache, saved 12.5 s"


def test_a_new_chat_session_loads_the_video_from_disk(tiny_model_factory, clip, store_dir, tmp_path):
    """`chat --resume` in a new process: the session's engine loads the encoding, and answers as before."""
    tiny = tiny_model_factory("qwen25vl")
    chat = ChatOptions(str(tiny.model_path), str(tiny.mmproj_path), clip, SAMPLING, GEN, EngineSettings(), STRONG)
    answers, sources, panel = [], [], []
    for _ in range(2):
        with ChatStore(tmp_path / "chats.db") as db:
            session = ChatSession(chat, db)
            panel.append(estimate_text(SimpleNamespace(show_timings=False), session.plan(chat)).splitlines()[-1])
            ready = list(session.load(chat))[-1]
            sources.append(ready.encoding.source)
            answers.append(list(session.ask(QUESTION))[-1][1].answer.tokens)
            session.engine.close()
    assert sources == ["encoded", "disk"] and answers[0] == answers[1]
    assert panel == ["encode + prefill ~–", "encoding on disk: loads in place of –"]  # the video panel's estimate


def test_the_estimate_says_the_encoding_is_on_disk(tiny_model_factory, clip, other_clip, store_dir, monkeypatch):
    """Before anything is loaded, the plan knows the cache on disk holds this video's encoding for this model (and
    what making it cost), and the load keeps that promise; another video or system prompt, or the cache off, is
    no such promise."""
    tiny = tiny_model_factory("qwen25vl")
    settings = RunSettings(model=str(tiny.model_path), mmproj=str(tiny.mmproj_path), frames=SAMPLING)
    before = plan_run(settings, clip, None, QUESTION)
    assert before.estimate.stored_s is None and "; encode + prefill ~" in before.estimate.describe(before.media)
    _, events = _answer(tiny, clip)
    (encoded,) = [e for e in events if isinstance(e, Encoded)]
    assert encoded.source == "encoded"
    assert _entries(store_dir)  # written in the background; the engine waited for it when it closed
    after = plan_run(settings, clip, None, QUESTION)
    assert after.estimate.stored_s == pytest.approx(encoded.encode_s + encoded.prefill_s)
    line = after.estimate.describe(after.media)
    assert "; encoding on disk: loads in place of" in line and "encode + prefill ~" not in line, line
    with open_engine(after) as eng:
        assert eng.ask(after.media.media, QUESTION, GEN).result().encoding_source == "disk"
    assert plan_run(settings, other_clip, None, QUESTION).estimate.stored_s is None
    other_system = replace(settings, engine=replace(settings.engine, system="Answer in French."))
    assert plan_run(other_system, clip, None, QUESTION).estimate.stored_s is None
    monkeypatch.setenv("VREASON_ENCODING_CACHE", "off")
    assert plan_run(settings, clip, None, QUESTION).estimate.stored_s is None

"""Registry, Hugging Face cache/download, fit check and the `models` CLI group.

Downloads run the real huggingface_hub against a local HTTP server that speaks the Hub's
``/{repo_id}/resolve/{revision}/{filename}`` endpoint; nothing is mocked and nothing leaves 127.0.0.1.
Every test gets its own HF cache under tmp_path and a dummy HF_TOKEN, so the real ~/.cache/huggingface
is neither read nor written.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants
import pytest
from click.testing import CliRunner

from vreason_local import download, fit, hub, registry
from vreason_local.cache import cache_dir
from vreason_local.errors import Remedy, UserError
from vreason_local.model_commands import models as models_group

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REQUIRED = {
    "qwen2-vl-2b": ("qwen2vl", 14),
    "qwen2.5-vl-3b": ("qwen25vl", 14),
    "qwen2.5-vl-7b": ("qwen25vl", 14),
    "qwen3-vl-2b": ("qwen3vl", 16),
    "qwen3-vl-4b": ("qwen3vl", 16),
    "qwen3-vl-8b": ("qwen3vl", 16),
    "qwen3-vl-2b-thinking": ("qwen3vl", 16),
    "qwen3-vl-4b-thinking": ("qwen3vl", 16),
    "qwen3-vl-8b-thinking": ("qwen3vl", 16),
}


# --------------------------------------------------------------------------------------------- fake Hub


@dataclass
class FakeHub:
    """Files served at /{repo_id}/resolve/{revision}/{filename}, and a log of what was asked."""

    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    drop_first_get: set[str] = field(default_factory=set)  # filenames whose first GET is cut halfway
    cut_at: dict[str, int] = field(default_factory=dict)  # filename -> every GET is closed at this file offset
    ignore_range: bool = False  # True: answer every GET with 200 and the whole file, like a server without Range
    hub_headers: bool = True  # False: answer like a plain web server (no X-Repo-Commit / ETag)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, filename, Range)
    url: str = ""
    _gets: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo_id: str, filename: str, data: bytes) -> None:
        self.files[(repo_id, filename)] = data

    def add_spec(self, spec: registry.ModelSpec, size: int = 300_000, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
        out = {}
        for i, name in enumerate((spec.model_file, spec.mmproj_file)):
            if name in skip:
                continue
            data = (hashlib.sha256(f"{name}".encode()).digest() * (size // 32 + 1))[: size + i * 1000]
            self.add(spec.repo_id, name, data)
            out[name] = data
        return out

    def seen(self, method: str, filename: str) -> list[str | None]:
        return [r for m, f, r in self.requests if m == method and f == filename]


def _handler(hubstate: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _lookup(self) -> tuple[str, bytes | None]:
            parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
            if "resolve" not in parts:
                return "", None
            i = parts.index("resolve")
            repo_id, filename = "/".join(parts[:i]), "/".join(parts[i + 2 :])
            return filename, hubstate.files.get((repo_id, filename))

        def _not_found(self, filename: str) -> None:
            self.send_response(404)
            if hubstate.hub_headers:
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", f"{filename} does not exist")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _meta_headers(self, data: bytes) -> None:
            if hubstate.hub_headers:
                # What hf_hub_download needs from HEAD: the commit and an ETag (the blob name in the cache),
                # plus the size. No X-Xet-Hash / xet Link header, so it takes the plain HTTP path.
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")

        def do_HEAD(self) -> None:  # noqa: N802
            filename, data = self._lookup()
            with hubstate._lock:
                hubstate.requests.append(("HEAD", filename, None))
            if data is None:
                return self._not_found(filename)
            self.send_response(200)
            self._meta_headers(data)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            filename, data = self._lookup()
            rng = self.headers.get("Range")
            with hubstate._lock:
                hubstate.requests.append(("GET", filename, rng))
                n = hubstate._gets[filename] = hubstate._gets.get(filename, 0) + 1
            if data is None:
                return self._not_found(filename)
            start = 0
            if rng and rng.startswith("bytes=") and not hubstate.ignore_range:
                start = int(rng[len("bytes=") :].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self._meta_headers(data)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = len(body) // 2 if n == 1 and filename in hubstate.drop_first_get else None
            if filename in hubstate.cut_at:
                cut = max(hubstate.cut_at[filename] - start, 0)
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def fake_hub():
    state = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """A private HF home and cache for this test, online whatever the caller's shell said.

    conftest drops the caller's HF_* variables, but huggingface_hub may have been imported with
    HF_HUB_OFFLINE set (it reads it once) and then refuses every request; its flag is cleared here so
    the download tests run rather than skip. Tests that want offline mode set HF_HUB_OFFLINE themselves,
    which `hub.offline_mode` reads at call time.
    """
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_TOKEN", "hf_dummy_token_for_tests")  # requests carry a token, as a logged-in user's do
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the fake Hub is local even behind a proxy
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return home / "hub"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------------- registry


def test_registry_loads_every_required_model_complete():
    specs = registry.load_registry()
    assert set(REQUIRED) <= set(specs)
    for name, (family, patch) in REQUIRED.items():
        s = specs[name]
        assert (s.family, s.patch_size) == (family, patch), name
        assert s.thinking == name.endswith("-thinking")
        assert s.model_file.endswith(".gguf") and s.mmproj_file.endswith(".gguf")
        assert "mmproj" in s.mmproj_file.lower() and "mmproj" not in s.model_file.lower()
        assert s.repo_id.count("/") == 1 and s.repo_id.split("/")[0] in {"ggml-org", "Qwen", "unsloth"}
        assert s.quant in s.model_file and s.mmproj_quant in s.mmproj_file
        assert 10**8 < s.model_bytes < 10**10 and 10**8 < s.mmproj_bytes < 5 * 10**9
        assert s.context_length >= 32768
        assert s.n_layer > 0 and s.n_head_kv > 0 and s.head_dim > 0 and s.n_embd > 0
        assert s.n_embd % s.head_dim == 0
        assert isinstance(s.verified, bool)


def test_registry_json_names_unique_default_and_note():
    data = json.loads(registry.registry_resource().read_text(encoding="utf-8"))
    names = [m["name"] for m in data["models"]]
    assert len(names) == len(set(names))
    assert data["default"] == registry.DEFAULT_MODEL in names
    assert "approximate" in data["note"]
    default = registry.get_spec(registry.DEFAULT_MODEL)
    assert default.display_name == "Qwen2.5-VL-3B-Instruct" and default.quant == "Q4_K_M"


def test_unknown_model_suggests_a_close_name():
    with pytest.raises(UserError) as e:
        registry.get_spec("qwen2.5-vl-3")
    msg = _one_line(e)
    assert "did you mean qwen2.5-vl-3b?" in msg and "qwen3-vl-8b-thinking" in msg
    assert registry.get_spec("Qwen3-VL-4B-Instruct").name == "qwen3-vl-4b"


def test_unknown_model_offers_a_path_only_where_the_command_takes_one(hf_env, vreason):
    """`--model` takes a name or a .gguf path; `models pull` takes names only, so its error offers no path."""
    rc, out, err = vreason(["models", "pull", "nosuch"])
    assert rc == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("error: unknown model 'nosuch'; known models: qwen") and ".gguf" not in err, err
    with pytest.raises(UserError) as e:
        hub.resolve_model("nosuch")
    assert _one_line(e).endswith("(or pass the path to a .gguf file)")


def test_spec_kv_matches_published_figures():
    # Published llama.cpp catalogue figure for Qwen3-VL-8B: 150_994_944 bytes of f16 KV per 1024 tokens.
    assert registry.get_spec("qwen3-vl-8b").kv_bytes_per_token() * 1024 == 150_994_944
    assert registry.get_spec("qwen3-vl-2b").kv_bytes_per_token() * 1024 == 117_440_512


def test_the_run_uses_none_of_the_callers_caches_or_settings():
    """conftest's isolation: every cache lies outside ~/.cache, and huggingface_hub, imported after it, agrees."""
    user_cache = Path.home() / ".cache"
    for path in (
        hub.hf_cache_dir(),
        cache_dir(),
        Path(huggingface_hub.constants.HF_HUB_CACHE),
        Path(huggingface_hub.constants.HF_TOKEN_PATH),
    ):
        assert user_cache not in path.parents, path
    assert not [k for k in os.environ if k in {"VREASON_REPACK", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_TOKEN"}]
    assert not huggingface_hub.constants.HF_HUB_OFFLINE


# --------------------------------------------------------------------------------------------- path mode


def _touch(path: Path, data: bytes = b"GGUF") -> Path:
    path.write_bytes(data)
    return path


def test_path_mode_finds_the_projector_beside_the_model(tmp_path):
    model = _touch(tmp_path / "m-Q4_K_M.gguf")
    proj = _touch(tmp_path / "mmproj-m-f16.gguf")
    r = hub.resolve_model(str(model))
    assert (r.model_path, r.mmproj_path, r.spec) == (model, proj, None)
    other = _touch(tmp_path / "elsewhere.gguf")
    assert hub.resolve_model(str(model), str(other)).mmproj_path == other


def test_path_mode_missing_model_and_missing_projector(tmp_path):
    with pytest.raises(UserError, match="model file not found"):
        hub.resolve_model(str(tmp_path / "nope.gguf"))
    model = _touch(tmp_path / "m.gguf")
    with pytest.raises(UserError) as e:
        hub.resolve_model(str(model))
    assert "no projector" in _one_line(e) and e.value.remedies[0].setting == "mmproj"
    with pytest.raises(UserError, match="projector"):
        hub.resolve_model(str(model), str(tmp_path / "missing-mmproj.gguf"))


def test_path_mode_two_projectors_is_ambiguous(tmp_path):
    model = _touch(tmp_path / "m.gguf")
    _touch(tmp_path / "mmproj-a.gguf")
    _touch(tmp_path / "mmproj-b.gguf")
    with pytest.raises(UserError) as e:
        hub.resolve_model(str(model))
    msg = _one_line(e)
    assert "mmproj-a.gguf" in msg and "mmproj-b.gguf" in msg and e.value.remedies[0].setting == "mmproj"


def test_path_mode_refuses_a_projector_as_the_model(tmp_path):
    proj = _touch(tmp_path / "mmproj-m.gguf")
    with pytest.raises(UserError, match="looks like a vision projector"):
        hub.resolve_model(str(proj))


# --------------------------------------------------------------------------------------------- cache + pull


def test_missing_files_name_them_and_the_pull_command(hf_env, monkeypatch):
    spec = registry.get_spec("qwen2.5-vl-3b")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        hub.resolve_model(spec.name)
    msg = _one_line(e)
    assert spec.model_file in msg and spec.mmproj_file in msg
    assert "vreason models pull qwen2.5-vl-3b" in msg and "HF_HUB_OFFLINE" in msg
    assert str(hf_env) in msg


def test_pull_downloads_into_the_cache_and_resolves_offline(hf_env, fake_hub, monkeypatch):
    spec = registry.get_spec("qwen2.5-vl-3b")
    data = fake_hub.add_spec(spec)
    r = download.pull(spec.name, endpoint=fake_hub.url, progress=False)
    for path, name in ((r.model_path, spec.model_file), (r.mmproj_path, spec.mmproj_file)):
        assert path.read_bytes() == data[name]
        assert hf_env in path.parents and path.name == name
        assert fake_hub.seen("HEAD", name) and fake_hub.seen("GET", name) == [None]

    before = len(fake_hub.requests)
    assert download.pull(spec.name, endpoint=fake_hub.url, progress=False) == r  # cached: no network
    assert len(fake_hub.requests) == before

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_model(spec.name) == r
    states = {st.spec.name: st.state for st in hub.list_models()}
    assert states[spec.name] == "yes" and states["qwen3-vl-8b"] == "no"
    st = hub.model_status(spec)
    assert st.local_bytes == sum(len(d) for d in data.values())


def _blobs(cache: Path, spec: registry.ModelSpec) -> Path:
    return cache / f"models--{spec.repo_id.replace('/', '--')}" / "blobs"


def test_interrupted_download_resumes_with_a_range_request(hf_env, fake_hub):
    # Every byte received is on disk, so the retry in the same run asks for exactly the rest.
    spec = registry.get_spec("qwen3-vl-2b")
    data = fake_hub.add_spec(spec, size=3_000_000)
    fake_hub.drop_first_get.add(spec.model_file)
    r = download.pull(spec.name, endpoint=fake_hub.url, progress=False, cache_dir=hf_env)
    ranges = fake_hub.seen("GET", spec.model_file)
    assert ranges[0] is None and len(ranges) == 2
    half = len(data[spec.model_file]) // 2
    assert ranges[1] == f"bytes={half}-"
    assert r.model_path.read_bytes() == data[spec.model_file]
    assert r.mmproj_path.read_bytes() == data[spec.mmproj_file]


def test_a_second_pull_continues_a_download_the_first_run_could_not_finish(hf_env, fake_hub, monkeypatch):
    monkeypatch.setattr(download, "_RETRY_WAIT_S", 0.0)
    spec = registry.get_spec("qwen2.5-vl-3b")
    data = fake_hub.add_spec(spec, size=2_000_000)
    cut = 1_234_567
    fake_hub.cut_at[spec.model_file] = cut  # every attempt of the first run stops there
    with pytest.raises(UserError) as e:
        download.pull(spec.name, endpoint=fake_hub.url, progress=False)
    msg = _one_line(e)
    assert spec.model_file in msg and spec.repo_id in msg and "connection dropped" in msg
    again = "run `vreason models pull qwen2.5-vl-3b` again to continue"
    assert msg.endswith(f"; 1.2 MB of 2.0 MB downloaded and kept; {again}")
    attempts = fake_hub.seen("GET", spec.model_file)
    assert attempts[0] is None and set(attempts[1:]) == {f"bytes={cut}-"}  # retries in the run resumed too
    etag = hashlib.sha256(data[spec.model_file]).hexdigest()
    partial = _blobs(hf_env, spec) / f"{etag}.incomplete"
    assert partial.read_bytes() == data[spec.model_file][:cut]
    assert hub.model_status(spec).state == "partial"

    del fake_hub.cut_at[spec.model_file]
    fake_hub.requests.clear()
    r = download.pull(spec.name, endpoint=fake_hub.url, progress=False)
    assert fake_hub.seen("GET", spec.model_file) == [f"bytes={cut}-"]
    blob = _blobs(hf_env, spec) / etag
    assert blob.read_bytes() == data[spec.model_file] and not partial.exists()
    assert r.model_path.read_bytes() == data[spec.model_file]
    assert r.mmproj_path.read_bytes() == data[spec.mmproj_file]
    if r.model_path.is_symlink():  # the layout hf_hub_download makes
        assert Path(r.model_path.readlink()) == Path("..", "..", "blobs", etag)
    refs = hf_env / f"models--{spec.repo_id.replace('/', '--')}" / "refs" / spec.revision
    assert refs.read_text() == COMMIT and r.model_path.parent.name == COMMIT

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve_model(spec.name) == r
    assert hub.model_status(spec).state == "yes"
    from huggingface_hub import hf_hub_download

    found = hf_hub_download(
        spec.repo_id, spec.model_file, revision=spec.revision, cache_dir=hf_env, local_files_only=True
    )
    assert Path(found) == r.model_path


def test_a_server_that_ignores_range_still_gives_the_right_file(hf_env, fake_hub):
    spec = registry.get_spec("qwen2-vl-2b")
    data = fake_hub.add_spec(spec, size=500_000)
    etag = hashlib.sha256(data[spec.model_file]).hexdigest()
    blobs = _blobs(hf_env, spec)
    blobs.mkdir(parents=True)
    (blobs / f"{etag}.incomplete").write_bytes(data[spec.model_file][:200_000])
    fake_hub.ignore_range = True
    r = download.pull(spec.name, endpoint=fake_hub.url, progress=False)
    assert fake_hub.seen("GET", spec.model_file) == ["bytes=200000-"]  # asked, got 200 with the whole body
    assert r.model_path.read_bytes() == data[spec.model_file]
    assert not (blobs / f"{etag}.incomplete").exists()


def test_a_complete_file_is_not_fetched_again(hf_env, fake_hub):
    spec = registry.get_spec("qwen2-vl-2b")
    data = fake_hub.add_spec(spec, size=100_000)
    first = download.pull(spec.name, endpoint=fake_hub.url, progress=False)
    # The snapshot link is gone but the blob is there: relinked from the blob, no GET.
    first.model_path.unlink()
    fake_hub.requests.clear()
    r = download.pull(spec.name, endpoint=fake_hub.url, progress=False)
    assert r == first and r.model_path.read_bytes() == data[spec.model_file]
    assert fake_hub.seen("GET", spec.model_file) == [] and fake_hub.seen("GET", spec.mmproj_file) == []
    fake_hub.requests.clear()
    assert download.pull(spec.name, endpoint=fake_hub.url, progress=False) == first
    assert fake_hub.requests == []


def test_404_is_one_line_and_keeps_the_finished_file(hf_env, fake_hub, monkeypatch):
    spec = registry.get_spec("qwen2.5-vl-3b")
    fake_hub.add_spec(spec, skip=(spec.mmproj_file,))
    with pytest.raises(UserError) as e:
        download.pull(spec.name, endpoint=fake_hub.url, progress=False)
    msg = _one_line(e)
    assert spec.mmproj_file in msg and spec.repo_id in msg and "404" in msg
    assert f"{spec.model_file} already downloaded and kept" in msg
    assert hub.model_status(spec).state == "partial"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        hub.resolve_model(spec.name)
    msg = _one_line(e)
    assert f"missing {spec.mmproj_file} from" in msg and spec.model_file not in msg
    assert "vreason models pull qwen2.5-vl-3b" in msg


def test_unreachable_endpoint_fails_fast_with_the_cause(hf_env, monkeypatch):
    # "Fast" means at the first refused connection, without retries: huggingface_hub's backoff and the
    # resume loop both wait with time.sleep between attempts, so a pull that never sleeps tried once.
    # Counted rather than timed, so a slow or loaded machine gives the same verdict.
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    with pytest.raises(UserError) as e:
        download.pull("qwen2-vl-2b", endpoint=f"http://127.0.0.1:{_closed_port()}", progress=False)
    msg = _one_line(e)
    assert "connection refused" in msg and "ggml-org/Qwen2-VL-2B-Instruct-GGUF" in msg
    assert "files already downloaded are kept" in msg
    assert waits == []


def test_a_server_that_is_not_a_hub_is_named(hf_env, fake_hub):
    spec = registry.get_spec("qwen2-vl-2b")
    fake_hub.add_spec(spec)
    fake_hub.hub_headers = False
    with pytest.raises(UserError, match="did not answer like a Hugging Face Hub"):
        download.pull(spec.name, endpoint=fake_hub.url, progress=False)


def test_offline_mode_refuses_to_pull(hf_env, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="offline mode is on"):
        download.pull("qwen2-vl-2b", endpoint=fake_hub.url, progress=False)
    assert fake_hub.requests == []


def test_hf_endpoint_env_is_read_at_call_time(hf_env, fake_hub, monkeypatch):
    spec = registry.get_spec("qwen2-vl-2b")
    fake_hub.add_spec(spec, size=50_000)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url + "/")
    r = download.pull(spec.name, progress=False)
    assert r.model_path.is_file() and fake_hub.seen("GET", spec.mmproj_file)


# --------------------------------------------------------------------------------------------- fit


def test_kv_bytes_per_token_by_hand():
    # Qwen2.5-VL-3B: 36 layers, 2 KV heads of 128 -> K and V rows of 256 f16 values = 1024 bytes per layer.
    assert fit.kv_bytes_per_token(36, 2, 128) == 36 * 1024
    # Qwen2.5-VL-7B: 28 layers x (4 x 128) x 2 (K, V) x 2 bytes.
    assert fit.kv_bytes_per_token(28, 4, 128) == 57_344
    assert fit.kv_bytes_per_token(28, 4, 128, bytes_per_elem=1) == 28_672
    with pytest.raises(ValueError):
        fit.kv_bytes_per_token(0, 4, 128)


GB = 10**9
KV_7B = fit.kv_bytes_per_token(28, 4, 128)  # 57,344 bytes per token


def _mem(available: int, limit: int | None = None, gpu_free: int | None = None) -> fit.MemoryInfo:
    return fit.MemoryInfo(
        total=16 * GB,
        available=available,
        limit=limit,
        source="test",
        gpu_total=None if gpu_free is None else 24 * GB,
        gpu_free=gpu_free,
    )


def _video_use(frames: int, per_frame: int, answer: int = 1024, min_frames: int = 4) -> fit.ContextUse:
    """What plan_run passes for a video: its tokens, the prompt's 128 and the answer's."""
    return fit.ContextUse(frames * per_frame + 128 + answer, answer, frames, frames * per_frame, min_frames)


def _applied(use: fit.ContextUse, remedy: Remedy) -> tuple[fit.ContextUse, int | None]:
    """The context use after following `remedy`, and the context size it sets (None: sized from the use)."""
    if remedy.setting == "frames.max_frames":
        video = use.video_tokens * remedy.value // use.frames
        return fit.ContextUse(
            use.needed - use.video_tokens + video, use.answer, remedy.value, video, use.min_frames
        ), None
    if remedy.setting == "generation.max_tokens":
        return fit.ContextUse(
            use.needed - use.answer + remedy.value, remedy.value, use.frames, use.video_tokens, use.min_frames
        ), None
    assert remedy.setting == "engine.n_ctx", remedy
    return use, remedy.value


def test_check_fit_adds_up_and_fits():
    ok = fit.check_fit(4_700_000_000, 850_000_000, 32_000, KV_7B, 800_000_000, _mem(12 * GB))
    assert ok.fits and ok.remedies == () and ok.needed == 4_700_000_000 + 850_000_000 + 32_000 * KV_7B + 800_000_000
    ok.require()


def test_check_fit_names_a_frame_limit_that_fits():
    tight = _mem(8 * GB, limit=7 * GB)
    use = _video_use(64, 560)  # 35,840 video + 128 + 1,024 = 36,992 tokens -> a 37,120-token context
    bad = fit.check_fit(4_200_000_000, 1_300_000_000, fit.context_size(use.needed), KV_7B, 500_000_000, tight, use=use)
    assert not bad.fits and bad.available == 7 * GB and not bad.on_gpu
    assert bad.summary.startswith("needs 8.1 GB (model 4.2 + projector 1.3 + KV 2.1 for 37k tokens")
    assert "but 7.0 GB is available" in bad.summary
    # (7.0e9 - 6.0e9) // 57,344 = 17,438 tokens fit; 1,152 are not frames, 28 frames make 16,832 -> 16,896.
    assert bad.max_ctx_tokens == 17_438
    assert bad.remedies == (Remedy("fewer frames", "frames.max_frames", 28),)
    with pytest.raises(UserError) as e:
        bad.require()
    assert _one_line(e) == bad.summary and "--" not in _one_line(e)  # the core names settings, not flags
    assert e.value.remedies == bad.remedies


@pytest.mark.parametrize("kv_share", [0.02, 0.1, 0.3, 0.6, 0.9, 0.99])
@pytest.mark.parametrize(
    "use",
    [
        _video_use(64, 560),
        _video_use(32, 80),
        _video_use(6, 900, min_frames=2),
        fit.ContextUse(128 + 300 + 8192, 8192),
        fit.ContextUse(128 + 1024, 1024, user_set=True),
    ],
)
def test_every_remedy_is_a_valid_value_that_fits(kv_share, use):
    """Whatever the shortfall (room for `kv_share` of the KV cache), each suggested value is one the settings
    accept and, applied alone, fits: never an odd frame count, fewer than 2 frames or a context below the floor."""
    weights, overhead = 5_500_000_000, 500_000_000
    ctx = 32_768 if use.user_set else fit.context_size(use.needed)
    mem = _mem(weights + overhead + int(kv_share * ctx * KV_7B))
    report = fit.check_fit(weights, 0, ctx, KV_7B, overhead, mem, use=use)
    assert not report.fits and report.remedies
    for remedy in report.remedies:
        if remedy.setting == "model":
            assert len(report.remedies) == 1  # only when nothing within the settings fits
            continue
        new_use, new_ctx = _applied(use, remedy)
        if remedy.setting == "frames.max_frames":
            assert remedy.value % 2 == 0 and max(2, use.min_frames) <= remedy.value < use.frames
        if remedy.setting == "engine.n_ctx":
            assert new_use.needed <= remedy.value < ctx
        assert fit.check_fit(weights, 0, new_ctx or fit.context_size(new_use.needed), KV_7B, overhead, mem).fits


def test_below_the_context_floor_no_frame_count_fits():
    """The issue's case: under the 2,048-token floor fewer frames cannot help, so none is suggested."""
    use = _video_use(32, 80)
    report = fit.check_fit(
        5_500_000_000, 0, fit.context_size(use.needed), KV_7B, 500_000_000, _mem(6_100_000_000), use=use
    )
    assert report.max_ctx_tokens < fit.CONTEXT_FLOOR
    assert report.remedies == (Remedy("a smaller model from vreason models list", "model"),)


def test_a_smaller_context_the_user_set():
    use = fit.ContextUse(3_000, 1024, 8, 1_848, 4, user_set=True)
    report = fit.check_fit(5_500_000_000, 0, 32_768, KV_7B, 500_000_000, _mem(7 * GB), use=use)
    assert report.remedies == (Remedy("a smaller context", "engine.n_ctx", 17_408),)  # 17,438 rounded down to 256


def test_a_shorter_answer():
    use = fit.ContextUse(128 + 300 + 8192, 8192)  # an image and a long answer
    report = fit.check_fit(
        5_500_000_000, 0, fit.context_size(use.needed), KV_7B, 500_000_000, _mem(6 * GB + 4_000 * KV_7B), use=use
    )
    # 4,000 tokens fit: 3,840 after rounding to 256, so the answer may take 3,840 - 428 = 3,412.
    assert report.remedies == (Remedy("a shorter answer", "generation.max_tokens", 3_412),)


def test_weights_alone_say_so_and_ask_for_a_smaller_model():
    report = fit.check_fit(9 * GB, GB, 1000, KV_7B, 0, _mem(8 * GB, limit=7 * GB), use=fit.ContextUse(1000, 512))
    assert not report.fits and not report.weights_fit
    assert report.remedies == (Remedy("a smaller model from vreason models list", "model"),)
    with pytest.raises(UserError) as e:
        report.require()
    assert _one_line(e).endswith("the model alone does not fit")


def test_cpu_only_run_is_checked_against_system_memory():
    """A small or busy GPU must not refuse a run that puts nothing on it."""
    small_gpu = _mem(12 * GB, gpu_free=GB)
    cpu = fit.check_fit(2 * GB, GB, 4096, KV_7B, 500_000_000, small_gpu, cpu_only=True)
    assert cpu.fits and not cpu.on_gpu and cpu.available == 12 * GB
    gpu = fit.check_fit(2 * GB, GB, 4096, KV_7B, 500_000_000, small_gpu)
    assert not gpu.fits and gpu.on_gpu and "of GPU memory" in gpu.summary
    assert gpu.remedies[-1] == Remedy("run on the CPU", "engine.n_gpu_layers", 0)  # it fits there: see above
    assert fit.available_memory(use_gpu=False).gpu_free is None


def test_fit_advice_renders_as_flags():
    from vreason_local.settings import render_error

    use = _video_use(64, 560)
    report = fit.check_fit(
        4_200_000_000, 1_300_000_000, fit.context_size(use.needed), KV_7B, 500_000_000, _mem(7 * GB), use=use
    )
    with pytest.raises(UserError) as e:
        report.require()
    assert render_error(e.value) == f"{report.summary}; try --max-frames 28"


def test_available_memory_is_positive_here():
    mem = fit.available_memory()
    assert mem.total > 0 and 0 < mem.available <= mem.total and mem.budget > 0 and mem.source


def test_apple_gpu_limit_rule_and_byte_format():
    gib = 1 << 30
    assert fit.apple_gpu_limit(16 * gib, 0) == int(16 * gib * 2 / 3)
    assert fit.apple_gpu_limit(64 * gib, None) == 48 * gib
    assert fit.apple_gpu_limit(16 * gib, 12_000) == 12_000 * 1024 * 1024
    assert fit.format_bytes(1_929_901_056) == "1.9 GB"
    assert fit.format_bytes(512) == "512 B" and fit.format_bytes(844_757_728) == "844.8 MB"


# --------------------------------------------------------------------------------------------- CLI


def test_cli_models_list_table_and_json(hf_env):
    runner = CliRunner()
    result = runner.invoke(models_group, ["list"])
    assert result.exit_code == 0, result.output
    for name in REQUIRED:
        assert name in result.output
    default_line = next(line for line in result.output.splitlines() if " qwen2.5-vl-3b " in f" {line} ")
    assert default_line.startswith("*") and " no " in f" {default_line} "

    result = runner.invoke(models_group, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["name"] for r in rows} == set(REQUIRED)
    assert [r["name"] for r in rows if r["default"]] == ["qwen2.5-vl-3b"]
    assert all(r["downloaded"] is False and r["state"] == "not downloaded" and r["model_path"] is None for r in rows)


def test_cli_models_pull_against_the_local_server(hf_env, fake_hub, monkeypatch):
    spec = registry.get_spec("qwen2-vl-2b")
    data = fake_hub.add_spec(spec, size=60_000)
    runner = CliRunner()
    result = runner.invoke(models_group, ["pull", spec.name, "--endpoint", fake_hub.url, "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if line.startswith(("model:", "mmproj:")))
    assert Path(lines["model"].strip()).read_bytes() == data[spec.model_file]
    assert Path(lines["mmproj"].strip()).read_bytes() == data[spec.mmproj_file]

    listed = {r["name"]: r for r in json.loads(runner.invoke(models_group, ["list", "--json"]).output)}
    assert listed[spec.name]["downloaded"] is True and listed[spec.name]["state"] == "downloaded"
    assert listed[spec.name]["local_bytes"] == sum(len(d) for d in data.values())

    # HF_ENDPOINT alone works too, and a failure reaches the caller as a UserError.
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    result = runner.invoke(models_group, ["pull", "qwen3-vl-2b", "--no-progress"])
    assert isinstance(result.exception, UserError) and "connection refused" in str(result.exception)


def test_cli_make_tiny(tmp_path):
    result = CliRunner().invoke(models_group, ["make-tiny", str(tmp_path / "tiny"), "--arch", "qwen25vl"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if line.startswith(("model:", "mmproj:")))
    assert Path(lines["model"].strip()).is_file() and Path(lines["mmproj"].strip()).is_file()
    assert "random" in result.output

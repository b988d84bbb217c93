"""Finding model files: a path the user gave, or a registry name looked up in the Hugging Face cache.

Only `pull` touches the network. Everything else reads the cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``,
else ``~/.cache/huggingface/hub``), so answering questions works offline once a model is pulled.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE`` once, when it is
imported; this module reads them again from ``os.environ`` at call time and passes them explicitly, so a
change made after import (tests, a CLI option) takes effect.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .registry import ModelSpec, get_spec, load_registry

_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class ResolvedModel:
    """The two files llama.cpp loads; ``spec`` is None when the user gave paths instead of a name."""

    model_path: Path
    mmproj_path: Path
    spec: ModelSpec | None


@dataclass(frozen=True)
class FileStatus:
    """One file of a registry model in the local cache."""

    filename: str
    downloaded: bool
    path: Path | None  # the cached file when downloaded
    size: int  # bytes on disk (0 when absent)


@dataclass(frozen=True)
class ModelStatus:
    """A registry model and which of its two files are in the cache."""

    spec: ModelSpec
    model: FileStatus
    mmproj: FileStatus
    incomplete: bool  # an interrupted download left a partial blob in the cache

    @property
    def downloaded(self) -> bool:
        return self.model.downloaded and self.mmproj.downloaded

    @property
    def state(self) -> str:
        """'yes' (both files), 'partial' (one file, or an interrupted download), or 'no'."""
        if self.downloaded:
            return "yes"
        if self.model.downloaded or self.mmproj.downloaded or self.incomplete:
            return "partial"
        return "no"

    @property
    def local_bytes(self) -> int:
        return self.model.size + self.mmproj.size


# ----------------------------------------------------------------------------------------------- environment


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hf_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else ``HF_ENDPOINT``, else https://huggingface.co (no trailing slash)."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def offline_mode() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set now, or was when huggingface_hub was imported."""
    if any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else hf_cache_dir()


# ----------------------------------------------------------------------------------------------- cache lookups


def _cached_file(spec: ModelSpec, filename: str, cache_dir: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.repo_id, filename, cache_dir=str(cache_dir), revision=spec.revision)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def _repo_cache_folder(spec: ModelSpec, cache_dir: Path) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir / repo_folder_name(repo_id=spec.repo_id, repo_type="model")


def _file_status(spec: ModelSpec, filename: str, cache_dir: Path) -> FileStatus:
    path = _cached_file(spec, filename, cache_dir)
    if path is None:
        return FileStatus(filename=filename, downloaded=False, path=None, size=0)
    return FileStatus(filename=filename, downloaded=True, path=path, size=path.stat().st_size)


def model_status(spec: ModelSpec, cache_dir: str | Path | None = None) -> ModelStatus:
    cache = _cache(cache_dir)
    blobs = _repo_cache_folder(spec, cache) / "blobs"
    incomplete = blobs.is_dir() and any(p.name.endswith(".incomplete") for p in blobs.iterdir())
    return ModelStatus(
        spec=spec,
        model=_file_status(spec, spec.model_file, cache),
        mmproj=_file_status(spec, spec.mmproj_file, cache),
        incomplete=incomplete,
    )


def list_models(cache_dir: str | Path | None = None) -> list[ModelStatus]:
    """Every registry model with what of it is in the local cache (no network)."""
    return [model_status(spec, cache_dir) for spec in load_registry().values()]


# ----------------------------------------------------------------------------------------------- resolve


def _looks_like_path(model: str) -> bool:
    return model.lower().endswith(".gguf") or "/" in model or os.sep in model or model.startswith((".", "~"))


def _is_projector_name(path: Path) -> bool:
    return "mmproj" in path.name.lower()


def _existing_gguf(path_str: str, what: str) -> Path:
    path = Path(path_str).expanduser()
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_file():
        raise UserError(f"{what} is not a file: {path}")
    if path.suffix.lower() != ".gguf":
        raise UserError(f"{what} must be a .gguf file: {path}")
    return path


def _projector_beside(model_path: Path) -> Path:
    candidates = sorted(
        p
        for p in model_path.parent.iterdir()
        if p.is_file() and p.name.lower().startswith("mmproj") and p.name.lower().endswith(".gguf") and p != model_path
    )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise UserError(f"no projector (mmproj*.gguf) beside {model_path}; pass --mmproj PATH")
    names = ", ".join(p.name for p in candidates)
    raise UserError(
        f"{len(candidates)} projector files beside {model_path} ({names}); pass --mmproj PATH to choose one"
    )


def resolve_model(model: str, mmproj: str | None = None, *, cache_dir: str | Path | None = None) -> ResolvedModel:
    """Turn ``--model`` / ``--mmproj`` into two existing files, without network.

    ``model`` is a registry name (looked up in the Hugging Face cache) or a path to a .gguf file. With a path
    and no ``mmproj``, the one ``mmproj*.gguf`` in the same folder is used.
    """
    mmproj_path = _existing_gguf(mmproj, "projector (--mmproj)") if mmproj else None

    if _looks_like_path(model) or Path(model).expanduser().is_file():
        model_path = _existing_gguf(model, "model file")
        if _is_projector_name(model_path) and mmproj_path is None:
            raise UserError(
                f"{model_path.name} looks like a vision projector (mmproj); pass the language-model .gguf as the"
                " model and this file with --mmproj"
            )
        return ResolvedModel(model_path, mmproj_path or _projector_beside(model_path), None)

    spec = get_spec(model)
    cache = _cache(cache_dir)
    found_model = _cached_file(spec, spec.model_file, cache)
    found_mmproj = mmproj_path or _cached_file(spec, spec.mmproj_file, cache)
    missing = [f for f, p in ((spec.model_file, found_model), (spec.mmproj_file, found_mmproj)) if p is None]
    if missing:
        offline = "; HF_HUB_OFFLINE is set, unset it for the download" if offline_mode() else ""
        raise UserError(
            f"model {spec.name} is not downloaded: missing {' and '.join(missing)} from {spec.repo_id}"
            f" in {cache}; run `vreason models pull {spec.name}`{offline}"
        )
    assert found_model is not None and found_mmproj is not None
    return ResolvedModel(found_model, found_mmproj, spec)


# ----------------------------------------------------------------------------------------------- download


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if enabled:
        enable_progress_bars()
    else:
        disable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            disable_progress_bars()
        else:
            enable_progress_bars()


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _class_names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_DNS_FAILURES = (
    "name or service not known",
    "nodename nor servname",
    "getaddrinfo",
    "name resolution",
    "no address associated",
)


def explain_download_error(error: BaseException) -> str:
    """Why a download failed, in a few words, from huggingface_hub / httpx / requests exceptions.

    Classified by class name so it works across huggingface_hub versions (httpx-based and requests-based)."""
    chain = list(_chain(error))
    for e in chain:
        names = _class_names(e)
        if "OfflineModeIsEnabled" in names:
            return "offline mode is on (HF_HUB_OFFLINE is set); unset it to download"
        if names & {"RemoteEntryNotFoundError", "EntryNotFoundError"} and "LocalEntryNotFoundError" not in names:
            return "the file does not exist in that repository (HTTP 404)"
        if "RevisionNotFoundError" in names:
            return "that revision does not exist in the repository (HTTP 404)"
        if "GatedRepoError" in names:
            return "the repository is gated; accept its terms on the Hub and log in (hf auth login)"
        if "RepositoryNotFoundError" in names:
            return "repository not found, or private (HTTP 401/404)"
        if "FileMetadataError" in names:
            return "the server did not answer like a Hugging Face Hub (no X-Repo-Commit/ETag); check HF_ENDPOINT"
    for e in chain:
        names = _class_names(e)
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int) and status >= 400:
            return f"the server answered HTTP {status}"
        text = str(e).lower()
        if names & {"ConnectTimeout", "ReadTimeout", "TimeoutException", "Timeout", "TimeoutError"}:
            return "the connection timed out"
        if names & {"ConnectError", "ConnectionError", "NetworkError", "ProxyError"} or isinstance(e, ConnectionError):
            if any(s in text for s in _DNS_FAILURES):
                return "the host name could not be resolved (no network or DNS)"
            if "refused" in text:
                return "connection refused"
            if "unreachable" in text or "no route" in text:
                return "no route to the server (network unreachable)"
            return f"cannot connect ({_one_line(e, 100)})"
        if names & {"RemoteProtocolError", "ReadError", "ChunkedEncodingError", "IncompleteRead"}:
            return "the connection dropped during the download"
        if "consistency check failed" in text:
            return "the download was cut short (size mismatch)"
        if "not enough free disk space" in text or getattr(e, "errno", None) == 28:
            return "not enough free disk space"
    return _one_line(f"{type(error).__name__}: {error}")


# Within one run, a connection that drops mid-file is resumed at once; this many attempts in a row that bring
# no new byte end the run (like huggingface_hub's own http_get). What was received stays on disk either way.
_MAX_ATTEMPTS_WITHOUT_PROGRESS = 5
_RETRY_WAIT_S = 1.0
_RESUMABLE_ERRORS = ("ConnectError", "TimeoutException", "RemoteProtocolError", "NetworkError")


class _NotAHub(Exception):
    pass


class _PartialDownload(Exception):
    """A download that failed after keeping ``kept`` of ``total`` bytes in ``<etag>.incomplete``."""

    def __init__(self, error: BaseException, kept: int, total: int | None) -> None:
        super().__init__(str(error))
        self.error, self.kept, self.total = error, kept, total


def _link_snapshot(blob: Path, pointer: Path, new_blob: bool) -> None:
    """``snapshots/<commit>/<file>`` -> ``../../blobs/<etag>`` as huggingface_hub makes it: a relative symlink,
    else (no symlinks: Windows without developer mode, some mounts) the blob itself, moved if this run just made
    it or copied if another snapshot may already point at it."""
    import shutil

    from huggingface_hub.file_download import are_symlinks_supported

    pointer.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        pointer.unlink()
    if are_symlinks_supported(str(pointer.parents[2])):
        try:
            os.symlink(os.path.relpath(blob, pointer.parent), pointer)
            return
        except OSError:
            pass
    if new_blob:
        shutil.move(str(blob), str(pointer))
    else:
        shutil.copyfile(blob, pointer)


def _write_ref(repo_folder: Path, revision: str, commit: str) -> None:
    """``refs/<revision>`` holds the commit hash (nothing when the revision is the commit itself)."""
    if revision == commit:
        return
    ref = repo_folder / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text() != commit:
        tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)


def _stream_to(incomplete: Path, url: str, headers: dict[str, str], total: int | None, filename: str) -> None:
    """Append ``url``'s bytes to ``incomplete`` from its current size on, with a ``Range`` request.

    A 200 answer to a Range request (server ignores Range) restarts the file from byte 0. Within this run a
    dropped connection is resumed from where it stopped; the partial file is never deleted, so a later run
    continues too. Raises when the server keeps failing or the sizes disagree."""
    import time

    from huggingface_hub import constants
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff, tqdm

    have = incomplete.stat().st_size if incomplete.exists() else 0
    if total is not None and have > total:  # not a prefix of this blob: start again
        incomplete.unlink()
        have = 0
    bar = tqdm(
        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1000, desc=filename,
        name="huggingface_hub.http_get",
    )
    fails = 0
    try:
        while total is None or have < total:
            request_headers = dict(headers)
            if have:
                request_headers["Range"] = f"bytes={have}-"
            try:
                with http_stream_backoff(
                    "GET", url, headers=request_headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                    follow_redirects=True, retry_on_exceptions=(), retry_on_status_codes=(408, 429, 500, 502, 503, 504),
                ) as response:
                    if response.status_code == 416 and have:  # the range is past the end: not our blob's prefix
                        incomplete.unlink()
                        have = 0
                        bar.reset(total=total)
                        continue
                    hf_raise_for_status(response)
                    restart = response.status_code != 206
                    if not restart:  # 206: be sure it starts where we asked
                        content_range = response.headers.get("Content-Range", "")
                        restart = not content_range.startswith(f"bytes {have}-")
                    if restart and have:
                        have = 0
                        bar.reset(total=total)
                    if total is None:
                        length = response.headers.get("Content-Range", "").rpartition("/")[2]
                        total = int(length) if length.isdigit() else None
                        if total is None and response.status_code == 200:
                            clen = response.headers.get("Content-Length")
                            total = int(clen) if clen and clen.isdigit() else None
                        bar.total = total
                    with incomplete.open("wb" if restart else "ab") as f:
                        for chunk in response.iter_bytes():
                            if chunk:
                                f.write(chunk)
                                have += len(chunk)
                                bar.update(len(chunk))
                                fails = 0
                    if total is None:  # no size known from anywhere: the server's end of body is the end
                        total = have
            except Exception as e:
                if not (_class_names(e) & set(_RESUMABLE_ERRORS)):
                    raise
                fails += 1
                if fails >= _MAX_ATTEMPTS_WITHOUT_PROGRESS:
                    raise
                time.sleep(_RETRY_WAIT_S)
                continue
            if have != total:
                raise OSError(
                    f"Consistency check failed: {filename} should be {total} bytes but the server sent {have}"
                )
    finally:
        bar.close()


def _fetch(spec: ModelSpec, filename: str, endpoint: str, cache: Path) -> Path:
    """Download one file into the HF cache layout, resumable across runs.

    ``blobs/<etag>.incomplete`` grows by HTTP Range requests and is kept when a run fails or is interrupted;
    the next run continues from its size. Complete, it becomes ``blobs/<etag>``, linked from
    ``snapshots/<commit>/<filename>``, with ``refs/<revision>`` -> commit: what ``hf_hub_download`` makes, so
    ``try_to_load_from_cache`` / ``local_files_only`` find it."""
    from urllib.parse import urlsplit

    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    # A quick HEAD first, without huggingface_hub's backoff: an unreachable or wrong server fails in
    # seconds with its real cause instead of after ~25 s of retries and a generic "cannot find" error.
    url = hf_hub_url(spec.repo_id, filename, revision=spec.revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    if meta.commit_hash is None or meta.etag is None:  # etag is normalised by get_hf_file_metadata (W/"..")
        raise _NotAHub(f"{url} answered without X-Repo-Commit/ETag headers")
    if meta.xet_file_data is not None:
        # Xet-backed file: huggingface_hub downloads it (with hf_xet when installed, else plain HTTP); resuming
        # an interrupted download is then hf's/hf_xet's own (hf_xet keeps a chunk cache), not ours.
        return Path(
            hf_hub_download(
                repo_id=spec.repo_id, filename=filename, revision=spec.revision, cache_dir=str(cache), endpoint=endpoint
            )
        )

    repo_folder = _repo_cache_folder(spec, cache)
    blob = repo_folder / "blobs" / meta.etag
    pointer = repo_folder / "snapshots" / meta.commit_hash / Path(*filename.split("/"))
    incomplete = blob.with_name(blob.name + ".incomplete")
    lock = cache / ".locks" / repo_folder.name / f"{meta.etag}.lock"  # the lock hf_hub_download takes too
    lock.parent.mkdir(parents=True, exist_ok=True)
    blob.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(str(lock)):
        new_blob = False
        if not (blob.is_file() and (meta.size is None or blob.stat().st_size == meta.size)):
            headers = build_hf_headers()
            headers["Accept-Encoding"] = "identity"  # the bytes of the blob, so Range offsets mean file offsets
            if urlsplit(meta.location).netloc != urlsplit(url).netloc:
                headers.pop("authorization", None)  # a signed CDN URL: no token (as hf_hub_download)
            try:
                _stream_to(incomplete, meta.location, headers, meta.size, filename)
            except Exception as e:
                kept = incomplete.stat().st_size if incomplete.exists() else 0
                raise _PartialDownload(e, kept, meta.size) from e
            os.replace(incomplete, blob)
            new_blob = True
        if not pointer.exists():
            _link_snapshot(blob, pointer, new_blob=new_blob)
        _write_ref(repo_folder, spec.revision, meta.commit_hash)
    return pointer


def _kept_text(kept: int, total: int | None) -> str:
    from .fit import format_bytes

    if total:
        return f"{format_bytes(kept)} of {format_bytes(total)} downloaded and kept"
    return f"{format_bytes(kept)} downloaded and kept"


def pull(
    name: str,
    endpoint: str | None = None,
    progress: bool = True,
    *,
    cache_dir: str | Path | None = None,
) -> ResolvedModel:
    """Download a registry model's GGUF and mmproj into the Hugging Face cache; return their paths.

    Files already complete in the cache are not downloaded again. A file is downloaded into
    ``blobs/<etag>.incomplete``, which is kept when the run fails or is interrupted: a connection that drops
    mid-file is resumed with an HTTP Range request in the same run (up to 5 attempts without progress), and
    the next `pull` continues from the bytes kept. Any failure becomes one `UserError` line naming the repo,
    the file, the cause and how much was kept; files that finished stay in the cache.
    """
    spec = get_spec(name)
    cache = _cache(cache_dir)
    base = hf_endpoint(endpoint)
    done: list[str] = []
    paths: dict[str, Path] = {}
    with _progress_bars(progress):
        for filename in (spec.model_file, spec.mmproj_file):
            cached = _cached_file(spec, filename, cache)
            if cached is not None:
                paths[filename] = cached
                done.append(filename)
                continue
            kept = (
                f"{' and '.join(done)} already downloaded and kept in the cache"
                if done
                else "files already downloaded are kept in the cache"
            )
            where = f"cannot download {filename} from {spec.repo_id} at {base}"
            again = f"run `vreason models pull {spec.name}` again to continue"
            if offline_mode():
                raise UserError(
                    f"{where}: offline mode is on (HF_HUB_OFFLINE is set), unset it to download; {kept}"
                )
            try:
                paths[filename] = _fetch(spec, filename, base, cache)
            except Exception as e:
                cause = e.error if isinstance(e, _PartialDownload) else e
                reason = (
                    "the server did not answer like a Hugging Face Hub (no X-Repo-Commit/ETag); check HF_ENDPOINT"
                    if isinstance(cause, _NotAHub)
                    else explain_download_error(cause)
                )
                if isinstance(e, _PartialDownload) and e.kept:
                    # e.g. "2.1 GB of 4.7 GB downloaded and kept; run `vreason models pull NAME` again to continue"
                    kept = _kept_text(e.kept, e.total) + (f"; {kept}" if done else "")
                raise UserError(f"{where}: {reason}; {kept}; {again}") from cause
            done.append(filename)
    return ResolvedModel(paths[spec.model_file], paths[spec.mmproj_file], spec)


__all__ = [
    "FileStatus",
    "ModelStatus",
    "ResolvedModel",
    "explain_download_error",
    "hf_cache_dir",
    "hf_endpoint",
    "list_models",
    "model_status",
    "offline_mode",
    "pull",
    "resolve_model",
]

"""Downloading a registry model into the Hugging Face cache, resumable across interrupted runs.

The only module that touches the network, kept apart from `hub` (which only reads the cache) so that
resolving a model for a question never imports or reaches the download machinery. Files land in the
layout ``hf_hub_download`` makes (``blobs/<etag>``, ``snapshots/<commit>/<file>``, ``refs/<revision>``),
so `hub` finds them offline afterwards; each blob is streamed here with HTTP Range requests so that a
dropped connection or a second `vreason models pull` continues from the bytes already on disk.
Environment variables are read at call time through `hub` (see its docstring).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import UserError
from .hub import ResolvedModel, cache_root, cached_file, hf_endpoint, offline_mode, repo_cache_folder
from .registry import ModelSpec, get_spec


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


# (filename, bytes done, total bytes or None): how a caller without console bars (the chat's model screen)
# follows a download; called at most every _REPORT_EVERY_S or _REPORT_EVERY_BYTES, and once when a file is done.
ProgressCallback = Callable[[str, int, int | None], None]
_REPORT_EVERY_S = 0.1
_REPORT_EVERY_BYTES = 1 << 20


class _NotAHub(Exception):
    pass


class _Cancelled(Exception):
    """The caller's cancel event was set; raised between chunks, so the bytes written so far are kept."""


def _stop_if(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise _Cancelled()


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


def _stream_to(
    incomplete: Path,
    url: str,
    headers: dict[str, str],
    total: int | None,
    filename: str,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Append ``url``'s bytes to ``incomplete`` from its current size on, with a ``Range`` request.

    A 200 answer to a Range request (server ignores Range) restarts the file from byte 0. Within this run a
    dropped connection is resumed from where it stopped; the partial file is never deleted, so a later run
    continues too. Raises when the server keeps failing or the sizes disagree, and `_Cancelled` between two
    chunks once ``cancel`` is set."""
    import time

    from huggingface_hub import constants
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff, tqdm

    have = incomplete.stat().st_size if incomplete.exists() else 0
    if total is not None and have > total:  # not a prefix of this blob: start again
        incomplete.unlink()
        have = 0
    bar = tqdm(
        total=total,
        initial=have,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        desc=filename,
        name="huggingface_hub.http_get",
    )
    fails = 0
    reported_at, reported = time.monotonic(), have
    try:
        while total is None or have < total:
            _stop_if(cancel)  # also between attempts, while a stalled server is being retried
            request_headers = dict(headers)
            if have:
                request_headers["Range"] = f"bytes={have}-"
            try:
                with http_stream_backoff(
                    "GET",
                    url,
                    headers=request_headers,
                    timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                    follow_redirects=True,
                    retry_on_exceptions=(),
                    retry_on_status_codes=(408, 429, 500, 502, 503, 504),
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
                            _stop_if(cancel)
                            now = time.monotonic()
                            if on_progress and (
                                now - reported_at >= _REPORT_EVERY_S or have - reported >= _REPORT_EVERY_BYTES
                            ):
                                on_progress(filename, have, total)
                                reported_at, reported = now, have
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


def _fetch(
    spec: ModelSpec,
    filename: str,
    endpoint: str,
    cache: Path,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
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

    repo_folder = repo_cache_folder(spec, cache)
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
                _stream_to(incomplete, meta.location, headers, meta.size, filename, on_progress, cancel)
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
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ResolvedModel:
    """Download a registry model's GGUF and mmproj into the Hugging Face cache; return their paths.

    Files already complete in the cache are not downloaded again. A file is downloaded into
    ``blobs/<etag>.incomplete``, which is kept when the run fails or is interrupted: a connection that drops
    mid-file is resumed with an HTTP Range request in the same run (up to 5 attempts without progress), and
    the next `pull` continues from the bytes kept. Any failure becomes one `UserError` line naming the repo,
    the file, the cause and how much was kept; files that finished stay in the cache.

    ``on_progress(filename, done, total)`` follows each file as its bytes arrive (throttled) and once more when
    it is complete (also for a file already in the cache). Setting ``cancel`` stops the download after the
    chunk in hand, with a `UserError`; the partial file is kept, so running `pull` again continues it.
    """
    spec = get_spec(name)
    cache = cache_root(cache_dir)
    base = hf_endpoint(endpoint)
    done: list[str] = []
    paths: dict[str, Path] = {}

    def finished(filename: str, path: Path) -> None:
        paths[filename] = path
        done.append(filename)
        if on_progress:
            size = path.stat().st_size
            on_progress(filename, size, size)

    with _progress_bars(progress):
        for filename in (spec.model_file, spec.mmproj_file):
            cached = cached_file(spec, filename, cache)
            if cached is not None:
                finished(filename, cached)
                continue
            kept = (
                f"{' and '.join(done)} already downloaded and kept in the cache"
                if done
                else "files already downloaded are kept in the cache"
            )
            where = f"cannot download {filename} from {spec.repo_id} at {base}"
            again = f"run `vreason models pull {spec.name}` again to continue"
            if offline_mode():
                raise UserError(f"{where}: offline mode is on (HF_HUB_OFFLINE is set), unset it to download; {kept}")
            try:
                path = _fetch(spec, filename, base, cache, on_progress, cancel)
            except Exception as e:
                cause = e.error if isinstance(e, _PartialDownload) else e
                if isinstance(e, _PartialDownload) and isinstance(cause, _Cancelled):
                    from .fit import format_bytes

                    raise UserError(
                        f"download cancelled; run it again to continue (kept {format_bytes(e.kept)})"
                    ) from None
                reason = (
                    "the server did not answer like a Hugging Face Hub (no X-Repo-Commit/ETag); check HF_ENDPOINT"
                    if isinstance(cause, _NotAHub)
                    else explain_download_error(cause)
                )
                if isinstance(e, _PartialDownload) and e.kept:
                    # e.g. "2.1 GB of 4.7 GB downloaded and kept; run `vreason models pull NAME` again to continue"
                    kept = _kept_text(e.kept, e.total) + (f"; {kept}" if done else "")
                raise UserError(f"{where}: {reason}; {kept}; {again}") from cause
            finished(filename, path)
    return ResolvedModel(paths[spec.model_file], paths[spec.mmproj_file], spec)


__all__ = ["ProgressCallback", "explain_download_error", "pull"]

"""Finding model files: a path the user gave, or a registry name looked up in the Hugging Face cache.

Only `download.pull` touches the network. This module reads the cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``,
else ``~/.cache/huggingface/hub``), so answering questions works offline once a model is pulled.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE`` once, when it is
imported; this module reads them again from ``os.environ`` at call time and passes them explicitly, so a
change made after import (tests, a CLI option) takes effect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelMissing, Remedy, UserError
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


def cache_root(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` when given, else the cache the environment names now (`hf_cache_dir`)."""
    return Path(cache_dir).expanduser() if cache_dir is not None else hf_cache_dir()


# ----------------------------------------------------------------------------------------------- cache lookups


def cached_file(spec: ModelSpec, filename: str, cache_dir: Path) -> Path | None:
    """The complete cached copy of one file of ``spec`` at its revision, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.repo_id, filename, cache_dir=str(cache_dir), revision=spec.revision)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def repo_cache_folder(spec: ModelSpec, cache_dir: Path) -> Path:
    """``models--<owner>--<name>`` in the cache: where blobs, snapshots and refs of ``spec`` live."""
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir / repo_folder_name(repo_id=spec.repo_id, repo_type="model")


def _file_status(spec: ModelSpec, filename: str, cache_dir: Path) -> FileStatus:
    path = cached_file(spec, filename, cache_dir)
    if path is None:
        return FileStatus(filename=filename, downloaded=False, path=None, size=0)
    return FileStatus(filename=filename, downloaded=True, path=path, size=path.stat().st_size)


def model_status(spec: ModelSpec, cache_dir: str | Path | None = None) -> ModelStatus:
    cache = cache_root(cache_dir)
    blobs = repo_cache_folder(spec, cache) / "blobs"
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


def _existing_gguf(path_str: str, what: str, error: type[UserError] = UserError) -> Path:
    """`path_str` as an existing .gguf file, else `error` (`ModelMissing` for the model: another is the remedy)."""
    path = Path(path_str).expanduser()
    if not path.exists():
        raise error(f"{what} not found: {path}")
    if not path.is_file():
        raise error(f"{what} is not a file: {path}")
    if path.suffix.lower() != ".gguf":
        raise error(f"{what} must be a .gguf file: {path}")
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
        raise UserError(f"no projector (mmproj*.gguf) beside {model_path}", [Remedy("the projector file", "mmproj")])
    names = ", ".join(p.name for p in candidates)
    raise UserError(
        f"{len(candidates)} projector files beside {model_path} ({names})", [Remedy("the one to use", "mmproj")]
    )


def resolve_model(model: str, mmproj: str | None = None, *, cache_dir: str | Path | None = None) -> ResolvedModel:
    """Turn ``--model`` / ``--mmproj`` into two existing files, without network.

    ``model`` is a registry name (looked up in the Hugging Face cache) or a path to a .gguf file. With a path
    and no ``mmproj``, the one ``mmproj*.gguf`` in the same folder is used.
    """
    mmproj_path = _existing_gguf(mmproj, "projector") if mmproj else None

    if _looks_like_path(model) or Path(model).expanduser().is_file():
        model_path = _existing_gguf(model, "model file", ModelMissing)
        if _is_projector_name(model_path) and mmproj_path is None:
            raise UserError(
                f"{model_path.name} looks like a vision projector (mmproj), not a language model",
                [
                    Remedy("the language-model .gguf as the model", "model"),
                    Remedy("this file as the projector", "mmproj", str(model_path)),
                ],
            )
        return ResolvedModel(model_path, mmproj_path or _projector_beside(model_path), None)

    spec = get_spec(model, or_else="pass the path to a .gguf file")
    cache = cache_root(cache_dir)
    found_model = cached_file(spec, spec.model_file, cache)
    found_mmproj = mmproj_path or cached_file(spec, spec.mmproj_file, cache)
    missing = [f for f, p in ((spec.model_file, found_model), (spec.mmproj_file, found_mmproj)) if p is None]
    if missing:
        offline = "; HF_HUB_OFFLINE is set, unset it for the download" if offline_mode() else ""
        raise ModelMissing(
            f"model {spec.name} is not downloaded: missing {' and '.join(missing)} from {spec.repo_id}"
            f" in {cache}; run `vreason models pull {spec.name}`{offline}"
        )
    assert found_model is not None and found_mmproj is not None
    return ResolvedModel(found_model, found_mmproj, spec)


__all__ = [
    "FileStatus",
    "ModelStatus",
    "ResolvedModel",
    "cache_root",
    "cached_file",
    "hf_cache_dir",
    "hf_endpoint",
    "list_models",
    "model_status",
    "offline_mode",
    "repo_cache_folder",
    "resolve_model",
]

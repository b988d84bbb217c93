"""The Qwen-VL GGUF releases vreason knows by name: where to download them and how big they are.

The data lives in ``models/registry.json`` at the top of the repository, which setuptools installs as the
package ``vreason_local.registry_data`` (see ``[tool.setuptools.package-dir]`` in pyproject.toml).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from .errors import ModelMissing
from .families import FAMILIES
from .fit import kv_bytes_per_token

DEFAULT_MODEL = "qwen2.5-vl-3b"
REGISTRY_FILE = "registry.json"


@dataclass(frozen=True)
class ModelSpec:
    """One downloadable model: a language-model GGUF and its vision projector (mmproj) in one HF repo."""

    name: str  # what users type: "qwen2.5-vl-3b", "qwen3-vl-4b-thinking"
    display_name: str  # the upstream model name: "Qwen2.5-VL-3B-Instruct"
    family: str  # a key of families.FAMILIES: "qwen2vl" | "qwen25vl" | "qwen3vl"
    repo_id: str  # Hugging Face repo holding both files
    revision: str
    model_file: str
    mmproj_file: str
    quant: str  # quantisation of model_file
    mmproj_quant: str
    model_bytes: int  # approximate
    mmproj_bytes: int  # approximate
    context_length: int  # trained context (max_position_embeddings)
    n_layer: int
    n_head_kv: int
    head_dim: int
    n_embd: int
    patch_size: int  # vision patch side in pixels: 14 (Qwen2/2.5-VL) or 16 (Qwen3-VL)
    thinking: bool  # a "Thinking" release that reasons in <think> before answering
    verified: bool  # repo id and file names confirmed from public references

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.mmproj_bytes

    def kv_bytes_per_token(self, bytes_per_elem: int = 2) -> int:
        """KV-cache bytes per token of context (`fit.kv_bytes_per_token`), from the registry's dimensions."""
        return kv_bytes_per_token(self.n_layer, self.n_head_kv, self.head_dim, bytes_per_elem)


def registry_resource() -> Traversable:
    """Where registry.json is: the installed ``vreason_local.registry_data`` package, or, in a source checkout
    that was never installed (where the ``models`` -> ``vreason_local.registry_data`` mapping of pyproject.toml
    does not exist), ``<repo>/models/registry.json`` next to the ``vreason_local`` folder."""
    try:
        return resources.files("vreason_local.registry_data").joinpath(REGISTRY_FILE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "models" / REGISTRY_FILE


_INT_FIELDS = {f.name for f in fields(ModelSpec) if f.type in ("int", int)}
_BOOL_FIELDS = {f.name for f in fields(ModelSpec) if f.type in ("bool", bool)}
_STR_FIELDS = {f.name for f in fields(ModelSpec)} - _INT_FIELDS - _BOOL_FIELDS


def _parse(entry: dict, where: str) -> ModelSpec:
    names = {f.name for f in fields(ModelSpec)}
    missing = sorted(names - entry.keys())
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(entry.keys() - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for key in _INT_FIELDS:
        if not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] <= 0:
            raise ValueError(f"{where}: {key} must be a positive integer")
    for key in _BOOL_FIELDS:
        if not isinstance(entry[key], bool):
            raise ValueError(f"{where}: {key} must be true or false")
    for key in _STR_FIELDS:
        if not isinstance(entry[key], str) or not entry[key]:
            raise ValueError(f"{where}: {key} must be a non-empty string")
    if entry["family"] not in FAMILIES:
        raise ValueError(f"{where}: family must be one of {', '.join(FAMILIES)}")
    if entry["patch_size"] != FAMILIES[entry["family"]].patch_size:
        raise ValueError(f"{where}: patch_size of a {entry['family']} model is {FAMILIES[entry['family']].patch_size}")
    for key in ("model_file", "mmproj_file"):
        if not entry[key].endswith(".gguf"):
            raise ValueError(f"{where}: {key} must be a .gguf file")
    return ModelSpec(**entry)


@lru_cache(maxsize=1)
def load_registry() -> dict[str, ModelSpec]:
    """All known models by name, in registry order. A broken registry is a bug, so it raises RuntimeError."""
    source = registry_resource()
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot read the model registry {source}: {e}") from e
    specs: dict[str, ModelSpec] = {}
    try:
        for i, entry in enumerate(data["models"]):
            spec = _parse(entry, f"{source} models[{i}]")
            if spec.name in specs:
                raise ValueError(f"{source}: duplicate model name {spec.name!r}")
            specs[spec.name] = spec
        if data.get("default") != DEFAULT_MODEL or DEFAULT_MODEL not in specs:
            raise ValueError(f"{source}: default must be {DEFAULT_MODEL!r} and be listed")
    except (KeyError, TypeError, ValueError) as e:
        raise RuntimeError(f"invalid model registry: {e}") from e
    return specs


def get_spec(name: str, or_else: str = "") -> ModelSpec:
    """The model called ``name`` (case-insensitive); `ModelMissing` listing the known names otherwise.

    `or_else`: what else the command takes in the name's place, said in the error ("pass the path to a .gguf
    file" for `--model`); commands that take names only (`models pull`) leave it out, so it never offers a
    path they cannot take."""
    specs = load_registry()
    key = name.strip().lower()
    if key in specs:
        return specs[key]
    # "qwen3-vl-4b-instruct" is the same model as "qwen3-vl-4b".
    if key.endswith("-instruct") and key[: -len("-instruct")] in specs:
        return specs[key[: -len("-instruct")]]
    close = difflib.get_close_matches(key, list(specs), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    alternative = f" (or {or_else})" if or_else else ""
    raise ModelMissing(f"unknown model {name!r}; {hint}known models: {', '.join(specs)}{alternative}")


__all__ = ["DEFAULT_MODEL", "ModelSpec", "get_spec", "load_registry", "registry_resource"]

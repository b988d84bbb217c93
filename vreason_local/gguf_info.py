"""What a GGUF file says about itself, read before llama.cpp loads it.

Reading the metadata first lets us refuse a wrong file with one clear line (llama.cpp would print pages
of log and return NULL) and size the context and the memory check from the real dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

LM_ARCHES = ("qwen2vl", "qwen3vl")
# clip.projector_type of each supported projector, and the language-model arch it feeds.
PROJECTORS = {"qwen2vl_merger": "qwen2vl", "qwen2.5vl_merger": "qwen2vl", "qwen3vl_merger": "qwen3vl"}


@dataclass(frozen=True)
class ModelInfo:
    """Dimensions of a Qwen-VL language model, as its GGUF states them."""

    path: Path
    arch: str
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    n_deepstack: int
    rms_eps: float
    random_weights: bool
    file_bytes: int

    @property
    def kv_bytes_per_token(self) -> int:
        """F16 K and V rows of every layer for one cached token."""
        return 2 * self.n_layer * self.n_head_kv * self.head_dim * 2


@dataclass(frozen=True)
class ProjectorInfo:
    """The vision projector (mmproj) a model needs for images and video."""

    path: Path
    projector_type: str
    projection_dim: int
    patch_size: int
    file_bytes: int

    @property
    def pixels_per_token(self) -> int:
        """Side in pixels of the square one vision token covers after the 2x2 merge."""
        return self.patch_size * 2


def _fields(path: Path) -> dict[str, object]:
    import gguf

    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # gguf raises ValueError/struct.error/etc. on non-GGUF input
        raise UserError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    out: dict[str, object] = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key != "tokenizer.ggml.model":
            continue  # large arrays; not needed here
        try:
            out[key] = field.contents()
        except Exception:
            continue
    # the vocabulary size is the row count of the token embedding
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            out["_n_vocab"] = int(t.shape[-1])
    return out


def read_model_info(path: Path) -> ModelInfo:
    """Metadata of a language-model GGUF; `UserError` unless it is a Qwen-VL text model."""
    f = _fields(path)
    arch = str(f.get("general.architecture", ""))
    if "clip.projector_type" in f or arch == "clip":
        raise UserError(f"{path} is a vision projector (mmproj), not a language model; pass it with --mmproj")
    if arch not in LM_ARCHES:
        raise UserError(
            f"{path} is a '{arch or 'unknown'}' model; vreason needs a Qwen-VL model "
            f"(Qwen2-VL, Qwen2.5-VL or Qwen3-VL GGUF; see `vreason models list`)"
        )
    n_embd = int(f[f"{arch}.embedding_length"])
    n_head = int(f[f"{arch}.attention.head_count"])
    head_dim = int(f.get(f"{arch}.attention.key_length", n_embd // n_head))
    return ModelInfo(
        path=path,
        arch=arch,
        name=str(f.get("general.name", path.stem)),
        n_layer=int(f[f"{arch}.block_count"]),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(f.get(f"{arch}.attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(f[f"{arch}.feed_forward_length"]),
        n_vocab=int(f.get("_n_vocab", 0)),
        n_ctx_train=int(f.get(f"{arch}.context_length", 4096)),
        n_deepstack=int(f.get(f"{arch}.n_deepstack_layers", 0)),
        rms_eps=float(f.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        random_weights=bool(f.get("vreason.random_weights", False)),
        file_bytes=path.stat().st_size,
    )


def read_projector_info(path: Path) -> ProjectorInfo:
    """Metadata of an mmproj GGUF; `UserError` unless it is a Qwen-VL projector."""
    f = _fields(path)
    ptype = str(f.get("clip.projector_type", ""))
    if ptype not in PROJECTORS:
        raise UserError(
            f"{path} is not a Qwen-VL vision projector (projector type '{ptype or 'none'}'); "
            f"expected one of {', '.join(PROJECTORS)}"
        )
    return ProjectorInfo(
        path=path,
        projector_type=ptype,
        projection_dim=int(f.get("clip.vision.projection_dim", 0)),
        patch_size=int(f.get("clip.vision.patch_size", 14)),
        file_bytes=path.stat().st_size,
    )


def check_pair(model: ModelInfo, proj: ProjectorInfo) -> None:
    """Refuse a projector built for another model: llama.cpp would crash or emit garbage."""
    want_arch = PROJECTORS[proj.projector_type]
    want_dim = model.n_embd  # Qwen3-VL's deepstack features ride along inside the projector's output
    if want_arch != model.arch or (proj.projection_dim and proj.projection_dim != want_dim):
        raise UserError(
            f"projector {proj.path.name} ({proj.projector_type}, output {proj.projection_dim}) does not match "
            f"model {model.path.name} ({model.arch}, embedding {want_dim}); use the mmproj file released with the model"
        )

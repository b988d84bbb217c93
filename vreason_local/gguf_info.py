"""What a GGUF file says about itself, read before llama.cpp loads it.

Reading the metadata first lets us refuse a wrong file with one clear line (llama.cpp would print pages
of log and return NULL) and size the context and the memory check from the real dimensions.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import Remedy, UserError
from .families import FAMILIES, LM_ARCHES, PROJECTORS
from .fit import kv_bytes_per_token


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
        """F16 K and V rows of every layer for one cached token (`fit.kv_bytes_per_token`)."""
        return kv_bytes_per_token(self.n_layer, self.n_head_kv, self.head_dim)


@dataclass(frozen=True)
class ProjectorInfo:
    """The vision projector (mmproj) a model needs for images and video."""

    path: Path
    projector_type: str
    projection_dim: int
    patch_size: int
    file_bytes: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    ggml_type: int
    offset: int  # absolute byte offset in the file


class CutShort(ValueError):
    """The file ends before the data its own header describes: an interrupted download or copy."""

    def __init__(self, size: int, needed: int | None) -> None:
        super().__init__(f"{size} bytes, needs {needed}")
        self.size = size
        self.needed = needed  # where the last tensor's data ends; None when the header itself is cut


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFFile:
    """A minimal GGUF reader: metadata and tensor locations, without materialising big arrays.

    `gguf.GGUFReader` builds numpy objects for every token and merge of a 151k vocabulary (hundreds of
    MB for a moment); we only need scalars, a few tensors and the vocabulary's size, and skip the rest.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: dict[str, object] = {}
        self.array_lengths: dict[str, int] = {}
        self.tensors: dict[str, TensorInfo] = {}
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            self._buf = mm  # parsed in place: only the metadata's pages are read, nothing is copied
            self._off = 0
            try:
                self._parse()
            except struct.error:  # a read past the end: the header itself is incomplete
                raise CutShort(len(mm), None) from None

    def _parse(self) -> None:
        if self._take("<I") != 0x46554747:  # b"GGUF"
            raise ValueError("no GGUF magic")
        version, n_tensors, n_kv = self._take("<I"), self._take("<Q"), self._take("<Q")
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        for _ in range(n_kv):
            key = self._string()
            vtype = self._take("<I")
            if vtype == _ARRAY:
                etype, n = self._take("<I"), self._take("<Q")
                self.array_lengths[key] = n
                if n <= 64:
                    self.fields[key] = [self._value(etype) for _ in range(n)]
                elif etype == _STRING:
                    self._skip_strings(n)
                else:  # large numeric arrays (token types, scores): skipped, their length is kept
                    self._off += n * struct.calcsize(_SCALARS[etype])
            else:
                self.fields[key] = self._value(vtype)
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._take("<I")
            shape = tuple(self._take("<Q") for _ in range(n_dims))
            infos.append((name, shape, self._take("<I"), self._take("<Q")))
        align = int(self.fields.get("general.alignment", 32))
        data_start = -(-self._off // align) * align
        self.tensors = {n: TensorInfo(n, s, t, data_start + o) for n, s, t, o in infos}
        # llama.cpp maps the tensors without checking that the file holds them; a cut-off file then fails
        # late (after the video is encoded) or reads garbage, so its length is checked here.
        data_end = max((t.offset + _tensor_nbytes(t) for t in self.tensors.values()), default=data_start)
        if data_end > len(self._buf):
            raise CutShort(len(self._buf), data_end)
        self._buf = None

    def _take(self, fmt: str):
        v = struct.unpack_from(fmt, self._buf, self._off)[0]
        self._off += struct.calcsize(fmt)
        return v

    def _string(self) -> str:
        n = self._take("<Q")
        s = self._buf[self._off : self._off + n].decode("utf-8", "replace")
        self._off += n
        return s

    def _skip_strings(self, n: int) -> None:
        for _ in range(n):
            self._off += 8 + struct.unpack_from("<Q", self._buf, self._off)[0]

    def _value(self, vtype: int):
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            etype, n = self._take("<I"), self._take("<Q")
            return [self._value(etype) for _ in range(n)]
        return self._take(_SCALARS[vtype])

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw data of a tensor as a read-only memory map, one row of bytes per ggml row."""
        import gguf

        t = self.tensors[name]
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ggml_type)]
        row_bytes = t.shape[0] // block * type_size
        n_rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        return np.memmap(self.path, np.uint8, "r", t.offset, (n_rows, row_bytes))


def _tensor_nbytes(t: TensorInfo) -> int:
    """Bytes of a tensor's data; 0 for a type newer than the gguf package knows (the check then still
    covers where that tensor starts)."""
    import gguf

    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ggml_type)]
    except (ValueError, KeyError):
        return 0
    return int(np.prod(t.shape, dtype=np.int64)) // block * type_size


def release_pages(raw: np.ndarray) -> None:
    """Drop this process's mapping of a memory-mapped tensor's pages once read.

    llama.cpp maps the same file, so the pages stay in the page cache; but every mapping that touched
    them counts them in the process's resident memory until it is unmapped or told to let go.
    """
    mm = getattr(raw, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def open_gguf(path: Path) -> GGUFFile:
    """Parse a GGUF file's header, or say in one line why it is not a usable one (read before any video
    work, so a bad file is reported first)."""
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise UserError(f"{path} is empty (0 bytes), not a GGUF file")
    if magic != b"GGUF":
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF signature)")
    try:
        return GGUFFile(path)
    except CutShort as cut:
        where = "inside its header" if cut.needed is None else f"before its data does (at {cut.needed:,} bytes)"
        raise UserError(
            f"{path} is incomplete: it ends at {cut.size:,} bytes, {where}; an interrupted download "
            "or copy leaves this, so download or copy it again"
        ) from None
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a readable GGUF file ({exc})") from None


def _fields(path: Path) -> dict[str, object]:
    g = open_gguf(path)
    out = dict(g.fields)
    embd = g.tensors.get("token_embd.weight")
    out["_n_vocab"] = embd.shape[1] if embd else g.array_lengths.get("tokenizer.ggml.tokens", 0)
    return out


def read_model_info(path: Path) -> ModelInfo:
    """Metadata of a language-model GGUF; `UserError` unless it is a Qwen-VL text model."""
    f = _fields(path)
    arch = str(f.get("general.architecture", ""))
    if "clip.projector_type" in f or arch == "clip":
        raise UserError(
            f"{path} is a vision projector (mmproj), not a language model",
            [Remedy("give it as the projector", "mmproj", str(path))],
        )
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
    """Refuse a projector built for another model: llama.cpp would crash or emit garbage.

    The message names what each file is for, by family (Qwen3-VL vs Qwen2.5-VL) and, within a family,
    by size (a 7B projector with a 3B model), since the raw types and widths mean nothing to a user.
    """
    want_arch = PROJECTORS[proj.projector_type]
    want_dim = model.n_embd  # Qwen3-VL's deepstack features ride along inside the projector's output
    if want_arch == model.arch and (not proj.projection_dim or proj.projection_dim == want_dim):
        return
    proj_family = next(f.display_name for f in FAMILIES.values() if f.projector_type == proj.projector_type)
    model_family = _model_family(model)
    if want_arch != model.arch:
        why = f"the projector is for {proj_family} but the model is {model_family}"
    else:
        why = (
            f"the projector is for {_sized(proj_family, proj.projection_dim)} but the model is "
            f"{_sized(model_family, model.n_embd)}"
        )
    raise UserError(
        f"projector {proj.path.name} does not match model {model.path.name}: {why}",
        [Remedy("the projector released with the model", "mmproj")],
    )


def _model_family(model: ModelInfo) -> str:
    """The family a language model belongs to, e.g. 'Qwen2.5-VL'. Qwen2-VL and Qwen2.5-VL share one
    architecture, so between them the model's name decides; 'Qwen2-VL or Qwen2.5-VL' when it does not say."""
    candidates = [f for f in FAMILIES.values() if f.lm_arch == model.arch]
    named = [f for f in candidates if _alnum(f.display_name) in _alnum(model.name)]
    if len(named) == 1:  # "qwen2vl" and "qwen25vl" are not part of each other: a name matches at most one
        return named[0].display_name
    return " or ".join(f.display_name for f in candidates)


def _alnum(text: str) -> str:
    """'Qwen2.5-VL-3B-Instruct' -> 'qwen25vl3binstruct', so names compare whatever their punctuation."""
    return "".join(c for c in text.lower() if c.isalnum())


def _sized(family: str, n_embd: int) -> str:
    """'a Qwen2.5-VL 7B model (3584-wide embeddings)': the size of the registry's models of that family
    and width when there are any, else the width alone."""
    from .registry import load_registry

    families = family.split(" or ")
    sizes = {
        m.group(1)
        for s in load_registry().values()
        if s.n_embd == n_embd
        and FAMILIES[s.family].display_name in families
        and (m := re.search(r"-(\d+(?:\.\d+)?B)\b", s.display_name))
    }
    size = f" {'/'.join(sorted(sizes))}" if sizes else ""
    return f"a {family}{size} model ({n_embd}-wide embeddings)"


def read_pair(model: Path, mmproj: Path | None) -> tuple[ModelInfo, ProjectorInfo | None]:
    """A language model and its projector (if any), read and checked against each other."""
    info = read_model_info(Path(model))
    projector = read_projector_info(Path(mmproj)) if mmproj else None
    if projector:
        check_pair(info, projector)
    return info, projector

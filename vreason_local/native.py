"""The package's native library (native/*.c, built as `vreason_local._vrhook`): loaded once, every exported
function declared once from one table, and its SIMD level.

`SIGNATURES` is the ctypes side of native/vr_native.h, which declares every export: one entry per function,
applied as the library loads, so every module calls the same declared functions (`library()`), and
tests/test_native_decls.py checks the table against the header's prototypes and structs (`Matrix`,
`GradDVArgs`). The two other C libraries V-Reason calls are declared here as well: llama.cpp's ggml-base, whose
tensor calls the value hook makes (`ggml()`, `GGML_SIGNATURES`), and the C library's memory calls
(`malloc_trim`, `madvise_pageout`).

Every kernel of the package's library (sampling, the GGUF row products, the optimiser's Adam step, the F16 conversion of the
value rows it writes) is compiled for several instruction sets and picks the CPU's best at run time.
``VREASON_SIMD`` forces one level for all of them together (native/vr_simd.c):

==========  ======  ===============================================================================
level       lanes   what runs
==========  ======  ===============================================================================
``avx512``  16      AVX-512F/BW kernels (x86-64 servers, some desktops)
``avx2``    8       AVX2 + FMA + F16C kernels: what most laptops run (Intel's client CPUs since Alder
                    Lake have no AVX-512)
``sse2``    4       the baseline build: SSE2 on x86-64, NEON on arm64 (``neon`` is the same level)
``scalar``  1       plain C on floats, as MSVC builds every kernel
==========  ======  ===============================================================================

so that a machine with AVX-512 runs, and tests, what a laptop runs. A level the CPU lacks is refused with
one line; unset (or ``auto``), each kernel takes the CPU's best. llama.cpp's own kernels are chosen when
llama.cpp is built (``GGML_NATIVE``, ``GGML_AVX512``, ...) and are not affected.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import platform
import sys
from typing import Any

from .errors import SettingError, UserError

#: VREASON_SIMD's values and the vector lanes each runs at.
SIMD_LANES = {"avx512": 16, "avx2": 8, "sse2": 4, "neon": 4, "scalar": 1}
_LEVEL_OF = {
    16: "avx512",
    8: "avx2",
    4: "neon" if platform.machine().lower() in ("arm64", "aarch64") else "sse2",
    1: "scalar",
}

_vp, _i32, _i64, _f32, _f64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_double
_sz, _int, _bool, _str = ctypes.c_size_t, ctypes.c_int, ctypes.c_bool, ctypes.c_char_p


class Matrix(ctypes.Structure):
    """vr_matrix (native/vr_native.h): a matrix where it lies, as native/vr_rows.c reads it
    (tail_weights.GGUFMatrix.as_native)."""

    _fields_ = [("type", _i32), ("data", _vp), ("n_rows", _i64), ("row_bytes", _i64), ("n_cols", _i64)]


class GradDVArgs(ctypes.Structure):
    """vr_grad_dv_args (native/vr_native.h): vr_tail_grad_dv's inputs and output, by name where 23 positional
    arguments were easy to misplace. tail.py fills one per tail and sets the vectors' addresses per call."""

    _fields_ = [
        ("down", ctypes.POINTER(Matrix)),
        ("gate", ctypes.POINTER(Matrix)),
        ("up", ctypes.POINTER(Matrix)),
        ("o", ctypes.POINTER(Matrix)),
        ("y", _vp),
        ("out_norm", _vp),
        ("ffn_inp", _vp),
        ("ffn_norm", _vp),
        ("gate_act", _vp),
        ("up_act", _vp),
        ("eps", _f32),
        ("grad_h", _vp),
        ("probs", _vp),
        ("probs_ld", _i64),
        ("v_base", _vp),
        ("dv", _vp),
        ("v_norm", _vp),
        ("n_head", _i32),
        ("n_kv", _i32),
        ("head_dim", _i32),
        ("n_rows", _i64),
        ("grad_dv", _vp),
        ("threads", _i32),
    ]


#: The C structs native.py mirrors, by their names in native/vr_native.h.
STRUCTS: dict[str, type[ctypes.Structure]] = {"vr_matrix": Matrix, "vr_grad_dv_args": GradDVArgs}

_matrix, _doubles = ctypes.POINTER(Matrix), ctypes.POINTER(_f64)
#: Every function the library exports (native/vr_native.h), name -> (argument types, result type): arrays go
#: as addresses (c_void_p), out-parameters ctypes passes by reference as typed pointers.
SIGNATURES: dict[str, tuple[tuple[Any, ...], Any]] = {
    # the SIMD switches (native/vr_simd.c sets every file's together) and the lanes each runs
    "vr_simd_use": ((_i32,), _i32),
    "vr_sampling_use": ((_i32,), _i32),
    "vr_rows_use": ((_i32,), _i32),
    "vr_tail_adam_use": ((_i32,), _i32),
    "vr_tail_use_f16c": ((_i32,), _i32),
    "vr_sampling_lanes": ((), _i32),
    "vr_rows_lanes": ((), _i32),
    "vr_tail_adam_lanes": ((), _i32),
    # native/vr_sampling.c: sampling.py, and tail.head_terms
    "vr_argmax_entropy": ((_vp, _i64, _doubles), _i64),
    "vr_softmax": ((_vp, _i64, _f32, _f32, _vp), _f64),
    "vr_draw": ((_vp, _i64, _f32, _f64), _i64),
    "vr_nucleus_hist_size": ((), _i64),
    "vr_nucleus_cut": ((_vp, _i64, _f64, _f64, _vp, _vp), _f32),
    "vr_head_terms": ((_vp, _vp, _i64, _i64, _vp, _vp, _vp), _i64),
    # native/vr_rows.c: tail_weights.GGUFMatrix
    "vr_rows_block": ((_i32,), _i32),
    "vr_rows_openmp": ((), _i32),
    "vr_rows_axpy": ((_i32, _vp, _i64, _i64, _vp, _i64, _vp, _vp, _i32), _i32),
    "vr_rows_dot": ((_i32, _vp, _i64, _i64, _vp, _i64, _vp, _vp, _i32), _i32),
    # native/vr_tail.c: tail.py and optim.py
    "vr_tail_grad_dv": ((ctypes.POINTER(GradDVArgs),), _i32),
    "vr_tail_rms_norm": ((_vp, _vp, _i64, _f32, _vp), None),
    "vr_tail_halves": ((_vp, _vp, _i32), None),
    "vr_tail_norm_preserving_change": ((_vp, _vp, _vp, _i64, _i32, _vp, _vp, _vp), _f64),
    "vr_tail_head_anchor": (
        (_matrix, _vp, _vp, _vp, _i64, _f64, _f64, _f64, _i32, _f64, _doubles, _vp, _vp, _vp, _i32),
        _i64,
    ),
    "vr_tail_selfcheck": ((_matrix, _vp, _i64, _vp, _vp, _i32), _f64),
    "vr_tail_adam": ((_vp, _vp, _vp, _vp, _i64, _f64, _f64, _f64, _f64, _i64), _f64),
    # native/vr_hook.c: hook.py's value hook and the mirror of ggml_tensor
    "vr_tensor_size": ((), _sz),
    "vr_name_offset": ((), _sz),
    "vr_view_src_offset": ((), _sz),
    "vr_tensor_type": ((_vp,), _i32),
    "vr_tensor_ne": ((_vp, _int), _i64),
    "vr_tensor_nb": ((_vp, _int), _sz),
    "vr_tensor_view_src": ((_vp,), _vp),
    "vr_tensor_name": ((_vp,), _str),
    "vr_tensor_data": ((_vp,), _vp),
    "vr_tensor_buffer": ((_vp,), _vp),
    "vr_hook_new": ((_vp,), _vp),
    "vr_hook_free": ((_vp,), None),
    "vr_hook_add_capture": ((_vp, _str, _sz), _int),
    "vr_hook_add_weight": ((_vp, _str), _int),
    "vr_hook_weight": ((_vp, _int), _vp),
    "vr_hook_set_cache_names": ((_vp, _str, _str), None),
    "vr_hook_enable": ((_vp, _int), None),
    "vr_hook_reset": ((_vp,), None),
    "vr_hook_capture": (
        (_vp, _int, ctypes.POINTER(_i64), ctypes.POINTER(_sz), ctypes.POINTER(_i64), ctypes.POINTER(_i32)),
        _vp,
    ),
    "vr_hook_cache": ((_vp, _int), _vp),
    "vr_hook_n_asked": ((_vp,), _i64),
    "vr_hook_n_observed": ((_vp,), _i64),
    # callbacks llama.cpp calls (Python passes their addresses), and the benchmark's timer of one
    "vr_hook_callback": ((_vp, _bool, _vp), _bool),
    "vr_abort_requested": ((_vp,), _bool),
    "vr_cancel_eval": ((_vp, _bool, _vp), _bool),
    "vr_time_callback": ((_vp, _vp, _vp, _i64), _f64),
    "vr_read_rows": ((_int, _i64, _i64, _vp, _i64, _vp), _i64),  # POSIX only
}
#: Exports a build may lack: the header declares vr_read_rows outside Windows only.
OPTIONAL = frozenset({"vr_read_rows"})

_lib: ctypes.CDLL | None = None


def _declare(lib: ctypes.CDLL, table: dict[str, tuple[tuple[Any, ...], Any]], optional: frozenset[str]) -> None:
    """Set each function's argument and result types from `table`; a missing one that is not `optional` is
    a UserError (a library built from other sources than this package's)."""
    for name, (args, res) in table.items():
        fn = getattr(lib, name, None)
        if fn is None:
            if name in optional:
                continue
            raise UserError(f"the native library has no {name}: reinstall vreason-local (pip install .)")
        fn.argtypes, fn.restype = list(args), res


def library() -> ctypes.CDLL:
    """The native library, every export declared (`SIGNATURES`), loaded once at the SIMD level VREASON_SIMD
    asks for (the CPU's best if unset). Per-token code keeps it (sampling.Sampler) rather than call this each time."""
    global _lib
    if _lib is None:
        spec = importlib.util.find_spec("vreason_local._vrhook")
        if spec is None or not spec.origin:
            raise UserError("the native library is not built; reinstall vreason-local (pip install .)")
        lib = ctypes.CDLL(spec.origin)
        _declare(lib, SIGNATURES, OPTIONAL)
        _lib = lib
        try:
            use_default_simd()
        except SettingError:
            _lib = None  # refused again at the next use, not run at another level
            raise
    return _lib


class GGMLInitParams(ctypes.Structure):
    """ggml_init's struct ggml_init_params (ggml/include/ggml.h), passed by value."""

    _fields_ = [("mem_size", _sz), ("mem_buffer", _vp), ("no_alloc", _bool)]


#: The functions of llama.cpp's ggml-base (ggml.h, ggml-backend.h of the pinned llama.cpp) the value hook
#: calls: the cache's reads and writes, and the tensors hook.verify_layout builds to check the mirror.
GGML_SIGNATURES: dict[str, tuple[tuple[Any, ...], Any]] = {
    "ggml_backend_tensor_get": ((_vp, _vp, _sz, _sz), None),
    "ggml_backend_tensor_set": ((_vp, _vp, _sz, _sz), None),
    "ggml_backend_buffer_is_host": ((_vp,), _bool),
    "ggml_init": ((GGMLInitParams,), _vp),
    "ggml_free": ((_vp,), None),
    "ggml_tensor_overhead": ((), _sz),
    "ggml_new_tensor_2d": ((_vp, _int, _i64, _i64), _vp),
    "ggml_view_1d": ((_vp, _vp, _i64, _sz), _vp),
    "ggml_set_name": ((_vp, _str), _vp),
    "ggml_get_name": ((_vp,), _vp),
}


@functools.cache
def ggml() -> ctypes.CDLL:
    """llama.cpp's ggml-base, as llama-cpp-python loaded it, with `GGML_SIGNATURES` declared; its
    `dequantize_row_<type>` functions (tail_weights.dequantize) are called with typed arguments."""
    from llama_cpp._ctypes_extensions import load_shared_library
    from llama_cpp.llama_cpp import _base_path

    lib = load_shared_library("ggml-base", _base_path)
    _declare(lib, GGML_SIGNATURES, frozenset())
    return lib


#: The C library's memory calls tail_weights makes to give memory back (malloc_trim is glibc's, MADV_PAGEOUT Linux's).
LIBC_SIGNATURES: dict[str, tuple[tuple[Any, ...], Any]] = {
    "malloc_trim": ((_sz,), _int),
    "madvise": ((_vp, _sz, _int), _int),
}


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The process's C library with `LIBC_SIGNATURES` declared (those it has: musl has no malloc_trim); None
    off Linux, where V-Reason makes neither call."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    _declare(libc, LIBC_SIGNATURES, frozenset(LIBC_SIGNATURES))
    return libc


def malloc_trim() -> None:
    """glibc's malloc_trim(0): hand the heap's freed blocks back to the OS (tail_weights.return_freed_memory);
    nothing where there is no glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def madvise_pageout(start: int, length: int) -> bool:
    """madvise(MADV_PAGEOUT) on [start, start + length): drop those pages from the process's resident memory
    (tail_weights.release_torch_pages). False where refused (EINVAL before Linux 5.4) or not Linux."""
    libc = _libc()
    return libc is not None and hasattr(libc, "madvise") and libc.madvise(start, length, 21) == 0


def available_simd() -> list[str]:
    """The levels this build and CPU can run, widest first."""
    lib = library()
    current = lib.vr_rows_lanes()
    levels = [name for lanes, name in _LEVEL_OF.items() if lib.vr_simd_use(lanes) == lanes]
    lib.vr_simd_use(current)
    return levels


def use_simd(level: str) -> str:
    """Run every native kernel at `level` (a SIMD_LANES key; "" or "auto": the CPU's best) from now on;
    returns the level in use. A level this CPU or build lacks is a SettingError naming the ones it has."""
    name = level.strip().lower()
    lib = library()
    if name in ("", "auto"):
        lib.vr_simd_use(0)
        return simd_level()
    if name not in SIMD_LANES:
        raise SettingError(
            "simd", level, f"VREASON_SIMD={level} is not a SIMD level (use one of: auto, {', '.join(SIMD_LANES)})"
        )
    if SIMD_LANES[name] == 4 and name != _LEVEL_OF[4] or lib.vr_simd_use(SIMD_LANES[name]) < 0:  # neon on x86
        raise SettingError(
            "simd",
            level,
            f"VREASON_SIMD={level}: this CPU or build cannot run it (it can: {', '.join(available_simd())})",
        )
    return simd_level()


def use_default_simd() -> str:
    """Back to the level VREASON_SIMD asks for (the CPU's best if unset), after a test ran another."""
    return use_simd(os.environ.get("VREASON_SIMD", ""))


def simd_level() -> str:
    """The level the kernels run at now: the name of the lanes of the row products (which every level has)."""
    return _LEVEL_OF[library().vr_rows_lanes()]

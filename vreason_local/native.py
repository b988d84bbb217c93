"""The package's native library (native/*.c, built as `vreason_local._vrhook`), loaded once, and its SIMD level.

Every kernel in it (sampling, the GGUF row products, the optimiser's Adam step, the F16 conversion of the
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
import importlib.util
import os
import platform

from .errors import SettingError, UserError

#: VREASON_SIMD's values and the vector lanes each runs at.
SIMD_LANES = {"avx512": 16, "avx2": 8, "sse2": 4, "neon": 4, "scalar": 1}
_LEVEL_OF = {
    16: "avx512",
    8: "avx2",
    4: "neon" if platform.machine().lower() in ("arm64", "aarch64") else "sse2",
    1: "scalar",
}

_lib: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """The native library, loaded once at the SIMD level VREASON_SIMD asks for (the CPU's best if unset)."""
    global _lib
    if _lib is None:
        spec = importlib.util.find_spec("vreason_local._vrhook")
        if spec is None or not spec.origin:
            raise UserError("the native library is not built; reinstall vreason-local (pip install .)")
        lib = ctypes.CDLL(spec.origin)
        i32 = ctypes.c_int32
        for name in ("vr_simd_use", "vr_sampling_use", "vr_rows_use", "vr_tail_adam_use", "vr_tail_use_f16c"):
            getattr(lib, name).argtypes, getattr(lib, name).restype = [i32], i32
        for name in ("vr_sampling_lanes", "vr_rows_lanes", "vr_tail_adam_lanes"):
            getattr(lib, name).argtypes, getattr(lib, name).restype = [], i32
        _lib = lib
        try:
            use_default_simd()
        except SettingError:
            _lib = None  # refused again at the next use, not run at another level
            raise
    return _lib


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

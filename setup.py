"""Builds the native helpers with the package: the value-cache hook (native/vr_hook.c), the per-token
entropy and sampling kernels (native/vr_sampling.c), the V-Reason tail's products with GGUF rows
(native/vr_rows.c) and its first step on the CPU (native/vr_tail.c), with one switch for their SIMD level
(native/vr_simd.c): one library reached through ctypes.
Everything else is in pyproject.toml."""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError, LinkError


class BuildExt(build_ext):
    """GCC needs -fno-trapping-math to vectorise vr_sampling.c's selects (a float compare may trap, so
    it will not if-convert them otherwise) and -fno-math-errno to inline sqrtf; the arithmetic stays IEEE. MSVC builds its scalar path as is.
    vr_rows.c shares its products across OpenMP's threads (the runtime llama.cpp and torch load) where the
    compiler has OpenMP (GCC, MSVC); otherwise (Apple's clang, a clang without libomp) it is built again
    without, and runs them on one thread."""

    def build_extensions(self) -> None:
        msvc = self.compiler.compiler_type == "msvc"
        openmp = ["/openmp"] if msvc else ["-fopenmp"]
        for ext in self.extensions:
            if not msvc:  # sqrtf inlined and vectorised too (vr_tail.c's Adam): errno is never read
                ext.extra_compile_args += ["-fno-trapping-math", "-fno-math-errno"]
            if sys.platform != "darwin":
                ext.extra_compile_args += openmp
                ext.extra_link_args += [] if msvc else openmp
        try:
            super().build_extensions()
        except (CompileError, LinkError):
            for ext in self.extensions:
                ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in openmp]
                ext.extra_link_args = [a for a in ext.extra_link_args if a not in openmp]
            super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "vreason_local._vrhook",
            ["native/vr_hook.c", "native/vr_sampling.c", "native/vr_rows.c", "native/vr_tail.c", "native/vr_simd.c"],
            depends=["native/vr_native.h"],
            extra_compile_args=[],
        )
    ],
    cmdclass={"build_ext": BuildExt},
)

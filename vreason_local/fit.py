"""Will the model fit? A memory check made before llama.cpp loads anything.

llama.cpp needs, at once: the language-model weights, the vision projector (mmproj), the KV cache for every
token of the context (video frames are most of it) and some compute buffers. Running out of memory halfway
through loading means swapping, an OOM kill or a driver error, long after the user could have chosen fewer
frames. So we add the parts up first and refuse with one line that says what to change.

Where the memory number comes from (`available_memory`):

- Linux: ``MemAvailable`` from /proc/meminfo, capped by a cgroup v2/v1 memory limit when one is set
  (containers, systemd slices).
- macOS: ``hw.memsize`` for the total; free + inactive + speculative + purgeable pages from ``vm_stat`` for
  what is available. On Apple Silicon (arm64) the GPU can only wire part of unified memory:
  ``iogpu.wired_limit_mb`` when the user raised it (non-zero), otherwise Metal's default working-set limit,
  which we take as 2/3 of RAM up to 36 GiB and 3/4 of RAM above (what Metal reports as
  ``recommendedMaxWorkingSetSize`` on those machines). That limit becomes ``MemoryInfo.limit``.
- Windows: ``GlobalMemoryStatusEx`` through ctypes.
- GPU builds (CUDA, Vulkan): the free memory of the first dedicated GPU in ggml's device registry is
  recorded too, and the check uses it, since such a build of llama.cpp puts weights and KV cache there.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

GiB = 1 << 30

# Compute buffers, the CLIP graph for one batch of frames, and allocator slack. An estimate, not a
# measurement: callers that know better (e.g. from llama.cpp's reported buffer sizes) pass their own.
DEFAULT_OVERHEAD_BYTES = 800 * 1000 * 1000

# Apple Silicon: fraction of RAM Metal lets the GPU wire by default (see module docstring).
_APPLE_SMALL_RAM = 36 * GiB
_APPLE_SMALL_FRACTION = 2 / 3
_APPLE_LARGE_FRACTION = 3 / 4


def format_bytes(n: float) -> str:
    """Decimal units, one decimal place, the way download sizes are shown: 1_929_901_056 -> '1.9 GB'."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _gb(n: float) -> str:
    """A bare number of GB for the parts of a sum: 4_200_000_000 -> '4.2'."""
    return f"{n / 1e9:.1f}"


def format_tokens(n: int) -> str:
    """38_000 -> '38k', 1_200_000 -> '1.2M', 900 -> '900'."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return str(n)


def kv_bytes_per_token(n_layer: int, n_head_kv: int, head_dim: int, bytes_per_elem: int = 2) -> int:
    """Bytes of KV cache one token takes: a K and a V row per layer, ``n_head_kv * head_dim`` wide.

    ``bytes_per_elem`` is 2 for the default f16 cache, 1 for q8_0 (ignoring its small block scales).
    """
    dims = {"n_layer": n_layer, "n_head_kv": n_head_kv, "head_dim": head_dim, "bytes_per_elem": bytes_per_elem}
    for name, v in dims.items():
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    return 2 * n_layer * n_head_kv * head_dim * bytes_per_elem


@dataclass(frozen=True)
class MemoryInfo:
    """Memory on this machine, in bytes.

    ``available`` is what the OS could hand out now; ``limit`` is a cap below that which applies to the model
    (cgroup limit, Apple GPU wired limit), or None. ``gpu_total``/``gpu_free`` are set when a dedicated GPU is
    visible. ``budget`` is the single number the fit check compares against.
    """

    total: int
    available: int
    limit: int | None
    source: str
    gpu_total: int | None = None
    gpu_free: int | None = None

    @property
    def budget(self) -> int:
        if self.gpu_free is not None:
            return self.gpu_free
        if self.limit is not None:
            return min(self.available, self.limit)
        return self.available


def _linux_memory() -> tuple[int, int, int | None, str]:
    fields: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                fields[key] = int(parts[0]) * 1024  # values are kB
    total = fields["MemTotal"]
    available = fields.get("MemAvailable", fields.get("MemFree", 0) + fields.get("Cached", 0))
    limit = _cgroup_limit()
    source = "/proc/meminfo MemAvailable"
    if limit is not None and limit < total:
        source += " (cgroup limit applies)"
    else:
        limit = None
    return total, available, limit, source


def _cgroup_limit() -> int | None:
    """What this process's cgroup still allows: its memory limit minus the anonymous memory already in it
    (page cache is reclaimable, so it is not subtracted). None when there is no limit."""
    for base, limit_name, stat_keys in (
        ("/sys/fs/cgroup", "memory.max", ("anon",)),  # v2
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", ("total_rss", "rss")),  # v1
    ):
        try:
            raw = Path(base, limit_name).read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        try:
            limit = int(raw)
        except ValueError:
            return None
        if limit >= 1 << 60:  # v1 spells "unlimited" as a huge number
            return None
        used = 0
        try:
            lines = Path(base, "memory.stat").read_text().splitlines()
            stat = dict(line.split() for line in lines if line.count(" ") == 1)
            used = next((int(stat[k]) for k in stat_keys if k in stat), 0)
        except (OSError, ValueError):
            pass
        return max(limit - used, 0)
    return None


def _sysctl(name: str) -> int | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=True).stdout
        return int(out.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def apple_gpu_limit(total: int, wired_limit_mb: int | None) -> int:
    """How much of ``total`` RAM the Apple Silicon GPU may wire: the user's ``iogpu.wired_limit_mb`` when
    non-zero, otherwise 2/3 of RAM up to 36 GiB and 3/4 above."""
    if wired_limit_mb:
        return wired_limit_mb * 1024 * 1024
    fraction = _APPLE_SMALL_FRACTION if total <= _APPLE_SMALL_RAM else _APPLE_LARGE_FRACTION
    return int(total * fraction)


def _macos_memory() -> tuple[int, int, int | None, str]:
    total = _sysctl("hw.memsize") or 0
    available = total
    try:
        out = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5, check=True).stdout
        page = int(m.group(1)) if (m := re.search(r"page size of (\d+) bytes", out)) else 4096
        pages = {k.strip(): int(v.strip().rstrip(".")) for k, v in re.findall(r"^([^:\n]+):\s+(\d+)\.?$", out, re.M)}
        free = sum(pages.get(k, 0) for k in ("Pages free", "Pages inactive", "Pages speculative", "Pages purgeable"))
        if free:
            available = free * page
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    limit = None
    source = "sysctl hw.memsize + vm_stat"
    if platform.machine() == "arm64":
        wired = _sysctl("iogpu.wired_limit_mb")
        limit = apple_gpu_limit(total, wired)
        source += f" (GPU wired limit {'iogpu.wired_limit_mb' if wired else 'default'})"
    return total, available, limit, source


def _windows_memory() -> tuple[int, int, int | None, str]:
    class MEMORYSTATUSEX(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_ulong),
            ("dwMemoryLoad", ctypes.c_ulong),
            ("ullTotalPhys", ctypes.c_ulonglong),
            ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong),
            ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong),
            ("ullAvailVirtual", ctypes.c_ulonglong),
            ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    stat = MEMORYSTATUSEX()
    stat.dwLength = ctypes.sizeof(MEMORYSTATUSEX)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(stat)):  # type: ignore[attr-defined]
        raise OSError("GlobalMemoryStatusEx failed")
    return int(stat.ullTotalPhys), int(stat.ullAvailPhys), None, "GlobalMemoryStatusEx"


def _posix_memory() -> tuple[int, int, int | None, str]:
    """Any other POSIX system: physical and free pages from sysconf."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        available = os.sysconf("SC_AVPHYS_PAGES") * page
    except (AttributeError, ValueError, OSError) as e:
        raise UserError(f"cannot read how much memory this {sys.platform} machine has ({e})") from e
    return total, available, None, "sysconf"


def _gpu_memory() -> tuple[int, int] | None:
    """(total, free) of the first dedicated GPU llama.cpp itself sees (CUDA, Vulkan, ...), or None.

    Asked of ggml's device registry rather than of PyTorch: it is the memory llama.cpp will use, and a
    base run need not import torch for it. Apple's unified memory is handled by the macOS rule above.
    """
    if sys.platform == "darwin":
        return None
    try:
        from llama_cpp._ctypes_extensions import load_shared_library
        from llama_cpp.llama_cpp import _base_path

        ggml = load_shared_library("ggml", _base_path)
        base = load_shared_library("ggml-base", _base_path)
        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.argtypes, ggml.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
        base.ggml_backend_dev_type.argtypes, base.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
        base.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
        for i in range(ggml.ggml_backend_dev_count()):
            dev = ggml.ggml_backend_dev_get(i)
            if base.ggml_backend_dev_type(dev) == _GGML_DEVICE_TYPE_GPU:
                free, total = ctypes.c_size_t(), ctypes.c_size_t()
                base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
                return int(total.value), int(free.value)
    except (OSError, AttributeError):  # a build without the registry API: fall back to system memory
        return None
    return None


_GGML_DEVICE_TYPE_GPU = 1  # enum ggml_backend_dev_type (ggml-backend.h)


def available_memory(use_gpu: bool = True) -> MemoryInfo:
    """What this machine can give the model now. With ``use_gpu`` a dedicated GPU's free memory is
    what the fit check uses (see `MemoryInfo.budget`)."""
    if sys.platform.startswith("linux"):
        total, available, limit, source = _linux_memory()
    elif sys.platform == "darwin":
        total, available, limit, source = _macos_memory()
    elif sys.platform == "win32":
        total, available, limit, source = _windows_memory()
    else:
        total, available, limit, source = _posix_memory()
    gpu = _gpu_memory() if use_gpu else None
    if gpu is not None:
        source += " + GPU free memory (ggml)"
    return MemoryInfo(
        total=total,
        available=available,
        limit=limit,
        source=source,
        gpu_total=gpu[0] if gpu else None,
        gpu_free=gpu[1] if gpu else None,
    )


@dataclass(frozen=True)
class FitReport:
    """The sum, what there is, and what to do about it (``advice`` is empty when it fits)."""

    needed: int
    available: int
    fits: bool
    advice: str
    model_bytes: int
    mmproj_bytes: int
    kv_bytes: int
    overhead_bytes: int
    n_ctx_tokens: int
    max_ctx_tokens: int  # the most tokens that would fit with these weights; 0 when the weights alone don't

    @property
    def summary(self) -> str:
        """'needs 9.1 GB (model 4.2 + projector 1.3 + KV 3.1 for 38k tokens + overhead 0.8) but 6.0 GB is available'."""
        return (
            f"needs {format_bytes(self.needed)} (model {_gb(self.model_bytes)} + projector {_gb(self.mmproj_bytes)}"
            f" + KV {_gb(self.kv_bytes)} for {format_tokens(self.n_ctx_tokens)} tokens"
            f" + overhead {_gb(self.overhead_bytes)}) but {format_bytes(self.available)} is available"
        )

    def require(self) -> "FitReport":
        """This report, or a `UserError` with the sum and the advice when it does not fit."""
        if not self.fits:
            raise UserError(f"{self.summary}; {self.advice}")
        return self


def check_fit(
    model_bytes: int,
    mmproj_bytes: int,
    n_ctx_tokens: int,
    kv_per_token: int,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
    mem: MemoryInfo | None = None,
    *,
    frames: int | None = None,
    tokens_per_frame: int | None = None,
) -> FitReport:
    """Add up weights + projector + KV cache for ``n_ctx_tokens`` + overhead and compare with ``mem.budget``.

    When ``frames`` and ``tokens_per_frame`` describe how the context was filled, the advice names a
    ``--max-frames`` value that would fit.
    """
    if mem is None:
        mem = available_memory()
    kv = n_ctx_tokens * kv_per_token
    needed = model_bytes + mmproj_bytes + kv + overhead_bytes
    budget = mem.budget
    fixed = model_bytes + mmproj_bytes + overhead_bytes
    max_ctx = max((budget - fixed) // kv_per_token, 0) if kv_per_token > 0 else 0
    fits = needed <= budget
    advice = ""
    if not fits:
        if fixed > budget:
            advice = (
                "the weights alone do not fit; use a smaller model or quantisation (vreason models list),"
                " or close other programs"
            )
        else:
            hints = []
            if frames and tokens_per_frame:
                other = max(n_ctx_tokens - frames * tokens_per_frame, 0)
                fit_frames = (max_ctx - other) // tokens_per_frame
                if fit_frames >= 1:
                    hints.append(f"--max-frames {int(fit_frames)}")
                hints.append("--fps 0.5")
            else:
                hints += ["fewer frames (--max-frames)", "a lower --fps"]
            hints.append("a lower frame resolution")
            hints.append("a smaller --max-tokens")
            advice = (
                f"try {' or '.join(hints[:2])}, {', '.join(hints[2:])}"
                f" (about {format_tokens(int(max_ctx))} tokens fit), or a smaller model (vreason models list)"
            )
    return FitReport(
        needed=needed,
        available=budget,
        fits=fits,
        advice=advice,
        model_bytes=model_bytes,
        mmproj_bytes=mmproj_bytes,
        kv_bytes=kv,
        overhead_bytes=overhead_bytes,
        n_ctx_tokens=n_ctx_tokens,
        max_ctx_tokens=int(max_ctx),
    )


__all__ = [
    "DEFAULT_OVERHEAD_BYTES",
    "FitReport",
    "MemoryInfo",
    "apple_gpu_limit",
    "available_memory",
    "check_fit",
    "format_bytes",
    "format_tokens",
    "kv_bytes_per_token",
]

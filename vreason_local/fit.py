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
  A CPU-only run (no layers offloaded, or a build without GPU offload) is checked against system memory
  instead, and on Apple Silicon without the GPU's wired limit: a small or busy GPU must not refuse it.

The advice is structured (`errors.Remedy`: a setting and a value) and each value is checked to fit
before it is given, with the same context sizing the run uses (`context_size`).
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ContextTooSmall, DoesNotFit, Remedy, UserError

GiB = 1 << 30

# Compute buffers, the CLIP graph for one batch of frames, and allocator slack. An estimate, not a
# measurement: callers that know better (e.g. from llama.cpp's reported buffer sizes) pass their own.
DEFAULT_OVERHEAD_BYTES = 800 * 1000 * 1000

# Apple Silicon: fraction of RAM Metal lets the GPU wire by default (see module docstring).
_APPLE_SMALL_RAM = 36 * GiB
_APPLE_SMALL_FRACTION = 2 / 3
_APPLE_LARGE_FRACTION = 3 / 4

# A context is sized to what the prompt and the answer need, rounded up to CONTEXT_STEP tokens and never
# below CONTEXT_FLOOR (a short question still gets room for a reasoned answer).
CONTEXT_FLOOR = 2048
CONTEXT_STEP = 256
# Advice never shrinks the answer below this many tokens: a reasoned answer needs room to reason.
MIN_USEFUL_ANSWER = 64


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
        """What a run that offloads to the GPU may use: the GPU's free memory when there is one."""
        return self.gpu_free if self.gpu_free is not None else self.system_budget

    @property
    def system_budget(self) -> int:
        """What a run on the CPU may use: available system memory, under any limit."""
        return min(self.available, self.limit) if self.limit is not None else self.available


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


def _macos_memory(gpu: bool) -> tuple[int, int, int | None, str]:
    """Memory of a Mac; with `gpu`, capped on Apple Silicon by what Metal lets the GPU wire."""
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
    if gpu and platform.machine() == "arm64":
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
        base.ggml_backend_dev_memory.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_size_t),
        ]
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
    what the fit check uses (see `MemoryInfo.budget`); without it Apple's GPU wired limit does not apply."""
    if sys.platform.startswith("linux"):
        total, available, limit, source = _linux_memory()
    elif sys.platform == "darwin":
        total, available, limit, source = _macos_memory(use_gpu)
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


def round_up_context(needed: int) -> int:
    """``needed`` tokens rounded up to a whole number of CONTEXT_STEP."""
    return -(-needed // CONTEXT_STEP) * CONTEXT_STEP


def context_size(needed: int) -> int:
    """The context a run gets for a prompt and answer of ``needed`` tokens (see CONTEXT_FLOOR)."""
    return max(CONTEXT_FLOOR, round_up_context(needed))


@dataclass(frozen=True)
class ContextUse:
    """What fills the context, so that the fit check can work out which smaller settings would fit.

    ``needed``: tokens the prompt and the answer need, of which ``answer`` are the answer's (the
    generation limit) and ``video_tokens`` those of ``frames`` video frames (0 without a video), whose
    lower limit is ``min_frames``. ``user_set``: the user chose the context size, so it stays that size
    whatever fills it.
    """

    needed: int
    answer: int = 0
    frames: int = 0
    video_tokens: int = 0
    min_frames: int = 2
    user_set: bool = False


@dataclass(frozen=True)
class FitReport:
    """The sum, what there is, and what to do about it (``remedies`` is empty when it fits)."""

    needed: int
    available: int
    fits: bool
    remedies: tuple[Remedy, ...]
    model_bytes: int
    mmproj_bytes: int
    kv_bytes: int
    overhead_bytes: int
    n_ctx_tokens: int
    max_ctx_tokens: int  # the most tokens that would fit with these weights; 0 when the weights alone don't
    on_gpu: bool  # compared with the GPU's free memory rather than system memory

    @property
    def weights_fit(self) -> bool:
        """Whether the model, the projector and the overhead fit without any context."""
        return self.model_bytes + self.mmproj_bytes + self.overhead_bytes <= self.available

    @property
    def summary(self) -> str:
        """'needs 9.1 GB (model 4.2 + projector 1.3 + KV 3.1 for 38k tokens + overhead 0.8) but 6.0 GB is available'."""
        where = " of GPU memory" if self.on_gpu else ""
        return (
            f"needs {format_bytes(self.needed)} (model {_gb(self.model_bytes)} + projector {_gb(self.mmproj_bytes)}"
            f" + KV {_gb(self.kv_bytes)} for {format_tokens(self.n_ctx_tokens)} tokens"
            f" + overhead {_gb(self.overhead_bytes)}) but {format_bytes(self.available)}{where} is available"
        )

    def require(self) -> FitReport:
        """This report, or a `DoesNotFit` with the sum and the remedies when it does not fit."""
        if not self.fits:
            problem = self.summary if self.weights_fit else f"{self.summary}: the model alone does not fit"
            raise DoesNotFit(problem, self.remedies)
        return self


def check_fit(
    model_bytes: int,
    mmproj_bytes: int,
    n_ctx_tokens: int,
    kv_per_token: int,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
    mem: MemoryInfo | None = None,
    *,
    cpu_only: bool = False,
    use: ContextUse | None = None,
    context_for: Callable[[int], int] = context_size,
) -> FitReport:
    """Add up weights + projector + KV cache for ``n_ctx_tokens`` + overhead and compare with the budget.

    ``cpu_only``: nothing is offloaded (no GPU layers, or a build without GPU offload), so system memory
    is the budget even where a GPU is present. When ``use`` says what fills the context, the remedies
    name values that fit, each checked with ``context_for`` (how the run sizes its context from the
    tokens it needs): fewer frames, a smaller context the user set, a shorter answer; then running on
    the CPU where system memory holds it all, and a smaller model only when nothing else fits.
    """
    if mem is None:
        mem = available_memory(use_gpu=not cpu_only)
    on_gpu = not cpu_only and mem.gpu_free is not None
    budget = mem.budget if on_gpu else mem.system_budget
    kv = n_ctx_tokens * kv_per_token
    needed = model_bytes + mmproj_bytes + kv + overhead_bytes
    fixed = model_bytes + mmproj_bytes + overhead_bytes
    max_ctx = max((budget - fixed) // kv_per_token, 0) if kv_per_token > 0 else 0
    fits = needed <= budget
    remedies: list[Remedy] = []
    if not fits:
        if fixed <= budget and use is not None:
            remedies += _smaller_settings(use, n_ctx_tokens, max_ctx, context_for)
        if on_gpu and needed <= mem.system_budget:
            remedies.append(Remedy("run on the CPU", "engine.n_gpu_layers", 0))
        if not remedies:
            remedies.append(Remedy("a smaller model from vreason models list", "model"))
    return FitReport(
        needed=needed,
        available=budget,
        fits=fits,
        remedies=tuple(remedies),
        model_bytes=model_bytes,
        mmproj_bytes=mmproj_bytes,
        kv_bytes=kv,
        overhead_bytes=overhead_bytes,
        n_ctx_tokens=n_ctx_tokens,
        max_ctx_tokens=int(max_ctx),
        on_gpu=on_gpu,
    )


def check_context(needed: int, n_ctx: int | None, n_ctx_train: int, use: ContextUse | None = None) -> None:
    """`needed` tokens must fit a context the user fixed (`n_ctx`), or else the model's trained context,
    up to which an automatic context grows. The remedies name values that fit where `use` says what fills
    the context (fewer frames, a shorter answer), else a shorter question: never a change that cannot help."""
    limit = n_ctx or n_ctx_train
    if needed <= limit:
        return
    if n_ctx is not None and needed <= n_ctx_train:
        raise ContextTooSmall(
            needed, limit, True, [Remedy("a larger context", "engine.n_ctx", round_up_context(needed))]
        )
    use = ContextUse(needed) if use is None else use
    remedies = _smaller_settings(
        ContextUse(needed, use.answer, use.frames, use.video_tokens, use.min_frames), limit, limit, lambda n: n
    )
    if not remedies:
        remedies = [Remedy("a shorter question")]
    raise ContextTooSmall(needed, limit, n_ctx is not None, remedies)


def _smaller_settings(use: ContextUse, n_ctx: int, max_ctx: int, context_for: Callable[[int], int]) -> list[Remedy]:
    """The largest frame limit, context size and answer length that bring the context down to ``max_ctx``
    tokens, each alone, each a value the settings accept; none of a kind when no such value fits."""
    remedies = []
    if use.user_set:  # the context keeps its size: only a smaller one helps, if it still holds the prompt
        smaller = min(n_ctx - 1, max_ctx) // CONTEXT_STEP * CONTEXT_STEP
        if smaller >= max(use.needed, CONTEXT_STEP):
            remedies.append(Remedy("a smaller context", "engine.n_ctx", smaller))
        return remedies

    def fits(needed: int) -> bool:
        return context_for(needed) <= max_ctx

    if use.frames:
        # Qwen takes frames in pairs: even counts from the lower limit (at least 2) up to two fewer than now.
        low = max(2, use.min_frames + use.min_frames % 2)
        other = use.needed - use.video_tokens

        def frames_fit(pairs: int) -> bool:
            return fits(other + use.video_tokens * 2 * pairs // use.frames)

        pairs = _largest(low // 2, (use.frames - 1) // 2, frames_fit)
        if pairs is not None:
            remedies.append(Remedy("fewer frames", "frames.max_frames", 2 * pairs))
    if use.answer > MIN_USEFUL_ANSWER:
        rest = use.needed - use.answer
        answer = _largest(MIN_USEFUL_ANSWER, use.answer - 1, lambda n: fits(rest + n))
        if answer is not None:
            remedies.append(Remedy("a shorter answer", "generation.max_tokens", answer))
    return remedies


def _largest(low: int, high: int, ok: Callable[[int], bool]) -> int | None:
    """The largest x in [low, high] with ok(x), for an ok that holds up to some point and not after;
    None when it does not hold at `low` (or the range is empty)."""
    if high < low or not ok(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if ok(middle):
            low = middle
        else:
            high = middle - 1
    return low


__all__ = [
    "CONTEXT_FLOOR",
    "ContextUse",
    "DEFAULT_OVERHEAD_BYTES",
    "FitReport",
    "MemoryInfo",
    "apple_gpu_limit",
    "available_memory",
    "check_context",
    "check_fit",
    "context_size",
    "format_bytes",
    "format_tokens",
    "kv_bytes_per_token",
    "round_up_context",
]

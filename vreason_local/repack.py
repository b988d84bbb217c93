"""Whether llama.cpp may repack quantised weights on this machine.

On x86 CPUs with AMX, llama.cpp 0.3.36 repacks quantised weights into its AMX buffer type at load and
the first matrix multiply then segfaults (llama.cpp issue 20824). A crash would kill the user's
process, so `auto` decides without risking it: CPUs without AMX repack as usual; on AMX CPUs a child
process loads a tiny quantised model with repacking on and decodes once. Its verdict is cached per CPU
and llama.cpp build, so the probe runs once per machine.

    python -m vreason_local.repack      # run the probe now and print the verdict
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from .cache import cache_dir

SETTINGS = ("auto", "on", "off")


def cpu_has_amx() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # macOS/Windows: no AMX repack path in llama.cpp's CPU backend there
    return "amx_tile" in text


def _cache_file() -> Path:
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    stamp = ";".join(f"{p.name}:{p.stat().st_size}" for p in sorted(lib.glob("libggml-cpu*")))
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    key = hashlib.sha256(f"{cpu}|{stamp}".encode()).hexdigest()[:16]
    return cache_dir() / f"repack-probe-{key}.json"


def probe(timeout_s: float = 300.0) -> bool:
    """Run the crash probe in a child process; True when repacked quantised weights work here."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vreason_local.repack", "--child"], capture_output=True, timeout=timeout_s
        )
        return proc.returncode == 0
    except subprocess.TimeoutExpired:
        return False


def repack_allowed(setting: str = "auto") -> bool:
    """The `use_extra_bufts` value to load models with, for the user's `--repack` setting."""
    setting = os.environ.get("VREASON_REPACK", setting)
    if setting in ("on", "off"):
        return setting == "on"
    if not cpu_has_amx():
        return True
    cache = _cache_file()
    try:
        return bool(json.loads(cache.read_text())["repack_ok"])
    except (OSError, ValueError, KeyError):
        pass
    ok = probe()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"repack_ok": ok}))
    return ok


def _child() -> None:
    """Load a tiny Q8_0 model with repacking on and decode once; a segfault here is the verdict."""
    from .llama_backend import Context, Model
    from .tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny(Path(tmp), arch="qwen25vl", shape="tiny", wtype="q8_0")
        model = Model(tiny.model_path, n_gpu_layers=0, repack=True)
        ctx = Context(model, n_ctx=256, n_batch=64, n_threads=2, flash_attn="auto")
        ctx.decode_tokens(model.tokenize("hello world"), 0)
        ctx.close()
        model.close()


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child()
    else:
        print("repacking quantised weights is", "safe" if probe() else "UNSAFE (it crashes)", "on this machine")

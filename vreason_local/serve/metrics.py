"""The server's counters, as Prometheus' text format (`GET /metrics`), kept without a client library.

A handful of counters and gauges need no dependency: the text format is a line per sample
(https://prometheus.io/docs/instrumenting/exposition_formats/). Updated from the event loop and the
engine thread, so every change takes the lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

# name -> (type, help)
_HELP: dict[str, tuple[str, str]] = {
    "vreason_requests_total": ("counter", "Chat completion requests answered, by HTTP status."),
    "vreason_cancelled_total": ("counter", "Requests cancelled before their end, by reason."),
    "vreason_queue_depth": ("gauge", "Requests waiting behind the running one."),
    "vreason_busy": ("gauge", "1 while the engine is answering a request."),
    "vreason_prompt_tokens_total": ("counter", "Prompt tokens of finished answers (media included)."),
    "vreason_cached_tokens_total": ("counter", "Prompt tokens reused from the KV cache or a kept encoding."),
    "vreason_completion_tokens_total": ("counter", "Generated tokens."),
    "vreason_encode_seconds_total": ("counter", "Seconds spent encoding media (vision encoder)."),
    "vreason_prefill_seconds_total": ("counter", "Seconds spent prefilling prompts (media and text)."),
    "vreason_decode_seconds_total": ("counter", "Seconds spent generating tokens."),
    "vreason_encoding_cache_hits_total": ("counter", "Requests whose media encoding was kept."),
    "vreason_encoding_cache_misses_total": ("counter", "Requests whose media had to be encoded."),
    "vreason_encoding_cache_bytes": ("gauge", "Host memory held by kept encodings."),
    "vreason_encoding_cache_entries": ("gauge", "Kept encodings."),
}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._gauges: dict[str, Callable[[], float]] = {}

    def add(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] += value

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """A value read when scraped (the queue's depth, the cache's size)."""
        self._gauges[name] = read

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values[(name, tuple(sorted(labels.items())))]

    def render(self) -> str:
        with self._lock:
            samples = dict(self._values)
        for name, read in self._gauges.items():
            samples[(name, ())] = float(read())
        lines: list[str] = []
        for name, (kind, text) in _HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            mine = sorted((labels, v) for (n, labels), v in samples.items() if n == name)
            if not mine and kind == "counter" and name not in ("vreason_requests_total", "vreason_cancelled_total"):
                mine = [((), 0.0)]
            for labels, v in mine:
                label_text = ",".join(f'{k}="{_escape(val)}"' for k, val in labels)
                lines.append(f"{name}{{{label_text}}} {_number(v)}" if label_text else f"{name} {_number(v)}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))

"""A saved conversation as Markdown (to read or share) or JSON (everything, per-token telemetry included).

Both are built from the store's records only: the telemetry summary is the one `telemetry.summarize`
computed when the answer was saved, never recomputed here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from ..errors import UserError
from .store import ChatStore, MessageRecord, SessionRecord

# telemetry.Summary's figures as shown (all but n_tokens, shown on its own): label and format (None: left out or "-")
SUMMARY_LABELS = {
    "mean_entropy": ("mean entropy", "{:.3f} nats"),
    "max_entropy": ("max entropy", "{:.3f} nats"),
    "final_ema": ("final EMA", "{:.3f} nats"),
    "peak_ema": ("peak EMA", "{:.3f} nats"),
    "switch_step": ("explore->converge at token", "{}"),
    "n_updates": ("controller updates", "{}"),
    "mean_update_ms": ("mean update", "{:.1f} ms"),
    "max_dv_norm": ("max dV norm", "{:.4g}"),
    "max_selfcheck": ("max self-check error", "{:.2e}"),
    "controller_s": ("controller time", "{:.2f} s"),
    "n_skipped": ("updates skipped", "{}"),
    "median_written_ratio": ("written / intended change (median)", "{:.2f}"),
    "max_head_bound": ("max LM-head gradient bound", "{:.3g}"),
}
_VIDEO_STATUS = {
    "ok": "unchanged",
    "missing": "no longer at this path",
    "changed": "changed since this conversation (the answers are about the earlier content)",
}


def session_markdown(store: ChatStore, session_id: int) -> str:
    """Title, video, model, settings, frame timestamps, then each question and its answers; the answers of
    one "compare" side by side in a table."""
    s = store.session(session_id)
    lines = [f"# {s.title or 'Untitled conversation'}", "", *_header(s), ""]
    messages = store.messages(session_id)
    i = n_questions = 0
    while i < len(messages):
        m = messages[i]
        if m.role == "user":
            n_questions += 1
            lines += [f"## Question {n_questions}", ""] + ["> " + line for line in m.text.splitlines()] + [""]
            i += 1
            continue
        group = [m]
        while (
            m.compare_group is not None
            and i + len(group) < len(messages)
            and messages[i + len(group)].compare_group == m.compare_group
        ):
            group.append(messages[i + len(group)])
        lines += _compare_table(group) if len(group) > 1 else _answer_block(m)
        i += len(group)
    return "\n".join(lines).rstrip() + "\n"


def session_json(store: ChatStore, session_id: int) -> dict:
    """Everything saved about the session, per-token telemetry included, plus the video's status now."""
    s = store.session(session_id)
    return {
        "format": "vreason-chat",
        "schema_version": store.SCHEMA_VERSION,
        "exported_at": time.time(),
        "session": {**asdict(s), "video_status": s.video_status()},
        "messages": [asdict(m) for m in store.messages(session_id)],
    }


def export_session(store: ChatStore, session_id: int, path: Path) -> Path:
    """Write the session to `path`: Markdown for .md/.markdown, JSON for .json. The file appears whole
    or not at all (written beside it, then renamed), so a failed export never leaves half a file."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        text = session_markdown(store, session_id)
    elif suffix == ".json":
        text = json.dumps(session_json(store, session_id), ensure_ascii=False, indent=1) + "\n"
    else:
        raise UserError(f"cannot export to {path}: the file name must end in .md (Markdown) or .json")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from e
    return path


def _header(s: SessionRecord) -> list[str]:
    when = datetime.fromtimestamp(s.created_at).strftime("%Y-%m-%d %H:%M")
    status = s.video_status()
    if s.video_path is None:
        video = "none (text only)"
    else:
        video = f"`{s.video_path}` (sha256 `{(s.video_hash or '')[:16]}`, {_VIDEO_STATUS[status]})"
    times = ", ".join(f"{f['timestamp_s']:.2f}" for f in s.frames)
    lines = [
        f"- **Video:** {video}",
        f"- **Model:** `{s.model}`",
        f"- **Started:** {when}",
        f"- **Frames ({len(s.frames)}), seconds:** {times or 'none'}",
    ]
    if s.settings:
        lines += ["", "<details><summary>Settings</summary>", "", "```json"]
        lines += [json.dumps(s.settings, indent=2, ensure_ascii=False), "```", "", "</details>"]
    return lines


def _facts(m: MessageRecord) -> dict[str, str]:
    """What one answer took, in words: mode, tokens, time, speed, how it stopped."""
    t = m.timings
    stop = "cancelled (partial answer)" if m.stop_reason == "cancelled" else m.stop_reason
    return {
        "mode": m.mode or "",
        "tokens": str(m.n_tokens),
        "decode time": f"{t.get('decode_s', 0.0):.2f} s",
        "tokens/s": f"{t.get('tokens_per_s', 0.0):.1f}",
        "stop": stop,
    }


def _summary(m: MessageRecord) -> dict[str, str | None]:
    summary = m.telemetry.get("summary", {})
    return {
        label: None if summary.get(key) is None else fmt.format(summary[key])
        for key, (label, fmt) in SUMMARY_LABELS.items()
    }


def _answer_block(m: MessageRecord) -> list[str]:
    facts = " · ".join(f"{k} {v}" if k != "mode" else v for k, v in _facts(m).items())
    telemetry = "; ".join(f"{k} {v}" for k, v in _summary(m).items() if v is not None)
    lines = [f"**Answer** ({facts})", "", m.answer.strip() or m.text.strip() or "(no answer)", ""]
    lines += _reasoning(m, "Reasoning")
    lines += [f"*Telemetry:* {telemetry}" if telemetry else "*Telemetry:* none", ""]
    lines += [f"*Notice:* {n}" for n in m.notices]
    return lines + ([""] if m.notices else [])


def _compare_table(group: list[MessageRecord]) -> list[str]:
    facts = [_facts(m) for m in group]
    summaries = [_summary(m) for m in group]
    lines = ["**Compared answers**", "", "| | " + " | ".join(_cell(m.mode or "") for m in group) + " |"]
    lines.append("|---" * (len(group) + 1) + "|")
    lines.append("| answer | " + " | ".join(_cell(m.answer.strip() or m.text.strip()) for m in group) + " |")
    for key in ("tokens", "decode time", "tokens/s", "stop"):
        lines.append(f"| {key} | " + " | ".join(f[key] for f in facts) + " |")
    for label in summaries[0]:
        values = [s[label] for s in summaries]
        if any(v is not None for v in values):
            lines.append(f"| {_cell(label)} | " + " | ".join(v or "-" for v in values) + " |")
    lines.append("")
    for m in group:
        lines += _reasoning(m, f"Reasoning ({m.mode})")
    return lines


def _reasoning(m: MessageRecord, summary: str) -> list[str]:
    if not m.reasoning.strip():
        return []
    return [f"<details><summary>{summary}</summary>", "", m.reasoning.strip(), "", "</details>", ""]


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "-"

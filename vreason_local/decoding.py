"""How an answer is decoded: plain (base), V-Reason, or V-Reason Lite, as one value each (README "Modes").

A decoding is a mode and its settings in one value, passed to `Engine.ask(..., decoding=...)`; a mode's
name alone (`"vreason"`) means that mode with its default settings (`decoding_for`). The engine runs
every answer the same way and calls a decoding's hooks at fixed points, in this order:

    prefilled(host, answer)     the question is in the cache but for its last token. Lite prunes the
                                media rows here (the question's rows saw the whole video: the method);
                                V-Reason asks the hook to capture the last token's nodes for step 1.
    start(host, answer)         the last prompt token is decoded: V-Reason starts its controller on
                                the rows it acts on, and returns it.
    then, with the controller `start` returned (none: no calls), per generated token k = 1, 2, ...:
        controller.step(k, logits, h, n_cells)   -> the step's ControlState; `controller.warning` after it
        controller.prepare(k + 1)                before the decode that yields step k + 1 (not after the last)
    controller.restore()        last, whenever a controller was started: also when the answer is
                                cancelled or fails.

A hook returns a notice to show (or None) and records what it did in the answer itself (its settings,
timings), so the engine stays the same for every mode. A decoding is a frozen value: one may serve any
number of answers; what one answer's decoding changes lives in the controller `start` returns.

Also here, as the small pure steps of the decode loop: `TextStream` (bytes -> text -> channels) and
`stop_reason` (when an answer ends).
"""

from __future__ import annotations

import codecs
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

from .channels import ChannelSplitter
from .errors import Remedy, UserError
from .events import MODES, Answer, Channel, ControlState, Mode
from .settings import GenerationSettings, VReasonSettings

if TYPE_CHECKING:
    from .gguf_info import ModelInfo
    from .hook import ValueHook
    from .tail import Tail

RECENT_CHARS = 16  # the end of the text kept to find a closing </answer> split across pieces


class Host(Protocol):
    """What a decoding's hooks may use of the engine answering (`engine.Engine` is one)."""

    info: ModelInfo
    hook: ValueHook | None  # present whenever the decoding `needs_hook` (the engine checks when asked)
    v_transposed: bool

    @property
    def media_rows(self) -> np.ndarray:
        """KV cells of the media's rows as the cache holds them now (after any pruning), in order."""

    @property
    def media_pruned(self) -> bool:
        """Whether the cache's media rows were pruned (in this answer, or in the one it follows up)."""

    @property
    def n_cells(self) -> int:
        """KV cells in use: the prefix, then the conversation's tokens."""

    def keep_media_rows(self, keep: np.ndarray) -> None:
        """Drop the media rows not in `keep` (indices into `media_rows`) from the cache, in every layer."""

    def tail(self, device: str, dtype: str) -> Tail:
        """The model's PyTorch tail on `device` in `dtype` (loaded once, kept for later answers)."""


class Controller(Protocol):
    """One answer's per-token control (`vreason.VReason` is V-Reason's)."""

    warning: str | None  # set by `step` when something needs saying; the engine shows it and clears it

    def step(self, k: int, logits: np.ndarray, h: float, n_cells: int) -> ControlState: ...

    def prepare(self, next_step: int) -> None: ...

    def restore(self) -> None: ...


class Decoding(Protocol):
    """A mode and its settings: the hooks the engine calls for each answer (the module's docstring)."""

    mode: Mode
    needs_hook: bool  # the engine must be loaded with the value-cache hook (EngineSettings.hook)
    prunes: bool  # Lite: an answer continuing a pruned conversation keeps the pruned cache

    def prefilled(self, host: Host, answer: Answer) -> str | None: ...

    def start(self, host: Host, answer: Answer) -> tuple[Controller | None, str | None]: ...


@dataclass(frozen=True)
class BaseDecoding:
    """Plain decoding: the model's own distribution, nothing changed. Subclass it for a custom decoding."""

    mode: ClassVar[Mode] = "base"
    needs_hook: ClassVar[bool] = False
    prunes: ClassVar[bool] = False

    def prefilled(self, host: Host, answer: Answer) -> str | None:
        return None

    def start(self, host: Host, answer: Answer) -> tuple[Controller | None, str | None]:
        return None, None


@dataclass(frozen=True)
class VReasonDecoding(BaseDecoding):
    """V-Reason: an entropy-steered offset on the last layer's value rows of the media (vreason.py)."""

    mode: ClassVar[Mode] = "vreason"
    needs_hook: ClassVar[bool] = True
    settings: VReasonSettings = VReasonSettings()

    def prefilled(self, host: Host, answer: Answer) -> str | None:
        host.hook.prepare(1 % self.settings.every == 0)  # step 1's update needs the last prompt token's nodes
        return None

    def start(self, host: Host, answer: Answer) -> tuple[Controller | None, str | None]:
        t0 = time.perf_counter()
        from .vreason import VReason  # torch: imported when V-Reason first runs, not for base answers

        rows, notice = host.media_rows, None
        if not len(rows):  # no media: the controller spans all prompt rows, the last one included (our choice; README)
            rows = np.arange(host.n_cells)
            notice = f"no video or image tokens: V-Reason acts on all {len(rows)} prompt rows"
        tail = host.tail(self.settings.device, self.settings.dtype)
        controller = VReason(tail, host.hook, rows, host.v_transposed, self.settings)
        answer.settings["vreason"] = {
            **asdict(self.settings),
            "device": str(tail.device),
            "tail_dtype": tail.kind,
            "n_rows": len(rows),
        }
        answer.timings["controller_setup_s"] = round(time.perf_counter() - t0, 4)
        return controller, notice


@dataclass(frozen=True)
class LiteDecoding(VReasonDecoding):
    """V-Reason Lite: half the media rows pruned once the question is prefilled, then V-Reason on the rest."""

    mode: ClassVar[Mode] = "lite"
    prunes: ClassVar[bool] = True

    def prefilled(self, host: Host, answer: Answer) -> str | None:
        notice = None
        if not host.media_pruned and len(host.media_rows):
            values = host.hook.read_values(host.media_rows, host.v_transposed)
            host.keep_media_rows(lite_keep(values, host.info.n_head_kv, host.info.head_dim))
        if not len(host.media_rows):
            notice = "no video or image tokens: Lite has nothing to prune"
        elif host.media_pruned:
            answer.n_video_tokens_kept = len(host.media_rows)
        super().prefilled(host, answer)
        return notice


def lite_keep(values: np.ndarray, n_head_kv: int, head_dim: int) -> np.ndarray:
    """Lite's choice among media rows, from their last-layer values [n_rows, n_head_kv·head_dim]: the
    indices of the larger half by value norm (the method: norm per kv head, summed over heads), in order;
    of equal norms the earlier row is kept."""
    v = values.reshape(len(values), n_head_kv, head_dim).astype(np.float32)
    score = np.linalg.norm(v, axis=2).sum(axis=1)
    return np.sort(np.argsort(-score, kind="stable")[: len(values) - len(values) // 2])


DECODINGS: dict[Mode, type[BaseDecoding]] = {"base": BaseDecoding, "vreason": VReasonDecoding, "lite": LiteDecoding}


def decoding_for(mode: str, vreason: VReasonSettings | None = None) -> Decoding:
    """The decoding of a mode by name, with `vreason`'s settings (default ones if None; base has none)."""
    if mode not in MODES:
        raise UserError(
            f"unknown mode '{mode}'; the modes are {', '.join(MODES)}", [Remedy("a known mode", "mode", "vreason")]
        )
    if mode == "base":
        return BaseDecoding()
    return DECODINGS[mode](vreason or VReasonSettings())


class TextStream:
    """Generated tokens' bytes as text: UTF-8 decoded across pieces (a character split between tokens
    comes out whole with the later one), and split into channels as it streams (channels.ChannelSplitter)."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._splitter = ChannelSplitter()
        self._pieces: list[str] = []
        self.recent = ""  # the end of the text, where a closing </answer> would show

    def feed(self, raw: bytes, eog: bool) -> tuple[str, tuple[tuple[Channel, str], ...]]:
        """One token's bytes (an end-of-generation token's are not text) -> (its text, its channel parts)."""
        piece = "" if eog else self._utf8.decode(raw)
        self._pieces.append(piece)
        self.recent = (self.recent + piece)[-RECENT_CHARS:]
        return piece, self._splitter.feed(piece)

    @property
    def text(self) -> str:
        return "".join(self._pieces)


def stop_reason(gen: GenerationSettings, step: int, eog: bool, recent: str, cancelled: bool) -> str:
    """Why the answer ends after generated token `step` ("": it goes on, as `Answer.stop_reason` says
    before the end); the first that holds, in this order."""
    if eog:
        return "eos"
    if gen.stop_at_answer and "</answer>" in recent:
        return "answer"
    if step >= gen.max_tokens:
        return "max_tokens"
    if cancelled:
        return "cancelled"
    return ""

"""The engine: one loaded Qwen-VL model that turns (media, question) into a stream of events.

Steps, in order (gpt-fast style, one small method each):
    encode   - system prompt + frames into the KV cache, once per media (reused by follow-ups)
    rewind   - back to the end of the media for an independent question, or keep the conversation
    prefill  - the question's text
    decode   - token by token: logits -> entropy -> (V-Reason update) -> choose -> decode
The CLI, the TUI and the evaluator all drive `Engine.ask` and consume its events; nothing is computed
twice downstream.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

import llama_cpp as L
from llama_cpp import mtmd_cpp as M

from . import gguf_info
from .errors import UserError
from .events import Answer, ControlState, Encoded, Event, Finished, Notice, Prefilled, TokenEvent
from .kv_state import prune_cells
from .llama_backend import Context, Model, Vision, default_threads
from .media import Media
from .prompt import prefix_parts, question_text, require_question
from .repack import repack_allowed
from .sampling import Sampler, TokenSampling, entropy

Mode = Literal["base", "vreason", "lite"]
MODES = ("base", "vreason", "lite")


@dataclass(frozen=True)
class EngineSettings:
    """How llama.cpp runs. `hook` installs the value-cache hook (needed by the vreason/lite modes)."""

    n_ctx: int = 8192
    n_batch: int = 512
    n_threads: int = field(default_factory=default_threads)
    n_gpu_layers: int = -1
    repack: str = "auto"
    flash_attn: str = "auto"
    hook: bool = False


@dataclass(frozen=True)
class GenerationSettings:
    """One answer's decoding settings."""

    max_tokens: int = 1024
    sampling: TokenSampling = TokenSampling()
    reasoning: bool = True  # ask for <think>...</think><answer>...</answer>
    stop_at_answer: bool = True  # stop once </answer> is written


@dataclass
class _Prefix:
    """The encoded system prompt + media at the start of the KV cache."""

    key: str
    n_past: int  # next M-RoPE position after the prefix
    n_cells: int
    tokens: list[int | None]  # token ids, None at media positions
    media_cells: np.ndarray  # KV cells of the media tokens, in order
    n_frames: int
    snapshot: bytes | None = None  # the prefix's sequence state, saved before Lite first prunes it
    pruned: bool = False  # Lite removed media rows from the cache; an independent question reloads


def media_key(media: Media) -> str:
    """Identity of the media content: same frames -> same encoding, reusable."""
    h = hashlib.sha1(media.kind.encode())
    for f in media.frames:
        h.update(np.ascontiguousarray(f.rgb).tobytes())
        h.update(f"{f.timestamp_s:.3f}".encode())
    return h.hexdigest()


def split_answer(text: str) -> tuple[str, str]:
    """(reasoning, answer) from `<think>...</think><answer>...</answer>`, tolerant of missing tags."""
    think = re.search(r"<think>(.*?)(</think>|$)", text, re.S)
    ans = re.search(r"<answer>(.*?)(</answer>|$)", text, re.S)
    reasoning = think.group(1).strip() if think else ""
    if ans:
        return reasoning, ans.group(1).strip()
    rest = text.split("</think>", 1)[1] if "</think>" in text else ("" if think else text)
    return reasoning, rest.strip()


class Engine:
    """A Qwen-VL model (and its projector) loaded once, answering questions about media."""

    def __init__(self, model_path: Path, mmproj_path: Path | None, settings: EngineSettings = EngineSettings(),
                 infos: tuple[gguf_info.ModelInfo, gguf_info.ProjectorInfo | None] | None = None) -> None:
        """`infos`: the files' metadata, already read and checked by the caller (session.plan_run)."""
        t0 = time.perf_counter()
        self.settings = settings
        self.info, self.projector = infos or gguf_info.read_pair(model_path, mmproj_path)
        self.repack = repack_allowed(settings.repack)
        self.model = Model(self.info.path, settings.n_gpu_layers, self.repack)
        self.vision = Vision(self.projector.path, self.model, settings.n_threads, settings.n_gpu_layers != 0) if self.projector else None
        self.hook = None
        if settings.hook:
            from .hook import ValueHook

            self.hook = ValueHook(self.info)
        self.ctx = Context(self.model, settings.n_ctx, settings.n_batch, settings.n_threads, settings.flash_attn,
                           *(self.hook.callback_args() if self.hook else ()))
        # llama.cpp stores V transposed only when flash attention is explicitly off (llama-notes.md)
        self.v_transposed = settings.flash_attn == "off"
        self._prefix: _Prefix | None = None
        self._n_past = 0
        self._n_cells = 0
        self._history = False  # the cache holds at least one answered question after the prefix
        self._tail = None  # the PyTorch tail, loaded at the first V-Reason answer and kept
        self._tail_key: tuple[str, str] | None = None
        self.controller = None
        self.prompt_tokens: list[int | None] = []
        self.load_s = time.perf_counter() - t0

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Free every llama.cpp object once, context before model."""
        for obj in (self.ctx, self.vision, self.model):
            if obj:
                obj.close()
        if self.hook:
            self.hook.close()
        if self._tail is not None:
            self._tail.head.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the steps ------------------------------------------------------------------------------
    def encode(self, media: Media) -> Iterator[Event]:
        """Put the system prompt and the media into a fresh KV cache, unless it is already there."""
        key = media_key(media)
        if self._prefix and self._prefix.key == key:
            yield Encoded(len(self._prefix.tokens), len(self._prefix.media_cells), self._prefix.n_frames, 0.0, 0.0, True)
            return
        if media.kind != "none" and self.vision is None:
            raise UserError("this model was loaded without a vision projector; pass --mmproj for images and video")
        self.ctx.clear()
        self._prefix, self._n_past, self._n_cells, self._history = None, 0, 0, False
        marker = self.vision.marker if self.vision else "<__media__>"
        text, frames = prefix_parts(media, marker)
        tokens: list[int | None] = []
        media_cells: list[np.ndarray] = []
        encode_s = prefill_s = 0.0
        if not frames:
            ids = self.model.tokenize(text)
            t0 = time.perf_counter()
            self.ctx.decode_tokens(ids, 0)
            prefill_s = time.perf_counter() - t0
            tokens, self._n_past, self._n_cells = list(ids), len(ids), len(ids)
        else:
            encode_s, prefill_s = self._encode_media(text, frames, tokens, media_cells)
        cells = np.concatenate(media_cells) if media_cells else np.zeros(0, np.int64)
        self._prefix = _Prefix(key, self._n_past, self._n_cells, tokens, cells, len(frames))
        yield Encoded(len(tokens), len(cells), len(frames), encode_s, prefill_s, False)

    def _encode_media(self, text: str, frames: list, tokens: list[int | None], media_cells: list[np.ndarray]) -> tuple[float, float]:
        """Tokenise text+bitmaps with mtmd, then encode each image chunk and decode every chunk."""
        bitmaps = []
        for f in frames:
            rgb = np.ascontiguousarray(f.rgb, dtype=np.uint8)
            h, w = rgb.shape[:2]
            bm = M.mtmd_bitmap_init(w, h, rgb.ctypes.data_as(L.ctypes.POINTER(L.ctypes.c_uint8)))
            M.mtmd_bitmap_set_mergeable(bm, len(frames) > 1)  # video frames merge in pairs
            bitmaps.append(bm)
        chunks = M.mtmd_input_chunks_init()
        try:
            raw = text.encode()
            inp = M.mtmd_input_text(text=raw, text_len=len(raw), add_special=False, parse_special=True)
            arr = (M.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            rc = M.mtmd_tokenize(self.vision.ptr, chunks, L.ctypes.byref(inp), arr, len(bitmaps))
            if rc != 0:
                raise UserError(f"mtmd could not tokenise the media (code {rc})")
            encode_s = prefill_s = 0.0
            for i in range(M.mtmd_input_chunks_size(chunks)):
                chunk = M.mtmd_input_chunks_get(chunks, i)
                if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = L.ctypes.c_size_t()
                    ptr = M.mtmd_input_chunk_get_tokens_text(chunk, L.ctypes.byref(n))
                    ids = [ptr[j] for j in range(n.value)]
                    t0 = time.perf_counter()
                    self.ctx.decode_tokens(ids, self._n_past)
                    prefill_s += time.perf_counter() - t0
                    tokens += ids
                    self._n_past += len(ids)
                    self._n_cells += len(ids)
                    continue
                n_tok = M.mtmd_input_chunk_get_n_tokens(chunk)
                self._check_room(self._n_cells + n_tok)
                t0 = time.perf_counter()
                if M.mtmd_encode_chunk(self.vision.ptr, chunk) != 0:
                    raise UserError("the vision encoder failed on a frame")
                embd = M.mtmd_get_output_embd(self.vision.ptr)
                t1 = time.perf_counter()
                new_n_past = L.llama_pos(0)
                rc = M.mtmd_helper_decode_image_chunk(self.vision.ptr, self.ctx.ptr, chunk, embd, self._n_past, 0,
                                                      self.ctx.n_batch, L.ctypes.byref(new_n_past),
                                                      M.mtmd_helper_post_decode_callback(), None)
                if rc != 0:
                    raise UserError(f"llama.cpp could not decode the video tokens (code {rc})")
                encode_s += t1 - t0
                prefill_s += time.perf_counter() - t1
                media_cells.append(np.arange(self._n_cells, self._n_cells + n_tok))
                tokens += [None] * n_tok
                self._n_past = new_n_past.value
                self._n_cells += n_tok
            return encode_s, prefill_s
        finally:
            M.mtmd_input_chunks_free(chunks)
            for bm in bitmaps:
                M.mtmd_bitmap_free(bm)

    def _check_room(self, n_cells: int) -> None:
        if n_cells > self.ctx.n_ctx:
            raise UserError(f"the prompt needs more than {self.ctx.n_ctx} tokens of context; "
                            "use fewer frames (--max-frames), a lower --max-pixels, or a larger --ctx")

    def _rewind(self, keep_history: bool) -> None:
        """Back to the end of the prefix for an independent question, unless continuing the chat."""
        p = self._prefix
        if keep_history or not self._history:
            return
        if p.pruned:  # Lite removed rows from the prefix itself: reload it whole
            self.ctx.state_set(p.snapshot)
            p.media_cells = np.flatnonzero([t is None for t in p.tokens])
            p.pruned = False
        else:
            self.ctx.remove_from(p.n_past)
        self._n_past, self._n_cells, self._history = p.n_past, p.n_cells, False

    def _prune_lite(self) -> int:
        """Lite: drop the half of the media rows with the lowest last-layer value norm, in every layer.

        Runs before the question is prefilled. The prefix's state is saved first (once), so a later
        independent question gets the whole video back; in a continued chat the pruned rows stay gone,
        and an independent question after that re-encodes. Returns the number of media rows kept.
        """
        p = self._prefix
        rows = p.media_cells
        if not self._history and p.snapshot is None:
            p.snapshot = self.ctx.state_get()
        elif self._history and p.snapshot is None:
            p.key = ""  # no clean copy of the prefix to go back to: re-encode next time
        values = self.hook.read_values(rows, self.v_transposed)
        v = values.reshape(len(rows), self.info.n_head_kv, self.info.head_dim).astype(np.float32)
        score = np.linalg.norm(v, axis=2).sum(axis=1)  # the method: norm per kv head, summed over heads
        keep_rows = np.sort(np.argsort(-score, kind="stable")[: len(rows) - len(rows) // 2])
        keep = np.ones(self._n_cells, bool)
        keep[np.delete(rows, keep_rows)] = False
        self.ctx.state_set(prune_cells(self.ctx.state_get(), keep, has_ext=True))
        new_index = np.cumsum(keep) - 1  # the reload packs the kept cells in order
        self._n_cells = int(keep.sum())
        p.media_cells = new_index[rows[keep_rows]]
        p.pruned = True
        return len(keep_rows)

    def ask(self, media: Media, question: str, gen: GenerationSettings = GenerationSettings(), mode: Mode = "base",
            vreason: "VReasonSettings | None" = None, keep_history: bool = False,
            cancel: threading.Event | None = None) -> Iterator[Event]:
        """Answer one question about `media`, yielding the event stream (ends with `Finished`)."""
        require_question(question)
        if mode not in MODES:
            raise UserError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        if mode != "base" and self.hook is None:
            raise UserError(f"mode '{mode}' needs the engine loaded with the value-cache hook")
        yield from self.encode(media)
        self._rewind(keep_history)
        answer = Answer(mode=mode, question=question)
        answer.timings["load_s"] = round(self.load_s, 4)
        if mode == "lite":
            if self._prefix.pruned:  # a continued chat: the video was pruned for an earlier answer
                answer.n_video_tokens_kept = len(self._prefix.media_cells)
            elif len(self._prefix.media_cells):
                answer.n_video_tokens_kept = self._prune_lite()
            else:
                answer.notices.append("no video or image tokens: Lite has nothing to prune")
                yield Notice("info", answer.notices[-1])

        # prefill the question; the last token alone, so the hook can capture its step if needed
        ids = self.model.tokenize(question_text(question, gen.reasoning, follow_up=self._history))
        self._check_room(self._n_cells + len(ids) + gen.max_tokens)
        t0 = time.perf_counter()
        self.ctx.decode_tokens(ids[:-1], self._n_past)
        self._n_past += len(ids) - 1
        self._n_cells += len(ids) - 1
        controller = self.controller = None
        if mode != "base":
            tc = time.perf_counter()
            controller, notice = self._start_controller(vreason)
            self.controller = controller  # the current answer's controller, for telemetry and tests
            setup_s = time.perf_counter() - tc
            t0 += setup_s  # loading the tail's weights is not prefill
            answer.timings["controller_setup_s"] = round(setup_s, 4)
            if notice:
                answer.notices.append(notice)
                yield Notice("info", notice)
            controller.prepare(1)
        self.ctx.decode_tokens(ids[-1:], self._n_past)
        self._n_past += 1
        self._n_cells += 1
        self._history = True
        prefill_s = time.perf_counter() - t0
        answer.timings["prefill_question_s"] = round(prefill_s, 4)
        self.prompt_tokens = list(self._prefix.tokens) + ids
        yield Prefilled(len(ids), prefill_s, answer.n_video_tokens_kept)
        try:
            yield from self._decode(answer, gen, controller, cancel)
        finally:
            if controller:
                controller.restore()
        yield Finished(answer)

    def _start_controller(self, settings: "VReasonSettings | None"):
        from .vreason import VReason, VReasonSettings

        p = self._prefix
        notice = None
        if len(p.media_cells):
            rows = p.media_cells
        else:  # text-only: the controller spans all prompt rows (our choice; README)
            rows = np.arange(self._n_cells)
            notice = f"no video or image tokens: V-Reason acts on all {len(rows)} prompt rows"
        settings = settings or VReasonSettings()
        if self._tail is None or self._tail_key != (settings.device, settings.dtype):
            from .tail import Tail

            if self._tail is not None:
                self._tail.head.close()
            self._tail = Tail.from_gguf(self.info, settings.device, settings.dtype)
            self._tail_key = (settings.device, settings.dtype)
        return VReason(self._tail, self.hook, rows, self.v_transposed, settings), notice

    def _decode(self, answer: Answer, gen: GenerationSettings, controller, cancel: threading.Event | None) -> Iterator[Event]:
        """The decode loop. The token of step k comes from p_k before that step's update (the method)."""
        sampler = Sampler(gen.sampling)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        t0 = time.perf_counter()
        control_s = 0.0
        logits = self.ctx.logits()
        step = 0
        while True:
            step += 1
            h = entropy(logits)
            state: ControlState | None = None
            if controller:
                tc = time.perf_counter()
                state = controller.step(step, logits, h, self._n_cells)
                control_s += time.perf_counter() - tc
                if controller.warning:
                    answer.notices.append(controller.warning)
                    yield Notice("warning", controller.warning)
                    controller.warning = None
            tok = sampler(logits)
            eog = self.model.is_eog(tok)
            piece = "" if eog else utf8.decode(self.model.piece(tok))
            answer.tokens.append(tok)
            answer.entropy.append(h)
            answer.control.append(state)
            answer.text += piece
            yield TokenEvent(step, tok, piece, h, time.perf_counter() - t0, state)
            if eog:
                answer.stop_reason = "eos"
            elif gen.stop_at_answer and "</answer>" in answer.text[-(len(piece) + 9):]:
                answer.stop_reason = "answer"
            elif step >= gen.max_tokens:
                answer.stop_reason = "max_tokens"
            elif cancel is not None and cancel.is_set():
                answer.stop_reason = "cancelled"
            if answer.stop_reason:
                break
            if controller:
                controller.prepare(step + 1)
            self.ctx.decode_tokens([tok], self._n_past)
            self._n_past += 1
            self._n_cells += 1
            logits = self.ctx.logits()
        decode_s = time.perf_counter() - t0
        answer.reasoning, answer.answer = split_answer(answer.text)
        answer.timings.update(decode_s=round(decode_s, 4), controller_s=round(control_s, 4),
                              tokens_per_s=round(len(answer.tokens) / decode_s, 3) if decode_s > 0 else 0.0)

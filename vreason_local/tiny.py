"""Generate small, fast, 3B- and 7B-shaped *random-weight* Qwen-VL models as real GGUF files.

There is no network here, so no real checkpoint can be downloaded. Instead this module writes
GGUF files of the genuine Qwen-VL architectures -- a language model plus an ``mmproj`` vision
projector -- that llama.cpp and mtmd load through exactly the code paths a real conversion takes
(same architecture names, metadata keys, tensor names, shapes and types). Only the weights are
random. Every test and the demo run on these files, so they exercise the real engine end to end.

Supported (``arch``):

* ``qwen2vl``  -- Qwen2-VL:   LM arch ``qwen2vl`` (M-RoPE), projector ``qwen2vl_merger``
  (LayerNorm, quick-GELU MLP, patch 14).
* ``qwen25vl`` -- Qwen2.5-VL: LM arch ``qwen2vl`` (M-RoPE), projector ``qwen2.5vl_merger``
  (RMSNorm, gated SiLU MLP, window attention with every ``n_wa_pattern``-th block full, patch 14).
* ``qwen3vl``  -- Qwen3-VL:   LM arch ``qwen3vl`` (interleaved M-RoPE, q/k norms, deepstack),
  projector ``qwen3vl_merger`` (fused qkv, learned position embeddings, deepstack mergers,
  patch 16). The projector emits ``n_embd * (1 + n_deepstack)`` features per image token; the LM
  adds the extra slices to the outputs of its first ``n_deepstack`` layers, so its
  ``n_embd_inp`` is ``n_embd * (1 + n_deepstack)``.

Shapes (``shape``), each file named after its shape (`file_names`):

* ``tiny``: 2-3 layers of width 64, a 1,024-token vocabulary; ~1 MB at most per file, built in tens of
  milliseconds. For tests.
* ``fast``: tiny layers (3 of width 128) with Qwen's full 151,936-token vocabulary and the tiny vision
  tower; ~83 MB (f16) or ~46 MB (q8_0), a few seconds to build. Decodes in about 2 ms a token on 2 CPU
  threads, the speed class of a 3B model on a GPU, with the real per-token cost of a full-size
  vocabulary's logits: for measuring the decode loop's own overhead (benchmarks/bench_decode.py).
* ``3b``: the real Qwen2.5-VL-3B / Qwen3-VL-4B dimensions; a 3.3-4.3 GB (q8_0) or 6.2-8.0 GB (f16)
  language model and a 0.5-1.3 GB projector, written streaming with low memory in about a minute
  (q8_0). For benchmarks of real compute cost.
* ``7b``: the real Qwen2-VL-7B / Qwen2.5-VL-7B / Qwen3-VL-8B dimensions, untied LM head and the real
  vocabulary size (152,064 rows for the 7Bs, 151,936 for the 8B), with the projector of that model; an
  8.1-8.7 GB (q8_0) language model. For benchmarks at the size of the registry's largest models.
* ``k256``: tiny layers (2-3 of width 256) whose every matrix row is a multiple of 256 values, the
  block of llama.cpp's K-quants (Q4_K, Q6_K: what the registry's Q4_K_M files hold), so
  `llama_model_quantize` makes real K-quant files of it (it falls back to Q5_0 and Q8_0 for the
  ``tiny`` shape's rows of 64). The tiny vocabulary: the number of rows changes nothing in how a
  K-quant row is stored or read, and 1,024 of them keep the files small. The Qwen3-VL one ties its LM
  head to ``token_embd`` (as Qwen3-VL-2B/4B do), the others have an ``output`` matrix (as the 7Bs
  do), so both LM-head paths occur. 5-6.5 MB (f16). For tests.
* ``mid``: two layers (three for Qwen3-VL, whose deepstack needs them) of the ``3b`` shape's real
  layer dimensions with the tiny vocabulary and vision tower: the smallest model whose V-Reason tail
  (the last layer after attention) is the 3B's (the 4B's), 287-341 MB in float32, so the ``auto``
  tail storage picks int8 on the CPU (`tail_weights.pick_dtype`); 0.3-0.6 GB (f16). For tests of
  that path.

``fast``, ``3b`` and ``7b`` use the real Qwen token ids for the added tokens (``special_token_ids``);
``tiny``, ``k256`` and ``mid`` use the tiny 1,024-token vocabulary.

The files say loudly that they are not real models: ``general.name`` contains
"RANDOM WEIGHTS" and the custom key ``vreason.random_weights`` is ``True``.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import gguf
import numpy as np
from gguf.quants import quantize

from .families import FAMILY_NAMES as ARCHES  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL: see families.py

SHAPES = ("tiny", "k256", "fast", "mid", "3b", "7b")
WTYPES = ("f32", "f16", "q8_0")


@dataclass(frozen=True)
class TinyModel:
    """Paths of a generated model pair and what it was generated as."""

    model_path: Path
    mmproj_path: Path
    arch: str
    shape: str


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# The Qwen added tokens, in Qwen's own id order (Qwen2.5 list + Qwen3's additions). CONTROL ones
# are "special": true in Qwen's tokenizer_config (parsed only with parse_special); the others are
# plain added tokens (USER_DEFINED: always matched as a whole, like HF added tokens).
_CONTROL = 3
_USER_DEFINED = 4
_NORMAL = 1
SPECIAL_TOKENS: tuple[tuple[str, int], ...] = (
    ("<|endoftext|>", _CONTROL),
    ("<|im_start|>", _CONTROL),
    ("<|im_end|>", _CONTROL),
    ("<|object_ref_start|>", _CONTROL),
    ("<|object_ref_end|>", _CONTROL),
    ("<|box_start|>", _CONTROL),
    ("<|box_end|>", _CONTROL),
    ("<|quad_start|>", _CONTROL),
    ("<|quad_end|>", _CONTROL),
    ("<|vision_start|>", _CONTROL),
    ("<|vision_end|>", _CONTROL),
    ("<|vision_pad|>", _CONTROL),
    ("<|image_pad|>", _CONTROL),
    ("<|video_pad|>", _CONTROL),
    ("<tool_call>", _USER_DEFINED),
    ("</tool_call>", _USER_DEFINED),
    ("<|fim_prefix|>", _USER_DEFINED),
    ("<|fim_middle|>", _USER_DEFINED),
    ("<|fim_suffix|>", _USER_DEFINED),
    ("<|fim_pad|>", _USER_DEFINED),
    ("<|repo_name|>", _USER_DEFINED),
    ("<|file_sep|>", _USER_DEFINED),
    ("<tool_response>", _USER_DEFINED),
    ("</tool_response>", _USER_DEFINED),
    ("<think>", _USER_DEFINED),
    ("</think>", _USER_DEFINED),
)

# Real Qwen vocabularies put <|endoftext|> at 151643 and pad the embedding to 151936 rows (152064 in
# the 7B models); the fast, 3b and 7b shapes copy that layout so special-token ids are the real ones.
_QWEN_SPECIAL_BASE = 151643
_QWEN_N_VOCAB = 151936
_QWEN_7B_N_VOCAB = 152064
_TINY_N_VOCAB = 1024
_TINY_VOCAB_SHAPES = ("tiny", "k256", "mid")

# Text the tiny BPE is trained on (deterministically, at import-free call time). It is the kind of
# English the tool sends and receives, so prompts tokenise into far fewer tokens than bytes.
_CORPUS = """\
What happens in this video? Answer with <think> and <answer>. Think step by step about what you see, \
then give the final answer. You are a helpful assistant. Describe the video in detail. \
What is the person doing in the video? The person is walking across the room and then sits down on the chair. \
A man is cooking in the kitchen. A woman is reading a book near the window. The dog runs after the ball. \
Two people are talking at a table. A car drives down the street while it is raining. \
The camera moves slowly to the left and shows a group of children playing in the park. \
What happens after the man opens the door? He walks into the house and turns on the light. \
Why did the woman stop? Because the traffic light turned red. How many people are in the scene? There are three people. \
Where does the video take place? It takes place in a small office with a desk, a computer and a lamp. \
Which object does the person pick up first? The person picks up the red cup first, then the blue bottle. \
Answer the question based on the video. Choose the correct option from A, B, C or D. \
Question: What is the main activity shown in the video? Options: A. swimming B. running C. cooking D. dancing. \
The answer is C. Let me think about this carefully. First, I look at the beginning of the video. \
At the beginning, the kitchen is empty. Then a person enters and starts to cut vegetables. \
In the middle of the video, the person puts the vegetables into a pan and stirs them. \
At the end, the person serves the food on a plate. So the main activity is cooking. \
I think the answer should be based on what happens in each frame. The frames show a sequence of actions. \
First the object is on the table, then it is moved to the shelf, and finally it falls to the floor. \
This suggests that someone pushed it. However, I need to check whether anyone touched it. \
Looking again, the cat jumps onto the shelf and pushes the object. Therefore the cat caused it to fall. \
The video shows a sunny day at the beach. People are swimming in the sea and playing with a ball on the sand. \
A boy is riding a bicycle on the road. A girl is drawing a picture with colored pencils. \
The weather changes from cloudy to rainy during the video. The light becomes darker and the wind is stronger. \
Count the number of times the ball is thrown. The ball is thrown four times before it is caught. \
Is there any text visible in the video? Yes, there is a sign that says open on the door of the shop. \
Summarize the video in one sentence. A family prepares dinner together and then eats at the table. \
What will happen next? The man will probably close the window because it is getting cold. \
The user asks a question about the video and the assistant answers it. The assistant should reason first, \
then answer. Reasoning: the person holds a phone, looks at the screen, and smiles, so the person is reading a message. \
Final answer: the person is reading a message on the phone. \
Please provide your answer in the following format: <think> your reasoning here </think> <answer> your answer here </answer>. \
The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times. \
There is a red car, a white truck and a green bus on the road. The bus stops and some passengers get off. \
The player kicks the ball into the goal and the crowd cheers. The teacher writes on the board and the students take notes. \
Time: 00:12. Frame 3 of 16. The scene changes at 00:45 when the camera cuts to another room. \
The image shows a bird sitting on a branch. The bird flies away when the man comes closer. \
I cannot see the face of the person clearly, but the clothes suggest that it is the same person as before. \
Compare the first and the last frame: the cup was full at first and is empty at the end, so someone drank from it. \
Because the video is short, there are only a few events. The order of events is important for the answer. \
In summary, the video shows people doing everyday things: cooking, walking, talking, reading and playing. \
User: Can you explain what is happening? Assistant: Sure. The video begins with a view of a city street. \
"""

# Approximation of the qwen2 pre-tokenizer regex (Python's `re` has no \p{L}); only used to learn
# merges from the corpus above -- llama.cpp applies the real regex when tokenising.
_PRETOKENIZE = re.compile(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|(?:[^\r\n\w]|_)?[^\W\d_]+|\d| ?(?:[^\s\w]|_)+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@lru_cache(maxsize=1)
def _byte_encoder() -> tuple[str, ...]:
    """GPT-2's reversible byte -> printable-unicode mapping (index = byte value)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, (chr(c) for c in cs)))
    return tuple(table[b] for b in range(256))


@lru_cache(maxsize=1)
def _byte_tokens() -> tuple[str, ...]:
    """The 256 byte-level tokens, in the order GPT-2/Qwen vocabularies list them."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    bs += [b for b in range(256) if b not in bs]
    enc = _byte_encoder()
    return tuple(enc[b] for b in bs)


@lru_cache(maxsize=4)
def _train_bpe(n_merges: int) -> tuple[tuple[str, str], ...]:
    """Learn up to `n_merges` byte-level BPE merges from `_CORPUS`, deterministically.

    Ties are broken by the pair's text so the result never depends on hash order.
    """
    enc = _byte_encoder()
    words: Counter[tuple[str, ...]] = Counter()
    for piece in _PRETOKENIZE.findall(_CORPUS):
        words[tuple(enc[b] for b in piece.encode("utf-8"))] += 1
    vocab = [list(w) for w in words]
    freqs = list(words.values())
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, f in zip(vocab, freqs):
            for i in range(len(w) - 1):
                pairs[(w[i], w[i + 1])] += f
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        a, b = best
        ab = a + b
        for w in vocab:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i : i + 2] = [ab]
                i += 1
    return tuple(merges)


@dataclass(frozen=True)
class _Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special_ids: dict[str, int]


def _special_base(shape: str) -> int:
    return _TINY_N_VOCAB - len(SPECIAL_TOKENS) if shape in _TINY_VOCAB_SHAPES else _QWEN_SPECIAL_BASE


def special_token_ids(shape: str = "tiny") -> dict[str, int]:
    """Ids of the Qwen added tokens in a model of `shape` (fast, 3b and 7b use the real Qwen ids)."""
    base = _special_base(shape)
    return {text: base + i for i, (text, _) in enumerate(SPECIAL_TOKENS)}


def _build_vocab(shape: str, n_vocab: int) -> _Vocab:
    """Byte tokens + learned merges, unique fillers up to the special block, the specials, fillers.

    Fillers (``[PAD<id>]``, normal type, as many as needed) make the token count equal the number of
    embedding rows (`n_vocab`, the model's vocab_size) exactly, as converted Qwen models pad theirs; no
    merge produces them, so ordinary text never tokenises into them.
    """
    base = _special_base(shape)
    byte_toks = list(_byte_tokens())
    merges = _train_bpe(_TINY_N_VOCAB - len(SPECIAL_TOKENS) - len(byte_toks))
    tokens = byte_toks + [a + b for a, b in merges]
    assert len(set(tokens)) == len(tokens), "BPE produced a duplicate token"
    tokens += [f"[PAD{i}]" for i in range(len(tokens), base)]
    tokens += [t for t, _ in SPECIAL_TOKENS]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
    types = [_NORMAL] * n_vocab
    for i, (_, ttype) in enumerate(SPECIAL_TOKENS):
        types[base + i] = ttype
    assert len(tokens) == n_vocab
    return _Vocab(tokens, types, [f"{a} {b}" for a, b in merges], special_token_ids(shape))


# Qwen2-VL's ChatML template (system default, image/video placeholders), so chat front ends work.
_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------------------------------------
# Dimensions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LM:
    arch: str  # llama.cpp architecture name
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    rope_theta: float
    rope_sections: tuple[int, int, int, int]  # sum == head_dim / 2
    tied: bool  # no output.weight: the LM head reuses token_embd (as real 2B-4B Qwen-VL models do)
    qkv_bias: bool  # Qwen2 family
    qk_norm: bool  # Qwen3 family
    n_deepstack: int  # Qwen3-VL
    n_vocab: int  # embedding rows (config.json's vocab_size)


@dataclass(frozen=True)
class _Vision:
    projector: str  # clip.projector_type
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    patch_size: int
    merge: int
    image_size: int
    n_wa_pattern: int  # Qwen2.5-VL: every n-th block is full attention (fullatt_block_indexes = n-1, 2n-1, ...)
    deepstack: tuple[int, ...]  # Qwen3-VL: vision layers feeding deepstack mergers
    n_pos_embd: int  # Qwen3-VL learned position embeddings (a square grid)
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5)


def _full_lm(arch: str, shape: str) -> _LM:
    """A real model's language-model dimensions (its config.json): ``3b`` or ``7b``."""
    if arch == "qwen3vl":
        if shape == "3b":  # Qwen3-VL-4B-Instruct
            big = dict(n_embd=2560, n_head=32, n_ff=9728, tied=True)
        else:  # Qwen3-VL-8B-Instruct
            big = dict(n_embd=4096, n_head=32, n_ff=12288, tied=False)
        return _LM(
            "qwen3vl",
            **big,
            n_layer=36,
            n_head_kv=8,
            head_dim=128,
            n_ctx_train=262144,
            rope_theta=5e6,
            rope_sections=(24, 20, 20, 0),
            qkv_bias=False,
            qk_norm=True,
            n_deepstack=3,
            n_vocab=_QWEN_N_VOCAB,
        )
    if shape == "3b":  # Qwen2.5-VL-3B-Instruct (also used for the qwen2vl 3b shape: Qwen2-VL has no 3B)
        big = dict(n_embd=2048, n_layer=36, n_head=16, n_head_kv=2, n_ff=11008, tied=True)
        n_vocab = _QWEN_N_VOCAB
    else:  # Qwen2.5-VL-7B-Instruct and Qwen2-VL-7B-Instruct: the same language model but for its context
        big = dict(n_embd=3584, n_layer=28, n_head=28, n_head_kv=4, n_ff=18944, tied=False)
        n_vocab = _QWEN_7B_N_VOCAB
    return _LM(
        "qwen2vl",
        **big,
        head_dim=128,
        n_ctx_train=128000 if arch == "qwen25vl" or shape == "3b" else 32768,
        rope_theta=1e6,
        rope_sections=(16, 24, 24, 0),
        qkv_bias=True,
        qk_norm=False,
        n_deepstack=0,
        n_vocab=n_vocab,
    )


def _small_lm(arch: str, shape: str, n_ds: int) -> _LM:
    """Test-sized language models: ``tiny``, ``fast`` and ``k256`` (see the module docstring)."""
    # M-RoPE sections sum to head_dim / 2: Qwen's [16,24,24] / [24,20,20] scaled down to 8 (tiny,
    # head_dim 16), 16 (fast, head_dim 32) or 32 (k256, head_dim 64).
    n_embd, head_dim, n_ff, n_vocab = {
        "tiny": (64, 16, 128, _TINY_N_VOCAB),
        "fast": (128, 32, 512, _QWEN_N_VOCAB),
        "k256": (256, 64, 1024, _TINY_N_VOCAB),  # rows of n_embd, n_head * head_dim or n_ff: multiples of 256
    }[shape]
    common = dict(
        n_embd=n_embd,
        n_head=4,
        n_head_kv=2,
        head_dim=head_dim,
        n_ff=n_ff,
        n_ctx_train=8192,
        n_vocab=n_vocab,
    )
    if arch == "qwen3vl":
        # n_layer must exceed n_deepstack: llama.cpp adds the deepstack slices *after* pruning the
        # last layer to the output rows, so a deepstack layer that is also the last one fails
        # ggml_add (real Qwen3-VL: 3 deepstack layers of 36).
        sections = {"tiny": (3, 3, 2, 0), "fast": (6, 5, 5, 0), "k256": (12, 10, 10, 0)}[shape]
        return _LM(
            "qwen3vl",
            n_layer=3,
            **common,
            rope_theta=5e6,
            rope_sections=sections,
            tied=shape == "k256",  # as Qwen3-VL-2B/4B: the k256 shape covers the tied LM head here
            qkv_bias=False,
            qk_norm=True,
            n_deepstack=n_ds,
        )
    sections = {"tiny": (2, 3, 3, 0), "fast": (4, 6, 6, 0), "k256": (8, 12, 12, 0)}[shape]
    return _LM(
        "qwen2vl",
        n_layer=2 if shape != "fast" else 3,
        **common,
        rope_theta=1e6,
        rope_sections=sections,
        tied=False,
        qkv_bias=True,
        qk_norm=False,
        n_deepstack=0,
    )


def _dims(arch: str, shape: str) -> tuple[_LM, _Vision]:
    """Language-model and vision-tower dimensions for (arch, shape)."""
    small = shape not in ("3b", "7b")  # tiny, k256, fast and mid: the tiny vision tower
    n_ds = 2 if small else 3
    if shape == "mid":
        # The 3b shape's layers, as few as the architecture allows, on the tiny vocabulary and tower.
        lm = replace(
            _full_lm(arch, "3b"),
            n_layer=3 if arch == "qwen3vl" else 2,
            n_ctx_train=8192,
            n_deepstack=n_ds if arch == "qwen3vl" else 0,
            n_vocab=_TINY_N_VOCAB,
        )
    elif small:
        lm = _small_lm(arch, shape, n_ds)
    else:
        lm = _full_lm(arch, shape)
    qwen3_8b = arch == "qwen3vl" and shape == "7b"

    if arch == "qwen2vl":
        v = _Vision(
            "qwen2vl_merger",
            n_layer=2 if small else 32,
            n_embd=32 if small else 1280,
            n_ff=128 if small else 5120,
            n_head=2 if small else 16,
            patch_size=14,
            merge=2,
            image_size=560,
            n_wa_pattern=0,
            deepstack=(),
            n_pos_embd=0,
            image_mean=_CLIP_MEAN,
            image_std=_CLIP_STD,
        )
    elif arch == "qwen25vl":
        # small shapes: 2 blocks, fullatt_block_indexes [1] -> block 0 windowed, block 1 full.
        # 3b and 7b: 32 blocks, fullatt_block_indexes [7, 15, 23, 31] -> n_wa_pattern 8; window 112 px.
        v = _Vision(
            "qwen2.5vl_merger",
            n_layer=2 if small else 32,
            n_embd=32 if small else 1280,
            n_ff=96 if small else 3420,
            n_head=2 if small else 16,
            patch_size=14,
            merge=2,
            image_size=560,
            n_wa_pattern=2 if small else 8,
            deepstack=(),
            n_pos_embd=0,
            image_mean=_CLIP_MEAN,
            image_std=_CLIP_STD,
        )
    else:
        # Qwen3-VL: patch 16 (32 px per output token); 2304 = 48x48 position embeddings (image_size 768).
        # 3b: Qwen3-VL-4B's tower (24 blocks of 1024); 7b: Qwen3-VL-8B's (27 blocks of 1152).
        n_pos = 64 if small else 2304
        v = _Vision(
            "qwen3vl_merger",
            n_layer=3 if small else 27 if qwen3_8b else 24,
            n_embd=32 if small else 1152 if qwen3_8b else 1024,
            n_ff=128 if small else 4304 if qwen3_8b else 4096,
            n_head=2 if small else 16,
            patch_size=16,
            merge=2,
            image_size=int(math.isqrt(n_pos)) * 16,
            n_wa_pattern=0,
            deepstack=(0, 1) if small else (8, 16, 24) if qwen3_8b else (5, 11, 17),
            n_pos_embd=n_pos,
            image_mean=_HALF,
            image_std=_HALF,
        )
    assert sum(lm.rope_sections) * 2 == lm.head_dim
    assert len(v.deepstack) == lm.n_deepstack
    assert lm.n_deepstack == 0 or lm.n_deepstack < lm.n_layer
    return lm, v


def pixels_per_token(arch: str) -> int:
    """Side in pixels of the image square that becomes one LM token (patch_size * spatial_merge)."""
    _, v = _dims(arch, "tiny")
    return v.patch_size * v.merge


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------

# How weights are drawn (why): a random transformer easily produces either near-uniform next-token
# distributions (entropy ~ ln|V|) or one-hot ones, neither of which exercises entropy-guided
# decoding. So:
#   * every matrix is N(0, 1/fan_in) ("unit gain": each layer keeps activations at rms ~1), the
#     residual-branch outputs (attn_output, ffn_down) at half gain so activations stay far from f16
#     limits even through 36 layers; in the untied tiny LM the token embedding is N(0, 1), so the
#     residual stream -- and hence the next-token distribution -- depends strongly on the context;
#   * norm weights are 1 + 0.05*N(0,1), biases 0.02*N(0,1) -- i.e. ~1 and ~0 like trained models;
#   * the LM head (output.weight, or token_embd when tied) has columns scaled by a log-normal
#     vector s (sigma 0.8) and an overall gain G. Logits for a normalised hidden state x are then
#     Gaussian over the vocabulary with std tau(x) = G*sqrt(sum_j s_j^2 x_j^2 / n_embd), which
#     depends strongly on which hidden dimensions x loads on. Different contexts therefore get
#     different "temperatures": some peaked (entropy < 1 nat), some broad (3-4 nats), never the
#     uniform ln|V| and never all one-hot. Measured on the tiny models (|V| = 1024, ln|V| = 6.9) with
#     G = 4, sigma 0.8: 10th percentile ~0.9 nats, median ~2.5, 90th percentile ~3.3-4.0.
_HEAD_GAIN = 4.0
_HEAD_LOGNORMAL_SIGMA = 0.8


@dataclass(frozen=True)
class _T:
    """One tensor to write: GGUF name, numpy-order shape (last axis = ggml ne0) and how to fill it."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "matrix" (wtype), "conv" (f16/f32), "f32" (norms, biases, position embeddings)
    std: float = 0.0
    mean: float = 0.0
    col_scale: tuple[str, float] | None = None  # (rng key, lognormal sigma) for the LM head


def _lm_tensors(lm: _LM) -> list[_T]:
    d, hd, n_vocab = lm.n_embd, lm.head_dim, lm.n_vocab
    nq, nkv = lm.n_head * hd, lm.n_head_kv * hd
    head = ("lm_head_scale", _HEAD_LOGNORMAL_SIGMA)
    # The LM head gain G applies to logits = W x with |x|^2 = d, hence std G/sqrt(d) per entry.
    head_std = _HEAD_GAIN / math.sqrt(d)
    ts = [
        _T(
            "token_embd.weight",
            (n_vocab, d),
            "matrix",
            std=head_std if lm.tied else 1.0,
            col_scale=head if lm.tied else None,
        )
    ]
    for i in range(lm.n_layer):
        p = f"blk.{i}."
        ts.append(_T(p + "attn_norm.weight", (d,), "f32", std=0.05, mean=1.0))
        ts.append(_T(p + "attn_q.weight", (nq, d), "matrix", std=1 / math.sqrt(d)))
        ts.append(_T(p + "attn_k.weight", (nkv, d), "matrix", std=1 / math.sqrt(d)))
        ts.append(_T(p + "attn_v.weight", (nkv, d), "matrix", std=1 / math.sqrt(d)))
        if lm.qkv_bias:
            ts.append(_T(p + "attn_q.bias", (nq,), "f32", std=0.02))
            ts.append(_T(p + "attn_k.bias", (nkv,), "f32", std=0.02))
            ts.append(_T(p + "attn_v.bias", (nkv,), "f32", std=0.02))
        if lm.qk_norm:
            ts.append(_T(p + "attn_q_norm.weight", (hd,), "f32", std=0.05, mean=1.0))
            ts.append(_T(p + "attn_k_norm.weight", (hd,), "f32", std=0.05, mean=1.0))
        ts.append(_T(p + "attn_output.weight", (d, nq), "matrix", std=0.5 / math.sqrt(nq)))
        ts.append(_T(p + "ffn_norm.weight", (d,), "f32", std=0.05, mean=1.0))
        ts.append(_T(p + "ffn_gate.weight", (lm.n_ff, d), "matrix", std=1 / math.sqrt(d)))
        ts.append(_T(p + "ffn_up.weight", (lm.n_ff, d), "matrix", std=1 / math.sqrt(d)))
        ts.append(_T(p + "ffn_down.weight", (d, lm.n_ff), "matrix", std=0.5 / math.sqrt(lm.n_ff)))
    ts.append(_T("output_norm.weight", (d,), "f32", std=0.05, mean=1.0))
    if not lm.tied:
        ts.append(_T("output.weight", (n_vocab, d), "matrix", std=head_std, col_scale=head))
    return ts


def _vision_tensors(v: _Vision, n_embd_out: int) -> list[_T]:
    """Tensors clip.cpp loads for the Qwen projectors (names from clip-impl.h, see module doc)."""
    h, ff, p = v.n_embd, v.n_ff, v.patch_size
    m4 = h * v.merge * v.merge
    qwen3 = v.projector == "qwen3vl_merger"
    rms = v.projector == "qwen2.5vl_merger"  # Qwen2.5-VL uses RMSNorm (weight only) everywhere
    # Conv3d(temporal 2) split into two Conv2d kernels; their outputs are summed, hence 2*3*p*p.
    conv_std = 1 / math.sqrt(2 * 3 * p * p)
    ts = [
        _T("v.patch_embd.weight", (h, 3, p, p), "conv", std=conv_std),
        _T("v.patch_embd.weight.1", (h, 3, p, p), "conv", std=conv_std),
    ]
    if qwen3:
        ts.append(_T("v.patch_embd.bias", (h,), "f32", std=0.02))
        ts.append(_T("v.position_embd.weight", (v.n_pos_embd, h), "f32", std=0.1))

    def norm(name: str, width: int) -> list[_T]:
        out = [_T(name + ".weight", (width,), "f32", std=0.05, mean=1.0)]
        if not rms:
            out.append(_T(name + ".bias", (width,), "f32", std=0.02))
        return out

    def linear(name: str, n_out: int, n_in: int, gain: float = 1.0) -> list[_T]:
        return [
            _T(name + ".weight", (n_out, n_in), "matrix", std=gain / math.sqrt(n_in)),
            _T(name + ".bias", (n_out,), "f32", std=0.02),
        ]

    for i in range(v.n_layer):
        b = f"v.blk.{i}."
        ts += norm(b + "ln1", h)
        if qwen3:
            ts += linear(b + "attn_qkv", 3 * h, h)
        else:
            ts += linear(b + "attn_q", h, h) + linear(b + "attn_k", h, h) + linear(b + "attn_v", h, h)
        ts += linear(b + "attn_out", h, h, 0.5)
        ts += norm(b + "ln2", h)
        if rms:
            ts += linear(b + "ffn_gate", ff, h)
        ts += linear(b + "ffn_up", ff, h) + linear(b + "ffn_down", h, ff, 0.5)
    # Merger: norm over the hidden size *before* the 2x2 merge (HF PatchMerger.ln_q / Qwen3 merger.norm).
    ts += norm("v.post_ln", h)
    ts += linear("mm.0", m4, m4) + linear("mm.2", n_embd_out, m4)
    for il in v.deepstack:
        # Deepstack mergers normalise *after* the merge (use_postshuffle_norm): LayerNorm over 4*h.
        ts += [
            _T(f"v.deepstack.{il}.norm.weight", (m4,), "f32", std=0.05, mean=1.0),
            _T(f"v.deepstack.{il}.norm.bias", (m4,), "f32", std=0.02),
        ]
        ts += linear(f"v.deepstack.{il}.fc1", m4, m4) + linear(f"v.deepstack.{il}.fc2", n_embd_out, m4)
    return ts


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

_GGML_F32, _GGML_F16, _GGML_Q8_0 = 0, 1, 8
_FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}  # LlamaFileType ALL_F32 / MOSTLY_F16 / MOSTLY_Q8_0
_CHUNK_VALUES = 1 << 23  # generate/convert at most ~8M values at a time (keeps 3b memory low)


def _ggml_type(t: _T, wtype: str) -> int:
    if t.kind == "f32" or wtype == "f32":
        return _GGML_F32
    if t.kind == "conv":
        return _GGML_F16  # ggml's im2col conv needs an F16/F32 kernel, as in real conversions
    if wtype == "q8_0" and t.shape[-1] % 32 == 0:
        return _GGML_Q8_0
    return _GGML_F16  # like convert_hf_to_gguf: rows not divisible by the block size stay F16


def _nbytes(shape: tuple[int, ...], gtype: int) -> int:
    n = math.prod(shape)
    return {_GGML_F32: 4 * n, _GGML_F16: 2 * n, _GGML_Q8_0: n // 32 * 34}[gtype]


def _rng(seed: int, key: str) -> np.random.Generator:
    """A generator per tensor, keyed by name, so values do not depend on writing order."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def _chunks(t: _T, seed: int, prefix: str) -> Iterator[np.ndarray]:
    """The tensor's float32 values, in row blocks (fixed block size, so output is deterministic)."""
    rng = _rng(seed, prefix + t.name)
    scale = None
    if t.col_scale is not None:
        key, sigma = t.col_scale
        s = np.exp(sigma * _rng(seed, prefix + key).standard_normal(t.shape[-1]))
        scale = (s / np.sqrt(np.mean(s * s))).astype(np.float32)  # rms 1: G alone sets the overall scale
    row = math.prod(t.shape[1:]) if len(t.shape) > 1 else t.shape[0]
    n_rows = t.shape[0] if len(t.shape) > 1 else 1
    step = max(1, _CHUNK_VALUES // row)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        shape = ((r1 - r0),) + tuple(t.shape[1:]) if len(t.shape) > 1 else t.shape
        x = rng.standard_normal(shape, dtype=np.float32)
        x *= np.float32(t.std)
        if t.mean:
            x += np.float32(t.mean)
        if scale is not None:
            x *= scale
        yield x


def _convert(x: np.ndarray, gtype: int) -> np.ndarray:
    if gtype == _GGML_F32:
        return x
    if gtype == _GGML_F16:
        return x.astype(np.float16)
    return quantize(x.reshape(-1, x.shape[-1]), gguf.GGMLQuantizationType.Q8_0)


def _pad(f: BinaryIO, n: int, align: int) -> None:
    rem = (-n) % align
    if rem:
        f.write(b"\x00" * rem)


def _write_gguf(
    path: Path,
    arch: str,
    kv: Callable[[gguf.GGUFWriter], None],
    tensors: list[_T],
    wtype: str,
    seed: int,
    progress: Callable[[str], None] | None,
    label: str,
) -> None:
    """Write one GGUF file streaming: header + KV + tensor infos first, then tensor data one at a time.

    `label` names the file in progress messages and also keys the random streams, so the qwen2vl and
    qwen25vl language models (same llama.cpp arch) still get different weights.

    Written to a temporary name in the same directory and renamed at the end, so an interrupted run
    never leaves a file under the final name.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    types = [_ggml_type(t, wtype) for t in tensors]
    total = sum(_nbytes(t.shape, g) for t, g in zip(tensors, types))
    try:
        w = gguf.GGUFWriter(tmp, arch)
        kv(w)
        for t, g in zip(tensors, types):
            w.add_tensor_info(
                t.name, t.shape, np.dtype(np.float32), _nbytes(t.shape, g), raw_dtype=gguf.GGMLQuantizationType(g)
            )
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None
        f = w.fout[0]
        align = w.data_alignment
        _pad(f, f.tell(), align)
        done = 0
        last_report = -1
        for i, (t, g) in enumerate(zip(tensors, types)):
            written = 0
            for x in _chunks(t, seed, label + "/"):
                data = _convert(x, g)
                data.tofile(f)
                written += data.nbytes
            assert written == _nbytes(t.shape, g), t.name
            _pad(f, written, align)
            done += written
            pct = int(100 * done / max(total, 1))
            if progress is not None and (pct // 5 != last_report or i == len(tensors) - 1):
                last_report = pct // 5
                progress(f"{label}: {pct}% ({i + 1}/{len(tensors)} tensors, {done / 2**20:.0f} MiB)")
        w.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def _common_kv(w: gguf.GGUFWriter, name: str, wtype: str) -> None:
    w.add_string("general.name", name)
    w.add_string(
        "general.description",
        "Random weights generated by vreason_local.tiny for tests and benchmarks; not a trained model.",
    )
    w.add_uint32("general.file_type", _FILE_TYPE[wtype])
    if wtype == "q8_0":
        w.add_uint32("general.quantization_version", 2)
    w.add_bool("vreason.random_weights", True)


def _lm_kv(lm: _LM, vocab: _Vocab, name: str, wtype: str) -> Callable[[gguf.GGUFWriter], None]:
    """Language-model metadata: what llama-model.cpp / llama-vocab.cpp read for qwen2vl / qwen3vl."""

    def kv(w: gguf.GGUFWriter) -> None:
        a = lm.arch
        w.add_string("general.type", "model")
        _common_kv(w, name, wtype)
        w.add_uint32(f"{a}.context_length", lm.n_ctx_train)
        w.add_uint32(f"{a}.embedding_length", lm.n_embd)
        w.add_uint32(f"{a}.block_count", lm.n_layer)
        w.add_uint32(f"{a}.feed_forward_length", lm.n_ff)
        w.add_uint32(f"{a}.attention.head_count", lm.n_head)
        w.add_uint32(f"{a}.attention.head_count_kv", lm.n_head_kv)
        w.add_uint32(f"{a}.attention.key_length", lm.head_dim)
        w.add_uint32(f"{a}.attention.value_length", lm.head_dim)
        w.add_float32(f"{a}.rope.freq_base", lm.rope_theta)
        w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
        w.add_array(f"{a}.rope.dimension_sections", list(lm.rope_sections))
        if lm.arch == "qwen3vl":
            w.add_uint32(f"{a}.n_deepstack_layers", lm.n_deepstack)
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.ggml.pre", "qwen2")
        w.add_array("tokenizer.ggml.tokens", vocab.tokens)
        w.add_array("tokenizer.ggml.token_type", vocab.types)
        w.add_array("tokenizer.ggml.merges", vocab.merges)
        ids = vocab.special_ids
        w.add_uint32("tokenizer.ggml.eos_token_id", ids["<|im_end|>"])
        w.add_uint32("tokenizer.ggml.eot_token_id", ids["<|im_end|>"])
        w.add_uint32("tokenizer.ggml.padding_token_id", ids["<|endoftext|>"])
        w.add_uint32("tokenizer.ggml.bos_token_id", ids["<|endoftext|>"])
        w.add_bool("tokenizer.ggml.add_bos_token", False)
        w.add_string("tokenizer.chat_template", _CHAT_TEMPLATE)

    return kv


def _mmproj_kv(v: _Vision, n_embd_out: int, name: str, wtype: str) -> Callable[[gguf.GGUFWriter], None]:
    """Projector metadata: the keys clip.cpp's load_hparams reads for the Qwen mergers."""

    def kv(w: gguf.GGUFWriter) -> None:
        w.add_string("general.type", "mmproj")
        _common_kv(w, name, wtype)
        w.add_bool("clip.has_vision_encoder", True)
        w.add_string("clip.projector_type", v.projector)
        w.add_uint32("clip.vision.projection_dim", n_embd_out)
        w.add_uint32("clip.vision.image_size", v.image_size)
        w.add_uint32("clip.vision.patch_size", v.patch_size)
        w.add_uint32("clip.vision.embedding_length", v.n_embd)
        w.add_uint32("clip.vision.feed_forward_length", v.n_ff)
        w.add_uint32("clip.vision.block_count", v.n_layer)
        w.add_uint32("clip.vision.attention.head_count", v.n_head)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
        w.add_array("clip.vision.image_mean", list(v.image_mean))
        w.add_array("clip.vision.image_std", list(v.image_std))
        w.add_uint32("clip.vision.spatial_merge_size", v.merge)
        if v.projector == "qwen2.5vl_merger":
            w.add_bool("clip.use_silu", True)
            w.add_uint32("clip.vision.n_wa_pattern", v.n_wa_pattern)  # required by clip.cpp for 2.5
        elif v.projector == "qwen3vl_merger":
            w.add_bool("clip.use_gelu", True)
            w.add_array("clip.vision.is_deepstack_layers", [i in v.deepstack for i in range(v.n_layer)])
        # qwen2vl_merger: neither flag -> clip.cpp's default quick-GELU, as Qwen2-VL uses.

    return kv


def file_names(arch: str, shape: str, wtype: str) -> tuple[str, str]:
    """(language model, mmproj) file names for these arguments: named after the shape, marked random."""
    stem = f"vreason-random-{arch}-{shape}-{wtype}"
    return f"{stem}.gguf", f"mmproj-{stem}.gguf"


def make_tiny(
    out_dir: Path,
    arch: str = "qwen25vl",
    shape: str = "tiny",
    wtype: str | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> TinyModel:
    """Write (or reuse) a random-weight model pair of `arch`/`shape` into `out_dir`.

    `wtype` is the type of the weight matrices ("f32", "f16" or "q8_0"; default q8_0 for 3b and 7b,
    whose f16 files would be 6-16 GB, f16 for the others); norms, biases and position embeddings stay
    F32 and the patch-embedding convolution F16, as in real conversions. Same arguments -> byte-identical files. If both files already
    exist they are returned untouched, which makes this cheap to call from test fixtures.
    """
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHES}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if wtype is None:
        wtype = "q8_0" if shape in ("3b", "7b") else "f16"
    if wtype not in WTYPES:
        raise ValueError(f"unknown wtype {wtype!r}; expected one of {WTYPES}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm_name, mm_name = file_names(arch, shape, wtype)
    result = TinyModel(out_dir / lm_name, out_dir / mm_name, arch, shape)
    if result.model_path.is_file() and result.mmproj_path.is_file():
        return result

    lm, v = _dims(arch, shape)
    vocab = _build_vocab(shape, lm.n_vocab)
    name = f"vreason {shape} {arch} (RANDOM WEIGHTS, not a real model)"
    if not result.mmproj_path.is_file():
        _write_gguf(
            result.mmproj_path,
            "clip",
            _mmproj_kv(v, lm.n_embd, name, wtype),
            _vision_tensors(v, lm.n_embd),
            wtype,
            seed,
            progress,
            f"{arch} mmproj",
        )
    if not result.model_path.is_file():
        _write_gguf(
            result.model_path,
            lm.arch,
            _lm_kv(lm, vocab, name, wtype),
            _lm_tensors(lm),
            wtype,
            seed,
            progress,
            f"{arch} model",
        )
    return result

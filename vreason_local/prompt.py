"""The chat prompt: Qwen's template around the media, the question and the reasoning instruction.

The prompt is split where the engine needs to cut it: the *prefix* (system turn, the user turn's
opening and the media) is encoded once and reused for every question about the same video; each
question then adds only its own text.
"""

from __future__ import annotations

from .errors import UserError
from .media import Media
from .settings import DEFAULT_SYSTEM
from .video import Frame

# Video-R1's instruction (which the paper's evaluation follows), shortened: think, then answer in tags.
REASONING_INSTRUCTION = (
    "Think about the question step by step as a careful human would, reflecting and checking your "
    "reasoning. Give your thinking between <think> and </think> tags, then your final answer between "
    "<answer> and </answer> tags."
)


def prefix_parts(media: Media, marker: str, system: str = DEFAULT_SYSTEM) -> tuple[str, list[Frame]]:
    """Prompt text up to and including the media, with one `marker` per frame, after the `system` turn
    (so a system prompt belongs to the media's encoding: `engine.media_key` counts it).

    Video frames go in consecutive pairs with no text between them, so mtmd merges each pair into one
    Qwen temporal patch; each pair is preceded by its timestamp (`<1.5 s>`), since mtmd positions each
    pair as its own image and the model would otherwise not know when it was taken.
    """
    text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
    frames = list(media.frames)
    if media.kind == "video":
        for i in range(0, len(frames), 2):
            pair = frames[i : i + 2]
            text += f"<{pair[0].timestamp_s:.1f} s>" + marker * len(pair)
        text += "\n"
    elif media.kind == "image":
        text += marker + "\n"
    return text, frames


def text_token_bound(text: str) -> int:
    """At most this many tokens: Qwen's tokenizer is byte-level BPE, so no token is shorter than a byte.

    Lets a run be sized before the model is loaded; the engine then counts the real prompt exactly.
    """
    return len(text.encode())


def require_question(question: str) -> None:
    if not question.strip():
        raise UserError("the question is empty")


def question_text(question: str, reasoning: bool, follow_up: bool) -> str:
    """The text of one user question and the opening of the assistant's turn.

    A follow-up closes the previous assistant turn first (generation stops before `<|im_end|>`).
    """
    body = question.strip()
    if reasoning:
        body += "\n\n" + REASONING_INSTRUCTION
    opening = "<|im_end|>\n<|im_start|>user\n" if follow_up else ""
    return f"{opening}{body}<|im_end|>\n<|im_start|>assistant\n"

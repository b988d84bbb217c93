"""The prompts the benchmarks' reference evaluations send, character for character.

A score is comparable with a published one only if the model was asked the same thing: the same option
lettering, the same instruction before or after the question ("Please answer yes or no:"), the same line
breaks. Each function below reproduces the default prompt of lmms-eval's task file for that benchmark
(github.com/EvolvingLMMs-Lab/lmms-eval, `lmms_eval/tasks/<task>/utils.py` and its yaml), whose rules
`reference.py` scores by; the loaders store the result in `Item.reference_prompt`.
"""

from __future__ import annotations

import string

# ---------------------------------------------------------------- MVBench (tasks/mvbench/utils.py, mvbench_*.yaml)

MVBENCH_POST_PROMPT = "Only give the best option.\n"


def mvbench_prompt(question: str, candidates: tuple[str, ...]) -> str:
    """`mvbench_doc_to_text`: "Question:" with no space, "(A) text" lines, every task's yaml post_prompt."""
    options = "".join(f"({string.ascii_uppercase[i]}) {option}\n" for i, option in enumerate(candidates))
    return "Question:" + question + "\nOption:\n" + options + MVBENCH_POST_PROMPT


# ---------------------------------------------------------------- TempCompass (tasks/tempcompass/*.yaml)

# The same suffixes as the benchmark's own inference scripts (llyx97/TempCompass run_*.py, `answer_prompt`).
TEMPCOMPASS_POST_PROMPTS = {
    "multi-choice": "\nPlease directly give the best option:",
    "yes_no": "\nPlease answer yes or no:",
    "caption_matching": "\nPlease directly give the best option:",
    "captioning": "",  # the question already ends in "Generated Caption:"
}


def tempcompass_prompt(question: str, question_type: str) -> str:
    """`tempcompass_doc_to_text_*`: the question as published (its options are lines inside it), then the
    question type's suffix."""
    return question + TEMPCOMPASS_POST_PROMPTS[question_type]


# ---------------------------------------------------------------- Video-MME (tasks/videomme/utils.py, videomme.yaml)

VIDEOMME_INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
VIDEOMME_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


def videomme_prompt(question: str, lettered_options: list[str]) -> str:
    """`videomme_doc_to_text` with the default post_prompt (which starts with a line break, so an empty line
    precedes it). Options as published: "A. text"."""
    return VIDEOMME_INSTRUCTION + "\n" + question + "\n" + "\n".join(lettered_options) + "\n" + VIDEOMME_POST_PROMPT


# ---------------------------------------------------------------- MMVU (tasks/mmvu/utils.py, mmvu_val)

_MMVU_MULTIPLE_CHOICE = """
Question:{question}
A: {a}
B: {b}
C: {c}
D: {d}
E: {e}
Visual Information: processed video
Do not generate any intermediate reasoning process. Answer directly with the option letter from the
given choices.
"""
_MMVU_OPEN_ENDED = """
Question:{question}
Visual Information: processed video
Do not generate any intermediate reasoning process. Directly output the final answer.
"""


def mmvu_prompt(question: str, choices: dict[str, str], multiple_choice: bool) -> str:
    """`mmvu_doc_to_text`: all five letters A-E are printed, an unused one as "E: " (the reference's templates,
    with their leading and trailing line breaks and the line broken inside "from the / given choices")."""
    if not multiple_choice:
        return _MMVU_OPEN_ENDED.format(question=question)
    letters = {k.lower(): choices.get(k, "") for k in "ABCDE"}
    return _MMVU_MULTIPLE_CHOICE.format(question=question, **letters)


# ---------------------------------------------------------------- VSI-Bench (tasks/vsibench/utils.py, *.yaml)

VSIBENCH_PRE_PROMPT = "These are frames of a video."
VSIBENCH_MCA_POST_PROMPT = "Answer with the option's letter from the given choices directly."
VSIBENCH_NA_POST_PROMPT = "Please answer the question using a single word or phrase."


def vsibench_prompt(question: str, lettered_options: list[str] | None) -> str:
    """`vsibench_doc_to_text`: numerical-answer questions (no options) and multiple-choice ones ("Options:" then
    the published "A. text" lines)."""
    if not lettered_options:
        return VSIBENCH_PRE_PROMPT + "\n" + question + "\n" + VSIBENCH_NA_POST_PROMPT
    options = "Options:\n" + "\n".join(lettered_options)
    return "\n".join([VSIBENCH_PRE_PROMPT, question, options, VSIBENCH_MCA_POST_PROMPT])


# ---------------------------------------------------------------- VideoMMMU (tasks/videommmu/utils.py, *.yaml)

VIDEOMMMU_PRE_PROMPT = "You should watch and learn the video content. Then apply what you learned to "
VIDEOMMMU_MCQ_PROMPT = (
    "answer the following multi-choice question. The image for this question is at the end of the video.\n"
)
VIDEOMMMU_OPEN_PROMPT = (
    "answer the following open-ended question. The image for this question is at the end of the video.\n"
)
VIDEOMMMU_QUIZ_PROMPT = "\nPlease ignore the Quiz question in last frame of the video."


def videommmu_options(options: list[str]) -> str:
    """`parse_options`: the options as published when each already starts with its "A." letter, else lettered."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if all(option.startswith(f"{letter}.") for option, letter in zip(options, letters)):
        return "\n".join(options)
    return "\n".join(f"{letter}. {option}" for letter, option in zip(letters, options))


def videommmu_prompt(question: str, options: list[str], track: str | None, multiple_choice: bool) -> str:
    """Adaptation (`videommmu_doc_to_text_adaptation`): the learn-then-apply line saying the question's image is
    at the end of the video. Perception and Comprehension (`..._perception_comprehension`): the question, its
    options (parsed even when there are none) and the line asking to ignore the quiz in the last frame."""
    if track == "Adaptation":
        if multiple_choice:
            return VIDEOMMMU_PRE_PROMPT + VIDEOMMMU_MCQ_PROMPT + question + "\n" + videommmu_options(options)
        return VIDEOMMMU_PRE_PROMPT + VIDEOMMMU_OPEN_PROMPT + question
    return question + "\n" + videommmu_options(options) + VIDEOMMMU_QUIZ_PROMPT

"""Each published benchmark's own scoring, reproduced rule for rule from its reference code, so that a run's
numbers can be set beside published ones (`--scoring reference`, the default for a benchmark's items).

The reference scripts are deliberately reproduced as they are, quirks included (Video-MME reads the first
capital A-D, so "Answer: C" is A; VSI-Bench reads the first word only); the forgiving reading is
`scoring.score` (`--scoring lenient`). Every rule names its source file (repository, path, commit). Where the
reference hands a reply to an LLM judge (TempCompass captioning always; TempCompass and MMVU when their word
rules find nothing), no judge runs here: captioning is left unscored (`score_reference` returns None) and the
others take the result the reference itself falls back on without a judge (TempCompass's `--disable_llm`:
rated 0; MMVU: the rule's verdict), marked `note="unmatched"` so reports can say how many.

The reply scored is the model's answer without its reasoning (`scoring.answer_part`): lmms-eval likewise strips
a reasoning model's thinking before its rules see the reply.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from .items import Item, option_letter
from .prompts import TEMPCOMPASS_POST_PROMPTS
from .scoring import Score, answer_part

# Sources (repository @ commit: path). lmms-eval's Video-MME and VideoMMMU parsers were replaced by a shared
# extractor in April 2026 (#1274); the rules here are the ones the benchmarks' published numbers were made with.
LMMS_EVAL_BEFORE_1274 = "EvolvingLMMs-Lab/lmms-eval@d0c1eae7"
LMMS_EVAL = "EvolvingLMMs-Lab/lmms-eval@75571cfe"
SOURCES: dict[str, str] = {
    "videomme": f"{LMMS_EVAL_BEFORE_1274}: lmms_eval/tasks/videomme/utils.py (extract_characters_regex), as "
    "MME-Benchmarks/Video-MME@4e7566d: evaluation/eval_your_results.py",
    "mvbench": f"{LMMS_EVAL}: lmms_eval/tasks/mvbench/utils.py (mcq_acc, mvbench_aggregate_results)",
    "tempcompass": "llyx97/TempCompass@e1b4631: eval_multi-choice.py, eval_yes_no.py, eval_caption_matching.py "
    "(--disable_llm), utils/eval_utils.py (print_result)",
    "mmvu": f"{LMMS_EVAL}: lmms_eval/tasks/mmvu/utils.py (evaluate_with_rule_based, mmvu_aggregate_results_val)",
    "vsibench": "vision-x-nyu/thinking-in-space@51e089c: lmms_eval/tasks/vsibench/utils.py",
    "videommmu": f"{LMMS_EVAL_BEFORE_1274}: lmms_eval/tasks/videommmu/utils.py and "
    "lmms_eval/tasks/_task_utils/mmmu_mcq_utils.py (parse_videommmu_multi_choice_response)",
}

# A Score's note: the reference asks an LLM judge for this reply and none ran (scored as the reference does
# without one), or the reference's aggregation leaves the reply out (an empty reply in MVBench and VideoMMMU).
UNMATCHED, EMPTY = "unmatched", "empty"


# ---------------------------------------------------------------- Video-MME
_VIDEOMME_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",  # sic: one string in the reference (a comma is missing)
    "Best answer:Best option:",  # sic: likewise
)


def videomme_extract(reply: str) -> str:
    """Video-MME's `extract_characters_regex`: the answer prefixes removed, then the first capital A-D anywhere
    ("" for none, or for a reply of over 10 words without one)."""
    s = reply.strip()
    for prefix in _VIDEOMME_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    match = re.search(r"[ABCD]", s)
    return "" if match is None else match[0]


def _videomme(item: Item, reply: str) -> Score:
    pred = videomme_extract(reply)
    correct = pred.lower() == str(item.answer).lower()
    return Score(pred or None, correct, float(correct))


# ---------------------------------------------------------------- MVBench
_MVBENCH_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]  # fmt: skip
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: "(?!<=" is the reference's, a lookahead, not a lookbehind
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_MVBENCH_OPTION = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE)


def _mvbench_punctuation(text: str) -> str:
    out = text
    for p in _MVBENCH_PUNCT:
        if (p + " " in text or " " + p in text) or (re.search(_COMMA_STRIP, text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The reference calls periodStrip.sub("", outText, re.UNICODE): re.UNICODE (32) lands in `count`.
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def mvbench_process(answer: str) -> str:
    """MVBench's `mcq_acc.process`: "B. text" is B; otherwise the reply cleaned of punctuation and lowered, and
    the first standalone letter a-e in it (any case) if there is one, else the cleaned text itself."""
    match = _MVBENCH_OPTION.match(answer.strip())
    if match:
        return match.group(1).upper()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    answer = _mvbench_punctuation(answer)
    answer = answer.strip("'").strip('"').strip(")").strip("(").strip().lower()
    letter = re.search(r"\b([A-E])\b", answer, re.IGNORECASE)
    return letter.group(1).upper() if letter else answer


def _mvbench(item: Item, reply: str) -> Score:
    pred = mvbench_process(reply)
    correct = pred == mvbench_process(str(item.answer))
    return Score(pred or None, correct, float(correct), EMPTY if reply == "" else None)


# ---------------------------------------------------------------- TempCompass
def tempcompass_question(item: Item, kind: str) -> str:
    """The question as TempCompass's files hold it (options on its lines, with their own labels: "A.",
    "Option 1:", "Sentence A:"): the reference prompt less the task's answer prompt, which is how the loader
    builds it; without one, the question with its options lettered "A. text" as the multi-choice files do."""
    prompt = item.reference_prompt
    suffix = TEMPCOMPASS_POST_PROMPTS[kind]
    if prompt is not None and prompt.endswith(suffix):
        return prompt[: len(prompt) - len(suffix)]
    lines = [item.question] + [f"{option_letter(i)}. {text}" for i, text in enumerate(item.options)]
    return "\n".join(lines)


def _tempcompass_answer(item: Item, option_lines: Sequence[str]) -> str:
    """The reference answer as the files give it: the whole option line ("B. text", "Option 2: text"). Items
    keep the letter; the line at that letter is the file's answer."""
    answer = str(item.answer)
    index = ord(answer) - ord("A") if len(answer) == 1 and answer.isupper() else -1
    return option_lines[index] if 0 <= index < len(option_lines) else answer


def _tempcompass_multi_choice(item: Item, reply: str) -> Score:
    """eval_multi-choice.py's hand-crafted rules; what they cannot match the reference asks ChatGPT about, and
    rates 0 with --disable_llm."""
    pred = reply.replace("</s>", "").strip()
    answer = _tempcompass_answer(item, tempcompass_question(item, "multi-choice").split("\n")[1:])
    if pred == answer:
        rating, said = 1, answer[0]
    elif pred in ["A", "B", "C", "D"]:
        rating, said = int(pred == answer[0]), pred
    elif any(pred.startswith(prefix) for prefix in ["A.", "B.", "C.", "D."]):
        said = pred.split(".")[0]
        rating = int(said == answer[0])
    elif any(pred.startswith(prefix) for prefix in ["A)", "B)", "C)", "D)"]):
        said = pred.split(")")[0]
        rating = int(said == answer[0])
    else:
        return Score(None, False, 0.0, UNMATCHED)
    return Score(said, bool(rating), float(rating))


def _tempcompass_yes_no(item: Item, reply: str) -> Score:
    """eval_yes_no.py's `extract_pred`: the reply starts with "yes" or "no" (any case)."""
    pred = reply.replace("</s>", "").strip().lower()
    said = "yes" if pred.startswith("yes") else "no" if pred.startswith("no") else None
    if said is None:
        return Score(None, False, 0.0, UNMATCHED)
    correct = said == str(item.answer).strip().lower()
    return Score(said, correct, float(correct))


def tempcompass_eval_rule(video_llm_output: str, question: str, answer: str) -> int | str:
    """eval_caption_matching.py's `eval_rule`, as written: the reply must be a whole option line, an option's
    sentence, or its label ("Sentence A", "A", "Option 1", "1"); 1/0, or "fail" when it is none of these."""
    option_strs = question.split("\n")[1:]
    option_sents = [opt.split(": ")[1] for opt in option_strs]
    option_inds = [opt.split(": ")[0] for opt in option_strs] + [
        opt.split(": ")[0].replace("Sentence ", "").replace("Option ", "").replace("Caption ", "")
        for opt in option_strs
    ]
    video_llm_pred = None
    for option_str in option_strs:
        if option_str == video_llm_output:
            video_llm_pred = option_str
    for option_sent in option_sents:
        if option_sent == video_llm_output or (
            ") " in video_llm_output and option_sent == video_llm_output.split(") ")[1]
        ):
            video_llm_pred = option_sent
    for option_ind in option_inds:
        if option_ind == video_llm_output or option_ind == video_llm_output.replace(".", ""):
            video_llm_pred = option_ind
    if video_llm_pred is None:
        return "fail"
    return (
        1
        if video_llm_pred == answer
        or video_llm_pred == answer.split(":")[0]
        or video_llm_pred == answer.split(": ")[1]
        or video_llm_pred == answer.split(": ")[0].split()[1]
        else 0
    )


def _tempcompass_caption_matching(item: Item, reply: str) -> Score:
    pred = reply.replace("</s>", "").strip()
    question = tempcompass_question(item, "caption_matching")
    answer = _tempcompass_answer(item, question.split("\n")[1:])
    try:
        rating = tempcompass_eval_rule(pred, question, answer)
    except IndexError:  # an option line without "label: sentence" breaks the reference too; nothing matched
        rating = "fail"
    if rating == "fail":
        return Score(None, False, 0.0, UNMATCHED)
    return Score(pred, bool(rating), float(rating))


# ---------------------------------------------------------------- MMVU
_SUPERSCRIPTS = dict(zip("²³¹⁰⁴⁵⁶⁷⁸⁹", ["^2", "^3", "^1", "^0", "^4", "^5", "^6", "^7", "^8", "^9"], strict=True))


def _math_notation(text: str) -> str:
    for sup, caret in _SUPERSCRIPTS.items():
        text = text.replace(sup, caret)
    return text


def mmvu_multiple_choice(prediction: str, answer: str, choices: Mapping[str, str]) -> bool:
    """MMVU's `evaluate_with_rule_based` for multiple-choice: the first standalone letter A-E (any case) is the
    answer's; or the answer's letter stands alone anywhere; or the answer option's text is in the reply; or
    the answer's letter is in it (even inside a word) with one of the option's words over two letters."""
    pred_str = str(prediction).strip()
    answer_str = str(answer).strip()
    letter = re.search(r"\b([A-E])\b", pred_str, re.IGNORECASE)
    if letter and letter.group(1).upper() == answer_str.upper():
        return True
    if answer_str.upper() in pred_str.upper() and re.search(rf"\b{re.escape(answer_str)}\b", pred_str, re.IGNORECASE):
        return True
    if answer_str in choices:
        choice_text = choices[answer_str].strip().lower()
        pred_lower = pred_str.lower()
        if choice_text in pred_lower:
            return True
        if answer_str.upper() in pred_str.upper():
            words = [w.strip(string.punctuation) for w in choice_text.split() if len(w.strip(string.punctuation)) > 2]
            if words and any(word in pred_lower for word in words):
                return True
    return False


def mmvu_open_ended(prediction: str, answer: str) -> bool:
    """MMVU's `evaluate_with_rule_based` for open-ended answers, in its order: equal after lower-casing and
    joining whitespace; the answer inside the reply; the reply inside the answer; the first numbers within
    0.01; every answer word over two letters among the reply's words (answers of 2-5 words); the same O()."""
    pred_normalized = _math_notation(str(prediction).strip().lower())
    answer_normalized = _math_notation(str(answer).strip().lower())
    pred_clean = " ".join(pred_normalized.split())
    answer_clean = " ".join(answer_normalized.split())
    if pred_clean == answer_clean or answer_clean in pred_clean or pred_clean in answer_clean:
        return True
    pred_numbers = re.findall(r"\d+\.?\d*", pred_normalized)
    answer_numbers = re.findall(r"\d+\.?\d*", answer_normalized)
    if answer_numbers and pred_numbers and abs(float(answer_numbers[0]) - float(pred_numbers[0])) < 0.01:
        return True
    answer_words = [w.strip(string.punctuation) for w in answer_clean.split() if w.strip(string.punctuation)]
    pred_words = [w.strip(string.punctuation) for w in pred_clean.split() if w.strip(string.punctuation)]
    if 2 <= len(answer_words) <= 5 and all(word in pred_words for word in answer_words if len(word) > 2):
        return True
    pred_o = re.search(r"O\s*\([^)]+\)", pred_clean, re.IGNORECASE)
    answer_o = re.search(r"O\s*\([^)]+\)", answer_clean, re.IGNORECASE)
    return bool(
        pred_o and answer_o and _math_notation(pred_o.group(0).lower()) == _math_notation(answer_o.group(0).lower())
    )


def _mmvu_mc(item: Item, reply: str) -> Score:
    choices = {option_letter(i): text for i, text in enumerate(item.options)}
    correct = mmvu_multiple_choice(reply, str(item.answer), choices)
    letter = re.search(r"\b([A-E])\b", reply)  # what the reference logs as its extracted answer
    return Score(letter.group(1) if letter else None, correct, float(correct))


def _mmvu_open(item: Item, reply: str) -> Score:
    """The rules' verdict; where they say wrong the reference asks its GPT judge, and keeps the rules' verdict
    when the judge cannot be reached, as here."""
    correct = mmvu_open_ended(reply, _gold_text(item.answer))
    return Score(reply or None, correct, float(correct), None if correct else UNMATCHED)


# ---------------------------------------------------------------- VSI-Bench
VSI_MCA_TYPES = (
    "object_rel_direction_easy",
    "object_rel_direction_medium",
    "object_rel_direction_hard",
    "object_rel_distance",
    "route_planning",
    "obj_appearance_order",
)
VSI_NA_TYPES = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")
VSI_REL_DIRECTION = VSI_MCA_TYPES[:3]


def vsibench_first_word(pred: str) -> str:
    """VSI-Bench's `fuzzy_matching`: the reply up to its first space, trailing periods and whitespace removed."""
    return pred.split(" ")[0].rstrip(".").strip()


def vsibench_to_float(pred: str) -> float | None:
    try:
        return float(pred)
    except (TypeError, ValueError):
        return None


def vsibench_mra(pred: float, target: float, start: float = 0.5, end: float = 0.95, interval: float = 0.05) -> float:
    """VSI-Bench's `mean_relative_accuracy`, in the reference's floats: the share of thresholds c in
    linspace(.5, .95, 10) with |pred - target| / target <= 1 - c (`<=`: an error of exactly 1 - c counts)."""
    num_pts = (end - start) / interval + 2
    conf_intervs = np.linspace(start, end, int(num_pts))
    accuracy = abs(pred - target) / target <= 1 - conf_intervs
    return float(accuracy.mean())


def _vsibench_mca(item: Item, reply: str) -> Score:
    pred = vsibench_first_word(reply)
    correct = pred.lower() == str(item.answer).lower()
    return Score(pred or None, correct, float(correct))


def _vsibench_na(item: Item, reply: str) -> Score:
    """MRA of the reply's first word read as a number; a word that is no number scores 0 (the reference's
    TypeError case). A truth of 0 never occurs in VSI-Bench (the reference would divide by it): scored 1 only
    for exactly 0."""
    pred = vsibench_to_float(vsibench_first_word(reply))
    truth = float(item.answer)  # type: ignore[arg-type]
    if pred is None:
        return Score(None, False, 0.0)
    mra = (1.0 if pred == 0 else 0.0) if truth == 0 else vsibench_mra(pred, truth)
    return Score(pred, mra == 1.0, mra)


# ---------------------------------------------------------------- VideoMMMU
def videommmu_multi_choice(response: str, all_choices: Sequence[str], index2ans: Mapping[str, str]) -> str:
    """lmms-eval's `parse_videommmu_multi_choice_response`: letters written "A." or "A:", else "(A)", else
    "A ", else (in a reply of over 5 words) an option's text; of several, the one mentioned last.
    "API Error" for an empty reply, "No Answer Found." for none."""
    if response == "API Error" or response == "":
        return "API Error"
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index_ans, ans_with_brack, ans_with_period, ans_with_colon = True, False, False, False
    candidates: list[str] = []
    for choice in all_choices:
        if f"{choice}." in response:
            candidates.append(choice)
            ans_with_period = True
    for choice in all_choices:
        if f"{choice}:" in response:
            candidates.append(choice)
            ans_with_colon = True
    if not candidates:
        for choice in all_choices:
            if f"({choice})" in response:
                candidates.append(choice)
                ans_with_brack = True
    if not candidates:
        for choice in all_choices:
            if f"{choice} " in response:
                candidates.append(choice)
    if not candidates and len(response.split()) > 5:
        for index, ans in index2ans.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False
    if not candidates:
        return "No Answer Found."
    if len(candidates) == 1:
        return candidates[0]
    if not index_ans:
        starts = [response.lower().rfind(index2ans[can].lower()) for can in candidates]
    elif ans_with_period:
        starts = [response.rfind(f"{can}.") for can in candidates]
    elif ans_with_colon:
        starts = [response.rfind(f"{can}:") for can in candidates]
    elif ans_with_brack:
        starts = [response.rfind(f"({can})") for can in candidates]
    else:
        starts = [response.rfind(f" {can} ") for can in candidates]
    return candidates[int(np.argmax(starts))]


def _videommmu_mc(item: Item, reply: str) -> Score:
    choices = [option_letter(i) for i in range(len(item.options))]
    pred = videommmu_multi_choice(reply, choices, dict(zip(choices, item.options, strict=True)))
    if pred == "API Error":
        return Score(None, False, 0.0, EMPTY)
    correct = pred == str(item.answer)
    return Score(None if pred == "No Answer Found." else pred, correct, float(correct))


def _videommmu_check_is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def videommmu_normalize_str(text: str) -> list[str | float]:
    """lmms-eval's `normalize_str`: a number rounded to 2 decimals; otherwise the lower-cased text (a single
    character padded with a space on either side, so it matches only as a word)."""
    text = text.strip()
    if _videommmu_check_is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def videommmu_extract_numbers(text: str) -> list[str]:
    pattern_commas = r"-?\b\d{1,3}(?:,\d{3})+\b"
    pattern_scientific = r"-?\d+(?:\.\d+)?[eE][+-]?\d+"
    pattern_simple = r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"
    return re.findall(pattern_commas, text) + re.findall(pattern_scientific, text) + re.findall(pattern_simple, text)


_VIDEOMMMU_INDICATORS = (
    "could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ", "are ", "in total ", "total ",
    "identify ", "recognize ", "calculated as ", "counted as ", "measured as ", "observed as ", "concluded as ",
    "found to be ", "equals ", "determined to be ", "number of ", "value is ", "adds up to ", "have ", "has ",
)  # fmt: skip


def videommmu_open_response(response: str) -> list[str | float] | str:
    """lmms-eval's `parse_open_response`: per sentence, the shortest tail after a concluding phrase ("is ",
    "therefore ", "=" in the last sentence ...), plus every number in those tails, each normalised."""
    if response == "API Error" or response == "":
        return "API Error"
    response = response.strip().strip(".").lower()
    sub_responses = re.split(r"\.\s(?=[A-Z])|\n", response)
    indicators = list(_VIDEOMMMU_INDICATORS)
    key_responses = []
    for index, resp in enumerate(sub_responses):
        if index == len(sub_responses) - 1:
            indicators.extend(["="])
        shortest = None
        for indicator in indicators:
            if indicator in resp:
                tail = resp.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", ":", "'"]:
            key_responses.append(shortest)
    if not key_responses:
        key_responses = [response]
    pred_list: list[str] = list(key_responses)
    for resp in key_responses:
        pred_list.extend(videommmu_extract_numbers(resp))
    normalised: list[str | float] = []
    for pred in pred_list:
        normalised.extend(videommmu_normalize_str(pred))
    return list(dict.fromkeys(normalised))  # the reference's set(), in a stable order


def videommmu_eval_open(gold: str, preds: Iterable[str | float]) -> bool:
    """lmms-eval's `eval_open`: a text answer inside any predicted text, or a number equal (both rounded to 2
    decimals) to a predicted number."""
    norm_answers = videommmu_normalize_str(gold)
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(ans, str) and ans in pred for ans in norm_answers):
                return True
        elif pred in norm_answers:
            return True
    return False


def _videommmu_open(item: Item, reply: str) -> Score:
    preds = videommmu_open_response(reply)
    if preds == "API Error":
        return Score(None, False, 0.0, EMPTY)
    correct = videommmu_eval_open(_gold_text(item.answer), preds)
    return Score(" | ".join(str(p) for p in preds) or None, correct, float(correct))


def _gold_text(answer: object) -> str:
    """An answer as the dataset's file wrote it: a number read as a float (12.0) is written 12."""
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    return str(answer)


# ---------------------------------------------------------------- dispatch and aggregation
RULES: dict[str, Callable[[Item, str], Score] | None] = {
    "videomme:mc": _videomme,
    "mvbench:mc": _mvbench,
    "tempcompass:multi-choice": _tempcompass_multi_choice,
    "tempcompass:yes_no": _tempcompass_yes_no,
    "tempcompass:caption_matching": _tempcompass_caption_matching,
    "tempcompass:captioning": None,  # a ChatGPT judge reads the caption: left unscored
    "mmvu:mc": _mmvu_mc,
    "mmvu:open": _mmvu_open,
    "vsibench:mca": _vsibench_mca,
    "vsibench:na": _vsibench_na,
    "videommmu:mc": _videommmu_mc,
    "videommmu:open": _videommmu_open,
}


def is_judged(rule: str | None) -> bool:
    """Whether the reference scores this rule's replies with an LLM judge only (unscored here)."""
    return rule is not None and rule in RULES and RULES[rule] is None


def score_reference(item: Item, text: str) -> Score | None:
    """`item` scored as its benchmark's reference scores the model's output `text`; None where the reference
    needs an LLM judge (left unscored). Raises ValueError for an item without a rule or answer, or an unknown rule."""
    if item.rule is None or item.answer is None:
        raise ValueError(f"{item.source or item.id}: no reference rule or answer to score against")
    if item.rule not in RULES:
        raise ValueError(f"{item.source or item.id}: unknown reference rule {item.rule!r} (known: {', '.join(RULES)})")
    rule = RULES[item.rule]
    return None if rule is None else rule(item, answer_part(text))


# MMVU's overall counts the subjects its TASK_MAP files under a discipline (mmvu_aggregate_results_val).
MMVU_SUBJECTS = frozenset(
    "Biology Chemistry Modern_Physics Astronomy Geography Materials_Science Neurobiology Electromagnetism "
    "Thermodynamics Mechanics Civil_Engineering Electrical_Engineering Mechanical_Engineering "
    "Biomedical_Engineering Electronics_and_Communication Computer_Science Clinical_Medicine Basic_Medicine "
    "Preventive_Medicine Pharmacy Dentistry Art Literature History Law Economics Management".split()
)
OVERALL_METHODS = {
    "videomme": "share correct of all questions (no letter read: wrong)",
    "mvbench": "share correct of the questions with a non-empty reply",
    "tempcompass": "share correct of the questions (captioning, judged by an LLM, left out)",
    "mmvu": "share correct of the questions in the subjects the reference files under a discipline",
    "vsibench": "mean over question types of each type's accuracy or MRA, the three object_rel_direction types "
    "first averaged into one",
    "videommmu": "share correct of the questions with a non-empty reply",
}


def overall(dataset: str, scored: Sequence[tuple[Mapping[str, str], Score]]) -> float | None:
    """A benchmark's headline figure (0-1) as its reference aggregates it, from each answered item's categories
    and reference score (judged items already left out); None when there is nothing to aggregate."""
    kept = [(cats, s) for cats, s in scored if s.note != EMPTY]
    if dataset == "mmvu" and any("subject" in cats for cats, _ in kept):
        kept = [(cats, s) for cats, s in kept if cats.get("subject", "").replace(" ", "_") in MMVU_SUBJECTS]
    if not kept:
        return None
    if dataset != "vsibench":
        return float(np.mean([s.score for _, s in kept]))
    by_type: dict[str, list[float]] = {}
    for cats, s in kept:
        by_type.setdefault(cats.get("question_type", ""), []).append(s.score)
    means = {t: float(np.mean(v)) for t, v in by_type.items()}
    directions = [means.pop(t) for t in VSI_REL_DIRECTION if t in means]
    if directions:  # the reference averages the three (it requires all three; a subset averages those present)
        means["object_rel_direction"] = sum(directions) / len(directions)
    return sum(means.values()) / len(means)

"""Each benchmark's reference scoring, case by case, against its rules written out from the reference code.

Every test names the file it was written from (repository @ commit: path). The expected values are worked out
by hand from those rules, quirks included (the point of `--scoring reference` is to count as the reference
counts), and every example of issue 21 is here. The rules were also checked once against the reference
functions themselves, run on 20,000 random replies, before these cases were written down.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vreason_local.evaluate.items import Item
from vreason_local.evaluate.reference import (
    EMPTY,
    RULES,
    UNMATCHED,
    is_judged,
    overall,
    score_reference,
    vsibench_mra,
)
from vreason_local.evaluate.row_scores import score_fields
from vreason_local.evaluate.scoring import Score, mean_relative_accuracy

LMMS = "EvolvingLMMs-Lab/lmms-eval"
TC_MC = "\nPlease directly give the best option:"
TC_YN = "\nPlease answer yes or no:"


def _item(rule: str, answer, options: tuple[str, ...] = (), kind: str = "multiple-choice", prompt: str | None = None):
    return Item("q1", Path("v.mp4"), "Q?", kind, answer, options, dataset=rule.split(":")[0], rule=rule,
                reference_prompt=prompt)  # fmt: skip


def _read(rule: str, answer, reply: str, options: tuple[str, ...] = (), prompt: str | None = None) -> Score:
    scored = score_reference(_item(rule, answer, options, prompt=prompt), reply)
    assert scored is not None
    return scored


# ---------------------------------------------------------------- VSI-Bench
# vision-x-nyu/thinking-in-space@51e089c: lmms_eval/tasks/vsibench/utils.py
# mean_relative_accuracy: thresholds np.linspace(.5, .95, 10); correct at c when |pred - gt| / gt <= 1 - c.


@pytest.mark.parametrize(
    ("truth", "reply", "mra", "lenient"),
    [
        (4, "5", 0.6, 0.5),  # error .25: c = .50 ... .75 (6 of 10); the lenient `<` drops c = .75 -> 0.5
        (2, "3", 0.1, 0.0),  # error .5: only c = .50
        (20, "21", 1.0, 0.9),  # error .05: every c, .95 included
        (10, "10", 1.0, 1.0),
        (10, "16", 0.0, 0.0),  # error .6 > .5
        (10, "7", 0.5, 0.4),  # error .3: c = .50 ... .70 (5 of 10) with <=, c = .70 dropped by <
    ],
)
def test_vsibench_mra_uses_less_or_equal(truth: float, reply: str, mra: float, lenient: float) -> None:
    """thinking-in-space: lmms_eval/tasks/vsibench/utils.py, mean_relative_accuracy (`<=`); issue 21's examples."""
    scored = _read("vsibench:na", float(truth), reply)
    assert scored.score == pytest.approx(mra, abs=1e-12)
    assert scored.correct == (mra == 1.0)
    assert vsibench_mra(float(reply), float(truth)) == pytest.approx(mra, abs=1e-12)
    assert mean_relative_accuracy(float(reply), float(truth)) == pytest.approx(lenient, abs=1e-12)


@pytest.mark.parametrize(
    ("reply", "read"),
    [
        ("5 meters", 5.0),  # fuzzy_matching: the first space-separated word
        ("5.", 5.0),  # its trailing periods removed
        ("5m", None),  # float("5m") fails: scored 0 (the reference's TypeError branch)
        ("About 5", None),  # the number is not the first word
        ("3,5", None),
        ("2e1", 20.0),  # float() reads it
    ],
)
def test_vsibench_reads_the_first_word_only(reply: str, read: float | None) -> None:
    """thinking-in-space: lmms_eval/tasks/vsibench/utils.py, fuzzy_matching and to_float."""
    scored = _read("vsibench:na", 20.0, reply)
    assert scored.extracted == read
    assert scored.score == (0.0 if read is None else vsibench_mra(read, 20.0))


@pytest.mark.parametrize(
    ("reply", "correct"), [("B", True), ("B.", True), ("B. the chair", True), ("b", True), ("(B)", False), ("The answer is B", False)]
)  # fmt: skip
def test_vsibench_multiple_choice_is_the_first_word(reply: str, correct: bool) -> None:
    """thinking-in-space: lmms_eval/tasks/vsibench/utils.py, exact_match(fuzzy_matching(pred), gt) (case-blind)."""
    assert _read("vsibench:mca", "B", reply, ("left", "right")).correct is correct


def test_vsibench_overall_is_the_mean_over_question_types_with_rel_direction_folded() -> None:
    """thinking-in-space: lmms_eval/tasks/vsibench/utils.py, vsibench_aggregate_results: per question type the
    mean, the three object_rel_direction types averaged into one, then the mean of those."""

    def s(x: float) -> Score:
        return Score(None, x == 1.0, x)

    scored = [
        ({"question_type": "object_counting"}, s(1.0)),
        ({"question_type": "object_counting"}, s(0.0)),
        ({"question_type": "object_counting"}, s(0.5)),  # type mean 0.5
        ({"question_type": "object_rel_direction_easy"}, s(1.0)),  # 1.0
        ({"question_type": "object_rel_direction_medium"}, s(0.0)),  # 0.0
        ({"question_type": "object_rel_direction_hard"}, s(1.0)),
        ({"question_type": "object_rel_direction_hard"}, s(0.0)),  # 0.5 -> rel_direction (1 + 0 + .5) / 3 = .5
        ({"question_type": "route_planning"}, s(1.0)),  # 1.0
    ]
    assert overall("vsibench", scored) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert overall("vsibench", scored) != pytest.approx(sum(x.score for _, x in scored) / len(scored))  # item mean


# ---------------------------------------------------------------- Video-MME
# EvolvingLMMs-Lab/lmms-eval@d0c1eae7: lmms_eval/tasks/videomme/utils.py, extract_characters_regex (the same as
# MME-Benchmarks/Video-MME@4e7566d: evaluation/eval_your_results.py): prefixes removed, then the first A-D.


@pytest.mark.parametrize(
    ("reply", "read"),
    [
        ("Answer: C", "A"),  # issue 21: the "A" of "Answer" is the first capital A-D
        ("C", "C"),
        ("(C) Red.", "C"),
        ("The best answer is C.", "C"),  # the prefix is removed first
        ("Based on the video, C", "B"),  # "Based"
        ("the shirt is red and the man is waving at the camera slowly", None),  # over 10 words, no A-D
        ("c", None),  # capitals only
    ],
)
def test_videomme_takes_the_first_capital_a_to_d(reply: str, read: str | None) -> None:
    """lmms-eval@d0c1eae7: lmms_eval/tasks/videomme/utils.py, extract_characters_regex."""
    scored = _read("videomme:mc", "C", reply, ("a", "b", "c", "d"))
    assert scored.extracted == read
    assert scored.correct is (read == "C")


def test_videomme_overall_counts_an_unread_reply_as_wrong() -> None:
    """lmms-eval@d0c1eae7: lmms_eval/tasks/videomme/utils.py, videomme_aggregate_results: correct / all answered."""
    item = _item("videomme:mc", "A", ("a", "b", "c", "d"))
    scored = [({}, score_reference(item, r)) for r in ("A", "the shirt is red and the man is waving at us slowly")]
    assert overall("videomme", scored) == 0.5  # type: ignore[arg-type]


# ---------------------------------------------------------------- MVBench
# EvolvingLMMs-Lab/lmms-eval@75571cfe: lmms_eval/tasks/mvbench/utils.py, mcq_acc: "X. text" is X; otherwise
# punctuation cleaned, lowered, and the first standalone letter a-e (any case); aggregate over non-empty replies.


@pytest.mark.parametrize(
    ("reply", "read", "correct"),
    [
        ("B", "B", True),
        ("(B) a man", "B", True),  # brackets cleaned away: "b a man", whose first standalone letter is b
        ("B. a man waving", "B", True),  # "X. text" is read first
        ("b", "B", True),
        ("Best option: (B)", "B", True),
        ("a man is waving", "A", False),  # the article is a standalone letter
        ("waving", "waving", False),  # no letter: the text itself, never equal to a letter
    ],
)
def test_mvbench_single_letter(reply: str, read: str, correct: bool) -> None:
    """lmms-eval@75571cfe: lmms_eval/tasks/mvbench/utils.py, mcq_acc.process."""
    scored = _read("mvbench:mc", "B", reply, ("x", "y", "z"))
    assert (scored.extracted, scored.correct) == (read, correct)


def test_mvbench_overall_leaves_empty_replies_out() -> None:
    """lmms-eval@75571cfe: lmms_eval/tasks/mvbench/utils.py, mvbench_aggregate_results (pred_answer != "")."""
    item = _item("mvbench:mc", "B", ("x", "y", "z"))
    empty = score_reference(item, "")
    assert empty is not None and empty.note == EMPTY and not empty.correct
    scored = [({}, score_reference(item, r)) for r in ("B", "C", "")]
    assert overall("mvbench", scored) == 0.5  # type: ignore[arg-type]


# ---------------------------------------------------------------- TempCompass
# llyx97/TempCompass@e1b4631: eval_multi-choice.py, eval_yes_no.py, eval_caption_matching.py (--disable_llm:
# what the word rules cannot match is rated 0 instead of going to ChatGPT); prompts from lmms-eval@75571cfe:
# lmms_eval/tasks/tempcompass/_default_template_yaml (the same answer prompts as TempCompass's run_qwen2_vl.py).
TC_QUESTION = "What is the man doing?\nA. dunking a basketball\nB. dribbling a basketball\nC. passing a basketball"
TC_OPTIONS = ("dunking a basketball", "dribbling a basketball", "passing a basketball")


@pytest.mark.parametrize(
    ("reply", "read", "correct", "note"),
    [
        ("A. dunking a basketball", "A", True, None),  # the whole answer line
        ("A", "A", True, None),
        ("B", "B", False, None),
        ("A) dunking", "A", True, None),
        ("The man is dunking a basketball.", None, False, UNMATCHED),  # the reference asks ChatGPT; no LLM: 0
        ("(A)", None, False, UNMATCHED),
    ],
)
def test_tempcompass_multi_choice(reply: str, read: str | None, correct: bool, note: str | None) -> None:
    """TempCompass@e1b4631: eval_multi-choice.py, the hand-crafted rules."""
    scored = _read("tempcompass:multi-choice", "A", reply, TC_OPTIONS, TC_QUESTION + TC_MC)
    assert (scored.extracted, scored.correct, scored.note) == (read, correct, note)


@pytest.mark.parametrize(
    ("reply", "truth", "correct", "note"),
    [
        ("Yes, the man is dunking.", "yes", True, None),  # issue 21: the reply starts with yes
        ("yes", "yes", True, None),
        ("No.", "yes", False, None),
        ("Nothing like that happens.", "no", True, None),  # starts with "no": the reference's rule, as written
        ("The man is dunking.", "yes", False, UNMATCHED),
    ],
)
def test_tempcompass_yes_no_reads_how_the_reply_starts(reply: str, truth: str, correct: bool, note: str | None):
    """TempCompass@e1b4631: eval_yes_no.py, extract_pred."""
    scored = _read("tempcompass:yes_no", truth, reply, prompt="Is the man dunking?" + TC_YN)
    assert (scored.correct, scored.note) == (correct, note)


CAPTION_QUESTIONS = {  # TempCompass@e1b4631: questions/caption_matching.json, its three templates
    "sentence": "Which sentence better captures the essence of the video?\nSentence A: A man is dunking a basketball."
    "\nSentence B: A video showing a person passing a basketball.",
    "caption": "Which caption matches the video better?\nCaption A: A man is dunking a basketball.\nCaption B: The man "
    "is shooting a basketball.",
    "option": "Which description is a more suitable match for the video?\nOption 1: The man is dribbling a basketball."
    "\nOption 2: A man is dunking a basketball.",
}


@pytest.mark.parametrize(
    ("template", "truth", "reply", "correct"),
    [
        ("sentence", "A", "Sentence A", True),  # issue 21: "Sentence A:" options are options
        ("sentence", "A", "A", True),
        ("sentence", "A", "Sentence A: A man is dunking a basketball.", True),
        ("sentence", "A", "A man is dunking a basketball.", True),  # the sentence itself
        ("sentence", "A", "Sentence B", False),
        ("caption", "A", "Caption A", True),
        ("caption", "A", "Caption A.", True),  # periods removed for the label
        ("caption", "A", "B", False),
        ("option", "B", "Option 2", True),
        ("option", "B", "2", True),
        ("option", "B", "1", False),
    ],
)
def test_tempcompass_caption_matching(template: str, truth: str, reply: str, correct: bool) -> None:
    """TempCompass@e1b4631: eval_caption_matching.py, eval_rule."""
    question = CAPTION_QUESTIONS[template]
    options = tuple(line.split(": ")[1] for line in question.split("\n")[1:])
    scored = _read("tempcompass:caption_matching", truth, reply, options, question + TC_MC)
    assert (scored.correct, scored.note) == (correct, None)


def test_tempcompass_caption_matching_unmatched_and_captioning_judged() -> None:
    """TempCompass@e1b4631: eval_caption_matching.py (rule "fail" -> ChatGPT, 0 with --disable_llm) and
    eval_captioning.py (ChatGPT always reads the caption: unscored here)."""
    question = CAPTION_QUESTIONS["caption"]
    scored = _read("tempcompass:caption_matching", "A", "The first one.", ("x", "y"), question + TC_MC)
    assert (scored.correct, scored.score, scored.note) == (False, 0.0, UNMATCHED)
    captioning = _item("tempcompass:captioning", "B. dunking a basketball", kind="free-form")
    assert score_reference(captioning, "A man dunks.") is None and is_judged("tempcompass:captioning")
    fields = score_fields(captioning, "A man dunks.", "reference")
    assert fields["score"] is None and fields["reference"]["note"] == "judged" and fields["lenient"]["score"] == 0.0


# ---------------------------------------------------------------- MMVU
# EvolvingLMMs-Lab/lmms-eval@75571cfe: lmms_eval/tasks/mmvu/utils.py, evaluate_with_rule_based (a GPT judge is
# asked where the rules say wrong; when it cannot be reached the rules' verdict stands, as here).


@pytest.mark.parametrize(
    ("truth", "reply", "correct"),
    [
        ("Depth-First Search (DFS)", "DFS", True),  # issue 21: the reply inside the answer
        ("Depth-First Search (DFS)", "The algorithm is depth-first search (DFS).", True),  # the answer inside it
        ("Depth-First Search (DFS)", "BFS", False),
        ("red blood cells", "Cells, red and blood-filled? No: blood cells, red.", True),  # all words over 2 letters
        ("3.14159", "about 3.14 m", True),  # first numbers within 0.01
        ("3.14159", "about 3.1 m", False),
        ("O(n^2)", "It runs in O(n²) time", True),  # superscripts read as ^
    ],
)
def test_mmvu_open_ended_rules(truth: str, reply: str, correct: bool) -> None:
    """lmms-eval@75571cfe: lmms_eval/tasks/mmvu/utils.py, evaluate_with_rule_based (open-ended branch)."""
    scored = _read("mmvu:open", truth, reply)
    assert (scored.correct, scored.note) == (correct, None if correct else UNMATCHED)


@pytest.mark.parametrize(
    ("reply", "correct"),
    [
        ("B", True),
        ("The answer is (B).", True),  # the first standalone letter A-E
        ("I pick the option about mitochondria", True),  # the answer option's text is in the reply
        ("A", False),
        ("a cell", False),  # the article is read as A
    ],
)
def test_mmvu_multiple_choice_rules(reply: str, correct: bool) -> None:
    """lmms-eval@75571cfe: lmms_eval/tasks/mmvu/utils.py, evaluate_with_rule_based (multiple-choice branch)."""
    options = ("nucleus", "mitochondria", "ribosome", "golgi", "lysosome")
    assert _read("mmvu:mc", "B", reply, options).correct is correct


# ---------------------------------------------------------------- VideoMMMU
# EvolvingLMMs-Lab/lmms-eval@d0c1eae7: lmms_eval/tasks/videommmu/utils.py (parse_open_response, eval_open,
# normalize_str) and lmms_eval/tasks/_task_utils/mmmu_mcq_utils.py (parse_videommmu_multi_choice_response).


@pytest.mark.parametrize(
    ("reply", "read"),
    [
        ("A. is tempting, but C. is right", "C"),  # issue 21: of several, the last mentioned
        ("(B)", "B"),
        ("The answer is D", "D"),
        ("I would say the cat is clearly sleeping here", "B"),  # over 5 words, no letter: the option's text
        ("none", None),  # "No Answer Found."
    ],
)
def test_videommmu_multiple_choice_last_letter(reply: str, read: str | None) -> None:
    """lmms-eval@d0c1eae7: lmms_eval/tasks/_task_utils/mmmu_mcq_utils.py, parse_videommmu_multi_choice_response."""
    scored = _read("videommmu:mc", "C", reply, ("running", "sleeping", "eating", "jumping"))
    assert (scored.extracted, scored.correct) == (read, read == "C")


@pytest.mark.parametrize(
    ("truth", "reply", "correct"),
    [
        ("100", "The answer is 100", True),
        ("100", "The answer is 103", False),  # issue 21: equality, not MRA within 5 %
        ("100", "The answer is 100.004", True),  # both rounded to 2 decimals
        ("3.14159", "so the value is 3.14", True),
        ("photosynthesis", "The process is photosynthesis.", True),  # a text answer inside the reply's key part
        ("photosynthesis", "The process is respiration.", False),
    ],
)
def test_videommmu_open_numbers_equal_after_rounding(truth: str, reply: str, correct: bool) -> None:
    """lmms-eval@d0c1eae7: lmms_eval/tasks/videommmu/utils.py, parse_open_response and eval_open."""
    assert _read("videommmu:open", truth, reply, ()).correct is correct


def test_videommmu_numeric_truth_and_empty_reply() -> None:
    """lmms-eval@d0c1eae7: lmms_eval/tasks/videommmu/utils.py: a number is compared as a number (an item keeping
    12.0 is the file's "12"); an empty reply is "API Error", left out of videommmu_aggregate_results."""
    item = _item("videommmu:open", 12.0, kind="numeric")
    assert score_reference(item, "The total is 12").correct  # type: ignore[union-attr]
    empty = score_reference(item, "")
    assert empty is not None and empty.note == EMPTY
    assert overall("videommmu", [({}, empty), ({}, score_reference(item, "12"))]) == 1.0  # type: ignore[list-item]


# ---------------------------------------------------------------- dispatch


def test_every_contract_rule_is_known_and_an_unknown_rule_is_refused() -> None:
    """The contract's rule names (issue 21): each has a rule here; only TempCompass captioning is judged."""
    assert set(RULES) == {
        "videomme:mc", "mvbench:mc", "tempcompass:multi-choice", "tempcompass:yes_no",
        "tempcompass:caption_matching", "tempcompass:captioning", "mmvu:mc", "mmvu:open", "vsibench:mca",
        "vsibench:na", "videommmu:mc", "videommmu:open",
    }  # fmt: skip
    assert [r for r in RULES if is_judged(r)] == ["tempcompass:captioning"]
    with pytest.raises(ValueError, match="unknown reference rule"):
        score_reference(_item("videomme:open", "A"), "A")


def test_reasoning_is_not_scored() -> None:
    """The rules read the answer, not the thinking before it (lmms-eval strips reasoning before its rules)."""
    scored = _read("videomme:mc", "C", "<think>Answer A or B?</think>C", ("a", "b", "c", "d"))
    assert scored.extracted == "C"


def test_score_fields_keep_both_scorings_and_the_chosen_one() -> None:
    item = _item("vsibench:na", 4.0, kind="numeric")
    ref = score_fields(item, "5", "reference")
    assert (ref["score"], ref["scoring"], ref["reference"]["score"], ref["lenient"]["score"]) == (
        0.6,
        "reference",
        0.6,
        0.5,
    )
    len_ = score_fields(item, "5", "lenient")
    assert (len_["score"], len_["scoring"], len_["reference"]["score"]) == (0.5, "lenient", 0.6)
    own = Item("q", Path("v.mp4"), "How many?", "numeric", 4.0)  # the project's own format: no rule
    fields = score_fields(own, "<answer>5</answer>", "reference")
    assert (fields["scoring"], fields["reference"], fields["score"]) == ("lenient", None, 0.5)

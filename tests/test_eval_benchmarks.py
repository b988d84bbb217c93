"""The six public benchmarks loaded as their official sources distribute them, without --media-root.

Each test builds a tiny copy of a benchmark in one published on-disk layout, with generated clips where that
layout keeps its videos, loads it through `load_dataset` as downloaded (the whole folder, its annotation
folder, one file) and checks each item: answer, options, the benchmark's categories, the reference's scoring
rule, the prompt character for character, and the video file found. The expected prompts are written out
here by hand from the reference's task code (the file is cited above each), not computed by the code under
test. Layout sources:
- MVBench: HF OpenGVLab/MVBench (json/, video/*.zip); OpenGVLab/Ask-Anything video_chat2/mvbench.ipynb
  (`data_list`); lmms-eval lmms_eval/tasks/mvbench/utils.py (`DATA_LIST`, `revision: video`, data0613/).
- TempCompass: llyx97/TempCompass (questions/<type>.json, videos/); HF lmms-lab/TempCompass (<type>/
  test-00000-of-00001.parquet, tempcompass_videos.zip); lmms-eval lmms_eval/tasks/tempcompass/utils.py.
- Video-MME: HF lmms-lab/Video-MME (videomme/test-00000-of-00001.parquet, data/); MME-Benchmarks/Video-MME
  evaluation/output_test_template.json and its eval_your_results.py (per-video JSON); lmms-eval
  lmms_eval/tasks/videomme/utils.py (`videomme_doc_to_visual`: .mp4, .MP4, .mkv).
- MMVU: yale-nlp/MMVU data/validation.json (HF: validation.json, videos/<subject>/<n>.mp4); lmms-eval
  lmms_eval/tasks/mmvu/utils.py (video_path, subject = its folder).
- VSI-Bench: HF nyu-visionx/VSI-Bench (test.jsonl / parquet, <dataset>.zip); lmms-eval and
  vision-x-nyu/thinking-in-space lmms_eval/tasks/vsibench/utils.py.
- VideoMMMU: perception_video.json / comprehension_video.json ({"Perception": {"0": {...}}}); HF
  lmms-lab/VideoMMMU (<Track>/test-00000-of-00001.parquet); lmms-eval lmms_eval/tasks/videommmu/utils.py
  (`get_cache_dir`, `parse_options`, the Adaptation prompt).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eval_support import place

from vreason_local.evaluate.datasets import dataset_sha256, load_dataset
from vreason_local.evaluate.items import Item


def _json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _by_id(items: list[Item]) -> dict[str, Item]:
    return {item.id: item for item in items}


# ---------------------------------------------------------------- MVBench

_STAR = dict(question="What did the person do first?", candidates=["Sat on the bed.", "Took the towel."])
_CLEVRER = dict(question="What direction is the cube moving?", candidates=["up", "left", "down"], answer="left")


def _mvbench_json(root: Path, star_video: str, window: bool = True) -> None:
    star = dict(_STAR, video=star_video, answer="Took the towel.") | (dict(start=1.5, end=9.0) if window else {})
    _json(root / "json" / "action_sequence.json", [star])
    _json(root / "json" / "moving_direction.json", [dict(_CLEVRER, video="video_10009.mp4")])
    _json(root / "json" / "fine_grained_pose.json", [dict(_CLEVRER, video="S001C001P001R001A001.mp4")])


def test_mvbench_notebook_layout_whole_folder_json_folder_and_one_file(tmp_path: Path, clip: Path) -> None:
    """HF OpenGVLab/MVBench main branch: json/<task>.json, the zips of video/ unpacked under video/, folders as
    the notebook's `data_list` names them; star clips are whole Charades videos, cut by the row's start/end."""
    root = tmp_path / "MVBench"
    place(
        clip,
        root / "video",
        "star/Charades_v1_480/6H78U.mp4",
        "clevrer/video_validation/video_10009.mp4",
        "nturgbd/S001C001P001R001A001.mp4",
    )
    _mvbench_json(root, "6H78U.mp4")
    dataset = load_dataset(root)
    assert dataset.format == "mvbench" and dataset.invalid == [] and dataset.path == root
    items = _by_id(dataset.items)
    assert set(items) == {"action_sequence-1", "moving_direction-1", "fine_grained_pose-1"}
    star, cube, pose = items["action_sequence-1"], items["moving_direction-1"], items["fine_grained_pose-1"]
    assert (star.answer, star.start, star.end) == ("B", 1.5, 9.0)
    assert star.video == (root / "video/star/Charades_v1_480/6H78U.mp4").resolve()
    assert cube.video == (root / "video/clevrer/video_validation/video_10009.mp4").resolve()
    assert pose.video == (root / "video/nturgbd/S001C001P001R001A001.mp4").resolve()
    # the task names of the notebook's data_list; one rule for every task
    assert [i.categories for i in (star, cube, pose)] == [
        (("task", "Action Sequence"),),
        (("task", "Moving Direction"),),
        (("task", "Fine-grained Pose"),),
    ]
    assert {i.rule for i in items.values()} == {"mvbench:mc"} and {i.dataset for i in items.values()} == {"mvbench"}
    # lmms_eval/tasks/mvbench/utils.py mvbench_doc_to_text + mvbench_*.yaml post_prompt
    assert cube.prompt() == (
        "Question:What direction is the cube moving?\nOption:\n(A) up\n(B) left\n(C) down\nOnly give the best option.\n"
    )
    assert cube.reference_prompt == cube.prompt()

    by_folder = load_dataset(root / "json")  # the annotation folder alone: the videos are still found
    assert [(i.id, i.video) for i in by_folder.items] == [(i.id, i.video) for i in dataset.items]
    one = load_dataset(root / "json" / "moving_direction.json")
    assert [(i.id, i.video) for i in one.items] == [("moving_direction-1", cube.video)]
    assert one.items[0].source == "moving_direction.json:#1" and dataset.items[0].source.startswith("json/")


def test_mvbench_lmms_eval_video_revision_folders_and_data0613(tmp_path: Path, clip: Path) -> None:
    """lmms-eval's `revision: video` snapshot keeps the task folders at its root under other names
    (star/Charades_segment, nturgbd_convert ...), its star/sta/tvqa clips already cut to the window;
    data0613/ holds the clips added later (lmms_eval/tasks/mvbench/utils.py DATA_LIST, mvbench_doc_to_visual)."""
    root = tmp_path / "mvbench_video"
    place(
        clip,
        root,
        "star/Charades_segment/6H78U_1.5_9.0.mp4",
        "nturgbd_convert/S001C001P001R001A001.mp4",
        "data0613/clevrer/video_validation/video_10009.mp4",
        "ssv2_video_mp4/74225.mp4",
        "tvqa/video_fps3_hq_segment/castle_s01e01_seg02_clip_00_0.0_10.0.mp4",
        "sta/sta_video_segment/NBMH9_21.4_37.6.mp4",
    )
    _mvbench_json(root, "6H78U_1.5_9.0.mp4")
    _json(root / "json" / "action_antonym.json", [dict(_CLEVRER, video="74225.mp4")])
    episode = dict(_CLEVRER, video="castle_s01e01_seg02_clip_00_0.0_10.0.mp4", start=0.0, end=10.0)
    _json(root / "json" / "episodic_reasoning.json", [episode])
    _json(
        root / "json" / "action_localization.json", [dict(_CLEVRER, video="NBMH9_21.4_37.6.mp4", start=21.4, end=37.6)]
    )
    dataset = load_dataset(root)
    assert dataset.invalid == []
    items = _by_id(dataset.items)
    expected = {
        "action_sequence-1": "star/Charades_segment/6H78U_1.5_9.0.mp4",
        "fine_grained_pose-1": "nturgbd_convert/S001C001P001R001A001.mp4",
        "moving_direction-1": "data0613/clevrer/video_validation/video_10009.mp4",
        "action_antonym-1": "ssv2_video_mp4/74225.mp4",
        "episodic_reasoning-1": "tvqa/video_fps3_hq_segment/castle_s01e01_seg02_clip_00_0.0_10.0.mp4",
        "action_localization-1": "sta/sta_video_segment/NBMH9_21.4_37.6.mp4",
    }
    assert {k: v.video for k, v in items.items()} == {k: (root / v).resolve() for k, v in expected.items()}
    # a pre-cut segment is the window already: cutting it again at 1.5-9.0 s would ask about the wrong frames
    for cut in ("action_sequence-1", "episodic_reasoning-1", "action_localization-1"):
        assert (items[cut].start, items[cut].end) == (None, None)
    assert items["episodic_reasoning-1"].category("task") == "Episodic Reasoning"


def test_mvbench_missing_videos_say_which_archive_to_unpack_where(tmp_path: Path, clip: Path) -> None:
    root = tmp_path / "MVBench"
    _mvbench_json(root, "6H78U.mp4")
    dataset = load_dataset(root)
    assert dataset.items == []
    reasons = {entry.source: entry.reason for entry in dataset.invalid}
    assert reasons["json/action_sequence.json:#1"].startswith(
        f"MVBench videos not found: unpack video/star.zip into {root}/video/star/ "
        f"(lmms-eval's download: {root}/star/Charades_segment/) (looked for {root}/star/Charades_segment/6H78U.mp4 "
    )
    assert reasons["json/fine_grained_pose.json:#1"].startswith(
        f"MVBench videos not found: unpack video/nturgbd.zip into {root}/video/nturgbd/"
    )
    place(clip, root / "video", "tvqa/frames_fps3_hq/castle_s01e01/00001.jpg")  # frames, as video/tvqa.zip has
    _json(root / "json" / "episodic_reasoning.json", [dict(_CLEVRER, video="castle_s01e01")])
    (entry,) = [e for e in load_dataset(root).invalid if e.source.startswith("json/episodic")]
    assert entry.reason.startswith(
        "MVBench videos not found: Episodic Reasoning needs lmms-eval's download "
        f"({root}/tvqa/video_fps3_hq_segment/); "
        "the main branch's video/tvqa.zip holds frames, not videos (looked for "
    )
    media = tmp_path / "elsewhere"  # --media-root still overrides the layout
    place(clip, media, "star/Charades_v1_480/6H78U.mp4")
    (item,) = load_dataset(root / "json" / "action_sequence.json", media_root=media).items
    assert item.video == (media / "star/Charades_v1_480/6H78U.mp4").resolve() and item.start == 1.5


# ---------------------------------------------------------------- TempCompass

_TC_MC = {
    "question": "What is the man doing in the video?\nA. dunking a basketball\nB. dribbling a basketball",
    "answer": "A. dunking a basketball",
}
_TC_YES = {"question": "Is the man dunking?", "answer": "yes"}
_TC_MATCH = [
    {
        "question": "Which description is a more suitable match for the video?\nOption 1: The man is dribbling.\n"
        "Option 2: A man is dunking a basketball.",
        "answer": "Option 2: A man is dunking a basketball.",
    },
    {
        "question": "Which sentence better captures the essence of the video?\nSentence A: A man is dunking.\n"
        "Sentence B: A person passing a basketball.",
        "answer": "Sentence A: A man is dunking.",
    },
    {
        "question": "Which caption matches the video better?\nCaption A: A man is dunking.\nCaption B: The man shoots.",
        "answer": "Caption B: The man shoots.",
    },
]
_TC_CAPTION = {
    "question": "You will be presented with a video and several pieces of information.\nInformation A: "
    "{'subject': 'man', 'action': 'dribbling'}\nInformation B: {'subject': 'man', 'action': 'dunking'}\n"
    "Generated Caption:",
    "answer": "B. dunking a basketball",
}


def _check_tempcompass(items: dict[str, Item], root: Path) -> None:
    mc = items["1034419625-multi-choice-action-1"]
    assert (mc.type, mc.options, mc.answer, mc.question) == (
        "multiple-choice",
        ("dunking a basketball", "dribbling a basketball"),
        "A",
        "What is the man doing in the video?",
    )
    assert mc.categories == (("dimension", "action"), ("question_type", "multi-choice"))
    # lmms_eval/tasks/tempcompass/_default_template_yaml post_prompt (= llyx97/TempCompass run_*.py answer_prompt)
    assert mc.prompt() == _TC_MC["question"] + "\nPlease directly give the best option:"
    yes = items["1034419625-yes_no-action-1"]
    assert (yes.type, yes.answer, yes.rule) == ("free-form", "yes", "tempcompass:yes_no")
    assert yes.prompt() == "Is the man dunking?\nPlease answer yes or no:"
    option, sentence, caption = (items[f"1034419625-caption_matching-action-{k}"] for k in (1, 2, 3))
    assert (option.options, option.answer) == (("The man is dribbling.", "A man is dunking a basketball."), "B")
    assert (sentence.options, sentence.answer) == (("A man is dunking.", "A person passing a basketball."), "A")
    assert (caption.options, caption.answer, caption.type) == (
        ("A man is dunking.", "The man shoots."),
        "B",
        "multiple-choice",
    )
    assert sentence.question == "Which sentence better captures the essence of the video?"
    assert caption.prompt() == _TC_MATCH[2]["question"] + "\nPlease directly give the best option:"
    assert {i.rule for i in (option, sentence, caption)} == {"tempcompass:caption_matching"}
    captioning = items["1034419625-captioning-direction-1"]
    assert (captioning.type, captioning.rule, captioning.prompt()) == (
        "free-form",
        "tempcompass:captioning",  # judged by an LLM in the reference: left unscored by reference.py
        _TC_CAPTION["question"],  # its post_prompt is empty: the question ends in "Generated Caption:"
    )
    assert captioning.categories == (("dimension", "direction"), ("question_type", "captioning"))
    assert {i.video for i in items.values()} == {(root / "videos/1034419625.mp4").resolve()}


def test_tempcompass_official_questions_folder(tmp_path: Path, clip: Path) -> None:
    """llyx97/TempCompass: questions/<type>.json nested {video_id: {dimension: [...]}}, videos/ at the root,
    and meta_info.json (no questions) beside them."""
    root = tmp_path / "TempCompass"
    place(clip, root, "videos/1034419625.mp4")
    _json(root / "questions" / "multi-choice.json", {"1034419625": {"action": [_TC_MC]}})
    _json(root / "questions" / "yes_no.json", {"1034419625": {"action": [_TC_YES]}})
    _json(root / "questions" / "caption_matching.json", {"1034419625": {"action": _TC_MATCH}})
    _json(root / "questions" / "captioning.json", {"1034419625": {"direction": [_TC_CAPTION]}})
    _json(root / "meta_info.json", {"1034419625": {"eval_dim": {}, "content": ["people"]}})
    dataset = load_dataset(root)
    assert dataset.format == "tempcompass" and dataset.invalid == [] and len(dataset.items) == 6
    _check_tempcompass(_by_id(dataset.items), root)
    yes_no = load_dataset(root / "questions" / "yes_no.json")  # one file: the videos at the root still found
    assert [i.id for i in yes_no.items] == ["1034419625-yes_no-action-1"]


def test_tempcompass_lmms_lab_parquet_per_task_type(tmp_path: Path, clip: Path) -> None:
    """HF lmms-lab/TempCompass: <type>/test-00000-of-00001.parquet with flat rows (video_id, question, answer,
    dim; captioning adds mc_question, mc_answer), tempcompass_videos.zip holding videos/."""
    root = tmp_path / "tempcompass"
    place(clip, root, "videos/1034419625.mp4")
    base = {"video_id": "1034419625", "dim": "action"}
    _parquet(root / "multi-choice" / "test-00000-of-00001.parquet", [base | _TC_MC])
    _parquet(root / "yes_no" / "test-00000-of-00001.parquet", [base | _TC_YES])
    _parquet(root / "caption_matching" / "test-00000-of-00001.parquet", [base | m for m in _TC_MATCH])
    caption = base | _TC_CAPTION | {"dim": "direction", "mc_question": "Which?", "mc_answer": "B. dunking"}
    _parquet(root / "captioning" / "test-00000-of-00001.parquet", [caption])
    dataset = load_dataset(root)
    assert dataset.invalid == [] and len(dataset.items) == 6
    _check_tempcompass(_by_id(dataset.items), root)
    assert dataset.items[0].source == "caption_matching/test-00000-of-00001.parquet:#1"

    shutil.rmtree(root / "videos")
    missing = load_dataset(root / "yes_no" / "test-00000-of-00001.parquet")
    assert missing.invalid[0].reason.startswith(
        f"TempCompass videos not found: unpack tempcompass_videos.zip (lmms-lab/TempCompass) into {root}/ "
        f"(looked for {root}/videos/1034419625.mp4 and "
    )


# ---------------------------------------------------------------- Video-MME

_VIDEOMME_Q = dict(
    question_id="001-1",
    task_type="Counting Problem",
    question="How many red socks are above the fireplace?",
    options=["A. 0.", "B. 1.", "C. 2.", "D. 3."],
    answer="C",
)
_VIDEOMME_V = dict(video_id="001", duration="short", domain="Knowledge", sub_category="Humanity & History")
# lmms_eval/tasks/videomme/utils.py videomme_doc_to_text with videomme.yaml's default post_prompt
_VIDEOMME_PROMPT = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option.\n"
    "How many red socks are above the fireplace?\nA. 0.\nB. 1.\nC. 2.\nD. 3.\n\n"
    "Answer with the option's letter from the given choices directly."
)


def test_videomme_lmms_lab_parquet_with_mp4_MP4_and_mkv(tmp_path: Path, clip: Path) -> None:
    """HF lmms-lab/Video-MME: videomme/test-00000-of-00001.parquet, the chunked zips unpacked into data/; the
    reference tries <videoID>.mp4, .MP4, then .mkv (videomme_doc_to_visual)."""
    root = tmp_path / "Video-MME"
    place(clip, root, "data/fFjv93ACGo8.mp4", "data/Upper1.MP4", "data/mkvOnly.mkv")
    rows = [
        _VIDEOMME_V | dict(url="https://www.youtube.com/watch?v=fFjv93ACGo8", videoID="fFjv93ACGo8") | _VIDEOMME_Q,
        _VIDEOMME_V
        | dict(videoID="Upper1", video_id="002", duration="medium", domain="Sports Competition")
        | dict(_VIDEOMME_Q, question_id="002-1", task_type="OCR Problems"),
        _VIDEOMME_V | dict(videoID="mkvOnly", video_id="003", duration="long") | dict(_VIDEOMME_Q, question_id="003-1"),
        _VIDEOMME_V | dict(videoID="absent", video_id="004") | dict(_VIDEOMME_Q, question_id="004-1"),
    ]
    _parquet(root / "videomme" / "test-00000-of-00001.parquet", rows)
    for given in (root, root / "videomme" / "test-00000-of-00001.parquet"):
        dataset = load_dataset(given)
        assert dataset.format == "videomme"
        items = _by_id(dataset.items)
        assert {k: v.video.name for k, v in items.items()} == {
            "001-1": "fFjv93ACGo8.mp4",
            "002-1": "Upper1.MP4",
            "003-1": "mkvOnly.mkv",
        }
        first = items["001-1"]
        assert (first.options, first.answer, first.rule) == (("0.", "1.", "2.", "3."), "C", "videomme:mc")
        assert first.categories == (
            ("duration", "short"),
            ("domain", "Knowledge"),
            ("sub_category", "Humanity & History"),
            ("task_type", "Counting Problem"),
        )
        assert (
            items["002-1"].category("duration") == "medium" and items["002-1"].category("task_type") == "OCR Problems"
        )
        assert first.prompt() == _VIDEOMME_PROMPT
        ((source, reason),) = [(e.source, e.reason) for e in dataset.invalid]
        assert reason.startswith(
            f"Video-MME videos not found: unpack the videos_chunked_*.zip archives (lmms-lab/Video-MME) into {root}/ "
            f"(looked for {root}/data/absent.mp4 and "
        )


def test_videomme_official_per_video_json_in_both_field_namings(tmp_path: Path, clip: Path) -> None:
    """The per-video JSON: MME-Benchmarks/Video-MME evaluation/output_test_template.json (duration, domain,
    sub_category, options) and the form its evaluation script reads (duration_category, video_category,
    video_sub_category; choices); the video is named by the YouTube id of its url."""
    place(clip, tmp_path, "data/fFjv93ACGo8.mp4", "data/001.mp4")
    template = _VIDEOMME_V | {"questions": [_VIDEOMME_Q]}
    question = {k: v for k, v in _VIDEOMME_Q.items() if k != "options"} | {
        "question_id": "002-1",
        "choices": ["A. 0.", "B. 1.", "C. 2.", "D. 3."],
    }
    official = dict(
        video_id="002",
        duration_category="long",
        video_category="Film & Television",
        video_sub_category="Documentary",
        url="https://www.youtube.com/watch?v=fFjv93ACGo8",
        questions=[question],
    )
    path = _json(tmp_path / "videomme.json", [template, official])
    dataset = load_dataset(path)
    assert dataset.format == "videomme" and dataset.invalid == []
    items = _by_id(dataset.items)
    assert items["001-1"].video == (tmp_path / "data/001.mp4").resolve()  # no videoID, no url: the video_id
    assert items["002-1"].video == (tmp_path / "data/fFjv93ACGo8.mp4").resolve()
    assert items["002-1"].categories == (
        ("duration", "long"),
        ("domain", "Film & Television"),
        ("sub_category", "Documentary"),
        ("task_type", "Counting Problem"),
    )
    assert items["002-1"].prompt() == items["001-1"].prompt() == _VIDEOMME_PROMPT


# ---------------------------------------------------------------- MMVU

_MMVU_MC = dict(
    id="validation_1",
    video="https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main/videos/Art/0.mp4",
    question_type="multiple-choice",
    metadata={"subject": "Art", "textbook": "The Filmmaker's Handbook"},
    question="Which technique is shown?",
    choices={"A": "Dolly zoom", "B": "Pan", "C": "Tilt", "D": "Whip pan", "E": ""},
    answer="A",
)
_MMVU_OPEN = dict(_MMVU_MC, id="validation_0", question_type="open-ended", choices={}, answer="Dolly zoom")
# lmms_eval/tasks/mmvu/utils.py multiple_choice_prompt / open_ended_prompt (mmvu_val), line breaks included
_MMVU_MC_PROMPT = (
    "\nQuestion:Which technique is shown?\nA: Dolly zoom\nB: Pan\nC: Tilt\nD: Whip pan\nE: \n"
    "Visual Information: processed video\n"
    "Do not generate any intermediate reasoning process. Answer directly with the option letter from the\n"
    "given choices.\n"
)
_MMVU_OPEN_PROMPT = (
    "\nQuestion:Which technique is shown?\nVisual Information: processed video\n"
    "Do not generate any intermediate reasoning process. Directly output the final answer.\n"
)


@pytest.mark.parametrize("annotation", ["validation.json", "data/validation.json"])
def test_mmvu_official_validation_json(tmp_path: Path, clip: Path, annotation: str) -> None:
    """HF yale-nlp/MMVU: validation.json and videos/<subject>/<n>.mp4 at the root; the GitHub repository keeps
    the same file as data/validation.json."""
    root = tmp_path / "MMVU"
    place(clip, root, "videos/Art/0.mp4")
    _json(root / annotation, [_MMVU_MC, _MMVU_OPEN])
    for given in (root, root / annotation):
        dataset = load_dataset(given)
        assert dataset.format == "mmvu" and dataset.invalid == []
        mc, open_ended = dataset.items
        assert (mc.options, mc.answer, mc.rule) == (("Dolly zoom", "Pan", "Tilt", "Whip pan"), "A", "mmvu:mc")
        assert mc.categories == (("subject", "Art"), ("question_type", "multiple-choice"))
        assert (open_ended.type, open_ended.answer, open_ended.rule) == ("free-form", "Dolly zoom", "mmvu:open")
        assert open_ended.categories == (("subject", "Art"), ("question_type", "open-ended"))
        assert mc.prompt() == _MMVU_MC_PROMPT and open_ended.prompt() == _MMVU_OPEN_PROMPT
        assert mc.video == open_ended.video == (root / "videos/Art/0.mp4").resolve()


def test_mmvu_lmms_eval_rows_with_video_path_and_null_choices(tmp_path: Path, clip: Path) -> None:
    """lmms-eval's MMVU rows: video_path below the cache folder, the subject its folder (`extract_category`);
    in parquet the choices are a struct whose unused letters are null."""
    root = tmp_path / "mmvu"
    place(clip, root, "videos/Chemistry/7.mp4")
    row = {k: v for k, v in _MMVU_MC.items() if k not in ("video", "metadata")} | {
        "video_path": "videos/Chemistry/7.mp4"
    }
    open_row = dict(row, id="validation_9", question_type="open-ended", answer="Pan")
    open_row["choices"] = {"A": None, "B": None, "C": None, "D": None, "E": None}
    _parquet(root / "validation-00000-of-00001.parquet", [row, open_row])
    mc, open_ended = load_dataset(root).items
    assert mc.category("subject") == "Chemistry" and mc.video == (root / "videos/Chemistry/7.mp4").resolve()
    assert (open_ended.type, open_ended.options, open_ended.rule) == ("free-form", (), "mmvu:open")
    (shutil.rmtree(root / "videos"))
    reason = load_dataset(root).invalid[0].reason
    assert reason.startswith(f"MMVU videos not found: download the videos/ folder of yale-nlp/MMVU into {root}/ ")


# ---------------------------------------------------------------- VSI-Bench

_VSI = [
    dict(
        id=1,
        dataset="arkitscenes",
        scene_name="41069025",
        question_type="object_counting",
        question="How many chair(s) are in this room?",
        ground_truth="4",
        options=None,
    ),
    dict(
        id=2,
        dataset="scannet",
        scene_name="scene0011_00",
        question_type="object_rel_direction_hard",
        question="If I am standing by the sofa and facing the lamp, is the table to my left, right or back?",
        ground_truth="B",
        options=["A. left", "B. right", "C. back"],
    ),
]


@pytest.mark.parametrize("annotation", ["test.jsonl", "test-00000-of-00001.parquet"])
def test_vsibench_test_rows_and_scene_archives(tmp_path: Path, clip: Path, annotation: str) -> None:
    """HF nyu-visionx/VSI-Bench: test rows, and <dataset>.zip archives unpacked into <dataset>/<scene>.mp4."""
    root = tmp_path / "VSI-Bench"
    place(clip, root, "arkitscenes/41069025.mp4", "scannet/scene0011_00.mp4")
    if annotation.endswith(".jsonl"):
        (root / annotation).write_text("".join(json.dumps(r) + "\n" for r in _VSI))
    else:
        _parquet(root / annotation, _VSI)
    dataset = load_dataset(root)
    assert dataset.format == "vsibench" and dataset.invalid == []
    count, direction = dataset.items
    assert (count.type, count.answer, count.rule) == ("numeric", 4.0, "vsibench:na")
    assert (direction.options, direction.answer, direction.rule) == (("left", "right", "back"), "B", "vsibench:mca")
    assert count.categories == (("question_type", "object_counting"),)
    assert direction.category("question_type") == "object_rel_direction_hard"
    assert count.video == (root / "arkitscenes/41069025.mp4").resolve()
    # lmms_eval/tasks/vsibench/utils.py vsibench_doc_to_text (pre_prompt "" -> "These are frames of a video.")
    assert count.prompt() == (
        "These are frames of a video.\nHow many chair(s) are in this room?\n"
        "Please answer the question using a single word or phrase."
    )
    assert direction.prompt() == (
        "These are frames of a video.\n" + _VSI[1]["question"] + "\nOptions:\nA. left\nB. right\nC. back\n"
        "Answer with the option's letter from the given choices directly."
    )
    (root / "arkitscenes/41069025.mp4").unlink()
    (entry,) = load_dataset(root / annotation).invalid
    assert entry.reason.startswith(
        f"VSI-Bench videos not found: unpack arkitscenes.zip (nyu-visionx/VSI-Bench) into {root}/ "
        f"(looked for {root}/arkitscenes/41069025.mp4 and "
    )


# ---------------------------------------------------------------- VideoMMMU

_MMMU_ART = dict(
    id="validation_Art_Theory_1",
    question="Which era does the painting <image 1> belong to?",
    options=["Baroque", "Gothic", "Rococo"],
    answer="A",
    link_selected="https://www.youtube.com/watch?v=x",
)
_MMMU_MATH = dict(id="validation_Math_2", question="What is x?", options=[], answer="42", question_type="open")


def test_videommmu_published_track_json_without_question_type(tmp_path: Path, clip: Path) -> None:
    """perception_video.json / comprehension_video.json as published: {"Perception": {"0": {...}}}, rows without
    question_type (their options kept: multiple-choice), videos in the subject's group folder (get_cache_dir)."""
    root = tmp_path / "VideoMMMU"
    place(clip, root, "Art/validation_Art_Theory_1.mp4", "Science/validation_Math_2.mp4")
    _json(root / "perception_video.json", {"Perception": {"0": _MMMU_ART, "1": _MMMU_MATH}})
    _json(root / "comprehension_video.json", {"Comprehension": {"0": _MMMU_ART}})
    dataset = load_dataset(root)
    assert dataset.format == "videommmu" and dataset.invalid == []
    items = _by_id(dataset.items)
    assert set(items) == {
        "perception-validation_Art_Theory_1",  # the same question id is asked in every track
        "perception-validation_Math_2",
        "comprehension-validation_Art_Theory_1",
    }
    art = items["perception-validation_Art_Theory_1"]
    assert (art.type, art.options, art.answer, art.rule) == (
        "multiple-choice",
        ("Baroque", "Gothic", "Rococo"),
        "A",
        "videommmu:mc",
    )
    assert art.categories == (("track", "Perception"), ("subject", "Art_Theory"))
    assert art.video == (root / "Art/validation_Art_Theory_1.mp4").resolve()
    math = items["perception-validation_Math_2"]
    assert (math.type, math.answer, math.rule) == ("numeric", 42.0, "videommmu:open")
    assert math.video == (root / "Science/validation_Math_2.mp4").resolve()
    # lmms_eval/tasks/videommmu/utils.py videommmu_doc_to_text_perception_comprehension + parse_options
    assert art.prompt() == (
        "Which era does the painting <image 1> belong to?\nA. Baroque\nB. Gothic\nC. Rococo\n"
        "Please ignore the Quiz question in last frame of the video."
    )
    assert items["comprehension-validation_Art_Theory_1"].category("track") == "Comprehension"
    assert art.source == "perception_video.json:Perception/0"


def test_videommmu_lmms_lab_track_folders_and_adaptation_prompt(tmp_path: Path, clip: Path) -> None:
    """HF lmms-lab/VideoMMMU: <Track>/test-00000-of-00001.parquet; the Adaptation prompt says the question's
    image is at the end of the video (videommmu_doc_to_text_adaptation, _default_template_yaml)."""
    root = tmp_path / "video_mmmu"
    place(clip, root, "Art/validation_Art_Theory_1.mp4", "Science/validation_Math_2.mp4")
    mc = dict(_MMMU_ART, question_type="multiple-choice", options=["A. Baroque", "B. Gothic", "C. Rococo"])
    _parquet(root / "Adaptation" / "test-00000-of-00001.parquet", [mc, _MMMU_MATH])
    _parquet(root / "Perception" / "test-00000-of-00001.parquet", [mc])
    dataset = load_dataset(root)
    assert dataset.invalid == []
    items = _by_id(dataset.items)
    adapted, open_adapted = items["adaptation-validation_Art_Theory_1"], items["adaptation-validation_Math_2"]
    assert adapted.options == ("Baroque", "Gothic", "Rococo") and adapted.category("track") == "Adaptation"
    assert adapted.prompt() == (
        "You should watch and learn the video content. Then apply what you learned to answer the following "
        "multi-choice question. The image for this question is at the end of the video.\n"
        "Which era does the painting <image 1> belong to?\nA. Baroque\nB. Gothic\nC. Rococo"
    )
    assert open_adapted.prompt() == (
        "You should watch and learn the video content. Then apply what you learned to answer the following "
        "open-ended question. The image for this question is at the end of the video.\nWhat is x?"
    )
    assert (
        items["perception-validation_Art_Theory_1"]
        .prompt()
        .endswith("\nC. Rococo\nPlease ignore the Quiz question in last frame of the video.")
    )
    shutil.rmtree(root / "Science")
    (entry,) = load_dataset(root / "Adaptation" / "test-00000-of-00001.parquet").invalid
    assert entry.reason.startswith(
        f"VideoMMMU videos not found: unpack the videos of lmms-lab/VideoMMMU into {root}/Science/ "
    )


# ---------------------------------------------------------------- folders that are not one benchmark


def test_a_folder_of_several_formats_or_of_none_is_one_clear_error(tmp_path: Path) -> None:
    from vreason_local.errors import UserError

    _json(tmp_path / "mixed" / "json" / "moving_direction.json", [dict(_CLEVRER, video="v.mp4")])
    (tmp_path / "mixed" / "test.jsonl").write_text(json.dumps(_VSI[0]) + "\n")
    with pytest.raises(UserError, match=r"holds dataset files of several formats \(mvbench: json/moving_direction"):
        load_dataset(tmp_path / "mixed")
    assert load_dataset(tmp_path / "mixed", fmt="vsibench").format == "vsibench"  # --format picks one
    (tmp_path / "empty" / "videos").mkdir(parents=True)
    (tmp_path / "empty" / "notes.json").write_text('{"not": "questions"}')
    with pytest.raises(UserError, match=r"no dataset file in the folder .*empty \(looked at 1 file "):
        load_dataset(tmp_path / "empty")


def test_parquet_without_pyarrow_is_one_line_saying_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    from vreason_local.errors import UserError

    path = _parquet(tmp_path / "VSI-Bench" / "test-00000-of-00001.parquet", _VSI)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    for given in (path, path.parent):  # in a folder too: never passed over as a file without questions
        with pytest.raises(UserError, match=r"test-00000-of-00001.parquet: reading parquet files needs pyarrow: pip"):
            load_dataset(given)


def test_a_folder_dataset_is_fingerprinted_by_its_annotation_files_not_its_videos(tmp_path: Path, clip: Path) -> None:
    root = tmp_path / "VSI-Bench"
    place(clip, root, "arkitscenes/41069025.mp4")
    (root / "test.jsonl").write_text(json.dumps(_VSI[0]) + "\n")
    first = dataset_sha256(root)
    assert dataset_sha256(root / "test.jsonl") == hashlib.sha256((root / "test.jsonl").read_bytes()).hexdigest()
    place(clip, root, "scannet/scene0011_00.mp4")
    assert dataset_sha256(root) == first
    (root / "test.jsonl").write_text(json.dumps(_VSI[0]) + "\n" + json.dumps(_VSI[1]) + "\n")
    assert dataset_sha256(root) != first


# ---------------------------------------------------------------- the command, as a user runs it


def test_vreason_eval_runs_a_benchmark_as_downloaded_without_media_root(tmp_path, clip, tiny_model_factory, vreason):
    """Video-MME as lmms-lab distributes it, the downloaded folder given as is: every question finds its video
    (none is "video not found"), each row keeps the benchmark's categories, and the prompt is the reference's;
    `--resume` on the folder recognises the same questions (its fingerprint is the annotation files')."""
    tiny = tiny_model_factory("qwen25vl")
    root = tmp_path / "Video-MME"
    place(clip, root, "data/fFjv93ACGo8.mp4", "data/Upper1.MP4")
    rows = [
        _VIDEOMME_V | dict(videoID="fFjv93ACGo8") | _VIDEOMME_Q,
        _VIDEOMME_V | dict(videoID="Upper1", video_id="002") | dict(_VIDEOMME_Q, question_id="002-1"),
    ]
    _parquet(root / "videomme" / "test-00000-of-00001.parquet", rows)
    out = tmp_path / "run"
    args = ["eval", str(root), "--out", str(out), "--model", str(tiny.model_path), "--mmproj", str(tiny.mmproj_path)]
    rc, _, err = vreason([*args, "--modes", "base", "--fps", "2", "--max-frames", "4", "--max-tokens", "4"])
    assert rc == 0, err
    assert "skipped" not in err
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in results) == ["001-1", "002-1"]
    assert all(r["error"] is None for r in results), [r["error"] for r in results]
    assert not any("video not found" in json.dumps(r) for r in results)
    assert {Path(r["video"]).name for r in results} == {"fFjv93ACGo8.mp4", "Upper1.MP4"}
    assert all(r["dataset"] == "videomme" and r["question"] == _VIDEOMME_Q["question"] for r in results)
    # rows keep what --rescore and the reports need (runner.py, the issue-21 contract)
    assert all(r["rule"] == "videomme:mc" and r["prompt"] == _VIDEOMME_PROMPT for r in results)
    assert [r["categories"] for r in results] == [
        {
            "duration": "short",
            "domain": "Knowledge",
            "sub_category": "Humanity & History",
            "task_type": "Counting Problem",
        }
    ] * 2
    rc, _, err = vreason([*args, "--resume"])
    assert rc == 0, err
    assert len((out / "results.jsonl").read_text().splitlines()) == 2  # nothing asked again

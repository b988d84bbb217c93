"""Dataset loading (own format and six benchmarks' annotation formats), bad input, and the generated sample.

Every loader test writes a small file in that benchmark's published layout, with a real clip (make_clip)
placed where the benchmark keeps its videos, and checks what each row became.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from eval_support import place

from vreason_local.errors import UserError
from vreason_local.evaluate.datasets import FORMATS, load_dataset, make_sample
from vreason_local.evaluate.items import Item
from vreason_local.evaluate.sample import BACKGROUND_BGR, COLOURS_BGR, MOVER


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_every_format_is_described() -> None:
    assert set(FORMATS) == {"vreason", "mvbench", "tempcompass", "videomme", "mmvu", "vsibench", "videommmu"}
    for name, info in FORMATS.items():
        assert info.name == name and info.description and info.expects


# ---------------------------------------------------------------- this tool's own format


def test_own_jsonl_loads_each_type_with_windows_and_relative_videos(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path, "videos/a.mp4")
    path = _write_jsonl(
        tmp_path / "mine.jsonl",
        [
            dict(id="1", video="videos/a.mp4", question="Colour?", options=["red", "blue"], answer="B"),
            dict(id="2", video="videos/a.mp4", question="Colour?", options=["red", "blue"], answer="red"),
            dict(id="3", video="videos/a.mp4", question="How many?", answer=3, type="numeric", start=0.5, end=1),
            dict(id="4", video=str(tmp_path / "videos/a.mp4"), question="Which way?", answer="left"),
            dict(id="5", video="videos/a.mp4", question="How many?", answer="2.5"),  # no type: a number
        ],
    )
    dataset = load_dataset(path)
    assert dataset.format == "vreason" and dataset.invalid == []
    one, two, three, four, five = dataset.items
    assert (one.type, one.options, one.answer) == ("multiple-choice", ("red", "blue"), "B")
    assert two.answer == "A"  # given as the option's text
    assert (three.type, three.answer, three.start, three.end) == ("numeric", 3.0, 0.5, 1.0)
    assert (four.type, four.answer) == ("free-form", "left")
    assert (five.type, five.answer) == ("numeric", 2.5)
    assert {item.video for item in dataset.items} == {(tmp_path / "videos/a.mp4").resolve()}
    assert one.video_key == (str((tmp_path / "videos/a.mp4").resolve()), None, None) != three.video_key
    assert one.source == "mine.jsonl:1" and one.dataset == "mine"


def test_own_csv_reads_pipe_and_json_options_and_a_media_root(tmp_path: Path, clip: Path) -> None:
    media = tmp_path / "media"
    place(clip, media, "a.mp4")
    path = tmp_path / "mine.csv"
    path.write_text(
        "id,video,question,options,answer,type,start,end\n"
        "c1,a.mp4,Colour?,red|green|blue,C,multiple-choice,,\n"
        'c2,a.mp4,Colour?,"[""red"", ""a, b""]",B,,0,2\n'
        "c3,a.mp4,How many?,,4,numeric,,\n"
    )
    dataset = load_dataset(path, media_root=media)
    assert dataset.invalid == []
    assert [item.options for item in dataset.items] == [("red", "green", "blue"), ("red", "a, b"), ()]
    assert [item.answer for item in dataset.items] == ["C", "B", 4.0]
    assert dataset.items[1].start == 0.0 and dataset.items[1].end == 2.0
    assert dataset.items[0].source == "mine.csv:2"  # the header is line 1


def test_a_quote_left_open_in_a_csv_is_reported_not_read_into_one_question(tmp_path: Path, clip: Path) -> None:
    """The csv module reads the lines after an unterminated quote into one field without a word; here the rows it
    swallowed are reported, naming the line where the quote opened, and a real multi-line question still loads."""
    place(clip, tmp_path, "a.mp4")
    header = "id,video,question,options,answer,type,start,end\n"
    path = tmp_path / "open.csv"
    path.write_text(
        header + "c1,a.mp4,Colour?,red|green|blue,C,,,\n"
        'c2,a.mp4,"Colour?,red|green,B,,,\n'  # line 3: the quote is never closed on its line
        "c3,a.mp4,How many?,,4,numeric,,\n"
        "c4,a.mp4,How many?,,4,numeric,,\n"
        'c5,a.mp4,"Which, of the two?",red|green,A,,,\n'  # line 6: its first quote closes line 3's
        "c6,a.mp4,Last?,,2,numeric,,\n"
    )
    dataset = load_dataset(path)
    reasons = {entry.source: entry.reason for entry in dataset.invalid}
    assert reasons["open.csv:3"] == "a quote opened on line 3 is left open (lines 3-6 read as one row); close it"
    for line in (4, 5, 6):
        assert reasons[f"open.csv:{line}"] == "read into the row of line 3 by the quote left open there"
    assert [item.id for item in dataset.items][0] == "c1" and "c2" not in {i.id for i in dataset.items}
    assert all("\n" not in item.question for item in dataset.items)

    at_end = tmp_path / "end.csv"  # the last row's quote runs to the end of the file
    at_end.write_text(header + "c1,a.mp4,Colour?,red|green,A,,,\n" + 'c2,a.mp4,"Colour?,red|green,A,,,\n')
    dataset = load_dataset(at_end)
    assert [item.id for item in dataset.items] == ["c1"]
    assert [str(e) for e in dataset.invalid] == [
        "end.csv:3: a quote opened on line 3 is left open (it runs to the end of the file); close it"
    ]

    fine = tmp_path / "fine.csv"  # a quoted question with a line break is a question, not a quote left open
    fine.write_text(header + 'c1,a.mp4,"Which colour\nis the square?",red|green,A,,,\nc2,a.mp4,Again?,red|green,B,,,\n')
    dataset = load_dataset(fine)
    assert dataset.invalid == [] and dataset.items[0].question == "Which colour\nis the square?"
    assert dataset.items[1].source == "fine.csv:4"  # named by the physical line it starts on


def test_bad_rows_are_reported_with_file_and_line_and_the_rest_load(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path, "a.mp4")
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "empty.mp4").write_bytes(b"")
    good = dict(id="ok", video="a.mp4", question="Q?", answer="x")
    path = _write_jsonl(
        tmp_path / "bad.jsonl",
        [
            good,
            dict(id="q2", video="a.mp4", answer="x"),  # line 2
            "{not json",  # line 3
            dict(good, id="q4", video="gone.mp4"),
            dict(good, id="q5", options=["a", "b"], answer="D"),
            dict(good, id="q6", type="essay"),
            dict(good, id="q7", type="numeric", answer="many"),
            dict(good),  # duplicate id
            dict(good, id="q9", video="folder.mp4"),
            dict(good, id="q10", video="empty.mp4"),
            dict(good, id="q11", start=3, end=1),
            "[1, 2]",
            dict(good, id="q13", options=["only one"], answer="A"),
            {"id": 5, "video": "a.mp4", "question": 42, "answer": ["a"]},  # a new user's row: not "42", "['a']"
            dict(good, id="q15", answer=["a"]),
            dict(good, id=16, answer=3),  # a number is a name and an answer: this row loads
        ],
    )
    dataset = load_dataset(path)
    assert [item.id for item in dataset.items] == ["ok", "16"]
    reasons = {entry.source: entry.reason for entry in dataset.invalid}
    assert len(dataset.invalid) == 14  # every bad row reported, none silently dropped
    assert reasons["bad.jsonl:2"] == "missing field 'question'"
    assert "not valid JSON" in reasons["bad.jsonl:3"]
    assert reasons["bad.jsonl:4"].startswith("video not found: ") and "gone.mp4" in reasons["bad.jsonl:4"]
    assert "'D' is neither an option letter (A, B)" in reasons["bad.jsonl:5"]
    assert "'essay' is not one of" in reasons["bad.jsonl:6"]
    assert "must be a number" in reasons["bad.jsonl:7"]
    assert reasons["bad.jsonl:8"] == "duplicate id 'ok' (first at bad.jsonl:1)"
    assert "is a directory" in reasons["bad.jsonl:9"]
    assert "empty (0 bytes)" in reasons["bad.jsonl:10"]
    assert "window" in reasons["bad.jsonl:11"]
    assert "must be an object" in reasons["bad.jsonl:12"]
    assert "at least 2 options" in reasons["bad.jsonl:13"]
    assert reasons["bad.jsonl:14"] == "field 'question' must be text, got 42"
    assert reasons["bad.jsonl:15"] == "field 'answer' must be text or a number, got ['a']"
    assert str(dataset.invalid[0]) == "bad.jsonl:2: missing field 'question'"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("data.txt", "id,video\n", "must be .jsonl, .json, .csv, .parquet"),
        ("data.parquet", "PAR1", "is not a readable parquet file"),
        ("data.json", "{broken", "is not valid JSON: "),
        ("data.json", '{"a": 1}', "expected a JSON list"),
        ("data.jsonl", "nope\nstill no\n", "is not a JSON Lines file"),
        ("data.jsonl", "", "has no question rows"),
        ("data.json", '[{"foo": 1, "bar": 2}]', "matches none of the known dataset formats (vreason, "),
        ("data.csv", "name,colour\nx,red\n", "its first row has the fields colour, name"),
    ],
)
def test_unusable_files_are_one_clear_error_naming_the_file(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError) as caught:
        load_dataset(path)
    assert message in caught.value.message and name in caught.value.message


def test_missing_file_unknown_format_and_missing_media_root(tmp_path: Path, clip: Path) -> None:
    with pytest.raises(UserError, match="dataset file not found: .*nothing.jsonl"):
        load_dataset(tmp_path / "nothing.jsonl")
    path = _write_jsonl(tmp_path / "d.jsonl", [dict(id="1", video="a.mp4", question="Q", answer="x")])
    with pytest.raises(UserError, match="unknown dataset format 'mvbnch'; known formats: auto, vreason"):
        load_dataset(path, fmt="mvbnch")
    with pytest.raises(UserError, match="media folder not found"):
        load_dataset(path, media_root=tmp_path / "nowhere")
    forced = load_dataset(path, fmt="mvbench")  # a forced format reports the rows it cannot read
    assert forced.items == [] and forced.invalid[0].reason == "missing field 'candidates'"


# ---------------------------------------------------------------- benchmark formats


def test_mvbench(tmp_path: Path, clip: Path) -> None:
    root = tmp_path / "MVBench"
    place(clip, root / "video", "clevrer/video_validation/video_10009.mp4", "star/Charades_v1_480/6H78U.mp4")
    (root / "json").mkdir()
    path = root / "json" / "moving_direction.json"
    row = dict(
        video="video_10009.mp4",
        question="What direction is the cube moving?",
        candidates=["up", "left", "down"],
        answer="left",
    )
    path.write_text(json.dumps([row, dict(row, answer="sideways"), dict(row, video="video_0.mp4")]))
    dataset = load_dataset(path, media_root=root / "video")
    assert dataset.format == "mvbench"
    (item,) = dataset.items
    assert (item.id, item.type, item.options, item.answer) == (
        "moving_direction-1",
        "multiple-choice",
        ("up", "left", "down"),
        "B",
    )
    assert item.video == (root / "video/clevrer/video_validation/video_10009.mp4").resolve()
    assert [entry.source for entry in dataset.invalid] == ["moving_direction.json:#2", "moving_direction.json:#3"]
    assert "'sideways' is neither" in dataset.invalid[0].reason
    assert dataset.invalid[1].reason.startswith("MVBench videos not found: unpack video/clevrer.zip into ")

    windowed = root / "json" / "action_sequence.json"
    windowed.write_text(json.dumps([dict(row, video="6H78U.mp4", start=1.5, end=9.0)]))
    (item,) = load_dataset(windowed, media_root=root / "video").items
    assert (item.start, item.end, item.dataset) == (1.5, 9.0, "mvbench")


def test_tempcompass_nested_json(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path, "videos/1034419625.mp4")
    path = tmp_path / "multi-choice.json"
    path.write_text(
        json.dumps(
            {
                "1034419625": {
                    "action": [
                        {
                            "question": "What is the man doing in the video?\nA. dunking a basketball\nB. dribbling",
                            "answer": "A. dunking a basketball",
                        }
                    ],
                    "direction": [
                        {"question": "Which way?\nA. left to right\nB. right to left", "answer": "B. right to left"},
                        {"question": "Which way?\nA. up\nB. down", "answer": "C. sideways"},
                    ],
                }
            }
        )
    )
    dataset = load_dataset(path)
    assert dataset.format == "tempcompass"
    first, second = dataset.items
    assert (first.question, first.options, first.answer) == (
        "What is the man doing in the video?",
        ("dunking a basketball", "dribbling"),
        "A",
    )
    assert (second.id, second.answer) == ("1034419625-multi-choice-direction-1", "B")
    assert first.video == (tmp_path / "videos/1034419625.mp4").resolve()
    assert [entry.source for entry in dataset.invalid] == ["multi-choice.json:1034419625/direction/2"]


def test_tempcompass_flat_rows_with_yes_no_and_caption_matching(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path, "7.mp4")
    path = _write_jsonl(
        tmp_path / "tempcompass.jsonl",
        [
            dict(video_id="7", dim="speed", question="Is the video in slow motion?", answer="yes"),
            dict(
                video_id="7",
                dim="order",
                question="Which caption matches?\nOption 1: a cat runs\nOption 2: a dog sits",
                answer="Option 2: a dog sits",
            ),
        ],
    )
    yes_no, caption = load_dataset(path).items
    assert (yes_no.type, yes_no.answer) == ("free-form", "yes")
    assert (caption.type, caption.options, caption.answer) == ("multiple-choice", ("a cat runs", "a dog sits"), "B")


def test_videomme_rows_and_nested_layout(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path, "data/fFjv93ACGo8.mp4")
    question = dict(
        question_id="001-1",
        task_type="Counting Problem",
        question="How many red socks are above the fireplace?",
        options=["A. 0.", "B. 1.", "C. 2.", "D. 3."],
        answer="C",
    )
    video = dict(video_id="001", duration="short", domain="Knowledge", videoID="fFjv93ACGo8")
    rows = _write_jsonl(tmp_path / "videomme.jsonl", [video | question])
    (item,) = load_dataset(rows).items
    assert (item.id, item.options, item.answer, item.dataset) == ("001-1", ("0.", "1.", "2.", "3."), "C", "videomme")
    assert item.video == (tmp_path / "data/fFjv93ACGo8.mp4").resolve()

    nested = tmp_path / "videomme.json"
    nested.write_text(json.dumps([video | {"questions": [question, dict(question, question_id="001-2", answer="")]}]))
    dataset = load_dataset(nested)
    assert dataset.format == "videomme" and [i.id for i in dataset.items] == ["001-1"]
    assert [(e.source, e.reason) for e in dataset.invalid] == [
        ("videomme.json:#1 question 2", "missing field 'answer'")
    ]


def test_mmvu_multiple_choice_and_open_ended(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path, "videos/Art/0.mp4")
    url = "https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main/videos/Art/0.mp4"
    choices = {"A": "Oil", "B": "Fresco", "C": "Tempera", "D": "Ink", "E": ""}
    path = tmp_path / "validation.json"
    path.write_text(
        json.dumps(
            [
                dict(
                    id="mc1",
                    question="Which technique?",
                    choices=choices,
                    answer="B",
                    question_type="multiple-choice",
                    video=url,
                ),
                dict(
                    id="oe1",
                    question="Name the technique.",
                    choices={},
                    answer="Fresco",
                    question_type="open-ended",
                    video=url,
                ),
                dict(
                    id="vp1",
                    question="Which?",
                    choices=choices,
                    answer="D",
                    question_type="multiple-choice",
                    video_path="Art/0.mp4",
                ),
            ]
        )
    )
    dataset = load_dataset(path)
    assert dataset.format == "mmvu" and dataset.invalid == []
    mc, oe, vp = dataset.items
    assert (mc.options, mc.answer) == (("Oil", "Fresco", "Tempera", "Ink"), "B")  # the empty E is dropped
    assert (oe.type, oe.answer) == ("free-form", "Fresco")
    assert mc.video == oe.video == vp.video == (tmp_path / "videos/Art/0.mp4").resolve()


def test_vsibench_numeric_and_multiple_choice(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path, "scannet/scene0011_00.mp4")
    base = dict(dataset="scannet", scene_name="scene0011_00")
    path = _write_jsonl(
        tmp_path / "test.jsonl",
        [
            base
            | dict(
                id=1, question_type="object_counting", question="How many chair(s)?", options=None, ground_truth="4"
            ),
            base
            | dict(
                id=2,
                question_type="obj_appearance_order",
                question="Which first?",
                options=["A. sofa", "B. lamp", "C. table"],
                ground_truth="C",
            ),
            base | dict(id=3, question_type="room_size_estimation", question="Size?", options=None, ground_truth="big"),
        ],
    )
    dataset = load_dataset(path)
    assert dataset.format == "vsibench"
    count, order = dataset.items
    assert (count.id, count.type, count.answer) == ("1", "numeric", 4.0)
    assert (order.type, order.options, order.answer) == ("multiple-choice", ("sofa", "lamp", "table"), "C")
    assert count.video == (tmp_path / "scannet/scene0011_00.mp4").resolve()
    assert [(e.source, e.reason) for e in dataset.invalid] == [
        ("test.jsonl:3", "ground_truth must be a number, got 'big'")
    ]
    misnamed = tmp_path / "test.json"  # JSON Lines under a .json name is read as what it is
    misnamed.write_text(path.read_text())
    assert [replace(i, source="") for i in load_dataset(misnamed).items] == [
        replace(i, source="") for i in dataset.items
    ]


def test_videommmu(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path, "Art/validation_Art_1.mp4", "Science/validation_Math_2.mp4")
    path = _write_jsonl(
        tmp_path / "perception.jsonl",
        [
            dict(
                id="validation_Art_1",
                question="Which era?",
                options=["Baroque", "Gothic"],
                answer="A",
                question_type="multiple-choice",
            ),
            dict(id="validation_Math_2", question="What is x?", options=[], answer="42", question_type="open"),
            dict(id="validation_Math_3", question="And y?", options=[], answer="7", question_type="open"),
        ],
    )
    dataset = load_dataset(path)
    assert dataset.format == "videommmu"
    art, math = dataset.items
    assert (art.options, art.answer, art.type) == (("Baroque", "Gothic"), "A", "multiple-choice")
    assert (math.type, math.answer) == ("numeric", 42.0)
    assert math.video == (tmp_path / "Science/validation_Math_2.mp4").resolve()
    assert dataset.invalid[0].source == "perception.jsonl:3" and "validation_Math_3.mp4" in dataset.invalid[0].reason


# ---------------------------------------------------------------- the generated sample


def _frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def _mask(frame: np.ndarray, bgr: tuple[int, ...], tolerance: int = 60) -> np.ndarray:
    return np.abs(frame.astype(int) - np.array(bgr)).max(axis=2) < tolerance


def test_make_sample_answers_match_what_the_clips_show(tmp_path: Path) -> None:
    path = make_sample(tmp_path / "sample", n_videos=4, questions_per_video=5, seed=3)
    dataset = load_dataset(path)
    assert dataset.format == "vreason" and dataset.invalid == [] and len(dataset.items) == 20
    assert {item.type for item in dataset.items} == {"multiple-choice", "numeric", "free-form"}
    by_video: dict[Path, dict[str, object]] = {}
    for item in dataset.items:
        truth = item.options[ord(str(item.answer)) - ord("A")] if item.type == "multiple-choice" else item.answer
        by_video.setdefault(item.video, {})[item.question] = truth
    assert len(by_video) == 4
    for video, truths in by_video.items():
        frames = _frames(video)
        colour = truths["What colour is the moving shape?"]
        direction = truths["In which direction does the moving shape travel: left, right, up or down?"]
        assert truths["Which way does the moving shape move?"] == direction
        # The mover: the pixels of its colour; it alone has that colour, so its centroid is its position.
        first, last = (np.argwhere(_mask(f, COLOURS_BGR[colour])).mean(axis=0) for f in (frames[0], frames[-1]))
        dy, dx = last - first
        seen = {"right": dx, "left": -dx, "down": dy, "up": -dy}
        assert max(seen, key=seen.get) == direction and seen[direction] > 100
        # Its form: a square fills its bounding box, a circle about pi/4 of it.
        mover = _mask(frames[0], COLOURS_BGR[colour])
        fill = mover.sum() / MOVER**2
        assert (fill > 0.93) == (truths["What shape is the moving object?"] == "square")
        # The count: blobs that differ from the grey background.
        shapes = (~_mask(frames[len(frames) // 2], BACKGROUND_BGR, 40)).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(shapes)
        assert sum(stats[1:, cv2.CC_STAT_AREA] > 300) == truths["How many shapes are there in the video?"]
    again = make_sample(tmp_path / "again", n_videos=4, questions_per_video=5, seed=3)
    assert again.read_text() == path.read_text()  # the seed decides everything


def test_make_sample_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="1 to 5 questions per video"):
        make_sample(tmp_path, questions_per_video=9)
    with pytest.raises(UserError, match="at least one video"):
        make_sample(tmp_path, n_videos=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot create the sample folder"):
        make_sample(tmp_path / "file" / "sample")


def test_item_prompt_letters_the_options_and_says_what_to_answer_with() -> None:
    mc = Item("1", Path("v.mp4"), " Colour? ", "multiple-choice", "B", ("red", "blue"))
    assert mc.prompt() == (
        "Colour?\nOptions:\nA. red\nB. blue\nAnswer with the letter of the correct option only, inside <answer></answer>."
    )
    assert (
        Item("2", Path("v.mp4"), "How many?", "numeric", 3.0)
        .prompt()
        .endswith("a single number only, inside <answer></answer>.")
    )
    assert "short phrase" in Item("3", Path("v.mp4"), "Which way?", "free-form", "up").prompt()

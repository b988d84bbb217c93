"""Reading dataset files, in this tool's own format or in the annotation formats of public video benchmarks.

Users already have local copies of MVBench, TempCompass, Video-MME, MMVU, VSI-Bench and VideoMMMU; each
ships its questions in its own field names and its videos in its own folder layout. Every loader here
maps one such row to an `Item` and names where the video may lie, relative to the media root (the
dataset file's folder unless the user names another). Nothing is downloaded. A row that cannot be used
becomes an `Invalid` entry saying which file, which row and why; only an unreadable file, or one whose
rows match no known format, is an error for the whole file. A benchmark may be given as downloaded: a
folder (all its annotation files at once; `layouts.py` knows where each keeps what), or any one of its
files, including the parquet files of its Hugging Face copy (read with pyarrow, an optional dependency).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError
from ..video import check_video_file
from ..wording import count
from .items import ITEM_TYPES, Dataset, Invalid, Item, ItemType, option_letter
from .layouts import (
    ANNOTATION_SUFFIXES,
    MVBENCH_TASKS,
    VIDEOMMMU_GROUP,
    VIDEOMMMU_TRACKS,
    annotation_files,
    layout_root,
    mvbench_hint,
    mvbench_places,
    videommmu_subject,
)
from .prompts import (
    TEMPCOMPASS_POST_PROMPTS,
    mmvu_prompt,
    mvbench_prompt,
    tempcompass_prompt,
    videomme_prompt,
    videommmu_prompt,
    vsibench_prompt,
)
from .sample import make_sample

__all__ = ["FORMATS", "FormatInfo", "dataset_sha256", "load_dataset", "make_sample"]

SUFFIXES = ANNOTATION_SUFFIXES
# "A. text", "(A) text", "A) text", "A: text", or TempCompass's caption-matching "Option 1: text".
_LETTERED = re.compile(r"^\s*(?:\(?([A-Z])[.):]|Option\s*(\d+)\s*[:.])\s*(.*)$", re.S)


@dataclass(frozen=True)
class FormatInfo:
    """What a format is and exactly which fields its loader reads, for `--list-formats` and error messages."""

    name: str
    description: str
    expects: str


class RowError(ValueError):
    """Why one row cannot be used; becomes an `Invalid` entry, never stops the load."""


@dataclass(frozen=True)
class _Parsed:
    """A row turned into an item whose video is still relative, plus the places to look for it, in order.

    A candidate may hold "*" (a glob below the media root) for benchmarks that spread videos over folders.
    `hint` says what to unpack where when none is there ("{root}" stands for the benchmark's root folder);
    a candidate in `cut` holds the clip already cut to the row's window, so start/end are not applied again.
    """

    item: Item
    candidates: tuple[str, ...]
    hint: str | None = None
    cut: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Row:
    """One record of a file, with where it came from ("file.jsonl:17") and its position among the records."""

    source: str
    number: int
    fields: dict  # as read: a non-object JSON value, or the RowError of a JSONL line that is not JSON, is reported


@dataclass(frozen=True)
class _Loader:
    """One format: its description, how to recognise its rows by their fields, and how to read one."""

    info: FormatInfo
    detect: Callable[[dict], bool]
    parse: Callable[[_Row, Path], _Parsed]  # (row, annotation file) -> item; raises RowError
    expand: Callable[[_Row], list[_Row]] = lambda row: [row]  # rows that nest several questions -> one per question


# ---------------------------------------------------------------- field helpers shared by the loaders


def _field(row: _Row, name: str) -> object:
    """The value of a required field; missing, null or blank is a RowError naming the field."""
    value = row.fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError(f"missing field '{name}'")
    return value


# Fields that name things: a number is a name too (`"id": 5`). Every other text field must be text: a
# question given as 42 or an answer given as a list is a broken row, not one to run as "42" or "['a']".
_NAME_FIELDS = frozenset({"id", "video_id", "question_id", "scene_name", "video", "video_path"})


def _text(row: _Row, name: str) -> str:
    value = _field(row, name)
    if not (isinstance(value, str) or name in _NAME_FIELDS and _is_number(value)):
        raise RowError(f"field '{name}' must be text, got {value!r}")
    return str(value).strip()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _answer(row: _Row, name: str = "answer") -> str | int | float:
    """A reference answer: text (a letter, an option, a phrase) or a number; never a list, object or bool."""
    value = _field(row, name)
    if not (isinstance(value, str) or _is_number(value)):
        raise RowError(f"field '{name}' must be text or a number, got {value!r}")
    return value  # type: ignore[return-value]


def _number(value: object, what: str) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        raise RowError(f"{what} must be a number, got {value!r}") from None


def _optional_number(row: _Row, name: str) -> float | None:
    value = row.fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _number(value, f"field '{name}'")


def _option_list(value: object, what: str) -> list[str]:
    """Options as a list of texts: a JSON list, or (CSV) a JSON list in a string or a '|'-separated string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise RowError(f"{what} looks like a JSON list but is not valid JSON ({exc.msg})") from None
        else:
            value = [part.strip() for part in text.split("|")] if text else []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise RowError(f"{what} must be a list of texts, got {value!r}")
    return [str(v).strip() for v in value]


def _unlettered(options: list[str]) -> tuple[str, ...]:
    """Strip "A. " prefixes when every option carries its own letter in order (Video-MME, VSI-Bench)."""
    matches = [_LETTERED.match(text) for text in options]
    if options and all(m and m.group(1) == option_letter(i) for i, m in enumerate(matches)):
        return tuple(m.group(3).strip() for m in matches)  # type: ignore[union-attr]
    return tuple(options)


def _answer_letter(answer: object, options: tuple[str, ...]) -> str:
    """The reference answer as a letter: given as a letter, as "B. text", or as the option's text."""
    text = str(answer).strip()
    letters = [option_letter(i) for i in range(len(options))]
    if text.upper() in letters and len(text) == 1:
        return text.upper()
    lettered = _LETTERED.match(text)
    if lettered and lettered.group(1) in letters:
        return lettered.group(1)
    if lettered and lettered.group(2) and 1 <= int(lettered.group(2)) <= len(options):
        return option_letter(int(lettered.group(2)) - 1)
    matching = [i for i, option in enumerate(options) if option.strip().lower() == text.lower()]
    if len(matching) == 1:
        return option_letter(matching[0])
    raise RowError(f"answer {text!r} is neither an option letter ({', '.join(letters)}) nor one option's text")


def _choice_item(row: _Row, options: tuple[str, ...], answer: object, **fields: object) -> Item:
    if len(options) < 2:
        raise RowError(f"a multiple-choice question needs at least 2 options, got {len(options)}")
    return Item(
        type="multiple-choice", options=options, answer=_answer_letter(answer, options), source=row.source, **fields
    )  # type: ignore[arg-type]


def _open_item(row: _Row, answer: object, **fields: object) -> Item:
    """An item without options: numeric when the answer is a number, free-form otherwise."""
    try:
        return Item(type="numeric", answer=float(str(answer).strip()), source=row.source, **fields)  # type: ignore[arg-type]
    except ValueError:
        return Item(type="free-form", answer=str(answer).strip(), source=row.source, **fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- this tool's own format

_TYPE_ALIASES: dict[str, ItemType] = {t.replace("-", ""): t for t in ITEM_TYPES} | {"mc": "multiple-choice"}


def _parse_own(row: _Row, file: Path) -> _Parsed:
    video = _text(row, "video")
    question = _text(row, "question")
    answer = _answer(row)
    options = tuple(_option_list(row.fields["options"], "options")) if row.fields.get("options") else ()
    declared = str(row.fields.get("type") or "").strip().lower()
    kind = _TYPE_ALIASES.get(re.sub(r"[-_ ]", "", declared)) if declared else None
    if declared and kind is None:
        raise RowError(f"type {declared!r} is not one of {', '.join(ITEM_TYPES)}")
    start, end = _optional_number(row, "start"), _optional_number(row, "end")
    if start is not None and start < 0 or end is not None and end <= (start or 0):
        raise RowError(f"the window start={start}, end={end} is empty or negative (seconds, start < end)")
    fields = dict(
        id=_text(row, "id"),
        video=Path(video),
        question=question,
        start=start,
        end=end,
        dataset=str(row.fields.get("dataset") or file.stem),
    )
    if kind == "multiple-choice" or (kind is None and options):
        item = _choice_item(row, options, answer, **fields)
    elif kind == "numeric":
        item = Item(type="numeric", answer=_number(answer, "a numeric answer"), source=row.source, **fields)  # type: ignore[arg-type]
    elif kind == "free-form":
        item = Item(type="free-form", answer=str(answer).strip(), source=row.source, **fields)  # type: ignore[arg-type]
    else:
        item = _open_item(row, answer, **fields)
    return _Parsed(item, (video,))


# ---------------------------------------------------------------- MVBench


def _parse_mvbench(row: _Row, file: Path) -> _Parsed:
    video = _text(row, "video")
    candidates = _option_list(_field(row, "candidates"), "candidates")
    task = MVBENCH_TASKS.get(file.stem)
    item = _choice_item(
        row,
        tuple(candidates),
        _answer(row),
        id=f"{file.stem}-{row.number}",
        video=Path(video),
        question=_text(row, "question"),
        start=_optional_number(row, "start"),
        end=_optional_number(row, "end"),
        dataset="mvbench",
        categories=(("task", task.name if task else file.stem),),
        rule="mvbench:mc",
        reference_prompt=mvbench_prompt(str(row.fields["question"]), _raw_list(row.fields["candidates"], candidates)),
    )
    places, cut = mvbench_places(task, video)
    return _Parsed(item, tuple(places), mvbench_hint(task), frozenset(cut))


def _raw_list(value: object, parsed: list[str]) -> list[str]:
    """A list field as published (the reference prompts use the texts unstripped); `parsed` when it was text."""
    return [str(v) for v in value] if isinstance(value, list) else parsed


# ---------------------------------------------------------------- TempCompass

# Caption matching's options, in its three templates: "Option 1: ...", "Sentence A: ...", "Caption A: ...".
_CAPTION_OPTION = re.compile(r"^\s*(?:Option|Sentence|Caption)\s+(\w+)\s*:\s?(.*)$")


def _tempcompass_type(row: _Row, file: Path, lines: list[str]) -> str:
    """The question type: the name of the file (questions/<type>.json) or of its folder (lmms-lab's
    <type>/test-*.parquet); for a file named otherwise, what the row looks like."""
    for name in (file.stem, file.parent.name):
        if name in TEMPCOMPASS_POST_PROMPTS:
            return name
    if str(row.fields.get("answer", "")).strip().lower() in ("yes", "no"):
        return "yes_no"
    if any(_CAPTION_OPTION.match(line) for line in lines[1:]):
        return "caption_matching"
    if "mc_question" in row.fields or lines[-1:] == ["Generated Caption:"]:
        return "captioning"
    return "multi-choice"


def _parse_tempcompass(row: _Row, file: Path) -> _Parsed:
    video_id = _text(row, "video_id")
    _text(row, "question")  # present and text; the prompt and the options use it as published
    published = str(row.fields["question"])
    lines = published.strip().splitlines()
    kind = _tempcompass_type(row, file, lines)
    dim = str(row.fields.get("dim") or "").strip()
    fields = dict(
        id=f"{video_id}-{kind}-{dim or 'q'}-{row.number}",
        video=Path(f"{video_id}.mp4"),
        dataset="tempcompass",
        categories=((("dimension", dim),) if dim else ()) + (("question_type", kind),),
        rule=f"tempcompass:{kind}",
        reference_prompt=tempcompass_prompt(published, kind),
    )
    answer = _answer(row)
    if kind == "caption_matching":
        matches = [m for m in map(_CAPTION_OPTION.match, lines[1:]) if m]
        options = tuple(m.group(2).strip() for m in matches)
        labels = [m.group(1) for m in matches]
        said = _CAPTION_OPTION.match(str(answer))
        given = option_letter(labels.index(said.group(1))) if said and said.group(1) in labels else answer
        item = _choice_item(row, options, given, question=lines[0].strip(), **fields)
    elif kind == "multi-choice":
        lettered = [(line, _LETTERED.match(line)) for line in lines]
        options = tuple(m.group(3).strip() for _, m in lettered if m)
        question = "\n".join(line for line, m in lettered if not m).strip()
        item = _choice_item(row, options, answer, question=question, **fields)
    else:  # yes_no is read from the reply's first word; captioning is judged by an LLM in the reference
        text = str(answer).strip()
        item = Item(
            type="free-form",
            answer=text.lower() if kind == "yes_no" else text,
            source=row.source,
            question=published.strip(),
            **fields,
        )  # type: ignore[arg-type]
    hint = "TempCompass videos not found: unpack tempcompass_videos.zip (lmms-lab/TempCompass) into {root}/"
    return _Parsed(item, (f"videos/{video_id}.mp4", f"{video_id}.mp4"), hint)


def _tempcompass_rows(data: dict, name: str) -> list[_Row]:
    """Flatten TempCompass's {video_id: {dimension: [{question, answer}, ...]}} into one row per question."""
    rows: list[_Row] = []
    for video_id, dims in data.items():
        for dim, questions in dims.items():
            for k, question in enumerate(questions if isinstance(questions, list) else [questions], 1):
                fields = dict(question, video_id=video_id, dim=dim) if isinstance(question, dict) else question
                rows.append(_Row(f"{name}:{video_id}/{dim}/{k}", k, fields))
    return rows


def _is_tempcompass_tree(data: dict) -> bool:
    return bool(data) and all(
        isinstance(v, dict) and all(isinstance(q, list) for q in v.values()) for v in data.values()
    )


# ---------------------------------------------------------------- Video-MME


def _videomme_questions(row: _Row) -> list[_Row]:
    """The per-video layout nests the questions under the video: one row per question, with the video's fields."""
    questions = row.fields.get("questions") if isinstance(row.fields, dict) else None
    if not isinstance(questions, list):
        return [row]
    video = {k: v for k, v in row.fields.items() if k != "questions"}
    return [
        _Row(f"{row.source} question {k}", row.number, video | q if isinstance(q, dict) else q)
        for k, q in enumerate(questions, 1)
    ]


# The per-video JSON of the official repository and its evaluation script name the video's categories
# differently from the parquet rows; each category's names, parquet first.
_VIDEOMME_CATEGORIES = {
    "duration": ("duration", "duration_category"),
    "domain": ("domain", "video_category"),
    "sub_category": ("sub_category", "video_sub_category", "video_subcategory"),
    "task_type": ("task_type",),
}


def _videomme_video_name(row: _Row) -> str:
    """The file name of the video: the YouTube id (videoID, or the url's v=), else the numbered video_id."""
    if row.fields.get("videoID"):
        return _text(row, "videoID")
    url = re.search(r"[?&]v=([\w-]+)", str(row.fields.get("url") or ""))
    return url.group(1) if url else _text(row, "video_id")


def _parse_videomme(row: _Row, file: Path) -> _Parsed:
    name = _videomme_video_name(row)
    published = _option_list(_field(row, "options" if "options" in row.fields else "choices"), "options")
    options = _unlettered(published)
    lettered = published if options != tuple(published) else [f"{option_letter(i)}. {o}" for i, o in enumerate(options)]
    categories = tuple(
        (category, str(value).strip())
        for category, names in _VIDEOMME_CATEGORIES.items()
        for value in [next((row.fields[n] for n in names if row.fields.get(n)), None)]
        if value is not None
    )
    item = _choice_item(
        row,
        options,
        _answer(row),
        id=_text(row, "question_id"),
        video=Path(f"{name}.mp4"),
        question=_text(row, "question"),
        dataset="videomme",
        categories=categories,
        rule="videomme:mc",
        reference_prompt=videomme_prompt(str(row.fields["question"]), lettered),
    )
    places = tuple(f"{folder}{name}{ext}" for ext in (".mp4", ".MP4", ".mkv") for folder in ("data/", ""))
    hint = "Video-MME videos not found: unpack the videos_chunked_*.zip archives (lmms-lab/Video-MME) into {root}/"
    return _Parsed(item, places, hint)


# ---------------------------------------------------------------- MMVU


def _parse_mmvu(row: _Row, file: Path) -> _Parsed:
    where = str(row.fields.get("video_path") or _text(row, "video")).strip()
    relative = where.split("/resolve/main/", 1)[-1] if "://" in where else where  # the HF URL in validation.json
    choices = row.fields.get("choices") or {}
    if not isinstance(choices, dict):
        raise RowError(f"choices must be an object of letter -> text, got {choices!r}")
    published = {str(letter): "" if text is None else str(text) for letter, text in choices.items()}
    texts = [published[letter].strip() for letter in sorted(published)]
    while texts and not texts[-1]:  # unused trailing letters are left empty ("E": "") or null (parquet)
        texts.pop()
    declared = str(row.fields.get("question_type") or "").strip()
    multiple = declared == "multiple-choice" or (not declared and bool(texts))
    metadata = row.fields.get("metadata")
    subject = metadata.get("subject") if isinstance(metadata, dict) else None
    subject = str(subject or (relative.split("/")[-2] if relative.count("/") else "")).strip()
    fields = dict(
        id=_text(row, "id"),
        video=Path(relative),
        question=_text(row, "question"),
        dataset="mmvu",
        categories=((("subject", subject),) if subject else ())
        + (("question_type", "multiple-choice" if multiple else "open-ended"),),
        rule="mmvu:mc" if multiple else "mmvu:open",
        reference_prompt=mmvu_prompt(str(row.fields["question"]), published, multiple),
    )
    answer = _answer(row)
    if multiple:
        item = _choice_item(row, tuple(texts), answer, **fields)
    else:
        item = Item(type="free-form", answer=str(answer).strip(), source=row.source, **fields)  # type: ignore[arg-type]
    inner = relative.split("videos/", 1)[1] if relative.startswith("videos/") else relative
    hint = "MMVU videos not found: download the videos/ folder of yale-nlp/MMVU into {root}/"
    return _Parsed(item, (relative, f"videos/{inner}", inner), hint)


# ---------------------------------------------------------------- VSI-Bench


def _parse_vsibench(row: _Row, file: Path) -> _Parsed:
    scene = _text(row, "scene_name")
    source = str(row.fields.get("dataset") or "").strip()
    options = row.fields.get("options")
    kind = str(row.fields.get("question_type") or "").strip()
    published = _option_list(options, "options") if options else None
    fields = dict(
        id=_text(row, "id"),
        video=Path(f"{source}/{scene}.mp4" if source else f"{scene}.mp4"),
        question=_text(row, "question"),
        dataset="vsibench",
        categories=(("question_type", kind),) if kind else (),
        rule="vsibench:mca" if published else "vsibench:na",
        reference_prompt=vsibench_prompt(str(row.fields["question"]), published and _raw_list(options, published)),
    )
    answer = _answer(row, "ground_truth")
    if published:  # multiple choice; numeric questions (counts, distances, sizes) have no options
        item = _choice_item(row, _unlettered(published), answer, **fields)
    else:
        item = Item(type="numeric", answer=_number(answer, "ground_truth"), source=row.source, **fields)  # type: ignore[arg-type]
    archive = source or "the scene"
    hint = f"VSI-Bench videos not found: unpack {archive}.zip (nyu-visionx/VSI-Bench) into {{root}}/"
    return _Parsed(item, (str(fields["video"]), f"{scene}.mp4"), hint)


# ---------------------------------------------------------------- VideoMMMU


def _videommmu_track(row: _Row, file: Path) -> str | None:
    """The track: the key it is nested under (perception_video.json's {"Perception": {...}}), the folder
    (lmms-lab's Perception/test-*.parquet) or the file's name (perception_video.json)."""
    for name in (row.fields.get("_track"), file.parent.name, file.stem.split("_")[0].capitalize()):
        if name in VIDEOMMMU_TRACKS:
            return str(name)
    return None


def _parse_videommmu(row: _Row, file: Path) -> _Parsed:
    item_id = _text(row, "id")
    track = _videommmu_track(row, file)
    subject = videommmu_subject(item_id)
    published = _option_list(row.fields.get("options") or [], "options")
    declared = str(row.fields.get("question_type") or "").strip()
    multiple = declared == "multiple-choice" or (not declared and bool(published))  # no question_type: options say
    fields = dict(
        id=f"{track.lower()}-{item_id}" if track else item_id,  # the same id is asked in each track
        video=Path(f"{item_id}.mp4"),
        question=_text(row, "question"),
        dataset="videommmu",
        categories=((("track", track),) if track else ()) + ((("subject", subject),) if subject else ()),
        rule="videommmu:mc" if multiple else "videommmu:open",
        reference_prompt=videommmu_prompt(
            str(row.fields["question"]), _raw_list(row.fields.get("options") or [], published), track, multiple
        ),
    )
    answer = _answer(row)
    if multiple:
        item = _choice_item(row, _unlettered(published), answer, **fields)
    else:
        item = _open_item(row, answer, **fields)
    group = VIDEOMMMU_GROUP.get(subject or "")
    places = ((f"{group}/{item_id}.mp4",) if group else ()) + (f"{item_id}.mp4", f"*/{item_id}.mp4")
    where = f"{{root}}/{group}/" if group else "{root}/<its subject group>/"
    return _Parsed(item, places, f"VideoMMMU videos not found: unpack the videos of lmms-lab/VideoMMMU into {where}")


# ---------------------------------------------------------------- the registry


def _has(*names: str) -> Callable[[dict], bool]:
    return lambda fields: all(name in fields for name in names)


_LOADERS: dict[str, _Loader] = {
    loader.info.name: loader
    for loader in (
        _Loader(
            FormatInfo(
                "vreason",
                "This tool's own format: JSONL (one object per line), a JSON list, or CSV with a header row.",
                "fields id, video (relative to the dataset file's folder or the media root), question, answer "
                "(letter or option text for multiple-choice, a number for numeric, text for free-form); "
                "optional type (multiple-choice, numeric, free-form; inferred when absent: options -> "
                "multiple-choice, numeric answer -> numeric, else free-form), options (a list; in CSV a JSON "
                "list or 'red|green|blue'), start/end (seconds), dataset (report group; default the file stem)",
            ),
            _has("id", "video", "question", "answer"),
            _parse_own,
        ),
        _Loader(
            FormatInfo(
                "mvbench",
                "MVBench: json/<task>.json (one JSON list per task; give the file, json/ or the whole folder); "
                "the answer is the correct candidate's text.",
                "fields video, question, candidates (list), answer (candidate text), optional start/end (s); "
                "id = <task>-<row>; category task; video found from the folder holding json/: the task's folder "
                "of lmms-eval's download (<root>/star/Charades_segment/, clips already cut) or of the notebook's "
                "(<root>/video/star/Charades_v1_480/), or under data0613/",
            ),
            _has("video", "question", "candidates", "answer"),
            _parse_mvbench,
        ),
        _Loader(
            FormatInfo(
                "tempcompass",
                "TempCompass: questions/<type>.json ({video_id: {dimension: [{question, answer}]}}) for "
                "multi-choice, yes_no, caption_matching and captioning, or lmms-lab's <type>/test-*.parquet rows.",
                "fields question (options as 'A. ...', 'Option 1: ...', 'Sentence A: ...' or 'Caption A: ...' "
                "lines inside it), answer, video_id and dim (from the nesting or the row); question type from the "
                "file or folder name; categories dimension, question_type; video at <root>/videos/<video_id>.mp4",
            ),
            _has("video_id", "question", "answer"),
            _parse_tempcompass,
        ),
        _Loader(
            FormatInfo(
                "videomme",
                "Video-MME: videomme/test-*.parquet rows (or as JSON/JSONL), or the per-video JSON with nested "
                "'questions'.",
                "fields videoID (or url, or video_id), question_id, question, options or choices (['A. ...']), "
                "answer (letter), duration/duration_category, domain/video_category, sub_category/"
                "video_sub_category, task_type (the categories); video at <root>/data/<videoID>.mp4 (.MP4, .mkv)",
            ),
            lambda f: (
                ("videoID" in f and ("question_id" in f or "questions" in f)) or ("questions" in f and "video_id" in f)
            ),
            _parse_videomme,
            _videomme_questions,
        ),
        _Loader(
            FormatInfo(
                "mmvu",
                "MMVU: validation.json (or data/validation.json, or lmms-eval's rows with video_path).",
                "fields id, question, choices ({letter: text}, empty for open-ended), answer (letter or text), "
                "question_type, metadata.subject, video (HF URL; the part after /resolve/main/ is used) or "
                "video_path; categories subject, question_type; video at <root>/videos/<subject>/<n>.mp4",
            ),
            _has("id", "question", "choices", "answer"),
            _parse_mmvu,
        ),
        _Loader(
            FormatInfo(
                "vsibench",
                "VSI-Bench: test.jsonl or test-*.parquet rows; numeric questions are scored by MRA.",
                "fields id, dataset, scene_name, question_type (the category), question, options (['A. ...'] or "
                "null for numeric questions), ground_truth (letter or number); video at "
                "<root>/<dataset>/<scene_name>.mp4",
            ),
            _has("scene_name", "question", "ground_truth"),
            _parse_vsibench,
        ),
        _Loader(
            FormatInfo(
                "videommmu",
                "VideoMMMU: perception_video.json / comprehension_video.json / adaptation_video.json "
                '({"Perception": {"0": {...}}}), lmms-lab\'s <Track>/test-*.parquet, or rows as JSON/JSONL.',
                "fields id, question, options (list), answer (letter, or the value for open questions), optional "
                "question_type (absent: multiple-choice when there are options); categories track (from the "
                "nesting, folder or file name), subject (from the id); video at <root>/<subject group, e.g. "
                "Art>/<id>.mp4, <root>/<id>.mp4 or <root>/<any folder>/<id>.mp4",
            ),
            lambda f: _has("id", "question", "options", "answer")(f) and "video" not in f,
            _parse_videommmu,
        ),
    )
}
FORMATS: dict[str, FormatInfo] = {name: loader.info for name, loader in _LOADERS.items()}
# Auto-detection tries the formats with the most telling fields first: a Video-MME row also has TempCompass's
# video_id/question/answer, and the own format's required fields are a subset of several benchmarks'.
_DETECTION_ORDER = ("videomme", "mvbench", "vsibench", "mmvu", "videommmu", "tempcompass", "vreason")


# ---------------------------------------------------------------- reading files


def _read_rows(path: Path, name: str | None = None) -> list[_Row]:
    """The records of a .jsonl, .json, .csv or .parquet file, their sources named `name` (default: the file's
    name; in a folder, its path there, as several files may be called test-00000-of-00001.parquet). A file
    that cannot be read at all is a UserError."""
    name = name or path.name
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: dataset files must be {', '.join(SUFFIXES)}, got '{suffix}'")
    if suffix == ".parquet":
        return _parquet_rows(path, name)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"dataset file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a dataset file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read dataset file {path}: {exc}") from None
    if suffix == ".csv":
        try:
            return _csv_rows(name, text)
        except csv.Error as exc:
            raise UserError(f"{path} is not a readable CSV file: {exc}") from None
    if suffix == ".jsonl":
        return list(_jsonl_rows(path, name, text))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line under a .json name: read it as the JSON Lines it is
            return list(_jsonl_rows(path, name, text))
        raise UserError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if isinstance(data, dict) and data and set(data) <= set(VIDEOMMMU_TRACKS):
        return _videommmu_rows(data, name)
    if isinstance(data, dict) and _is_tempcompass_tree(data):
        return _tempcompass_rows(data, name)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of question objects, got a JSON {type(data).__name__}")
    return [_Row(f"{name}:#{n}", n, fields) for n, fields in enumerate(data, 1)]


def _parquet_rows(path: Path, name: str) -> list[_Row]:
    """The rows of a parquet file (the Hugging Face copies of Video-MME, VSI-Bench, TempCompass, VideoMMMU).
    pyarrow is optional: only this needs it, so its absence is said here, in one line."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise _NoPyarrow(f"{path}: reading parquet files needs pyarrow: pip install pyarrow") from None
    try:
        records = parquet.read_table(path).to_pylist()
    except FileNotFoundError:
        raise UserError(f"dataset file not found: {path}") from None
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
        raise UserError(f"{path} is not a readable parquet file: {exc}") from None
    return [_Row(f"{name}:#{n}", n, fields) for n, fields in enumerate(records, 1)]


def _videommmu_rows(data: dict, name: str) -> list[_Row]:
    """VideoMMMU's published perception_video.json: {"Perception": {"0": {...}, "1": {...}}}, one row per entry,
    each knowing its track."""
    rows: list[_Row] = []
    for track, entries in data.items():
        keyed = (
            entries.items() if isinstance(entries, dict) else enumerate(entries if isinstance(entries, list) else [])
        )
        for n, (key, fields) in enumerate(keyed, 1):
            rows.append(
                _Row(f"{name}:{track}/{key}", n, dict(fields, _track=track) if isinstance(fields, dict) else fields)
            )
    return rows


def _csv_rows(name: str, text: str) -> list[_Row]:
    """One row per CSV record, named by the physical line it starts on. A quote left open makes the csv module
    read the following lines into one field, silently; a record spanning several lines whose later lines read
    as whole rows on their own (or that ends the file inside its quote) is that, and it and every line it
    swallowed are reported, naming the line where the quote opened, instead of becoming one long question."""
    lines = text.splitlines(keepends=True)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    width = len(reader.fieldnames or [])
    rows: list[_Row] = []
    first = reader.line_num + 1
    for number, fields in enumerate(reader, 1):
        last = reader.line_num
        raw = lines[first - 1 : last]
        if _quote_left_open(raw, width, fields):
            span = f"lines {first}-{last} read as one row" if last > first else "it runs to the end of the file"
            why = f"a quote opened on line {first} is left open ({span}); close it"
            rows.append(_Row(f"{name}:{first}", number, RowError(why)))  # type: ignore[arg-type]
            for n in range(first + 1, last + 1):
                swallowed = RowError(f"read into the row of line {first} by the quote left open there")
                rows.append(_Row(f"{name}:{n}", number, swallowed))  # type: ignore[arg-type]
        else:
            rows.append(_Row(f"{name}:{first}", number, fields))
        first = last + 1
    return rows


def _quote_left_open(raw: list[str], width: int, fields: dict) -> bool:
    """Whether a record is an unterminated quote rather than a field with line breaks: one physical line whose
    field holds a line break (its quote ran to the end of the file), or several lines whose quotes never balance
    (the same) or of which a later line is a whole row by itself."""
    if len(raw) == 1:
        return any(isinstance(v, str) and "\n" in v for v in fields.values())
    if "".join(raw).count('"') % 2:
        return True
    return width > 1 and any(len(next(csv.reader([line]), [])) == width for line in raw[1:])


def _jsonl_rows(path: Path, name: str, text: str) -> Iterator[_Row]:
    """One row per non-blank line; a line that is not JSON is kept as a row that will be reported invalid."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    parsed = 0
    for n, line in lines:
        try:
            fields = json.loads(line)
            parsed += 1
        except json.JSONDecodeError as exc:
            fields = RowError(f"not valid JSON ({exc.msg} at column {exc.colno})")
        yield _Row(f"{name}:{n}", n, fields)  # type: ignore[arg-type]
    if lines and not parsed:
        raise UserError(f"{path} is not a JSON Lines file: no line of it is valid JSON")


def _detect(path: Path, rows: list[_Row]) -> str:
    first = next((row.fields for row in rows if isinstance(row.fields, dict)), None)
    if first is None:
        raise UserError(f"{path} has no question rows (an empty file, or no row is a JSON object)")
    for name in _DETECTION_ORDER:
        if _LOADERS[name].detect(first):
            return name
    raise UserError(
        f"{path} matches none of the known dataset formats ({', '.join(FORMATS)}); its first row has the fields "
        f"{', '.join(sorted(map(str, first))) or '(none)'}"
    )


def _resolve(parsed: _Parsed, bases: list[Path], root: Path) -> Item:
    """The item with its video found under one of `bases` (the benchmark's root first) and checked (exists, a
    non-empty file); else a RowError naming where it was looked for or, for a benchmark, what to unpack where."""
    tried: list[Path] = []
    for base in bases:
        for candidate in parsed.candidates:
            path = Path(candidate).expanduser()
            if path.is_absolute():
                matches = [path]
            elif "*" in candidate:
                matches = sorted(base.glob(candidate)) or [base / candidate]
            else:
                matches = [base / path]
            tried.append(matches[0])
            if matches[0].exists():
                item = replace(parsed.item, start=None, end=None) if candidate in parsed.cut else parsed.item
                try:
                    return replace(item, video=check_video_file(matches[0]))
                except UserError as exc:
                    raise RowError(exc.message) from None
    places = list(dict.fromkeys(map(str, tried)))
    if parsed.hint is None:
        raise RowError(f"video not found: {' or '.join(places)}")
    others = f" and {count(len(places) - 1, 'other place')}" if len(places) > 1 else ""
    raise RowError(f"{parsed.hint.format(root=root)} (looked for {places[0]}{others})")


class _NoPyarrow(UserError):
    """A parquet file without pyarrow installed: never a file to pass over in a folder, as others are."""


def _dataset_files(path: Path, fmt: str) -> list[tuple[Path, list[_Row], str]]:
    """The annotation files to load, with their rows and format: the file given, or every file of a downloaded
    benchmark's folder whose rows are questions of one format (files of the download that hold no questions,
    such as TempCompass's meta_info.json, are passed over)."""
    if not path.is_dir():
        rows = _read_rows(path)
        return [(path, rows, _detect(path, rows) if fmt == "auto" else fmt)]
    found: list[tuple[Path, list[_Row], str]] = []
    looked = annotation_files(path)
    for file in looked:
        try:
            rows = _read_rows(file, str(file.relative_to(path)))
            kind = _detect(file, rows)
        except _NoPyarrow:
            raise
        except UserError:
            continue
        if fmt in ("auto", kind):
            found.append((file, rows, kind))
    kinds = sorted({kind for *_, kind in found})
    if len(kinds) > 1:
        files = "; ".join(
            f"{kind}: {', '.join(str(f.relative_to(path)) for f, _, k in found if k == kind)}" for kind in kinds
        )
        raise UserError(f"{path} holds dataset files of several formats ({files}); give one file, or --format")
    if not found:
        what = f"{fmt} " if fmt != "auto" else ""
        raise UserError(
            f"no {what}dataset file in the folder {path} (looked at {count(len(looked), 'file')} with a suffix "
            f"{', '.join(SUFFIXES)} in it and in the folders just below)"
        )
    return found


def load_dataset(path: Path, fmt: str = "auto", media_root: Path | None = None) -> Dataset:
    """Load a dataset: its usable items and every row skipped, with the reason.

    `path` is a file, or a folder holding a benchmark as downloaded (every annotation file in it is read).
    `fmt` "auto" picks the format from the first row's fields. Videos are looked for under `media_root` when
    given, else where the benchmark's layout keeps them (from its root folder), then beside the file.
    Duplicate ids keep the first row and report the others, since results are resumed by id.
    """
    path = Path(path).expanduser()
    if fmt != "auto" and fmt not in _LOADERS:
        raise UserError(f"unknown dataset format {fmt!r}; known formats: auto, {', '.join(FORMATS)}")
    files = _dataset_files(path, fmt)
    if media_root is not None and not Path(media_root).expanduser().is_dir():
        raise UserError(f"media folder not found: {media_root}")
    name = files[0][2]
    loader = _LOADERS[name]
    dataset = Dataset(path, name)
    first_seen: dict[str, str] = {}
    for file, rows, _ in files:
        root = Path(media_root).expanduser() if media_root is not None else layout_root(name, file)
        bases = [root] if media_root is not None else list(dict.fromkeys((root, file.parent)))
        for row in (question for record in rows for question in loader.expand(record)):
            try:
                if isinstance(row.fields, RowError):
                    raise row.fields
                if not isinstance(row.fields, dict):
                    raise RowError(f"a row must be an object of fields, got {type(row.fields).__name__}")
                parsed = loader.parse(row, file)
                if parsed.item.id in first_seen:
                    raise RowError(f"duplicate id '{parsed.item.id}' (first at {first_seen[parsed.item.id]})")
                dataset.items.append(_resolve(parsed, bases, root))
                first_seen[parsed.item.id] = row.source
            except RowError as exc:
                dataset.invalid.append(Invalid(row.source, str(exc)))
    return dataset


def dataset_sha256(path: Path) -> str:
    """What `--resume` compares to know the questions did not change: a dataset file's bytes, or for a folder
    given as downloaded, the names and bytes of the annotation files in it (its videos are not hashed: the
    items found, compared too, say whether they moved)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for file in annotation_files(path):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()

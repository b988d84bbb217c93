"""Reading dataset files, in this tool's own format or in the annotation formats of public video benchmarks.

Users already have local copies of MVBench, TempCompass, Video-MME, MMVU, VSI-Bench and VideoMMMU; each
ships its questions in its own field names and its videos in its own folder layout. Every loader here
maps one such row to an `Item` and names where the video may lie, relative to the media root (the
dataset file's folder unless the user names another). Nothing is downloaded. A row that cannot be used
becomes an `Invalid` entry saying which file, which row and why; only an unreadable file, or one whose
rows match no known format, is an error for the whole file. Parquet is not read: export it to JSON
first (`pandas.read_parquet(p).to_json(out, orient="records")`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError
from ..video import check_video_file
from .items import ITEM_TYPES, Dataset, Invalid, Item, ItemType, option_letter
from .sample import make_sample

__all__ = ["FORMATS", "FormatInfo", "load_dataset", "make_sample"]

SUFFIXES = (".jsonl", ".json", ".csv")
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
    """

    item: Item
    candidates: tuple[str, ...]


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
    parse: Callable[[_Row, str], _Parsed]  # (row, file stem) -> item; raises RowError
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


def _parse_own(row: _Row, stem: str) -> _Parsed:
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
        dataset=str(row.fields.get("dataset") or stem),
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

# Where MVBench's video/ tree keeps each task's clips (its evaluation notebook's table); tried after the
# plain path, so a flat folder of videos works too. Episodic Reasoning (TVQA) ships frame folders, not
# videos, so its rows are reported as invalid.
_MVBENCH_FOLDERS = {
    "action_sequence": "star/Charades_v1_480",
    "action_prediction": "star/Charades_v1_480",
    "action_antonym": "ssv2_video",
    "fine_grained_action": "Moments_in_Time_Raw/videos",
    "unexpected_action": "FunQA_test/test",
    "object_existence": "clevrer/video_validation",
    "object_interaction": "star/Charades_v1_480",
    "object_shuffle": "perception/videos",
    "moving_direction": "clevrer/video_validation",
    "action_localization": "sta/sta_video",
    "scene_transition": "scene_qa/video",
    "action_count": "perception/videos",
    "moving_count": "clevrer/video_validation",
    "moving_attribute": "clevrer/video_validation",
    "state_change": "perception/videos",
    "fine_grained_pose": "nturgbd",
    "character_order": "perception/videos",
    "egocentric_navigation": "vlnqa",
    "episodic_reasoning": "tvqa/frames_fps3_hq",
    "counterfactual_inference": "clevrer/video_validation",
}


def _parse_mvbench(row: _Row, stem: str) -> _Parsed:
    video = _text(row, "video")
    candidates = _option_list(_field(row, "candidates"), "candidates")
    item = _choice_item(
        row,
        tuple(candidates),
        _answer(row),
        id=f"{stem}-{row.number}",
        video=Path(video),
        question=_text(row, "question"),
        start=_optional_number(row, "start"),
        end=_optional_number(row, "end"),
        dataset="mvbench",
    )
    folder = _MVBENCH_FOLDERS.get(stem)
    return _Parsed(item, (video, f"{folder}/{video}") if folder else (video,))


# ---------------------------------------------------------------- TempCompass


def _parse_tempcompass(row: _Row, stem: str) -> _Parsed:
    video_id = _text(row, "video_id")
    lines = _text(row, "question").splitlines()
    lettered = [(i, _LETTERED.match(line)) for i, line in enumerate(lines)]
    options = tuple(m.group(3).strip() for _, m in lettered if m)
    question = "\n".join(line for (_, m), line in zip(lettered, lines) if not m).strip()
    fields = dict(
        id=f"{video_id}-{row.fields.get('dim', 'q')}-{row.number}",
        video=Path(f"{video_id}.mp4"),
        question=question,
        dataset="tempcompass",
    )
    answer = _answer(row)
    item = _choice_item(row, options, answer, **fields) if options else _open_item(row, answer, **fields)
    return _Parsed(item, (f"{video_id}.mp4", f"videos/{video_id}.mp4"))


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


def _parse_videomme(row: _Row, stem: str) -> _Parsed:
    video_id = _text(row, "videoID")
    options = _unlettered(_option_list(_field(row, "options"), "options"))
    item = _choice_item(
        row,
        options,
        _answer(row),
        id=_text(row, "question_id"),
        video=Path(f"{video_id}.mp4"),
        question=_text(row, "question"),
        dataset="videomme",
    )
    return _Parsed(item, (f"{video_id}.mp4", f"data/{video_id}.mp4"))


# ---------------------------------------------------------------- MMVU


def _parse_mmvu(row: _Row, stem: str) -> _Parsed:
    where = str(row.fields.get("video_path") or _text(row, "video")).strip()
    relative = where.split("/resolve/main/", 1)[-1] if "://" in where else where  # the HF URL in validation.json
    choices = row.fields.get("choices") or {}
    if not isinstance(choices, dict):
        raise RowError(f"choices must be an object of letter -> text, got {choices!r}")
    texts = [str(choices[letter]).strip() for letter in sorted(choices)]
    while texts and not texts[-1]:  # unused trailing letters are left empty ("E": "")
        texts.pop()
    fields = dict(id=_text(row, "id"), video=Path(relative), question=_text(row, "question"), dataset="mmvu")
    answer = _answer(row)
    if str(row.fields.get("question_type", "")).strip() == "multiple-choice" or texts:
        item = _choice_item(row, tuple(texts), answer, **fields)
    else:
        item = Item(type="free-form", answer=str(answer).strip(), source=row.source, **fields)  # type: ignore[arg-type]
    inner = relative.split("videos/", 1)[1] if relative.startswith("videos/") else relative
    return _Parsed(item, (relative, inner, f"videos/{inner}"))


# ---------------------------------------------------------------- VSI-Bench


def _parse_vsibench(row: _Row, stem: str) -> _Parsed:
    scene = _text(row, "scene_name")
    source = str(row.fields.get("dataset") or "").strip()
    options = row.fields.get("options")
    fields = dict(
        id=_text(row, "id"),
        video=Path(f"{source}/{scene}.mp4" if source else f"{scene}.mp4"),
        question=_text(row, "question"),
        dataset="vsibench",
    )
    answer = _answer(row, "ground_truth")
    if options:  # multiple choice; numeric questions (counts, distances, sizes) have no options
        item = _choice_item(row, _unlettered(_option_list(options, "options")), answer, **fields)
    else:
        item = Item(type="numeric", answer=_number(answer, "ground_truth"), source=row.source, **fields)  # type: ignore[arg-type]
    return _Parsed(item, (str(fields["video"]), f"{scene}.mp4"))


# ---------------------------------------------------------------- VideoMMMU


def _parse_videommmu(row: _Row, stem: str) -> _Parsed:
    item_id = _text(row, "id")
    fields = dict(id=item_id, video=Path(f"{item_id}.mp4"), question=_text(row, "question"), dataset="videommmu")
    answer = _answer(row)
    if str(row.fields.get("question_type", "")).strip() == "multiple-choice":
        item = _choice_item(row, _unlettered(_option_list(_field(row, "options"), "options")), answer, **fields)
    else:
        item = _open_item(row, answer, **fields)
    return _Parsed(item, (f"{item_id}.mp4", f"*/{item_id}.mp4"))


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
                "MVBench: one JSON list per task (json/<task>.json); the answer is the correct candidate's text.",
                "fields video, question, candidates (list), answer (candidate text), optional start/end (s); "
                "id = <file stem>-<row>; video at <media root>/<video>, else <media root>/<task's folder in "
                "MVBench's video/ tree, e.g. clevrer/video_validation>/<video>",
            ),
            _has("video", "question", "candidates", "answer"),
            _parse_mvbench,
        ),
        _Loader(
            FormatInfo(
                "tempcompass",
                "TempCompass: questions/multi-choice.json ({video_id: {dimension: [{question, answer}]}}) or "
                "flat rows; yes_no.json and caption_matching.json read too.",
                "fields question (options as 'A. ...' or 'Option 1: ...' lines inside it), answer ('B. text', "
                "yes/no) and video_id (+ dim) from the nesting or the row; video at <media root>/<video_id>.mp4 "
                "or <media root>/videos/<video_id>.mp4",
            ),
            _has("video_id", "question", "answer"),
            _parse_tempcompass,
        ),
        _Loader(
            FormatInfo(
                "videomme",
                "Video-MME: its test rows (parquet exported to JSON/JSONL) or the per-video JSON with nested "
                "'questions'.",
                "fields videoID, question_id, question, options (['A. ...', ...]), answer (letter); video at "
                "<media root>/<videoID>.mp4 or <media root>/data/<videoID>.mp4",
            ),
            lambda f: "videoID" in f and ("question_id" in f or "questions" in f),
            _parse_videomme,
            _videomme_questions,
        ),
        _Loader(
            FormatInfo(
                "mmvu",
                "MMVU: validation.json; open-ended questions are scored by normalised exact match (MMVU's own "
                "scoring uses an LLM judge).",
                "fields id, question, choices ({letter: text}, empty for open-ended), answer (letter or text), "
                "question_type, video (HF URL; the part after /resolve/main/ is used) or video_path; video at "
                "<media root>/videos/<subject>/<n>.mp4 or <media root>/<subject>/<n>.mp4 (video_path likewise)",
            ),
            _has("id", "question", "choices", "answer"),
            _parse_mmvu,
        ),
        _Loader(
            FormatInfo(
                "vsibench",
                "VSI-Bench: test rows (JSONL, or parquet exported to JSON); numeric questions are scored by MRA.",
                "fields id, dataset, scene_name, question, options (['A. ...'] or null for numeric questions), "
                "ground_truth (letter or number); video at <media root>/<dataset>/<scene_name>.mp4 or "
                "<media root>/<scene_name>.mp4",
            ),
            _has("scene_name", "question", "ground_truth"),
            _parse_vsibench,
        ),
        _Loader(
            FormatInfo(
                "videommmu",
                "VideoMMMU: Perception/Comprehension/Adaptation rows (parquet exported to JSON/JSONL).",
                "fields id, question, options (list), answer (letter, or the value for open questions), "
                "question_type ('multiple-choice' or other = open: numeric if the answer is a number, else "
                "free-form); video at <media root>/<id>.mp4 or <media root>/<any folder>/<id>.mp4",
            ),
            lambda f: _has("id", "question", "options", "answer", "question_type")(f) and "video" not in f,
            _parse_videommmu,
        ),
    )
}
FORMATS: dict[str, FormatInfo] = {name: loader.info for name, loader in _LOADERS.items()}
# Auto-detection tries the formats with the most telling fields first: a Video-MME row also has TempCompass's
# video_id/question/answer, and the own format's required fields are a subset of several benchmarks'.
_DETECTION_ORDER = ("videomme", "mvbench", "vsibench", "mmvu", "videommmu", "tempcompass", "vreason")


# ---------------------------------------------------------------- reading files


def _read_rows(path: Path) -> list[_Row]:
    """The records of a .jsonl, .json or .csv file; a file that cannot be read at all is a UserError."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(
            f"{path}: dataset files must be {', '.join(SUFFIXES)} (parquet: export it to JSON first), got '{suffix}'"
        )
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
            return _csv_rows(path, text)
        except csv.Error as exc:
            raise UserError(f"{path} is not a readable CSV file: {exc}") from None
    if suffix == ".jsonl":
        return list(_jsonl_rows(path, text))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line under a .json name: read it as the JSON Lines it is
            return list(_jsonl_rows(path, text))
        raise UserError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if isinstance(data, dict) and _is_tempcompass_tree(data):
        return _tempcompass_rows(data, path.name)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of question objects, got a JSON {type(data).__name__}")
    return [_Row(f"{path.name}:#{n}", n, fields) for n, fields in enumerate(data, 1)]


def _csv_rows(path: Path, text: str) -> list[_Row]:
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
            rows.append(_Row(f"{path.name}:{first}", number, RowError(why)))  # type: ignore[arg-type]
            for n in range(first + 1, last + 1):
                swallowed = RowError(f"read into the row of line {first} by the quote left open there")
                rows.append(_Row(f"{path.name}:{n}", number, swallowed))  # type: ignore[arg-type]
        else:
            rows.append(_Row(f"{path.name}:{first}", number, fields))
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


def _jsonl_rows(path: Path, text: str) -> Iterator[_Row]:
    """One row per non-blank line; a line that is not JSON is kept as a row that will be reported invalid."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    parsed = 0
    for n, line in lines:
        try:
            fields = json.loads(line)
            parsed += 1
        except json.JSONDecodeError as exc:
            fields = RowError(f"not valid JSON ({exc.msg} at column {exc.colno})")
        yield _Row(f"{path.name}:{n}", n, fields)  # type: ignore[arg-type]
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


def _resolve(parsed: _Parsed, base: Path) -> Item:
    """The item with its video found under `base` and checked (exists, a non-empty file); else RowError."""
    tried: list[Path] = []
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
            try:
                return replace(parsed.item, video=check_video_file(matches[0]))
            except UserError as exc:
                raise RowError(exc.message) from None
    raise RowError(f"video not found: {' or '.join(map(str, dict.fromkeys(tried)))}")


def load_dataset(path: Path, fmt: str = "auto", media_root: Path | None = None) -> Dataset:
    """Load a dataset file: its usable items and every row skipped, with the reason.

    `fmt` "auto" picks the format from the first row's fields. Videos are looked for under `media_root`,
    or the dataset file's folder when None. Duplicate ids keep the first row and report the others, since
    results are resumed by id.
    """
    path = Path(path).expanduser()
    if fmt != "auto" and fmt not in _LOADERS:
        raise UserError(f"unknown dataset format {fmt!r}; known formats: auto, {', '.join(FORMATS)}")
    rows = _read_rows(path)
    name = _detect(path, rows) if fmt == "auto" else fmt
    if media_root is not None and not Path(media_root).expanduser().is_dir():
        raise UserError(f"media folder not found: {media_root}")
    base = Path(media_root).expanduser() if media_root is not None else path.parent
    dataset = Dataset(path, name)
    first_seen: dict[str, str] = {}
    loader = _LOADERS[name]
    for row in (question for record in rows for question in loader.expand(record)):
        try:
            if isinstance(row.fields, RowError):
                raise row.fields
            if not isinstance(row.fields, dict):
                raise RowError(f"a row must be an object of fields, got {type(row.fields).__name__}")
            parsed = loader.parse(row, path.stem)
            if parsed.item.id in first_seen:
                raise RowError(f"duplicate id '{parsed.item.id}' (first at {first_seen[parsed.item.id]})")
            dataset.items.append(_resolve(parsed, base))
            first_seen[parsed.item.id] = row.source
        except RowError as exc:
            dataset.invalid.append(Invalid(row.source, str(exc)))
    return dataset

"""Where each benchmark, as its official source distributes it, keeps its annotation files and its videos.

A user who downloads a benchmark points `vreason eval` at it as downloaded: a whole folder, or one of its
annotation files. The questions then lie in one place (MVBench's json/<task>.json, TempCompass's
questions/*.json, Video-MME's videomme/test-*.parquet ...) and the videos in another (video/..., videos/,
data/ ...), relative to the benchmark's root folder, not to the annotation file. This module knows those
places, so videos are found without --media-root, and says which archive to unpack when they are not there.
Checked against each benchmark's official repository and lmms-eval's task code (cited per entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Annotation files are read with these suffixes; .parquet needs pyarrow.
ANNOTATION_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

# The folder an annotation file sits in, per format, when the benchmark's root is that folder's parent:
# MVBench json/ (HF OpenGVLab/MVBench), TempCompass questions/ (llyx97/TempCompass) or one folder per task
# type (HF lmms-lab/TempCompass), Video-MME videomme/ (HF lmms-lab/Video-MME), MMVU data/ (yale-nlp/MMVU on
# GitHub), VideoMMMU one folder per track (HF lmms-lab/VideoMMMU).
_ANNOTATION_FOLDERS: dict[str, frozenset[str]] = {
    "mvbench": frozenset({"json"}),
    "tempcompass": frozenset({"questions", "multi-choice", "yes_no", "caption_matching", "captioning"}),
    "videomme": frozenset({"videomme"}),
    "mmvu": frozenset({"data"}),
    "videommmu": frozenset({"Perception", "Comprehension", "Adaptation"}),
}


def layout_root(fmt: str, annotation: Path) -> Path:
    """The benchmark's root folder, as downloaded, for one of its annotation files."""
    parent = annotation.parent
    return parent.parent if parent.name in _ANNOTATION_FOLDERS.get(fmt, ()) else parent


def annotation_files(folder: Path) -> list[Path]:
    """Candidate annotation files of a downloaded benchmark: in the folder or one folder down (json/, questions/,
    videomme/, Perception/ ...), hidden folders (.cache, .git) left out. Video folders are not descended into
    further, so a tree of thousands of clips costs one listing per folder."""
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if _is_annotation(entry):
            found.append(entry)
        elif entry.is_dir() and not entry.name.startswith("."):
            found += [f for f in sorted(entry.iterdir()) if _is_annotation(f)]
    return found


def _is_annotation(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in ANNOTATION_SUFFIXES and path.is_file()


# ---------------------------------------------------------------- MVBench


@dataclass(frozen=True)
class MVBenchTask:
    """One of MVBench's 20 tasks: its name as the paper and the evaluation notebook report it, and the folder of
    its clips in each download. `notebook` is the main branch's layout (video/<zip>.zip unpacked under video/;
    OpenGVLab/Ask-Anything video_chat2/mvbench.ipynb `data_list`); `lmms` is lmms-eval's `revision: video`
    layout, whose star, sta and tvqa clips are already cut to the question's window
    (lmms_eval/tasks/mvbench/utils.py `DATA_LIST`)."""

    name: str
    notebook: str
    lmms: str

    @property
    def cut(self) -> bool:
        """Whether lmms-eval's clips are pre-cut segments: then a row's start/end must not be applied again."""
        return self.lmms.endswith("_segment")

    @property
    def frames(self) -> bool:
        """Whether the notebook's folder holds frame folders, not videos (Episodic Reasoning's TVQA frames)."""
        return "/frames" in self.notebook

    @property
    def archive(self) -> str:
        """The top folder, which is also the name of the zip in the dataset's video/ folder."""
        return self.notebook.split("/")[0]


MVBENCH_TASKS: dict[str, MVBenchTask] = {
    "action_sequence": MVBenchTask("Action Sequence", "star/Charades_v1_480", "star/Charades_segment"),
    "action_prediction": MVBenchTask("Action Prediction", "star/Charades_v1_480", "star/Charades_segment"),
    "action_antonym": MVBenchTask("Action Antonym", "ssv2_video", "ssv2_video_mp4"),
    "fine_grained_action": MVBenchTask(
        "Fine-grained Action", "Moments_in_Time_Raw/videos", "Moments_in_Time_Raw/videos"
    ),
    "unexpected_action": MVBenchTask("Unexpected Action", "FunQA_test/test", "FunQA_test/test"),
    "object_existence": MVBenchTask("Object Existence", "clevrer/video_validation", "clevrer/video_validation"),
    "object_interaction": MVBenchTask("Object Interaction", "star/Charades_v1_480", "star/Charades_segment"),
    "object_shuffle": MVBenchTask("Object Shuffle", "perception/videos", "perception/videos"),
    "moving_direction": MVBenchTask("Moving Direction", "clevrer/video_validation", "clevrer/video_validation"),
    "action_localization": MVBenchTask("Action Localization", "sta/sta_video", "sta/sta_video_segment"),
    "scene_transition": MVBenchTask("Scene Transition", "scene_qa/video", "scene_qa/video"),
    "action_count": MVBenchTask("Action Count", "perception/videos", "perception/videos"),
    "moving_count": MVBenchTask("Moving Count", "clevrer/video_validation", "clevrer/video_validation"),
    "moving_attribute": MVBenchTask("Moving Attribute", "clevrer/video_validation", "clevrer/video_validation"),
    "state_change": MVBenchTask("State Change", "perception/videos", "perception/videos"),
    "fine_grained_pose": MVBenchTask("Fine-grained Pose", "nturgbd", "nturgbd_convert"),
    "character_order": MVBenchTask("Character Order", "perception/videos", "perception/videos"),
    "egocentric_navigation": MVBenchTask("Egocentric Navigation", "vlnqa", "vlnqa"),
    "episodic_reasoning": MVBenchTask("Episodic Reasoning", "tvqa/frames_fps3_hq", "tvqa/video_fps3_hq_segment"),
    "counterfactual_inference": MVBenchTask(
        "Counterfactual Inference", "clevrer/video_validation", "clevrer/video_validation"
    ),
}


def mvbench_places(task: MVBenchTask | None, video: str) -> tuple[list[str], set[str]]:
    """Where a task's clip may lie below the root, in order, and which of those places hold pre-cut segments.

    lmms-eval's folders first (at the root, as its snapshot is laid out), then the notebook's under video/
    (and at the root, for a video/ folder given as the media root), then data0613/ (the archive of clips
    added later, which lmms-eval tries too), then the bare name (a flat folder of clips)."""
    places: list[str] = []
    cut: set[str] = set()
    if task is not None:
        for folder in dict.fromkeys((task.lmms,) if task.frames else (task.lmms, task.notebook)):
            for prefix in ("", "video/", "data0613/", "video/data0613/"):
                places.append(f"{prefix}{folder}/{video}")
                if task.cut and folder == task.lmms:
                    cut.add(places[-1])
    places += [f"video/{video}", video]
    return places, cut


def mvbench_hint(task: MVBenchTask | None) -> str:
    if task is None:
        return "MVBench videos not found: unpack the zips of MVBench's video/ folder into {root}/video/"
    if task.frames:
        return (
            f"MVBench videos not found: {task.name} needs lmms-eval's download ({{root}}/{task.lmms}/); the "
            f"main branch's video/{task.archive}.zip holds frames, not videos"
        )
    return (
        f"MVBench videos not found: unpack video/{task.archive}.zip into {{root}}/video/{task.archive}/ "
        f"(lmms-eval's download: {{root}}/{task.lmms}/)"
    )


# ---------------------------------------------------------------- VideoMMMU

# The folder of a subject's videos (lmms_eval/tasks/videommmu/utils.py `get_cache_dir`).
_VIDEOMMMU_GROUPS = {
    "Art": ("Art", "Art_Theory", "Design", "Music"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Humanities": ("History", "Literature", "Sociology", "Psychology"),
    "Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
    "Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
}
VIDEOMMMU_GROUP = {subject: group for group, subjects in _VIDEOMMMU_GROUPS.items() for subject in subjects}
VIDEOMMMU_TRACKS = ("Perception", "Comprehension", "Adaptation")


def videommmu_subject(item_id: str) -> str | None:
    """The subject inside an id such as "validation_Art_Theory_12" (between the first and last underscores)."""
    parts = item_id.split("_")
    return "_".join(parts[1:-1]) if len(parts) >= 3 else None

"""The record every reader yields: one study, its raw report and its image files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass
class StudyRecord:
    id: str
    split: str
    report: str
    images: list[Path]
    views: list[str] = field(default_factory=list)  # "frontal"/"lateral"/"PA"/...; "" when unknown
    source: str = ""  # the file the record came from, for error messages

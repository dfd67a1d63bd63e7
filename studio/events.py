"""The records jobs yield: Step while running, Result at the end, Notice for the user; Cell and SweepSummary for sweeps."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image


@dataclass
class Step:
    """One denoising step done: `i` of `n` (1-based), with an optional preview of the current x0-hat."""

    i: int
    n: int
    preview: list[Image.Image] | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Notice:
    """A message for the user that does not stop the job (e.g. 'width rounded to 64')."""

    text: str


@dataclass
class Result:
    """Finished images, the settings text of each (A1111 form) and where each was saved."""

    images: list[Image.Image]
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Cell:
    """One finished image of a sweep grid: row `row`, column `col` (0-based), its labels, seed and saved path."""

    row: int
    col: int
    image: Image.Image
    row_label: str
    col_label: str
    seed: int
    path: Path | None = None


@dataclass
class SweepSummary:
    """A sweep's end: per column {"scale", "adherence", "diversity"} (None without an evaluator) and the wall time."""

    columns: list[dict] = field(default_factory=list)
    seconds: float = 0.0

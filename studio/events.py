"""The records every job yields: Step while it runs, Result when it ends, Notice for things the user should know."""
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

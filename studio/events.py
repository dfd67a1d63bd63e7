"""The records jobs yield: Step while running, Result at the end, Notice for the user; Maps, Cell and SweepSummary
for the jobs that have them; TrainStep and Samples for training jobs. Each names what it carries: no positional
image lists, no arrays among the metrics."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Step:
    """One denoising step done: `i` of `n` (1-based), with an optional preview of the current x0-hat.

    `phase` names the run a step belongs to when a job has several (the inverse job: "dps", then "baseline");
    `seeds` the seeds of the images being made (known from the first step, so a stopped run still says them)."""

    i: int
    n: int
    preview: list[Image.Image] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    phase: str = ""
    seeds: tuple[int, ...] = ()


@dataclass
class Notice:
    """A message for the user that does not stop the job (e.g. 'width rounded to 64')."""

    text: str


@dataclass
class Maps:
    """The control maps a ControlNet job built, one per ControlNet, at the size it samples (uint8 HxWx3)."""

    maps: list[np.ndarray]
    size: tuple[int, int]  # (height, width)


@dataclass
class Result:
    """Finished images, the settings text of each (A1111 form) and where each was saved.

    `named` holds a job's other images by role (the inverse job: "baseline", "measurement", "clean", "start");
    `pixels` the finished images as floats in [0, 1], (N, H, W, 3), before the 8-bit rounding of the PNGs."""

    images: list[Image.Image]
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    named: dict[str, Image.Image] = field(default_factory=dict)
    pixels: np.ndarray | None = None
    engine: str = ""  # how the model ran (studio.engines: "Engine: ONNX Runtime 2.1x eager ...; 2 threads")


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
    """A sweep's end: per column {"scale", "adherence", "diversity"} (None without a judge) and the wall time."""

    columns: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class TrainStep:
    """One optimizer step of a training job: `step` of `total`, the loss of that step, the learning rate, speed and
    time left; `checkpoint` is the file written at this step, if one was."""

    step: int
    total: int
    loss: float
    lr: float
    it_per_s: float = 0.0
    eta_s: float = 0.0
    checkpoint: Path | None = None


@dataclass
class Samples:
    """Images a training job sampled at `step` from its fixed prompts and seeds (one per prompt and seed, in order)."""

    step: int
    images: list[Image.Image]
    prompts: list[str]
    seeds: list[int]

"""Control maps from what a user gives (a drawing, a photo, a pose, a ready map): a registry of annotators by name,
each building its map at the size the job samples. The ControlNet job and tab dispatch through it."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from studio.control import annotators
from studio.errors import RequestError


@dataclass
class MapSource:
    """One ControlNet's map as the user gave it; `annotator` names how it becomes a map (see ANNOTATORS)."""

    annotator: str = "scribble"
    image: Any = None  # scribble: the drawing; canny: the photo; none: the ready-made map (uint8 HxWx3/4 or PIL)
    pose: str = ""  # pose: OpenPose JSON
    low: int = 100  # canny thresholds
    high: int = 200


@dataclass(frozen=True)
class Annotator:
    name: str  # saved with the image ("Module: canny")
    label: str  # what the page calls it
    build: Callable[[MapSource, tuple[int, int]], np.ndarray]  # (source, (H, W)) -> uint8 HxWx3 map


ANNOTATORS: dict[str, Annotator] = {}


def register_annotator(name: str, label: str):
    def add(build):
        ANNOTATORS[name] = Annotator(name, label, build)
        return build

    return add


def get_annotator(name: str) -> Annotator:
    if name not in ANNOTATORS:
        raise RequestError(f"Unknown annotator {name!r}. Known annotators: {', '.join(ANNOTATORS)}.")
    return ANNOTATORS[name]


def build_map(source: MapSource, size: tuple[int, int]) -> np.ndarray:
    """The control map of a source at the image size (H, W); a ready-made map as given (the job resizes it, saying so)."""
    return get_annotator(source.annotator).build(source, size)


@register_annotator("scribble", "Sketch")
def _sketch(source: MapSource, size: tuple[int, int]) -> np.ndarray:
    if source.image is None or _blank(source.image):
        raise RequestError("Sketch: draw something on the sketchpad (or upload a drawing into it) first.")
    return annotators.scribble(source.image, size=size)


@register_annotator("canny", "Image → Canny edges")
def _canny(source: MapSource, size: tuple[int, int]) -> np.ndarray:
    if source.image is None:
        raise RequestError("Canny edges: upload an image first.")
    resized = cv2.resize(annotators.as_rgb(source.image), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return annotators.canny(resized, int(source.low), int(source.high))


@register_annotator("pose", "Pose")
def _pose(source: MapSource, size: tuple[int, int]) -> np.ndarray:
    return annotators.pose(pose_for_size(source.pose, size), size)


@register_annotator("none", "Ready-made map")
def _ready(source: MapSource, size: tuple[int, int]) -> np.ndarray:
    if source.image is None:
        raise RequestError("Ready-made map: drop a control map image into the Control map box.")
    return annotators.as_rgb(source.image)


def _blank(drawing) -> bool:
    """Nothing drawn: one flat colour once transparent parts are laid on white (the sketchpad's own white ground)."""
    arr = np.asarray(drawing)
    if arr.size == 0 or arr.dtype == object or arr.ndim not in (2, 3):
        return arr.size == 0
    flat = annotators.as_rgb(arr) if arr.ndim == 3 and min(arr.shape[:2]) >= 8 else arr
    return flat.min() == flat.max()


# ---------------------------------------------------------------- poses as OpenPose JSON
def pose_state(text: str) -> tuple[np.ndarray, tuple[int, int]]:
    """(keypoints, canvas (H, W)) of an OpenPose JSON pose; without a canvas, the keypoints' own extent."""
    keypoints, canvas = annotators.pose_from_json(text or "")
    if canvas is None:
        finite = keypoints[np.isfinite(keypoints).all(1)]
        side = int(math.ceil(finite.max())) + 1 if len(finite) else 64
        canvas = (side, side)
    return keypoints, canvas


def pose_for_size(text: str, size: tuple[int, int]) -> np.ndarray:
    """The pose's keypoints from its canvas to the image size (H, W): scaled evenly (never stretched), centred."""
    keypoints, (ch, cw) = pose_state(text)
    k = min(size[0] / ch, size[1] / cw)
    offset = np.array([(size[1] - cw * k) / 2, (size[0] - ch * k) / 2], dtype=np.float32)
    return keypoints * np.float32(k) + offset

"""The attributes a shapes scene is made of (shapes, colours, sizes, positions, poses), its records and labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from studio.control.pose import POSES  # the stick figures take the core pose library's poses

SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 30),
    "orange": (255, 130, 0),
    "yellow": (250, 225, 20),
    "green": (30, 175, 50),
    "cyan": (0, 215, 230),
    "blue": (25, 60, 235),
    "purple": (135, 40, 205),
    "pink": (255, 120, 200),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "big")
POSITIONS = ("left", "right", "top", "bottom", "centre")  # single objects only
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
LABEL_KEYS = ("kind", "shape", "colour", "count", "position", "size", "pose")

# Kind mix: single object / multiple objects / figure.
KIND_PROBS = (0.50, 0.22, 0.28)


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    centre: tuple[float, float]  # (x, y) pixels
    radius: float


@dataclass
class Figure:
    colour: str  # shirt colour
    pose: str
    keypoints: np.ndarray  # (18, 2) float32 pixel coords (x, y), NaN where absent


@dataclass
class Scene:
    image: np.ndarray  # uint8 HxWx3 RGB
    caption: str
    kind: str  # "object" or "figure"
    objects: list[SceneObject] = field(default_factory=list)
    figure: Figure | None = None
    count: int = 1
    position: str | None = None


def labels(scene: Scene) -> dict[str, int]:
    """Evaluator targets; -1 where a head does not apply."""
    if scene.kind == "figure":
        f = scene.figure
        assert f is not None
        return {
            "kind": 1, "shape": -1, "colour": COLOUR_NAMES.index(f.colour), "count": -1,
            "position": -1, "size": -1, "pose": POSES.index(f.pose),
        }
    o = scene.objects[0]
    return {
        "kind": 0,
        "shape": SHAPES.index(o.shape),
        "colour": COLOUR_NAMES.index(o.colour),
        "count": scene.count - 1,
        "position": POSITIONS.index(scene.position) if scene.position is not None else -1,
        "size": SIZES.index(o.size),
        "pose": -1,
    }

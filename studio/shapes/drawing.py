"""Drawing the shapes scenes: anti-aliased backgrounds, coloured shapes and stick figures with OpenCV."""

from __future__ import annotations

import cv2
import numpy as np

from studio.control.pose import HEAD_RADIUS, KEYPOINT_INDEX
from studio.shapes.attributes import COLOURS, Figure, SceneObject

# ----------------------------------------------------------------------------------------------------------------
# Backgrounds: low-saturation tones, in a dark and a light group (a gradient never mixes groups, so the figure's
# skin/limb tone can always be picked to contrast with the whole background).
# ----------------------------------------------------------------------------------------------------------------

_DARK_TONES = np.array(
    [(40, 40, 40), (28, 30, 34), (44, 54, 64), (62, 48, 38), (52, 54, 44), (36, 40, 54), (58, 58, 58)],
    dtype=np.float32,
)
_LIGHT_TONES = np.array(
    [(200, 200, 200), (228, 226, 220), (215, 203, 180), (196, 186, 166), (176, 184, 192), (186, 180, 172),
     (214, 214, 208)],
    dtype=np.float32,
)
_SKIN_LIGHT = (238, 200, 160)  # limbs/head on dark backgrounds
_SKIN_DARK = (72, 44, 28)  # limbs/head on light backgrounds

_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    g = _GRID_CACHE.get(size)
    if g is None:
        c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        g = (c[None, :].repeat(size, 0), c[:, None].repeat(size, 1))
        _GRID_CACHE[size] = g
    return g


def _tone(rng: np.random.Generator, tones: np.ndarray) -> np.ndarray:
    base = tones[rng.integers(len(tones))]
    jitter = rng.uniform(-8, 8) + rng.uniform(-3, 3, size=3)
    return np.clip(base + jitter, 0, 255).astype(np.float32)


def background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, bool]:
    """A random flat or gradient background: (uint8 image, is_dark)."""
    dark = bool(rng.random() < 0.5)
    tones = _DARK_TONES if dark else _LIGHT_TONES
    a = _tone(rng, tones)
    if rng.random() < 0.4:
        img = np.empty((size, size, 3), dtype=np.uint8)
        img[:] = np.round(a).astype(np.uint8)
        return img, dark
    b = _tone(rng, tones)
    theta = rng.uniform(0, 2 * np.pi)
    gx, gy = _grid(size)
    t = gx * np.float32(np.cos(theta)) + gy * np.float32(np.sin(theta))
    t = t * np.float32(1 / 1.4143) + np.float32(0.5)  # in [0, 1]
    img = a + t[..., None] * (b - a)
    return img.astype(np.uint8), dark


# ----------------------------------------------------------------------------------------------------------------
# Objects
# ----------------------------------------------------------------------------------------------------------------

_SHIFT = 4
_ONE = 1 << _SHIFT
EXTENT = 1.1  # every shape fits inside a circle of radius EXTENT * radius


def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(xy * _ONE).astype(np.int32)


def _regular(cx: float, cy: float, r: float, n: int, phase: float) -> np.ndarray:
    a = phase + np.arange(n) * (2 * np.pi / n)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)


def draw_object(img: np.ndarray, obj: SceneObject) -> None:
    cx, cy = obj.centre
    r = obj.radius
    col = COLOURS[obj.colour]
    s = obj.shape
    if s == "circle":
        cv2.circle(img, (round(cx * _ONE), round(cy * _ONE)), round(r * _ONE), col, -1, cv2.LINE_AA, _SHIFT)
        return
    if s == "ring":
        thick = max(2, int(round(0.36 * r)))
        rr = r - thick / 2.0
        cv2.circle(img, (round(cx * _ONE), round(cy * _ONE)), round(rr * _ONE), col, thick, cv2.LINE_AA, _SHIFT)
        return
    if s == "square":
        h = 0.86 * r
        poly = np.array([(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)])
    elif s == "triangle":
        # upright, circumradius 1.1 r, centred so the bounding box is centred on (cx, cy)
        R = 1.1 * r
        poly = _regular(cx, cy + 0.25 * R, R, 3, -np.pi / 2)
    elif s == "star":
        outer = _regular(cx, cy + 0.05 * r, 1.1 * r, 5, -np.pi / 2)
        inner = _regular(cx, cy + 0.05 * r, 0.47 * r, 5, -np.pi / 2 + np.pi / 5)
        poly = np.empty((10, 2))
        poly[0::2] = outer
        poly[1::2] = inner
    elif s == "diamond":
        poly = np.array([(cx, cy - 1.1 * r), (cx + 0.75 * r, cy), (cx, cy + 1.1 * r), (cx - 0.75 * r, cy)])
    else:
        raise ValueError(f"unknown shape {s!r}")
    cv2.fillPoly(img, [_pts(poly)], col, cv2.LINE_AA, _SHIFT)


# ----------------------------------------------------------------------------------------------------------------
# Figures (stick figures with an OpenPose COCO-18 skeleton)
# ----------------------------------------------------------------------------------------------------------------

# Limbs drawn for the stick figure (index pairs into KEYPOINT_NAMES).
_I = KEYPOINT_INDEX
_BODY_LIMBS = [
    (_I["r_shoulder"], _I["r_elbow"]), (_I["r_elbow"], _I["r_wrist"]),
    (_I["l_shoulder"], _I["l_elbow"]), (_I["l_elbow"], _I["l_wrist"]),
    (_I["r_hip"], _I["r_knee"]), (_I["r_knee"], _I["r_ankle"]),
    (_I["l_hip"], _I["l_knee"]), (_I["l_knee"], _I["l_ankle"]),
    (_I["neck"], _I["nose"]),
]


def draw_figure(img: np.ndarray, fig: Figure, scale: float, dark_bg: bool) -> None:
    size = img.shape[0]
    k = size / 64.0
    kp = fig.keypoints.astype(np.float64)
    skin = _SKIN_LIGHT if dark_bg else _SKIN_DARK
    thick = max(2, int(round(3.0 * k)))
    P = np.round(kp * _ONE).astype(np.int64)
    for a, b in _BODY_LIMBS:
        cv2.line(img, (int(P[a, 0]), int(P[a, 1])), (int(P[b, 0]), int(P[b, 1])), skin, thick, cv2.LINE_AA, _SHIFT)
    # shirt: shoulders -> hips quadrilateral, slightly widened, drawn over the limbs
    rs, ls, rh, lh = kp[_I["r_shoulder"]], kp[_I["l_shoulder"]], kp[_I["r_hip"]], kp[_I["l_hip"]]
    c = (rs + ls + rh + lh) / 4.0
    quad = np.array([rs, ls, lh, rh])
    quad = c + (quad - c) * 1.15
    cv2.fillPoly(img, [_pts(quad)], COLOURS[fig.colour], cv2.LINE_AA, _SHIFT)
    # head
    nose = kp[_I["nose"]]
    hr = max(2.5 * k, HEAD_RADIUS * scale * 1.05)
    cv2.circle(img, (round(nose[0] * _ONE), round(nose[1] * _ONE)), round(hr * _ONE), skin, -1, cv2.LINE_AA, _SHIFT)

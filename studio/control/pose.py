"""OpenPose COCO-18 body keypoint format, a small pose library, ControlNet-style pose maps, presets and joint edits."""

from __future__ import annotations

import math

import cv2
import numpy as np

from studio.errors import RequestError

# OpenPose COCO-18 keypoint order.
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)
KEYPOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(KEYPOINT_NAMES)}

# The 17 standard OpenPose limbs (0-based; limbSeq of lllyasviel/ControlNet util.draw_bodypose minus 1).
LIMB_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (a - 1, b - 1)
    for a, b in [
        [2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11],
        [2, 12], [12, 13], [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18],
    ]
)

# The 18 standard OpenPose colours (RGB). Joint i uses COLOURS[i]; limb i uses COLOURS[i] * 0.6.
COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

# ----------------------------------------------------------------------------------------------------------------
# Pose library: whole-body poses in unit coordinates (the poses of the embedded suite's stick figures)
# ----------------------------------------------------------------------------------------------------------------

POSES: tuple[str, ...] = ("standing", "arms up", "waving", "walking", "sitting")

# Unit coordinates: x to the image right, y down; head top at y=0, ankles at y~1 when standing.
# "r_" joints are the person's right, i.e. the image left for a person facing the viewer.
HEAD_RADIUS = 0.08
_BASE = {
    "nose": (0.0, 0.085), "neck": (0.0, 0.18),
    "r_shoulder": (-0.11, 0.20), "r_elbow": (-0.14, 0.36), "r_wrist": (-0.15, 0.51),
    "l_shoulder": (0.11, 0.20), "l_elbow": (0.14, 0.36), "l_wrist": (0.15, 0.51),
    "r_hip": (-0.065, 0.52), "r_knee": (-0.07, 0.745), "r_ankle": (-0.075, 0.97),
    "l_hip": (0.065, 0.52), "l_knee": (0.07, 0.745), "l_ankle": (0.075, 0.97),
    "r_eye": (-0.027, 0.07), "l_eye": (0.027, 0.07), "r_ear": (-0.065, 0.085), "l_ear": (0.065, 0.085),
}
_POSE_DELTA = {
    "standing": {},
    "arms up": {
        "r_elbow": (-0.20, 0.06), "r_wrist": (-0.28, -0.07),
        "l_elbow": (0.20, 0.06), "l_wrist": (0.28, -0.07),
    },
    "waving": {  # person's right arm: upper arm out to the side, forearm up
        "r_elbow": (-0.26, 0.24), "r_wrist": (-0.29, 0.07),
    },
    "walking": {  # legs apart in a stride, left arm forward, right arm back
        "r_knee": (-0.11, 0.745), "r_ankle": (-0.20, 0.96),
        "l_knee": (0.10, 0.73), "l_ankle": (0.17, 0.97),
        "l_elbow": (0.17, 0.34), "l_wrist": (0.27, 0.43),
        "r_elbow": (-0.16, 0.35), "r_wrist": (-0.22, 0.49),
    },
    "sitting": {  # side-on, facing image right: thighs horizontal, shins vertical
        "r_shoulder": (-0.05, 0.20), "l_shoulder": (0.05, 0.20),
        "r_hip": (-0.035, 0.52), "l_hip": (0.035, 0.52),
        "r_knee": (0.18, 0.52), "r_ankle": (0.18, 0.76),
        "l_knee": (0.23, 0.535), "l_ankle": (0.23, 0.775),
        "r_elbow": (-0.01, 0.37), "r_wrist": (0.11, 0.45),
        "l_elbow": (0.04, 0.37), "l_wrist": (0.16, 0.46),
    },
}
# Mirroring swaps the sides: joint i of the mirror image is the other side's joint, with x negated.
_MIRROR_PERM = np.array(
    [KEYPOINT_INDEX[n.replace("r_", "@").replace("l_", "r_").replace("@", "l_")] for n in KEYPOINT_NAMES]
)


def _pose_table(pose: str) -> np.ndarray:
    d = dict(_BASE)
    d.update(_POSE_DELTA[pose])
    return np.array([d[n] for n in KEYPOINT_NAMES], dtype=np.float64)


_UNIT = {p: _pose_table(p) for p in POSES}
_UNIT_MIRRORED = {p: (_UNIT[p] * np.array([-1.0, 1.0]))[_MIRROR_PERM] for p in POSES}


def unit_pose(pose: str, mirrored: bool = False) -> np.ndarray:
    """(18, 2) float64 keypoints of a library pose in unit coordinates (head top at y=0, feet near y=1)."""
    if pose not in _UNIT:
        raise ValueError(f"unknown pose {pose!r}; poses: {', '.join(POSES)}")
    return _UNIT_MIRRORED[pose] if mirrored else _UNIT[pose]


def place_pose(unit: np.ndarray, size: int, scale: float, shift: tuple[float, float]) -> tuple[np.ndarray, float]:
    """(pixel keypoints, scale used): a unit pose scaled (shrunk to fit), centred, shifted, kept inside the margins."""
    k = size / 64.0
    margin = 3.0 * k
    lo = np.minimum(unit.min(axis=0), [-HEAD_RADIUS, 0.0])
    extent = unit.max(axis=0) - lo
    scale = min(scale, (size - 2 * margin - 3 * k) / extent.max())  # margin for limb thickness
    bw, bh = extent * scale
    x0 = float(np.clip((size - bw) / 2 + shift[0], margin, size - margin - bw))
    y0 = float(np.clip((size - bh) / 2 + shift[1], margin, size - margin - bh))
    return (unit - lo) * scale + np.array([x0, y0]), scale


def pose_keypoints(pose: str, size: int = 64, mirrored: bool = False) -> np.ndarray:
    """(18, 2) float32 pixel keypoints of a library pose on a square canvas, centred at the mid scale, no jitter."""
    kp, _ = place_pose(unit_pose(pose, mirrored), size, 47.0 * size / 64.0, (0.0, 0.0))
    return kp.astype(np.float32)


# Pose presets: the library's poses, each also mirrored.
MIRRORED = " (mirrored)"
POSE_PRESETS: tuple[str, ...] = POSES + tuple(p + MIRRORED for p in POSES)


def default_widths(size: tuple[int, int]) -> tuple[int, int]:
    """(stickwidth, joint radius) scaled from OpenPose's 4 / 4 at 512 px."""
    ref = min(size)
    s = max(1, int(round(4 * ref / 512)))
    return s, s


def render_pose_map(
    keypoints: np.ndarray,
    size: tuple[int, int] = (64, 64),
    stickwidth: int | None = None,
) -> np.ndarray:
    """Render an OpenPose-style pose map (uint8 HxWx3 RGB) for one body.

    keypoints: (18, 2) float pixel coordinates (x, y), NaN where missing.
    size: (H, W) of the output map.
    Limbs are filled ellipses in colour*0.6 on black, joints are filled circles in their colour drawn on top.
    """
    h, w = int(size[0]), int(size[1])
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    if kp.shape[0] != len(KEYPOINT_NAMES):
        raise ValueError(f"expected 18 keypoints, got {kp.shape[0]}")
    sw_default, radius = default_widths((h, w))
    sw = sw_default if stickwidth is None else max(1, int(stickwidth))
    canvas = np.zeros((h, w, 3), dtype=np.uint8)
    valid = ~np.isnan(kp).any(axis=1)

    for i, (a, b) in enumerate(LIMB_PAIRS):
        if not (valid[a] and valid[b]):
            continue
        x0, y0 = kp[a]
        x1, y1 = kp[b]
        mx, my = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        length = math.hypot(x0 - x1, y0 - y1)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        polygon = cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), sw), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, tuple(int(c * 0.6) for c in COLOURS[i]))

    for i in range(len(KEYPOINT_NAMES)):
        if not valid[i]:
            continue
        x, y = kp[i]
        cv2.circle(canvas, (int(x), int(y)), radius, COLOURS[i], thickness=-1)
    return canvas


def preset_pose(name: str, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """(18, 2) float32 pixel keypoints of a preset on an (H, W) canvas, placed as the training figures are."""
    if name not in POSE_PRESETS:
        raise RequestError(f"Unknown pose preset {name!r}. Presets: {', '.join(POSE_PRESETS)}.")
    h, w = int(size[0]), int(size[1])
    if min(h, w) < 16:
        raise RequestError(f"A pose canvas needs at least 16 px a side (got {h}x{w}).")
    pose = name.removesuffix(MIRRORED)
    side = min(h, w)  # the figure fills a centred square, as in the square training images
    kp = pose_keypoints(pose, side, mirrored=pose != name)
    return (kp + np.array([(w - side) / 2, (h - side) / 2])).astype(np.float32)


def move_joint(keypoints: np.ndarray, joint_name: str, x: float | None, y: float | None) -> np.ndarray:
    """A copy of (18, 2) keypoints with one joint at pixel (x, y); NaN (or None) x or y removes the joint."""
    if joint_name not in KEYPOINT_INDEX:
        raise RequestError(f"Unknown joint {joint_name!r}. Joints: {', '.join(KEYPOINT_NAMES)}.")
    kp = np.array(keypoints, dtype=np.float32)
    if kp.shape != (len(KEYPOINT_NAMES), 2):
        raise RequestError(f"A pose needs {len(KEYPOINT_NAMES)} (x, y) keypoints (got shape {kp.shape}).")
    absent = x is None or y is None or math.isnan(x) or math.isnan(y)
    kp[KEYPOINT_INDEX[joint_name]] = np.nan if absent else (x, y)
    return kp

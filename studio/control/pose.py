"""OpenPose COCO-18 body keypoint format, ControlNet-style pose map rendering, pose presets and joint edits."""

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

# Pose presets: the poses of the training data's stick figures (studio.shapes.scenes.POSES), each also mirrored.
MIRRORED = " (mirrored)"
_TRAINING_POSES = ("standing", "arms up", "waving", "walking", "sitting")
POSE_PRESETS: tuple[str, ...] = _TRAINING_POSES + tuple(p + MIRRORED for p in _TRAINING_POSES)


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
    from studio.shapes.scenes import pose_keypoints  # scenes imports this module: import when called

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

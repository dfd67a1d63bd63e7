"""Control-map annotators (OpenCV): uint8 HxWx3 in, uint8 HxWx3 control map out (studio.control.maps dispatches to them).

Canny edges (thresholds 100/200 by default, as the original ControlNet demos), scribbles from a hand drawing,
and OpenPose-format pose maps from keypoints (presets, or a JSON file in the OpenPose format).
"""
from __future__ import annotations

import json

import cv2
import numpy as np

from studio.control.pose import KEYPOINT_NAMES, render_pose_map
from studio.errors import RequestError


def as_rgb(image) -> np.ndarray:
    """Any image-like input as uint8 HxWx3, or a clear error."""
    if image is None:
        raise RequestError("No image: upload or draw one first.")
    arr = np.asarray(image)
    if arr.dtype == object or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 8:
        raise RequestError(f"That is not an image (got an array of shape {arr.shape}). Upload a PNG or JPEG.")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 4:  # drawings: composite over white
        alpha = arr[..., 3:4].astype(np.float32) / 255
        arr = (arr[..., :3] * alpha + 255 * (1 - alpha)).round()
    return np.clip(arr[..., :3], 0, 255).astype(np.uint8)


def canny(image, low: int = 100, high: int = 200) -> np.ndarray:
    """White Canny edges on black."""
    if not 0 <= low < high <= 1000:
        raise RequestError(f"Canny thresholds need 0 <= low < high (got {low}, {high}).")
    gray = cv2.cvtColor(as_rgb(image), cv2.COLOR_RGB2GRAY)
    return np.repeat(cv2.Canny(gray, low, high)[..., None], 3, axis=2)


def scribble(image, threshold: int = 128, width: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """A hand drawing (dark strokes on a light ground, or light on dark) as white strokes on black.

    With `size` (H, W), the strokes are drawn at the drawing's resolution, then shrunk and made binary again, so a
    512 px sketch becomes the thin, crisp lines that edge ControlNets take at the image size.
    """
    gray = cv2.cvtColor(as_rgb(image), cv2.COLOR_RGB2GRAY)
    strokes = gray < threshold if np.median(gray) >= threshold else gray >= threshold
    width = width or max(1, round(min(gray.shape) / 128))
    mask = cv2.dilate(strokes.astype(np.uint8) * 255, np.ones((width, width), np.uint8)) if width > 1 else strokes.astype(np.uint8) * 255
    if size is not None and mask.shape != tuple(size):
        mask = ((cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_AREA) > 110) * 255).astype(np.uint8)
    return np.repeat(mask[..., None], 3, axis=2)


def pose(keypoints: np.ndarray, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """The OpenPose body map (18 keypoints, standard limb colours on black) for pixel keypoints (NaN = absent)."""
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.shape != (len(KEYPOINT_NAMES), 2):
        raise RequestError(f"A pose needs {len(KEYPOINT_NAMES)} (x, y) keypoints (got shape {kp.shape}).")
    return render_pose_map(kp, size)


def pose_to_json(keypoints: np.ndarray, size: tuple[int, int]) -> str:
    """OpenPose's JSON form: one person, pose_keypoints_2d = [x, y, confidence] * 18 (absent: 0, 0, 0)."""
    flat = []
    for x, y in np.asarray(keypoints, dtype=np.float64):
        flat += [0.0, 0.0, 0.0] if np.isnan(x) or np.isnan(y) else [round(float(x), 3), round(float(y), 3), 1.0]
    return json.dumps({"version": 1.3, "canvas_height": size[0], "canvas_width": size[1],
                       "people": [{"pose_keypoints_2d": flat}]})


def pose_from_json(text: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    """(keypoints (18, 2) with NaN for absent, canvas (H, W) if given) of the first person; clear errors otherwise."""
    try:
        data = json.loads(text)
        person = data["people"][0] if isinstance(data, dict) else data[0]["people"][0]
        flat = [float(v) for v in person["pose_keypoints_2d"]]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        expected = '{"people": [{"pose_keypoints_2d": [x, y, c, ...]}]}'
        raise RequestError(f"That is not an OpenPose pose file: expected {expected} ({type(e).__name__}: {e}).") from e
    if len(flat) < 3 * len(KEYPOINT_NAMES):
        raise RequestError(f"The pose has {len(flat) // 3} keypoints; the OpenPose body format has {len(KEYPOINT_NAMES)}.")
    kp = np.array(flat[: 3 * len(KEYPOINT_NAMES)], dtype=np.float32).reshape(-1, 3)
    points = np.where(kp[:, 2:3] > 0, kp[:, :2], np.nan).astype(np.float32)
    canvas = (int(data["canvas_height"]), int(data["canvas_width"])) if isinstance(data, dict) and "canvas_width" in data else None
    return points, canvas

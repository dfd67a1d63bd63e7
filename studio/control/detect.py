"""Single-person body pose from a photo: OpenCV's DNN module running the CMU OpenPose COCO model (Caffe or ONNX).

The network outputs (1, C, H', W') maps at 1/8 of its input size; channel k < 18 is the confidence heatmap of
keypoint k in COCO-18 order (studio.control.pose.KEYPOINT_NAMES). One person: each heatmap's maximum is the joint.
Input and decoding follow OpenCV's samples/dnn/openpose.py.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from studio.control.annotators import as_rgb
from studio.control.pose import KEYPOINT_NAMES
from studio.errors import RequestError

DEFAULT_OPENPOSE_DIR_NAME = "openpose"  # the model's folder inside the models folder
OPENPOSE_PROTOTXT = "pose_deploy_linevec.prototxt"
OPENPOSE_WEIGHTS = "pose_iter_440000.caffemodel"
OPENPOSE_SOURCE = ("the CMU OpenPose repository (github.com/CMU-Perceptual-Computing-Lab/openpose), folder "
                   "models/pose/coco/: the prototxt is in the repository, models/getModels.sh downloads the weights")
IN_HEIGHT = 368  # network input height; the width follows the image's aspect ratio
THRESHOLD = 0.1  # heatmap peaks below this are absent joints


def find_openpose_model(models_dir: Path) -> Path | None:
    """The pose model in <models_dir>/openpose/: an .onnx file, else the Caffe weights with the prototxt beside them."""
    folder = Path(models_dir) / DEFAULT_OPENPOSE_DIR_NAME
    onnx = sorted(folder.glob("*.onnx"))
    if onnx:
        return onnx[0]
    if (folder / OPENPOSE_WEIGHTS).is_file() and (folder / OPENPOSE_PROTOTXT).is_file():
        return folder / OPENPOSE_WEIGHTS
    return None


def _missing(folder: Path, names: list[str]) -> RequestError:
    caffe_note = "" if hasattr(cv2.dnn, "readNetFromCaffe") else (
        f" This OpenCV ({cv2.__version__}) reads only the .onnx form: OpenCV 5 removed the Caffe importer.")
    return RequestError(
        f"Pose detection needs the OpenPose COCO body model, and {' and '.join(names)} "
        f"{'is' if len(names) == 1 else 'are'} missing. Get {OPENPOSE_PROTOTXT} and {OPENPOSE_WEIGHTS} from "
        f"{OPENPOSE_SOURCE}; or use an .onnx export of that model. Put the files in {folder} "
        f"(the default place is <models folder>/{DEFAULT_OPENPOSE_DIR_NAME}/).{caffe_note}")


def _resolve(model_path: str | Path) -> tuple[Path, Path | None]:
    """(model file, Caffe prototxt or None for ONNX) from a folder or either file; clear errors for missing files."""
    path = Path(model_path)
    if path.is_dir() or not path.suffix:
        onnx = sorted(path.glob("*.onnx"))
        if onnx:
            return onnx[0], None
        weights, prototxt = path / OPENPOSE_WEIGHTS, path / OPENPOSE_PROTOTXT
    elif path.suffix == ".onnx":
        if not path.is_file():
            raise _missing(path.parent, [path.name])
        return path, None
    elif path.suffix in (".caffemodel", ".prototxt"):
        weights = path if path.suffix == ".caffemodel" else path.parent / OPENPOSE_WEIGHTS
        prototxt = path if path.suffix == ".prototxt" else path.parent / OPENPOSE_PROTOTXT
    else:
        raise RequestError(f"{path.name} is not a pose model: use an .onnx file, or {OPENPOSE_PROTOTXT} with "
                           f"{OPENPOSE_WEIGHTS}, or the folder that holds them.")
    missing = [p.name for p in (prototxt, weights) if not p.is_file()]
    if missing:
        raise _missing(weights.parent, missing)
    return weights, prototxt


def load_pose_net(model_path: str | Path) -> cv2.dnn.Net:
    """The OpenPose network from a folder, an .onnx file, or either file of the Caffe pair."""
    model, prototxt = _resolve(model_path)
    if prototxt is not None and not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise RequestError(
            f"This OpenCV ({cv2.__version__}) cannot read Caffe models (OpenCV 5 removed the Caffe importer). "
            f"Convert {model.name} to ONNX (same outputs) and put the .onnx file in {model.parent}, "
            "or install opencv-python 4.x.")
    try:
        return cv2.dnn.readNet(str(model)) if prototxt is None else cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    except cv2.error as e:
        reason = str(e).strip().splitlines()[-1][:300]
        raise RequestError(f"Could not load the pose model {model}: the file is corrupt or not an OpenPose model "
                           f"({reason}). Get it again from {OPENPOSE_SOURCE}.") from e


def keypoints_from_heatmaps(heatmaps: np.ndarray, image_size: tuple[int, int],
                            threshold: float = THRESHOLD) -> np.ndarray:
    """(18, 2) float32 keypoints in an (H, W) image's pixels from (1, C, H', W') or (C, H', W') heatmaps.

    Each joint is its heatmap's maximum (single person) at the centre of that heatmap cell; NaN below threshold.
    """
    maps = np.asarray(heatmaps, dtype=np.float32)
    maps = maps[0] if maps.ndim == 4 else maps
    n = len(KEYPOINT_NAMES)
    if maps.ndim != 3 or maps.shape[0] < n:
        raise RequestError(f"The pose model gave an output of shape {np.shape(heatmaps)}; expected heatmaps "
                           f"(1, C, H, W) with C >= {n}, channel k for keypoint k in the COCO-18 order.")
    h, w = image_size
    mh, mw = maps.shape[1:]
    kp = np.full((n, 2), np.nan, dtype=np.float32)
    for k in range(n):
        row, col = np.unravel_index(int(np.argmax(maps[k])), (mh, mw))
        if maps[k, row, col] >= threshold:
            kp[k] = ((col + 0.5) * w / mw, (row + 0.5) * h / mh)
    return kp


def detect_pose(image_rgb: np.ndarray, model_path: str | Path, in_height: int = IN_HEIGHT,
                threshold: float = THRESHOLD) -> np.ndarray:
    """(18, 2) float32 keypoints (x, y) of the one person in an RGB image, in its pixels; NaN where not found."""
    # 1. Check the image, load the network (clear errors for missing or corrupt files)
    image = as_rgb(image_rgb)
    net = load_pose_net(model_path)
    # 2. Blob as in OpenCV's openpose.py: BGR in [0, 1], in_height high, the width keeping the aspect ratio
    h, w = image.shape[:2]
    in_size = (max(1, round(in_height * w / h)), int(in_height))
    blob = cv2.dnn.blobFromImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), 1.0 / 255, in_size, (0, 0, 0),
                                 swapRB=False, crop=False)
    # 3. Run it and take each heatmap's peak
    try:
        net.setInput(blob)
        out = net.forward()
    except cv2.error as e:
        reason = str(e).strip().splitlines()[-1][:300]
        raise RequestError(f"The pose model failed on a {in_size[0]}x{in_size[1]} input ({reason}). "
                           "Is it the OpenPose COCO body model?") from e
    return keypoints_from_heatmaps(out, (h, w), threshold)

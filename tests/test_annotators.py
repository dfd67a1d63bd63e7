"""Control-map annotators on known images, the OpenPose JSON round trip, pose presets and pose detection."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from studio.control import annotators, detect, maps
from studio.control.pose import COLOURS, KEYPOINT_NAMES, MIRRORED, POSE_PRESETS, move_joint, preset_pose
from studio.errors import RequestError
from studio.shapes import scenes


def test_canny_finds_the_border_of_a_drawn_square():
    img = np.zeros((64, 64, 3), np.uint8)
    cv2.rectangle(img, (16, 16), (47, 47), (255, 0, 0), -1)
    edges = maps.build_map(maps.MapSource("canny", img), (64, 64))  # through the registry the ControlNet job uses
    assert edges.shape == (64, 64, 3) and edges.dtype == np.uint8
    on_border = edges[14:50, 14:50, 0] > 0
    assert edges[..., 0].sum() == edges[14:50, 14:50, 0].sum()  # nothing away from the square
    assert on_border[2:4, :].any() and on_border[-4:-2, :].any()  # top and bottom sides
    assert edges[32, 32, 0] == 0  # not inside


def test_scribble_turns_dark_strokes_on_white_into_white_on_black():
    img = np.full((64, 64, 3), 255, np.uint8)
    cv2.line(img, (5, 5), (58, 58), (0, 0, 0), 2)
    out = maps.build_map(maps.MapSource("scribble", img), (64, 64))
    assert out[32, 32, 0] == 255 and out[5, 58, 0] == 0


def test_pose_map_has_the_openpose_colour_at_each_joint():
    kp = scenes.make_scene(np.random.default_rng(3), kind="figure").figure.keypoints
    size = (256, 256)
    m = annotators.pose(kp * 4, size)
    x, y = (kp[KEYPOINT_NAMES.index("neck")] * 4).round().astype(int)
    assert tuple(m[y, x]) == tuple(COLOURS[KEYPOINT_NAMES.index("neck")])


def test_pose_json_round_trip_with_an_absent_joint():
    kp = np.random.default_rng(0).uniform(0, 64, size=(18, 2)).astype(np.float32)
    kp[KEYPOINT_NAMES.index("l_ear")] = np.nan
    back, canvas = annotators.pose_from_json(annotators.pose_to_json(kp, (64, 64)))
    assert canvas == (64, 64)
    assert np.allclose(back, kp, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("text, words", [
    ("{not json", "not an OpenPose pose file"),
    ('{"people": []}', "not an OpenPose pose file"),
    ('{"people": [{"pose_keypoints_2d": [1, 2, 1]}]}', "has 1 keypoints"),
])
def test_malformed_pose_json_is_a_clear_message(text, words):
    with pytest.raises(RequestError, match=words):
        annotators.pose_from_json(text)


@pytest.mark.parametrize("call, words", [
    (lambda: maps.get_annotator("depth"), "Known annotators: scribble, canny, pose, none"),
    (lambda: annotators.canny(None), "No image"),
    (lambda: annotators.canny(np.zeros((64, 64, 3), np.uint8), 200, 100), "low < high"),
    (lambda: annotators.canny(np.array("text")), "not an image"),
    (lambda: annotators.pose(np.zeros((5, 2))), "18"),
])
def test_bad_input_is_a_clear_message(call, words):
    with pytest.raises(RequestError, match=words):
        call()


def _shape_of(kp: np.ndarray) -> np.ndarray:
    """Keypoints without position and scale, to compare poses drawn at different places and sizes."""
    kp = kp - kp.mean(axis=0)
    return kp / np.linalg.norm(kp)


def test_presets_are_the_poses_the_training_figures_take_and_their_mirror_images():
    rng = np.random.default_rng(1)
    drawn = {scenes.make_scene(rng, kind="figure").figure.pose for _ in range(60)}
    assert set(POSE_PRESETS) == {p + m for p in drawn for m in ("", MIRRORED)}


@pytest.mark.parametrize("name", POSE_PRESETS)
@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_preset_gives_18_keypoints_inside_the_canvas(name, size):
    kp = preset_pose(name, size)
    assert kp.shape == (18, 2) and kp.dtype == np.float32
    assert np.isfinite(kp).all()  # the stick figures have every joint
    assert (kp >= 0).all() and (kp[:, 0] < size[1]).all() and (kp[:, 1] < size[0]).all()
    assert 30 <= np.ptp(kp[:, 1]) * 64 / min(size) <= 54  # as tall as a training figure


def test_presets_match_the_stick_figures_of_the_training_data():
    rng = np.random.default_rng(0)
    for _ in range(20):
        fig = scenes.make_scene(rng, kind="figure").figure
        gap = min(np.abs(_shape_of(preset_pose(fig.pose + m)) - _shape_of(fig.keypoints)).max() for m in ("", MIRRORED))
        assert gap < 0.05, fig.pose  # jitter only; two different poses differ by 0.09 or more


def test_mirrored_preset_swaps_the_sides():
    kp, mirrored = preset_pose("waving"), preset_pose("waving" + MIRRORED)
    r, l = KEYPOINT_NAMES.index("r_wrist"), KEYPOINT_NAMES.index("l_wrist")
    assert kp[r, 1] < kp[l, 1] and mirrored[l, 1] < mirrored[r, 1]  # the raised hand changes side
    assert np.allclose(mirrored[l, 0], 64 - kp[r, 0], atol=1.0)


@pytest.mark.parametrize("name", POSE_PRESETS)
def test_preset_pose_map_has_the_openpose_colour_at_each_joint(name):
    kp = preset_pose(name, (256, 256))
    m = annotators.pose(kp, (256, 256))
    for i, (x, y) in enumerate(kp):
        assert tuple(m[int(y), int(x)]) == COLOURS[i], KEYPOINT_NAMES[i]


def test_move_joint_moves_exactly_one_joint_in_a_copy():
    kp = preset_pose("standing")
    moved = move_joint(kp, "l_wrist", 10.0, 20.0)
    i = KEYPOINT_NAMES.index("l_wrist")
    assert tuple(moved[i]) == (10.0, 20.0)
    assert np.array_equal(np.delete(moved, i, axis=0), np.delete(kp, i, axis=0))
    assert np.array_equal(kp, preset_pose("standing"))  # the input is unchanged
    removed = move_joint(kp, "nose", float("nan"), 5.0)
    assert np.isnan(removed[0]).all() and np.isfinite(np.delete(removed, 0, axis=0)).all()


@pytest.mark.parametrize("call, words", [
    (lambda: move_joint(preset_pose("standing"), "left hand", 1, 2), "Unknown joint 'left hand'. Joints: nose, neck, "),
    (lambda: preset_pose("dancing"), "Unknown pose preset 'dancing'. Presets: standing, arms up"),
])
def test_bad_pose_edit_is_a_clear_message(call, words):
    with pytest.raises(RequestError, match=words):
        call()


def test_keypoints_from_heatmaps_takes_each_peak_and_drops_weak_ones():
    maps = np.zeros((1, 19, 8, 10), np.float32)
    for k in range(18):
        maps[0, k, k % 8, k % 10] = 0.5
    maps[0, 5, 1, 1] = 0.05  # below the 0.1 threshold
    maps[0, 5, 5, 5] = 0.0
    kp = detect.keypoints_from_heatmaps(maps, (80, 100))  # 10 px per heatmap cell
    assert np.isnan(kp[5]).all()
    for k in set(range(18)) - {5}:
        assert tuple(kp[k]) == ((k % 10 + 0.5) * 10, (k % 8 + 0.5) * 10)


# A tiny ONNX network written by hand (the onnx package is not a dependency): a 1x1 convolution that copies blob
# channel k % 3 (B, G, R) into heatmap k, then 8x8 average pooling, the stride of OpenPose's heatmaps.

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value) -> bytes:
    """One protobuf field: an int as a varint; str or bytes length-delimited."""
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    value = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _onnx_model(weights: np.ndarray) -> bytes:
    def tensor(name, arr):  # TensorProto: dims, data_type (1 = float), name, raw_data
        arr = np.asarray(arr, np.float32)
        return b"".join(_field(1, d) for d in arr.shape) + _field(2, 1) + _field(8, name) + _field(9, arr.tobytes())

    def value_info(name, dims):  # ValueInfoProto: name, TypeProto.tensor_type(elem_type, shape)
        shape = b"".join(_field(1, _field(2, d) if isinstance(d, str) else _field(1, d)) for d in dims)
        return _field(1, name) + _field(2, _field(1, _field(1, 1) + _field(2, shape)))

    def node(op, inputs, outputs, **ints):  # NodeProto with INTS (type 7) attributes
        attrs = b"".join(_field(5, _field(1, k) + b"".join(_field(8, v) for v in vals) + _field(20, 7))
                         for k, vals in ints.items())
        return b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs) + _field(4, op) + attrs

    graph = (_field(1, node("Conv", ["image", "W", "B"], ["c"]))
             + _field(1, node("AveragePool", ["c"], ["heatmaps"], kernel_shape=[8, 8], strides=[8, 8]))
             + _field(2, "tiny_openpose") + _field(5, tensor("W", weights)) + _field(5, tensor("B", np.zeros(19)))
             + _field(11, value_info("image", [1, 3, "h", "w"]))
             + _field(12, value_info("heatmaps", [1, 19, "y", "x"])))
    return _field(1, 7) + _field(8, _field(2, 11)) + _field(7, graph)  # ir_version 7, opset 11


def test_detect_pose_runs_an_onnx_model_and_scales_peaks_to_the_image(tmp_path):
    weights = np.zeros((19, 3, 1, 1), np.float32)
    for k in range(17):
        weights[k, k % 3] = 1.0  # l_ear (17) stays dark: absent
    (tmp_path / "openpose").mkdir()
    (tmp_path / "openpose" / "tiny.onnx").write_bytes(_onnx_model(weights))
    # one soft spot per colour channel of a 96x128 RGB photo; blob channel 0 is blue (BGR)
    spots = {0: (100, 30), 1: (30, 70), 2: (64, 20)}  # blob channel -> (x, y)
    img = np.zeros((96, 128, 3), np.uint8)
    for c, (x, y) in spots.items():
        spot = cv2.GaussianBlur(cv2.circle(np.zeros((96, 128), np.float32), (x, y), 5, 1.0, -1), (0, 0), 3)
        img[..., 2 - c] = np.round(spot / spot.max() * 255)

    model = detect.find_openpose_model(tmp_path)
    assert model == tmp_path / "openpose" / "tiny.onnx"
    kp = detect.detect_pose(img, model)
    assert kp.shape == (18, 2) and np.isnan(kp[17]).all()
    for k in range(17):
        assert np.abs(kp[k] - spots[k % 3]).max() <= 3, KEYPOINT_NAMES[k]
    smaller_input = detect.detect_pose(img, tmp_path / "openpose", in_height=184)  # the folder works too
    assert np.nanmax(np.abs(smaller_input - kp)) <= 4


def test_missing_pose_model_says_which_files_and_where(tmp_path):
    assert detect.find_openpose_model(tmp_path) is None
    img = np.zeros((64, 64, 3), np.uint8)
    folder = tmp_path / detect.DEFAULT_OPENPOSE_DIR_NAME
    with pytest.raises(RequestError) as e:
        detect.detect_pose(img, folder)
    for words in ("pose_deploy_linevec.prototxt and pose_iter_440000.caffemodel are missing", "CMU OpenPose",
                  "models/pose/coco/", f"Put the files in {folder}", "<models folder>/openpose/"):
        assert words in str(e.value)
    folder.mkdir()
    (folder / detect.OPENPOSE_WEIGHTS).write_bytes(b"weights")
    with pytest.raises(RequestError, match="pose_deploy_linevec.prototxt is missing"):
        detect.detect_pose(img, folder / detect.OPENPOSE_WEIGHTS)


def test_corrupt_pose_model_is_a_clear_message(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    (tmp_path / "pose.onnx").write_bytes(b"not a network")
    with pytest.raises(RequestError, match="corrupt or not an OpenPose model"):
        detect.detect_pose(img, tmp_path / "pose.onnx")
    caffe = tmp_path / detect.DEFAULT_OPENPOSE_DIR_NAME
    caffe.mkdir()
    (caffe / detect.OPENPOSE_PROTOTXT).write_text("not a prototxt {")
    (caffe / detect.OPENPOSE_WEIGHTS).write_bytes(b"not weights")
    assert detect.find_openpose_model(tmp_path) == caffe / detect.OPENPOSE_WEIGHTS
    words = "corrupt or not an OpenPose model" if hasattr(cv2.dnn, "readNetFromCaffe") else "cannot read Caffe models"
    with pytest.raises(RequestError, match=words):
        detect.detect_pose(img, caffe)

"""Control-map annotators on known images, and the OpenPose JSON round trip."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from studio.control import annotators
from studio.control.pose import COLOURS, KEYPOINT_NAMES
from studio.errors import RequestError
from studio.shapes import scenes


def test_canny_finds_the_border_of_a_drawn_square():
    img = np.zeros((64, 64, 3), np.uint8)
    cv2.rectangle(img, (16, 16), (47, 47), (255, 0, 0), -1)
    edges = annotators.get_annotator("canny")(img)
    assert edges.shape == (64, 64, 3) and edges.dtype == np.uint8
    on_border = edges[14:50, 14:50, 0] > 0
    assert edges[..., 0].sum() == edges[14:50, 14:50, 0].sum()  # nothing away from the square
    assert on_border[2:4, :].any() and on_border[-4:-2, :].any()  # top and bottom sides
    assert edges[32, 32, 0] == 0  # not inside


def test_scribble_turns_dark_strokes_on_white_into_white_on_black():
    img = np.full((64, 64, 3), 255, np.uint8)
    cv2.line(img, (5, 5), (58, 58), (0, 0, 0), 2)
    out = annotators.get_annotator("scribble")(img)
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
    (lambda: annotators.get_annotator("depth"), "Known annotators: canny, scribble, pose"),
    (lambda: annotators.canny(None), "No image"),
    (lambda: annotators.canny(np.zeros((64, 64, 3), np.uint8), 200, 100), "low < high"),
    (lambda: annotators.canny(np.array("text")), "not an image"),
    (lambda: annotators.pose(np.zeros((5, 2))), "18"),
])
def test_bad_input_is_a_clear_message(call, words):
    with pytest.raises(RequestError, match=words):
        call()

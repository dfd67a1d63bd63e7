"""The embedded ControlNets against their bars, on a small fixed sample of fresh scenes (the full run: studio.shapes.evaluate_controlnet)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from studio.config import ASSETS_CONTROLNETS, ASSETS_MODELS, DEFAULT_MODEL, StudioConfig
from studio.control import annotators
from studio.control.controlnet import ControlInput
from studio.sources import list_controlnets
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager
from studio.shapes import evaluate_controlnet as E
from studio.shapes import evaluator as ev
from studio.shapes import scenes

SUITE = ASSETS_MODELS / DEFAULT_MODEL
CANNY, POSE = ASSETS_CONTROLNETS / "shapes-v1-canny", ASSETS_CONTROLNETS / "shapes-v1-pose"


@pytest.fixture(scope="module")
def judge():
    return ev.load(SUITE / "evaluator")


def test_shipped_beside_the_suite_with_model_cards():
    assert {"shapes-v1-canny", "shapes-v1-pose"} <= set(list_controlnets(StudioConfig()))
    for folder in (CANNY, POSE):
        assert (folder / "diffusion_pytorch_model.safetensors").is_file() and (folder / "README.md").is_file()
        assert json.loads((folder / "eval.json").read_text())


def test_edges_follow_the_control_map_and_not_without_it():
    report = E.evaluate_edges(E.load_pipeline(SUITE, CANNY), 12)
    assert report["edge_f1_scale_1"] >= 0.75, report
    assert report["edge_f1_scale_1"] > report["edge_f1_scale_0"] + 0.25, report


def test_a_sketch_and_a_prompt_give_that_shape_there(judge):
    report = E.evaluate_sketch(E.load_pipeline(SUITE, CANNY), judge, 12)
    assert report["shape_and_colour"] >= 0.75 and report["centre_offset_px_median"] <= 8, report
    assert report["centre_offset_px_median"] < 0.6 * report["centre_offset_px_median_scale_0"], report  # the sketch places it


def test_a_pose_map_places_the_figure_and_its_limbs(judge):
    report = E.evaluate_pose(E.load_pipeline(SUITE, POSE), judge, 12)
    assert report["limb_coverage_scale_1"] >= 0.8 and report["shirt_colour_scale_1"] >= 0.75, report
    assert report["pose_match_scale_1"] > report["pose_match_scale_0"] + 0.3, report


def test_canny_and_pose_together_through_the_studio(tmp_path):
    """Two ControlNets at once, through the manager and the one loop: a figure's edges and its pose."""
    manager = ModelManager(StudioConfig(outputs_dir=tmp_path))
    scene = scenes.make_scene(np.random.default_rng(2026), kind="figure")
    edges, pose = annotators.canny(scene.image), annotators.pose(scene.figure.keypoints)
    req = Txt2ImgRequest(model=str(SUITE), prompt=f"a person in a {scene.figure.colour} shirt", guidance_scale=5.0, seed=3,
                         save=False, preview_every=0, controls=(ControlInput(str(POSE), pose), ControlInput(str(CANNY), edges, 0.8)))
    image = np.asarray(list(txt2img(manager, req))[-1].images[0])
    assert E.limb_coverage(image, scene.figure.keypoints) >= 0.8
    assert E.edge_f1(annotators.canny(image), edges) >= 0.6

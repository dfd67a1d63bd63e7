"""ControlNet in the one loop against diffusers' StableDiffusionControlNetPipeline; loading, checks, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from PIL import Image

from conftest import tiny_components
from studio.control.controlnet import ControlInput
from studio.control.maps import build_map, pose_for_size
from studio.sources import list_controlnets

LABELS = {"Sketch": "scribble", "Image → Canny edges": "canny", "Pose": "pose", "Ready-made map": "none"}
from studio.errors import ModelError, RequestError
from studio.events import Notice, Result
from studio.jobs import Txt2ImgRequest, txt2img
from studio.sampling.schedulers import SAMPLERS


def tiny_controlnet(seed: int, cross_dim: int = 32) -> ControlNetModel:
    """A ControlNet of the tiny UNet with its zero convolutions randomised, so that its residuals matter."""
    net = ControlNetModel.from_unet(tiny_components(cross_dim=cross_dim)["unet"], conditioning_embedding_out_channels=(16, 32))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            block.weight.copy_(torch.randn(block.weight.shape, generator=gen) * 0.3)
            block.bias.copy_(torch.randn(block.bias.shape, generator=gen) * 0.3)
    return net


@pytest.fixture(scope="session")
def controlnets(tiny_model_dir) -> dict[str, Path]:
    folder = tiny_model_dir.parent / "controlnet"
    nets = {"tiny-cn-a": tiny_controlnet(1), "tiny-cn-b": tiny_controlnet(2), "tiny-cn-wide": tiny_controlnet(3, cross_dim=48)}
    for name, net in nets.items():
        net.save_pretrained(folder / name)
    return {name: folder / name for name in nets}


def control_map(seed: int, size=(48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((*size, 3), np.uint8)
    image[rng.integers(0, size[0], 40), rng.integers(0, size[1], 40)] = 255
    return image


def run(manager, **kw) -> list:
    return list(txt2img(manager, Txt2ImgRequest(**{"model": "tiny-sd", "prompt": "a red circle", "save": False, **kw})))


@pytest.mark.parametrize("sampler", ["DDIM", "Euler a"])
def test_matches_stable_diffusion_controlnet_pipeline(manager, tiny_model_dir, controlnets, sampler):
    seed, steps = 7, 6
    maps = [control_map(1), control_map(2)]
    controls = (ControlInput("tiny-cn-a", maps[0], scale=0.7, start=0.2, end=0.9),
                ControlInput("tiny-cn-b", maps[1], scale=1.3))
    result = run(manager, sampler=sampler, steps=steps, seed=seed, negative_prompt="blue", guidance_scale=5.0,
                 batch_size=2, width=64, height=48, controls=controls)[-1]
    components = tiny_components()
    del components["requires_safety_checker"]
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_model_dir, controlnet=[ControlNetModel.from_pretrained(controlnets[n]) for n in ("tiny-cn-a", "tiny-cn-b")],
        safety_checker=None, requires_safety_checker=False)
    spec = SAMPLERS[sampler]
    pipe.scheduler = spec.cls.from_config(pipe.scheduler.config, **spec.kwargs)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(seed + k) for k in range(2)]
    expected = pipe("a red circle", [Image.fromarray(m) for m in maps], negative_prompt="blue", num_inference_steps=steps,
                    guidance_scale=5.0, height=48, width=64, num_images_per_prompt=2, generator=generators,
                    controlnet_conditioning_scale=[0.7, 1.3], control_guidance_start=[0.2, 0.0],
                    control_guidance_end=[0.9, 1.0], output_type="np").images
    assert result.pixels.shape == expected.shape
    assert np.abs(result.pixels - expected).max() < 1e-3
    # ...and the ControlNets do change the image.
    plain = run(manager, sampler=sampler, steps=steps, seed=seed, negative_prompt="blue", guidance_scale=5.0,
                batch_size=2, width=64, height=48)[-1]
    assert np.abs(plain.pixels - expected).max() > 0.05


def test_scale_zero_is_the_plain_image_and_settings_are_saved(manager, controlnets):
    plain = run(manager, steps=3, seed=3, width=64, height=48)[-1]
    off = run(manager, steps=3, seed=3, width=64, height=48, controls=(ControlInput("tiny-cn-a", control_map(1), 0.0, module="canny"),))[-1]
    assert np.array_equal(plain.pixels, off.pixels)
    assert 'ControlNet 0: "Module: canny, Model: tiny-cn-a, Weight: 0' in off.infotexts[0]


def test_listed_and_a_map_of_another_size_is_resized_and_said(manager, controlnets):
    assert {"tiny-cn-a", "tiny-cn-b"} <= set(list_controlnets(manager.config))
    events = run(manager, steps=2, width=64, height=48, controls=(ControlInput("tiny-cn-a", control_map(1, (100, 100))),))
    notices = [e.text for e in events if isinstance(e, Notice)]
    assert any("100x100" in n and "64x48" in n and "stretched" in n for n in notices)
    assert isinstance(events[-1], Result)


def test_controlnet_for_another_base_model_is_a_clear_error(manager, controlnets):
    with pytest.raises(ModelError, match="another base model.*text width 48 vs 32"):
        run(manager, steps=2, controls=(ControlInput("tiny-cn-wide", control_map(1, (32, 32))),))


@pytest.mark.parametrize("control, message", [
    (ControlInput("tiny-cn-a", None), "no control map"),
    (ControlInput("", np.zeros((32, 32, 3), np.uint8)), "no ControlNet model"),
    (ControlInput("tiny-cn-a", np.zeros((32, 32, 3), np.uint8), scale=3.0), "between 0 and 2"),
    (ControlInput("tiny-cn-a", np.zeros((32, 32, 3), np.uint8), start=0.8, end=0.2), "start < end"),
    (ControlInput("tiny-cn-a", np.zeros((2, 2, 3), np.uint8)), "not an image"),
])
def test_bad_control_input_says_what_is_wrong(manager, controlnets, control, message):
    with pytest.raises(RequestError, match=message):
        run(manager, steps=2, controls=(control,))


def test_missing_or_wrong_controlnet_paths(manager, controlnets, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        run(manager, steps=2, controls=(ControlInput("no-such-controlnet", control_map(1, (32, 32))),))
    (tmp_path / "notcn").mkdir()
    (tmp_path / "notcn" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(ModelError, match="not a ControlNet"):
        run(manager, steps=2, controls=(ControlInput(str(tmp_path / "notcn"), control_map(1, (32, 32))),))
    with pytest.raises(ModelError, match="offline"):
        run(manager, steps=2, controls=(ControlInput("lllyasviel/sd-controlnet-canny", control_map(1, (32, 32))),))


def test_page_makes_each_kind_of_map_at_the_image_size():
    from studio.control.pose import preset_pose
    from studio.control.annotators import pose_to_json
    from studio.ui.controlnet import unit_request

    def make_map(source, image, low, high, sketch, drawing, pose, ready, size):  # the page's values, through the job's registry
        unit = unit_request(True, "net", LABELS[source], image, low, high, sketch, drawing, pose, ready, 1.0, 0.0, 1.0)
        return build_map(unit.source, size)

    size = (64, 64)
    drawing = np.full((512, 512, 4), 0, np.uint8)  # a sketchpad layer: transparent, with black strokes
    drawing[100:110, 80:400, 3] = 255
    sketch = make_map("Sketch", None, 100, 200, {"composite": drawing}, None, "", None, size=size)
    assert sketch.shape == (64, 64, 3) and sketch[13, 10:50, 0].min() == 255 and sketch[40:, :, 0].max() == 0
    paper = np.full((256, 256, 3), 255, np.uint8)  # an uploaded drawing: dark lines on white; it wins over the sketchpad
    paper[200:206, 20:230] = 0
    uploaded = make_map("Sketch", None, 100, 200, {"composite": drawing}, paper, "", None, size=size)
    assert uploaded[50, 10:55, 0].min() == 255 and uploaded[13, :, 0].max() == 0
    photo = np.zeros((300, 300, 3), np.uint8)
    photo[75:225, 75:225] = 255
    edges = make_map("Image → Canny edges", photo, 100, 200, None, None, "", None, size=size)
    assert edges.shape == (64, 64, 3) and edges[..., 0].max() == 255 and edges[30:34, 30:34].max() == 0
    text = pose_to_json(preset_pose("waving", (128, 128)), (128, 128))  # drawn on a 128 px canvas
    pose = make_map("Pose", None, 100, 200, None, None, text, None, size=size)
    expected = make_map("Pose", None, 100, 200, None, None, pose_to_json(preset_pose("waving"), size), None, size=size)
    assert np.abs(pose.astype(int) - expected).mean() < 12  # the same figure, scaled from its canvas
    wide = pose_for_size(text, (64, 128))  # a square canvas on a wide image: centred, not stretched
    square = pose_for_size(text, (64, 64))
    assert np.allclose(wide, square + np.array([32, 0]), equal_nan=True)
    ready = np.full((64, 64, 3), 7, np.uint8)
    assert np.array_equal(make_map("Ready-made map", None, 100, 200, None, None, "", ready, size=size), ready)


@pytest.mark.parametrize("source, message", [
    ("Sketch", "draw something"), ("Image → Canny edges", "upload an image"), ("Pose", "not an OpenPose pose file"),
    ("Ready-made map", "drop a control map"),
])
def test_page_says_what_a_map_is_missing(source, message):
    from studio.ui.controlnet import unit_request

    empty_sketch = {"composite": np.zeros((512, 512, 4), np.uint8)}
    unit = unit_request(True, "net", LABELS[source], None, 100, 200, empty_sketch, None, "{broken", None, 1.0, 0.0, 1.0)
    with pytest.raises(RequestError, match=message):
        build_map(unit.source, (64, 64))


def test_bar_metrics_on_known_images():
    from studio.shapes import evaluate_controlnet as E
    from studio.shapes import scenes

    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = 200
    edges = E.annotators.canny(square)
    shifted = np.roll(edges, 2, axis=1)
    far = np.roll(edges, 8, axis=1)
    assert E.edge_f1(edges, edges) == 1.0 and E.edge_f1(shifted, edges) > 0.95 and E.edge_f1(far, edges) < 0.6
    rng = np.random.default_rng(0)
    a = scenes.make_scene(rng, kind="figure")
    assert E.limb_coverage(a.image, a.figure.keypoints) == 1.0  # a drawn figure covers its own skeleton
    blank = np.broadcast_to(a.image[:1, :1], a.image.shape).copy()
    assert E.limb_coverage(blank, a.figure.keypoints) == 0.0

"""DPS through the one loop: zeta = 0 is the plain sampler, DPS fits the measurement, and bad input is a message."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from studio.config import ASSETS_MODELS, DEFAULT_MODEL, StudioConfig
from studio.errors import RequestError
from studio.events import Notice, Result, Step
from studio.jobs import InverseRequest, inverse
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager
from studio.shapes import scenes

SUITE = str(ASSETS_MODELS / DEFAULT_MODEL)


def clean_image(seed: int = 0) -> np.ndarray:
    return scenes.make_scene(np.random.default_rng(seed), kind="single").image


def run(manager, **kw) -> tuple[list, Result]:
    events = list(inverse(manager, InverseRequest(**kw)))
    return events, events[-1]


def test_zeta_zero_gives_exactly_the_unguided_sample(manager):
    image = np.zeros((32, 32, 3), np.uint8)
    _, result = run(manager, image=image, model="tiny-sd", operator="super_resolution", factor=2, zeta=0.0, steps=3,
                    sampler="DDIM", seed=5, baseline=False, preview_every=0, strength=1.0)
    plain = list(txt2img(manager, Txt2ImgRequest(model="tiny-sd", prompt="", guidance_scale=1.0, steps=3, sampler="DDIM",
                                                 seed=5, save=False, preview_every=0)))[-1]
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))


def test_streams_residual_and_previews(manager):
    events, result = run(manager, image=np.zeros((32, 32, 3), np.uint8), model="tiny-sd", operator="gaussian_blur",
                         kernel_size=5, intensity=1.0, steps=4, sampler="DDIM", preview_every=2, baseline=True, strength=1.0)
    steps = [e for e in events if isinstance(e, Step)]
    assert len(steps) == 4 and all("residual_rms" in s.metrics for s in steps)
    assert all(s.phase == "dps" for s in steps)
    # Previews every 2 steps, but not on the last: the result follows it at once (as in every job).
    assert [s.i for s in steps if s.preview] == [2] and len(steps[1].preview) == 2  # x0-hat and current sample
    assert len(result.images) == 1 and set(result.named) == {"baseline", "measurement", "clean"}
    assert result.named["measurement"].size == result.images[0].size  # shown at full size
    assert "baseline_psnr" in result.metrics


@pytest.mark.parametrize("sampler", ["DDPM", "DDIM", "Euler a", "DPM++ 2M"])
def test_starting_half_way_runs_the_last_half_of_the_schedule(manager, sampler):
    events, result = run(manager, image=np.full((32, 32, 3), 90, np.uint8), model="tiny-sd", operator="inpainting", box=0.5,
                         steps=6, sampler=sampler, strength=0.5, baseline=False, preview_every=0)
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.i for s in steps] == [1, 2, 3] and all(s.n == 3 for s in steps)
    assert "start_psnr_hole" in result.metrics and result.metrics["strength"] == 0.5
    assert "DPS strength: 0.5" in Image.open(result.paths[0]).info["parameters"]


@pytest.mark.parametrize("mode, backward_calls", [("full", 3), ("fast", 0)])
def test_fast_dps_takes_no_gradient_through_the_unet(manager, mode, backward_calls):
    unet = manager.get("tiny-sd").pipe.unet
    with_grad = []
    handle = unet.register_forward_hook(lambda *_: with_grad.append(torch.is_grad_enabled()))
    try:
        events, result = run(manager, image=clean_image(1)[:32, :32], model="tiny-sd", operator="gaussian_blur",
                             kernel_size=5, intensity=1.0, steps=3, sampler="DDIM", baseline=False, preview_every=0,
                             strength=1.0, dps_mode=mode)
    finally:
        handle.remove()
    assert sum(with_grad) == backward_calls and len(with_grad) == 3
    assert all("residual_rms" in e.metrics for e in events if isinstance(e, Step))
    assert result.metrics["dps_residual_rms"] > 0


def test_the_loop_gives_fast_dps_the_x0_coefficient_of_its_step(manager):
    """For an epsilon model in VP space, d x0_hat / d x_t (the output held fixed) is 1 / sqrt(alpha_bar_t)."""
    from studio.inverse import dps

    seen = []
    original = dps.DPSCorrection.__call__

    def spy(self, state, next_latents):
        seen.append((state.t, state.x0_scale))
        return original(self, state, next_latents)

    dps.DPSCorrection.__call__ = spy
    try:
        run(manager, image=np.zeros((32, 32, 3), np.uint8), model="tiny-sd", operator="gaussian_blur", kernel_size=5,
            intensity=1.0, steps=3, sampler="DDIM", baseline=False, preview_every=0, strength=1.0, dps_mode="fast")
    finally:
        dps.DPSCorrection.__call__ = original
    alphas = manager.get("tiny-sd").pipe.scheduler.alphas_cumprod
    assert len(seen) == 3
    for t, scale in seen:
        assert torch.allclose(scale, alphas[int(t)].rsqrt(), rtol=1e-5)


@pytest.fixture(scope="module")
def suite_manager(tmp_path_factory):
    return ModelManager(StudioConfig(outputs_dir=tmp_path_factory.mktemp("o"), models_dir=tmp_path_factory.mktemp("m")))


def test_dps_residual_is_far_below_the_unguided_one(suite_manager):
    kw = dict(image=clean_image(3), model=SUITE, operator="super_resolution", factor=4, steps=20, seed=1, baseline=False,
              preview_every=0, batch_size=2)
    _, guided = run(suite_manager, **kw)
    _, free = run(suite_manager, zeta=0.0, strength=1.0, **kw)  # an unguided sample
    _, started = run(suite_manager, zeta=0.0, **kw)  # the same start from the measurement, without DPS's corrections
    assert guided.metrics["dps_residual_rms"] < 0.5 * free.metrics["dps_residual_rms"], (guided.metrics, free.metrics)
    assert guided.metrics["dps_residual_rms"] < 0.9 * started.metrics["dps_residual_rms"], (guided.metrics, started.metrics)
    assert guided.metrics["dps_residual_rms"] < 1.5 * 0.05  # near the noise level (sigma 0.05)


def test_fast_dps_with_the_suites_tiny_decoder_also_fits_the_measurement(suite_manager):
    image = scenes.render_batch(77_000, 1)[0][0]  # the DPS evaluation's first scene
    kw = dict(image=image, model=SUITE, operator="super_resolution", factor=4, steps=30, seed=0, baseline=False,
              preview_every=0)
    _, fast = run(suite_manager, dps_mode="fast", tiny_decoder=True, **kw)
    _, started = run(suite_manager, zeta=0.0, **kw)  # the same start without corrections
    assert fast.metrics["dps_residual_rms"] < 0.9 * started.metrics["dps_residual_rms"], (fast.metrics, started.metrics)
    assert fast.metrics["dps_psnr"] > started.metrics["dps_psnr"] + 1, (fast.metrics, started.metrics)


def test_tiny_decoder_offset_fits_the_full_decoders_image():
    """The residual is taken on the tiny decoder's image plus its offset to the full decoder, measured every
    `offset_every` steps and held between; the gradient stays the tiny decoder's."""
    from studio.inverse.dps import DPSCorrection
    from studio.inverse.operators import SuperResolution

    tiny = lambda z: torch.tanh(z[:, :3])  # noqa: E731
    full = lambda z: torch.tanh(z[:, :3]) * 0.9 + 0.05 * z[:, 1:4]  # noqa: E731
    op = SuperResolution(2)
    x0, later = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    y = op.forward(full(torch.randn(1, 4, 8, 8)))
    c = DPSCorrection(op, y, tiny, zeta=1.0, fast=True, full_decode=full, offset_every=3)
    assert torch.allclose(c.residual(x0, 0), y - op.forward(full(x0)), atol=1e-6)
    held = c.residual(later, 1)  # not refreshed: the offset of x0
    assert torch.allclose(held, y - op.forward(tiny(later) + full(x0) - tiny(x0)), atol=1e-6)
    assert torch.allclose(c.residual(later, 3), y - op.forward(full(later)), atol=1e-6)
    z = later.clone().requires_grad_(True)
    grad = torch.autograd.grad(c.residual(z, 4).pow(2).sum(), z)[0]
    z2 = later.clone().requires_grad_(True)
    expected = torch.autograd.grad((y - op.forward(tiny(z2) + (full(later) - tiny(later)))).pow(2).sum(), z2)[0]
    assert torch.allclose(grad, expected, atol=1e-6)
    plain = DPSCorrection(op, y, tiny, zeta=1.0, fast=True)
    assert torch.allclose(plain.residual(x0), y - op.forward(tiny(x0)))


@pytest.mark.parametrize("changes, words", [
    ({"sigma": 2.0}, "sigma must be between 0 and 1"),
    ({"strength": 0.0}, "strength must be above 0"),
    ({"hole": np.zeros((32, 32), np.uint8)}, None),  # an empty painted mask falls back to the box: not an error
    ({"box": 0.0}, "no hole"),
    ({"box": 1.0}, "Box size must be between 0 and 0.9"),  # the registry's range, for scripts and the CLI too
    ({"random_missing": 1.0}, "Random pixels missing must be between"),
    ({"image": "not an image"}, "not an image"),
    ({"operator": "deconvolution"}, "Unknown operator"),
    ({"dps_mode": "quick"}, "DPS mode must be full or fast"),
    ({"tiny_decoder": True}, "has no tiny decoder"),
])
def test_bad_input_is_a_clear_message(manager, changes, words):
    kw = dict(image=np.zeros((32, 32, 3), np.uint8), model="tiny-sd", steps=1, sampler="DDIM", baseline=False, preview_every=0)
    kw.update(changes)
    if words is None:
        run(manager, **kw)
        return
    with pytest.raises(RequestError, match=words):
        run(manager, **kw)


def test_mask_and_image_of_another_size_are_resized_and_said(manager):
    hole = np.zeros((100, 100), np.uint8)
    hole[30:70, 30:70] = 1
    events, _ = run(manager, image=np.zeros((50, 50, 3), np.uint8), hole=hole, model="tiny-sd", steps=1, sampler="DDIM",
                    baseline=False, preview_every=0)
    notes = [e.text for e in events if isinstance(e, Notice)]
    assert any("mask is 100x100; resized to 32x32" in n for n in notes) and any("image is 50x50" in n for n in notes)


def test_results_are_saved_with_their_settings(manager, config):
    from studio import metadata

    _, result = run(manager, image=np.zeros((32, 32, 3), np.uint8), model="tiny-sd", operator="gaussian_blur",
                    kernel_size=5, intensity=1.0, steps=2, sampler="DDIM", preview_every=0, baseline=True, seed=3)
    assert len(result.paths) == 2 and all(p.parent == config.outputs_dir for p in result.paths)
    params = metadata.read_png_parameters(result.paths[0])
    assert params.seed == 3 and params.extra["Inverse problem"] == "gaussian_blur" and params.extra["Result"] == "DPS"

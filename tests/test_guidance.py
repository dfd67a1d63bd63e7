"""Classifier guidance, text guidance and the CFG interval: formulas, signs on the shipped suite, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.config import ASSETS_MODELS, DEFAULT_MODEL, StudioConfig
from studio.errors import RequestError
from studio.events import Result
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager
from studio.sampling.guidance import GradientGuidance
from studio.sampling.loop import LoopState
from studio.sampling.schedulers import make_scheduler
from studio.shapes import evaluator as ev
from studio.shapes import attributes

SUITE = str(ASSETS_MODELS / DEFAULT_MODEL)


@pytest.mark.parametrize("sampler", ["DDIM", "Euler"])
def test_gradient_guidance_matches_the_closed_form(tiny_model_dir, sampler):
    """log p = -|x_vp - m|^2 / 2 has gradient m - x_vp: eps must move by -sqrt(1 - a) * s * (m - x_vp)."""
    import json

    base = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())
    scheduler, space = make_scheduler(sampler, base)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    if hasattr(scheduler, "scale_model_input"):
        scheduler.scale_model_input(torch.zeros(1), scheduler.timesteps[0])  # sets the step index as the loop does
        scheduler._step_index = 3 if space == "ve" else None
    torch.manual_seed(0)
    latents, eps, m = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    hook = GradientGuidance(lambda x, t_, a, e: -0.5 * ((x - m) ** 2).flatten(1).sum(1), 3.0, scheduler, space)
    out = hook(LoopState(i=4, n=10, t=t, latents=latents, model_output=eps))
    # The VP view, written out here rather than taken from vp_view: x_vp = x / sqrt(1 + sigma^2), a = 1 / (1 + sigma^2)
    # in k-diffusion space; x itself and alphas_cumprod[t] in DDPM space.
    if space == "ve":
        sigma = scheduler.sigmas[3]
        a, x_vp = 1 / (1 + sigma**2), latents / (1 + sigma**2).sqrt()
    else:
        a, x_vp = scheduler.alphas_cumprod[int(t)], latents
    assert torch.allclose(out, eps - (1 - a).sqrt() * 3.0 * (m - x_vp), atol=1e-5)


def test_cfg_interval_skips_the_unconditional_branch_outside_it(manager):
    unet = manager.get("tiny-sd").pipe.unet
    batches = []
    handle = unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        list(txt2img(manager, Txt2ImgRequest(model="tiny-sd", prompt="a red star", steps=4, guidance_scale=5,
                                             cfg_start=0.0, cfg_end=0.5, save=False, sampler="DDIM")))
    finally:
        handle.remove()
    assert batches == [2, 2, 1, 1]


@pytest.mark.parametrize("changes, words", [
    ({"classifier_scale": 3}, "noisy_classifier"),
    ({"text_guidance_scale": 3}, "--clip-model"),
    ({"cfg_start": 0.6, "cfg_end": 0.4}, "CFG interval"),
    ({"classifier_scale": 500}, "Classifier guidance scale must be between"),
])
def test_bad_guidance_settings_are_clear_messages(manager, changes, words):
    with pytest.raises(RequestError, match=words):
        list(txt2img(manager, Txt2ImgRequest(model="tiny-sd", prompt="a red star", steps=2, save=False, **changes)))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    manager = ModelManager(StudioConfig(outputs_dir=tmp_path_factory.mktemp("out"), models_dir=tmp_path_factory.mktemp("m")))
    return manager, manager.get(SUITE).judges.image_logits  # the suite ships judges (judges.json)


def target_probability(suite, **changes) -> np.ndarray:
    manager, judge = suite
    req = Txt2ImgRequest(model=SUITE, seed=11, batch_size=6, steps=20, preview_every=0, save=False, **changes)
    result = [e for e in txt2img(manager, req) if isinstance(e, Result)][0]
    x = ev.images_to_tensor(np.stack([np.asarray(im) for im in result.images]))
    with torch.no_grad():
        return torch.softmax(judge(x)["shape"], 1)[:, attributes.SHAPES.index("star")].numpy()


def test_classifier_guidance_steers_an_unconditional_sample_toward_the_target(suite):
    unguided = target_probability(suite, prompt="", guidance_scale=1.0)
    guided = target_probability(suite, prompt="", guidance_scale=1.0, classifier_scale=4.0, classifier_target="star")
    assert guided.mean() > unguided.mean() + 0.2, (guided, unguided)


def test_unknown_classifier_target_is_a_clear_message(suite):
    with pytest.raises(RequestError, match="needs a target it knows"):
        target_probability(suite, prompt="", classifier_scale=4.0, classifier_target="a spaceship")


def test_text_guidance_raises_the_judged_probability_of_the_prompt(suite):
    """Without CFG the suite often draws two where the prompt says three: text guidance (the evaluator on x0-hat) helps."""
    manager, judge = suite

    def p_three(scale: float) -> float:
        req = Txt2ImgRequest(model=SUITE, prompt="three pink stars", seed=21, batch_size=12, steps=20, guidance_scale=1.0,
                             sampler="DPM++ 2M", text_guidance_scale=scale, preview_every=0, save=False)
        result = [e for e in txt2img(manager, req) if isinstance(e, Result)][0]
        with torch.no_grad():
            logits = judge(ev.images_to_tensor(np.stack([np.asarray(im) for im in result.images])))
        return float(torch.softmax(logits["count"], 1)[:, 2].mean())

    plain, guided = p_three(0.0), p_three(1.0)
    assert guided > plain + 0.05, (guided, plain)


def test_emptied_boxes_mean_defaults_in_the_generate_tab():
    """gr.Number boxes emptied by the user arrive as None: the request uses the field's default, not a TypeError."""
    from studio.ui.form import FIELDS, request_from_form

    values = {"model": "tiny-sd", "prompt": "x", "seed": None, "width": None, "height": None, "steps": 3.0}
    req = request_from_form({k: values.get(k, getattr(Txt2ImgRequest(), k)) for k in FIELDS})
    assert (req.seed, req.width, req.height, req.steps) == (-1, 0, 0, 3) and isinstance(req.steps, int)

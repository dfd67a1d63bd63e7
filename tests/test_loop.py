"""The one loop against diffusers' own StableDiffusionPipeline, streaming, Stop and seeds."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from studio.errors import Cancelled
from studio.events import Result, Step
from studio.jobs import Txt2ImgRequest, txt2img
from studio.sampling.loop import cfg_combine
from studio.sampling.schedulers import SAMPLERS


def run(manager, **kw) -> tuple[list, Result]:
    events = list(txt2img(manager, Txt2ImgRequest(**{"model": "tiny-sd", "prompt": "a red circle", "save": False, **kw})))
    assert isinstance(events[-1], Result)
    return events, events[-1]


@pytest.mark.parametrize("sampler", ["DDIM", "Euler", "Euler a", "DPM++ 2M Karras", "UniPC", "Heun"])
def test_final_image_matches_stable_diffusion_pipeline(manager, tiny_model_dir, sampler):
    seed, steps = 1234, 6
    _, result = run(manager, sampler=sampler, steps=steps, seed=seed, negative_prompt="blue", guidance_scale=6.0,
                    batch_size=2, width=64, height=48)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None, requires_safety_checker=False)
    spec = SAMPLERS[sampler]
    pipe.scheduler = spec.cls.from_config(pipe.scheduler.config, **spec.kwargs)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(seed + k) for k in range(2)]
    expected = pipe("a red circle", negative_prompt="blue", num_inference_steps=steps, guidance_scale=6.0,
                    height=48, width=64, num_images_per_prompt=2, generator=generators, output_type="np").images
    assert result.pixels.shape == expected.shape == (2, 48, 64, 3)
    assert np.abs(result.pixels - expected).max() < 1e-3


def test_streams_one_step_per_timestep_and_previews_every_n(manager):
    events, result = run(manager, steps=7, preview_every=3, seed=1)
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.i for s in steps] == list(range(1, 8)) and all(s.n == 7 for s in steps)
    assert [s.i for s in steps if s.preview] == [3, 6]
    assert steps[2].preview[0].size == result.images[0].size
    # The rate is the steps done over the time taken so far, and time only moves forward.
    assert all(abs(s.metrics["it_per_s"] * s.metrics["elapsed_s"] - s.i) < 1e-6 for s in steps)
    assert all(a.metrics["elapsed_s"] < b.metrics["elapsed_s"] for a, b in zip(steps, steps[1:]))


def test_stop_ends_within_one_step(manager):
    seen = []
    with pytest.raises(Cancelled):
        for event in txt2img(manager, Txt2ImgRequest(model="tiny-sd", prompt="x", steps=20, save=False)):
            seen.append(event)
            if isinstance(event, Step) and event.i == 3:
                manager.request_stop()
    assert [e.i for e in seen if isinstance(e, Step)] == [1, 2, 3]
    # The next job is not stopped by the old request.
    _, result = run(manager, steps=2)
    assert len(result.images) == 1


def test_seed_reproduces_and_batch_uses_consecutive_seeds(manager):
    _, a = run(manager, seed=42, steps=3)
    _, b = run(manager, seed=42, steps=3)
    _, batch = run(manager, seed=41, steps=3, batch_size=2)
    _, c = run(manager, seed=43, steps=3)
    assert np.array_equal(a.pixels, b.pixels)
    assert batch.seeds == [41, 42]
    assert np.abs(batch.pixels[1] - a.pixels[0]).max() < 1e-5
    assert np.abs(c.pixels - a.pixels).max() > 1e-3


def test_random_seed_is_reported(manager):
    _, result = run(manager, seed=-1, steps=2)
    assert 0 <= result.seeds[0] < 2**32
    assert f"Seed: {result.seeds[0]}," in result.infotexts[0]


def test_cfg_rescale_matches_diffusers_formula():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    torch.manual_seed(0)
    uncond, text = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    guided = uncond + 7.5 * (text - uncond)
    expected = rescale_noise_cfg(guided, text, guidance_rescale=0.7)
    assert torch.allclose(cfg_combine(uncond, text, 7.5, 0.7), expected, atol=1e-6)


def test_heun_reports_sampler_steps_not_model_evaluations(manager):
    events, _ = run(manager, sampler="Heun", steps=4, preview_every=0)
    steps = [e for e in events if isinstance(e, Step)]
    assert len(steps) == 7  # 2 * 4 - 1 model evaluations
    assert all(s.n == 4 for s in steps) and steps[-1].i == 4 and [s.i for s in steps] == sorted(s.i for s in steps)


def test_noise_to_uses_each_schedulers_own_rule():
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from studio.sampling.loop import noise_to

    x, n = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 2.0)
    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(10)
    flow.set_begin_index(5)
    sigma = flow.sigmas[5]
    assert torch.allclose(noise_to(flow, x, n, flow.timesteps[5:6]), (1 - sigma) * x + sigma * n)
    ddpm = DDPMScheduler()
    t = torch.tensor([500])
    a = ddpm.alphas_cumprod[500]
    assert torch.allclose(noise_to(ddpm, x, n, t), a.sqrt() * x + (1 - a).sqrt() * n)


def test_fresh_scheduler_is_a_new_unused_one_each_time():
    from diffusers import DPMSolverMultistepScheduler

    from studio.sampling.schedulers import fresh

    config = dict(DPMSolverMultistepScheduler(beta_schedule="scaled_linear").config)
    first = fresh(DPMSolverMultistepScheduler, config, {"algorithm_type": "dpmsolver++"})
    first.set_timesteps(5)
    first.step(torch.zeros(1, 4, 2, 2), first.timesteps[0], torch.ones(1, 4, 2, 2))
    second = fresh(DPMSolverMultistepScheduler, config, {"algorithm_type": "dpmsolver++"})
    built = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    assert second is not first and second.step_index is None and second.config == built.config
    assert torch.equal(second.sigmas, built.sigmas) and torch.equal(second.timesteps, built.timesteps)

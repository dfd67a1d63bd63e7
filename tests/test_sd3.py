"""SD3-class models through the one loop against diffusers' StableDiffusion3Pipeline, flow samplers and the model's own
scheduler (the default sampler), and what the studio refuses for them (noise samplers, ControlNet, odd sizes)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

from studio.config import Limits, StudioConfig
from studio.errors import RequestError
from studio.events import Result
from studio.jobs import Txt2ImgRequest, params_to_request, txt2img, validate
from studio.jobs.txt2img import image_size
from studio.manager import ModelManager
from studio.metadata import parse_parameters
from studio.sampling.schedulers import MODEL_DEFAULT, SAMPLERS, sampler_label

PROMPT, NEGATIVE = "a red circle", "blue"


def manager_for(models_dir, tmp_path) -> ModelManager:
    config = StudioConfig(models_dir=models_dir, outputs_dir=tmp_path / "outputs", assets_dir=tmp_path / "no-assets")
    return ModelManager(config)


@pytest.fixture()
def sd3(tiny_sd3_dir, tmp_path) -> ModelManager:
    return manager_for(tiny_sd3_dir.parent, tmp_path)


def run(manager, model: str, **kw) -> Result:
    events = list(txt2img(manager, Txt2ImgRequest(**{"model": model, "prompt": PROMPT, "save": False, **kw})))
    assert isinstance(events[-1], Result)
    return events[-1]


def pipeline_images(pipe, seed: int, steps: int, **kw) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(seed + k) for k in range(2)]
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=6.0, height=48, width=64,
                num_images_per_prompt=2, generator=generators, output_type="np", **kw).images


@pytest.mark.parametrize("sampler", ["Flow Match Euler", "Flow Match Heun", "Flow Match Euler Uniform"])
def test_final_image_matches_stable_diffusion_3_pipeline(sd3, tiny_sd3_dir, sampler):
    seed, steps = 1234, 4
    result = run(sd3, "tiny-sd3", sampler=sampler, steps=steps, seed=seed, negative_prompt=NEGATIVE, guidance_scale=6.0,
                 batch_size=2, width=64, height=48)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir)
    assert pipe.scheduler.config.shift == 3.0  # the folder's shift, kept by every flow sampler built on its config
    pipe.scheduler = SAMPLERS[sampler].cls.from_config(pipe.scheduler.config)
    spacing = SAMPLERS[sampler].sigmas  # the pipeline takes custom sigmas too (as Flux's passes its uniform ones)
    expected = pipeline_images(pipe, seed, steps, **({"sigmas": spacing(steps)} if spacing else {}))
    assert result.pixels.shape == expected.shape == (2, 48, 64, 3)
    assert np.abs(result.pixels - expected).max() < 1e-3


def test_uniform_flow_spacing_uses_every_evaluation():
    """The scheduler's own spacing ends at sigma 1/1000, so its last step barely moves: with 2 steps the second
    is wasted. The uniform spacing moves 1/n per evaluation."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from studio.sampling.schedulers import set_steps

    own, uniform = FlowMatchEulerDiscreteScheduler(shift=1.0), FlowMatchEulerDiscreteScheduler(shift=1.0)
    set_steps(own, "Flow Match Euler", 2, "cpu")
    set_steps(uniform, "Flow Match Euler Uniform", 2, "cpu")
    assert own.sigmas.tolist() == pytest.approx([1.0, 0.001, 0.0])
    assert uniform.sigmas.tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_no_sampler_means_the_models_own_scheduler_at_its_native_size(sd3):
    assert Txt2ImgRequest().sampler == MODEL_DEFAULT
    own = run(sd3, "tiny-sd3", steps=2, seed=3)
    named = run(sd3, "tiny-sd3", sampler="Flow Match Euler", steps=2, seed=3)
    assert np.array_equal(own.pixels, named.pixels)
    assert own.pixels.shape == (1, 32, 32, 3)  # transformer sample_size 16 x VAE factor 2
    assert "Sampler: Flow Match Euler," in own.infotexts[0]  # named by the registry when the class matches


@pytest.mark.parametrize("model, sampler, fits, not_fits", [
    ("tiny-sd3", "Euler", "Flow Match Euler, Flow Match Heun", "DDIM"),
    ("tiny-sd", "Flow Match Heun", "DDIM", "Flow Match"),
])
def test_sampler_of_the_other_kind_lists_the_ones_that_fit(sd3, manager, model, sampler, fits, not_fits):
    with pytest.raises(RequestError) as e:
        run(sd3 if model == "tiny-sd3" else manager, model, sampler=sampler, steps=1)
    assert f"Sampler {sampler!r} does not fit" in str(e.value) and fits in str(e.value)
    assert not_fits not in str(e.value).split("Samplers for this model:")[1]


def test_controlnet_and_gradient_guidance_are_refused_for_sd3(sd3):
    from studio.control.controlnet import ControlInput

    control = ControlInput("some-controlnet", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(RequestError, match="ControlNet works with UNet models.*tiny-sd3 is an SD3-class transformer"):
        run(sd3, "tiny-sd3", steps=1, controls=(control,))
    with pytest.raises(RequestError, match="flow-matching model"):
        run(sd3, "tiny-sd3", steps=1, classifier_scale=2.0)


def test_sides_must_fit_the_vae_and_the_patches(sd3):
    model = sd3.get("tiny-sd3")
    assert model.size_multiple == 4  # VAE factor 2 x patch size 2
    assert image_size(model, Txt2ImgRequest(width=64, height=48)) == (48, 64)
    with pytest.raises(RequestError, match="multiples of 4 pixels; got 43x48. Try 44x48"):
        image_size(model, Txt2ImgRequest(width=43, height=48))


# ---------------------------------------------------------------- the model's own scheduler on UNet folders
def with_scheduler(tiny_model_dir, folder, class_name: str):
    """A copy of the tiny SD folder whose scheduler_config.json names another scheduler class."""
    shutil.copytree(tiny_model_dir, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "_class_name": class_name}))
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({**index, "scheduler": ["diffusers", class_name]}))
    return folder


@pytest.mark.parametrize("class_name", ["PNDMScheduler", "LMSDiscreteScheduler", "DPMSolverSinglestepScheduler",
                                        "DEISMultistepScheduler"])
def test_own_scheduler_outside_the_registry_matches_the_pipeline_and_round_trips(tiny_model_dir, tmp_path, class_name):
    folder = with_scheduler(tiny_model_dir, tmp_path / "models" / "own", class_name)
    seed, steps = 7, 4
    result = run(manager_for(folder.parent, tmp_path), "own", steps=steps, seed=seed, negative_prompt=NEGATIVE,
                 guidance_scale=6.0, batch_size=2, width=64, height=48)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert type(pipe.scheduler).__name__ == class_name
    assert np.abs(result.pixels - pipeline_images(pipe, seed, steps)).max() < 1e-3
    # Saved under its class name, which reads back as "the model's own scheduler".
    params = parse_parameters(result.infotexts[0])
    assert params.sampler == class_name
    assert params_to_request(params).sampler == MODEL_DEFAULT


def test_own_scheduler_the_studio_cannot_run_is_named(tiny_model_dir, tmp_path):
    folder = with_scheduler(tiny_model_dir, tmp_path / "models" / "odd", "KDPM2DiscreteScheduler")
    with pytest.raises(RequestError, match="own scheduler, KDPM2DiscreteScheduler, is not one.*choose a sampler: DDIM"):
        run(manager_for(folder.parent, tmp_path), "odd", steps=1)


def test_own_scheduler_is_named_by_the_most_specific_registry_entry():
    from diffusers import DPMSolverMultistepScheduler

    assert sampler_label(MODEL_DEFAULT, DPMSolverMultistepScheduler(use_karras_sigmas=True)) == "DPM++ 2M Karras"
    assert sampler_label(MODEL_DEFAULT, DPMSolverMultistepScheduler()) == "DPM++ 2M"
    assert sampler_label("Euler a", DPMSolverMultistepScheduler()) == "Euler a"  # a named sampler is saved as named


def test_request_page_and_cli_default_to_the_models_own_scheduler(tmp_path):
    from studio import cli
    from studio.ui.form import SAMPLER_CHOICES

    assert validate(Txt2ImgRequest(sampler=MODEL_DEFAULT), Limits())[0].sampler == MODEL_DEFAULT
    assert SAMPLER_CHOICES[0] == ("Model default", MODEL_DEFAULT)
    assert [value for _, value in SAMPLER_CHOICES[1:]] == list(SAMPLERS)
    args = cli.build_parser().parse_args(["generate", "--prompt", "x"])
    assert cli.build_request(args, tmp_path).sampler == MODEL_DEFAULT

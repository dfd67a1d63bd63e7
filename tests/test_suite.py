"""The shipped embedded suite: loads like any diffusers model, generates, and follows prompts (judged by its evaluator)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline

from studio.config import ASSETS_MODELS, DEFAULT_MODEL, StudioConfig
from studio.events import Result
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager
from studio.shapes import evaluate, scenes
from studio.shapes.prompts import parse_prompt
from studio.shapes import evaluator as ev

SUITE = ASSETS_MODELS / DEFAULT_MODEL


@pytest.fixture(scope="module")
def suite_manager(tmp_path_factory) -> ModelManager:
    return ModelManager(StudioConfig(outputs_dir=tmp_path_factory.mktemp("out"), models_dir=tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def judge() -> ev.AttributeClassifier:
    return ev.load(SUITE / "evaluator")


def test_folder_is_an_ordinary_diffusers_model_within_size_budget():
    pipe = StableDiffusionPipeline.from_pretrained(SUITE, safety_checker=None, requires_safety_checker=False)
    assert pipe.vae.config.latent_channels == 4 and pipe.unet.config.sample_size * 4 == 64
    weights = sum(p.stat().st_size for p in SUITE.rglob("*.safetensors"))
    assert weights <= 60 * 2**20, f"{weights / 2**20:.1f} MB of weights"
    assert not list(SUITE.rglob("*.bin")) and not list(SUITE.rglob("*.ckpt"))
    card = (SUITE / "README.md").read_text()
    for needed in ("python -m studio.shapes.train", "steps", "wall time", "hardware", "single_shape_and_colour"):
        assert needed.lower() in card.lower(), needed


def test_manager_loads_the_suite_by_name_and_generates(suite_manager):
    events = list(txt2img(suite_manager, Txt2ImgRequest(prompt="a big red circle in the centre", seed=0, save=False)))
    result = events[-1]
    assert isinstance(result, Result) and result.images[0].size == (64, 64)
    assert suite_manager.loaded() == [str(SUITE)]


def test_evaluator_is_accurate_on_fresh_procedural_images(judge):
    images, _, labels = scenes.render_batch(seed=424_242, n=600)
    acc = ev.accuracy(ev.predict(judge, images), labels)
    assert min(acc.values()) >= 0.98, acc


def test_prompt_adherence_on_a_fixed_sample(suite_manager, judge):
    """24 fresh prompts (8 single objects, 8 counts, 8 figures), default CFG and sampler, 25 steps."""
    rng = np.random.default_rng(2024)
    picked = [scenes.make_scene(rng, kind=k) for k in ["single"] * 8 + ["multi"] * 8 + ["figure"] * 8]
    prompts = [s.caption for s in picked]
    images = []
    for k, prompt in enumerate(prompts):
        req = Txt2ImgRequest(prompt=prompt, seed=1000 + k, steps=25, guidance_scale=evaluate.DEFAULT_CFG,
                             sampler=evaluate.DEFAULT_SAMPLER, preview_every=0, save=False)
        images.append(np.asarray(list(txt2img(suite_manager, req))[-1].images[0]))
    wanted = [parse_prompt(p) for p in prompts]
    wanted = {k: np.array([w[k] for w in wanted]) for k in ev.HEADS}
    report = evaluate.adherence_report(ev.predict(judge, np.stack(images)), wanted)
    score = (report["single_shape_and_colour"] * 8 + report["count"] * 8 + report["figure"] * 8) / 24
    print(json.dumps(report))
    assert score >= 0.8, report

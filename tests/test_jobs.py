"""Request checks (bad input gives a clear message) and settings that survive the trip through a saved PNG."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from studio import metadata
from studio.config import Limits
from studio.errors import ModelError, RequestError
from studio.events import Notice, Result
from studio.jobs import Txt2ImgRequest, params_to_request, txt2img, validate


@pytest.mark.parametrize("changes, words", [
    ({"steps": 0}, "Steps must be between 1"),
    ({"steps": 100_000}, "Steps must be between 1"),
    ({"width": 100_000}, "Width must be between"),
    ({"height": 8}, "Height must be between"),
    ({"batch_size": 0}, "Batch size must be between"),
    ({"guidance_scale": -1}, "Guidance scale must be between"),
    ({"guidance_rescale": 2}, "Guidance rescale must be between 0 and 1"),
    ({"seed": -5}, "Seed must be -1"),
    ({"preview_every": -1}, "Preview every"),
])
def test_absurd_settings_are_refused_with_a_message(changes, words):
    with pytest.raises(RequestError, match=words):
        validate(Txt2ImgRequest(**changes), Limits())


def test_unknown_sampler_lists_the_known_ones():
    with pytest.raises(RequestError) as e:
        validate(Txt2ImgRequest(sampler="Eulerr"), Limits())
    assert "Unknown sampler 'Eulerr'" in str(e.value) and "DPM++ 2M Karras" in str(e.value) and "UniPC" in str(e.value)


def test_size_not_a_multiple_of_8_is_rounded_and_said(manager):
    events = list(txt2img(manager, Txt2ImgRequest(model="tiny-sd", prompt="x", steps=2, width=70, height=45, save=False)))
    notes = [e.text for e in events if isinstance(e, Notice)]
    assert notes == ["Width 70 is not a multiple of 8; rounded to 72.", "Height 45 is not a multiple of 8; rounded to 48."]
    assert events[-1].images[0].size == (72, 48)


def test_bad_model_is_a_model_error_before_any_work(manager):
    with pytest.raises(ModelError, match="not found"):
        list(txt2img(manager, Txt2ImgRequest(model="no-such-model", prompt="x")))


def test_saved_png_reloads_into_a_request_that_reproduces_the_image(manager, config):
    req = Txt2ImgRequest(model="tiny-sd", prompt="a red star\non the left", negative_prompt="blue, green", sampler="Euler a",
                         steps=3, guidance_scale=6.5, guidance_rescale=0.7, seed=99, width=64, height=48)
    first = list(txt2img(manager, req))[-1]
    assert isinstance(first, Result) and first.paths[0].parent == config.outputs_dir
    params = metadata.read_png_parameters(first.paths[0])
    again = params_to_request(params)
    assert again == Txt2ImgRequest(**{**req.__dict__, "preview_every": again.preview_every})
    second = list(txt2img(manager, again))[-1]
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))
    assert len(list(config.outputs_dir.glob("*.png"))) == 2  # nothing overwritten


def test_gallery_keeps_the_latest_images_newest_first(manager, config):
    """A run's reply carries the gallery: kept to GALLERY_KEEP entries so that it does not grow with every run."""
    import gradio as gr

    from studio.ui.common import GALLERY_KEEP, job_updates, result_panel

    with gr.Blocks():
        out = result_panel("gallery-test-")
    past = [(f"earlier-{i}.png", f"seed {i}") for i in range(GALLERY_KEEP - 1)]
    req = Txt2ImgRequest(model="tiny-sd", prompt="a red star", steps=1, seed=5, batch_size=2, width=32, height=32)
    last = list(job_updates(txt2img(manager, req), past, out))[-1]
    gallery = last[out.gallery]
    assert len(gallery) == GALLERY_KEEP and last[out.history] == gallery
    assert [caption for _, caption in gallery[:2]] == ["seed 5", "seed 6"]
    assert all(str(config.outputs_dir) in path for path, _ in gallery[:2])
    assert gallery[2:] == past[:GALLERY_KEEP - 2]  # the oldest earlier entry dropped
    # The next run starts from the history this one returned: still capped, this run's images next after its own.
    again = list(job_updates(txt2img(manager, dataclasses.replace(req, seed=9)), last[out.history], out))[-1]
    assert len(again[out.gallery]) == GALLERY_KEEP and again[out.history] == again[out.gallery]
    assert [caption for _, caption in again[out.gallery][:4]] == ["seed 9", "seed 10", "seed 5", "seed 6"]

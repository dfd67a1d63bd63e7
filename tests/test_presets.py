"""Presets: the shipped YAML files load, bad files fail loudly naming the file, and a preset fills a request."""
from __future__ import annotations

import pytest

from studio.config import ASSETS_MODELS, PRESETS_DIR
from studio.errors import RequestError
from studio.jobs import Txt2ImgRequest
from studio.presets import Preset, apply_preset, get_preset, load_presets
from studio.sampling.schedulers import SAMPLERS

SHIPPED = {"shapes-fast", "shapes-reflow", "sd15", "sd21", "sdxl", "sd-turbo", "sd3"}


def test_shipped_presets_load_with_known_samplers():
    presets = load_presets(PRESETS_DIR)
    assert SHIPPED <= set(presets)
    for name, preset in presets.items():
        assert preset.name == name
        assert preset.sampler in SAMPLERS
        assert preset.description.strip()
        assert preset.steps >= 1


def test_shapes_fast_uses_the_embedded_suite():
    preset = load_presets()["shapes-fast"]
    assert (ASSETS_MODELS / preset.model / "model_index.json").is_file()
    assert (preset.width, preset.height, preset.steps, preset.sampler) == (64, 64, 20, "DPM++ 2M")
    assert preset.guidance_scale == 5.0 and isinstance(preset.guidance_scale, float)


def test_shapes_reflow_runs_the_embedded_reflow_model_without_cfg():
    preset = load_presets()["shapes-reflow"]
    assert (ASSETS_MODELS / preset.model / "model_index.json").is_file()
    assert (preset.steps, preset.sampler, preset.guidance_scale) == (2, "Flow Match Euler Uniform", 1.0)


@pytest.mark.parametrize("text, problem", [
    ("steps: [1, 2\n", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
    ("stepz: 3\n", "stepz"),
    ("steps: many\n", "steps"),
    ("sampler: Warp 9\n", "Unknown sampler"),
])
def test_bad_file_names_the_file_and_the_problem(tmp_path, text, problem):
    (tmp_path / "good.yaml").write_text("steps: 3\n")
    (tmp_path / "broken.yaml").write_text(text)
    with pytest.raises(RequestError) as info:
        load_presets(tmp_path)
    assert "broken.yaml" in str(info.value)
    assert problem in str(info.value)


def test_unknown_preset_lists_the_known_names():
    presets = {"a": Preset("a"), "b": Preset("b")}
    assert get_preset(presets, "b").name == "b"
    with pytest.raises(RequestError, match="'c'.*a, b"):
        get_preset(presets, "c")


def test_apply_preset_copies_settings_and_keeps_the_rest():
    preset = Preset("p", model="m", sampler="Euler a", steps=3, guidance_scale=1.5, guidance_rescale=0.7,
                    width=96, height=128, negative_prompt="blurry")
    req = Txt2ImgRequest(prompt="a cat", seed=9, batch_size=2)
    out = apply_preset(req, preset)
    assert (out.model, out.sampler, out.steps, out.guidance_scale, out.guidance_rescale) == ("m", "Euler a", 3, 1.5, 0.7)
    assert (out.width, out.height, out.negative_prompt) == (96, 128, "blurry")
    assert (out.prompt, out.seed, out.batch_size) == ("a cat", 9, 2)
    assert req.model != "m"  # the original is untouched

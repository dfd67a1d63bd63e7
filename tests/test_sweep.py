"""Guidance sweep: one Cell per grid cell with a fixed seed per row, a summary per column, clear messages on bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from studio.config import ASSETS_MODELS, StudioConfig
from studio.errors import RequestError
from studio.events import Cell, SweepSummary
from studio.jobs import Txt2ImgRequest
from studio.manager import ModelManager
from studio.jobs.sweep import SweepRequest, parse_axis_values, parse_scales, sweep


def tiny(**changes) -> Txt2ImgRequest:
    return Txt2ImgRequest(**{"model": "tiny-sd", "prompt": "a red star", "steps": 2, "seed": 11, **changes})


def test_one_cell_per_grid_cell_with_a_fixed_seed_per_row_then_a_summary(manager, config):
    events = list(sweep(manager, SweepRequest(tiny(), scales=[1.0, 4.0], rows=3)))
    cells = [e for e in events if isinstance(e, Cell)]
    assert sorted((c.row, c.col) for c in cells) == [(r, c) for r in range(3) for c in range(2)]
    for c in cells:
        assert c.seed == 11 + c.row and c.row_label == f"seed {11 + c.row}" and c.col_label == ("CFG 1" if c.col == 0 else "CFG 4")
        assert Path(c.path).parent == config.outputs_dir
    assert isinstance(events[-1], SweepSummary) and sum(isinstance(e, SweepSummary) for e in events) == 1
    assert events[-1].columns == [{"scale": 1.0, "adherence": None, "diversity": None},
                                  {"scale": 4.0, "adherence": None, "diversity": None}]  # tiny-sd has no evaluator
    assert len(list(config.outputs_dir.glob("*.png"))) == 6


def test_sampler_axis_gives_a_row_per_sampler_with_one_seed(manager):
    samplers = parse_axis_values("sampler", "euler a, DDIM")
    assert samplers == ["Euler a", "DDIM"]
    cells = [e for e in sweep(manager, SweepRequest(tiny(), scales=[2.0], axis="sampler", values=samplers)) if isinstance(e, Cell)]
    assert [(c.row, c.row_label, c.seed) for c in cells] == [(0, "Euler a", 11), (1, "DDIM", 11)]


def test_parsers():
    assert parse_scales("1, 3,5  7.5") == [1.0, 3.0, 5.0, 7.5]
    assert parse_axis_values("steps", "4, 8") == [4, 8]
    assert parse_axis_values("guidance_rescale", "0, 0.7") == [0.0, 0.7]
    assert parse_axis_values("seed", "whatever") == []


@pytest.mark.parametrize("make, words", [
    (lambda: SweepRequest(tiny(), scales=[]), "at least one guidance scale"),
    (lambda: SweepRequest(tiny(), scales=parse_scales("1, abc")), "'abc' is not"),
    (lambda: SweepRequest(tiny(), scales=parse_scales("   ")), "at least one guidance scale"),
    (lambda: SweepRequest(tiny(), scales=[1.0, 500.0]), r"Guidance scale must be between 0 and 50(\.0)? \(got 500"),
    (lambda: SweepRequest(tiny(), scales=[1.0], axis="colour"), "Unknown sweep axis 'colour'. Known axes: seed, sampler, steps"),
    (lambda: SweepRequest(tiny(), scales=[1.0], axis="steps", values=[]), "at least one steps value"),
    (lambda: SweepRequest(tiny(), scales=[1.0] * 9), "at most 8x8 cells"),
    (lambda: SweepRequest(tiny(), scales=[1.0], axis="sampler", values=parse_axis_values("sampler", "Eulerr")), "Unknown sampler 'Eulerr'"),
    (lambda: SweepRequest(tiny(), scales=[1.0], axis="classifier_scale", values=[0.0, 2.0]), "needs a noise-aware classifier"),
])
def test_bad_input_is_a_clear_message_before_any_image(manager, config, make, words):
    with pytest.raises(RequestError, match=words):
        list(sweep(manager, make()))
    assert not list(config.outputs_dir.glob("*.png"))


@pytest.mark.skipif(not (ASSETS_MODELS / "shapes-v1" / "evaluator").is_dir(), reason="embedded suite not installed")
def test_embedded_suite_columns_get_adherence_and_diversity(tmp_path):
    suite = ModelManager(StudioConfig(outputs_dir=tmp_path))
    req = SweepRequest(Txt2ImgRequest(model="shapes-v1", prompt="a big red star", steps=10, seed=3), scales=[1.0, 5.0], rows=2)
    events = list(sweep(suite, req))
    assert sum(isinstance(e, Cell) for e in events) == 4
    summary = events[-1]
    assert [c["scale"] for c in summary.columns] == [1.0, 5.0]
    # Each column's numbers are its own cells judged by the model's judges (not another column's, not a constant).
    judges = suite.get("shapes-v1").judges
    cells = [e for e in events if isinstance(e, Cell)]
    for c, column in enumerate(summary.columns):
        images = np.stack([np.asarray(cell.image.convert("RGB")) for cell in cells if cell.col == c])
        assert column["adherence"] == pytest.approx(judges.adherence(images, judges.attributes("a big red star")).mean())
        features = judges.features(images)
        assert column["diversity"] == pytest.approx(float(np.linalg.norm(features[0] - features[1])), rel=1e-6)

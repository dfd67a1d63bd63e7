"""Flow vs diffusion at equal evaluations: the job's grid and summary, the step count per evaluation budget, and the
straightness measure against its closed form (one Euler step of a flow model is exactly straight)."""
from __future__ import annotations

import shutil

import pytest
from diffusers import FlowMatchEulerDiscreteScheduler

from studio.errors import RequestError
from studio.events import Cell, SweepSummary
from studio.jobs.flow_compare import CompareRequest, Contender, compare, steps_for, straightness
from studio.jobs.txt2img import Txt2ImgRequest


@pytest.fixture(scope="module")
def tiny_flow_dir(tiny_model_dir, tmp_path_factory):
    """The tiny SD model with a flow-matching scheduler: random weights read as a velocity field."""
    folder = tmp_path_factory.mktemp("flow") / "tiny-flow"
    shutil.copytree(tiny_model_dir, folder)
    FlowMatchEulerDiscreteScheduler(shift=1.0).save_pretrained(folder / "scheduler")
    index = (folder / "model_index.json").read_text().replace('"DDIMScheduler"', '"FlowMatchEulerDiscreteScheduler"')
    (folder / "model_index.json").write_text(index)
    return folder


def test_steps_for_an_evaluation_budget():
    assert [steps_for("Flow Match Euler", n) for n in (1, 2, 4, 8)] == [1, 2, 4, 8]
    assert [steps_for("Heun", n) for n in (1, 2, 3, 8)] == [1, 1, 2, 4]  # Heun: 2 * steps - 1 calls


def test_one_euler_step_is_exactly_straight_and_more_are_not(manager, tiny_flow_dir):
    model = manager.get(str(tiny_flow_dir))
    one = straightness(manager, model, Txt2ImgRequest(prompt="a red star", model=str(tiny_flow_dir), sampler="Flow Match Euler",
                                                      steps=1, guidance_scale=1.0, seed=3))
    four = straightness(manager, model, Txt2ImgRequest(prompt="a red star", model=str(tiny_flow_dir), sampler="Flow Match Euler",
                                                       steps=4, guidance_scale=1.0, seed=3))
    assert one < 1e-10 and four > 1e-4  # a random velocity field changes direction along the path


def test_grid_fills_row_by_row_then_summarises(manager, tiny_flow_dir):
    req = CompareRequest("a red star", (Contender("tiny-sd", "DDIM"), Contender(str(tiny_flow_dir), "Flow Match Euler")),
                         evaluations=(1, 2), judge_seeds=2, save=False)
    events = list(compare(manager, req))
    cells = [e for e in events if isinstance(e, Cell)]
    assert [(c.row, c.col) for c in cells] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    summary = events[-1]
    assert isinstance(summary, SweepSummary)
    assert [(c["evaluations"], c["steps"]) for c in summary.columns] == [(1, 1), (2, 2)] * 2
    assert [c["straightness"] is None for c in summary.columns] == [True, True, False, False]  # flow models only
    assert all(c["adherence"] is None for c in summary.columns)  # the tiny models have no judges


def test_a_contender_with_its_own_cfg_runs_with_it_and_says_so(manager, tiny_flow_dir):
    """A reflow model runs without CFG beside models that use the request's: its images are saved with CFG 1, and its
    row's label names it."""
    from studio.metadata import read_png_parameters

    req = CompareRequest("a red star", (Contender("tiny-sd", "DDIM"), Contender(str(tiny_flow_dir), "Flow Match Euler",
                                                                                guidance_scale=1.0)),
                         evaluations=(1,), judge_seeds=1, guidance_scale=5.0, save=True)
    cells = [e for e in compare(manager, req) if isinstance(e, Cell)]
    assert [read_png_parameters(c.path).cfg_scale for c in cells] == [5.0, 1.0]
    assert cells[0].row_label == "tiny-sd (DDIM)" and cells[1].row_label.endswith("(Flow Match Euler, CFG 1)")


@pytest.mark.parametrize("changes, words", [
    ({"evaluations": (0,)}, "between 1 and"), ({"contenders": ()}, "at least one model"),
    ({"contenders": (Contender("tiny-sd", "Flow Match Euler"),)}, "does not fit"),
])
def test_bad_requests_are_clear_messages(manager, changes, words):
    with pytest.raises(RequestError, match=words):
        list(compare(manager, CompareRequest("x", **{"contenders": (Contender("tiny-sd", "DDIM"),), **changes})))


def test_shift_moves_a_flow_models_timesteps_and_is_saved(manager, tiny_flow_dir):
    from studio.events import Result
    from studio.jobs.txt2img import txt2img

    def run(shift):
        req = Txt2ImgRequest(prompt="a red star", model=str(tiny_flow_dir), sampler="Flow Match Euler", steps=3, seed=2,
                             guidance_scale=1.0, shift=shift, preview_every=0, save=False)
        return [e for e in txt2img(manager, req) if isinstance(e, Result)][-1]

    own, shifted = run(0.0), run(3.0)
    assert abs(own.pixels - shifted.pixels).max() > 1e-3 and "Shift: 3" in shifted.infotexts[0]


@pytest.mark.parametrize("model, shift, words", [("flow", 50.0, "Shift must be"), ("tiny-sd", 2.0, "flow-matching models only")])
def test_bad_shift_is_a_clear_message(manager, tiny_flow_dir, model, shift, words):
    from studio.jobs.txt2img import txt2img

    spec = str(tiny_flow_dir) if model == "flow" else model
    with pytest.raises(RequestError, match=words):
        list(txt2img(manager, Txt2ImgRequest(prompt="x", model=spec, sampler="", steps=2, shift=shift, save=False)))

"""The Flow matching tab's 2D playground job: Flow2DRequest in, events out (Step per training chunk and per Euler
frame, Result with trajectories, the W2 chart and the metrics of every model)."""
from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from studio.errors import Cancelled, RequestError
from studio.events import Notice, Result, Step
from studio.flow import get_distribution, get_pairing
from studio.flow.pairings import DEFAULT_SINKHORN_REG
from studio.flow.playground import (ENERGY_STEPS, Evaluation, TrainSettings, coupled, evaluate, new_model, reflow_start,
                                    train, w2_squared)
from studio.flow.plots import bounds_of, side_by_side, trajectory_plot, w2_chart
from studio.jobs.common import MAX_SEED, check_seed

if TYPE_CHECKING:
    from studio.manager import ModelManager

DRAWN = "drawn"  # the target name that means "the points in Flow2DRequest.points"
REPORT_EVERY = 25  # training steps per Step event
FRAMES = 10  # trajectory frames shown while a model is integrated
TRAJECTORIES = "trajectories"  # the phase of those frames' Steps: "<model> trajectories"
MAX_TRAIN_STEPS = 20_000
MAX_EULER_STEPS = 1000


@dataclass
class Flow2DRequest:
    source: str = "8gaussians"
    target: str = "moons"  # a registered name, or "drawn" with `points`
    points: np.ndarray | list | None = None  # the drawn target, (m, 2) with m >= 8
    pairings: tuple[str, ...] = ("random", "ot")
    eval_steps: tuple[int, ...] = (1, 2, 4, 8)  # Euler steps at which W2 to the target is measured
    train_steps: int = TrainSettings.steps
    batch: int = TrainSettings.batch
    seed: int = 0  # -1: random
    sinkhorn_reg: float = DEFAULT_SINKHORN_REG
    reflow: bool = False  # also train 2-rectified flow on the random-pairing model's own pairs
    eval_points: int = 1000  # source and target points for W2 (exact OT on eval_points^2 costs)


def validate(req: Flow2DRequest) -> tuple[Flow2DRequest, list[str]]:
    """Refuse what cannot run; returns the request to run (duplicates dropped, a random seed drawn) and notices."""
    notices = []
    get_distribution(req.source)
    if req.target == DRAWN and req.points is None:
        raise RequestError(f"The target is {DRAWN!r} but no points were given: draw at least 8 points "
                           "(command line: --points FILE).")
    get_distribution(req.points if req.target == DRAWN else req.target)
    pairings = tuple(dict.fromkeys(req.pairings))
    if not pairings:
        raise RequestError("Choose at least one pairing to train.")
    for name in pairings:
        get_pairing(name, req.sinkhorn_reg)
    if req.reflow and "random" not in pairings:
        pairings = ("random", *pairings)
        notices.append("Reflow starts from the random-pairing model, so it is trained too.")
    if not req.eval_steps or any(not 1 <= k <= MAX_EULER_STEPS for k in req.eval_steps):
        raise RequestError(f"Euler steps for evaluation must each be between 1 and {MAX_EULER_STEPS} (got "
                           f"{', '.join(map(str, req.eval_steps)) or 'none'}).")
    if not 1 <= req.train_steps <= MAX_TRAIN_STEPS:
        raise RequestError(f"Training steps must be between 1 and {MAX_TRAIN_STEPS} (got {req.train_steps}).")
    if not 2 <= req.batch <= 4096:
        raise RequestError(f"Batch size must be between 2 and 4096 (got {req.batch}).")
    if not 16 <= req.eval_points <= 5000:
        raise RequestError(f"Evaluation points must be between 16 and 5000 (got {req.eval_points}).")
    check_seed(req.seed)
    seed = random.randint(0, MAX_SEED) if req.seed == -1 else req.seed
    return replace(req, pairings=pairings, eval_steps=tuple(sorted(set(req.eval_steps))), seed=seed), notices


def parse_steps(text: str) -> tuple[int, ...]:
    """Euler step counts as text, e.g. '1, 2, 4, 8'."""
    try:
        return tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise RequestError(f"Euler steps should be whole numbers separated by commas, e.g. '1, 2, 4, 8'; got {text!r}.") from None


def summary(metrics: dict[str, float]) -> list[dict[str, float | str]]:
    """One row per trained model from a Result's flat metrics: its name, then w2_<k>steps, path_energy, npe,
    straightness and train_seconds."""
    names = [key.removesuffix("_npe") for key in metrics if key.endswith("_npe")]
    return [{"model": name, **{key.removeprefix(name + "_"): value for key, value in metrics.items()
                               if key.startswith(name + "_")}} for name in names]


def train_streaming(manager: ModelManager, name: str, model, draw, settings: TrainSettings) -> Iterator[Step]:
    """Train, yielding a Step with the mean loss every REPORT_EVERY steps; Stop ends it between steps."""
    start, losses = time.perf_counter(), []
    for i, loss in enumerate(train(model, draw, settings), start=1):
        losses.append(loss)
        if manager.should_stop():
            raise Cancelled(f"Stopped while training {name}, at step {i}/{settings.steps}.")
        if i % REPORT_EVERY == 0 or i == settings.steps:
            yield Step(i, settings.steps, phase=name, metrics={"loss": float(np.mean(losses[-REPORT_EVERY:])),
                                                               "it_per_s": i / (time.perf_counter() - start)})


def flow2d(manager: ModelManager, req: Flow2DRequest) -> Iterator[Step | Notice | Result]:
    """Train one velocity field per pairing (and the reflow), measure them on shared points, draw them."""
    # 1. Check inputs.
    req, notices = validate(req)
    for text in notices:
        yield Notice(text)
    source = get_distribution(req.source)
    target = get_distribution(req.points if req.target == DRAWN else req.target)
    settings = TrainSettings(steps=req.train_steps, batch=req.batch, seed=req.seed)
    # 2. Shared evaluation points, and W2^2(source, target) that the path energies are normalized by.
    generator = torch.Generator().manual_seed(req.seed + 3)
    x0, x1 = source.sample(req.eval_points, generator), target.sample(req.eval_points, generator)
    w2sq = w2_squared(x0, x1)
    bounds = bounds_of(x0, x1)
    metrics: dict[str, float] = {"w2sq_source_target": w2sq, "seed": float(req.seed)}
    evaluations: dict[str, Evaluation] = {}
    started = time.perf_counter()
    with manager.session():
        # 3. One model per pairing, then the reflow of the random one: train, measure, show its paths.
        models = {}
        runs = [(name, None) for name in req.pairings] + ([("reflow", "random")] if req.reflow else [])
        for name, parent in runs:
            if parent is None:
                model, draw = new_model(settings), coupled(source, target, get_pairing(name, req.sinkhorn_reg))
            else:
                model, draw = reflow_start(models[parent], source, req.seed)
            t0 = time.perf_counter()
            yield from train_streaming(manager, name, model, draw, settings)
            metrics[f"{name}_train_seconds"] = time.perf_counter() - t0
            models[name] = model
            evaluations[name] = evaluate(model, x0, x1, w2sq, req.eval_steps)
            metrics.update(evaluations[name].metrics(name))
            for k in range(1, FRAMES + 1):
                frame = trajectory_plot(evaluations[name].trajectory, x1, bounds, name, upto=k * ENERGY_STEPS // FRAMES)
                yield Step(k, FRAMES, preview=[frame], phase=f"{name} {TRAJECTORIES}", metrics={"t": k / FRAMES})
    # 4. The pictures and the numbers.
    panels = [trajectory_plot(e.trajectory, x1, bounds, f"{name}  NPE {e.npe:.3f}") for name, e in evaluations.items()]
    metrics["seconds"] = time.perf_counter() - started
    named = {"trajectories": side_by_side(panels), "w2": w2_chart({n: e.w2 for n, e in evaluations.items()})}
    yield Result(panels, metrics=metrics, named=named)

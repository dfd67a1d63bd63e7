"""Flow vs diffusion at equal steps: one prompt and seed through several models (e.g. the diffusion suite and the
flow suite) at 1, 2, 4, 8, 16, 32 model evaluations, a Cell per image as it finishes; then per model and count the
prompt adherence (the model's judges, over a few seeds) and, for flow models, the straightness of the trajectory."""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from studio.errors import Cancelled, RequestError
from studio.events import Cell, Notice, Result, SweepSummary
from studio.jobs.common import MAX_SEED, check_seed, prepare, stream
from studio.jobs.txt2img import Txt2ImgRequest, txt2img, validate
from studio.manager import LoadedModel, ModelManager
from studio.sampling.loop import Hooks, LoopState

EVALUATIONS = (1, 2, 4, 8, 16, 32)
MAX_EVALUATIONS = 64


@dataclass
class Contender:
    model: str
    sampler: str
    label: str = ""
    # Its own CFG (e.g. 1 for a reflow model, whose training pairs were sampled with CFG); None: the request's.
    guidance_scale: float | None = None


REFLOW_MODEL = "shapes-v1-reflow"  # the flow suite's reflow round, sampled without CFG (its pairs had it)


@dataclass
class CompareRequest:
    prompt: str
    contenders: tuple[Contender, ...] = (Contender("shapes-v1", "DPM++ 2M", "diffusion (DPM++ 2M)"),
                                         Contender("shapes-v1-flow", "Flow Match Euler", "flow (Euler)"))
    evaluations: tuple[int, ...] = EVALUATIONS  # model evaluations per image (CFG's two branches count as one)
    seed: int = 0
    guidance_scale: float = 5.0
    judge_seeds: int = 4  # adherence is judged over this many seeds per cell (seed, seed + 1, ...)
    save: bool = True
    notices: list[str] = field(default_factory=list)


def cfg_of(contender: Contender, req: CompareRequest) -> float:
    return req.guidance_scale if contender.guidance_scale is None else contender.guidance_scale


def row_label(contender: Contender, req: CompareRequest) -> str:
    """A row's name in the sheet, the table and the plot: model and sampler, and its CFG where it has its own."""
    own = "" if contender.guidance_scale is None else f", CFG {contender.guidance_scale:g}"
    return f"{contender.model} ({contender.sampler}{own})"


def steps_for(sampler: str, evaluations: int) -> int:
    """Sampler steps that cost `evaluations` model calls: one per step, two per step for second-order samplers
    (Heun's last step is a single call, so 2 * steps - 1 <= evaluations)."""
    order = 2 if "Heun" in sampler else 1
    return max(1, (evaluations + order - 1) // order)


def compare(manager: ModelManager, req: CompareRequest) -> Iterator[Notice | Cell | SweepSummary]:
    """Row per contender, column per evaluation count, filled row by row; then a SweepSummary whose columns hold
    {"model", "label", "evaluations", "steps", "adherence", "straightness"} per cell."""
    # 1. Check inputs.
    if not req.contenders:
        raise RequestError("Compare at least one model (e.g. the diffusion suite and the flow suite).")
    if not req.evaluations or any(not 1 <= n <= MAX_EVALUATIONS for n in req.evaluations):
        raise RequestError(f"Model evaluations must be between 1 and {MAX_EVALUATIONS} (got {list(req.evaluations)}).")
    if not 1 <= req.judge_seeds <= 16:
        raise RequestError(f"Seeds for adherence must be between 1 and 16 (got {req.judge_seeds}).")
    check_seed(req.seed)
    seed = req.seed if req.seed >= 0 else int(np.random.default_rng().integers(0, MAX_SEED))
    cells = [[Txt2ImgRequest(prompt=req.prompt, model=c.model, sampler=c.sampler, steps=steps_for(c.sampler, n),
                             guidance_scale=cfg_of(c, req), seed=seed, batch_size=req.judge_seeds, preview_every=0,
                             save=req.save) for n in req.evaluations] for c in req.contenders]
    for row in cells:
        for cell in row:
            validate(cell, manager.config.limits)
    # 2. The grid: each cell a txt2img job (the same seeds everywhere), judged as it finishes.
    summary, t0 = [], time.perf_counter()
    for r, (contender, row) in enumerate(zip(req.contenders, cells)):
        label = contender.label or row_label(contender, req)
        for c, (n, cell) in enumerate(zip(req.evaluations, row)):
            if manager.should_stop():
                raise Cancelled(f"Stopped after {r * len(row) + c} of {len(cells) * len(row)} cells.")
            result = [e for e in txt2img(manager, cell) if isinstance(e, Result)][-1]
            yield Cell(r, c, result.images[0], label, f"{n} eval{'s' if n > 1 else ''}", result.seeds[0],
                       result.paths[0] if result.paths else None)
            model = manager.get(cell.model)
            summary.append({"model": contender.model, "label": label, "evaluations": n, "steps": cell.steps,
                            "adherence": _adherence(model, req.prompt, result),
                            "straightness": straightness(manager, model, cell) if _is_flow(model) else None})
    yield SweepSummary(summary, time.perf_counter() - t0)


def _is_flow(model: LoadedModel) -> bool:
    return "FlowMatch" in model.pipe.scheduler.config.get("_class_name", "")


def _adherence(model: LoadedModel, prompt: str, result: Result) -> float | None:
    judges = model.judges
    if judges is None or judges.adherence is None:
        return None
    asked = judges.attributes(prompt)
    if not asked:
        return None
    images = np.stack([np.asarray(im.convert("RGB")) for im in result.images])
    return float(judges.adherence(images, asked).mean())


def straightness(manager: ModelManager, model: LoadedModel, req: Txt2ImgRequest) -> float:
    """Mean over the path of ||v(x_t, t) - (x_1 - x_0)||^2 per latent element (Liu et al. 2022's straightness):
    0 when every step's velocity points from the noise x_1 straight at the sample x_0 it ends on."""
    velocities: list[torch.Tensor] = []

    def record(state: LoopState) -> torch.Tensor:  # a guidance hook that changes nothing, to see each velocity
        velocities.append(state.model_output.detach().float())
        return state.model_output

    with manager.session():
        run = prepare(model, req.prompt, "", req.guidance_scale, req.sampler, req.steps, req.seed, 1, (model.default_size,) * 2)
        noise = run.latents.float()
        sample = yield_all(stream(manager, model, run, req.guidance_scale, hooks=Hooks(guidance=record), preview_every=0))
    chord = noise - sample.float()  # diffusers' flow convention: v = noise - x0, from x_0 (data) to x_1 (noise)
    return float(torch.stack([(v - chord).pow(2).mean() for v in velocities]).mean())


def yield_all(steps) -> torch.Tensor:
    """Run a stream to its end, dropping its Step events; its return value (the final latents)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value

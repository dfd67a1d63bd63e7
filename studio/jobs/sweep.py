"""Guidance sweep: a grid of CFG scales (columns) by seeds or a second setting (rows), with the same seed per row."""
from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from studio.errors import Cancelled, RequestError
from studio.events import Cell, Notice, Result, SweepSummary
from studio.jobs.common import MAX_SEED
from studio.jobs.txt2img import Txt2ImgRequest, require_noisy_judge, txt2img, validate
from studio.judges import Judges
from studio.manager import ModelManager
from studio.sampling.schedulers import SAMPLERS

# Row axes: "seed" varies the seed; the others set one request field per row (all rows then share base.seed).
AXES: dict[str, str] = {
    "seed": "seed",
    "sampler": "sampler",
    "steps": "steps",
    "guidance_rescale": "CFG rescale",
    "classifier_scale": "classifier guidance",
}
MAX_SIDE = 8  # at most 8 columns and 8 rows: 64 images


@dataclass
class SweepRequest:
    base: Txt2ImgRequest  # prompt, model, sampler, steps, seed ... (seed -1: one random seed, reported)
    scales: list[float]  # columns: CFG scales
    axis: str = "seed"  # rows: "seed" (row r uses base.seed + r), "sampler", "steps", "guidance_rescale", "classifier_scale"
    values: list = field(default_factory=list)  # row values for axes other than "seed"
    rows: int = 4  # number of seeds when axis == "seed"


def parse_scales(text: str) -> list[float]:
    """'1, 3, 5, 7.5' -> [1.0, 3.0, 5.0, 7.5]; a clear RequestError on junk or nothing."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise RequestError("Give at least one guidance scale, e.g. '1, 3, 5, 7'.")
    return [_number(p, float, "Guidance scales") for p in parts]


def parse_axis_values(axis: str, text: str) -> list:
    """The second axis's values from comma-separated text, typed per axis (sampler names checked); [] for 'seed'."""
    _check_axis(axis)
    if axis == "seed":
        return []
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise RequestError(f"Give at least one {AXES[axis]} value for the rows, comma-separated.")
    if axis == "sampler":
        by_lower = {name.lower(): name for name in SAMPLERS}
        unknown = [p for p in parts if p.lower() not in by_lower]
        if unknown:
            raise RequestError(f"Unknown sampler {unknown[0]!r}. Known samplers: {', '.join(SAMPLERS)}.")
        return [by_lower[p.lower()] for p in parts]
    if axis == "steps":
        return [_number(p, int, "Steps") for p in parts]
    return [_number(p, float, f"{AXES[axis].capitalize()} values") for p in parts]


def sweep(manager: ModelManager, req: SweepRequest) -> Iterator[Notice | Cell | SweepSummary]:
    """One txt2img per cell (row-major), a Cell as each finishes, then the SweepSummary with per-column metrics."""
    # 1. Check inputs: the grid's shape, then every cell's request as txt2img would.
    _check_axis(req.axis)
    if not req.scales:
        raise RequestError("Give at least one guidance scale, e.g. '1, 3, 5, 7'.")
    if req.axis != "seed" and not req.values:
        raise RequestError(f"Give at least one {AXES[req.axis]} value for the rows, comma-separated.")
    n_rows = req.rows if req.axis == "seed" else len(req.values)
    if not 1 <= n_rows <= MAX_SIDE or len(req.scales) > MAX_SIDE:
        raise RequestError(f"A sweep has at most {MAX_SIDE}x{MAX_SIDE} cells (1 to {MAX_SIDE} rows and columns); "
                           f"got {n_rows} rows x {len(req.scales)} columns.")
    base = replace(req.base, preview_every=0, save=True, batch_size=1)
    seed = random.randint(0, MAX_SEED) if base.seed == -1 else base.seed
    grid = [[_cell_request(base, req, seed, r, s) for s in req.scales] for r in range(n_rows)]
    checked = [validate(cell, manager.config.limits) for row in grid for cell in row]
    for text in checked[0][1]:  # every cell has the same size, so the same rounding notices: say them once
        yield Notice(text)
    if base.seed == -1:
        yield Notice(f"Seed -1: using random seed {seed}" + (f" (row r uses {seed} + r)." if req.axis == "seed" else "."))
    # 2. The model, loaded once; txt2img finds it already loaded for every cell.
    model = manager.get(base.model)
    if any(cell.classifier_scale > 0 for row in grid for cell in row):
        require_noisy_judge(model)
    judge = model.judges if model.judges is not None and model.judges.adherence is not None else None
    # 3. The cells, row by row, so a row's seed is fixed while its scales fill in.
    t0 = time.perf_counter()
    pixels: dict[int, list[np.ndarray]] = {c: [] for c in range(len(req.scales))}
    for r, row in enumerate(grid):
        for c, cell in enumerate(row):
            if manager.should_stop():
                raise Cancelled(f"Stopped after {r * len(req.scales) + c} of {n_rows * len(req.scales)} cells.")
            result = [e for e in txt2img(manager, cell) if isinstance(e, Result)][-1]
            if judge is not None:
                pixels[c].append(np.asarray(result.images[0].convert("RGB"), dtype=np.uint8))
            yield Cell(r, c, result.images[0], _row_label(req.axis, cell, req.values, r), f"CFG {req.scales[c]:g}",
                       result.seeds[0], result.paths[0] if result.paths else None)
    # 4. Per column: prompt adherence and diversity, judged by the model's judges when it has them.
    wanted = (judge.attributes(base.prompt) or None) if judge is not None else None
    if judge is not None and wanted is None:
        yield Notice("The prompt names no shape, colour or person the evaluator knows, so adherence is not measured.")
    columns = [{"scale": s, **_column_metrics(judge, wanted, pixels[c])} for c, s in enumerate(req.scales)]
    yield SweepSummary(columns, time.perf_counter() - t0)


def _check_axis(axis: str) -> None:
    if axis not in AXES:
        raise RequestError(f"Unknown sweep axis {axis!r}. Known axes: {', '.join(AXES)}.")


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise RequestError(f"{what} must be {'whole ' if kind is int else ''}numbers separated by commas; "
                           f"{text!r} is not.") from None


def _cell_request(base: Txt2ImgRequest, req: SweepRequest, seed: int, r: int, scale: float) -> Txt2ImgRequest:
    if req.axis == "seed":
        return replace(base, guidance_scale=scale, seed=(seed + r) % (MAX_SEED + 1))
    return replace(base, guidance_scale=scale, seed=seed, **{req.axis: req.values[r]})


def _row_label(axis: str, cell: Txt2ImgRequest, values: list, r: int) -> str:
    if axis == "seed":
        return f"seed {cell.seed}"
    if axis == "sampler":
        return str(values[r])
    if axis == "steps":
        return f"{values[r]} steps"
    return f"{'rescale' if axis == 'guidance_rescale' else 'classifier'} {values[r]:g}"


def _column_metrics(judge: Judges | None, wanted: dict[str, int] | None, images: list[np.ndarray]) -> dict[str, float | None]:
    """adherence: fraction of images showing every asked-for attribute; diversity: mean pairwise feature distance."""
    if judge is None or not images:
        return {"adherence": None, "diversity": None}
    batch = np.stack(images)
    adherence = float(judge.adherence(batch, wanted).mean()) if wanted is not None else None
    diversity = None
    if len(batch) > 1:
        f = judge.features(batch)
        d = np.linalg.norm(f[:, None] - f[None], axis=-1)
        diversity = float(d[np.triu_indices(len(f), k=1)].mean())
    return {"adherence": adherence, "diversity": diversity}

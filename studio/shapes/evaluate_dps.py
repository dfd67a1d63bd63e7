"""Measure the DPS bars on the embedded suite: DPS against its baseline on fresh procedural images, per task.

    python -m studio.shapes.evaluate_dps [--images 50] [--steps 50] [--tasks inpainting,super_resolution,gaussian_blur] [--out f.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from studio.config import ASSETS_MODELS, DEFAULT_MODEL, StudioConfig
from studio.events import Result
from studio.jobs import InverseRequest, inverse
from studio.manager import ModelManager
from studio.shapes import scenes

TASKS = {
    "inpainting": {"operator": "inpainting", "box": 0.4},
    "super_resolution": {"operator": "super_resolution", "factor": 4},
    "gaussian_blur": {"operator": "gaussian_blur", "kernel_size": 9, "intensity": 2.0},
}


def evaluate_task(manager: ModelManager, task: str, n: int, steps: int, zeta: float | None, strength: float | None = None,
                  **request) -> dict:
    """Mean scores over n fresh scenes (seed 77_000 + k), each through DPS and the baseline. `request`: more
    InverseRequest fields (dps_mode, tiny_decoder, baseline, ...)."""
    images, _, _ = scenes.render_batch(77_000, n)
    rows = []
    for k in range(n):
        extra = ({} if strength is None else {"strength": strength}) | request
        req = InverseRequest(image=images[k], model=str(ASSETS_MODELS / DEFAULT_MODEL), steps=steps, seed=k, zeta=zeta,
                             preview_every=0, save=False, **TASKS[task], **extra)
        result = [e for e in inverse(manager, req) if isinstance(e, Result)][0]
        rows.append(result.metrics)
    keys = [k for k in rows[0] if k.startswith(("dps_", "baseline_", "start_", "clean_vae_"))]
    mean = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in keys}
    main = "psnr_hole" if task == "inpainting" else "psnr"
    mean["gain_db"] = round(mean[f"dps_{main}"] - mean[f"baseline_{main}"], 2)
    mean["wins"] = round(float(np.mean([r[f"dps_{main}"] > r[f"baseline_{main}"] for r in rows])), 3)
    mean["zeta"] = rows[0]["zeta"]
    mean["strength"] = rows[0]["strength"]
    return mean


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--zeta", type=float, default=None)
    p.add_argument("--strength", type=float, default=None, help="where DPS starts (1 = pure noise); default: the job's")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--out", default=None, help="also write the report (JSON) here")
    args = p.parse_args(argv)
    manager = ModelManager(StudioConfig())
    report = {}
    for task in args.tasks.split(","):
        t0 = time.time()
        report[task] = evaluate_task(manager, task, args.images, args.steps, args.zeta, args.strength)
        report[task]["minutes"] = round((time.time() - t0) / 60, 1)
        print(json.dumps({task: report[task]}), flush=True)
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

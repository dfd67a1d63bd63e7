"""Cost of a DPS step against a plain step of the same loop, same model and batch (issue goal: <= 2.3x); and of a
whole default DPS run (which starts half way, so it runs half the steps) against a plain run of the same steps.

    python -m bench.dps_cost [--steps 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json

from bench.common import interleaved
from studio.config import ASSETS_MODELS, DEFAULT_MODEL, StudioConfig
from studio.jobs import InverseRequest, inverse
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager
from studio.shapes import scenes


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    model = str(ASSETS_MODELS / DEFAULT_MODEL)
    manager = ModelManager(StudioConfig())
    image = scenes.sample_scenes(5, 1)[0].image
    dps_req = InverseRequest(image=image, model=model, operator="super_resolution", steps=args.steps, sampler="DDIM",
                             baseline=False, preview_every=0, strength=1.0, save=False)  # every step a DPS step
    default_req = InverseRequest(image=image, model=model, operator="super_resolution", steps=args.steps, sampler="DDIM",
                                 baseline=False, preview_every=0, save=False)
    plain_req = Txt2ImgRequest(model=model, prompt="", guidance_scale=1.0, steps=args.steps, sampler="DDIM", preview_every=0,
                               save=False)
    t = interleaved({"plain": lambda: list(txt2img(manager, plain_req)), "dps": lambda: list(inverse(manager, dps_req)),
                     "dps_default_run": lambda: list(inverse(manager, default_req))}, repeats=args.repeats, warmup=1)
    report = {"steps": args.steps, "seconds": {k: round(v, 3) for k, v in t.items()},
              "dps_step_over_plain_step": round(t["dps"] / t["plain"], 2),
              "default_run_over_plain_run": round(t["dps_default_run"] / t["plain"], 2)}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

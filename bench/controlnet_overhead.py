"""Cost of ControlNet per step: the same txt2img job with 0, 1 and 2 ControlNets, interleaved in one process.

    python -m bench.controlnet_overhead [--steps 25] [--repeats 5] [--cfg 5]
"""
from __future__ import annotations

import argparse
import json

from bench.common import interleaved
from studio.config import ASSETS_CONTROLNETS, ASSETS_MODELS, DEFAULT_MODEL, StudioConfig
from studio.control import annotators
from studio.control.controlnet import ControlInput
from studio.control.pose import preset_pose
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager
from studio.shapes import scenes


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cfg", type=float, default=5.0)
    args = p.parse_args(argv)
    manager = ModelManager(StudioConfig())
    edges = annotators.canny(scenes.sample_scenes(5, 1)[0].image)
    pose = annotators.pose(preset_pose("waving"))
    canny_unit = ControlInput(str(ASSETS_CONTROLNETS / "shapes-v1-canny"), edges)
    pose_unit = ControlInput(str(ASSETS_CONTROLNETS / "shapes-v1-pose"), pose, scale=0.8)
    base = dict(model=str(ASSETS_MODELS / DEFAULT_MODEL), prompt="a person in a red shirt waving", guidance_scale=args.cfg,
                steps=args.steps, sampler="DPM++ 2M", seed=1, preview_every=0, save=False)
    runs = {
        "plain": Txt2ImgRequest(**base),
        "one_controlnet": Txt2ImgRequest(**base, controls=(canny_unit,)),
        "two_controlnets": Txt2ImgRequest(**base, controls=(canny_unit, pose_unit)),
    }
    t = interleaved({name: (lambda r=req: list(txt2img(manager, r))) for name, req in runs.items()}, repeats=args.repeats)
    report = {"steps": args.steps, "cfg": args.cfg, "seconds": {k: round(v, 3) for k, v in t.items()},
              "one_over_plain": round(t["one_controlnet"] / t["plain"], 2), "two_over_plain": round(t["two_controlnets"] / t["plain"], 2)}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

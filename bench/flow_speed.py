"""The flow suite at 8 steps against the diffusion suite at 25 (bar: <= 1/3 of its time), one 64x64 image, CFG 5.

    python -m bench.flow_speed [--repeats 9]
"""
from __future__ import annotations

import argparse
import json

from bench.common import interleaved
from studio.config import StudioConfig
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--flow-steps", type=int, default=8)
    args = p.parse_args(argv)
    manager = ModelManager(StudioConfig())
    common = {"prompt": "three small pink stars", "guidance_scale": 5.0, "seed": 3, "preview_every": 0, "save": False}
    diffusion = Txt2ImgRequest(model="shapes-v1", sampler="DPM++ 2M", steps=25, **common)
    flow = Txt2ImgRequest(model="shapes-v1-flow", sampler="Flow Match Euler", steps=args.flow_steps, **common)
    t = interleaved({"diffusion_25": lambda: list(txt2img(manager, diffusion)),
                     f"flow_{args.flow_steps}": lambda: list(txt2img(manager, flow))}, repeats=args.repeats)
    ratio = t[f"flow_{args.flow_steps}"] / t["diffusion_25"]
    report = {"seconds": {k: round(v, 4) for k, v in t.items()}, "flow_over_diffusion": round(ratio, 3),
              "bar": round(1 / 3, 3), "meets_bar": ratio <= 1 / 3}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

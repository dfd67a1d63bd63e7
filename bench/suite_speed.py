"""Speed of the embedded suite on this machine: one 64x64 image, 25 steps with CFG, batch 1 (bar: <= 1 s on 2 CPU cores).

    python -m bench.suite_speed [--repeats 7]

Also prints the time relative to a plain 512x512 float32 matrix product loop run in the same process, so
numbers from different machines can be compared.
"""
from __future__ import annotations

import argparse
import json

import torch

from bench.common import interleaved, reference_matmuls
from studio.config import StudioConfig
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sampler", default="DPM++ 2M")
    args = p.parse_args(argv)
    manager = ModelManager(StudioConfig())
    req = Txt2ImgRequest(prompt="three small pink stars", steps=25, guidance_scale=5.0, seed=3, sampler=args.sampler,
                         preview_every=0, save=False)
    matmuls, _ = reference_matmuls(512, 100)
    t = interleaved({"image": lambda: list(txt2img(manager, req)), "reference_matmuls": matmuls}, repeats=args.repeats)
    report = {"seconds_per_image": round(t["image"], 3), "bar_seconds": 1.0, "meets_bar": t["image"] <= 1.0,
              "image_over_reference": round(t["image"] / t["reference_matmuls"], 2), "threads": torch.get_num_threads()}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

"""Our loop vs diffusers' StableDiffusionPipeline on the same model and settings, and the cost of live previews.

    python -m bench.loop_overhead [--model assets/models/shapes-v1] [--steps 25] [--repeats 7]

Prints ratios (goals: loop / pipeline <= 1.02; previews every step / no previews <= 1.05).
"""
from __future__ import annotations

import argparse
import json

import torch

from bench.common import interleaved
from studio.config import ASSETS_MODELS, StudioConfig
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager
from studio.shapes.evaluate import load_pipeline


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ASSETS_MODELS / "shapes-v1"))
    p.add_argument("--sampler", default="DPM++ 2M")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_grad_enabled(True)  # as in the app: the loop itself decides where gradients are off

    manager = ModelManager(StudioConfig())
    manager.get(args.model)
    pipe = load_pipeline(args.model, sampler=args.sampler)
    prompt = "a big red star on the left"

    def ours(preview_every: int):
        req = Txt2ImgRequest(prompt=prompt, model=args.model, sampler=args.sampler, steps=args.steps,
                             guidance_scale=args.cfg, seed=1, preview_every=preview_every, save=False)
        return lambda: list(txt2img(manager, req))

    def theirs():
        pipe(prompt, num_inference_steps=args.steps, guidance_scale=args.cfg, generator=torch.Generator().manual_seed(1),
             output_type="pil")

    t = interleaved({"pipeline": theirs, "loop": ours(0), "loop_previews_every_step": ours(1)}, repeats=args.repeats)
    report = {
        "model": args.model, "sampler": args.sampler, "steps": args.steps, "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 4) for k, v in t.items()},
        "loop_over_pipeline": round(t["loop"] / t["pipeline"], 3),
        "previews_every_step_over_none": round(t["loop_previews_every_step"] / t["loop"], 3),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

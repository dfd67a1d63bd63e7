"""DPS at the cost of its math, on the embedded suite (batch 1, DDPM, no CFG):

- the four parts a full DPS step must run, each timed alone: UNet forward and backward, VAE decoder forward and
  backward (bar: a full DPS step <= 1.1x their sum);
- the step cost of a plain step, full DPS, fast DPS (gradient from x0-hat, no UNet backward), and each with the
  tiny decoder in the gradient path (bar: fast DPS <= 1.5x a plain step), from the jobs' own per-step timings;
- PSNR of each mode on super-resolution x4 and deblurring (bar: fast within 1 dB of full).

    python -m bench.dps_modes [--images 20] [--steps 50] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from bench.common import interleaved
from studio.config import ASSETS_MODELS, DEFAULT_MODEL, StudioConfig
from studio.events import Step
from studio.jobs import InverseRequest, Txt2ImgRequest, inverse, txt2img
from studio.manager import ModelManager
from studio.sampling import previews
from studio.shapes import scenes
from studio.shapes.evaluate_dps import evaluate_task

MODES = {"full": {}, "fast": {"dps_mode": "fast"}, "full_tiny": {"tiny_decoder": True},
         "fast_tiny": {"dps_mode": "fast", "tiny_decoder": True},
         "fast_tiny_no_offset": {"dps_mode": "fast", "tiny_decoder": True, "tiny_offset": False}}


def step_seconds(events, median: bool = False) -> float:
    """Seconds per step from a job's Step events (their elapsed times), the first step and the one after it left
    out (fixed costs, first-call work). The mean by default, not the median, as some modes do more every few steps
    (the tiny decoder's offset)."""
    elapsed = [e.metrics["elapsed_s"] for e in events if isinstance(e, Step)]
    gaps = [b - a for a, b in zip(elapsed[1:], elapsed[2:])]
    return statistics.median(gaps) if median else statistics.mean(gaps)


def parts(manager: ModelManager) -> dict[str, float]:
    """Median seconds of each part of a full DPS step, alone, at the suite's size, batch 1."""
    model = manager.get(str(ASSETS_MODELS / DEFAULT_MODEL))
    unet, vae = model.pipe.unet, model.pipe.vae
    side = unet.config.sample_size
    x = torch.randn(1, 4, side, side)
    t = torch.tensor(500)
    embeds = torch.randn(1, model.pipe.tokenizer.model_max_length, unet.config.cross_attention_dim)

    def unet_forward():
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=embeds)

    def unet_forward_backward():
        xg = x.clone().requires_grad_(True)
        unet(xg, t, encoder_hidden_states=embeds).sample.sum().backward()

    def unet_forward_grad():
        xg = x.clone().requires_grad_(True)
        unet(xg, t, encoder_hidden_states=embeds)

    def decoder_forward_backward():
        z = x.clone().requires_grad_(True)
        previews.vae_decode_grad(vae, z).sum().backward()

    def decoder_forward_grad():
        z = x.clone().requires_grad_(True)
        previews.vae_decode_grad(vae, z)

    fns = {"unet_forward_no_grad": unet_forward, "unet_forward": unet_forward_grad, "unet_forward_backward": unet_forward_backward,
           "decoder_forward": decoder_forward_grad, "decoder_forward_backward": decoder_forward_backward}
    if model.tiny_vae is not None:
        def tiny_forward_backward():
            z = x.clone().requires_grad_(True)
            previews.tiny_decode(model.tiny_vae, z).sum().backward()
        fns["tiny_decoder_forward_backward"] = tiny_forward_backward
    return interleaved(fns, repeats=15, warmup=3)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    manager = ModelManager(StudioConfig())
    model = str(ASSETS_MODELS / DEFAULT_MODEL)
    image = scenes.sample_scenes(5, 1)[0].image
    common = dict(image=image, model=model, operator="super_resolution", steps=20, sampler="DDPM", baseline=False,
                  preview_every=0, strength=1.0, save=False)
    plain = Txt2ImgRequest(model=model, prompt="", guidance_scale=1.0, steps=20, sampler="DDPM", preview_every=0, save=False)
    # Per-step costs, the jobs interleaved so drift hits all alike.
    runs = {"plain": lambda: list(txt2img(manager, plain)),
            **{mode: (lambda kw=kw: list(inverse(manager, InverseRequest(**common, **kw)))) for mode, kw in MODES.items()}}
    per_step: dict[str, list[float]] = {name: [] for name in runs}
    per_step_median: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            events = fn()
            per_step[name].append(step_seconds(events))
            per_step_median[name].append(step_seconds(events, median=True))
    step = {name: statistics.median(v) for name, v in per_step.items()}
    median_step = {name: statistics.median(v) for name, v in per_step_median.items()}
    cost = parts(manager)
    four = cost["unet_forward_backward"] + cost["decoder_forward_backward"]
    report: dict = {
        "step_seconds": {k: round(v, 4) for k, v in step.items()},
        "step_seconds_median_of_steps": {k: round(v, 4) for k, v in median_step.items()},
        "part_seconds": {k: round(v, 4) for k, v in cost.items()},
        "full_step_over_four_parts": round(step["full"] / four, 3), "bar_full_over_parts": 1.1,
        "full_step_over_four_parts_median_of_steps": round(median_step["full"] / four, 3),
        "over_plain_step": {k: round(v / step["plain"], 2) for k, v in step.items() if k != "plain"},
        "bar_fast_over_plain": 1.5,
    }
    print(json.dumps(report, indent=2), flush=True)
    if not args.images:  # --images 0: the costs only
        return report
    # Quality: each mode on SR x4 and deblurring, fresh scenes, the job's defaults otherwise.
    quality = {}
    for task in ("super_resolution", "gaussian_blur"):
        quality[task] = {}
        for mode, kw in MODES.items():
            scores = evaluate_task(manager, task, args.images, args.steps, None, **kw)
            quality[task][mode] = {"psnr": scores["dps_psnr"], "ssim": scores["dps_ssim"],
                                   "residual_rms": scores["dps_residual_rms"]}
            print(json.dumps({task: {mode: quality[task][mode]}}), flush=True)
        quality[task]["fast_minus_full_db"] = round(quality[task]["fast"]["psnr"] - quality[task]["full"]["psnr"], 2)
        quality[task]["fast_tiny_minus_full_db"] = round(quality[task]["fast_tiny"]["psnr"] - quality[task]["full"]["psnr"], 2)
    report["psnr"] = quality
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

"""Measure the embedded suite against its bars: prompt adherence judged by the evaluator, Frechet distance, speed.

    python -m studio.shapes.evaluate --model assets/models/shapes-v1 --prompts 240 --fd 1000
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline
from PIL import Image

from studio.sampling.schedulers import SAMPLERS
from studio.shapes import evaluator as ev
from studio.shapes import prompts, scenes

EVAL_SEED = 90_210  # scenes from this seed are never in a training pool (training uses seeds 0..n)
DEFAULT_CFG = 5.0
DEFAULT_SAMPLER = "DPM++ 2M"


def load_pipeline(folder: str | Path, device: str = "cpu", sampler: str = DEFAULT_SAMPLER,
                  controlnet: str | Path | None = None) -> StableDiffusionPipeline:
    """The suite as a diffusers pipeline with the evaluation sampler; with a ControlNet folder, its ControlNet pipeline."""
    if controlnet is None:
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionControlNetPipeline.from_pretrained(
            folder, controlnet=ControlNetModel.from_pretrained(controlnet), safety_checker=None, requires_safety_checker=False)
    pipe.to(device)
    spec = SAMPLERS[sampler]
    pipe.scheduler = spec.cls.from_config(pipe.scheduler.config, **spec.kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts: list[str], seed: int, steps: int = 25, cfg: float = DEFAULT_CFG, batch: int = 64,
             maps: list[np.ndarray] | None = None, control_scale: float = 1.0) -> np.ndarray:
    """uint8 images (N, 64, 64, 3), image k from seed + k; with `maps`, one control map per prompt (ControlNet pipeline)."""
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        gens = [torch.Generator("cpu").manual_seed(seed + i + k) for k in range(len(chunk))]
        control = {} if maps is None else {"image": [Image.fromarray(m) for m in maps[i:i + batch]],
                                            "controlnet_conditioning_scale": control_scale}
        images = pipe(chunk, num_inference_steps=steps, guidance_scale=cfg, generator=gens, output_type="np", **control).images
        out.append((images * 255).round().astype(np.uint8))
    return np.concatenate(out)


def prompt_set(n: int, seed: int = EVAL_SEED) -> tuple[list[str], dict[str, np.ndarray]]:
    """Fresh captions and what each asks for (parsed from the caption, as a user's prompt would be)."""
    _, captions, _ = scenes.render_batch(seed, n)
    wanted = [prompts.parse_prompt(c) for c in captions]
    return captions, {k: np.array([w[k] for w in wanted]) for k in ev.HEADS}


def adherence_report(pred: dict[str, np.ndarray], wanted: dict[str, np.ndarray]) -> dict[str, float]:
    """The issue's bars: single objects (shape and colour), counts (two/three), figures."""
    single = (wanted["kind"] == 0) & (wanted["count"] == 0)
    multi = (wanted["kind"] == 0) & (wanted["count"] >= 1)
    figure = wanted["kind"] == 1
    report = {
        "single_shape_and_colour": float(((pred["shape"] == wanted["shape"]) & (pred["colour"] == wanted["colour"]))[single].mean()),
        "count": float((pred["count"] == wanted["count"])[multi].mean()),
        "figure": float((pred["kind"] == 1)[figure].mean()),
        "all_attributes": float(ev.adherence(pred, wanted).mean()),
        "n_single": int(single.sum()), "n_multi": int(multi.sum()), "n_figure": int(figure.sum()),
    }
    has_pos = single & (wanted["position"] >= 0)
    if has_pos.any():
        report["position"] = float((pred["position"] == wanted["position"])[has_pos].mean())
    fig_col = figure & (wanted["colour"] >= 0)
    if fig_col.any():
        report["figure_shirt_colour"] = float((pred["colour"] == wanted["colour"])[fig_col].mean())
    return report


def save_grid(images: np.ndarray, captions: list[str], path: str | Path, cols: int = 8) -> None:
    """A PNG contact sheet (2x upscaled) and the captions beside it, row by row, in a .txt file."""
    from PIL import Image

    n = min(len(images), cols * cols)
    rows = (n + cols - 1) // cols
    h, w = images.shape[1:3]
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k in range(n):
        sheet[(k // cols) * h:(k // cols + 1) * h, (k % cols) * w:(k % cols + 1) * w] = images[k]
    Image.fromarray(sheet).resize((cols * w * 2, rows * h * 2), Image.Resampling.NEAREST).save(path)
    Path(path).with_suffix(".txt").write_text("\n".join(f"{k // cols},{k % cols}: {c}" for k, c in enumerate(captions[:n])))


def evaluate(folder: str | Path, n_prompts: int = 240, n_fd: int = 1000, steps: int = 25, cfg: float = DEFAULT_CFG,
             device: str = "cpu", batch: int = 64, grid: str | None = None) -> dict:
    folder = Path(folder)
    pipe = load_pipeline(folder, device)
    judge = ev.load(folder / "evaluator", device)
    prompts, wanted = prompt_set(n_prompts)
    t0 = time.time()
    images = generate(pipe, prompts, seed=1, steps=steps, cfg=cfg, batch=batch)
    if grid:
        save_grid(images, prompts, grid)
    report = {"prompts": n_prompts, "steps": steps, "cfg": cfg, "sampler": DEFAULT_SAMPLER,
              "adherence": adherence_report(ev.predict(judge, images), wanted),
              "generate_seconds": round(time.time() - t0, 1)}
    if n_fd:
        real, captions, _ = scenes.render_batch(EVAL_SEED + 1, n_fd)
        held_out, _, _ = scenes.render_batch(EVAL_SEED + 2, n_fd)
        fake = generate(pipe, captions, seed=100_000, steps=steps, cfg=cfg, batch=batch)
        f_real = ev.features(judge, real)
        report["frechet"] = {
            "generated_vs_real": round(ev.frechet_distance(ev.features(judge, fake), f_real), 3),
            "held_out_real_vs_real": round(ev.frechet_distance(ev.features(judge, held_out), f_real), 3),
            "n": n_fd,
        }
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(Path(__file__).resolve().parents[2] / "assets" / "models" / "shapes-v1"))
    p.add_argument("--prompts", type=int, default=240)
    p.add_argument("--fd", type=int, default=1000, help="images per set for the Frechet distance (0: skip)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=DEFAULT_CFG)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--grid", default=None, help="save the first 64 generated images here (PNG) with their prompts (.txt)")
    args = p.parse_args(argv)
    report = evaluate(args.model, args.prompts, args.fd, args.steps, args.cfg, args.device, args.batch, args.grid)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Train the embedded suite's ControlNets (canny edges, OpenPose poses) with ControlNetModel.from_unet; resumable.

    python -m studio.shapes.train_controlnet --kind canny --out runs/cn-canny --export assets/controlnets/shapes-v1-canny
    python -m studio.shapes.train_controlnet --kind pose  --out runs/cn-pose  --export assets/controlnets/shapes-v1-pose

The suite's VAE, text encoder and UNet stay frozen; only the ControlNet learns. Control maps come from the
studio's own annotators (cv2.Canny 100/200; OpenPose maps rendered from the scenes' keypoints), so what the
page computes is what the model was trained on. Checkpoints every few minutes into --out/checkpoints; run again
to resume. The training pieces (LR schedule, noising, min-SNR, checkpoints) are studio.training.common's.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import ControlNetModel, DDPMScheduler, StableDiffusionPipeline

from studio.config import ASSETS_MODELS
from studio.control import annotators
from studio.shapes import captions, scenes
from studio.training.common import (Budget, Every, autocast, diffusion_loss, hardware, latest_step, log, lr_at,
                                    min_snr_weights, noised, optimizer_step, resume, sample_timesteps, save_checkpoint,
                                    set_lr, tokenize)

KINDS = ("canny", "pose")
COND_CHANNELS = (16, 32, 64)  # three conv stages, two stride-2: 64 px maps -> the 16x16 latent grid


def sketchy(edges: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An edge map as a hand would draw it: wobbled by a smooth random displacement, sometimes thicker."""
    h, w = edges.shape[:2]
    coarse = rng.normal(0, 1.2, size=(2, 4, 4)).astype(np.float32)
    dx, dy = (cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC) for c in coarse)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = cv2.remap(edges[..., 0], gx + dx, gy + dy, cv2.INTER_LINEAR)
    out = (out > 64).astype(np.uint8) * 255
    if rng.random() < 0.3:
        out = cv2.dilate(out, np.ones((2, 2), np.uint8))
    return np.repeat(out[..., None], 3, axis=2)


def control_maps(kind: str, seed: int, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (n,64,64,3), control maps uint8 (n,64,64,3), captions) for one ControlNet kind."""
    rng = np.random.default_rng([seed, 0xC0, KINDS.index(kind)])
    images, maps, captions = [], [], []
    for _ in range(n):
        scene = scenes.make_scene(rng, 64, kind="figure" if kind == "pose" else None)
        if kind == "pose":
            control = annotators.pose(scene.figure.keypoints, (64, 64))
        else:
            control = annotators.canny(scene.image)
            if rng.random() < 0.25:  # hand-drawn outlines arrive through the same ControlNet
                control = sketchy(control, rng)
        images.append(scene.image)
        maps.append(control)
        captions.append(scene.caption if kind != "pose" or rng.random() < 0.5 else _without_pose(scene, rng))
    return np.stack(images), np.stack(maps), captions


def _without_pose(scene, rng: np.random.Generator) -> str:
    """A figure caption that does not say the pose ("a woman in a red shirt"): then only the map can tell the limbs."""
    colour = scene.figure.colour
    subject = ("a person", "a man", "a woman", "a figure", "someone")[rng.integers(5)]
    return f"{subject} in {captions.article(colour)} {colour} {('shirt', 'top')[rng.integers(2)]}"


def build_controlnet(unet) -> ControlNetModel:
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS)


def train(args) -> None:
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(args.suite, safety_checker=None, requires_safety_checker=False)
    vae, text_encoder, unet = (m.to(device).eval().requires_grad_(False) for m in (pipe.vae, pipe.text_encoder, pipe.unet))
    controlnet = build_controlnet(unet).to(device).train()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=1e-2)
    parts = {"controlnet": controlnet, "optimizer": opt}
    step = resume(out / "checkpoints", parts)

    latents, embeds, empty, control = _pool(args, pipe, vae, text_encoder, device, out)
    log(out, {"stage": "data", "kind": args.kind, "scenes": len(latents), "seconds": round(time.time() - t_start, 1)})

    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    budget, saving = Budget(args.minutes, args.steps, step), Every(args.save_every)
    warmup = 1 if step else 100  # a resumed run has its optimizer state back: no second warmup
    while not budget.done(step):
        set_lr(opt, lr_at(args.lr, budget.fraction(step), step, warmup=warmup))
        idx = torch.randint(0, len(latents), (args.batch,), device=device)
        cond = embeds[idx]
        drop = torch.rand(len(idx), device=device) < args.cond_drop  # unconditional samples: CFG still works
        cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
        z0 = latents[idx]
        noise = torch.randn_like(z0)
        t = sample_timesteps(noise_schedule, len(idx), device)
        zt, target = noised(noise_schedule, z0, noise, t)
        hint = control[idx].permute(0, 3, 1, 2).float() / 255  # [0, 1], as diffusers' ControlNet pipelines feed it
        with autocast(device):
            down, mid = controlnet(zt, t, cond, controlnet_cond=hint, return_dict=False)
            pred = unet(zt, t, cond, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample.float()
        loss = diffusion_loss(pred, target, min_snr_weights(noise_schedule, t, gamma=5.0))
        optimizer_step(opt, loss, max_grad_norm=1.0)
        step += 1
        if step % 50 == 0:
            log(out, {"stage": args.kind, "step": step, "loss": round(loss.item(), 4), "lr": opt.param_groups[0]["lr"],
                      "minutes": round((time.time() - t_start) / 60, 2)})
        if saving():
            _save(parts, out, step)
    _save(parts, out, step)
    log(out, {"stage": "done", "kind": args.kind, "step": step, "wall_minutes": round((time.time() - t_start) / 60, 2),
              "device": str(device), "hardware": hardware(device)})
    if args.export:
        controlnet.save_pretrained(args.export, safe_serialization=True)
        print(f"exported {args.kind} ControlNet to {args.export}", flush=True)


def _pool(args, pipe, vae, text_encoder, device, out: Path):
    """Latents, text embeddings and control maps of a fixed pool (all frozen parts), computed once and cached in --out."""
    cache = out / "pool.pt"
    if cache.exists():
        pool = torch.load(cache, weights_only=True)
        if pool["kind"] == KINDS.index(args.kind) and len(pool["latents"]) == args.data and pool["seed"] == args.seed:
            return (pool["latents"].to(device), pool["embeds"].to(device), pool["empty"].to(device), pool["control"].to(device))
    images, maps, captions = control_maps(args.kind, args.seed, args.data)
    with torch.no_grad():
        px = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        latents = torch.cat([vae.encode(px[i:i + 512].to(device)).latent_dist.mean for i in range(0, len(px), 512)])
        latents = latents * vae.config.scaling_factor
        ids = tokenize(pipe.tokenizer, captions)
        embeds = torch.cat([text_encoder(ids[i:i + 1024].to(device))[0] for i in range(0, len(ids), 1024)])
        empty = text_encoder(tokenize(pipe.tokenizer, [""]).to(device))[0]
    control = torch.from_numpy(maps).to(device)
    torch.save({"kind": KINDS.index(args.kind), "seed": args.seed, "latents": latents.cpu(), "embeds": embeds.cpu(),
                "empty": empty.cpu(), "control": control.cpu()}, cache)
    return latents, embeds, empty, control


def _save(parts: dict, out: Path, step: int) -> None:
    """The ControlNet as a diffusers folder (out/controlnet), and it with its optimizer state for resuming."""
    parts["controlnet"].save_pretrained(out / "controlnet", safe_serialization=True)
    save_checkpoint(out / "checkpoints", step, parts)
    log(out, {"stage": "save", "step": step})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--suite", default=str(ASSETS_MODELS / "shapes-v1"))
    p.add_argument("--out", required=True, help="checkpoints and metrics.jsonl; resumed from when present")
    p.add_argument("--export", default=None, help="write the finished ControlNet folder here")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=int, default=20_000)
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--save-every", type=float, default=3.0, help="minutes between checkpoints")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed + latest_step(Path(args.out) / "checkpoints"))  # a resumed run draws fresh batches
    train(args)


if __name__ == "__main__":
    main()

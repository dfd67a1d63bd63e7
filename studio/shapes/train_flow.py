"""Train the suite's flow-matching model: the suite's tokenizer, text encoder and VAE (frozen, shared), a UNet that
predicts the velocity noise - x0 (rectified flow, in diffusers' SD3 conventions), and a FlowMatchEuler config.

    python -m studio.shapes.train_flow --out runs/flow --export assets/models/shapes-v1-flow [--minutes 60]

x_sigma = (1 - sigma) x0 + sigma noise, sigma drawn logit-normal (Esser et al. 2024, as diffusers' SD3 trainer's
default), the UNet called at timestep sigma * 1000 as FlowMatchEulerDiscreteScheduler calls it. The UNet starts from
the diffusion suite's weights (its features already know the scenes; only the output's meaning changes), which
makes CPU training feasible. Resumable: checkpoints in --out/checkpoints every few minutes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import compute_density_for_timestep_sampling
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from studio.config import ASSETS_MODELS, DEFAULT_MODEL
from studio.judges import JUDGES_FILE
from studio.shapes.reflow_pairs import load_pairs
from studio.shapes.train import ShapesData
from studio.training.common import (EMA, Budget, Every, autocast, diffusion_loss, hardware, log, lr_at, noised,
                                    optimizer_step, resume, save_checkpoint, set_lr, tokenize)

BASE = ASSETS_MODELS / DEFAULT_MODEL
NUM_TRAIN_TIMESTEPS = 1000


def flow_scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)


def train(args) -> Path:
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(args.base)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder").to(device).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(base / "vae").to(device).eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(base / "unet").to(device).train()
    ema = EMA(unet, args.ema)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    parts = {"unet": unet, "ema_unet": ema, "optimizer": opt}
    step = resume(out / "checkpoints", parts)
    schedule = flow_scheduler(args.shift)

    # 1. Data: a fixed pool of scenes, or a reflow round's pairs (noise, the teacher's sample from it, caption);
    # latents and text embeddings once (both encoders are frozen).
    t0 = time.time()
    noise_bank = None
    with torch.no_grad():
        if args.pairs:
            pairs = load_pairs(Path(args.pairs))
            latents, noise_bank, ids = (pairs[k].to(device) for k in ("latents", "noise", "ids"))
            empty_ids = tokenize(tokenizer, [""]).to(device)
        else:
            data = ShapesData(args.seed, args.data, tokenizer, device, args.workers)
            latents = torch.cat([vae.encode(data.pixels(torch.arange(i, min(i + 512, data.n), device=device))).latent_dist.mean
                                 for i in range(0, data.n, 512)]) * vae.config.scaling_factor
            ids, empty_ids = data.ids, data.empty_ids
        embeds = torch.cat([text_encoder(ids[i:i + 512])[0] for i in range(0, len(ids), 512)])
        empty = text_encoder(empty_ids)[0]
    n = len(latents)
    log(out, {"stage": "flow-data", "scenes": n, "pairs": bool(args.pairs), "seconds": round(time.time() - t0, 1)})

    # 2. Train: logit-normal (or uniform) sigmas, velocity target, empty captions (--cond-drop) for classifier-free
    # guidance.
    budget, saving = Budget(args.minutes, args.steps, step), Every(args.save_every)
    generator = torch.Generator().manual_seed(args.seed + step)
    t_start = time.time()
    while not budget.done(step):
        set_lr(opt, lr_at(args.lr, budget.fraction(step), step, warmup=1 if step else 100))
        idx = torch.randint(0, n, (args.batch,), generator=generator).to(device)
        cond = embeds[idx]
        drop = (torch.rand(len(idx), generator=generator) < args.cond_drop).to(device)
        cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
        if args.sigmas == "uniform":
            u = torch.rand(len(idx), generator=generator)
        else:
            u = compute_density_for_timestep_sampling("logit_normal", len(idx), logit_mean=0.0, logit_std=1.0,
                                                      generator=generator)
        timesteps = (u * NUM_TRAIN_TIMESTEPS).to(device)
        z0 = latents[idx]
        noise = noise_bank[idx] if noise_bank is not None else torch.randn(z0.shape, generator=generator).to(device)
        zt, target = noised(schedule, z0, noise, timesteps)
        with autocast(device):
            pred = unet(zt, timesteps, cond).sample.float()
        loss = diffusion_loss(pred, target)
        optimizer_step(opt, loss, max_grad_norm=1.0)
        step += 1
        ema.update(unet, step)
        if step % 50 == 0:
            log(out, {"stage": "flow", "step": step, "loss": round(loss.item(), 4), "lr": opt.param_groups[0]["lr"],
                      "minutes": round((time.time() - t_start) / 60, 2)})
        if saving():
            _save(parts, out, step)
    _save(parts, out, step)
    log(out, {"stage": "flow", "done": True, "step": step, "hardware": hardware(device)})
    return out


def _save(parts: dict, out: Path, step: int) -> None:
    parts["ema_unet"].model.save_pretrained(out / "ema" / "unet")
    save_checkpoint(out / "checkpoints", step, parts)
    log(out, {"stage": "flow", "step": step, "saved": True})


def export(out: Path, folder: Path, base: Path = BASE, shift: float = 1.0) -> None:
    """A diffusers folder: the base suite's tokenizer, text encoder and VAE, the EMA UNet, a FlowMatchEuler scheduler;
    the base's evaluator as its judge (it judges images, whatever made them)."""
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(base / "vae"), text_encoder=CLIPTextModel.from_pretrained(base / "text_encoder"),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(base / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(out / "ema" / "unet"), scheduler=flow_scheduler(shift),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.copy(base / "vae" / "latent_rgb.json", folder / "vae" / "latent_rgb.json")
    if (base / "vae_tiny").is_dir():  # the suite's distilled tiny decoder (previews, fast DPS): same latents
        shutil.copytree(base / "vae_tiny", folder / "vae_tiny", dirs_exist_ok=True)
    if (base / "evaluator").is_dir():
        shutil.copytree(base / "evaluator", folder / "evaluator", dirs_exist_ok=True)
        (folder / JUDGES_FILE).write_text(json.dumps({"loader": "studio.shapes.judges:load"}))
    print(f"exported the flow suite to {folder}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/flow")
    p.add_argument("--export", default=None, help="write the finished diffusers folder here")
    p.add_argument("--base", default=str(BASE), help="the diffusion suite whose encoders, VAE and UNet start it")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--pairs", default=None, help="a reflow round: train on these (noise, sample) pairs "
                   "(studio.shapes.reflow_pairs' folder) instead of fresh noise on scenes")
    p.add_argument("--sigmas", choices=["logit_normal", "uniform"], default="logit_normal",
                   help="how training sigmas are drawn (uniform: as rectified flow's reflow)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--save-every", type=float, default=3.0, help="minutes between checkpoints")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--export-only", action="store_true", help="export the run's EMA weights without training")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.export_only else train(args)
    if args.export:
        export(out, Path(args.export), Path(args.base), args.shift)


if __name__ == "__main__":
    main()

"""Train the embedded suite on procedural shapes: VAE, then evaluator, then text encoder + UNet; resumable.

    python -m studio.shapes.train --out runs/shapes --export assets/models/shapes-v1

Each stage runs for a time budget (minutes) or a step cap, checkpoints into --out/checkpoints/<stage> every
few minutes, and picks up from the latest checkpoint when started again. The same command runs on CPU and on
a CUDA GPU. The training pieces (LR schedule, noising, min-SNR, EMA, checkpoints) are studio.training.common's.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from studio.sampling import previews
from studio.shapes import evaluator as ev
from studio.shapes import captions, models, scenes
from studio.training.common import (EMA, Budget, Every, autocast, diffusion_loss, hardware, log, lr_at,
                                    min_snr_weights, noised, optimizer_step, resume, sample_timesteps,
                                    save_checkpoint, set_lr, tokenize)


# ---------------------------------------------------------------- data
class ShapesData:
    """A fixed pool of rendered scenes held as uint8 on the training device, with tokenized captions."""

    def __init__(self, seed: int, n: int, tokenizer: PreTrainedTokenizerFast, device: torch.device, workers: int):
        images, captions, labels = scenes.render_batch(seed, n, workers=workers)
        self.images = torch.from_numpy(images).to(device)
        self.labels = {k: torch.from_numpy(v).to(device) for k, v in labels.items()}
        self.ids = tokenize(tokenizer, captions).to(device)
        self.empty_ids = tokenize(tokenizer, [""]).to(device)
        self.n = n

    def pixels(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------- stage 1: VAE
def train_vae(args, data: ShapesData, device: torch.device, out: Path) -> AutoencoderKL:
    vae = models.build_vae().to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = resume(out / "checkpoints" / "vae", {"vae": vae, "optimizer": opt})
    budget, saving = Budget(args.vae_minutes, args.vae_steps, step), Every(args.save_every)
    while not budget.done(step):
        set_lr(opt, lr_at(args.vae_lr, budget.fraction(step), step))
        x = data.pixels(torch.randint(0, data.n, (args.vae_batch,), device=device))
        with autocast(device):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample.float()
        kl = posterior.kl().mean()
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        loss = rec + args.kl_weight * kl
        optimizer_step(opt, loss)
        step += 1
        if step % 100 == 0:
            log(out, {"stage": "vae", "step": step, "rec": round(rec.item(), 5), "kl": round(kl.item(), 3)})
        if saving():
            _save_vae(vae, opt, out, step, data, device)
    _save_vae(vae, opt, out, step, data, device)
    return vae.eval()


@torch.no_grad()
def _save_vae(vae: AutoencoderKL, opt, out: Path, step: int, data: ShapesData, device: torch.device) -> None:
    # Stable Diffusion's convention: scale latents to unit variance for the UNet.
    vae.eval()
    x = data.pixels(torch.arange(min(512, data.n), device=device))
    z = vae.encode(x).latent_dist.sample()
    vae.register_to_config(scaling_factor=float(1.0 / z.float().std()))
    psnr = -10 * math.log10(F.mse_loss(vae.decode(z).sample.float().clamp(-1, 1), x).item() / 4)
    vae.train()
    vae.save_pretrained(out / "vae")
    save_checkpoint(out / "checkpoints" / "vae", step, {"vae": vae, "optimizer": opt})
    log(out, {"stage": "vae", "step": step, "saved": True, "psnr_db": round(psnr, 2)})


# ---------------------------------------------------------------- stage 2: evaluator
def train_evaluator(args, data: ShapesData, vae: AutoencoderKL, device: torch.device, out: Path) -> ev.AttributeClassifier:
    """Trained on clean images and on VAE reconstructions, so it judges generated images fairly."""
    model = ev.AttributeClassifier().to(device).train()
    if (out / "evaluator" / "model.safetensors").exists():
        model = ev.load(out / "evaluator", device).train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.eval_lr, weight_decay=1e-4)
    step, budget = 0, Budget(args.eval_minutes, args.eval_steps)
    while not budget.done(step):
        set_lr(opt, lr_at(args.eval_lr, budget.fraction(step), step))
        idx = torch.randint(0, data.n, (args.eval_batch,), device=device)
        x = data.pixels(idx)
        if step % 2 == 1:
            with torch.no_grad(), autocast(device):
                x = vae.decode(vae.encode(x).latent_dist.sample()).sample.float().clamp(-1, 1)
        x = x + 0.03 * torch.randn_like(x) * torch.rand(len(x), 1, 1, 1, device=device)
        with autocast(device):
            logits = model(x)
        loss = sum(F.cross_entropy(logits[k].float(), data.labels[k][idx], ignore_index=-1) for k in ev.HEADS)
        optimizer_step(opt, loss)
        step += 1
        if step % 100 == 0:
            log(out, {"stage": "evaluator", "step": step, "loss": round(loss.item(), 4)})
    model.eval()
    images, _, labels = scenes.render_batch(args.seed + 777, 4000, workers=args.workers)
    acc = ev.accuracy(ev.predict(model, images), labels)
    log(out, {"stage": "evaluator", "step": step, "fresh_accuracy": acc})
    ev.save(model, out / "evaluator", {"fresh_accuracy": acc, "steps": step})
    return model


# ---------------------------------------------------------------- stage 3: text encoder + UNet
def train_unet(args, data: ShapesData, vae: AutoencoderKL, tokenizer, device: torch.device, out: Path):
    unet = models.build_unet().to(device).train()
    text_encoder = models.build_text_encoder(len(tokenizer)).to(device).train()
    ema = {"unet": EMA(unet, args.ema), "text_encoder": EMA(text_encoder, args.ema)}
    opt = torch.optim.AdamW(list(unet.parameters()) + list(text_encoder.parameters()), lr=args.unet_lr, weight_decay=1e-2)
    parts = {"unet": unet, "text_encoder": text_encoder, "ema_unet": ema["unet"], "ema_text_encoder": ema["text_encoder"],
             "optimizer": opt}
    step = resume(out / "checkpoints" / "unet", parts)
    noise_schedule = DDPMScheduler.from_config(models.build_scheduler().config)
    scale = vae.config.scaling_factor

    # Latents of the whole pool once: the VAE is frozen from here on.
    with torch.no_grad(), autocast(device):
        latents = torch.cat([vae.encode(data.pixels(torch.arange(i, min(i + 1024, data.n), device=device))).latent_dist.mean.float()
                             for i in range(0, data.n, 1024)]) * scale
    budget, saving = Budget(args.unet_minutes, args.unet_steps, step), Every(args.save_every)
    warmup = 1 if step else 300  # a resumed run has its optimizer state back: no second warmup
    while not budget.done(step):
        set_lr(opt, lr_at(args.unet_lr, budget.fraction(step), step, warmup=warmup))
        idx = torch.randint(0, data.n, (args.unet_batch,), device=device)
        ids = data.ids[idx]
        drop = torch.rand(len(idx), device=device) < args.cond_drop  # ~10% empty captions: classifier-free guidance
        ids = torch.where(drop[:, None], data.empty_ids.expand_as(ids), ids)
        z0 = latents[idx]
        noise = torch.randn_like(z0)
        t = sample_timesteps(noise_schedule, len(idx), device)
        zt, target = noised(noise_schedule, z0, noise, t)
        with autocast(device):
            cond = text_encoder(ids)[0]
            pred = unet(zt, t, cond).sample.float()
        loss = diffusion_loss(pred, target, min_snr_weights(noise_schedule, t, gamma=5.0))
        optimizer_step(opt, loss, max_grad_norm=1.0)
        step += 1
        ema["unet"].update(unet, step)
        ema["text_encoder"].update(text_encoder, step)
        if step % 100 == 0:
            log(out, {"stage": "unet", "step": step, "loss": round(loss.item(), 4), "lr": opt.param_groups[0]["lr"]})
        if saving():
            _save_unet(parts, out, step)
    _save_unet(parts, out, step)
    return ema["unet"].model, ema["text_encoder"].model


def _save_unet(parts: dict, out: Path, step: int) -> None:
    """The EMA weights as diffusers folders (what export reads), and the whole state for resuming."""
    parts["ema_unet"].model.save_pretrained(out / "ema" / "unet")
    parts["ema_text_encoder"].model.save_pretrained(out / "ema" / "text_encoder")
    save_checkpoint(out / "checkpoints" / "unet", step, parts)
    log(out, {"stage": "unet", "step": step, "saved": True})


# ---------------------------------------------------------------- export
def export_suite(out: Path, tokenizer, folder: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(out / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(out / "ema" / "text_encoder"),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_pretrained(out / "ema" / "unet"),
        scheduler=models.build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    write_latent_rgb(pipe.vae, Path(folder))
    if (out / "evaluator" / "model.safetensors").exists():
        ev.save(ev.load(out / "evaluator"), folder / "evaluator",
                json.loads((out / "evaluator" / "metrics.json").read_text()))
    print(f"exported suite to {folder}", flush=True)
    return pipe


@torch.no_grad()
def write_latent_rgb(vae: AutoencoderKL, folder: Path, n: int = 512) -> None:
    """Fit the linear latent->RGB map that makes live previews costless, and store it beside the VAE."""
    images, _, _ = scenes.render_batch(12_345, n)
    x = ev.images_to_tensor(images, vae.device)
    z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    factors, bias = previews.fit_latent_rgb(z.cpu(), x.cpu())
    (folder / "vae" / previews.LATENT_RGB_FILE).write_text(json.dumps({"factors": factors, "bias": bias}, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/shapes", help="checkpoints, metrics.jsonl; resumed from when present")
    p.add_argument("--export", default=None, help="write the finished diffusers folder here")
    p.add_argument("--stages", default="vae,evaluator,unet")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=int, default=50_000, help="scenes in the training pool")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--save-every", type=float, default=2.0, help="minutes between checkpoints")
    p.add_argument("--vae-minutes", type=float, default=10)
    p.add_argument("--vae-steps", type=int, default=10**9)
    p.add_argument("--vae-batch", type=int, default=64)
    p.add_argument("--vae-lr", type=float, default=5e-4)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--eval-minutes", type=float, default=10)
    p.add_argument("--eval-steps", type=int, default=10**9)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--eval-lr", type=float, default=2e-3)
    p.add_argument("--unet-minutes", type=float, default=60)
    p.add_argument("--unet-steps", type=int, default=10**9)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--unet-lr", type=float, default=3e-4)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.999)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = models.build_tokenizer(captions.VOCABULARY)
    t0 = time.time()
    data = ShapesData(args.seed, args.data, tokenizer, device, args.workers)
    log(out, {"stage": "data", "scenes": args.data, "seconds": round(time.time() - t0, 1)})
    stages = args.stages.split(",")
    vae = train_vae(args, data, device, out) if "vae" in stages else AutoencoderKL.from_pretrained(out / "vae").to(device).eval()
    vae.requires_grad_(False)
    if "evaluator" in stages:
        train_evaluator(args, data, vae, device, out)
    if "unet" in stages:
        train_unet(args, data, vae, tokenizer, device, out)
    log(out, {"stage": "done", "wall_minutes": round((time.time() - t0) / 60, 2), "device": str(device),
              "hardware": hardware(device)})
    if args.export:
        export_suite(out, tokenizer, Path(args.export))


if __name__ == "__main__":
    main()

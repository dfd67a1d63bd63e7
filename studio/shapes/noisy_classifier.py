"""Noise-aware attribute classifier for classifier guidance: noisy latent x_t and timestep t -> attribute logits.

    python -m studio.shapes.noisy_classifier --out runs/noisy --export assets/models/shapes-v1/noisy_classifier

Trained on the suite's own VAE latents of procedural scenes, noised with the suite's DDPM schedule (VP form:
x_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps), so its gradient is grad_x log p(y | x_t) as classifier guidance wants it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from studio.config import ASSETS_MODELS, DEFAULT_MODEL
from studio.sampling import previews
from studio.shapes import evaluator as ev
from studio.shapes import scenes
from studio.training.common import (Budget, Every, log, lr_at, noised, optimizer_step, resume, sample_timesteps,
                                    save_checkpoint, set_lr)

HEADS = ev.HEADS
NOISE_BINS = (0, 200, 400, 600, 800, 1000)  # accuracy is reported per timestep range


class NoisyClassifier(nn.Module):
    """A small CNN over 16x16x4 latents, with the timestep added to every block (as a UNet's time embedding)."""

    def __init__(self, in_channels: int = 4, width: int = 48, temb: int = 128):
        super().__init__()
        self.temb = temb
        self.time_mlp = nn.Sequential(nn.Linear(temb, temb), nn.SiLU(), nn.Linear(temb, temb))
        chans = [width, width, 2 * width, 2 * width, 4 * width]
        strides = [1, 1, 2, 1, 2]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.time_proj = nn.ModuleList()
        cin = in_channels
        for c, s in zip(chans, strides):
            self.convs.append(nn.Conv2d(cin, c, 3, s, 1))
            self.norms.append(nn.GroupNorm(8, c))
            self.time_proj.append(nn.Linear(temb, c))
            cin = c
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.neck = nn.Sequential(nn.Flatten(), nn.Linear(4 * cin, 256), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(256, n) for name, n in HEADS.items()})

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        if t.ndim == 0:
            t = t.expand(len(x))
        e = self.time_mlp(get_timestep_embedding(t.float(), self.temb, flip_sin_to_cos=False, downscale_freq_shift=0))
        h = x
        for conv, norm, proj in zip(self.convs, self.norms, self.time_proj):
            h = F.silu(norm(conv(h)) + proj(e)[:, :, None, None])
        f = self.neck(self.pool(h))
        return {name: head(f) for name, head in self.heads.items()}


def save(model: NoisyClassifier, folder: Path, metrics: dict) -> None:
    ev.save_weights(model, folder, {"heads": HEADS, "input": "VP noisy latents (UNet space) and timestep"}, metrics)


def load(folder: str | Path, device: str | torch.device = "cpu") -> NoisyClassifier:
    return ev.load_weights(NoisyClassifier(), folder, device, "noise-aware classifier")


@torch.no_grad()
def encode_scenes(vae: AutoencoderKL, seed: int, n: int, batch: int = 256) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    images, _, labels = scenes.render_batch(seed, n)
    chunks = []
    for i in range(0, n, batch):
        x = ev.images_to_tensor(images[i:i + batch], vae.device)
        chunks.append(previews.vae_encode(vae, x))
    return torch.cat(chunks), {k: torch.from_numpy(v) for k, v in labels.items()}


def noisy(z0: torch.Tensor, t: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    a = alphas[t].view(-1, 1, 1, 1)
    return a.sqrt() * z0 + (1 - a).sqrt() * torch.randn_like(z0)


@torch.no_grad()
def accuracy_by_noise(model: NoisyClassifier, z0: torch.Tensor, labels: dict[str, torch.Tensor], alphas: torch.Tensor) -> dict:
    """Per timestep range: accuracy of each head over the samples where it applies."""
    report = {}
    g = torch.Generator().manual_seed(0)
    for lo, hi in zip(NOISE_BINS[:-1], NOISE_BINS[1:]):
        t = torch.randint(lo, hi, (len(z0),), generator=g)
        logits = model(noisy(z0, t, alphas), t)
        pred = {k: v.argmax(1).numpy() for k, v in logits.items()}
        report[f"t{lo}-{hi - 1}"] = {k: round(v, 4) for k, v in ev.accuracy(pred, {k: v.numpy() for k, v in labels.items()}).items()}
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default=str(ASSETS_MODELS / DEFAULT_MODEL))
    p.add_argument("--out", default="runs/noisy_classifier", help="checkpoints, metrics.jsonl; resumed from when present")
    p.add_argument("--export", default=None)
    p.add_argument("--data", type=int, default=20_000)
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--steps", type=int, default=10**9, help="step cap (the time budget usually ends the run)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    vae = AutoencoderKL.from_pretrained(Path(args.suite) / "vae").to(device).eval()
    noise_schedule = DDPMScheduler.from_pretrained(Path(args.suite) / "scheduler")
    t0 = time.time()
    cache = out / "latents.pt"
    if cache.exists():
        z0, labels = torch.load(cache)
    else:
        z0, labels = encode_scenes(vae, seed=7, n=args.data)
        torch.save((z0, labels), cache)
    z0, labels = z0.to(device), {k: v.to(device) for k, v in labels.items()}
    log(out, {"encoded": len(z0), "seconds": round(time.time() - t0, 1)})

    model = NoisyClassifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    step = resume(out / "checkpoints", {"model": model, "optimizer": opt})
    budget, saving = Budget(args.minutes, args.steps, step), Every(2.0)
    while not budget.done(step):
        set_lr(opt, lr_at(args.lr, budget.fraction(step), step, warmup=200, floor=0.05))
        idx = torch.randint(0, len(z0), (args.batch,), device=device)
        t = sample_timesteps(noise_schedule, args.batch, device)
        zt, _ = noised(noise_schedule, z0[idx], torch.randn_like(z0[idx]), t)
        logits = model(zt, t)
        loss = sum(F.cross_entropy(logits[k], labels[k][idx], ignore_index=-1) for k in HEADS)
        optimizer_step(opt, loss)
        step += 1
        if step % 100 == 0:
            log(out, {"step": step, "loss": round(loss.item(), 4), "minutes": round((time.time() - budget.t0) / 60, 2)})
        if saving():
            save_checkpoint(out / "checkpoints", step, {"model": model, "optimizer": opt})
    save_checkpoint(out / "checkpoints", step, {"model": model, "optimizer": opt})
    model.eval()
    z_val, l_val = encode_scenes(vae, seed=31_337, n=2000)
    alphas = noise_schedule.alphas_cumprod.cpu()
    metrics = {"steps": step, "batch": args.batch, "train_latents": len(z0), "minutes": round((time.time() - t0) / 60, 1),
               "device": str(device), "accuracy_by_timestep": accuracy_by_noise(model.cpu(), z_val.cpu(), l_val, alphas)}
    print(json.dumps(metrics, indent=1), flush=True)
    save(model, out, metrics)
    if args.export:
        save(model, Path(args.export), metrics)


if __name__ == "__main__":
    main()

"""Distil a tiny autoencoder (diffusers' AutoencoderTiny, the TAESD architecture) from the suite's VAE.

    python -m studio.shapes.train_tiny_vae --out runs/tiny_vae --export assets/models/shapes-v1/vae_tiny [--minutes 20]

The decoder learns the scenes from their latents, and the full decoder's output for the same latents perturbed
(previews and DPS decode x0-hat, which lies off the data's latents early in a run); the encoder learns the full encoder's latent means. Both work in the full VAE's latent space (the
diffusers convention: `decode(latents / scaling_factor)`), so the tiny one can stand in for it in the gradient path
of DPS and for live previews. Resumable: checkpoints in --out/checkpoints.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny
from transformers import PreTrainedTokenizerFast

from studio.config import ASSETS_MODELS, DEFAULT_MODEL
from studio.shapes.train import ShapesData
from studio.training.common import Budget, Every, hardware, log, lr_at, optimizer_step, resume, save_checkpoint, set_lr

BASE = ASSETS_MODELS / DEFAULT_MODEL


def build_tiny(vae: AutoencoderKL) -> AutoencoderTiny:
    """Three stages for the suite's factor-4 VAE. DecoderTiny keeps one width throughout, and a block at full
    resolution costs most, so: 24 channels, three blocks at each of the two low resolutions, none at full
    resolution (0.18 GFLOP per 64x64 decode against the full decoder's 1.24)."""
    stages = len(vae.config.block_out_channels)
    return AutoencoderTiny(
        latent_channels=vae.config.latent_channels,
        encoder_block_out_channels=(24, 24, 24)[:stages], num_encoder_blocks=(1, 1, 1)[:stages],
        decoder_block_out_channels=(24, 24, 24)[:stages], num_decoder_blocks=(3, 3, 0)[:stages],
        scaling_factor=vae.config.scaling_factor,
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1]."""
    mse = F.mse_loss(a.clamp(-1, 1), b.clamp(-1, 1)).item()
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


def train(args) -> Path:
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(args.base)
    vae = AutoencoderKL.from_pretrained(base / "vae").to(device).eval().requires_grad_(False)
    tiny = build_tiny(vae).to(device).train()
    opt = torch.optim.AdamW(tiny.parameters(), lr=args.lr, weight_decay=0.0)
    step = resume(out / "checkpoints", {"tiny": tiny, "optimizer": opt})
    scale = vae.config.scaling_factor

    # Data: a fixed pool of scenes; the full VAE's latent means once (it is frozen).
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base / "tokenizer")
    data = ShapesData(args.seed, args.data, tokenizer, device, args.workers)
    with torch.no_grad():
        means = torch.cat([vae.encode(data.pixels(torch.arange(i, min(i + 512, data.n), device=device))).latent_dist.mean
                           for i in range(0, data.n, 512)])
    held_out = torch.arange(data.n - 256, data.n, device=device)  # never trained on: the reported metrics
    train_n = data.n - 256
    # Perturbed latents with the full decoder's output for them, drawn once (a decode per step would cost more
    # than the tiny model's training): x0-hat early in a run is a blurred, noisy latent.
    g = torch.Generator(device).manual_seed(args.seed)
    pick = torch.randint(0, train_n, (args.jittered,), generator=g, device=device)
    sigma = torch.rand(args.jittered, 1, 1, 1, generator=g, device=device) * args.jitter
    jittered = means[pick] + sigma * torch.randn(means[pick].shape, generator=g, device=device)
    with torch.no_grad():
        decoded = torch.cat([vae.decode(jittered[i:i + 256]).sample for i in range(0, args.jittered, 256)])
    budget, saving = Budget(args.minutes, args.steps, step), Every(args.save_every)
    t0 = time.time()
    while not budget.done(step):
        set_lr(opt, lr_at(args.lr, budget.fraction(step), step, warmup=100))
        # Half the batch: encoded scenes, whose decoding should be the scene; half: perturbed latents.
        idx = torch.randint(0, train_n, (args.batch // 2,), device=device)
        jdx = torch.randint(0, args.jittered, (args.batch - args.batch // 2,), device=device)
        z = torch.cat([means[idx], jittered[jdx]])
        target = torch.cat([data.pixels(idx), decoded[jdx]])
        recon = tiny.decode(z).sample
        dec_loss = F.l1_loss(recon, target) + F.mse_loss(recon, target)
        enc_loss = F.mse_loss(tiny.encode(data.pixels(idx)).latents, means[idx])
        optimizer_step(opt, dec_loss + enc_loss)
        step += 1
        if step % 100 == 0:
            log(out, {"stage": "tiny_vae", "step": step, "decoder": round(dec_loss.item(), 5),
                      "encoder": round(enc_loss.item(), 5), "minutes": round((time.time() - t0) / 60, 2)})
        if saving():
            save_checkpoint(out / "checkpoints", step, {"tiny": tiny, "optimizer": opt})
    save_checkpoint(out / "checkpoints", step, {"tiny": tiny, "optimizer": opt})
    tiny.eval()
    metrics = evaluate(vae, tiny, data, held_out, means)
    metrics.update(step=step, minutes=round((time.time() - t0) / 60, 1), hardware=hardware(device), data=args.data,
                   scaling_factor=scale)
    log(out, {"stage": "tiny_vae", "done": True, **metrics})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


@torch.no_grad()
def evaluate(vae: AutoencoderKL, tiny: AutoencoderTiny, data: ShapesData, idx: torch.Tensor, means: torch.Tensor) -> dict:
    """On held-out scenes: the tiny decoder against the full one (same latents), and each against the image."""
    x = data.pixels(idx)
    z = means[idx]
    full, small = vae.decode(z).sample, tiny.decode(z).sample
    return {"psnr_tiny_vs_full_decoder_db": round(psnr(small, full), 2),
            "psnr_full_decoder_vs_image_db": round(psnr(full, x), 2),
            "psnr_tiny_decoder_vs_image_db": round(psnr(small, x), 2),
            "latent_mse_tiny_encoder": round(F.mse_loss(tiny.encode(x).latents, z).item(), 5)}


def export(out: Path, dest: Path, base: Path) -> None:
    vae = AutoencoderKL.from_pretrained(base / "vae")
    tiny = build_tiny(vae)
    resume(out / "checkpoints", {"tiny": tiny, "optimizer": torch.optim.AdamW(tiny.parameters())})
    tiny.save_pretrained(dest)
    # AutoencoderTiny registers `block_out_channels` in its config but does not accept it back: loading would warn.
    config = json.loads((Path(dest) / "config.json").read_text())
    config.pop("block_out_channels", None)
    (Path(dest) / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"exported the tiny autoencoder to {dest}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tiny_vae")
    p.add_argument("--export", default=None, help="write the finished AutoencoderTiny folder here")
    p.add_argument("--export-only", action="store_true")
    p.add_argument("--base", default=str(BASE))
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--data", type=int, default=12000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--jitter", type=float, default=0.5, help="largest std of the noise added to the perturbed latents")
    p.add_argument("--jittered", type=int, default=3000, help="how many perturbed latents (decoded once by the full VAE)")
    p.add_argument("--save-every", type=float, default=3, help="minutes between checkpoints")
    args = p.parse_args(argv)
    if not args.export_only:
        train(args)
    if args.export:
        export(Path(args.out), Path(args.export), Path(args.base))


if __name__ == "__main__":
    main()

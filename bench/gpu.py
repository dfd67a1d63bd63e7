"""The GPU path: SD 1.5 (512x512) and SDXL (1024x1024) architectures built from their configs with random weights
(speed does not depend on the weights), loaded through the studio's own loader, sampled by our loop with CFG and a
preview every step, against vanilla diffusers' pipelines on the same card in the same script (previews there too,
through a step callback); then our loop with channels_last, fused QKV projections, and torch.compile
(max-autotune: CUDA graphs). Prints one JSON (issue bar: our loop >= 1.5x vanilla it/s at 512x512).

    python -m bench.gpu [--archs sd15,sdxl] [--steps 20] [--dtype fp16] [--no-compile]
    python -m bench.gpu --tiny --device cpu      # the same code on tiny configs: a smoke test (tests run it)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from studio.config import StudioConfig
from studio.events import Step
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager
from studio.sampling import previews
from studio.shapes.models import build_tokenizer

WORDS = "a photo of an astronaut riding a horse on the moon".split()


def text_config(hidden: int, layers: int, heads: int, projection: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=77, projection_dim=projection or hidden,
                          hidden_act="gelu")


def sd15(tiny: bool) -> tuple[type, dict, int]:
    """SD 1.5's UNet, VAE and CLIP ViT-L text encoder configs (or a tiny version with the same layout)."""
    w = 8 if tiny else 1
    unet = UNet2DConditionModel(
        sample_size=64 // (8 if tiny else 1), block_out_channels=tuple(c // w for c in (320, 640, 1280, 1280)),
        layers_per_block=2, cross_attention_dim=768 // w, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32 // (4 if tiny else 1))
    vae = AutoencoderKL(block_out_channels=tuple(c // w for c in (128, 256, 512, 512)), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, norm_num_groups=32 // (4 if tiny else 1), scaling_factor=0.18215)
    text = CLIPTextModel(text_config(768 // w, 2 if tiny else 12, 12 // (4 if tiny else 1)))
    parts = dict(unet=unet, vae=vae, text_encoder=text, tokenizer=build_tokenizer(WORDS, 77),
                 scheduler=EulerDiscreteScheduler(), safety_checker=None, feature_extractor=None,
                 requires_safety_checker=False)
    return StableDiffusionPipeline, parts, unet.config.sample_size * 8


def sdxl(tiny: bool) -> tuple[type, dict, int]:
    """SDXL's UNet (text_time conditioning), VAE and two text encoders (CLIP-L, OpenCLIP bigG with projection)."""
    w = 8 if tiny else 1
    unet = UNet2DConditionModel(
        sample_size=128 // (8 if tiny else 1), block_out_channels=tuple(c // w for c in (320, 640, 1280)),
        layers_per_block=2, cross_attention_dim=2048 // w, transformer_layers_per_block=(1, 2, 2 if tiny else 10),
        attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256 // w, projection_class_embeddings_input_dim=1280 // w + 6 * 256 // w,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=32 // (4 if tiny else 1))
    vae = AutoencoderKL(block_out_channels=tuple(c // w for c in (128, 256, 512, 512)), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, norm_num_groups=32 // (4 if tiny else 1), scaling_factor=0.13025,
                        force_upcast=False)
    text = CLIPTextModel(text_config(768 // w, 2 if tiny else 12, 12 // (4 if tiny else 1)))
    text_2 = CLIPTextModelWithProjection(text_config(1280 // w, 2 if tiny else 32, 20 // (4 if tiny else 1), 1280 // w))
    tokenizer = build_tokenizer(WORDS, 77)
    parts = dict(unet=unet, vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
                 scheduler=EulerDiscreteScheduler())
    return StableDiffusionXLPipeline, parts, unet.config.sample_size * 8


ARCHS = {"sd15": sd15, "sdxl": sdxl}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def vanilla_it_s(pipe, size: int, steps: int, device: str, factors) -> float:
    """Vanilla diffusers with CFG 7.5 and a linear preview of the latents every step (a step callback)."""
    def preview(pipeline, i, t, kwargs):
        previews.linear_preview(kwargs["latents"][:1], *factors)
        return kwargs

    def once():
        pipe("an astronaut riding a horse", num_inference_steps=steps, guidance_scale=7.5, height=size, width=size,
             generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=preview, output_type="latent")
    once()  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    once()
    synchronize(device)
    return steps / (time.perf_counter() - t0)


def ours_it_s(manager: ModelManager, folder: Path, size: int, steps: int, device: str) -> float:
    """Our loop through txt2img: CFG 7.5, a preview every step; it/s between the first and the last step."""
    req = Txt2ImgRequest(prompt="an astronaut riding a horse", model=str(folder), steps=steps, guidance_scale=7.5,
                         width=size, height=size, sampler="Euler", preview_every=1, save=False, seed=0)
    list(txt2img(manager, req))  # warm-up (and compile, when compiled)
    synchronize(device)
    elapsed = [e.metrics["elapsed_s"] for e in txt2img(manager, req) if isinstance(e, Step)]
    return (len(elapsed) - 1) / (elapsed[-1] - elapsed[0])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="sd15,sdxl")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--tiny", action="store_true", help="tiny configs of the same layouts (a smoke test on any device)")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.device == "cpu":
        dtype = torch.float32
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    report: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
                    "dtype": str(dtype).removeprefix("torch."), "steps": args.steps, "tiny": args.tiny, "archs": {}}
    for arch in args.archs.split(","):
        cls, parts, size = ARCHS[arch](args.tiny)
        folder = work / arch
        cls(**parts).save_pretrained(folder)
        del parts
        manager = ModelManager(StudioConfig(device=args.device, dtype=dtype, outputs_dir=work / "out", allow_any_path=True))
        model = manager.get(str(folder))
        pipe = model.pipe
        factors = previews.LATENT_RGB_FACTORS["sdxl" if arch == "sdxl" else "sd1"]
        row = {"size": size, "vanilla_it_s": round(vanilla_it_s(pipe, size, args.steps, args.device, factors), 3)}
        row["ours_it_s"] = round(ours_it_s(manager, folder, size, args.steps, args.device), 3)
        pipe.unet.to(memory_format=torch.channels_last)
        row["ours_channels_last_it_s"] = round(ours_it_s(manager, folder, size, args.steps, args.device), 3)
        pipe.unet.fuse_qkv_projections()
        row["ours_channels_last_fused_qkv_it_s"] = round(ours_it_s(manager, folder, size, args.steps, args.device), 3)
        if not args.no_compile:
            t0 = time.perf_counter()
            pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=False)
            row["ours_compiled_it_s"] = round(ours_it_s(manager, folder, size, args.steps, args.device), 3)
            row["compile_and_two_runs_s"] = round(time.perf_counter() - t0, 1)
        best = max(v for k, v in row.items() if k.startswith("ours"))
        row["best_over_vanilla"] = round(best / row["vanilla_it_s"], 2)
        row["plain_ours_over_vanilla"] = round(row["ours_it_s"] / row["vanilla_it_s"], 2)
        if args.device.startswith("cuda"):
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        report["archs"][arch] = row
        print(json.dumps({arch: row}), flush=True)
        del manager, model, pipe
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

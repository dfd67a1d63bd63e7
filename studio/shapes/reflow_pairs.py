"""Pairs for one reflow round (2-rectified flow, Liu et al. 2023): noise drawn here, the flow suite's own sample from
that noise (its Euler sampler, as the studio runs it, CFG on), and the caption. Training on these couplings
(`train_flow --pairs`) straightens the paths, so that one or two steps land near where many did.

    python -m studio.shapes.reflow_pairs --out runs/reflow [--n 10048] [--steps 8] [--guidance 5]

The UNet runs on ONNX Runtime (exported once here; about 1.2x eager at 128 rows a call). Resumable: pairs are
written in chunks (pairs-NNNN.pt) and a rerun makes only the missing ones.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from studio.config import ASSETS_MODELS
from studio.engine_runtime import UNetCall, export_onnx, onnx_runner
from studio.sampling.loop import Conditioning, denoise
from studio.shapes import scenes
from studio.training.common import tokenize

TEACHER = ASSETS_MODELS / "shapes-v1-flow"
CHUNK = 64  # pairs per model call (CFG: twice the rows)


def load_pairs(folder: Path) -> dict[str, torch.Tensor]:
    """All chunks of a pairs folder, concatenated: noise, latents (the teacher's samples), ids (tokenized captions)."""
    chunks = [torch.load(p) for p in sorted(Path(folder).glob("pairs-*.pt"))]
    if not chunks:
        raise FileNotFoundError(f"no pairs-*.pt in {folder}: make them first (python -m studio.shapes.reflow_pairs)")
    return {k: torch.cat([c[k] for c in chunks]) for k in ("noise", "latents", "ids")}


@torch.no_grad()
def make(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = Path(args.teacher)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(teacher / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(teacher / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(teacher / "unet").eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(teacher / "scheduler")
    shape = (CHUNK, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    _, captions, _ = scenes.render_batch(args.seed, args.n, workers=1)
    empty = text_encoder(tokenize(tokenizer, [""]))[0]
    rows = 2 * CHUNK
    example = (torch.zeros(rows, *shape[1:]), torch.zeros(rows), empty.expand(rows, -1, -1).contiguous())
    run = onnx_runner(export_onnx(UNetCall(unet).eval(), example, out / "teacher-onnx"), torch.get_num_threads())
    (out / "pairs.json").write_text(json.dumps({"teacher": str(teacher), "n": args.n, "seed": args.seed,
                                                "steps": args.steps, "guidance": args.guidance}))
    t0 = time.time()
    for k, start in enumerate(range(0, args.n - CHUNK + 1, CHUNK)):
        path = out / f"pairs-{k:04d}.pt"
        if path.exists():
            continue
        ids = tokenize(tokenizer, captions[start:start + CHUNK])
        cond = Conditioning(text_encoder(ids)[0], negative=empty.expand(CHUNK, -1, -1))
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed * 100_003 + k))
        scheduler.set_timesteps(args.steps)
        # The studio's own loop (CFG batched as in a job), with the UNet on ONNX Runtime.
        for state in denoise(lambda x, t, embeds, added, control: run(x, t.expand(len(x)).float(), embeds),
                             scheduler, "flow", noise, cond, args.guidance):
            x = state.next_latents
        torch.save({"noise": noise, "latents": x, "ids": ids}, path)
        if k % 10 == 0:
            print(json.dumps({"chunk": k, "pairs": start + CHUNK, "minutes": round((time.time() - t0) / 60, 2)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/reflow")
    p.add_argument("--teacher", default=str(TEACHER), help="the flow model whose samples the pairs hold")
    p.add_argument("--n", type=int, default=10_048)
    p.add_argument("--steps", type=int, default=8, help="the teacher's Euler steps per sample")
    p.add_argument("--guidance", type=float, default=5.0, help="the teacher's CFG scale (baked into the pairs)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    make(args)


if __name__ == "__main__":
    main()

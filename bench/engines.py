"""Engines side by side on the embedded suite's parts: the UNet, the VAE decoder and the text encoder, batch 1 and 2,
eager PyTorch against ONNX Runtime and OpenVINO (fp32; OpenVINO's bf16 too, with its error), and torch.compile
with --compile (minutes of compiling per shape on 2 cores). Speedups are eager time / engine time, interleaved in
this run; max_abs_diff is against eager on the same input.

    python -m bench.engines [--repeats 20] [--compile]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.common import interleaved, suite_pipeline
from studio import engines


def parts(pipe, batch: int) -> dict[str, tuple[torch.nn.Module, tuple]]:
    unet, vae = pipe.unet, pipe.vae
    side = unet.config.sample_size
    seq = pipe.tokenizer.model_max_length
    return {
        "unet": (engines.UNetCall(unet), (torch.randn(batch, 4, side, side), torch.full((batch,), 500.0),
                                          torch.randn(batch, seq, unet.config.cross_attention_dim))),
        "decoder": (engines.DecoderCall(vae), (torch.randn(batch, 4, side, side),)),
        "text_encoder": (engines.TextCall(pipe.text_encoder), (torch.randint(0, pipe.tokenizer.vocab_size, (batch, seq)),)),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="also torch.compile (inductor)")
    args = p.parse_args(argv)
    pipe = suite_pipeline()
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval().requires_grad_(False)
    threads = torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    report: dict = {"threads": threads, "parts": {}}
    for batch in (1, 2):
        for name, (module, inputs) in parts(pipe, batch).items():
            with torch.no_grad():
                reference = module(*inputs)
            t0 = time.perf_counter()
            path = engines.export_onnx(module, inputs, work / f"{name}-b{batch}")
            export_s = time.perf_counter() - t0
            runners = {"onnx": engines.onnx_runner(path, threads),
                       "openvino": engines.openvino_runner(path, threads, work / "ov"),
                       "openvino_bf16": engines.openvino_runner(path, threads, work / "ov", "bf16")}
            if args.compile:
                t0 = time.perf_counter()
                runners["compile"] = engines.compile_runner(module)
                runners["compile"](*inputs)
                report.setdefault("compile_seconds", {})[f"{name}-b{batch}"] = round(time.perf_counter() - t0, 1)

            def eager(m=module, x=inputs):
                with torch.no_grad():
                    return m(*x)

            fns = {"eager": eager, **{k: (lambda r=r, x=inputs: r(*x)) for k, r in runners.items()}}
            t = interleaved(fns, repeats=args.repeats, warmup=2)
            report["parts"][f"{name}-b{batch}"] = {
                "eager_ms": round(t["eager"] * 1e3, 3), "export_s": round(export_s, 1),
                **{k: {"speedup": round(t["eager"] / t[k], 2),
                       "max_abs_diff": float(f"{float((r(*inputs) - reference).abs().max()):.1e}")}
                   for k, r in runners.items()},
            }
            print(json.dumps({f"{name}-b{batch}": report["parts"][f"{name}-b{batch}"]}), flush=True)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

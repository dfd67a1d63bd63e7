"""The GPU benchmark's code on tiny configs of the same layouts, on the CPU: it loads through the studio's loader,
samples with both our loop and vanilla diffusers, and reports one JSON (the numbers themselves mean nothing here)."""
from __future__ import annotations

from bench import gpu


def test_gpu_bench_runs_on_tiny_configs():
    report = gpu.main(["--tiny", "--device", "cpu", "--steps", "2", "--no-compile", "--archs", "sd15,sdxl"])
    for arch in ("sd15", "sdxl"):
        row = report["archs"][arch]
        assert row["vanilla_it_s"] > 0 and row["ours_it_s"] > 0 and row["ours_channels_last_fused_qkv_it_s"] > 0

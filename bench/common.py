"""Benchmark helpers: interleaved repeats and medians, so that ratios compare runs made under the same load."""
from __future__ import annotations

from collections.abc import Callable

from studio.engine_runtime import timings


def reference_matmuls(n: int, count: int) -> tuple[Callable[[], None], float]:
    """Reference work to time in turns with what is measured (the VM's speed drifts): `count` fp32 matrix products
    of n x n; the function and its FLOPs."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)

    def run() -> None:
        for _ in range(count):
            a @ b
    return run, 2.0 * n**3 * count


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn (A B A B ...) so drift hits all alike."""
    return timings(fns, rounds=repeats, calls=1, warmup=warmup, settle=0)


def suite_pipeline(sampler: str = "DPM++ 2M"):
    """The embedded suite as eager diffusers' StableDiffusionPipeline, with a named sampler: the baseline."""
    from studio.config import ASSETS_MODELS, DEFAULT_MODEL
    from studio.shapes.evaluate import load_pipeline

    return load_pipeline(ASSETS_MODELS / DEFAULT_MODEL, sampler=sampler)

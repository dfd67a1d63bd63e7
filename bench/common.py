"""Benchmark helpers: interleaved repeats and medians, so that ratios compare runs made under the same load."""
from __future__ import annotations

from collections.abc import Callable

from studio.engine_runtime import timings


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn (A B A B ...) so drift hits all alike."""
    return timings(fns, rounds=repeats, calls=1, warmup=warmup, settle=0)


def suite_pipeline(sampler: str = "DPM++ 2M"):
    """The embedded suite as eager diffusers' StableDiffusionPipeline, with a named sampler: the baseline."""
    from studio.config import ASSETS_MODELS, DEFAULT_MODEL
    from studio.shapes.evaluate import load_pipeline

    return load_pipeline(ASSETS_MODELS / DEFAULT_MODEL, sampler=sampler)

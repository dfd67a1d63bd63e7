"""Wall time of a 4x4 guidance sweep of the embedded suite (4 CFG scales x 4 seeds, 25 steps; bar: <= 30 s on this CPU),
with a plain single image timed in the same process as its baseline.

    python -m bench.sweep_speed
"""
from __future__ import annotations

import json
import tempfile
import time

from studio.config import StudioConfig
from studio.events import SweepSummary
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager
from studio.jobs.sweep import SweepRequest, sweep


def main() -> dict:
    manager = ModelManager(StudioConfig(outputs_dir=tempfile.mkdtemp()))
    base = Txt2ImgRequest(prompt="a big red star on the left", steps=25, seed=1, preview_every=0)
    list(txt2img(manager, Txt2ImgRequest(prompt="warm up", steps=2, save=False)))
    t0 = time.perf_counter()
    list(txt2img(manager, Txt2ImgRequest(prompt="a big red star on the left", steps=25, seed=1, preview_every=0, save=False)))
    single = time.perf_counter() - t0
    t0 = time.perf_counter()
    events = list(sweep(manager, SweepRequest(base=base, scales=[1, 3, 5, 7], rows=4)))
    seconds = time.perf_counter() - t0
    summary = [e for e in events if isinstance(e, SweepSummary)][0]
    report = {"sweep_4x4_seconds": round(seconds, 2), "bar_seconds": 30, "meets_bar": seconds <= 30,
              "single_image_seconds": round(single, 3), "sweep_over_16_singles": round(seconds / (16 * single), 2),
              "columns": summary.columns}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

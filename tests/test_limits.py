"""A job's cost against the device's limit, and Stop inside a step: on the embedded suite at sizes where one model call
takes long enough to cut (384-512 px: a second or more on 2 cores, against 30 ms at its native 64 px)."""
from __future__ import annotations

import threading
import time

import pytest

from studio.config import ASSETS_MODELS, Limits, StudioConfig
from studio.errors import Cancelled, RequestError
from studio.events import Step
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager

pytestmark = pytest.mark.skipif(not (ASSETS_MODELS / "shapes-v1" / "model_index.json").is_file(),
                                reason="embedded suite not built")


def suite_manager(tmp_path, max_job_seconds: float) -> ModelManager:
    return ModelManager(StudioConfig(outputs_dir=tmp_path, limits=Limits(max_job_seconds=max_job_seconds)))


def request(size: int, steps: int = 25) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt="a red star", steps=steps, seed=1, width=size, height=size, guidance_scale=5,
                          preview_every=0, save=False)


def test_a_job_over_the_limit_is_cut_within_its_first_call_with_an_estimate(tmp_path):
    manager = suite_manager(tmp_path, max_job_seconds=2)  # 25 calls: 0.08 s allowed per call
    t0 = time.perf_counter()
    with pytest.raises(RequestError) as e:
        list(txt2img(manager, request(512)))
    assert time.perf_counter() - t0 < 20  # model load included; the 512 px call alone is seconds
    assert "One model call at 512x512 takes more than" in str(e.value) and "limit of 2.0 s per job" in str(e.value)
    assert "--max-job-minutes" in str(e.value)
    assert not manager.busy()  # the accelerator is free again


def test_a_known_speed_refuses_before_the_first_step(tmp_path):
    manager = suite_manager(tmp_path, max_job_seconds=0)
    events = list(txt2img(manager, request(64, steps=3)))  # measures this size
    assert isinstance(events[-2], Step)
    manager.config.limits.max_job_seconds = 1e-4
    seen = []
    with pytest.raises(RequestError, match="would take about .* as measured here earlier"):
        for event in txt2img(manager, request(64, steps=3)):
            seen.append(event)
    assert not any(isinstance(e, Step) for e in seen)


def test_stop_ends_a_job_inside_a_step(tmp_path):
    manager = suite_manager(tmp_path, max_job_seconds=0)
    model = manager.get("shapes-v1")
    called = threading.Event()
    handle = model.denoiser.register_forward_pre_hook(lambda *_: called.set())
    outcome = {}

    def run():
        try:
            list(txt2img(manager, request(384, steps=5)))
        except Cancelled as e:
            outcome["message"], outcome["at"] = str(e), time.perf_counter()

    thread = threading.Thread(target=run)
    thread.start()
    assert called.wait(60)
    time.sleep(0.05)  # inside the first call (one call at 384 px takes about a second here)
    pressed = time.perf_counter()
    assert manager.request_stop()
    thread.join(60)
    handle.remove()
    assert outcome.get("message") == "Stopped during a step.", outcome
    assert outcome["at"] - pressed < 1.0

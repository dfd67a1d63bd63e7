"""The CPU path as a script sees it: one image of the embedded suite (64x64, 25 DPM++ 2M steps, CFG 5, batch 1)
through the page's API (`/generate`, gradio_client as it comes, and with ssl_verify=False as the README advises a
script on the same machine over http) against eager diffusers' StableDiffusionPipeline on the same settings in this
process (issue bar: studio <= 0.5x its time, judged on gradio_client as it comes); the FLOP-efficiency of the whole image against this
run's matmul rate (bar >= 50%); the first image after a restart with a warm engine cache (bar <= 3x the steady
state) and the cold first image (an empty cache: eager, while the engine builds).

    python -m bench.cpu_speed [--repeats 7] [--engine auto]

Nothing else should run on the machine meanwhile (2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import interleaved, reference_matmuls, suite_pipeline
from studio.config import StudioConfig
from studio.server import free_port

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"prompt": "three small pink stars", "steps": 25, "guidance_scale": 5.0, "seed": 3, "sampler": "DPM++ 2M"}


class Server:
    """`python app.py` in a subprocess, on a free port, with its own outputs and engine cache."""

    def __init__(self, engine: str, cache: Path, outputs: Path):
        self.port = free_port()
        env = {**os.environ, "STUDIO_ENGINE": engine}
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--port", str(self.port), "--cache-dir", str(cache),
             "--outputs-dir", str(outputs)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.fresh_clients()

    def fresh_clients(self) -> None:
        """Two new sessions, so that both clients' galleries (which every reply carries) start empty together. The
        second as the README advises a script on this machine over http: gradio_client otherwise builds two TLS
        contexts per call (26-65 ms of CPU each here) although plain http has nothing to verify."""
        self.client = self._connect()
        self.local_client = self._connect(ssl_verify=False)

    def _connect(self, **options):
        from gradio_client import Client

        for _ in range(240):
            try:
                # The image stays on the server (saved with its settings; the reply names it): gradio_client's
                # download of the two result files took 0.3-0.5 s per call here, more than the image itself.
                return Client(f"http://127.0.0.1:{self.port}/", verbose=False, download_files=False, **options)
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        raise RuntimeError("the studio did not start")

    def generate(self, client=None) -> tuple[float, str]:
        t0 = time.perf_counter()
        _live, status, *_ = (client or self.client).predict(**SETTINGS, preview_every=0, api_name="/generate")
        return time.perf_counter() - t0, status

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def image_flops() -> float:
    """FLOPs of one image of the studio's path (prompt encoding, 25 UNet calls at batch 2, the decode), counted by
    torch's FLOP counter on the eager path."""
    from studio.jobs import Txt2ImgRequest, txt2img
    from studio.manager import ModelManager

    manager = ModelManager(StudioConfig())
    req = Txt2ImgRequest(**SETTINGS, preview_every=0, save=False)
    with FlopCounterMode(display=False) as counter:
        list(txt2img(manager, req))
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--engine", default="auto")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cpu-speed-"))
    cache, outputs = work / "cache", work / "outputs"
    pipe = suite_pipeline()
    generator = lambda: torch.Generator().manual_seed(SETTINGS["seed"])  # noqa: E731

    def diffusers_image():
        pipe(SETTINGS["prompt"], num_inference_steps=25, guidance_scale=5.0, generator=generator(), height=64, width=64)

    # 1. Cold: an empty cache. The first image runs eagerly while the engine builds; wait for the build.
    server = Server(args.engine, cache, outputs)
    cold_s, status = server.generate()
    t0 = time.perf_counter()
    while "optimizing" in status and time.perf_counter() - t0 < 900:
        time.sleep(2)
        _, status = server.generate()
    build_wait_s = time.perf_counter() - t0
    # 2. Steady state, interleaved with eager diffusers in this process.
    server.fresh_clients()
    # The matmul rate in turns with the images: taken once, apart, it read 160-324 GFLOP/s in one session.
    matmuls, matmul_flops = reference_matmuls(1024, 20)
    t = interleaved({"studio_api": lambda: server.generate(), "diffusers_eager": diffusers_image,
                     "studio_api_ssl_verify_false": lambda: server.generate(server.local_client),
                     "matmuls": matmuls}, repeats=args.repeats)
    _, engine_line = server.generate()
    server.stop()
    # 3. A restart with the warm cache: the first image.
    server = Server(args.engine, cache, outputs)
    warm_first_s, _ = server.generate()
    server.stop()
    flops = image_flops()
    rate = matmul_flops / t["matmuls"]
    steady = t["studio_api"]
    report = {
        "engine": args.engine, "threads": torch.get_num_threads(),
        "seconds": {"studio_api_steady": round(steady, 4), "diffusers_eager": round(t["diffusers_eager"], 4),
                    "studio_api_steady_ssl_verify_false": round(t["studio_api_ssl_verify_false"], 4),
                    "cold_first_image": round(cold_s, 3), "warm_restart_first_image": round(warm_first_s, 3),
                    "waited_for_engine_build": round(build_wait_s, 1)},
        "studio_over_diffusers": round(steady / t["diffusers_eager"], 3), "bar_studio_over_diffusers": 0.5,
        "studio_ssl_verify_false_over_diffusers": round(t["studio_api_ssl_verify_false"] / t["diffusers_eager"], 3),
        "gflop_per_image": round(flops / 1e9, 2), "matmul_gflop_per_s": round(rate / 1e9, 1),
        "flop_efficiency": round(flops / steady / rate, 3), "bar_flop_efficiency": 0.5,
        "warm_first_over_steady": round(warm_first_s / steady, 2), "bar_warm_first_over_steady": 3.0,
        "status_line": engine_line,
    }
    report["meets_bars"] = (report["studio_over_diffusers"] <= 0.5 and report["flop_efficiency"] >= 0.5
                            and report["warm_first_over_steady"] <= 3.0)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

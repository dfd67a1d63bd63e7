"""A job's steps advanced from one thread, from two long-lived threads in turn (as a web server's thread pool may
advance a generator), and from those two threads through `studio.compute.on_own_thread` (what the page does).

    python -m bench.job_threads [--repeats 5] [--jobs 3]

One image of the embedded suite (25 DPM++ 2M steps, CFG 5, eager PyTorch). Every case runs on threads made for it
that end with it, and the main thread runs no PyTorch kernel (OpenMP keeps a team of workers per thread that ran a
parallel kernel, for that thread's life). Prints seconds per image and the ratios to one thread.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from studio.compute import on_own_thread
from studio.config import StudioConfig
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager

REQUEST = Txt2ImgRequest(prompt="three small pink stars", steps=25, guidance_scale=5.0, seed=3, sampler="DPM++ 2M",
                         preview_every=0, save=False)


def drive(workers: list[ThreadPoolExecutor], events: Iterator) -> None:
    """Advance `events` to its end, each step on the next worker in turn (a worker: one long-lived thread, as in a
    server's pool)."""
    done = object()
    k = 0
    while workers[k % len(workers)].submit(next, events, done).result() is not done:
        k += 1


def case(manager: ModelManager, name: str, jobs: int) -> float:
    """Median seconds per image of `jobs` images in this case, on threads made for it (ended after)."""
    workers = [ThreadPoolExecutor(max_workers=1) for _ in range(1 if name == "one_thread" else 2)]
    try:
        seconds = []
        for _ in range(jobs):
            events = txt2img(manager, REQUEST)
            if name == "own_thread":
                events = on_own_thread(events)
            t0 = time.perf_counter()
            drive(workers, events)
            seconds.append(time.perf_counter() - t0)
        return statistics.median(seconds)
    finally:
        for w in workers:
            w.shutdown()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--jobs", type=int, default=3)
    args = p.parse_args(argv)
    manager = ModelManager(StudioConfig(engine="eager"))
    with ThreadPoolExecutor(max_workers=1) as loader:  # loading runs kernels too: on a thread that ends
        loader.submit(lambda: [list(txt2img(manager, REQUEST)) for _ in range(2)]).result()
    names = ("one_thread", "two_threads_in_turn", "own_thread")
    seen: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):  # in turns, so that drift weighs on every case alike
        for name in names:
            seen[name].append(case(manager, name, args.jobs))
    seconds = {n: statistics.median(v) for n, v in seen.items()}
    report = {"seconds_per_image": {n: round(s, 4) for n, s in seconds.items()},
              "over_one_thread": {n: round(s / seconds["one_thread"], 3) for n, s in seconds.items()}}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

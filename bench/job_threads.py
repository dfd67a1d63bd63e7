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
import threading
import time
from collections.abc import Callable, Iterator

from studio.compute import on_own_thread
from studio.config import StudioConfig
from studio.jobs import Txt2ImgRequest, txt2img
from studio.manager import ModelManager

REQUEST = Txt2ImgRequest(prompt="three small pink stars", steps=25, guidance_scale=5.0, seed=3, sampler="DPM++ 2M",
                         preview_every=0, save=False)


class Worker:
    """A long-lived thread that runs the calls it is handed, one at a time (a server pool's worker)."""

    def __init__(self):
        self._calls: list = []
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._calls)
                fn, box, done = self._calls.pop()
            if fn is None:
                return
            try:
                box.append(fn())
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                box.append(e)
            done.set()

    def call(self, fn: Callable):
        box, done = [], threading.Event()
        with self._ready:
            self._calls.append((fn, box, done))
            self._ready.notify()
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def end(self) -> None:
        with self._ready:
            self._calls.append((None, None, None))
            self._ready.notify()
        self._thread.join()


def drive(workers: list[Worker], events: Iterator) -> None:
    """Advance `events` to its end, each step on the next worker in turn."""
    done = object()
    k = 0
    while workers[k % len(workers)].call(lambda: next(events, done)) is not done:
        k += 1


def case(manager: ModelManager, name: str, jobs: int) -> float:
    """Median seconds per image of `jobs` images in this case, on threads made for it (ended after)."""
    workers = [Worker() for _ in range(1 if name == "one_thread" else 2)]
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
            w.end()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--jobs", type=int, default=3)
    args = p.parse_args(argv)
    manager = ModelManager(StudioConfig(engine="eager"))
    loader = Worker()  # loading runs kernels too: on a thread that ends
    loader.call(lambda: [list(txt2img(manager, REQUEST)) for _ in range(2)])
    loader.end()
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

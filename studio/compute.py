"""Where a job's PyTorch work runs: on a thread of its own that ends with the job.

PyTorch's CPU kernels run on OpenMP (GNU libgomp), which keeps one team of worker threads for every thread that
has run a parallel kernel, for as long as that thread lives. Once there are more OpenMP threads than cores, libgomp
stops letting idle workers spin (1,000 spins instead of 300,000) and every kernel then waits for its workers to wake:
measured here (2 cores), the suite's UNet call took 27 ms on the first thread that ran PyTorch and 62-86 ms on a
second one while the first lived. A web server advances a job's generator on whichever of its pooled threads is free,
so over a few jobs several long-lived threads would each hold a team. Here each job's steps all run on one new
thread, which exits (freeing its team) when the job ends, so at most the running job holds one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def on_own_thread(events: Iterator[T], on_abandon: Callable[[], object] | None = None) -> Iterator[T]:
    """The items of `events`, each computed on the same new thread (the caller's thread only waits); closing this
    generator closes `events` there too. Lock-step like the generator itself: the job does not run ahead.

    `on_abandon`: called when the caller stops waiting in the middle of a step (Ctrl-C in the CLI), so that the
    step can end early (e.g. the manager's Stop) instead of being waited for before `events` is closed."""
    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="job") as pool:
        try:
            while True:
                step = pool.submit(next, events, done)
                try:
                    item = step.result()
                except BaseException:
                    if not step.done() and on_abandon is not None:
                        on_abandon()
                    raise
                if item is done:
                    return
                yield item
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                pool.submit(close).result()

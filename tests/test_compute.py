"""studio.compute.on_own_thread: a job's steps all run on one thread of their own, which ends with the job."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from studio.compute import on_own_thread


def job(seen: list, closed: list, fail_at: int | None = None):
    try:
        for k in range(4):
            seen.append(threading.current_thread())
            if k == fail_at:
                raise ValueError("bad input")
            yield k
    finally:
        closed.append(threading.current_thread())


def test_every_step_runs_on_one_other_thread_that_ends_with_the_job():
    seen, closed = [], []
    assert list(on_own_thread(job(seen, closed))) == [0, 1, 2, 3]
    assert len(set(seen)) == 1 and seen[0] is not threading.current_thread()
    assert closed == seen[:1] and not seen[0].is_alive()


def test_steps_asked_for_from_several_threads_still_run_on_the_jobs_own():
    seen, closed, got = [], [], []
    events = on_own_thread(job(seen, closed))
    for _ in range(4):  # as a server's pool may: each step asked for from another thread
        t = threading.Thread(target=lambda: got.append(next(events)))
        t.start()
        t.join()
    assert got == [0, 1, 2, 3] and len(set(seen)) == 1


def test_an_error_reaches_the_caller_and_closing_early_closes_the_job_on_its_thread():
    seen, closed = [], []
    with pytest.raises(ValueError, match="bad input"):
        list(on_own_thread(job(seen, closed, fail_at=1)))
    assert closed == [seen[0]]
    seen, closed = [], []
    events = on_own_thread(job(seen, closed))
    assert next(events) == 0
    events.close()  # a closed tab or client: the job's own cleanup runs, on its own thread
    assert closed == [seen[0]] and not seen[0].is_alive()


def test_closing_the_pages_handler_closes_the_job_on_its_thread():
    seen, closed = [], []

    def handler():  # as studio.ui.common.guarded iterates a job, and Gradio closes the handler
        for event in on_own_thread(job(seen, closed)):
            yield event

    outer = handler()
    assert next(outer) == 0
    outer.close()
    assert closed == [seen[0]] and not seen[0].is_alive()


def test_a_caller_that_stops_waiting_mid_step_asks_the_step_to_end():
    stop, asked = threading.Event(), []

    def slow():
        yield 0
        stop.wait(5)  # a long step that ends early when asked (as the manager's Stop ends a model call)
        yield 1

    events = on_own_thread(slow(), on_abandon=lambda: (asked.append(1), stop.set()))
    assert next(events) == 0
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()  # Ctrl-C
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            next(events)
        events.close()
    finally:
        signal.signal(signal.SIGINT, before)
    assert asked == [1] and time.monotonic() - t0 < 3

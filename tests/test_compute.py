"""studio.compute.on_own_thread: a job's steps all run on one thread of their own, which ends with the job."""
from __future__ import annotations

import threading

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
    events.close()  # the page's Stop, or a closed tab: the job's own cleanup runs, on its own thread
    assert closed == [seen[0]] and not seen[0].is_alive()

"""runtime.WorkThreads: work handed to background threads with one queue put and one lock; `Pending.result`
waits for it and raises what it raised; one thread keeps submission order; `close` runs what was submitted
and refuses more."""

from __future__ import annotations

import threading

import pytest

from runtime import WorkThreads


def test_one_thread_runs_the_work_in_submission_order_and_gives_each_result() -> None:
    threads = WorkThreads("t-order", 1)
    ran: list[int] = []

    def work(i: int) -> int:
        ran.append(i)
        return i * i

    pending = [threads.submit(lambda i=i: work(i)) for i in range(500)]
    assert [p.result() for p in pending] == [i * i for i in range(500)]
    assert ran == list(range(500))
    threads.close()


def test_an_error_is_raised_by_result_and_the_threads_go_on() -> None:
    threads = WorkThreads("t-error", 2)

    def broken() -> int:
        raise ValueError("bad chunk")

    failed = threads.submit(broken)
    fine = threads.submit(lambda: 7)
    with pytest.raises(ValueError, match="bad chunk"):
        failed.result()
    assert fine.result() == 7
    threads.close()


def test_close_runs_what_was_submitted_and_refuses_more() -> None:
    threads = WorkThreads("t-close", 2)
    gate = threading.Event()
    started = [threads.submit(lambda: gate.wait(30.0)) for _ in range(2)]  # both threads busy
    queued = [threads.submit(lambda i=i: i) for i in range(10)]
    threads.close()
    threads.close()  # twice: nothing more happens
    with pytest.raises(RuntimeError, match="closed"):
        threads.submit(lambda: 0)
    gate.set()
    assert all(p.result() for p in started)
    assert [p.result() for p in queued] == list(range(10))


def test_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="count 0"):
        WorkThreads("t-none", 0)

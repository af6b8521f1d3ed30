"""Work handed to a few background threads, cheaply: `WorkThreads.submit` -> `Pending`.

For the receive path's hashing (issue 12): paho's thread or the logic thread hands each chunk's SHA-256 to
threads of its own (hashlib releases the GIL, so it runs beside them). A `ThreadPoolExecutor` does the same,
but its ``submit`` (a Future with its condition, a work item, the pool's idle semaphore) cost the handing
thread more than the hash at 100 edges, mostly waiting on locks the workers held. Here a hand-off is one
`queue.SimpleQueue` put and one plain lock, released when the work ran.

One thread runs the work in submission order (a store's chunks fed to a running hash); more run it in any
order. The threads are daemons, started on the first `submit`; `close` lets them finish what was submitted
and refuses more.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Pending", "WorkThreads"]

T = TypeVar("T")


class Pending(Generic[T]):
    """The result of one submitted piece of work: `result` waits for it (and raises what the work raised)."""

    __slots__ = ("_done", "_error", "_value", "_work")

    def __init__(self, work: Callable[[], T]) -> None:
        self._work: Callable[[], T] | None = work
        self._value: T | None = None
        self._error: BaseException | None = None
        self._done = threading.Lock()
        self._done.acquire()  # released once the work ran

    def _run(self) -> None:
        work, self._work = self._work, None  # the work (and what it holds, a chunk) is not kept after
        try:
            assert work is not None
            self._value = work()
        except BaseException as exc:  # the waiter's to raise, as a Future's would be
            self._error = exc
        finally:
            self._done.release()

    def result(self) -> T:
        with self._done:
            pass
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set by _run unless it raised


class WorkThreads:
    """`count` daemon threads named ``name_<i>`` running submitted work (one thread: in submission order)."""

    def __init__(self, name: str, count: int = 1) -> None:
        if count < 1:
            raise ValueError(f"count {count} must be >= 1")
        self._name = name
        self._count = count
        self._queue: queue.SimpleQueue[Pending[object] | None] = queue.SimpleQueue()
        # Held to submit and to close: work submitted before the close runs (the threads stop at the close's
        # markers, behind it); a submit after it is refused, so no `result` can wait forever.
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, work: Callable[[], T]) -> Pending[T]:
        """`work` for the threads; RuntimeError once closed."""
        pending = Pending(work)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name}: closed, no more work taken")
            if not self._threads:
                self._threads = [
                    threading.Thread(target=self._run, name=f"{self._name}_{i}", daemon=True)
                    for i in range(self._count)
                ]
                for thread in self._threads:
                    thread.start()
            self._queue.put(pending)  # type: ignore[arg-type]  # the queue holds any Pending
        return pending

    def _run(self) -> None:
        while (pending := self._queue.get()) is not None:
            pending._run()

    def close(self) -> None:
        """Refuse more work; the threads stop once what was submitted ran. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)

"""One logic thread per node service: events in order from one queue, timers in between.

The other threads of a service (paho's network thread, the script readers, the uploader) never decide
anything: they `put` an event. The loop's thread takes one event at a time, hands it to the service's
handler, then runs the service's timers. A service's events form one union type (e.g.
``Inbound | ScriptFrame | ScriptExited | ...``) that its handler dispatches with ``match``, so mypy
checks that every kind of event is handled and nothing travels as ``Any``.

One failing event never stops the loop: the failure is logged (known error types without a
traceback, anything else with one, since it is a bug) and the next event is taken.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from structlog.typing import FilteringBoundLogger

from runtime._logging import get_logger

__all__ = ["EventLoop"]

E = TypeVar("E")


@dataclass(frozen=True)
class _Timers:
    """The service's timers, as `EventLoop.__init__` describes them: when the loop must wake, and what it runs."""

    tick: Callable[[float], None] | None
    next_deadline: Callable[[], float | None] | None
    poll: float
    clock: Callable[[], float]

    def wait_time(self) -> float:
        """How long the loop may wait for an event before the timers must run."""
        deadline = self.next_deadline() if self.next_deadline is not None else None
        if deadline is None:
            return self.poll
        return max(0.0, min(self.poll, deadline - self.clock()))

    def run(self) -> None:
        if self.tick is not None:
            self.tick(self.clock())


class EventLoop(Generic[E]):
    """A queue of events of type `E` and the loop that handles them on one thread."""

    def __init__(
        self,
        handle: Callable[[E], None],
        *,
        tick: Callable[[float], None] | None = None,
        next_deadline: Callable[[], float | None] | None = None,
        poll: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        expected: tuple[type[Exception], ...] = (),
        log: FilteringBoundLogger | None = None,
    ) -> None:
        """`tick(now)` runs after every event and at least every `poll` seconds; `next_deadline()` (a
        `clock` time, or None) lets the loop wake earlier for a timer. Exceptions of the `expected`
        types are logged as errors without a traceback."""
        self._handle = handle
        self._timers = _Timers(tick, next_deadline, poll, clock)
        self._expected = expected
        self._log = log or get_logger(component="loop")
        self._queue: queue.Queue[E] = queue.Queue()

    # -- any thread --------------------------------------------------------------------------------

    def put(self, event: E) -> None:
        """Queue an event for the loop's thread; never blocks (the queue is unbounded)."""
        self._queue.put_nowait(event)

    # The session's inbox interface (`broker.Session(inbox=loop)`).
    put_nowait = put

    # -- the loop's thread -------------------------------------------------------------------------

    def take_pending(self) -> list[E]:
        """Every event queued right now, removed from the queue (a service's start-up catch-up)."""
        taken: list[E] = []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                return taken

    def handle(self, event: E) -> None:
        """Hand one event to the handler; a failure is logged, never raised."""
        try:
            self._handle(event)
        except self._expected as exc:
            self._log.error("handling failed", kind=type(event).__name__, error=str(exc), error_type=type(exc).__name__)
        except Exception as exc:  # one bad event must not take the service down
            self._log.exception("handling failed (bug)", kind=type(event).__name__, error=str(exc))

    def run_once(self) -> None:
        """Wait (at most `poll` seconds, less when a timer is due) for one event, handle it, run the timers."""
        try:
            event = self._queue.get(timeout=self._timers.wait_time())
        except queue.Empty:
            pass
        else:
            self.handle(event)
        try:
            self._timers.run()
        except self._expected as exc:
            self._log.error("timers failed", error=str(exc), error_type=type(exc).__name__)
        except Exception as exc:  # a timer bug must not stop the service either
            self._log.exception("timers failed (bug)", error=str(exc))

    def run(self, stop: threading.Event) -> None:
        """Handle events until `stop` is set (checked at least every `poll` seconds)."""
        while not stop.is_set():
            self.run_once()

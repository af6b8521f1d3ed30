"""The spool's writer: updates stored in groups on a thread of their own, off the logic thread (group commit).

At 100 edges x 1.7 MB, writing and fsyncing each update on the logic thread (2-8 ms each) held the whole
update path up. Now the logic thread hands the update to `SpoolWriter.submit` and goes on (folds it, counts
it); the writer takes every update waiting, stores them as one group (`StateStore.store_updates`: one
journal commit for the group), and then says so (`durable`, and the `on_durable` callback, which only
puts an event on the service's queue). The guarantee stays "acknowledged only once stored": the port
holds back every message published after an update was submitted until the writer says that update is
durable (`MqttPort.release`), so an ack, and anything that follows it, never goes out before the update's
file and folder are fsynced. While the writer works on one group the logic thread folds the next.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from cloud_aggregator._errors import StateError
from cloud_aggregator.service._state_store import SpoolItem, StateStore

__all__ = ["SpoolDurable", "SpoolFailure", "SpoolWriter"]

_MAX_GROUP = 64  # updates per group: bounds how long the first of a large backlog waits for its ack


@dataclass(frozen=True)
class SpoolDurable:
    """An event for the service's logic thread: the writer stored a group (release what waited for it)."""


@dataclass(frozen=True)
class SpoolFailure:
    """An update the writer could not store (its seq, what it was, why)."""

    seq: int
    item: SpoolItem
    error: StateError


class SpoolWriter:
    """Stores submitted updates in groups on its own thread, in the order they were submitted."""

    def __init__(
        self, store: StateStore, *, on_durable: Callable[[], None], log: FilteringBoundLogger, name: str = "spool"
    ) -> None:
        """`on_durable` runs on the writer's thread after each group (it must only hand work on)."""
        self._store = store
        self._on_durable = on_durable
        self._log = log
        self._cv = threading.Condition()
        self._waiting: list[tuple[int, SpoolItem]] = []
        self._submitted = 0  # the newest seq handed out
        self._done = 0  # every seq <= this one is stored durably or failed
        self._failures: list[SpoolFailure] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)
        self._thread.start()

    @property
    def submitted(self) -> int:
        """The newest seq handed out (0: none yet)."""
        return self._submitted

    @property
    def done(self) -> int:
        """Every update with a seq up to this one was stored durably, or failed (`take_failures`)."""
        with self._cv:
            return self._done

    def submit(self, item: SpoolItem) -> int:
        """Queue `item` for the next group; its seq (`done` reaches it once it is durable or failed)."""
        with self._cv:
            if self._closed:
                raise StateError("the spool's writer is stopped")
            self._submitted += 1
            self._waiting.append((self._submitted, item))
            self._cv.notify_all()
            return self._submitted

    def take_failures(self) -> list[SpoolFailure]:
        """The updates that could not be stored since the last call."""
        with self._cv:
            failures, self._failures = self._failures, []
            return failures

    def drain(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until every update submitted so far is stored or failed; whether it is."""
        deadline = time.monotonic() + timeout
        with self._cv:
            target = self._submitted
            while self._done < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cv.wait(left)
            return True

    def close(self, timeout: float) -> bool:
        """Store what is queued (at most `timeout` s), then stop the thread; whether everything was stored."""
        drained = self.drain(timeout)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(max(0.0, timeout))
        return drained

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._closed:
                    self._cv.wait()
                if not self._waiting:
                    return  # closed, and nothing left
                group, self._waiting = self._waiting[:_MAX_GROUP], self._waiting[_MAX_GROUP:]
            try:
                errors: list[StateError | None] = self._store.store_updates([item for _, item in group])
            except Exception as exc:  # a bug must not leave the logic thread waiting for acks forever
                self._log.exception("the spool's writer failed", error=str(exc))
                errors = [StateError(f"cannot store the update: {exc}")] * len(group)
            with self._cv:
                for (seq, item), error in zip(group, errors, strict=True):
                    if error is not None:
                        self._failures.append(SpoolFailure(seq, item, error))
                self._done = group[-1][0]
                self._cv.notify_all()
            self._on_durable()

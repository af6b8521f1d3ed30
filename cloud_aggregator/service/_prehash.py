"""Update chunks hashed as they arrive, on two hashing threads, before the logic thread takes them.

Every update chunk is hashed once (`_inbound.route_transfer`: the digest goes to the residency ledger and to
the assembler). At 100 edges x 1.7 MB that was 170 MB of SHA-256 a round on the logic thread. The session's
inbox is this `ChunkHasher`: on paho's thread it only hands the chunk to the hashing threads and queues the
message, with its `Digest`, for the logic thread, in arrival order (hashlib releases the GIL, so the hashing
runs beside the logic thread, on the other core).

The hand-off is a `queue.SimpleQueue` and one plain lock per chunk, not a `ThreadPoolExecutor`: its
``submit`` (a Future with its condition, a work item, the pool's idle semaphore) cost paho's thread 18 % of
its GIL time at 100 edges, most of it waiting for locks the hashing threads held (issue 12).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from broker import Inbound

__all__ = ["ChunkHasher", "Digest", "Prehashed"]

_WORKERS = 2  # the machines this targets have 2+ cores; the logic thread is the other consumer


class Digest:
    """The SHA-256 (hex) of one payload, computed on a hashing thread; `result` waits for it."""

    __slots__ = ("_done", "_payload", "_value")

    def __init__(self, payload: bytes) -> None:
        self._payload: bytes | None = payload
        self._value = ""
        self._done = threading.Lock()
        self._done.acquire()  # released once the value is in

    def compute(self) -> None:
        payload, self._payload = self._payload, None
        if payload is not None:
            self._value = hashlib.sha256(payload).hexdigest()
            self._done.release()

    def result(self) -> str:
        with self._done:
            return self._value


@dataclass(frozen=True)
class Prehashed:
    """An update chunk and its SHA-256 (hex), being computed."""

    msg: Inbound
    digest: Digest


def is_update_chunk(topic: str) -> bool:
    """A cheap test (paho's thread) for an edge's update chunk: ``.../updates/<node>/<transfer>/chunks/<i>``.
    A false positive only costs a hash: the logic thread parses the topic and uses the digest for update chunks."""
    return "/updates/" in topic and "/chunks/" in topic


class ChunkHasher:
    """The session's inbox in front of the service's event loop."""

    def __init__(self, emit: Callable[[Inbound | Prehashed], None]) -> None:
        self._emit = emit
        self._work: queue.SimpleQueue[Digest | None] = queue.SimpleQueue()
        # Taken to hand a chunk over and to close: a chunk handed over before the close is hashed (the
        # threads stop at the close's markers, behind it), one after it is not handed over at all.
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"chunk-hash_{i}", daemon=True) for i in range(_WORKERS)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while (digest := self._work.get()) is not None:
            digest.compute()

    def put_nowait(self, item: Inbound, /) -> None:
        if item.payload and is_update_chunk(item.topic):
            digest = Digest(item.payload)
            with self._lock:
                handed = not self._closed
                if handed:
                    self._work.put(digest)
            if handed:
                self._emit(Prehashed(item, digest))
                return
        self._emit(item)  # the service is stopping: hashed where it is used

    def close(self) -> None:
        """Stop the hashing threads once every chunk handed over is hashed (the logic thread may still wait
        for one); later chunks go to the logic thread unhashed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._work.put(None)

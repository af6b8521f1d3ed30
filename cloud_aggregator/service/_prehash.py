"""Update chunks hashed as they arrive, on a small pool, before the logic thread takes them.

Every update chunk is hashed once (`_inbound.route_transfer`: the digest goes to the residency ledger and to
the assembler). At 100 edges x 1.7 MB that was 170 MB of SHA-256 a round on the logic thread. The session's
inbox is this `ChunkHasher`: on paho's thread it only submits the hash to the pool and queues the message,
wrapped with the digest's future, for the logic thread, in arrival order (hashlib releases the GIL, so
the hashing runs beside the logic thread, on the other core).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from broker import Inbound

__all__ = ["ChunkHasher", "Prehashed"]

_WORKERS = 2  # the machines this targets have 2+ cores; the logic thread is the other consumer


@dataclass(frozen=True)
class Prehashed:
    """An update chunk and its SHA-256 (hex), being computed."""

    msg: Inbound
    digest: Future[str]


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def is_update_chunk(topic: str) -> bool:
    """A cheap test (paho's thread) for an edge's update chunk: ``.../updates/<node>/<transfer>/chunks/<i>``.
    A false positive only costs a hash: the logic thread parses the topic and uses the digest for update chunks."""
    return "/updates/" in topic and "/chunks/" in topic


class ChunkHasher:
    """The session's inbox in front of the service's event loop."""

    def __init__(self, emit: Callable[[Inbound | Prehashed], None]) -> None:
        self._emit = emit
        self._pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="chunk-hash")

    def put_nowait(self, item: Inbound, /) -> None:
        if item.payload and is_update_chunk(item.topic):
            try:
                self._emit(Prehashed(item, self._pool.submit(_sha256, item.payload)))
                return
            except RuntimeError:  # the pool is shut down (the service is stopping): hashed where it is used
                pass
        self._emit(item)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

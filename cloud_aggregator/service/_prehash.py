"""Update chunks hashed as they arrive, on two hashing threads, before the logic thread takes them.

Every update chunk is hashed once (`_inbound.route_transfer`: the digest goes to the residency ledger and to
the assembler). At 100 edges x 1.7 MB that was 170 MB of SHA-256 a round on the logic thread. The session's
inbox is this `ChunkHasher`: on paho's thread it only hands the chunk to the hashing threads and queues the
message, with its digest's `runtime.Pending`, for the logic thread, in arrival order (hashlib releases
the GIL, so the hashing runs beside the logic thread, on the other core).

The hand-off is `runtime.WorkThreads` (a queue put and one plain lock), not a `ThreadPoolExecutor`, whose
``submit`` cost paho's thread 18 % of its GIL time at 100 edges (issue 12).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from broker import Inbound
from runtime import Pending, WorkThreads

__all__ = ["ChunkHasher", "Prehashed"]

_WORKERS = 2  # the machines this targets have 2+ cores; the logic thread is the other consumer


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True)
class Prehashed:
    """An update chunk and its SHA-256 (hex), being computed."""

    msg: Inbound
    digest: Pending[str]


def is_update_chunk(topic: str) -> bool:
    """A cheap test (paho's thread) for an edge's update chunk: ``.../updates/<node>/<transfer>/chunks/<i>``.
    A false positive only costs a hash: the logic thread parses the topic and uses the digest for update chunks."""
    return "/updates/" in topic and "/chunks/" in topic


class ChunkHasher:
    """The session's inbox in front of the service's event loop."""

    def __init__(self, emit: Callable[[Inbound | Prehashed], None]) -> None:
        self._emit = emit
        self._hashers = WorkThreads("chunk-hash", _WORKERS)

    def put_nowait(self, item: Inbound, /) -> None:
        if item.payload and is_update_chunk(item.topic):
            try:
                digest = self._hashers.submit(partial(_sha256, item.payload))
            except RuntimeError:  # closed (the service is stopping): hashed where it is used
                pass
            else:
                self._emit(Prehashed(item, digest))
                return
        self._emit(item)

    def close(self) -> None:
        """Later chunks go to the logic thread unhashed; one handed over before is still hashed (the logic
        thread may wait for it)."""
        self._hashers.close()

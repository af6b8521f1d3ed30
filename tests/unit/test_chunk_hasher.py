"""cloud_aggregator.service.ChunkHasher: the session's inbox hands each update chunk to two hashing threads and
passes it on at once, in arrival order, with its digest; a digest is always delivered (also for chunks handed
over just before `close`); after `close` chunks pass unhashed."""

from __future__ import annotations

import hashlib
import os
import threading

from broker import Inbound
from cloud_aggregator.service import ChunkHasher, Prehashed

CHUNK = "fl/federatedlearningjobs/j/updates/edge{0}/abcd{0:04x}/chunks/{1}"


def inbound(topic: str, payload: bytes) -> Inbound:
    return Inbound(topic=topic, payload=payload, retain=False, dup=False, qos=1, mid=0)


def test_chunks_pass_in_order_with_their_digests_and_the_rest_as_they_came() -> None:
    got: list[Inbound | Prehashed] = []
    hasher = ChunkHasher(got.append)
    sent = []
    for i in range(200):
        payload = os.urandom(1 + (i * 7919) % 70_000)
        msg = inbound(CHUNK.format(i % 5, i), payload)
        sent.append(msg)
        hasher.put_nowait(msg)
        status = inbound("fl/federatedlearningjobs/j/workers/edge1/status", b"{}")
        sent.append(status)
        hasher.put_nowait(status)
    hasher.close()
    assert [e.msg if isinstance(e, Prehashed) else e for e in got] == sent
    chunks = [e for e in got if isinstance(e, Prehashed)]
    assert len(chunks) == 200
    assert all(e.digest.result() == hashlib.sha256(e.msg.payload).hexdigest() for e in chunks)


def test_chunks_handed_over_before_close_are_hashed_and_later_ones_pass_unhashed() -> None:
    got: list[Inbound | Prehashed] = []
    hasher = ChunkHasher(got.append)
    payload = os.urandom(4 << 20)  # long enough that close() comes while they are being hashed
    for i in range(8):
        hasher.put_nowait(inbound(CHUNK.format(1, i), payload))
    hasher.close()
    hasher.put_nowait(inbound(CHUNK.format(1, 8), payload))
    hasher.close()  # twice: nothing more happens
    assert [type(e) for e in got] == [Prehashed] * 8 + [Inbound]
    results: list[str] = []
    waiter = threading.Thread(target=lambda: results.extend(e.digest.result() for e in got[:8]))  # type: ignore[union-attr]
    waiter.start()
    waiter.join(30.0)
    assert not waiter.is_alive(), "a digest handed over before close was never computed"
    assert results == [hashlib.sha256(payload).hexdigest()] * 8


def test_an_empty_payload_is_not_hashed() -> None:
    got: list[Inbound | Prehashed] = []
    hasher = ChunkHasher(got.append)
    hasher.put_nowait(inbound(CHUNK.format(1, 0), b""))
    hasher.close()
    assert [type(e) for e in got] == [Inbound]

"""Chunked transfer through a real Mosquitto, and the Assembler's ordering, verification and memory rules."""

from __future__ import annotations

import math
import os
import queue
import random

import pytest

from broker import (
    Assembler,
    BlobSender,
    CompletedTransfer,
    Inbound,
    Session,
    TransferError,
    chunk_index,
    manifest_from_payload,
    new_transfer_id,
    transfer_key,
)
from schemas import Topics, TransferManifest, TransferOrigin, WireError
from tests.helpers.manifests import chunks_of, reference_manifest
from tests.helpers.mqtt import SessionFactory, take_all

T = Topics("fltest")
JOB, UID = "surface-defect", "uid-1"


def receive(session: Session, inbox: queue.Queue[Inbound], asm: Assembler, timeout: float = 10.0) -> CompletedTransfer:
    """Feed inbox messages to the Assembler (acking each) until one transfer completes."""
    while True:
        msg = inbox.get(timeout=timeout)
        index = chunk_index(msg.topic)
        key = transfer_key(msg.topic)
        if index is None:
            done = asm.add_manifest(key, manifest_from_payload(msg.payload))
        else:
            done = asm.add_chunk(key, index, msg.payload)
        session.ack(msg)
        if done is not None:
            return done


def send_update(session: Session, blob: bytes, transfer: str, *, chunk_size: int, window: int = 16) -> TransferManifest:
    return BlobSender(session, chunk_size=chunk_size, window=window).send(
        T.update_manifest(JOB, 1, "edge1", transfer),
        lambda i: T.update_chunk(JOB, 1, "edge1", transfer, i),
        blob,
        TransferOrigin("update", JOB, UID, 1, "edge1", 10),
        transfer=transfer,
        timeout=10.0,
    )


def make_manifest(blob: bytes, chunk_size: int) -> tuple[TransferManifest, list[bytes]]:
    manifest = reference_manifest(blob, chunk_size, transfer=new_transfer_id(), job=JOB, uid=UID)
    return manifest, chunks_of(blob, chunk_size)


@pytest.mark.parametrize("broker", [{"max_packet_size": 32768}], indirect=True)
def test_blob_larger_than_the_packet_limit_is_chunked_and_verified(session_factory: SessionFactory) -> None:
    """A blob several times the broker's max_packet_size arrives whole, in chunks that fit the limit."""
    agg, inbox = session_factory("aggregator")
    agg.subscribe(T.all_updates())
    agg.barrier(5.0)
    edge, _ = session_factory("edge1")
    blob = os.urandom(200_000)
    transfer = new_transfer_id()

    manifest = send_update(edge, blob, transfer, chunk_size=512 * 1024, window=4)

    assert manifest.chunk_size <= edge.max_payload < 32768
    assert manifest.chunks == math.ceil(len(blob) / manifest.chunk_size) >= 6
    done = receive(agg, inbox, Assembler())
    assert done.blob == blob
    assert done.manifest == manifest
    assert done.key == T.update_manifest(JOB, 1, "edge1", transfer).removesuffix("/manifest")


@pytest.mark.parametrize("order", ["chunks-first", "manifest-first", "shuffled"])
def test_assembler_accepts_manifest_and_chunks_in_any_order(order: str) -> None:
    """The Assembler completes a transfer whatever the order of its manifest and chunks."""
    blob = os.urandom(10_000)
    manifest, chunks = make_manifest(blob, 1000)
    items: list[tuple[int | None, bytes]] = [(i, c) for i, c in enumerate(chunks)]
    if order == "manifest-first":
        items.insert(0, (None, b""))
    elif order == "chunks-first":
        items.append((None, b""))
    else:
        items.append((None, b""))
        random.Random(7).shuffle(items)
    asm = Assembler()

    results = [asm.add_manifest("k", manifest) if i is None else asm.add_chunk("k", i, c) for i, c in items]

    assert [r is not None for r in results] == [False] * (len(items) - 1) + [True]
    assert results[-1] is not None and results[-1].blob == blob
    assert asm.pending == [] and asm.buffered_bytes == 0


def test_stale_chunk_is_ignored_and_the_right_one_completes_the_transfer(session_factory: SessionFactory) -> None:
    """A chunk whose hash does not match the manifest (stale or corrupt) is dropped; the right chunk completes the transfer."""
    agg, inbox = session_factory("aggregator")
    agg.subscribe(T.all_updates())
    agg.barrier(5.0)
    edge, _ = session_factory("edge1")
    blob = os.urandom(5000)
    transfer = new_transfer_id()
    edge.publish(T.update_chunk(JOB, 1, "edge1", transfer, 1), b"stale chunk bytes").wait(5.0)

    send_update(edge, blob, transfer, chunk_size=2000)

    assert receive(agg, inbox, Assembler()).blob == blob


def test_corrupt_chunk_after_the_manifest_waits_for_the_right_one() -> None:
    """With the manifest known, a corrupt chunk is dropped at once and the transfer completes when the right one comes."""
    blob = os.urandom(3000)
    manifest, chunks = make_manifest(blob, 1000)
    asm = Assembler()
    asm.add_manifest("k", manifest)
    asm.add_chunk("k", 0, chunks[0])
    asm.add_chunk("k", 2, chunks[2])

    assert asm.add_chunk("k", 1, b"\x00" * 1000) is None
    assert asm.missing("k") == [1]
    done = asm.add_chunk("k", 1, chunks[1])

    assert done is not None and done.blob == blob


def test_retained_global_transfer_reaches_a_late_subscriber(session_factory: SessionFactory) -> None:
    """A global model sent with retain=True is assembled by an edge that subscribes afterwards."""
    agg, _ = session_factory("aggregator")
    blob = os.urandom(50_000)
    BlobSender(agg, chunk_size=8192).send(
        T.global_manifest(JOB, 3),
        lambda i: T.global_chunk(JOB, 3, i),
        blob,
        TransferOrigin("global", JOB, UID, 3, "cloud0", 20),
        retain=True,
        timeout=10.0,
    )
    edge, inbox = session_factory("edge1")

    edge.subscribe(T.job_globals(JOB))
    edge.barrier(5.0)

    done = receive(edge, inbox, Assembler(), timeout=0.1)  # everything is already in the inbox
    assert done.blob == blob and done.manifest.kind == "global" and done.manifest.round == 3


def test_clear_removes_a_retained_transfer(session_factory: SessionFactory) -> None:
    """After clear(), a late subscriber receives neither the manifest nor any chunk."""
    agg, _ = session_factory("aggregator")
    sender = BlobSender(agg, chunk_size=4096)
    manifest = sender.send(
        T.global_manifest(JOB, 1),
        lambda i: T.global_chunk(JOB, 1, i),
        os.urandom(20_000),
        TransferOrigin("global", JOB, UID, 1, "cloud0", 1),
        retain=True,
        timeout=10.0,
    )

    sender.clear(T.global_manifest(JOB, 1), lambda i: T.global_chunk(JOB, 1, i), manifest.chunks, timeout=5.0)

    edge, inbox = session_factory("edge1")
    edge.subscribe(T.job_globals(JOB))
    edge.barrier(5.0)
    assert take_all(inbox) == []


def test_assembler_evicts_the_oldest_incomplete_transfer_to_bound_memory() -> None:
    """Beyond max_bytes the oldest incomplete transfer is dropped; the newest one still completes."""
    old_blob, new_blob = os.urandom(3000), os.urandom(3000)
    old_manifest, old_chunks = make_manifest(old_blob, 1000)
    new_manifest, new_chunks = make_manifest(new_blob, 1000)
    asm = Assembler(max_bytes=3500)
    asm.add_manifest("old", old_manifest)
    asm.add_chunk("old", 0, old_chunks[0])
    asm.add_chunk("old", 1, old_chunks[1])
    asm.add_manifest("new", new_manifest)
    asm.add_chunk("new", 0, new_chunks[0])
    asm.add_chunk("new", 1, new_chunks[1])

    done = asm.add_chunk("new", 2, new_chunks[2])

    assert asm.pending == []
    assert done is not None and done.blob == new_blob
    assert asm.add_chunk("old", 2, old_chunks[2]) is None  # its earlier chunks are gone


def test_duplicates_of_a_completed_transfer_are_ignored() -> None:
    """A redelivered manifest or chunk of a completed transfer neither completes it again nor stays buffered."""
    manifest, chunks = make_manifest(os.urandom(2000), 1000)
    asm = Assembler()
    asm.add_manifest("k", manifest)
    asm.add_chunk("k", 0, chunks[0])
    assert asm.add_chunk("k", 1, chunks[1]) is not None

    assert asm.add_chunk("k", 0, chunks[0]) is None
    assert asm.add_manifest("k", manifest) is None
    assert asm.pending == [] and asm.buffered_bytes == 0


def test_inconsistent_manifest_is_rejected() -> None:
    """A manifest whose chunk count does not match its sizes raises WireError (payload) or TransferError (Assembler)."""
    manifest, _ = make_manifest(os.urandom(2000), 1000)
    bad = manifest.model_copy(update={"chunks": 3})

    with pytest.raises(WireError, match="chunks is 3"):
        manifest_from_payload(bad.to_json())
    with pytest.raises(TransferError, match="chunks is 3"):
        Assembler().add_manifest("k", bad)
    with pytest.raises(WireError, match="not a valid TransferManifest"):
        manifest_from_payload(b'{"transfer": "zz"}')


def test_transfer_key_names_the_topic_prefix() -> None:
    """transfer_key() strips /manifest or /chunks/<i>; chunk_index() returns the index."""
    topic = T.update_chunk(JOB, 2, "edge1", "abcdef0123", 7)

    assert transfer_key(topic) == T.update_manifest(JOB, 2, "edge1", "abcdef0123").removesuffix("/manifest")
    assert chunk_index(topic) == 7
    assert chunk_index(T.global_manifest(JOB, 2)) is None


def test_resend_publishes_exactly_the_missing_chunks_then_the_same_manifest(session_factory: SessionFactory) -> None:
    """prepare + resend(indices): only the named chunks go out again, then the very same manifest; the
    receiver that lost them completes the transfer with the same transfer id."""
    agg, inbox = session_factory("aggregator")
    agg.subscribe(T.all_updates())
    agg.barrier(5.0)
    edge, _ = session_factory("edge1")
    sender = BlobSender(edge, chunk_size=1000, window=4)
    blob = os.urandom(5500)
    transfer = new_transfer_id()
    manifest = sender.prepare(blob, TransferOrigin("update", JOB, UID, 1, "edge1", 10), transfer=transfer)
    manifest_topic = T.update_manifest(JOB, 1, "edge1", transfer)

    def chunk_topic(i: int) -> str:
        return T.update_chunk(JOB, 1, "edge1", transfer, i)

    assert manifest.chunks == 6 and manifest.transfer == transfer
    sender.resend(manifest_topic, chunk_topic, blob, manifest, timeout=10.0)  # indices None: everything
    first = [inbox.get(timeout=5.0) for _ in range(7)]
    asm = Assembler()
    for msg in first:  # the receiver lost chunks 2 and 5
        index = chunk_index(msg.topic)
        if index in (2, 5):
            continue
        if index is None:
            assert asm.add_manifest(transfer_key(msg.topic), manifest_from_payload(msg.payload)) is None
        else:
            assert asm.add_chunk(transfer_key(msg.topic), index, msg.payload) is None
        agg.ack(msg)
    key = transfer_key(manifest_topic)
    assert asm.missing(key) == [2, 5]

    sender.resend(manifest_topic, chunk_topic, blob, manifest, [5, 2], timeout=10.0)

    again = [inbox.get(timeout=5.0) for _ in range(3)]
    assert [chunk_index(m.topic) for m in again] == [2, 5, None]
    assert again[-1].payload == manifest.to_json()
    done = receive(agg, queue_of(again), asm)
    assert done.blob == blob and done.manifest.transfer == transfer
    sender.resend(manifest_topic, chunk_topic, blob, manifest, [], timeout=10.0)  # manifest only
    assert [chunk_index(m.topic) for m in [inbox.get(timeout=5.0)]] == [None]
    assert take_all(inbox) == []


def test_resend_refuses_a_foreign_blob_and_bad_indices(session_factory: SessionFactory) -> None:
    """resend checks that the blob is the manifest's and that every index is one of its chunks."""
    edge, _ = session_factory("edge1")
    sender = BlobSender(edge, chunk_size=1000)
    blob = os.urandom(2500)
    manifest = sender.prepare(
        blob,
        TransferOrigin("update", JOB, UID, 1, "edge1", 1),
    )
    topic = T.update_manifest(JOB, 1, "edge1", manifest.transfer)
    with pytest.raises(TransferError, match="does not match its manifest"):
        sender.resend(topic, lambda i: f"{topic}/{i}", os.urandom(2500), manifest)
    with pytest.raises(TransferError, match=r"chunk indices \[3\] out of range"):
        sender.resend(topic, lambda i: f"{topic}/{i}", blob, manifest, [0, 3])


def queue_of(messages: list[Inbound]) -> queue.Queue[Inbound]:
    q: queue.Queue[Inbound] = queue.Queue()
    for m in messages:
        q.put(m)
    return q

"""The job engine's intake of update transfers: resume requests and idempotent acks (fake port, no broker, no sleeps)."""

from __future__ import annotations

import numpy as np

from cloud_aggregator.engine import Job, Stage
from cloud_aggregator.testing import MemoryPort, chunks_of, make_transfer
from schemas import TransferManifest
from tests.unit.test_job_rounds import JOB, UID, Arrays, running, weights

CHUNK = 64  # bytes: the tiny test model travels in many chunks


def transfer(
    node: str, round_: int, arrays: Arrays, *, samples: int = 10, kind: str = "update", transfer_id: str | None = None
) -> tuple[TransferManifest, list[bytes]]:
    manifest, blob = make_transfer(
        arrays,
        kind=kind,  # type: ignore[arg-type]
        job=JOB,
        uid=UID,
        round_=round_,
        sender=node,
        num_samples=samples,
        chunk_size=CHUNK,
        transfer=transfer_id,
    )
    return manifest, chunks_of(manifest, blob)


def send(
    job: Job, node: str, manifest: TransferManifest, chunks: list[bytes], now_s: float, *, skip: set[int] | None = None
) -> None:
    """Chunks first (minus `skip`), then the manifest, as an edge's BlobSender does."""
    for i, data in enumerate(chunks):
        if skip is None or i not in skip:
            job.on_update_chunk(node, manifest.round, manifest.transfer, i, data, now_s=now_s)
    job.on_update_manifest(node, manifest.round, manifest, now_s)


def training(port: MemoryPort) -> Job:
    job = running(port)
    manifest, chunks = transfer("edge1", 0, weights(0.0), kind="init")
    send(job, "edge1", manifest, chunks, 0.2)
    assert job.stage is Stage.TRAINING and job.round == 1
    return job


def test_chunks_then_manifest_are_assembled_stored_and_acknowledged() -> None:
    """A complete transfer through the intake is stored, folded and acknowledged as stored."""
    port = MemoryPort()
    job = training(port)
    manifest, chunks = transfer("edge1", 1, weights(1.0))
    assert len(chunks) > 3

    send(job, "edge1", manifest, chunks, 1.0)

    ack = port.acks_for("edge1")[-1]
    assert ack.transfer == manifest.transfer and ack.accepted and ack.missing == []
    assert [(e.node, e.transfer) for e in port.spooled_updates(JOB, 1)] == [("edge1", manifest.transfer)]


def test_stalled_transfer_gets_a_resume_request_after_resume_after() -> None:
    """No progress for resume_after seconds: UpdateAck(accepted=false, missing=[exactly the absent chunks])."""
    port = MemoryPort()
    job = training(port)
    manifest, chunks = transfer("edge1", 1, weights(1.0))
    send(job, "edge1", manifest, chunks, 10.0, skip={1, 3})
    acks = len(port.acks)

    job.tick(12.9)
    assert len(port.acks) == acks  # not yet: 3 s without progress

    job.tick(13.0)
    ack = port.acks[-1]
    assert ack.node == "edge1" and not ack.accepted and ack.missing == [1, 3] and "2 of" in ack.reason

    job.on_update_chunk("edge1", 1, manifest.transfer, 1, chunks[1], now_s=14.0)
    job.tick(16.5)
    assert len(port.acks) == acks + 1  # progress re-armed the timer
    job.tick(17.0)
    assert port.acks[-1].missing == [3]

    job.on_update_chunk("edge1", 1, manifest.transfer, 3, chunks[3], now_s=18.0)
    assert port.acks[-1].accepted and port.acks[-1].transfer == manifest.transfer
    job.tick(100.0)
    assert port.acks[-1].accepted  # nothing pending any more


def test_resume_requests_back_off_while_nothing_arrives() -> None:
    """Without progress the requests repeat at growing intervals (3, 6, 12 s...), not every tick."""
    port = MemoryPort()
    job = training(port)
    manifest, chunks = transfer("edge1", 1, weights(1.0))
    send(job, "edge1", manifest, chunks, 0.0, skip={0})
    times = []
    for step in range(0, 400):
        now_s = step * 0.1
        before = len(port.acks)
        job.tick(now_s)
        if len(port.acks) > before:
            times.append(round(now_s, 1))
    assert times == [3.0, 6.0, 12.0, 24.0]


def test_manifest_again_for_an_incomplete_transfer_is_answered_with_the_missing_chunks() -> None:
    """A re-sent manifest (the edge's ack timeout) is a resume request answered at once."""
    port = MemoryPort()
    job = training(port)
    manifest, chunks = transfer("edge1", 1, weights(1.0))
    send(job, "edge1", manifest, chunks, 1.0, skip={0, 2})

    job.on_update_manifest("edge1", 1, manifest, 1.5)

    ack = port.acks[-1]
    assert not ack.accepted and ack.missing == [0, 2]
    for i in (0, 2):
        job.on_update_chunk("edge1", 1, manifest.transfer, i, chunks[i], now_s=2.0)
    assert port.acks[-1].accepted


def test_manifest_without_any_chunk_asks_for_all_of_them() -> None:
    """After an aggregator restart the edge republishes only the manifest: every chunk is asked for."""
    port = MemoryPort()
    job = training(port)
    manifest, chunks = transfer("edge1", 1, weights(1.0))

    job.on_update_manifest("edge1", 1, manifest, 5.0)
    job.on_update_manifest("edge1", 1, manifest, 5.1)

    assert port.acks[-1].missing == list(range(len(chunks)))


def test_manifest_of_a_stored_transfer_is_acknowledged_again_and_never_folded_twice() -> None:
    """An ack lost on the way: the edge re-sends the manifest (and even the chunks); it is told 'already stored'."""
    port = MemoryPort()
    job = training(port)
    manifest, chunks = transfer("edge1", 1, weights(1.0), samples=10)
    send(job, "edge1", manifest, chunks, 1.0)

    job.on_update_manifest("edge1", 1, manifest, 2.0)
    ack = port.acks[-1]
    assert ack.accepted and ack.reason == "already stored" and ack.transfer == manifest.transfer
    send(job, "edge1", manifest, chunks, 3.0)  # a full replay
    assert port.acks[-1].accepted

    other, other_chunks = transfer("edge2", 1, weights(4.0), samples=10)
    send(job, "edge2", other, other_chunks, 4.0)
    # (1*10 + 4*10) / 20: edge1 counted once
    np.testing.assert_allclose(port.published_globals[-1].arrays[0], np.full((3, 2), 2.5))
    assert len(port.spooled_updates(JOB, 1)) == 0  # the round is checkpointed: spool dropped


def test_manifest_of_a_counted_round_is_acknowledged_after_the_round_closed() -> None:
    """The round closed while the ack was lost: the edge's re-sent manifest still gets accepted=true."""
    port = MemoryPort()
    job = training(port)
    first, first_chunks = transfer("edge1", 1, weights(1.0))
    send(job, "edge1", first, first_chunks, 1.0)
    second, second_chunks = transfer("edge2", 1, weights(1.0))
    send(job, "edge2", second, second_chunks, 1.0)
    assert job.round == 2

    job.on_update_manifest("edge1", 1, first, 5.0)

    ack = port.acks[-1]
    assert ack.accepted and ack.reason == "already stored"


def test_update_for_a_closed_round_that_was_not_counted_is_refused_for_good() -> None:
    """Refused without `missing`: the edge drops it; the same answer comes back if it asks again."""
    port = MemoryPort()
    job = training(port)
    for node in ("edge1", "edge2"):
        manifest, chunks = transfer(node, 1, weights(1.0))
        send(job, node, manifest, chunks, 1.0)
    late, late_chunks = transfer("edge1", 1, weights(9.0), transfer_id="ab" * 8)

    send(job, "edge1", late, late_chunks, 2.0)
    job.on_update_manifest("edge1", 1, late, 3.0)

    for ack in port.acks[-2:]:
        assert not ack.accepted and ack.missing == [] and "round 1 is closed" in ack.reason


def test_incomplete_transfers_of_a_closed_round_are_dropped() -> None:
    """No resume requests for a round that closed: the round moved on."""
    port = MemoryPort()
    job = training(port)
    stalled, stalled_chunks = transfer("edge1", 1, weights(1.0), transfer_id="cd" * 8)
    send(job, "edge1", stalled, stalled_chunks, 1.0, skip={0})
    done, done_chunks = transfer("edge1", 1, weights(1.0))  # a retry with a new transfer id
    send(job, "edge1", done, done_chunks, 1.5)
    other, other_chunks = transfer("edge2", 1, weights(1.0))
    send(job, "edge2", other, other_chunks, 1.5)
    assert job.round == 2
    acks = len(port.acks)

    job.tick(60.0)

    assert len(port.acks) == acks


def test_update_not_stored_is_not_acknowledged_and_can_come_again() -> None:
    """A store failure: no accepted ack, nothing folded; the edge's next manifest brings it in."""
    from cloud_aggregator import StateError

    port = MemoryPort()
    job = training(port)
    manifest, chunks = transfer("edge1", 1, weights(1.0))
    port.fail_store = StateError("disk full")
    send(job, "edge1", manifest, chunks, 1.0)
    assert not any(a.accepted for a in port.acks_for("edge1") if a.round == 1)
    assert any(e.reason == "UpdateNotStored" for e in port.job_status(JOB).events)

    port.fail_store = None
    job.on_update_manifest("edge1", 1, manifest, 2.0)
    assert port.acks[-1].missing == list(range(len(chunks)))
    for i, data in enumerate(chunks):
        job.on_update_chunk("edge1", 1, manifest.transfer, i, data, now_s=2.5)
    assert port.acks[-1].accepted and port.acks[-1].transfer == manifest.transfer

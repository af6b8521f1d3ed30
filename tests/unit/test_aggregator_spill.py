"""Bounded memory for many concurrent uploads: the intake keeps `JobSettings.transfer_memory` of in-flight
chunks in memory and spills the other transfers to disk; the round's model is the same bit for bit."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from cloud_aggregator import StateError
from cloud_aggregator.engine import JobSettings
from cloud_aggregator.service import StateStore
from cloud_aggregator.testing import MemoryPort
from schemas import TransferManifest, weights_digest
from tests.helpers.fleet import DiskPort, fleet_job, random_model, resend_missing, send_interleaved, upload

SIZES = [3000, 17, 500]  # about 14 kB a model


def _round_one(port: MemoryPort, edges: int, *, memory: int, chunk: int, seed: int = 1) -> tuple[str, int]:
    """Round 1 of `edges` concurrent uploads; the digest of the published round-1 model and the chunks resent."""
    rng = np.random.default_rng(seed)
    job = fleet_job(port, edges, random_model(rng, SIZES), settings=JobSettings(transfer_memory=memory))
    uploads = {
        f"edge{i}": upload(f"edge{i}", random_model(rng, SIZES), chunk_size=chunk, samples=i)
        for i in range(1, edges + 1)
    }
    send_interleaved(job, uploads, 1.0)
    resent = resend_missing(job, port, uploads, 2.0)
    assert job.round == 2, [a.reason for a in port.acks if not a.accepted]
    assert [g.round for g in port.published_globals] == [0, 1]
    return weights_digest(port.published_globals[-1].arrays), resent


def test_spilled_uploads_make_the_same_model_as_uploads_in_memory() -> None:
    in_memory = MemoryPort()
    want, resent = _round_one(in_memory, 5, memory=64 * 1024 * 1024, chunk=1024)
    assert resent == 0 and in_memory.spills == []

    spilling = MemoryPort()
    got, resent = _round_one(spilling, 5, memory=8 * 1024, chunk=1024)  # room for about half an upload
    assert got == want
    assert spilling.spills and all(s.deleted for s in spilling.spills)  # every spill file went away
    assert resent == 0  # a transfer's chunks in memory stay there: its end on disk is fed back at its manifest


def test_an_upload_announced_larger_than_the_budget_goes_to_disk_from_its_first_chunk() -> None:
    """Manifest first (as a sender may do): the transfer is spilled at once and nothing is asked for again."""
    port = MemoryPort()
    rng = np.random.default_rng(4)
    job = fleet_job(port, 2, random_model(rng, SIZES), settings=JobSettings(transfer_memory=4096))
    manifest, chunks = upload("edge1", random_model(rng, SIZES), chunk_size=1000)
    job.on_update_manifest("edge1", 1, manifest, 1.0)
    for i, data in enumerate(chunks):
        job.on_update_chunk("edge1", 1, manifest.transfer, i, data, now_s=1.0)
    assert port.acks[-1].accepted and port.acks[-1].reason == "stored"
    assert len(port.spills) == 1 and port.spills[0].deleted
    assert not any(a.missing for a in port.acks)


def _ten_uploads_peak(tmp_path: Path, budget: int) -> tuple[float, int]:
    """Ten uploads of 1.2 MB in flight at once into an open round that already holds its accumulator (an
    eleventh edge's update folded before): the intake's tracemalloc peak, in blobs; and how many were stored."""
    edges, sizes = 10, [300_000]
    port = DiskPort(tmp_path)
    rng = np.random.default_rng(9)
    initial = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    job = fleet_job(port, edges + 2, initial, settings=JobSettings(transfer_memory=budget))
    job.on_update(f"edge{edges + 1}", 1, *_blob_of(upload(f"edge{edges + 1}", initial, chunk_size=1 << 20)))
    uploads = {
        f"edge{i}": upload(f"edge{i}", [rng.standard_normal(n).astype(np.float32) for n in sizes], chunk_size=64 * 1024)
        for i in range(1, edges + 1)
    }
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        send_interleaved(job, uploads, 1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not list((tmp_path / "state").glob("*/inflight/*"))
    stored = sum(1 for a in port.acks if a.accepted and a.reason == "stored") - 1
    return (peak - base) / (4 * sum(sizes)), stored


def _blob_of(sent: tuple[TransferManifest, list[bytes]]) -> tuple[TransferManifest, bytes]:
    return sent[0], b"".join(sent[1])


def test_ten_concurrent_uploads_hold_the_budget_and_one_completing_blob(tmp_path: Path) -> None:
    """With a 256 kB budget the intake's peak is the budget plus the completing transfer (its chunks and the
    joined blob: 2 blobs), not ten blobs as when everything stays in memory."""
    spilling, stored = _ten_uploads_peak(tmp_path / "spill", 256 * 1024)
    assert stored == 10
    assert spilling < 2.0 + 256 * 1024 / 1.2e6 + 0.3, spilling
    in_memory, stored = _ten_uploads_peak(tmp_path / "memory", 64 * 1024 * 1024)
    assert stored == 10 and in_memory > 9.0, in_memory  # what the budget saves


def test_a_chunk_lost_on_the_way_is_asked_for_and_completes_a_spilled_transfer() -> None:
    """Mixed transfers (their first chunks in memory, the rest on disk) with one chunk missing each: the
    resume timer asks for exactly that chunk, and the transfer completes when it comes."""
    port = MemoryPort()
    rng = np.random.default_rng(6)
    settings = JobSettings(transfer_memory=6 * 1024, resume_after=5.0)
    job = fleet_job(port, 2, random_model(rng, SIZES), settings=settings)
    uploads = {n: upload(n, random_model(rng, SIZES), chunk_size=1024) for n in ("edge1", "edge2")}
    lost = {"edge1": 2, "edge2": 11}  # one in memory, one past the budget
    for i in range(len(uploads["edge1"][1])):
        for node, (manifest, chunks) in uploads.items():
            if i != lost[node]:
                job.on_update_chunk(node, 1, manifest.transfer, i, chunks[i], now_s=1.0)
    for node, (manifest, _) in uploads.items():
        job.on_update_manifest(node, 1, manifest, 1.0)
    assert port.spills and not any(a.accepted for a in port.acks if a.round == 1)
    job.tick(7.0)
    asked = {a.node: a.missing for a in port.acks if a.missing}
    assert asked == {"edge1": [2], "edge2": [11]}
    assert resend_missing(job, port, uploads, 8.0) == 2
    assert job.round == 2 and all(s.deleted for s in port.spills)


def test_the_state_store_spills_to_files_that_go_away(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    spill = store.open_spill("job-a")
    spill.append(b"abc")
    spill.append(b"defg")
    assert spill.read(2, 3) == b"cde" and spill.path.parent == tmp_path / "state" / "job-a" / "inflight"
    spill.delete()
    assert not spill.path.exists()
    with pytest.raises(StateError):
        spill.read(0, 1)
    left = store.open_spill("job-b")  # a transfer in flight when the service stopped
    left.append(b"x")
    store.clear_spills()
    assert not left.path.exists()


def test_a_spilled_update_that_could_not_be_stored_is_taken_again() -> None:
    """The store fails (not acknowledged); the edge sends the manifest again; the chunks it is asked for
    are not taken for duplicates of the transfer completed before, and the update is stored."""
    port = MemoryPort()
    rng = np.random.default_rng(8)
    job = fleet_job(port, 2, random_model(rng, SIZES), settings=JobSettings(transfer_memory=1024))
    manifest, chunks = upload("edge1", random_model(rng, SIZES), chunk_size=1000)
    port.fail_store = StateError("disk full")
    job.on_update_manifest("edge1", 1, manifest, 1.0)  # manifest first: the transfer goes to disk
    for i, data in enumerate(chunks):
        job.on_update_chunk("edge1", 1, manifest.transfer, i, data, now_s=1.0)
    assert not any(a.accepted for a in port.acks if a.round == 1)
    port.fail_store = None
    job.on_update_manifest("edge1", 1, manifest, 10.0)
    job.tick(20.0)
    asked = [a for a in port.acks if a.missing]
    assert asked and sorted(asked[-1].missing) == list(range(len(chunks)))
    for i in asked[-1].missing:
        job.on_update_chunk("edge1", 1, manifest.transfer, i, chunks[i], now_s=21.0)
    assert port.acks[-1].accepted and port.acks[-1].reason == "stored"

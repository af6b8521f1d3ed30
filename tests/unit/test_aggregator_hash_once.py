"""What keeps the aggregator's per-update path cheap at 100 edges (issue 12): each received chunk hashed once (for the
residency ledger and the assembler together), the blob handed on as the assembler's view (no copy), an unused init
not decoded, a closed round's spool deleted off the logic thread, ledger files kept open (no broker, no sleeps)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker import Assembler
from cloud_aggregator.service import StateStore
from cloud_aggregator.testing import MemoryPort, chunks_of, make_transfer
from runtime import Ledger
from schemas import LedgerEntry, Topics
from tests.unit.test_aggregator_intake import send, training, transfer
from tests.unit.test_job_rounds import JOB, UID, weights

T = Topics("fl")


class _CountingSha256:
    """hashlib.sha256 that counts the calls given data of one length (a chunk's)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.calls = 0
        self._real = hashlib.sha256

    def __call__(self, data: Any = b"", **kwargs: Any) -> Any:
        if len(data) == self.length:
            self.calls += 1
        return self._real(data, **kwargs)


def test_the_assembler_takes_a_chunk_digest_computed_before_and_does_not_hash_the_chunk_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest, blob = make_transfer(
        weights(1.0), kind="update", job=JOB, uid=UID, round_=1, sender="edge1", num_samples=10, chunk_size=16
    )
    chunks = chunks_of(manifest, blob)
    digests = [hashlib.sha256(c).hexdigest() for c in chunks]
    counting = _CountingSha256(16)
    monkeypatch.setattr(hashlib, "sha256", counting)
    asm: Assembler[str] = Assembler()
    done = None
    for i, (chunk, digest) in enumerate(zip(chunks, digests, strict=True)):
        done = asm.add_chunk("k", i, chunk, digest=digest) or done
    done = asm.add_manifest("k", manifest) or done
    assert done is not None and bytes(done.view) == blob
    assert counting.calls == 0  # the whole blob's hash is fed chunk by chunk (update), never a chunk's own


def test_a_digest_handed_in_is_what_the_assembler_checks() -> None:
    """The given digest is trusted as the chunk's: a wrong one drops the (correct) chunk, so it was not recomputed."""
    manifest, blob = make_transfer(
        weights(1.0), kind="update", job=JOB, uid=UID, round_=1, sender="edge1", num_samples=10, chunk_size=16
    )
    chunks = chunks_of(manifest, blob)
    asm: Assembler[str] = Assembler()
    asm.add_manifest("k", manifest)
    assert asm.add_chunk("k", 0, chunks[0], digest="0" * 64) is None
    assert asm.missing("k") == list(range(manifest.chunks))


def test_the_ledger_records_the_digest_it_is_given_without_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = b"x" * 1000
    digest = hashlib.sha256(chunk).hexdigest()
    ledger = Ledger(tmp_path, "cloud0", T, lambda _job: UID)
    counting = _CountingSha256(len(chunk))
    monkeypatch.setattr(hashlib, "sha256", counting)
    topic = T.update_chunk(JOB, 1, "edge1", "deadbeefdeadbeef", 0)
    ledger.received(topic, chunk, job=JOB, uid=UID, node="edge1", sha256=digest, parsed=T.parse(topic))
    ledger.close()
    (line,) = ledger.path(JOB).read_text().splitlines()
    entry = LedgerEntry.model_validate_json(line)
    assert (entry.sha256, entry.bytes, entry.chunk, counting.calls) == (digest, 1000, 0, 0)


def test_a_ledger_file_removed_while_open_is_opened_again(tmp_path: Path) -> None:
    """Ledger files stay open between lines; a deleted job's folder does not swallow the next lines."""
    ledger = Ledger(tmp_path, "cloud0", T, lambda _job: UID)
    topic = T.worker_status(JOB, "edge1")
    ledger.received(topic, b'{"round": 1}', job=JOB, uid=UID, node="edge1")
    shutil.rmtree(tmp_path / JOB)
    ledger.received(topic, b'{"round": 2}', job=JOB, uid=UID, node="edge1")
    lines = [LedgerEntry.model_validate_json(x) for x in ledger.path(JOB).read_text().splitlines()]
    assert [e.round for e in lines] == [2]
    ledger.close()


def test_a_complete_update_reaches_the_store_as_the_assemblers_view_not_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    port = MemoryPort()
    job = training(port)
    seen: list[type] = []
    store = port.store_update

    def spy(job_name: str, round_: int, node: str, transfer_id: str, blob: bytes | memoryview) -> None:
        seen.append(type(blob))
        store(job_name, round_, node, transfer_id, blob)

    monkeypatch.setattr(port, "store_update", spy)
    manifest, chunks = transfer("edge1", 1, weights(1.0))
    send(job, "edge1", manifest, chunks, 1.0)
    assert seen == [memoryview]
    assert port.acks_for("edge1")[-1].accepted


def test_an_init_after_the_round0_model_is_chosen_is_not_decoded() -> None:
    """Only its header is read (its layout matches): tensors it carries are never used, so never checked either."""
    port = MemoryPort()
    job = training(port)  # edge1's init is the round-0 model
    poisoned = [np.full_like(a, np.nan) for a in weights(2.0)]  # decoding would refuse it: non-finite values
    manifest, chunks = transfer("edge2", 0, poisoned, kind="init")
    send(job, "edge2", manifest, chunks, 0.5)
    ack = port.acks_for("edge2")[-1]
    assert ack.accepted and "already chosen" in ack.reason


def test_an_init_with_another_layout_is_still_refused_from_its_header() -> None:
    port = MemoryPort()
    job = training(port)
    manifest, chunks = transfer("edge2", 0, [np.zeros((5,), np.float32)], kind="init")
    send(job, "edge2", manifest, chunks, 0.5)
    ack = port.acks_for("edge2")[-1]
    assert not ack.accepted and "layout differs" in ack.reason


def test_a_dropped_spool_is_gone_at_once_and_deleted_in_the_background(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    for node in ("edge1", "edge2"):
        store.store_update(JOB, 1, node, "ab" * 8, b"blob")
    store.store_update(JOB, 2, "edge1", "cd" * 8, b"blob")
    spool = tmp_path / "state" / JOB / "spool"
    (spool / ".drop-0-deadbeef").mkdir()  # set aside by a process that died before deleting it
    store.drop_spool(JOB, 1)
    assert store.spooled_updates(JOB, 1) == []  # at once: the folder is no round's spool any more
    assert [u.node for u in store.spooled_updates(JOB, 2)] == ["edge1"]
    assert store.settle(timeout=30.0)
    assert sorted(p.name for p in spool.iterdir()) == ["2"]
    store.clear_state(JOB)
    assert not (tmp_path / "state" / JOB).exists()

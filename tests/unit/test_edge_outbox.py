"""The edge's outbox on disk and the logic thread's delivery bookkeeping (acks, missing chunks, timers)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from edge_trainer import OutboxError
from edge_trainer.engine import AckOutcome, Deliveries, Outbox
from schemas import TransferManifest, UpdateAck
from tests.helpers.manifests import reference_manifest

JOB, UID, NODE = "sdd", "uid-1", "edge1"


def manifest_for(
    blob: bytes, *, round_: int = 1, uid: str = UID, chunk_size: int = 100, transfer: str = ""
) -> TransferManifest:
    return reference_manifest(
        blob,
        chunk_size,
        transfer=transfer or os.urandom(8).hex(),
        kind="update" if round_ else "init",
        job=JOB,
        uid=uid,
        round_=round_,
        sender=NODE,
        num_samples=4,
    )


def ack(m: TransferManifest, accepted: bool, missing: list[int] | None = None, **kw: object) -> UpdateAck:
    fields: dict[str, object] = {
        "job": m.job,
        "uid": m.uid,
        "round": m.round,
        "node": NODE,
        "transfer": m.transfer,
        "accepted": accepted,
        "missing": missing or [],
    }
    fields.update(kw)
    return UpdateAck.model_validate(fields)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- disk ------------------------------------------------------------------------------------------


def test_put_writes_blob_and_manifest_and_entries_reads_them_back(tmp_path: Path) -> None:
    """An entry is ROOT/state/<job>/outbox/<transfer>.blob + .json; listing returns it, oldest round first."""
    box = Outbox(tmp_path / "state")
    blob2, blob1 = os.urandom(250), os.urandom(300)
    e2 = box.put(manifest_for(blob2, round_=2), blob2)
    e1 = box.put(manifest_for(blob1, round_=1), blob1)
    folder = tmp_path / "state" / JOB / "outbox"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{e.transfer}{suffix}" for e in (e1, e2) for suffix in (".blob", ".json")]
    )
    assert (folder / f"{e1.transfer}.json").read_bytes() == e1.manifest.to_json()
    listed = box.entries(JOB)
    assert [e.round for e in listed] == [1, 2]
    assert listed[0].manifest == e1.manifest
    assert box.read(listed[1]) == blob2


def test_leftovers_of_an_interrupted_write_are_removed(tmp_path: Path) -> None:
    """A blob without its manifest, a temporary file, or a corrupt manifest is not an entry and is deleted."""
    box = Outbox(tmp_path / "state")
    blob = os.urandom(120)
    kept = box.put(manifest_for(blob), blob)
    folder = box.folder(JOB)
    (folder / "0123456789abcdef.blob").write_bytes(b"orphan")
    (folder / ".tmp-fedcba9876543210.json").write_bytes(b"{")
    (folder / "aaaaaaaaaaaaaaaa.json").write_bytes(b"not json")
    (folder / "aaaaaaaaaaaaaaaa.blob").write_bytes(b"x")
    assert [e.transfer for e in box.entries(JOB)] == [kept.transfer]
    assert sorted(p.name for p in folder.iterdir()) == sorted([kept.blob_path.name, kept.meta_path.name])


def test_corrupt_blob_is_refused_on_read(tmp_path: Path) -> None:
    """A blob whose SHA-256 no longer matches its manifest is never sent."""
    box = Outbox(tmp_path / "state")
    blob = os.urandom(120)
    entry = box.put(manifest_for(blob), blob)
    entry.blob_path.write_bytes(b"y" * 120)
    with pytest.raises(OutboxError, match="corrupt"):
        box.read(entry)


def test_a_resend_of_some_chunks_checks_those_chunks_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resend of chunks [1] hashes chunk 1 (100 bytes), not the whole blob again; a corrupt chunk among
    those to send is refused, one that is not resent is no concern (the aggregator holds it, verified)."""
    box = Outbox(tmp_path / "state")
    blob = os.urandom(350)
    entry = box.put(manifest_for(blob), blob)
    hashed: list[int] = []
    real = hashlib.sha256

    def counting(data: bytes | memoryview = b"") -> Any:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(hashlib, "sha256", counting)
    assert box.read(entry, [1]) == blob and hashed == [100]
    assert box.read(entry, []) == blob and hashed == [100]
    assert box.read(entry) == blob and hashed == [100, 350]
    entry.blob_path.write_bytes(blob[:300] + b"z" * 50)  # chunk 3 damaged
    assert box.read(entry, [0, 1]) == blob[:300] + b"z" * 50
    with pytest.raises(OutboxError, match=r"corrupt: chunks \[2, 3\] do not match"):
        box.read(entry, [2, 3])
    entry.blob_path.write_bytes(blob[:200])  # truncated: no chunk of it is trusted
    with pytest.raises(OutboxError, match="corrupt"):
        box.read(entry, [0])


def test_remove_and_clear(tmp_path: Path) -> None:
    """remove deletes one entry; clear deletes the job's outbox."""
    box = Outbox(tmp_path / "state")
    blobs = [os.urandom(50), os.urandom(60)]
    entries = [box.put(manifest_for(b, round_=i + 1), b) for i, b in enumerate(blobs)]
    box.remove(entries[0])
    assert [e.transfer for e in box.entries(JOB)] == [entries[1].transfer]
    box.clear(JOB)
    assert box.entries(JOB) == [] and not box.folder(JOB).exists()


def test_unwritable_outbox_is_an_outbox_error(tmp_path: Path) -> None:
    """A state folder that cannot be created (a file in the way) raises OutboxError naming the round."""
    (tmp_path / "state").write_text("in the way")
    blob = os.urandom(10)
    with pytest.raises(OutboxError, match="cannot store the update of round 1"):
        Outbox(tmp_path / "state").put(manifest_for(blob), blob)


def test_delivery_record_keeps_the_newest_confirmed_round_of_the_run(tmp_path: Path) -> None:
    """mark_delivered writes ROOT/state/<job>/delivered.json (beside the outbox folder); it only moves forward
    within a run, a record of another run counts as none and is replaced, clear deletes it."""
    box = Outbox(tmp_path / "state")
    assert box.delivered_round(JOB, UID) == -1
    entries = {r: box.put(manifest_for(os.urandom(40), round_=r), os.urandom(40)) for r in (0, 1, 2)}
    box.mark_delivered(entries[0])
    assert box.delivered_round(JOB, UID) == 0
    box.mark_delivered(entries[2])
    box.mark_delivered(entries[1])  # a late confirmation of an older round lowers nothing
    assert box.delivered_round(JOB, UID) == 2
    assert box.record_path(JOB) == tmp_path / "state" / JOB / "delivered.json"
    assert box.delivered_round(JOB, "uid-2") == -1
    other = box.put(manifest_for(os.urandom(40), round_=1, uid="uid-2"), os.urandom(40))
    box.mark_delivered(other)
    assert (box.delivered_round(JOB, "uid-2"), box.delivered_round(JOB, UID)) == (1, -1)
    box.clear(JOB)
    assert box.delivered_round(JOB, "uid-2") == -1 and not box.record_path(JOB).exists()


def test_unreadable_delivery_record_is_no_delivery_and_an_unwritable_one_an_outbox_error(tmp_path: Path) -> None:
    """A damaged record means nothing was delivered (the round may be trained again: counted once); one that
    cannot be written raises OutboxError, so the service keeps the entry as its evidence."""
    box = Outbox(tmp_path / "state")
    entry = box.put(manifest_for(os.urandom(40), round_=1), os.urandom(40))
    for damaged in (b"{", b"[]", b'{"uid": "uid-1", "round": "2"}', b'{"uid": "uid-1", "round": true}'):
        box.record_path(JOB).write_bytes(damaged)
        assert box.delivered_round(JOB, UID) == -1, damaged
    box.record_path(JOB).unlink()
    box.record_path(JOB).mkdir()  # a folder in the way
    with pytest.raises(OutboxError, match="cannot record the delivery of round 1"):
        box.mark_delivered(entry)


# -- deliveries ------------------------------------------------------------------------------------


def tracked(tmp_path: Path, clock: Clock, timeout: float = 30.0) -> tuple[Deliveries, TransferManifest]:
    box = Outbox(tmp_path / "state")
    blob = os.urandom(450)
    entry = box.put(manifest_for(blob), blob)
    d = Deliveries(timeout, clock)
    d.add(entry, "run-1")
    return d, entry.manifest


def test_accepted_ack_ends_the_delivery(tmp_path: Path) -> None:
    """accepted: true -> ACCEPTED, and the entry is no longer pending."""
    d, m = tracked(tmp_path, Clock())
    assert d.rounds(JOB, UID) == {1}
    outcome, delivery = d.on_ack(ack(m, True))
    assert outcome is AckOutcome.ACCEPTED and delivery is not None and delivery.entry.transfer == m.transfer
    assert d.rounds(JOB, UID) == set() and len(d) == 0
    assert d.on_ack(ack(m, True))[0] is AckOutcome.IGNORED  # a duplicate ack


def test_refusal_without_missing_is_final(tmp_path: Path) -> None:
    """accepted: false without missing -> REFUSED, forgotten."""
    d, m = tracked(tmp_path, Clock())
    assert d.on_ack(ack(m, False, reason="round 1 is closed"))[0] is AckOutcome.REFUSED
    assert len(d) == 0


def test_missing_chunks_are_resent_unless_a_publish_is_under_way(tmp_path: Path) -> None:
    """accepted: false + missing -> BUSY while the entry is being published, RESEND with the valid indices after."""
    d, m = tracked(tmp_path, Clock())
    assert d.on_ack(ack(m, False, [1, 3]))[0] is AckOutcome.BUSY
    d.published(JOB, m.transfer, complete=True)
    outcome, delivery = d.on_ack(ack(m, False, [3, 1, 3, 99]))
    assert outcome is AckOutcome.RESEND and delivery is not None and delivery.missing == [1, 3]
    assert len(d) == 1


def test_missing_chunks_named_during_a_publish_make_the_entry_due_when_it_ends(tmp_path: Path) -> None:
    """A missing-chunks answer that comes while the entry is being published (a link cut mid-upload) is not
    lost: when that publish ends the entry is due at once, instead of after the whole ack timeout."""
    clock = Clock()
    d, m = tracked(tmp_path, clock)
    assert d.on_ack(ack(m, False, [1, 3]))[0] is AckOutcome.BUSY
    d.published(JOB, m.transfer, complete=True)
    assert [x.entry.transfer for x in d.due()] == [m.transfer]
    d.start_publish(d.due()[0])  # the manifest goes out again; no question pending now
    d.published(JOB, m.transfer, complete=True)
    assert d.due() == []


def test_acks_of_another_run_or_transfer_are_ignored(tmp_path: Path) -> None:
    """An ack with another uid, round or transfer id does not touch the entry."""
    d, m = tracked(tmp_path, Clock())
    assert d.on_ack(ack(m, True, uid="uid-old"))[0] is AckOutcome.IGNORED
    assert d.on_ack(ack(m, True, round=2))[0] is AckOutcome.IGNORED
    assert d.on_ack(ack(m, True, transfer="f" * 16))[0] is AckOutcome.IGNORED
    assert len(d) == 1


def test_ack_timer_runs_from_the_end_of_each_publish(tmp_path: Path) -> None:
    """No deadline while publishing; due ack_timeout after a publish ended; a new publish re-arms it."""
    clock = Clock()
    d, m = tracked(tmp_path, clock, timeout=30.0)
    assert d.next_deadline() is None and d.due() == []
    d.published(JOB, m.transfer, complete=True)
    assert d.next_deadline() == 130.0
    clock.now = 129.9
    assert d.due() == []
    clock.now = 130.0
    [due] = d.due()
    d.start_publish(due)
    assert d.due() == [] and d.next_deadline() is None
    clock.now = 140.0
    d.published(JOB, m.transfer, complete=False)
    assert d.next_deadline() == 170.0 and due.incomplete
    d.rearm(due)
    assert d.next_deadline() == 170.0


def test_drop_job_forgets_its_deliveries(tmp_path: Path) -> None:
    """A retired job's entries are no longer tracked."""
    d, m = tracked(tmp_path, Clock())
    [gone] = d.drop_job(JOB)
    assert gone.entry.transfer == m.transfer and len(d) == 0


def test_an_uploader_failure_reaches_the_job_instead_of_hanging_it(tmp_path: Path) -> None:
    """A bug while storing an update (here: the outbox raises something unexpected) is reported as a failed
    upload, so the job fails saying why; before, the job waited in Uploading for ever."""
    import queue

    from broker import MqttSettings, Session
    from edge_trainer.engine import UploadDone, UploadRequest
    from edge_trainer.service import UploadEvent, Uploads, UploadWiring
    from runtime import get_logger
    from schemas import Topics

    class BrokenOutbox(Outbox):
        def put(self, manifest: TransferManifest, blob: bytes) -> Any:
            raise RuntimeError("a bug in the outbox")

    events: queue.Queue[UploadEvent] = queue.Queue()
    session = Session(MqttSettings(client_id=NODE), inbox=queue.Queue())  # never started: nothing is sent
    wiring = UploadWiring(session, Topics(), NODE, events.put, {}, lambda _job: None, get_logger())
    uploads = Uploads(BrokenOutbox(tmp_path / "state"), Deliveries(30.0), wiring, upload_timeout=5.0)
    uploads.start()
    try:
        request = UploadRequest("update", JOB, UID, 1, NODE, 4, run_id="run-1", blob=b"x" * 300, chunk_size=100)
        uploads.submit(request)
        done = events.get(timeout=10.0)
    finally:
        uploads.close()

    assert isinstance(done, UploadDone)
    assert (done.job, done.run_id, done.round, done.transfer) == (JOB, "run-1", 1, None)
    assert done.error is not None and "a bug in the outbox" in done.error

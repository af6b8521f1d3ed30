"""The spool written in groups off the logic thread (`StateStore.store_updates`, `SpoolWriter`, `MqttPort`):
an update's ack never leaves before its file and folders are fsynced, whatever else the port publishes in
between; a group keeps the fold order for the restart's refold; an update that could not be stored is not
acknowledged until a checkpoint holds its round."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import cast

import pytest

from broker import Session
from cloud_aggregator.engine import Checkpoint
from cloud_aggregator.service import AggregationScripts, MqttPort, SpoolItem, SpoolWriter, StateStore
from runtime import get_logger
from schemas import JobStatus, Kind, Phase, Topics, UpdateAck

JOB = "spooljob"
UID = "u" * 8
WAIT = 10.0


class _Recorder:
    """What MqttPort asks of a session: `publish` (recorded, in order, into the shared log) and `connection`."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log
        self.connection = 1

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> object:
        self.log.append(("publish", topic))
        return object()


def _port(root: Path, log: list[tuple[str, str]], durable: threading.Event) -> MqttPort:
    return MqttPort(
        session=cast(Session, _Recorder(log)),
        topics=Topics(),
        node="cloud0",
        root=root,
        scripts=cast(AggregationScripts, None),  # never started here
        chunk_size=1024,
        publish_timeout=5.0,
        log=get_logger(component="test"),
        spool_durable=durable.set,
    )


def _ack(node: str, transfer: str, *, round_: int = 1) -> UpdateAck:
    return UpdateAck(job=JOB, uid=UID, round=round_, node=node, transfer=transfer, accepted=True, reason="stored")


def _checkpoint(closed: int) -> Checkpoint:
    return Checkpoint(
        job=JOB,
        uid=UID,
        spec_hash="h",
        closed_round=closed,
        exit_round=3,
        participants=["edge1"],
        strategy="FedAvg",
        status=JobStatus(name=JOB, uid=UID, phase=Phase.RUNNING),
    )


def test_a_group_is_listed_in_the_order_it_was_given(tmp_path: Path) -> None:
    """Written within one tick of the filesystem's clock, the group still lists (and so refolds) in order."""
    store = StateStore(tmp_path)
    nodes = [f"edge{i:02d}" for i in range(20, 0, -1)]  # names sort the other way round
    items = [SpoolItem(JOB, 1, n, f"{i:016x}", n.encode()) for i, n in enumerate(nodes)]

    assert store.store_updates(items) == [None] * len(items)

    listed = store.spooled_updates(JOB, 1)
    assert [u.node for u in listed] == nodes
    assert [u.blob for u in listed] == [n.encode() for n in nodes]
    assert not [p for p in (tmp_path / "state" / JOB / "spool" / "1").iterdir() if p.name.startswith(".tmp-")]


def test_a_group_reports_each_update_that_cannot_be_stored(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    (tmp_path / "state" / JOB / "spool").mkdir(parents=True)
    (tmp_path / "state" / JOB / "spool" / "2").write_bytes(b"not a folder")  # round 2's folder cannot be made

    errors = store.store_updates(
        [SpoolItem(JOB, 1, "edge1", "a" * 16, b"one"), SpoolItem(JOB, 2, "edge2", "b" * 16, b"x")]
    )

    assert errors[0] is None
    assert errors[1] is not None and "edge2" in str(errors[1]) and "round 2" in str(errors[1])
    assert [u.node for u in store.spooled_updates(JOB, 1)] == ["edge1"]


def test_the_ack_waits_for_the_fsyncs_of_its_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Held while the writer is inside fsync: neither the ack nor the event after it goes out; once the file and
    its folders are fsynced, both do, in the order they were published."""
    log: list[tuple[str, str]] = []
    gate = threading.Event()
    inside = threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if "edge1" in path:  # the update's own file: hold the writer here
            inside.set()
            assert gate.wait(WAIT)
        real_fsync(fd)
        log.append(("fsync", path))

    monkeypatch.setattr(os, "fsync", fsync)
    durable = threading.Event()
    port = _port(tmp_path, log, durable)
    try:
        port.store_update(JOB, 1, "edge1", "c" * 16, memoryview(b"update").toreadonly())
        assert inside.wait(WAIT)
        port.send_ack(_ack("edge1", "c" * 16))
        port.publish_round_record(JOB, 1, None)
        port.release()  # a release before the write is durable sends nothing
        assert not [e for e in log if e[0] == "publish"]

        gate.set()
        assert durable.wait(WAIT)
        port.release()
    finally:
        gate.set()
        port.close(WAIT)

    spool = tmp_path / "state" / JOB / "spool"
    publishes = [topic for kind, topic in log if kind == "publish"]
    topics = Topics()
    assert publishes == [topics.ack(JOB, 1, "edge1"), topics.round_record(JOB, 1)]
    first_publish = log.index(("publish", topics.ack(JOB, 1, "edge1")))
    fsynced = [path for kind, path in log[:first_publish] if kind == "fsync"]
    assert any(p.endswith(f"edge1-{'c' * 16}.blob") for p in fsynced)  # the temporary, renamed after its fsync
    assert str(spool / "1") in fsynced and str(spool) in fsynced  # the new name and the round's new folder
    assert (spool / "1" / f"edge1-{'c' * 16}.blob").read_bytes() == b"update"


def test_an_update_not_stored_is_acknowledged_only_once_a_checkpoint_holds_it(tmp_path: Path) -> None:
    log: list[tuple[str, str]] = []
    durable = threading.Event()
    port = _port(tmp_path, log, durable)
    (tmp_path / "state" / JOB / "spool").mkdir(parents=True)
    (tmp_path / "state" / JOB / "spool" / "1").write_bytes(b"not a folder")
    topics = Topics()
    try:
        port.store_update(JOB, 1, "edge1", "d" * 16, b"update")
        port.send_ack(_ack("edge1", "d" * 16))
        port.publish_status(Kind.JOB, JOB, None)
        assert durable.wait(WAIT)
        port.release()
        assert [t for _, t in log] == [topics.status(Kind.JOB, JOB)]  # the ack is dropped, the rest goes

        port.send_ack(_ack("edge1", "d" * 16))  # "already stored" to a resent manifest: still not true
        assert [t for _, t in log] == [topics.status(Kind.JOB, JOB)]

        (tmp_path / "state" / JOB / "spool" / "1").unlink()
        port.save_checkpoint(_checkpoint(1), b"global")
        port.send_ack(_ack("edge1", "d" * 16))
        assert [t for _, t in log] == [topics.status(Kind.JOB, JOB), topics.ack(JOB, 1, "edge1")]
    finally:
        port.close(WAIT)


def test_the_writer_stores_in_submission_order_and_says_when(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    told = threading.Semaphore(0)
    writer = SpoolWriter(store, on_durable=told.release, log=get_logger(component="test"))
    try:
        seqs = [writer.submit(SpoolItem(JOB, 3, f"edge{i}", f"{i:016x}", bytes([i]) * 10)) for i in range(1, 9)]
        assert seqs == list(range(1, 9))
        assert writer.drain(WAIT)
        assert writer.done == 8 and writer.take_failures() == []
        assert told.acquire(timeout=WAIT)
        assert [u.node for u in store.spooled_updates(JOB, 3)] == [f"edge{i}" for i in range(1, 9)]
    finally:
        assert writer.close(WAIT)
    with pytest.raises(Exception, match="stopped"):
        writer.submit(SpoolItem(JOB, 3, "late", "f" * 16, b"x"))

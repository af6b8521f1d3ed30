"""Scenarios 6 and 7 of issue 3: an update delivered twice and one for a closed round; a model larger than
the broker's packet limit."""

from __future__ import annotations

import functools
import queue
import uuid

import pytest

from broker import BlobSender, Inbound, Session
from schemas import Channel, TransferManifest, TransferOrigin
from tests.faults.conftest import JOB, Rig, RigFactory, reassemble
from tests.helpers.mqtt import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def _transfer_of(r: Rig, node: str, round_: int) -> tuple[str, list[tuple[str, bytes]]]:
    """The captured messages (manifest and chunks) of `node`'s first complete update transfer of `round_`."""
    assert r.capture is not None
    messages = list(r.capture.messages)
    blobs = reassemble(messages, r.topics)
    assert blobs.get(("update", round_, node)), f"no complete update of {node} for round {round_} captured"
    by_transfer: dict[str, list[tuple[str, bytes]]] = {}
    for topic, payload in messages:
        parsed = r.topics.parse(topic)
        if (
            parsed.channel in (Channel.UPDATE_MANIFEST, Channel.UPDATE_CHUNK)
            and parsed.node == node
            and parsed.round == round_
        ):
            by_transfer.setdefault(str(parsed.transfer), []).append((topic, payload))
    for transfer, parts in by_transfer.items():
        manifest = next(TransferManifest.model_validate_json(p) for t, p in parts if t.endswith("/manifest"))
        if len({t for t, _ in parts}) == manifest.chunks + 1:
            return transfer, parts
    raise AssertionError(f"no complete transfer of {node} for round {round_}")


def _complete(r: Rig, node: str, round_: int) -> bool:
    assert r.capture is not None
    return bool(reassemble(list(r.capture.messages), r.topics).get(("update", round_, node)))


def test_duplicate_update_and_update_for_closed_round(rig: RigFactory) -> None:
    """edge1's round-2 update is replayed message for message (same transfer) while round 2 is open, and a new
    transfer of its round-1 weights is sent for round 1, which is closed. The duplicate is acknowledged and
    ignored, the late one refused; neither changes any global model."""
    r = rig(2, edge_params={"edge2": {"hold_rounds": "2"}})
    w = r.watch
    r.wait_round_two_delivered_by_edge1()
    wait_until(lambda: _complete(r, "edge1", 2) and _complete(r, "edge1", 1), 10, "edge1's updates captured")
    replay_id, replay = _transfer_of(r, "edge1", 2)
    assert r.capture is not None
    round1_blob = reassemble(list(r.capture.messages), r.topics)[("update", 1, "edge1")][0]

    inbox: queue.Queue[Inbound] = queue.Queue()
    raw = Session(r.cluster.settings("replayer"), inbox=inbox, topics=r.topics)
    raw.start()
    try:
        assert raw.wait_connected(10)
        # 1. The same update again: chunks first, then the manifest, as QoS 1 redelivery may order them.
        for topic, payload in [
            *(m for m in replay if not m[0].endswith("/manifest")),
            *(m for m in replay if m[0].endswith("/manifest")),
        ]:
            raw.publish(topic, payload).wait(10)
        # 2. A genuine new transfer for round 1, which closed before round 2 began.
        late = uuid.uuid4().hex
        BlobSender(raw, chunk_size=4096).send(
            r.topics.update_manifest(JOB, 1, "edge1", late),
            functools.partial(r.topics.update_chunk, JOB, 1, "edge1", late),
            round1_blob,
            TransferOrigin(
                "update", JOB, w.status.uid if w.status and w.status.uid else "", 1, "edge1", r.samples("edge1")
            ),
            timeout=20,
            transfer=late,
        )
    finally:
        raw.stop(timeout=2)

    w.wait(lambda x: len([a for a in x.acks if a.transfer == replay_id]) >= 2, 30, "the replay acknowledged")
    dup = [a for a in w.acks if a.transfer == replay_id][-1]
    assert dup.accepted and dup.round == 2, dup
    w.wait(lambda x: any(a.transfer == late for a in x.acks), 30, "the late update answered")
    refused = next(a for a in w.acks if a.transfer == late)
    assert not refused.accepted and not refused.missing, refused
    assert "closed" in refused.reason, refused
    # The late update is logged where users look: a Warning event naming the worker and round.
    w.wait(
        lambda x: any(e.type == "Warning" and e.node == "edge1" and "closed" in e.message for e in x.events),
        15,
        "a Warning event for the late update",
    )
    r.open_gate("edge2", 2)
    status = r.wait_job(120)
    r.assert_outcome(status)
    r.finish()


def test_model_larger_than_broker_max_packet_size(rig: RigFactory) -> None:
    """The broker accepts packets of at most 64 KiB; the model is ~180 kB: every transfer is chunked under
    the limit and the job runs as usual."""
    limit = 64 * 1024
    hidden = 4096
    model_bytes = (8 * hidden + hidden + hidden * 2 + 2) * 4
    assert model_bytes > 2 * limit
    r = rig(2, exit_round=2, hidden=hidden, broker_config={"max_packet_size": limit})
    status = r.wait_job(120)
    r.assert_outcome(status)
    assert r.capture is not None
    manifests = [
        TransferManifest.model_validate_json(p)
        for t, p in r.capture.messages
        if p and r.topics.parse(t).channel in (Channel.UPDATE_MANIFEST, Channel.GLOBAL_MANIFEST)
    ]
    assert manifests
    for manifest in manifests:
        assert manifest.total_bytes > limit
        assert manifest.chunk_size < limit and manifest.chunks >= 3, manifest
    broker_log = r.cluster.broker.log_text() if r.cluster.broker else ""
    r.finish()
    assert "exceeded" not in broker_log.lower() and "too large" not in broker_log.lower(), broker_log[-2000:]

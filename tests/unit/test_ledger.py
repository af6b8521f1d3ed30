"""The residency ledger, bounded file reads for node requests, and the audit's comparison (no broker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flctl.provision import render_acl
from runtime import JobFiles, Ledger, answer_request, read_from, read_tail
from schemas import (
    AclPattern,
    Channel,
    Codec,
    Kind,
    LedgerEntry,
    NodeRequest,
    Topics,
    TransferOrigin,
    WorkerState,
    WorkerStatus,
    compress_update,
    manifest_for,
    weights_transfer,
)

JOB, UID = "job1", "uid-1"
T = Topics()


def _entries(ledger: Ledger) -> list[LedgerEntry]:
    return [LedgerEntry.model_validate_json(x) for x in ledger.path(JOB).read_text().splitlines()]


def _update(
    ledger: Ledger, node: str, round_: int, shape: tuple[int, ...] = (4, 3), codec: Codec | None = None
) -> None:
    arrays = [np.ones(shape, np.float32), np.zeros(3, np.float32)]
    origin = TransferOrigin("update", JOB, UID, round_, node, 10)
    m, blob = weights_transfer(arrays, origin, chunk_size=20)
    if codec is not None:  # the edge service's encoding of the delta from the model it was trained from
        blob = compress_update(blob, [np.zeros(shape, np.float32), np.zeros(3, np.float32)], codec)[0]
        m = manifest_for(blob, origin, chunk_size=20, transfer=m.transfer)
    ledger.note_blob(m.transfer, blob)
    for i in range(m.chunks):
        ledger.published(T.update_chunk(JOB, round_, node, m.transfer, i), blob[i * 20 : (i + 1) * 20], False)
    ledger.published(T.update_manifest(JOB, round_, node, m.transfer), m.to_json(), False)


def _run(tmp_path: Path, *, shape: tuple[int, ...] = (4, 3), codec: Codec | None = None) -> tuple[Ledger, Ledger]:
    """An edge's ledger of two rounds and the aggregator's that received all of it."""
    edge = Ledger(tmp_path / "edge1", "edge1", T, lambda _job: UID)
    agg = Ledger(tmp_path / "cloud0", "cloud0", T, lambda _job: UID)
    g, gblob = weights_transfer(
        [np.ones((4, 3), np.float32), np.zeros(3, np.float32)],
        TransferOrigin("global", JOB, UID, 0, "cloud0", 0),
        chunk_size=64,
    )
    agg.published_transfer(g, gblob, topic=T.global_manifest(JOB, 0))
    edge.received_transfer(g, gblob, topic=T.global_manifest(JOB, 0))
    status = WorkerStatus(job=JOB, node="edge1", uid=UID, state=WorkerState.TRAINING, round=1)
    edge.published(T.worker_status(JOB, "edge1"), status.to_json(), True)
    _update(edge, "edge1", 1, shape, codec)
    edge.published(T.node_status("edge1"), b'{"state": "online"}', True)  # node-wide: not a job's line
    for e in _entries(edge):
        if e.dir == "out":
            agg.received(e.topic, _PAYLOADS[e.sha256], job=JOB, uid=UID, node="edge1")
    return edge, agg


_PAYLOADS: dict[str, bytes] = {}


@pytest.fixture(autouse=True)
def _keep_payloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember each payload by digest, so the aggregator's side can receive exactly what was published."""
    import hashlib

    original = Ledger.published

    def published(self: Ledger, topic: str, payload: bytes, retain: bool) -> None:
        _PAYLOADS[hashlib.sha256(payload).hexdigest()] = payload
        original(self, topic, payload, retain)

    monkeypatch.setattr(Ledger, "published", published)


def test_ledger_lines_say_class_round_digest_and_layout(tmp_path: Path) -> None:
    edge, _ = _run(tmp_path)
    lines = _entries(edge)
    assert {e.cls for e in lines} == {"global", "worker-status", "update-chunk", "update-manifest"}
    manifest = next(e for e in lines if e.cls == "update-manifest")
    assert manifest.tensors == [("w0", "float32", [4, 3]), ("w1", "float32", [3])]
    assert manifest.round == 1 and manifest.uid == UID and manifest.chunk_sha256
    assert all(e.topic != T.node_status("edge1") for e in lines)
    node_wide = [
        LedgerEntry.model_validate_json(x) for x in (tmp_path / "edge1" / "ledger.jsonl").read_text().splitlines()
    ]
    assert [(e.cls, e.job, e.topic) for e in node_wide] == [("node-status", "-", T.node_status("edge1"))]
    summary = edge.summary(JOB, UID)
    out = [e for e in lines if e.dir == "out"]
    assert summary.messages == len(out) and summary.bytes_up == sum(e.bytes for e in out)
    assert summary.bytes_down == next(e.bytes for e in lines if e.dir == "in")
    # a restarted node reads its summary back from the file
    again = Ledger(tmp_path / "edge1", "edge1", T, lambda _job: UID)
    assert again.summary(JOB, UID) == summary


def test_audit_of_a_clean_run(tmp_path: Path) -> None:
    from flctl.residency import check_job

    edge, agg = _run(tmp_path)
    result = check_job(JOB, UID, "cloud0", _entries(agg), {"edge1": _entries(edge)})
    assert result.clean, result
    (audit,) = result.edges
    out = [e for e in _entries(edge) if e.dir == "out"]
    assert audit.bytes_up == sum(e.bytes for e in out)
    assert audit.blobs == 1 and audit.chunks == sum(e.cls == "update-chunk" for e in out)
    assert audit.rounds[0].down > 0 and audit.rounds[1].up > 0


def test_audit_flags_layout_foreign_unexpected_and_missing(tmp_path: Path) -> None:
    from flctl.residency import check_job

    edge, agg = _run(tmp_path, shape=(5, 3))  # the edge's blob is not the job's layout
    edge.published(T.spec(Kind.JOB, JOB), b"kind: X", True)  # not a class an edge sends
    agg.received(T.update_chunk(JOB, 1, "edge1", "deadbeefdeadbeef", 0), b"image bytes", job=JOB, uid=UID, node="edge1")
    result = check_job(JOB, UID, "cloud0", _entries(agg), {"edge1": _entries(edge), "edge2": "no answer"})
    findings = "\n".join(result.edges[0].findings)
    assert "differs from the job's layout: tensor 0 is w0 float32[5, 3], the job's is w0 float32[4, 3]" in findings
    assert "unexpected topic class 'other'" in findings
    assert "the aggregator did not receive fl/federatedlearningjobs/job1/spec" in findings
    assert "foreign publication" in findings and "deadbeefdeadbeef" in findings
    assert result.edges[1].error == "no answer" and not result.clean


@pytest.mark.parametrize("codec", ["float16", "int8", "topk"])
def test_audit_of_encoded_updates_checks_the_layout_they_decode_to(tmp_path: Path, codec: Codec) -> None:
    """An encoded update of the job's layout is clean (its header names what it decodes to); one of another
    layout is flagged as before."""
    from flctl.residency import check_job

    edge, agg = _run(tmp_path / "ok", codec=codec)
    update = next(e for e in _entries(edge) if e.cls == "update-manifest")
    assert update.tensors == [("w0", "float32", [4, 3]), ("w1", "float32", [3])]
    assert check_job(JOB, UID, "cloud0", _entries(agg), {"edge1": _entries(edge)}).clean
    edge, agg = _run(tmp_path / "foreign", shape=(5, 3), codec=codec)
    findings = "\n".join(check_job(JOB, UID, "cloud0", _entries(agg), {"edge1": _entries(edge)}).edges[0].findings)
    assert "differs from the job's layout: tensor 0 is w0 float32[5, 3]" in findings


def test_read_tail_and_read_from_are_bounded_and_cut_at_line_ends(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_bytes(b"".join(f"line {i}\n".encode() for i in range(10_000)))
    size = log.stat().st_size
    piece = read_tail(log, 3, 1024)
    assert piece.text == "line 9997\nline 9998\nline 9999\n" and piece.next_offset == size
    assert piece.offset == size - len(piece.text)
    capped = read_tail(log, 10_000, 100)
    assert (
        capped.truncated and len(capped.text) <= 100 and capped.text.startswith("line ") and capped.text.endswith("\n")
    )
    page = read_from(log, 0, 25)
    assert page.text == "line 0\nline 1\nline 2\n" and page.next_offset == len(page.text)
    assert read_from(log, size + 50, 10).offset == 0  # a replaced (shorter) file is read from its start


def test_answer_request_never_answers_for_a_job_that_is_not_the_nodes(tmp_path: Path) -> None:
    reply = answer_request(NodeRequest(kind="logs", job="other"), "edge1", None)
    assert not reply.ok and reply.error == "node edge1 runs no part of job other"
    files = JobFiles(tmp_path / "missing.log", tmp_path / "ledger.jsonl")
    reply = answer_request(NodeRequest(kind="logs", job=JOB, tail=5), "edge1", files)
    assert reply.ok and reply.text == "" and "no log yet" in reply.error


def test_request_topics_and_acl_lines() -> None:
    assert T.parse(T.node_request("edge1", "admin")).channel is Channel.NODE_REQUEST
    parsed = T.parse(T.node_reply("edge1", "admin"))
    assert (parsed.channel, parsed.node, parsed.name) == (Channel.NODE_REPLY, "edge1", "admin")
    assert T.replies_of(AclPattern.USERNAME) == "fl/nodes/%u/replies/+"
    acl = render_acl(["cloud0"], ["admin"], viewers=["viewer"], monitors=["monitor"]).splitlines()
    assert "topic write fl/nodes/+/requests/admin" in acl
    assert not any(line.startswith("topic write fl/nodes/+/requests/viewer") for line in acl)
    assert "topic deny fl/nodes/viewer/replies/+" in acl and "topic deny fl/nodes/monitor/replies/+" in acl
    for line in (
        "pattern read fl/nodes/%u/requests/+",
        "pattern write fl/nodes/%u/replies/+",
        "pattern read fl/nodes/+/replies/%u",
    ):
        assert line in acl

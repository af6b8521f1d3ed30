"""Status documents and wire messages: `schemas._status` and `schemas._wire`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas import (
    MAX_EVENTS,
    Condition,
    ConditionType,
    DatasetRef,
    Event,
    JobPlan,
    JobStatus,
    ModelRef,
    NodeState,
    NodeStatus,
    Phase,
    PlannedWorker,
    ResourceStatus,
    RoundRecord,
    ScriptRef,
    TransferManifest,
    UpdateAck,
    WorkerFrame,
    WorkerState,
    WorkerStatus,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SHA = "ab" * 32
JOB = "surface-defect-detection"
CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")


def all_keys(data: Any) -> set[str]:
    """Every mapping key in a JSON document, at any depth."""
    if isinstance(data, dict):
        return set(data) | {k for v in data.values() for k in all_keys(v)}
    if isinstance(data, list):
        return {k for v in data for k in all_keys(v)}
    return set()


def full_status() -> JobStatus:
    status = JobStatus(
        name=JOB,
        uid="0f1e2d3c",
        phase=Phase.RUNNING,
        message="round 2 of 3",
        start_time=T0,
        current_round=2,
        exit_round=3,
        active=2,
        aggregation_node="cloud0",
        spec_hash="477473ac4070539a",
        conditions=[Condition(type=ConditionType.TRAINING, reason="DoTraining", message="Round 2 reaches at ...")],
        workers=[
            WorkerStatus(job=JOB, node="edge1", state=WorkerState.TRAINING, round=2, num_samples=522),
            WorkerStatus(job=JOB, node="cloud0", role="aggregation", state=WorkerState.READY, metrics={"loss": 0.4}),
        ],
        rounds=[RoundRecord(round=1, participants=["edge1", "edge2"], total_samples=1045, metrics={"accuracy": 0.9})],
    )
    status.add_event(Event(reason="RoundClosed", message="round 1 closed", round=1))
    status.add_event(Event(type="Warning", reason="WorkerOffline", message="edge2 went offline", node="edge2"))
    return status


def plan_data() -> dict[str, Any]:
    return {
        "job": JOB,
        "uid": "0f1e2d3c",
        "aggregationNode": "cloud0",
        "aggregation": "FedAvg",
        "exitRound": 3,
        "participants": ["edge1", "edge2"],
        "model": {"name": "surface-defect-detection-model", "url": "/model", "format": "ckpt"},
        "workers": [
            {
                "node": node,
                "dataset": {"name": f"{node}-data", "url": f"/data/{i}.txt", "format": "txt", "nodeName": node},
                "script": {"dir": "/code", "bootFile": "train.py", "frameworkType": "tensorflow"},
                "parameters": {"batch_size": "32", "epochs": "1"},
            }
            for i, node in ((1, "edge1"), (2, "edge2"))
        ],
        "chunkSize": 512 * 1024,
    }


def manifest_data() -> dict[str, Any]:
    return {
        "transfer": "0123abcd4567ef89",
        "kind": "update",
        "job": JOB,
        "uid": "0f1e2d3c",
        "round": 1,
        "sender": "edge1",
        "totalBytes": 1_696_252,
        "chunkSize": 524_288,
        "chunks": 4,
        "sha256": SHA,
        "chunkSha256": [SHA] * 4,
        "numSamples": 522,
    }


# -- JobStatus ---------------------------------------------------------------------------------


def test_job_status_json_is_camel_case() -> None:
    """JobStatus.to_json uses camelCase keys at every depth, as Kubernetes status does."""
    # Arrange
    status = full_status()

    # Act
    data = json.loads(status.to_json())

    # Assert
    keys = all_keys(data)  # metric names ("loss", "accuracy") are lowercase words too
    assert all(CAMEL.match(k) for k in keys), sorted(k for k in keys if not CAMEL.match(k))
    assert {"apiVersion", "startTime", "currentRound", "exitRound", "aggregationNode", "specHash", "updatedAt"} <= keys
    assert {"numSamples", "totalSamples", "closedAt", "lastProbeTime", "lastHeartbeatTime"} <= keys
    assert "metrics" not in data["workers"][1], "a worker's figures are on its own status topic"
    assert (data["apiVersion"], data["kind"], data["phase"]) == ("sedna.io/v1alpha1", "FederatedLearningJob", "Running")


def test_job_status_json_is_readable() -> None:
    """JobStatus.to_json is compact UTF-8 JSON on one line (it is republished on every change), with RFC 3339
    UTC times and no null fields."""
    # Arrange
    status = full_status()

    # Act
    text = status.to_json().decode("utf-8")
    data = json.loads(text)

    # Assert
    assert text.startswith('{"apiVersion":"sedna.io/v1alpha1","kind":"FederatedLearningJob",')
    assert "\n" not in text
    assert "null" not in text
    assert "completionTime" not in data
    assert data["startTime"] == "2025-03-01T12:00:00Z"
    assert datetime.fromisoformat(data["updatedAt"]).tzinfo is not None
    assert data["updatedAt"].endswith("Z")


def test_job_status_round_trips_through_json() -> None:
    """JobStatus.model_validate_json(to_json()) gives back an equal status, each worker's entry brief: its
    figures (metrics, evaluation, ledger, skipped lines) and run are on the worker's own status topic."""
    # Arrange
    status = full_status()
    brief = {"uid", "metrics", "metrics_round", "evaluation", "ledger", "skipped_lines"}

    # Act
    again = JobStatus.model_validate_json(status.to_json())

    # Assert
    assert again.model_dump(exclude={"workers"}) == status.model_dump(exclude={"workers"})
    for got, sent in zip(again.workers, status.workers, strict=True):
        assert got.model_dump(exclude=brief) == sent.model_dump(exclude=brief)
        assert (got.metrics, got.evaluation, got.ledger, got.uid) == ({}, None, None, None)
    assert JobStatus.model_validate_json(again.to_json()) == again


def test_a_job_status_with_whole_worker_entries_still_parses() -> None:
    """A status published before the entries were brief (every worker's figures in it) reads as it was."""
    # Arrange
    status = full_status()
    before = status.model_dump_json(by_alias=True, exclude_none=True)

    # Act
    again = JobStatus.model_validate_json(before)

    # Assert
    assert again == status
    assert again.worker("edge1") == status.workers[0]


def test_events_are_capped_keeping_the_newest() -> None:
    """add_event keeps only the newest MAX_EVENTS events."""
    # Arrange
    status = JobStatus(name=JOB)

    # Act
    for i in range(MAX_EVENTS + 50):
        status.add_event(Event(reason="Tick", message=f"event {i}", time=T0))

    # Assert
    assert MAX_EVENTS == 15
    assert len(status.events) == MAX_EVENTS
    assert status.events[0].message == "event 50"
    assert status.events[-1].message == f"event {MAX_EVENTS + 49}"
    assert len(json.loads(status.to_json())["events"]) == MAX_EVENTS


def test_events_under_the_cap_are_all_kept() -> None:
    """Fewer than MAX_EVENTS events are all kept, in order."""
    # Arrange
    status = JobStatus(name=JOB)

    # Act
    for i in range(3):
        status.add_event(Event(reason="Tick", message=str(i)))

    # Assert
    assert [e.message for e in status.events] == ["0", "1", "2"]


def test_job_status_defaults() -> None:
    """A new JobStatus is Pending at round 0 with no workers, like a just-created Sedna job."""
    # Arrange
    name = JOB

    # Act
    status = JobStatus(name=name)

    # Assert
    assert (status.phase, status.current_round, status.namespace) == (Phase.PENDING, 0, "default")
    assert status.workers == [] and status.events == [] and status.conditions == []
    assert status.worker("edge1") is None


def test_job_status_rejects_unknown_fields() -> None:
    """A status document with an unknown field is refused."""
    # Arrange
    data = json.loads(full_status().to_json())
    data["currentRond"] = 3

    # Act
    with pytest.raises(ValidationError) as info:
        JobStatus.model_validate(data)

    # Assert
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_phase_and_worker_state_terminal_flags() -> None:
    """Only Succeeded/Failed phases are finished and only Completed/Failed workers are terminal."""
    # Arrange
    phases, states = list(Phase), list(WorkerState)

    # Act
    finished = {p for p in phases if p.finished}
    terminal = {s for s in states if s.terminal}

    # Assert
    assert finished == {Phase.SUCCEEDED, Phase.FAILED}
    assert terminal == {WorkerState.COMPLETED, WorkerState.FAILED}


@pytest.mark.parametrize(
    "model",
    [
        ResourceStatus(kind="Dataset", name="edge1-data", valid=False, message="spec.format: ..."),
        NodeStatus(node="edge1", role="edge", state=NodeState.OFFLINE, version="0.1.0"),
        WorkerStatus(job=JOB, node="edge1", state=WorkerState.COMPLETED, model_path="/model", model_digest=SHA),
    ],
    ids=["ResourceStatus", "NodeStatus", "WorkerStatus"],
)
def test_other_status_documents_round_trip(model: BaseModel) -> None:
    """Resource, node and worker statuses are camelCase JSON that round-trips."""
    # Arrange
    to_json = model.to_json  # type: ignore[attr-defined]

    # Act
    data = json.loads(to_json())
    again = type(model).model_validate_json(to_json())

    # Assert
    assert again == model
    assert all(CAMEL.match(k) for k in data)


# -- wire messages -----------------------------------------------------------------------------


def test_job_plan_validates_camel_case_json() -> None:
    """A JobPlan parses from camelCase JSON and finds each worker by node."""
    # Arrange
    data = plan_data()

    # Act
    plan = JobPlan.model_validate_json(json.dumps(data))

    # Assert
    assert plan.api_version == "fl.edge.io/v1"
    assert plan.exit_round == 3
    assert plan.model == ModelRef(name="surface-defect-detection-model", url="/model", format="ckpt")
    worker = plan.worker("edge2")
    assert worker is not None
    assert worker.dataset == DatasetRef(name="edge2-data", url="/data/2.txt", format="txt", node_name="edge2")
    assert worker.script == ScriptRef(dir="/code", boot_file="train.py", framework_type="tensorflow")
    assert plan.worker("edge3") is None


def test_job_plan_round_trips_through_json() -> None:
    """JobPlan.to_json is compact camelCase JSON that parses back to an equal plan."""
    # Arrange
    plan = JobPlan.model_validate(plan_data())

    # Act
    text = plan.to_json()
    again = JobPlan.model_validate_json(text)

    # Assert
    assert again == plan
    assert b"\n" not in text
    assert {"apiVersion", "aggregationNode", "exitRound", "chunkSize", "createdAt"} <= set(json.loads(text))


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.__setitem__("exitRounds", 3), ("exitRounds",)),
        (lambda d: d["workers"][0]["dataset"].__setitem__("nodename", "edge1"), ("workers", 0, "dataset", "nodename")),
        (lambda d: d["workers"][1]["script"].__setitem__("entry", "x.py"), ("workers", 1, "script", "entry")),
        (lambda d: d.__setitem__("exitRound", 0), ("exitRound",)),
        (lambda d: d.__setitem__("chunkSize", 512), ("chunkSize",)),
        (lambda d: d.pop("uid"), ("uid",)),
        (lambda d: d.__setitem__("apiVersion", "fl.edge.io/v2"), ("apiVersion",)),
    ],
    ids=[
        "unknown field",
        "unknown nested field",
        "unknown script field",
        "exit round 0",
        "small chunks",
        "no uid",
        "api",
    ],
)
def test_job_plan_rejects_bad_documents(change: Any, where: tuple[Any, ...]) -> None:
    """A JobPlan with an unknown field (at any depth) or a bad value is refused at that field."""
    # Arrange
    data = plan_data()
    change(data)

    # Act
    with pytest.raises(ValidationError) as info:
        JobPlan.model_validate_json(json.dumps(data))

    # Assert
    assert [e["loc"] for e in info.value.errors()] == [where]


def test_transfer_manifest_validates_and_round_trips() -> None:
    """A TransferManifest parses from camelCase JSON and round-trips through to_json."""
    # Arrange
    data = manifest_data()

    # Act
    manifest = TransferManifest.model_validate_json(json.dumps(data))
    again = TransferManifest.model_validate_json(manifest.to_json())

    # Assert
    assert again == manifest
    assert (manifest.total_bytes, manifest.chunk_size, manifest.chunks, manifest.final) == (
        1_696_252,
        524_288,
        4,
        False,
    )
    assert manifest.chunk_sha256 == [SHA] * 4
    assert {"totalBytes", "chunkSize", "chunkSha256", "numSamples", "createdAt"} <= set(json.loads(manifest.to_json()))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("transfer", "XYZ"),
        ("transfer", "0123abc"),
        ("kind", "delta"),
        ("round", -1),
        ("totalBytes", 0),
        ("chunkSize", 0),
        ("chunks", 0),
        ("sha256", "AB" * 32),
        ("chunkSha256", ["00"]),
        ("numSamples", -1),
        ("totalbytes", 5),
    ],
)
def test_transfer_manifest_rejects_bad_fields(field: str, value: Any) -> None:
    """A TransferManifest with a bad value or an unknown field is refused, naming the field."""
    # Arrange
    data = manifest_data()
    data[field] = value

    # Act
    with pytest.raises(ValidationError) as info:
        TransferManifest.model_validate_json(json.dumps(data))

    # Assert
    assert info.value.errors()[0]["loc"][0] == field


def test_worker_frame_validates_camel_case_json() -> None:
    """A WorkerFrame parses from camelCase JSON with defaults for what a frame type leaves out."""
    # Arrange
    text = b'{"type":"update","round":2,"numSamples":522,"metrics":{"loss":0.31},"hasBody":true}'

    # Act
    frame = WorkerFrame.model_validate_json(text)

    # Assert
    assert (frame.type, frame.round, frame.num_samples, frame.has_body) == ("update", 2, 522, True)
    assert frame.metrics == {"loss": 0.31}
    assert (frame.message, frame.aggregation, frame.model_path) == ("", None, None)


def test_worker_frame_round_trips_without_nulls() -> None:
    """WorkerFrame.to_json leaves out unset optional fields and parses back equal."""
    # Arrange
    frame = WorkerFrame(type="config", aggregation="FedAvg", exit_round=3, participants_count=2)

    # Act
    text = frame.to_json()

    # Assert
    assert WorkerFrame.model_validate_json(text) == frame
    assert json.loads(text) == {
        "type": "config",
        "round": 0,
        "metrics": {},
        "message": "",
        "aggregation": "FedAvg",
        "exitRound": 3,
        "participantsCount": 2,
        "hasBody": False,
    }


@pytest.mark.parametrize(
    "text",
    [b'{"type":"update","bogus":1}', b'{"type":"upload"}', b'{"round":1}', b'{"type":"train","round":"two"}'],
    ids=["unknown field", "unknown type", "no type", "bad round"],
)
def test_worker_frame_rejects_bad_frames(text: bytes) -> None:
    """A WorkerFrame with an unknown field or type, or a bad value, is refused."""
    # Arrange
    validate = WorkerFrame.model_validate_json

    # Act
    with pytest.raises(ValidationError) as info:
        validate(text)

    # Assert
    assert info.value.error_count() == 1


def test_wire_messages_are_frozen() -> None:
    """Wire messages are immutable once built."""
    # Arrange
    frame = WorkerFrame(type="stop")
    ack = UpdateAck(job=JOB, uid="u", round=1, node="edge1", transfer="0123abcd", accepted=True)

    # Act
    with pytest.raises(ValidationError):
        frame.type = "train"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ack.accepted = False  # type: ignore[misc]

    # Assert
    assert (frame.type, ack.accepted) == ("stop", True)


def test_update_ack_round_trips() -> None:
    """An UpdateAck round-trips through its JSON and refuses unknown fields."""
    # Arrange
    ack = UpdateAck(job=JOB, uid="u", round=1, node="edge1", transfer="0123abcd", accepted=False, reason="late")

    # Act
    again = UpdateAck.model_validate_json(ack.to_json())

    # Assert
    assert again == ack
    with pytest.raises(ValidationError):
        UpdateAck.model_validate({**json.loads(ack.to_json()), "why": "x"})


def test_planned_worker_needs_every_part() -> None:
    """A PlannedWorker without its dataset is refused."""
    # Arrange
    data = plan_data()["workers"][0]
    del data["dataset"]

    # Act
    with pytest.raises(ValidationError) as info:
        PlannedWorker.model_validate(data)

    # Assert
    assert info.value.errors()[0]["loc"] == ("dataset",)

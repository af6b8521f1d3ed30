"""Round deadlines, quorum, waiting_for, completion with left-out workers and presence (fake port, time via tick)."""

from __future__ import annotations

from typing import Any

import numpy as np
import yaml

from cloud_aggregator.engine import Job, JobFacts, Stage
from cloud_aggregator.testing import MemoryPort
from schemas import (
    Dataset,
    FederatedLearningJob,
    Model,
    NodeState,
    Phase,
    WorkerFrame,
    WorkerState,
    load_yaml_documents,
    parse_documents,
)
from tests.unit.test_aggregator_intake import send, transfer
from tests.unit.test_job_rounds import EXAMPLE, JOB, SETTINGS, UID, report, weights


def facts_with(*, resume: bool = False, **params: str) -> JobFacts:
    """The facts of the example job with extra aggregationWorker parameters."""
    docs = load_yaml_documents(EXAMPLE.read_text(), str(EXAMPLE))
    for doc in docs:
        if doc["kind"] == "FederatedLearningJob":
            worker = doc["spec"]["aggregationWorker"]["workerSpec"]
            worker["parameters"] = [*worker.get("parameters", []), *({"key": k, "value": v} for k, v in params.items())]
    resources = parse_documents(yaml.safe_dump_all(docs), "job.yaml")
    spec = next(r for r in resources if isinstance(r, FederatedLearningJob))
    datasets = {r.metadata.name: r for r in resources if isinstance(r, Dataset)}
    models = {r.metadata.name: r for r in resources if isinstance(r, Model)}
    return JobFacts.of(spec, datasets, models, node="cloud0", uid=UID, settings=SETTINGS, resume=resume)


def job_with(port: MemoryPort, *, exit_round: int = 2, **params: str) -> Job:
    """The example job with extra aggregationWorker parameters, configured and past round 0 (edge1's init)."""
    job = Job(facts_with(**params), port)
    job.start(0.0)
    job.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=exit_round), 0.0)
    manifest, chunks = transfer("edge1", 0, weights(0.0), kind="init")
    send(job, "edge1", manifest, chunks, 0.0)
    assert job.stage is Stage.TRAINING and job.round == 1
    return job


def upload(job: Job, node: str, round_: int, now_s: float, seed: float = 1.0, **kwargs: Any) -> None:
    manifest, chunks = transfer(node, round_, weights(seed), **kwargs)
    send(job, node, manifest, chunks, now_s)


def test_parameters_come_from_the_spec() -> None:
    port = MemoryPort()
    job = job_with(port, round_deadline="30", min_participants="1")
    assert job.facts.round_deadline == 30.0 and job.facts.min_participants == 1
    plain = job_with(MemoryPort())
    assert plain.facts.round_deadline is None and plain.facts.min_participants == 2
    zero = job_with(MemoryPort(), round_deadline="0", min_participants="9")
    assert (
        zero.facts.round_deadline is None and zero.facts.min_participants == 2
    )  # 0: no deadline; clamped to the workers


def test_waiting_for_is_current_while_a_round_is_open() -> None:
    port = MemoryPort()
    job = job_with(port)
    assert port.job_status(JOB).waiting_for == ["edge1", "edge2"]

    upload(job, "edge1", 1, 1.0)

    status = port.job_status(JOB)
    assert status.waiting_for == ["edge2"] and "edge2" in status.message and "1/2" in status.message


def test_without_a_deadline_every_participant_is_awaited() -> None:
    port = MemoryPort()
    job = job_with(port, min_participants="1")
    upload(job, "edge1", 1, 1.0)

    job.tick(10_000.0)

    assert job.round == 1 and [g.round for g in port.published_globals] == [0]


def test_deadline_with_a_quorum_closes_the_round_with_who_is_there() -> None:
    port = MemoryPort()
    job = job_with(port, round_deadline="30", min_participants="1")
    upload(job, "edge1", 1, 5.0, seed=3.0)

    job.tick(29.9)
    assert job.round == 1
    job.tick(30.0)

    assert job.round == 2
    np.testing.assert_allclose(port.published_globals[-1].arrays[0], np.full((3, 2), 3.0))
    status = port.job_status(JOB)
    record = status.rounds[-1]
    assert record.round == 1 and record.participants == ["edge1"] and record.missing == ["edge2"]
    warning = next(e for e in status.events if e.reason == "RoundClosedWithout")
    assert warning.type == "Warning" and "round 1 closed without edge2 after 30 s" in warning.message
    assert status.waiting_for == ["edge1", "edge2"]  # round 2 is open

    upload(job, "edge2", 1, 31.0)  # too late for round 1
    ack = port.acks_for("edge2")[-1]
    assert not ack.accepted and "round 1 is closed" in ack.reason


def test_deadline_counts_from_when_the_round_opened() -> None:
    port = MemoryPort()
    job = job_with(port, round_deadline="30", min_participants="1")
    upload(job, "edge1", 1, 1.0)
    upload(job, "edge2", 1, 1.0)  # round 2 opens at t=1
    upload(job, "edge1", 2, 2.0)

    job.tick(30.5)
    assert job.stage is Stage.TRAINING and job.round == 2
    job.tick(31.0)
    assert job.stage is Stage.FINAL


def test_below_quorum_the_round_waits_and_says_for_whom() -> None:
    port = MemoryPort()
    job = job_with(port, round_deadline="10", min_participants="2")
    upload(job, "edge1", 1, 1.0)

    job.tick(11.0)

    assert job.round == 1
    status = port.job_status(JOB)
    assert status.waiting_for == ["edge2"]
    assert status.message == "round 1: waiting for edge2 (1/2 updates, quorum 2)"
    assert any(e.reason == "BelowQuorum" for e in status.events)
    published = len(port.status_history)
    job.tick(12.0)
    assert len(port.status_history) == published  # no status storm while waiting

    upload(job, "edge2", 1, 50.0)
    assert job.round == 2 and port.job_status(JOB).rounds[-1].missing == []


def test_quorum_reached_after_the_deadline_closes_at_once() -> None:
    port = MemoryPort()
    job = job_with(port, round_deadline="10", min_participants="1")  # three-worker jobs are not in the example
    job.tick(10.0)  # nobody yet: below quorum 1
    assert job.round == 1 and port.job_status(JOB).waiting_for == ["edge1", "edge2"]

    upload(job, "edge2", 1, 12.0)

    assert job.round == 2 and port.job_status(JOB).rounds[-1].missing == ["edge1"]


def test_job_succeeds_when_the_final_rounds_workers_completed() -> None:
    """edge2 was left out of the final round: the job succeeds without it, and its late Completed shows."""
    port = MemoryPort()
    job = job_with(port, exit_round=1, round_deadline="5", min_participants="1")
    upload(job, "edge1", 1, 1.0)
    job.tick(5.0)
    assert job.stage is Stage.FINAL
    status = port.job_status(JOB)
    left_out = next(e for e in status.events if e.reason == "LeftOutOfFinalRound")
    assert "edge2" in left_out.message and status.waiting_for == []

    report(job, "edge1", WorkerState.COMPLETED, uid=UID, model_digest=None)

    status = port.job_status(JOB)
    assert status.phase is Phase.SUCCEEDED and "edge2" in status.message
    assert port.signals[-1][2] == "finish"

    report(job, "edge2", WorkerState.COMPLETED, uid=UID)
    worker = port.job_status(JOB).worker("edge2")
    assert worker is not None and worker.state is WorkerState.COMPLETED
    assert port.job_status(JOB).phase is Phase.SUCCEEDED


def test_left_out_worker_failing_after_the_final_round_does_not_fail_the_job() -> None:
    port = MemoryPort()
    job = job_with(port, exit_round=1, round_deadline="5", min_participants="1")
    upload(job, "edge1", 1, 1.0)
    job.tick(5.0)

    report(job, "edge2", WorkerState.FAILED, uid=UID, message="disk full")
    assert port.job_status(JOB).phase is Phase.RUNNING
    report(job, "edge1", WorkerState.COMPLETED, uid=UID)
    assert port.job_status(JOB).phase is Phase.SUCCEEDED


def test_last_will_marks_offline_and_the_next_status_brings_it_back() -> None:
    port = MemoryPort()
    job = job_with(port)
    report(job, "edge2", WorkerState.TRAINING, uid=UID, round=1)

    job.on_node_status("edge2", NodeState.OFFLINE, 1.0)
    worker = port.job_status(JOB).worker("edge2")
    assert worker is not None and worker.state is WorkerState.OFFLINE
    assert any(e.reason == "NodeOffline" for e in port.job_status(JOB).events)

    job.on_node_status("edge2", NodeState.ONLINE, 1.0)
    worker = port.job_status(JOB).worker("edge2")
    assert worker is not None and worker.state is WorkerState.TRAINING

    job.on_node_status("edge2", NodeState.OFFLINE, 1.0)
    report(job, "edge2", WorkerState.UPLOADING, uid=UID, round=1)
    worker = port.job_status(JOB).worker("edge2")
    assert worker is not None and worker.state is WorkerState.UPLOADING

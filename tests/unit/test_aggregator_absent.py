"""Rounds that do not wait for the known-absent: with a round deadline and a quorum, a participant whose node's
last will is older than the offline grace no longer holds a round open (fake port, time via the calls)."""

from __future__ import annotations

import pytest
import yaml

from cloud_aggregator.engine import Controller, Job, Stage
from cloud_aggregator.testing import MemoryPort
from schemas import (
    JobStatus,
    Kind,
    NodeState,
    NodeStatus,
    SpecError,
    WorkerFrame,
    WorkerState,
    load_yaml_documents,
    parameter_value_problem,
    parse_documents,
)
from tests.unit.test_aggregator_intake import send, transfer
from tests.unit.test_aggregator_rounds import EXAMPLE, facts_with, job_with, upload
from tests.unit.test_controller import FIXED, announce, documents, job_payload, publish
from tests.unit.test_job_rounds import JOB, SETTINGS, UID, report, weights

RULES = {"round_deadline": "30", "min_participants": "1", "offline_grace": "2"}


def closed_without(port: MemoryPort) -> list[str]:
    return [e.message for e in port.job_status(JOB).events if e.reason == "RoundClosedWithout"]


def test_offline_grace_comes_from_the_spec_with_a_default() -> None:
    assert job_with(MemoryPort(), **RULES).facts.offline_grace == 2.0
    assert job_with(MemoryPort()).facts.offline_grace == 10.0
    assert job_with(MemoryPort(), offline_grace="0").facts.offline_grace == 0.0
    assert parameter_value_problem("offline_grace", "-1") == "expected a number of seconds in [0, 86400]"
    assert parameter_value_problem("OFFLINE_GRACE", "soon") is not None


def test_an_offline_participant_past_its_grace_does_not_hold_rounds_open() -> None:
    """edge2's last will at t=1; edge1 delivers at t=2 (grace not over: the round waits); at t=3 the grace is
    over and the round closes, 27 s before its deadline. Round 2 closes as soon as edge1 delivers."""
    port = MemoryPort()
    job = job_with(port, exit_round=3, **RULES)
    report(job, "edge2", WorkerState.TRAINING, uid=UID, round=1)
    job.on_node_status("edge2", NodeState.OFFLINE, 1.0)
    upload(job, "edge1", 1, 2.0)
    assert job.round == 1
    status = port.job_status(JOB)
    assert status.waiting_for == ["edge2"] and status.message.endswith("; offline: edge2")

    job.tick(2.9)
    assert job.round == 1
    job.tick(3.0)

    assert job.stage is Stage.TRAINING and job.round == 2
    record = port.job_status(JOB).rounds[-1]
    assert record.round == 1 and record.participants == ["edge1"] and record.missing == ["edge2"]
    assert record.duration_seconds == 3.0
    [message] = closed_without(port)
    assert message.startswith("round 1 closed without edge2 after 3 s, before its deadline (edge2 offline since ")
    assert message.endswith(" UTC; 1/2 updates, quorum 1)")

    upload(job, "edge1", 2, 4.0)  # edge2 is still gone: no wait at all

    assert job.round == 3 and port.job_status(JOB).rounds[-1].missing == ["edge2"]


def test_going_offline_after_the_others_delivered_closes_the_round() -> None:
    """offline_grace 0: the last will itself closes the round, edge1's update being in already."""
    port = MemoryPort()
    job = job_with(port, round_deadline="30", min_participants="1", offline_grace="0")
    upload(job, "edge1", 1, 1.0)
    assert job.round == 1

    job.on_node_status("edge2", NodeState.OFFLINE, 2.0)

    assert job.round == 2 and port.job_status(JOB).rounds[-1].missing == ["edge2"]


def test_a_flapping_edge_does_not_close_the_round() -> None:
    """Offline for 1 s (a link that drops and comes back) is shorter than the grace: the round still waits."""
    port = MemoryPort()
    job = job_with(port, **RULES)
    report(job, "edge2", WorkerState.TRAINING, uid=UID, round=1)
    upload(job, "edge1", 1, 1.0)
    job.on_node_status("edge2", NodeState.OFFLINE, 2.0)
    job.on_node_status("edge2", NodeState.ONLINE, 3.0)

    job.tick(10.0)
    job.tick(29.9)

    assert job.round == 1 and port.job_status(JOB).waiting_for == ["edge2"]
    upload(job, "edge2", 1, 29.95)
    assert job.round == 2 and port.job_status(JOB).rounds[-1].missing == []


def test_back_before_the_close_it_is_waited_for_again() -> None:
    """edge2's worker speaks again (its node reconnected) before edge1 delivers: the round waits for it."""
    port = MemoryPort()
    job = job_with(port, **RULES)
    job.on_node_status("edge2", NodeState.OFFLINE, 1.0)
    job.tick(5.0)  # past the grace, but edge1 is not in: below quorum
    assert job.round == 1
    report(job, "edge2", WorkerState.TRAINING, uid=UID, round=1)

    upload(job, "edge1", 1, 6.0)
    job.tick(7.0)

    assert job.round == 1 and port.job_status(JOB).waiting_for == ["edge2"]


def test_an_edge_that_comes_back_rejoins_at_the_next_round() -> None:
    port = MemoryPort()
    job = job_with(port, exit_round=3, **RULES)
    job.on_node_status("edge2", NodeState.OFFLINE, 1.0)
    upload(job, "edge1", 1, 5.0)
    assert job.round == 2 and port.job_status(JOB).rounds[-1].missing == ["edge2"]

    job.on_node_status("edge2", NodeState.ONLINE, 6.0)
    report(job, "edge2", WorkerState.TRAINING, uid=UID, round=2)
    upload(job, "edge1", 2, 7.0)
    assert job.round == 2  # edge2 is back: awaited

    upload(job, "edge2", 2, 8.0, seed=3.0)

    assert job.round == 3
    record = port.job_status(JOB).rounds[-1]
    assert record.participants == ["edge1", "edge2"] and record.missing == []


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"round_deadline": "30", "offline_grace": "0"}, "quorum: every participant (the default)"),
        ({"min_participants": "1", "offline_grace": "0"}, "no deadline: every participant every round"),
    ],
)
def test_without_a_deadline_and_a_quorum_nothing_changes(params: dict[str, str], reason: str) -> None:
    port = MemoryPort()
    job = job_with(port, **params)
    job.on_node_status("edge2", NodeState.OFFLINE, 1.0)
    upload(job, "edge1", 1, 2.0)

    job.tick(29.0)

    assert job.round == 1, reason
    assert port.job_status(JOB).waiting_for == ["edge2"]


def test_after_an_aggregator_restart_the_offline_edge_still_does_not_hold_rounds() -> None:
    """kill -9 of the aggregator while edge2 is offline: the resumed run restores edge2's Offline entry, the
    retained will arrives again (no change of state), and round 2 closes once the grace ran out again."""
    old = MemoryPort()
    job = job_with(old, exit_round=3, **RULES)
    job.on_node_status("edge2", NodeState.OFFLINE, 1.0)
    upload(job, "edge1", 1, 5.0)
    assert job.round == 2

    port = MemoryPort(disk=old.disk)
    previous = old.statuses.get((Kind.JOB, JOB))
    assert isinstance(previous, JobStatus)
    job = Job(facts_with(resume=True, **RULES), port, previous_status=previous)
    job.start(100.0)
    job.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=3), 100.1)
    worker = port.job_status(JOB).worker("edge2")
    assert job.round == 2 and worker is not None and worker.state is WorkerState.OFFLINE
    job.on_node_status("edge2", NodeState.OFFLINE, 100.2)
    upload(job, "edge1", 2, 101.0)
    assert job.round == 2  # the grace counts from the will this run saw

    job.tick(102.2)

    assert job.round == 3 and port.job_status(JOB).rounds[-1].missing == ["edge2"]


def test_an_edge_whose_last_will_came_before_the_job_is_known_absent() -> None:
    """The controller saw edge2's last will before the job was created: the job shows edge2 Offline from
    its config on, and round 1 closes once edge1 delivered and the grace (from then) ran out."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port, settings=SETTINGS, new_uid=lambda: UID)
    announce(controller, "edge1")
    will = NodeStatus.model_validate({"node": "edge2", "role": "edge", "state": NodeState.OFFLINE})
    controller.on_node_status("edge2", will.to_json(), 0.0)
    controller.ready(0.0)
    params = [{"key": "exit_round", "value": "3"}, *({"key": k, "value": v} for k, v in RULES.items())]
    for kind, name, payload in documents(FIXED):
        body = job_payload({"spec.aggregationWorker.workerSpec.parameters": params}) if kind is Kind.JOB else payload
        publish(controller, kind, name, body, 1.0)
    controller.on_script_frame(JOB, UID, WorkerFrame(type="config", aggregation="FedAvg", exit_round=3), 1.1)
    job = controller.job(JOB)
    assert job is not None
    worker = port.job_status(JOB).worker("edge2")
    assert worker is not None and worker.state is WorkerState.OFFLINE
    send(job, "edge1", *transfer("edge1", 0, weights(0.0), kind="init"), 1.5)
    send(job, "edge1", *transfer("edge1", 1, weights(1.0)), 2.0)
    assert job.round == 1

    controller.tick(3.2)

    assert job.round == 2 and port.job_status(JOB).rounds[-1].missing == ["edge2"]


def test_quorum_not_met_by_the_online_ones_waits_for_the_deadline() -> None:
    """An absent participant does not lower the quorum: with min_participants=2 of 2, edge1 alone is not enough."""
    port = MemoryPort()
    job: Job = job_with(port, round_deadline="30", min_participants="2", offline_grace="0")
    job.on_node_status("edge2", NodeState.OFFLINE, 1.0)
    upload(job, "edge1", 1, 2.0)
    job.tick(31.0)

    assert job.round == 1
    assert any(e.reason == "BelowQuorum" for e in port.job_status(JOB).events)


def test_a_negative_offline_grace_is_a_spec_error_naming_it() -> None:
    docs = load_yaml_documents(EXAMPLE.read_text(), str(EXAMPLE))
    for doc in docs:
        if doc["kind"] == "FederatedLearningJob":
            worker = doc["spec"]["aggregationWorker"]["workerSpec"]
            worker["parameters"] = [*worker.get("parameters", []), {"key": "offline_grace", "value": "-5"}]
    with pytest.raises(SpecError, match="offline_grace"):
        parse_documents(yaml.safe_dump_all(docs), "job.yaml")

"""The job event stream (`schemas.JobEvent` lines), as the controller publishes it through its port: every
event the job status gets, worker state changes, rounds opened and closed with their record, in order, once.

Driven by method calls on a `Controller` over a `MemoryPort` (which checks each line's wire form)."""

from __future__ import annotations

import json

from cloud_aggregator.engine import Controller, Job, JobSettings
from cloud_aggregator.testing import MemoryDisk, MemoryPort, make_transfer
from schemas import JobEvent, Kind, Phase, WorkerFrame, WorkerState, WorkerStatus
from tests.unit.test_controller import FIXED, JOB, TOPICS, announce, documents
from tests.unit.test_job_rounds import weights

UID = "a" * 32


def controller_on(port: MemoryPort, *, edges: tuple[str, ...] = ("edge1", "edge2")) -> Controller:
    controller = Controller(node="cloud0", port=port, settings=JobSettings(chunk_size=4096), new_uid=lambda: UID)
    for edge in edges:
        announce(controller, edge)
    controller.ready(0.0)
    return controller


def create(controller: Controller, skip: str | None = None) -> None:
    for kind, name, payload in documents(FIXED):
        if name != skip:
            controller.on_spec(kind, name, TOPICS.spec(kind, name), payload, 0.0)


def started(port: MemoryPort, exit_round: int = 2) -> Job:
    controller = controller_on(port)
    create(controller)
    job = controller.job(JOB)
    assert job is not None
    job.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=exit_round), 0.1)
    return job


def send(job: Job, node: str, round_: int, value: float, samples: int = 10) -> None:
    kind = "init" if round_ == 0 else "update"
    manifest, blob = make_transfer(
        weights(value), kind=kind, job=JOB, uid=UID, round_=round_, sender=node, num_samples=samples
    )
    if kind == "init":
        job.on_init_transfer(node, 0, manifest, blob)
    else:
        job.on_update(node, round_, manifest, blob)


def report(job: Job, node: str, state: WorkerState, round_: int = 0) -> None:
    worker = WorkerStatus(job=JOB, node=node, uid=UID, state=state, round=round_)
    job.on_worker_status(node, worker, retained=False)


def run_to_the_end(job: Job) -> None:
    send(job, "edge1", 0, 0.0)
    for round_ in (1, 2):
        for node in ("edge1", "edge2"):
            report(job, node, WorkerState.TRAINING, round_)
        send(job, "edge1", round_, 1.0, samples=10)
        send(job, "edge2", round_, 3.0, samples=30)
    for node in ("edge1", "edge2"):
        report(job, node, WorkerState.COMPLETED, 2)


def reasons(lines: list[JobEvent]) -> list[str]:
    return [e.reason for e in lines]


def test_a_job_streams_its_rounds_in_order_each_line_one_compact_json_object() -> None:
    port = MemoryPort()
    job = started(port)

    run_to_the_end(job)

    lines = port.job_events(JOB)
    assert port.job_status(JOB).phase is Phase.SUCCEEDED
    for line in lines:
        wire = line.to_json()
        assert b"\n" not in wire and json.loads(wire)["job"] == JOB
    rounds = [(e.reason, e.round) for e in lines if e.reason in ("RoundOpened", "RoundClosed")]
    assert rounds == [("RoundOpened", 1), ("RoundClosed", 1), ("RoundOpened", 2), ("RoundClosed", 2)]
    assert reasons(lines)[0] == "Starting" and reasons(lines)[-1] == "WorkerStateChanged"
    assert "Completed" in reasons(lines)
    closed = [e for e in lines if e.reason == "RoundClosed"]
    assert [e.data and (e.data["participants"], e.data["totalSamples"]) for e in closed] == [
        (["edge1", "edge2"], 40),
        (["edge1", "edge2"], 40),
    ]
    assert all(e.data is not None and e.data["durationSeconds"] >= 0 for e in closed)
    assert all(e.uid == UID for e in lines)
    times = [e.time for e in lines]
    assert times == sorted(times)


def test_every_event_of_the_status_is_on_the_stream_exactly_once() -> None:
    port = MemoryPort()
    job = started(port)

    run_to_the_end(job)

    said = [(e.reason, e.message) for e in port.job_events(JOB)]
    status_events = [(e.reason, e.message) for e in port.job_status(JOB).events]
    assert all(said.count(event) == 1 for event in status_events), said
    warnings = [e for e in port.job_events(JOB) if e.type == "Warning"]
    assert warnings == []  # a clean run: Warning is only ever a Warning event of the job


def test_worker_state_changes_name_the_worker_the_states_and_the_round() -> None:
    port = MemoryPort()
    job = started(port)
    send(job, "edge1", 0, 0.0)
    port.events.clear()

    report(job, "edge1", WorkerState.TRAINING, 1)
    report(job, "edge1", WorkerState.TRAINING, 1)  # the same state again says nothing

    (line,) = port.job_events(JOB)
    assert (line.reason, line.node, line.round, line.type) == ("WorkerStateChanged", "edge1", 1, "Normal")
    assert line.message == "worker edge1: Pending -> Training (round 1)"
    assert line.data == {"role": "training", "from": "Pending", "to": "Training"}


def test_a_failed_worker_is_a_warning_on_the_stream() -> None:
    port = MemoryPort()
    job = started(port)
    send(job, "edge1", 0, 0.0)

    job.on_worker_status(
        "edge2",
        WorkerStatus(job=JOB, node="edge2", uid=UID, state=WorkerState.FAILED, message="1.txt line 3: bad"),
        retained=False,
    )

    warnings = [(e.reason, e.node) for e in port.job_events(JOB) if e.type == "Warning"]
    assert ("WorkerFailed", "edge2") in warnings and warnings[-1] == ("WorkerFailed", None)


def test_jobs_held_back_or_invalid_are_on_the_stream_too() -> None:
    """Controller-level events: a job waiting for its Dataset (no uid yet), a job whose spec is invalid."""
    port = MemoryPort()
    controller = controller_on(port)
    create(controller, skip="edge2-surface-defect-detection-dataset")

    held = port.job_events(JOB)
    assert [(e.reason, e.uid) for e in held] == [("WaitingForReferences", None)]

    controller.on_spec(Kind.JOB, "broken", TOPICS.spec(Kind.JOB, "broken"), b"kind: [", 0.0)

    (invalid,) = port.job_events("broken")
    assert (invalid.type, invalid.reason) == ("Warning", "InvalidSpec")


def test_a_deleted_job_says_so_last() -> None:
    port = MemoryPort()
    controller = controller_on(port)
    create(controller)

    controller.on_spec(Kind.JOB, JOB, TOPICS.spec(Kind.JOB, JOB), b"", 1.0)

    last = port.job_events(JOB)[-1]
    assert (last.reason, last.uid) == ("Deleted", UID)


def test_a_restarted_aggregator_does_not_say_again_what_it_said_before() -> None:
    """The baseline after a restart is the kept copy of the last status this node published: the events of
    the first process are not sent again (the resumed run's own ones are new)."""
    disk = MemoryDisk()
    first = MemoryPort(disk=disk)
    job = started(first)
    send(job, "edge1", 0, 0.0)
    send(job, "edge1", 1, 1.0)
    said_before = {(e.time, e.reason, e.message) for e in first.job_events(JOB)}

    second = MemoryPort(disk=disk)
    controller = controller_on(second)
    create(controller)  # the broker lost nothing here: the same specs come back
    resumed = controller.job(JOB)
    assert resumed is not None and resumed.facts.uid == UID
    resumed.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=2), 100.1)

    again = [e for e in second.job_events(JOB) if (e.time, e.reason, e.message) in said_before]
    assert again == []
    assert "Resumed" in reasons(second.job_events(JOB))


def test_an_evaluation_that_comes_after_the_round_closed_is_a_line_of_its_own() -> None:
    """The edges score round r's global model after it closed; when the record gets it, the stream says so once."""
    port = MemoryPort()
    job = started(port, exit_round=3)
    send(job, "edge1", 0, 0.0)
    send(job, "edge1", 1, 1.0)
    send(job, "edge2", 1, 3.0)
    port.events.clear()

    # What the round engine does when the edges' evaluations of round 1's global model are in.
    job.status.rounds[0].metrics = {"eval_accuracy": 0.8125, "eval_loss": 0.41}
    report(job, "edge1", WorkerState.TRAINING, 2)
    report(job, "edge2", WorkerState.TRAINING, 2)

    evaluated = [e for e in port.job_events(JOB) if e.reason == "RoundEvaluated"]
    assert [(e.round, e.data) for e in evaluated] == [(1, {"accuracy": 0.8125, "loss": 0.41})]
    assert evaluated[0].message == "round 1 global model: accuracy 0.812, loss 0.410"


def test_a_job_whose_aggregation_node_was_never_seen_is_reported_on_the_stream() -> None:
    """An aggregator that is not the job's (cloud1 here) reports it; its events are on the stream too."""
    port = MemoryPort()
    controller = Controller(node="cloud1", port=port, settings=JobSettings(chunk_size=4096, node_grace=30.0))
    for edge in ("edge1", "edge2"):
        announce(controller, edge)
    controller.ready(0.0)
    create(controller)

    controller.tick(30.0)

    said = [(e.type, e.reason) for e in port.job_events(JOB)]
    assert said == [("Normal", "WaitingForNode"), ("Warning", "UnknownNode")]


def test_changes_the_status_interval_holds_back_are_on_the_stream_at_once() -> None:
    """`status_interval` limits how often the retained status is republished, not what the stream says: a
    worker's Training -> Uploading -> Waiting within one interval is three lines, though the status topic
    gets none of it until the interval has passed."""
    port = MemoryPort()
    controller = Controller(
        node="cloud0", port=port, settings=JobSettings(chunk_size=4096, status_interval=60.0), new_uid=lambda: UID
    )
    for edge in ("edge1", "edge2"):
        announce(controller, edge)
    controller.ready(0.0)
    create(controller)
    job = controller.job(JOB)
    assert job is not None
    job.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=2), 0.1)
    send(job, "edge1", 0, 0.0)
    published = len(port.status_history)
    port.events.clear()

    for state in (WorkerState.TRAINING, WorkerState.UPLOADING, WorkerState.WAITING):
        report(job, "edge1", state, 1)

    assert len(port.status_history) == published  # held back by the interval
    assert [(e.reason, (e.data or {}).get("to")) for e in port.job_events(JOB)] == [
        ("WorkerStateChanged", "Training"),
        ("WorkerStateChanged", "Uploading"),
        ("WorkerStateChanged", "Waiting"),
    ]

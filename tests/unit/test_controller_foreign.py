"""Issue 8: a job whose aggregation node has never been seen gets a status from the aggregators that see
it (Pending naming the node, Failed after `node_grace`), until that node's status appears."""

from __future__ import annotations

from cloud_aggregator.engine import Controller, JobSettings
from cloud_aggregator.testing import MemoryPort
from schemas import JobStatus, Kind, Phase
from tests.unit.test_controller import FIXED, JOB, announce, documents, fixed_spec_hash, publish, ready_controller


def reporter(port: MemoryPort, node: str = "cloud1") -> Controller:
    """An aggregator `node` that has seen both edges but never the job's aggregation node cloud0."""
    controller = ready_controller(port, node=node, node_grace=30.0)
    for d in documents(FIXED):
        publish(controller, *d, 0.0)
    return controller


def essence(status: JobStatus) -> tuple[object, ...]:
    """A status without its timestamps."""
    return (
        status.phase,
        status.message,
        status.aggregation_node,
        status.spec_hash,
        status.uid,
        [(c.type, c.reason, c.message) for c in status.conditions],
        [(e.type, e.reason, e.message) for e in status.events],
    )


def test_job_of_an_aggregation_node_never_seen_is_reported_and_failed_after_the_grace() -> None:
    port = MemoryPort()
    controller = reporter(port)

    pending = port.job_status(JOB)
    assert pending.phase is Phase.PENDING and port.scripts == []
    assert "aggregation node cloud0 has never been seen" in pending.message
    assert pending.aggregation_node == "cloud0"
    assert (pending.events[-1].type, pending.events[-1].reason) == ("Normal", "WaitingForNode")
    controller.tick(29.0)
    assert port.job_status(JOB).phase is Phase.PENDING

    controller.tick(30.0)

    failed = port.job_status(JOB)
    assert failed.phase is Phase.FAILED and failed.conditions[-1].reason == "UnknownNode"
    assert "aggregation node cloud0 has never been seen (no node status from it within 30 s)" in failed.message
    assert port.scripts == []


def test_reporter_yields_when_the_aggregation_node_appears() -> None:
    """Once cloud0's status arrives the reporter stops touching the job: no Failed later, no clearing on delete."""
    port = MemoryPort()
    controller = reporter(port)
    published = len(port.status_history)

    announce(controller, "cloud0", role="aggregator", now_s=10.0)
    controller.tick(100.0)
    publish(controller, Kind.JOB, JOB, b"", 101.0)

    assert len(port.status_history) == published
    assert port.job_status(JOB).phase is Phase.PENDING


def test_deleting_a_reported_job_clears_the_status_the_reporter_published() -> None:
    port = MemoryPort()
    controller = reporter(port)

    publish(controller, Kind.JOB, JOB, b"", 5.0)

    assert port.statuses[(Kind.JOB, JOB)] is None


def test_two_reporters_publish_the_same_status() -> None:
    """Every aggregator that sees the job says the same thing: whichever copy the broker keeps is right."""
    ports = [MemoryPort(), MemoryPort()]
    controllers = [reporter(ports[0], "cloud1"), reporter(ports[1], "cloud2")]
    assert essence(ports[0].job_status(JOB)) == essence(ports[1].job_status(JOB))

    for controller in controllers:
        controller.tick(30.0)

    assert essence(ports[0].job_status(JOB)) == essence(ports[1].job_status(JOB))
    assert ports[0].job_status(JOB).phase is Phase.FAILED


def test_a_known_aggregation_node_from_a_retained_status_is_not_reported() -> None:
    """The node statuses read before ready() count: cloud0's retained presence means its job is left alone."""
    port = MemoryPort()
    controller = Controller(node="cloud1", port=port)
    announce(controller, "cloud0", role="aggregator")
    for d in documents(FIXED):
        publish(controller, *d)

    controller.ready(0.0)
    controller.tick(1000.0)

    assert (Kind.JOB, JOB) not in port.statuses


def test_a_reporter_never_overwrites_the_status_of_a_run() -> None:
    """A retained status with a uid (the job ran on cloud0 before its presence was lost) stays as it is."""
    port = MemoryPort()
    controller = Controller(node="cloud1", port=port, settings=JobSettings(node_grace=30.0))
    for d in documents(FIXED):
        publish(controller, *d)
    run = JobStatus(
        name=JOB, uid="c" * 32, phase=Phase.SUCCEEDED, spec_hash=fixed_spec_hash(), aggregation_node="cloud0"
    )
    controller.on_retained_status(Kind.JOB, JOB, run.to_json())

    controller.ready(0.0)
    controller.tick(1000.0)

    assert (Kind.JOB, JOB) not in port.statuses


def test_the_aggregation_node_runs_a_job_a_reporter_failed() -> None:
    """cloud0 starts later and finds the reporter's Failed/UnknownNode status: the job never ran, so it runs."""
    reporter_port = MemoryPort()
    reporter(reporter_port).tick(30.0)
    failed = reporter_port.job_status(JOB)

    port = MemoryPort()
    owner = Controller(node="cloud0", port=port)
    announce(owner, "edge1")
    announce(owner, "edge2")
    for d in documents(FIXED):
        publish(owner, *d)
    owner.on_retained_status(Kind.JOB, JOB, failed.to_json())
    owner.ready(0.0)

    assert [s.job for s in port.scripts] == [JOB]
    assert port.job_status(JOB).aggregation_node == "cloud0" and port.job_status(JOB).conditions == []


def test_a_reporters_status_is_never_kept_for_a_broker_that_loses_it() -> None:
    """The reporter does not own the job: after a broker loss it must not republish its report over the
    status of the real owner, which may have taken the job over meanwhile. Its Datasets and Models are
    kept (it accepted them), the job's spec, status and plan are not."""
    port = MemoryPort()
    controller = reporter(port)
    controller.tick(30.0)
    assert port.job_status(JOB).phase is Phase.FAILED

    kept = port.kept()

    assert (Kind.JOB, JOB) not in kept.specs
    assert (Kind.JOB, JOB) not in kept.statuses
    assert JOB not in kept.plans
    assert {k for k, _ in kept.statuses} == {Kind.DATASET, Kind.MODEL}

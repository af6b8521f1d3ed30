"""Issue 8: a job held back by something it names (a Dataset, a Model, a node) is re-evaluated when that
appears, and a node never seen is named in the status and fails the job after `node_grace`."""

from __future__ import annotations

import yaml

from cloud_aggregator.engine import Controller, JobSettings
from cloud_aggregator.testing import MemoryPort
from schemas import ConditionType, JobStatus, Kind, NodeState, NodeStatus, Phase, load_yaml_documents
from tests.unit.test_controller import FIXED, JOB, announce, documents, fixed_spec_hash, publish, ready_controller

MODEL = "surface-defect-detection-model"
DS1 = "edge1-surface-defect-detection-dataset"
DS2 = "edge2-surface-defect-detection-dataset"


def doc(kind: Kind, name: str) -> tuple[Kind, str, bytes]:
    return next(d for d in documents(FIXED) if d[0] is kind and d[1] == name)


def job_doc() -> tuple[Kind, str, bytes]:
    return doc(Kind.JOB, JOB)


def dataset_on(name: str, node: str) -> bytes:
    data = next(d for d in load_yaml_documents(FIXED.read_text(), str(FIXED)) if d["metadata"]["name"] == name)
    data["spec"]["nodeName"] = node
    return yaml.safe_dump(data, sort_keys=False).encode()


def reasons(status: JobStatus) -> list[str]:
    return [e.reason for e in status.events]


def failed_for_a_missing_dataset(port: MemoryPort) -> Controller:
    """A ready controller whose job failed (InvalidReference) because DS2 was never created."""
    controller = ready_controller(port, grace=5.0)
    for d in (doc(Kind.MODEL, MODEL), doc(Kind.DATASET, DS1), job_doc()):
        publish(controller, *d, 0.0)
    controller.tick(5.0)
    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED and status.conditions[-1].reason == "InvalidReference"
    assert f'Dataset "{DS2}" not found' in status.message
    assert port.scripts == []
    return controller


# -- item 1: a failed reference is re-evaluated --------------------------------------------------------


def test_job_failed_for_a_missing_dataset_starts_when_the_dataset_is_created() -> None:
    """Failed/InvalidReference, then the Dataset is created: the job starts, its status says why, and the
    Failed condition is gone while the earlier events stay."""
    port = MemoryPort()
    controller = failed_for_a_missing_dataset(port)

    publish(controller, *doc(Kind.DATASET, DS2), 20.0)

    assert [s.job for s in port.scripts] == [JOB]
    status = port.job_status(JOB)
    assert status.phase is Phase.PENDING and status.uid == "a" * 32
    assert not any(c.type is ConditionType.FAILED for c in status.conditions)
    assert reasons(status)[:4] == ["WaitingForReferences", "InvalidReference", "ReferencesResolved", "Starting"]
    assert status.events[2].message == f'Dataset "{DS2}" appeared: the job starts'


def test_job_failed_for_a_dataset_on_the_wrong_node_starts_when_the_dataset_is_fixed() -> None:
    """A Dataset that exists but lives on another node than its worker: Failed after the grace, and started
    when the Dataset is published again on the right node."""
    port = MemoryPort()
    controller = ready_controller(port, grace=5.0)
    for d in (doc(Kind.MODEL, MODEL), doc(Kind.DATASET, DS1), job_doc()):
        publish(controller, *d, 0.0)
    publish(controller, Kind.DATASET, DS2, dataset_on(DS2, "edge1"), 0.0)
    controller.tick(5.0)
    assert port.job_status(JOB).phase is Phase.FAILED
    assert "lives on node 'edge1' but this worker runs on node 'edge2'" in port.job_status(JOB).message

    publish(controller, Kind.DATASET, DS2, dataset_on(DS2, "edge2"), 9.0)

    assert [s.job for s in port.scripts] == [JOB]
    assert port.job_status(JOB).events[-2].message == f'Dataset "{DS2}" changed: the job starts'


def test_failed_job_partly_fixed_stays_failed_naming_what_is_still_missing() -> None:
    """Two Datasets missing, one created: still Failed, the message names only the other one."""
    port = MemoryPort()
    controller = ready_controller(port, grace=5.0)
    for d in (doc(Kind.MODEL, MODEL), job_doc()):
        publish(controller, *d, 0.0)
    controller.tick(5.0)

    publish(controller, *doc(Kind.DATASET, DS1), 6.0)

    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED and port.scripts == []
    assert f'"{DS2}" not found' in status.message and f'"{DS1}" not found' not in status.message
    assert status.conditions[-1].message == status.message


def test_job_failed_for_a_missing_dataset_is_re_evaluated_after_a_restart() -> None:
    """After a restart the retained Failed/InvalidReference status (same spec, never ran) is not taken as
    finished: left as it is while the Dataset is still missing, and the job starts when it is created."""
    first = MemoryPort()
    failed_for_a_missing_dataset(first)
    retained = first.job_status(JOB)

    port = MemoryPort()
    controller = Controller(node="cloud0", port=port, settings=JobSettings(reference_grace=5.0))
    announce(controller, "edge1")
    announce(controller, "edge2")
    for d in (doc(Kind.MODEL, MODEL), doc(Kind.DATASET, DS1), job_doc()):
        publish(controller, *d)
    controller.on_retained_status(Kind.JOB, JOB, retained.to_json())
    controller.ready(0.0)
    controller.tick(100.0)
    assert port.scripts == [] and (Kind.JOB, JOB) not in port.statuses  # nothing new to say

    publish(controller, *doc(Kind.DATASET, DS2), 101.0)

    assert [s.job for s in port.scripts] == [JOB]
    assert "InvalidReference" in reasons(port.job_status(JOB))  # its history carried over


def test_job_failed_for_a_missing_dataset_runs_at_restart_when_the_dataset_exists_now() -> None:
    first = MemoryPort()
    failed_for_a_missing_dataset(first)
    retained = first.job_status(JOB)
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port)
    announce(controller, "edge1")
    announce(controller, "edge2")
    for d in documents(FIXED):
        publish(controller, *d)
    controller.on_retained_status(Kind.JOB, JOB, retained.to_json())

    controller.ready(0.0)

    assert [s.job for s in port.scripts] == [JOB]
    assert port.job_status(JOB).events[-2].reason == "ReferencesResolved"


def test_job_that_ran_and_failed_is_not_run_again_after_a_restart() -> None:
    """Only a job that never ran is re-evaluated: a Failed run (it has a uid) stays Failed."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port)
    announce(controller, "edge1")
    announce(controller, "edge2")
    for d in documents(FIXED):
        publish(controller, *d)
    old = JobStatus(name=JOB, uid="c" * 32, phase=Phase.FAILED, spec_hash=fixed_spec_hash(), aggregation_node="cloud0")
    controller.on_retained_status(Kind.JOB, JOB, old.to_json())

    controller.ready(0.0)

    assert port.scripts == []


# -- item 2: training nodes never seen ------------------------------------------------------------------


def test_job_naming_a_node_never_seen_waits_names_it_and_fails_after_the_node_grace() -> None:
    port = MemoryPort()
    controller = ready_controller(port, node_grace=30.0, edges=("edge1",))

    for d in documents(FIXED):
        publish(controller, *d, 0.0)

    pending = port.job_status(JOB)
    assert pending.phase is Phase.PENDING and port.scripts == []
    assert pending.message == "waiting for node edge2 (never seen; fails after 30 s)"
    assert pending.waiting_for == ["edge2"]
    warning = pending.events[-1]
    assert (warning.type, warning.reason) == ("Normal", "WaitingForNode")
    assert "spec.trainingWorkers[1].nodeName: node edge2 has never been seen" in warning.message
    controller.tick(29.9)
    assert port.job_status(JOB).phase is Phase.PENDING

    controller.tick(30.0)

    failed = port.job_status(JOB)
    assert failed.phase is Phase.FAILED and port.scripts == []
    assert failed.conditions[-1].reason == "UnknownNode"
    assert "node edge2 has never been seen" in failed.message and "edge1" not in failed.message


def test_job_waiting_for_a_node_starts_when_the_node_appears() -> None:
    port = MemoryPort()
    controller = ready_controller(port, node_grace=30.0, edges=("edge1",))
    for d in documents(FIXED):
        publish(controller, *d, 0.0)

    announce(controller, "edge2", now_s=10.0)

    assert [s.job for s in port.scripts] == [JOB]
    status = port.job_status(JOB)
    assert reasons(status)[-3:] == ["WaitingForNode", "ReferencesResolved", "Starting"]
    assert status.events[-2].message == "node edge2 appeared: the job starts"
    controller.tick(31.0)
    assert port.job_status(JOB).phase is Phase.PENDING  # the engine's: starting its script, no failure


def test_job_failed_for_an_unknown_node_starts_when_the_node_appears() -> None:
    port = MemoryPort()
    controller = ready_controller(port, node_grace=30.0, edges=("edge1",))
    for d in documents(FIXED):
        publish(controller, *d, 0.0)
    controller.tick(30.0)
    assert port.job_status(JOB).phase is Phase.FAILED

    announce(controller, "edge2", now_s=500.0)

    assert [s.job for s in port.scripts] == [JOB]
    assert port.job_status(JOB).conditions == []


def test_retained_presence_counts_even_offline_so_the_job_starts_at_once() -> None:
    """Node statuses read before ready() (retained; an offline last will too) make a node known."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port)
    offline = NodeStatus(node="edge2", role="edge", state=NodeState.OFFLINE)
    controller.on_node_status("edge2", offline.to_json(), 0.0)
    announce(controller, "edge1")
    for d in documents(FIXED):
        publish(controller, *d)

    controller.ready(0.0)

    assert [s.job for s in port.scripts] == [JOB]
    assert not {"UnknownNode", "WaitingForNode"} & set(reasons(port.job_status(JOB)))


def test_training_worker_on_an_aggregator_node_is_named() -> None:
    port = MemoryPort()
    controller = ready_controller(port, edges=("edge1",))
    announce(controller, "edge2", role="aggregator")

    for d in documents(FIXED):
        publish(controller, *d, 0.0)

    assert port.job_status(JOB).message == (
        "waiting for node edge2 (seen as an aggregator node, not an edge; fails after 60 s)"
    )


def test_missing_dataset_and_unknown_node_each_keep_their_own_grace() -> None:
    port = MemoryPort()
    controller = ready_controller(port, grace=5.0, node_grace=30.0, edges=("edge1",))
    for d in (doc(Kind.MODEL, MODEL), doc(Kind.DATASET, DS1), job_doc()):
        publish(controller, *d, 0.0)
    assert port.job_status(JOB).message == (
        f'waiting for Dataset "{DS2}" (fails after 5 s); waiting for node edge2 (never seen; fails after 30 s)'
    )
    publish(controller, *doc(Kind.DATASET, DS2), 4.0)
    controller.tick(10.0)
    assert port.job_status(JOB).phase is Phase.PENDING

    controller.tick(30.0)

    assert port.job_status(JOB).conditions[-1].reason == "UnknownNode"

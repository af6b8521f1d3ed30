"""Issue 8: the broker is a medium, not the source of truth. A controller restarted against a broker that lost
(or turned back) its retained state restores what it kept; only an explicit delete deletes.

Each test runs the controller twice on one `MemoryDisk` (the node root survives, the broker does not): the
first run accepts specs and publishes statuses, the second sees whatever the "broker" delivers."""

from __future__ import annotations

from pathlib import Path

import structlog

from cloud_aggregator.engine import Controller, JobSettings
from cloud_aggregator.service import BrokerView, KeptStore
from cloud_aggregator.testing import MemoryDisk, MemoryPort
from schemas import JobStatus, Kind, Phase, ResourceStatus, Topics
from tests.unit.test_aggregator_intake import send, training, transfer
from tests.unit.test_controller import FIXED, JOB, TOPICS, announce, documents, fixed_spec_hash, job_payload
from tests.unit.test_job_rounds import weights

DATASETS = [name for kind, name, _ in documents(FIXED) if kind is Kind.DATASET]


def controller_on(disk: MemoryDisk, uid: str) -> tuple[Controller, MemoryPort]:
    port = MemoryPort(disk=disk)
    controller = Controller(node="cloud0", port=port, settings=JobSettings(chunk_size=4096), new_uid=lambda: uid)
    for edge in ("edge1", "edge2"):  # the edges' presence, retained on the broker: the job is not held for them
        announce(controller, edge)
    return controller, port


def spec(controller: Controller, kind: Kind, name: str, payload: bytes, *, retained: bool = True) -> None:
    controller.on_spec(kind, name, TOPICS.spec(kind, name), payload, 0.0, retained=retained)


def first_run(disk: MemoryDisk, *, finished: bool) -> None:
    """`flctl create` of the example; the job starts (uid a...) and runs; `finished`: it then Succeeded."""
    controller, port = controller_on(disk, "a" * 32)
    controller.ready(0.0)
    for kind, name, payload in documents(FIXED):
        spec(controller, kind, name, payload, retained=False)
    assert [s.uid for s in port.scripts] == ["a" * 32]
    # What the engine publishes once the script's config came, and at the end (whole runs are
    # tests/unit/test_job_rounds.py's).
    phase = Phase.SUCCEEDED if finished else Phase.RUNNING
    status = JobStatus(name=JOB, uid="a" * 32, phase=phase, spec_hash=fixed_spec_hash(), aggregation_node="cloud0")
    port.publish_status(Kind.JOB, JOB, status)


def test_specs_a_broker_lost_are_restored_and_a_finished_job_keeps_its_status() -> None:
    """The broker comes back empty: every kept spec is accepted again (Datasets and Models valid), the
    Succeeded job is not run again and nothing of it is cleared."""
    disk = MemoryDisk()
    first_run(disk, finished=True)

    controller, port = controller_on(disk, "b" * 32)
    controller.ready(0.0)

    assert sorted(controller.datasets) == sorted(DATASETS)
    for name in DATASETS:
        assert port.resource_status(Kind.DATASET, name).valid
    assert port.scripts == [], "a Succeeded job ran again"
    assert all(status is not None for _, _, status in port.status_history), port.status_history
    assert port.plans.get(JOB, "untouched") == "untouched"
    kept = disk.kept
    assert JobStatus.model_validate_json(kept.statuses[(Kind.JOB, JOB)]).phase is Phase.SUCCEEDED
    assert (Kind.JOB, JOB) in kept.specs and not kept.deleted


def test_running_job_whose_status_the_broker_lost_resumes_with_its_uid() -> None:
    """Mid-job, the broker loses everything and the aggregator restarts: the kept Running status resumes the
    same run (uid a...), not a new one."""
    disk = MemoryDisk()
    first_run(disk, finished=False)

    controller, port = controller_on(disk, "b" * 32)
    controller.ready(0.0)

    assert [s.uid for s in port.scripts] == ["a" * 32]


def test_kept_status_wins_over_an_old_snapshot() -> None:
    """A broker restarted from an old snapshot delivers the job's Running status of long ago: the kept
    Succeeded status decides, the job is not run again."""
    disk = MemoryDisk()
    first_run(disk, finished=True)

    controller, port = controller_on(disk, "b" * 32)
    for kind, name, payload in documents(FIXED):
        spec(controller, kind, name, payload)
    old = JobStatus(name=JOB, uid="a" * 32, phase=Phase.RUNNING, spec_hash=fixed_spec_hash(), aggregation_node="cloud0")
    controller.on_retained_status(Kind.JOB, JOB, old.to_json())
    controller.ready(0.0)

    assert port.scripts == []
    assert (Kind.JOB, JOB) not in port.statuses  # not published by the controller: the service's resync does it


def test_deleted_spec_that_an_old_snapshot_brings_back_is_cleared_again() -> None:
    """`flctl delete` of the job, then the broker restarts from a snapshot taken before: the retained spec
    and status of the deleted job come back. The spec is cleared again, the status too, nothing runs."""
    disk = MemoryDisk()
    first_run(disk, finished=True)
    controller, port = controller_on(disk, "a" * 32)
    controller.ready(0.0)
    spec(controller, Kind.JOB, JOB, b"", retained=False)
    assert disk.kept.was_deleted(Kind.JOB, JOB)

    controller, port = controller_on(disk, "b" * 32)
    for kind, name, payload in documents(FIXED):
        spec(controller, kind, name, payload)
    old = JobStatus(name=JOB, uid="a" * 32, phase=Phase.RUNNING, spec_hash=fixed_spec_hash(), aggregation_node="cloud0")
    controller.on_retained_status(Kind.JOB, JOB, old.to_json())
    controller.ready(0.0)

    assert port.restored_specs == [(Kind.JOB, JOB, b"")]
    assert port.scripts == []
    assert port.statuses[(Kind.JOB, JOB)] is None and port.plans[JOB] is None
    assert sorted(controller.datasets) == sorted(DATASETS)  # the job's delete deleted only the job


def test_other_spec_published_while_the_aggregator_was_down_is_accepted() -> None:
    """After a delete, a different spec of the same name on the broker is a new job (not the deleted one)."""
    disk = MemoryDisk()
    first_run(disk, finished=True)
    controller, _ = controller_on(disk, "a" * 32)
    controller.ready(0.0)
    spec(controller, Kind.JOB, JOB, b"", retained=False)

    controller, port = controller_on(disk, "b" * 32)
    changed = job_payload({"spec.aggregationWorker.workerSpec.parameters.0.value": "7"})
    for kind, name, payload in documents(FIXED):
        spec(controller, kind, name, changed if kind is Kind.JOB else payload)
    controller.ready(0.0)

    assert port.restored_specs == []
    assert [s.uid for s in port.scripts] == ["b" * 32]
    assert not disk.kept.was_deleted(Kind.JOB, JOB)


def test_the_same_spec_created_again_live_is_a_new_job_and_stays() -> None:
    """Delete and create the same file while the aggregator runs: a re-create (it ran again), and a later
    reconnect that delivers that spec retained does not take it for the deleted one."""
    disk = MemoryDisk()
    first_run(disk, finished=True)
    controller, port = controller_on(disk, "c" * 32)
    controller.ready(0.0)
    payload = next(p for k, _, p in documents(FIXED) if k is Kind.JOB)
    spec(controller, Kind.JOB, JOB, b"", retained=False)
    spec(controller, Kind.JOB, JOB, payload, retained=False)
    assert [s.uid for s in port.scripts] == ["c" * 32]

    controller.begin_audit()
    spec(controller, Kind.JOB, JOB, payload)  # the reconnect's retained copy
    controller.end_audit()

    assert port.restored_specs == []
    assert controller.job(JOB) is not None and not controller.job(JOB).finished  # type: ignore[union-attr]


def test_status_without_a_spec_this_node_never_kept_is_left_alone() -> None:
    """A missing spec is not a delete: with no tombstone, the retained status of an unknown job stays."""
    port = MemoryPort()
    controller = Controller(node="cloud0", port=port)
    old = JobStatus(name="unknown", phase=Phase.SUCCEEDED, aggregation_node="cloud0")
    controller.on_retained_status(Kind.JOB, "unknown", old.to_json())
    gone = ResourceStatus(kind="Dataset", name="lost", valid=True)
    controller.on_retained_status(Kind.DATASET, "lost", gone.to_json())

    controller.ready(0.0)

    assert port.status_history == []


def test_reconnect_audit_clears_what_an_old_snapshot_kept_of_a_deleted_job() -> None:
    """While the aggregator runs, the job is deleted; the broker restarts from an older snapshot that still
    holds the job's status: the audit after the reconnect clears it."""
    disk = MemoryDisk()
    first_run(disk, finished=True)
    controller, port = controller_on(disk, "a" * 32)
    controller.ready(0.0)
    spec(controller, Kind.JOB, JOB, b"", retained=False)
    port.status_history.clear()

    controller.begin_audit()
    old = JobStatus(name=JOB, uid="a" * 32, phase=Phase.RUNNING, spec_hash=fixed_spec_hash(), aggregation_node="cloud0")
    controller.on_retained_status(Kind.JOB, JOB, old.to_json())
    controller.end_audit()

    assert port.status_history == [(Kind.JOB, JOB, None)]


# -- the files (ROOT/state/_kept) and what the broker is seen to hold -------------------------------------


def test_kept_store_survives_a_restart_and_records_tombstones(tmp_path: Path) -> None:
    log = structlog.get_logger()
    topics = Topics("fl")
    store = KeptStore(tmp_path, topics, log)
    store.keep_spec(Kind.DATASET, "d1", b"dataset spec")
    store.keep_spec(Kind.JOB, "j1", b"job spec")
    store.keep_status(Kind.JOB, "j1", b'{"phase": "Running"}')
    store.keep_plan("j1", b"plan")
    store.keep_spec(Kind.MODEL, "m1", b"model spec")
    store.forget_spec(Kind.MODEL, "m1", deleted=True)
    store.keep_status(Kind.DATASET, "d1", b"valid")
    store.keep_status(Kind.DATASET, "d1", None)

    again = KeptStore(tmp_path, topics, log).state

    assert again.specs == {(Kind.DATASET, "d1"): b"dataset spec", (Kind.JOB, "j1"): b"job spec"}
    assert again.statuses == {(Kind.JOB, "j1"): b'{"phase": "Running"}'}
    assert again.plans == {"j1": b"plan"}
    assert again.was_deleted(Kind.MODEL, "m1", b"model spec") and not again.was_deleted(Kind.MODEL, "m1", b"other")
    assert (tmp_path / "state" / "_kept" / "federatedlearningjobs" / "j1" / "spec").read_bytes() == b"job spec"


def test_only_what_the_broker_was_not_seen_holding_is_republished(tmp_path: Path) -> None:
    store = KeptStore(tmp_path, Topics("fl"), structlog.get_logger())
    store.keep_spec(Kind.DATASET, "d1", b"d1")
    store.keep_spec(Kind.DATASET, "d2", b"d2")
    store.keep_spec(Kind.DATASET, "d3", b"d3")
    view = BrokerView()
    view.saw("fl/datasets/d1/spec", b"d1", 2)  # held, on this connection
    view.saw("fl/datasets/d2/spec", b"d2", 1)  # held before the broker restarted: not any more
    view.saw("fl/datasets/d3/spec", b"old", 2)  # an old copy

    stale = view.stale(store.entries(), 2)

    assert stale == [("fl/datasets/d2/spec", b"d2"), ("fl/datasets/d3/spec", b"d3")]


# -- the last global model, which a broker that lost its state no longer holds ------------------------


def test_last_global_model_is_published_again_only_when_the_broker_lost_it() -> None:
    """After round 1 closed, a reconnect finds no retained global manifest: the checkpointed round-1 model
    is published again, byte for byte; with the manifest held, nothing is published."""
    port = MemoryPort()
    job = training(port)
    for node in ("edge1", "edge2"):
        manifest, chunks = transfer(node, 1, weights(2.0))
        send(job, node, manifest, chunks, 1.0)
    published = list(port.published_globals)
    assert [g.round for g in published] == [0, 1]

    job.republish_global(lambda round_: round_ == 1)
    assert port.published_globals == published

    job.republish_global(lambda round_: False)
    again = port.published_globals[-1]
    assert len(port.published_globals) == 3 and again.round == 1 and again.blob == published[-1].blob
    assert not again.final and again.uid == published[-1].uid


def test_a_job_moved_to_another_aggregation_node_is_not_kept_here() -> None:
    """A job waiting for its references is replaced by a spec for cloud9: this node forgets its spec and its
    Pending status (the other node's status must never be overwritten from this node's copy)."""
    disk = MemoryDisk()
    controller, port = controller_on(disk, "b" * 32)
    controller.ready(0.0)
    spec(controller, Kind.JOB, JOB, job_payload(), retained=False)
    assert port.job_status(JOB).phase is Phase.PENDING and (Kind.JOB, JOB) in disk.kept.statuses

    spec(controller, Kind.JOB, JOB, job_payload({"spec.aggregationWorker.nodeName": "cloud9"}), retained=False)

    assert (Kind.JOB, JOB) not in disk.kept.specs and (Kind.JOB, JOB) not in disk.kept.statuses
    assert not disk.kept.deleted


def test_a_delete_interrupted_after_its_tombstone_is_a_delete(tmp_path: Path) -> None:
    """A crash between writing the tombstone and removing the spec file: the next start has no spec kept."""
    log, topics = structlog.get_logger(), Topics("fl")
    store = KeptStore(tmp_path, topics, log)
    store.keep_spec(Kind.JOB, "j1", b"job spec")
    store.forget_spec(Kind.JOB, "j1", deleted=True)
    (tmp_path / "state" / "_kept" / "federatedlearningjobs" / "j1" / "spec").write_bytes(b"job spec")

    again = KeptStore(tmp_path, topics, log).state

    assert again.specs == {} and again.was_deleted(Kind.JOB, "j1", b"job spec")


def test_a_finished_job_is_still_this_nodes_after_a_restart() -> None:
    """`run_of` (what the aggregator answers `flctl logs` and `flctl audit` for) names the run of a job that
    Succeeded before the restart, though no engine runs it now; a job of no spec here is not this node's."""
    disk = MemoryDisk()
    first_run(disk, finished=True)
    controller, port = controller_on(disk, "b" * 32)
    assert controller.run_of(JOB) is None  # before the barrier nothing is known
    controller.ready(0.0)
    assert port.scripts == []
    assert controller.job(JOB) is None and controller.run_of(JOB) == "a" * 32
    assert controller.run_of("another-job") is None

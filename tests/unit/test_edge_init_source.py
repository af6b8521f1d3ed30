"""Issue 12: one designated worker uploads the initial weights; the others wait for the round-0 model and
upload theirs only when it does not come within the plan's init_wait (the edge state machine, fake clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_trainer.engine import EdgeJob, LaunchSpec, UploadDone
from edge_trainer.testing import RecordingPorts, ScriptedWorker
from schemas import JobPlan, NodeRoot, PlannedWorker, WorkerFrame, WorkerState
from tests.helpers.nodes import edge_node_root
from tests.unit.test_edge_job import JOB, NODE, Harness, global_model, make_plan, weights_blob

OTHER = "edge0"  # the worker a plan names as the init source, when it is not this node


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A node root with the test plan's label file and script (as test_edge_job's)."""
    return edge_node_root(tmp_path, NODE)


class Clock:
    """A clock the test moves: the job reads it, nothing sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plan_with(init_source: str | None, *, init_wait: float = 20.0) -> JobPlan:
    """The test plan with `OTHER` as a training worker too and the given init source."""
    plan = make_plan()
    mine = plan.workers[0]
    other = PlannedWorker(node=OTHER, dataset=mine.dataset, script=mine.script, parameters=dict(mine.parameters))
    return plan.model_copy(
        update={
            "participants": [OTHER, NODE],
            "workers": [other, mine],
            "init_source": init_source,
            "init_wait": init_wait,
        }
    )


def hello(
    root: Path,
    plan: JobPlan,
    clock: Clock,
    *,
    outbox: set[int] | None = None,
    delivered: int = -1,
    init: bytes | None = None,
) -> Harness:
    ports, worker, launches = RecordingPorts(), ScriptedWorker(), []
    ports.outbox = outbox or set()
    ports.delivered = delivered

    def launcher(spec: LaunchSpec, run_id: str) -> ScriptedWorker:
        launches.append(spec)
        return worker

    job = EdgeJob(
        plan,
        node=NODE,
        root=NodeRoot(root),
        ports=ports,
        launcher=launcher,
        tf_version=lambda: "2.21.0",
        pending_rounds=lambda: set(ports.outbox),
        delivered_round=lambda: ports.delivered,
        clock=clock,
    )
    assert job.start()
    job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), init or weights_blob("init", 0))
    return Harness(job, ports, worker, launches)


def test_the_plan_checks_its_init_source_and_says_who_waits() -> None:
    """initSource must be a training worker; the designated worker and plans without one do not wait."""
    plan = plan_with(OTHER)
    assert plan.waits_for_init(NODE) and not plan.waits_for_init(OTHER)
    assert not plan_with(None).waits_for_init(NODE)
    assert not plan_with(OTHER, init_wait=0).waits_for_init(NODE)  # init_wait 0: everyone uploads
    wire = plan.to_json()
    assert b'"initSource":"edge0"' in wire and b'"initWait":20.0' in wire
    assert JobPlan.model_validate_json(wire) == plan
    with pytest.raises(ValueError, match="initSource 'edge9' is not a training worker"):
        JobPlan.model_validate({**plan.model_dump(by_alias=True), "initSource": "edge9"})


def test_the_designated_worker_uploads_its_init_at_once(root: Path) -> None:
    h = hello(root, plan_with(NODE), Clock())
    [upload] = h.ports.uploads
    assert (upload.kind, upload.round) == ("init", 0)
    assert h.ports.state() is WorkerState.UPLOADING
    assert h.job.next_deadline() is None


def test_a_plan_without_an_init_source_uploads_as_before(root: Path) -> None:
    h = hello(root, plan_with(None), Clock())
    assert [(u.kind, u.round) for u in h.ports.uploads] == [("init", 0)]
    assert h.job.next_deadline() is None


def test_another_worker_waits_then_uploads_its_init_when_no_global_model_came(root: Path) -> None:
    """Ready, saying whose round-0 model it waits for; nothing before the deadline; the init at the deadline."""
    clock, init = Clock(), weights_blob("init", 0, value=0.5)
    h = hello(root, plan_with(OTHER, init_wait=20.0), clock, init=init)
    assert h.ports.uploads == []
    assert (h.ports.state(), h.ports.last.round) == (WorkerState.READY, 0)
    assert h.ports.last.message == f"waiting for the round-0 model from {OTHER}"
    assert h.job.next_deadline() == 1020.0
    clock.now = 1019.9
    h.job.tick(clock.now)
    assert h.ports.uploads == []
    clock.now = 1020.0
    h.job.tick(clock.now)
    [upload] = h.ports.uploads
    assert (upload.kind, upload.round, upload.blob) == ("init", 0, init)
    assert h.ports.state() is WorkerState.UPLOADING
    assert f"no round-0 model from {OTHER} within 20 s" in h.ports.last.message
    assert h.job.next_deadline() is None
    h.job.tick(clock.now + 100)  # fired once
    assert len(h.ports.uploads) == 1
    h.job.on_uploaded(UploadDone(JOB, h.job.run_id, "init", 0))
    assert h.ports.state() is WorkerState.READY
    h.job.on_global(*global_model(0))
    assert h.worker.types() == [("train", 1)]


def test_a_global_model_before_the_deadline_cancels_the_wait(root: Path) -> None:
    clock = Clock()
    h = hello(root, plan_with(OTHER), clock)
    h.job.on_global(*global_model(0))
    assert h.worker.types() == [("train", 1)]
    assert h.job.next_deadline() is None
    clock.now += 3600
    h.job.tick(clock.now)
    assert h.ports.uploads == []


def test_a_deleted_job_uploads_nothing_at_the_deadline(root: Path) -> None:
    clock = Clock()
    h = hello(root, plan_with(OTHER), clock)
    h.job.delete()
    assert h.job.next_deadline() is None
    h.job.tick(clock.now + 3600)
    assert h.ports.uploads == []


@pytest.mark.parametrize(("outbox", "delivered"), [({2}, -1), (set(), 0)])
def test_restarts_keep_their_logic_with_an_init_source(root: Path, outbox: set[int], delivered: int) -> None:
    """A pending update or a confirmed init implies a round-0 model: no init, no wait, as without a source."""
    h = hello(root, plan_with(OTHER), Clock(), outbox=outbox, delivered=delivered)
    assert h.ports.uploads == []
    assert h.ports.last.message == "waiting for the newest global model"
    assert h.job.next_deadline() is None


def test_a_restart_with_a_known_global_model_does_not_wait(root: Path) -> None:
    clock = Clock()
    ports, worker = RecordingPorts(), ScriptedWorker()
    job = EdgeJob(
        plan_with(OTHER),
        node=NODE,
        root=NodeRoot(root),
        ports=ports,
        launcher=lambda spec, run_id: worker,
        tf_version=lambda: "2.21.0",
        clock=clock,
    )
    assert job.start()
    job.on_global(*global_model(2))
    job.on_frame(WorkerFrame(type="hello", num_samples=8, has_body=True), weights_blob("init", 0))
    assert ports.uploads == [] and job.next_deadline() is None
    assert worker.types() == [("train", 3)]

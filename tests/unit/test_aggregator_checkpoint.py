"""Durable store, checkpoints and resume after a crash: the files (StateStore) and the engine (shared MemoryDisk)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cloud_aggregator.engine import Checkpoint, Controller, Job, JobFacts, Stage
from cloud_aggregator.service import StateStore
from cloud_aggregator.testing import MemoryPort
from schemas import JobStatus, Kind, Phase, WorkerFrame, WorkerState, WorkerStatus, decode_weights
from tests.unit.test_aggregator_intake import send, training, transfer
from tests.unit.test_controller import FIXED, documents, publish
from tests.unit.test_job_rounds import JOB, SETTINGS, UID, load_example, report, weights


def restarted(old: MemoryPort, *, exit_round: int = 3, uid: str = UID) -> tuple[MemoryPort, Job]:
    """A new engine for the same run on the same disk, as the controller makes it after kill -9."""
    port = MemoryPort(disk=old.disk)
    spec, datasets, models = load_example()
    job = Job(
        JobFacts.of(spec, datasets, models, node="cloud0", uid=uid, settings=SETTINGS, resume=True),
        port,
        previous_status=old.statuses.get((Kind.JOB, JOB)),  # type: ignore[arg-type]
    )
    job.start(100.0)
    job.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=exit_round), 100.1)
    return port, job


# -- files -----------------------------------------------------------------------------------------


def test_state_store_writes_atomically_and_reads_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.store_update(JOB, 2, "edge1", "ab" * 8, b"blob-1")
    store.store_update(JOB, 2, "edge-2", "cd" * 8, b"blob-2")
    (tmp_path / "state" / JOB / "spool" / "2" / ".edge3-x.blob.tmp").write_bytes(b"half")

    spooled = store.spooled_updates(JOB, 2)

    assert sorted((s.node, s.transfer, s.blob) for s in spooled) == [
        ("edge-2", "cd" * 8, b"blob-2"),
        ("edge1", "ab" * 8, b"blob-1"),
    ]
    assert store.spooled_updates(JOB, 3) == []

    status = JobStatus(name=JOB, uid=UID, phase=Phase.RUNNING)
    for r in (1, 2):
        checkpoint = Checkpoint(
            job=JOB,
            uid=UID,
            spec_hash="h",
            closed_round=r,
            exit_round=3,
            participants=["edge1", "edge-2"],
            strategy="FedAvg",
            folded={"1": [("edge1", "ab" * 8)]},
            status=status,
        )
        store.save_checkpoint(checkpoint, f"global-{r}".encode())
    loaded = store.load_checkpoint(JOB)
    assert loaded is not None and loaded[0].closed_round == 2 and loaded[1] == b"global-2"
    folder = tmp_path / "state" / JOB
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "global-2.blob", "spool"]
    assert json.loads((folder / "checkpoint.json").read_text())["closedRound"] == 2

    store.drop_spool(JOB, 2)
    assert store.spooled_updates(JOB, 2) == []
    store.clear_state(JOB)
    assert not folder.exists() and store.load_checkpoint(JOB) is None
    store.clear_state(JOB)  # twice is fine


# -- engine ----------------------------------------------------------------------------------------


def test_update_is_stored_before_it_is_acknowledged_and_each_closed_round_is_checkpointed() -> None:
    port = MemoryPort()
    job = training(port)
    checkpoint, blob = port.disk.checkpoints[JOB]
    assert checkpoint.closed_round == 0 and checkpoint.uid == UID and checkpoint.folded["0"][0][0] == "edge1"
    np.testing.assert_array_equal(decode_weights(blob)[1][0], weights(0.0)[0])

    manifest, chunks = transfer("edge1", 1, weights(1.0))
    send(job, "edge1", manifest, chunks, 1.0)
    assert port.acks[-1].accepted and [e.transfer for e in port.spooled_updates(JOB, 1)] == [manifest.transfer]

    other, other_chunks = transfer("edge2", 1, weights(3.0))
    send(job, "edge2", other, other_chunks, 2.0)

    checkpoint, blob = port.disk.checkpoints[JOB]
    assert checkpoint.closed_round == 1
    assert sorted(checkpoint.folded["1"]) == [("edge1", manifest.transfer), ("edge2", other.transfer)]
    assert checkpoint.status.rounds[-1].round == 1
    np.testing.assert_allclose(decode_weights(blob)[1][0], np.full((3, 2), 2.0))
    assert port.spooled_updates(JOB, 1) == []


def test_resume_mid_round_refolds_the_spool_once() -> None:
    """Killed after edge1's round-1 update was stored: the restart counts it from the spool, exactly once."""
    old = MemoryPort()
    job = training(old)
    first, first_chunks = transfer("edge1", 1, weights(1.0))
    send(job, "edge1", first, first_chunks, 1.0)

    port, job = restarted(old)

    assert port.scripts and port.scripts[0].uid == UID
    assert job.stage is Stage.TRAINING and job.round == 1
    assert [g.round for g in port.published_globals] == [0]  # the latest global republished, retained
    assert port.plans[JOB] is not None and port.plans[JOB].uid == UID
    status = port.job_status(JOB)
    assert status.phase is Phase.RUNNING and status.waiting_for == ["edge2"]
    assert any(e.reason == "Resumed" for e in status.events)

    job.on_update_manifest("edge1", 1, first, 101.0)  # the edge's outbox resends its manifest
    assert port.acks[-1].accepted and port.acks[-1].reason == "already stored"
    send(job, "edge1", first, first_chunks, 101.5)  # and a full replay

    second, second_chunks = transfer("edge2", 1, weights(4.0))
    send(job, "edge2", second, second_chunks, 102.0)
    assert job.round == 2
    np.testing.assert_allclose(port.published_globals[-1].arrays[0], np.full((3, 2), 2.5))
    assert port.job_status(JOB).rounds[-1].participants == ["edge1", "edge2"]


def test_resume_after_a_closed_round_opens_the_next_one() -> None:
    old = MemoryPort()
    job = training(old)
    for node in ("edge1", "edge2"):
        manifest, chunks = transfer(node, 1, weights(2.0))
        send(job, node, manifest, chunks, 1.0)
    assert job.round == 2

    port, job = restarted(old)

    assert job.round == 2 and job.stage is Stage.TRAINING
    assert [g.round for g in port.published_globals] == [1]
    np.testing.assert_allclose(port.published_globals[0].arrays[0], np.full((3, 2), 2.0))
    status = port.job_status(JOB)
    # current_round is the round in progress (what the message and `flctl get`'s ROUND say), one closed.
    assert status.current_round == 2 and [r.round for r in status.rounds] == [1]
    late, late_chunks = transfer("edge1", 1, weights(9.0), transfer_id="ef" * 8)
    send(job, "edge1", late, late_chunks, 101.0)
    assert not port.acks[-1].accepted and "round 1 is closed" in port.acks[-1].reason


def test_resume_after_the_final_round_waits_for_completion() -> None:
    old = MemoryPort()
    job = training(old)
    for r in (1, 2, 3):
        for node in ("edge1", "edge2"):
            manifest, chunks = transfer(node, r, weights(float(r)))
            send(job, node, manifest, chunks, float(r))
    assert job.stage is Stage.FINAL

    port, job = restarted(old)

    assert job.stage is Stage.FINAL
    assert job.round == 3  # the round that closed, not 0
    assert port.published_globals[-1].round == 3 and port.published_globals[-1].final
    report(job, "edge1", WorkerState.COMPLETED, uid=UID)
    report(job, "edge2", WorkerState.COMPLETED, uid=UID)
    assert port.job_status(JOB).phase is Phase.SUCCEEDED


def test_resume_without_a_checkpoint_waits_for_round0_with_the_same_uid() -> None:
    old = MemoryPort()
    port, job = restarted(old)

    assert job.stage is Stage.INIT and job.facts.uid == UID and port.published_globals == []
    # The round-0 model is awaited from the plan's init source (issue 12): no presence known here, the first.
    plan = port.plans[JOB]
    assert plan is not None and plan.init_source == "edge1"
    assert port.job_status(JOB).waiting_for == ["edge1"]


def test_checkpoint_of_another_run_is_not_resumed() -> None:
    old = MemoryPort()
    training(old)

    port, job = restarted(old, uid="f" * 32)

    assert job.stage is Stage.INIT and port.published_globals == []
    assert JOB not in port.disk.checkpoints


def test_a_new_run_clears_the_old_state() -> None:
    old = MemoryPort()
    training(old)
    port = MemoryPort(disk=old.disk)
    spec, datasets, models = load_example()
    Job(JobFacts.of(spec, datasets, models, node="cloud0", uid="e" * 32, settings=SETTINGS), port).start(0)
    assert JOB not in port.disk.checkpoints


def test_controller_resumes_from_the_checkpoint_with_retained_worker_statuses() -> None:
    """The whole restart path: retained spec, Running status and worker statuses, then ready()."""
    old = MemoryPort()
    job = training(old)
    for r in (1, 2, 3):
        for node in ("edge1", "edge2"):
            manifest, chunks = transfer(node, r, weights(float(r)))
            send(job, node, manifest, chunks, float(r))
    report(job, "edge1", WorkerState.COMPLETED, uid=UID)  # edge2 had not reported yet when we died
    retained = old.job_status(JOB)

    port = MemoryPort(disk=old.disk)
    controller = Controller(node="cloud0", port=port, settings=SETTINGS, new_uid=lambda: "b" * 32)
    for doc in documents(FIXED):
        publish(controller, *doc)
    controller.on_retained_status(Kind.JOB, JOB, retained.to_json())
    done = WorkerStatus(job=JOB, node="edge2", uid=UID, state=WorkerState.COMPLETED)
    controller.on_worker_status(JOB, "edge2", done.to_json(), retained=True)
    controller.ready(50.0)
    assert [s.uid for s in port.scripts] == [UID]

    controller.on_script_frame(JOB, UID, WorkerFrame(type="config", aggregation="FedAvg", exit_round=3), 50.1)

    status = port.job_status(JOB)
    assert status.phase is Phase.SUCCEEDED and status.uid == UID
    assert [r.round for r in status.rounds] == [1, 2, 3]


def test_update_arriving_while_a_resumed_run_waits_for_its_script_is_taken_afterwards() -> None:
    """Not refused for good while STARTING: kept, and handled once the round state is restored."""
    old = MemoryPort()
    training(old)
    port = MemoryPort(disk=old.disk)
    spec, datasets, models = load_example()
    job = Job(JobFacts.of(spec, datasets, models, node="cloud0", uid=UID, settings=SETTINGS, resume=True), port)
    job.start(100.0)
    manifest, chunks = transfer("edge2", 1, weights(1.0))
    send(job, "edge2", manifest, chunks, 100.5)
    assert port.acks == []

    job.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=3), 101.0)

    assert port.acks[-1].accepted and port.acks[-1].transfer == manifest.transfer
    assert port.job_status(JOB).waiting_for == ["edge1"]


def test_resume_without_a_checkpoint_keeps_the_first_plans_init_source() -> None:
    """The run's first plan asked edge2 (edge1 was offline then); after a restart without a checkpoint the
    rebuilt plan still names edge2, though nothing says edge1 is offline now: the running edges ignore a
    plan of the same run and keep waiting for edge2's init."""
    old = MemoryPort()
    old.keep_spec(Kind.JOB, JOB, b"{}")  # a plan is kept for a job whose spec is kept
    _, first = restarted(old)
    plan = first.plan
    assert plan is not None and plan.init_source == "edge1"
    old.publish_plan(JOB, plan.model_copy(update={"init_source": "edge2"}))

    port, _ = restarted(old)

    plan = port.plans[JOB]
    assert plan is not None and plan.uid == UID and plan.init_source == "edge2"
    assert port.job_status(JOB).waiting_for == ["edge2"]


def test_a_kept_plan_of_another_run_does_not_choose_the_init_source() -> None:
    old = MemoryPort()
    old.keep_spec(Kind.JOB, JOB, b"{}")
    _, first = restarted(old)
    assert first.plan is not None
    old.publish_plan(JOB, first.plan.model_copy(update={"init_source": "edge2", "uid": "0" * 32}))

    port, _ = restarted(old)

    plan = port.plans[JOB]
    assert plan is not None and plan.init_source == "edge1"

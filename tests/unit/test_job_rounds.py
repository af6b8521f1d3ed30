"""The round engine driven by method calls with small synthetic weights: no broker, no TensorFlow, no processes."""

from __future__ import annotations

import socket
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from cloud_aggregator import AggregationServer, WorkerScriptError
from cloud_aggregator.engine import Job, JobFacts, JobSettings, Stage
from cloud_aggregator.testing import MemoryPort, make_transfer
from runtime import WorkerChannel
from schemas import (
    MAX_EXIT_ROUND,
    ConditionType,
    Dataset,
    FederatedLearningJob,
    Kind,
    Model,
    Phase,
    TransferManifest,
    WorkerFrame,
    WorkerState,
    WorkerStatus,
    now,
    parse_documents,
    weights_digest,
)

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"
)
JOB = "surface-defect-detection"
UID = "0123456789abcdef0123456789abcdef"
EDGES = ["edge1", "edge2"]
SETTINGS = JobSettings(chunk_size=4096)
Arrays = list[npt.NDArray[Any]]


def load_example() -> tuple[FederatedLearningJob, dict[str, Dataset], dict[str, Model]]:
    resources = parse_documents(EXAMPLE.read_text(), str(EXAMPLE))
    job = next(r for r in resources if isinstance(r, FederatedLearningJob))
    datasets = {r.metadata.name: r for r in resources if isinstance(r, Dataset)}
    models = {r.metadata.name: r for r in resources if isinstance(r, Model)}
    return job, datasets, models


def new_job(port: MemoryPort) -> Job:
    spec, datasets, models = load_example()
    return Job(JobFacts.of(spec, datasets, models, node="cloud0", uid=UID, settings=SETTINGS), port)


def weights(seed: float) -> Arrays:
    return [np.full((3, 2), seed, np.float32), np.arange(4, dtype=np.float32) + seed]


def init(job: Job, node: str, arrays: Arrays, *, samples: int = 10) -> TransferManifest:
    manifest, blob = make_transfer(arrays, kind="init", job=JOB, uid=UID, round_=0, sender=node, num_samples=samples)
    job.on_init_transfer(node, 0, manifest, blob)
    return manifest


def update(job: Job, node: str, round_: int, arrays: Arrays, *, samples: int = 10, **kwargs: Any) -> TransferManifest:
    manifest, blob = make_transfer(
        arrays, kind="update", job=JOB, uid=UID, round_=round_, sender=node, num_samples=samples, **kwargs
    )
    job.on_update(node, round_, manifest, blob)
    return manifest


def running(port: MemoryPort, *, exit_round: int = 3, aggregation: str = "FedAvg") -> Job:
    job = new_job(port)
    job.start(0.0)
    job.on_script_frame(
        WorkerFrame(type="config", aggregation=aggregation, exit_round=exit_round, participants_count=2), 0.1
    )
    return job


def training(port: MemoryPort, *, exit_round: int = 3) -> Job:
    job = running(port, exit_round=exit_round)
    init(job, "edge1", weights(0.0))
    return job


def report(job: Job, node: str, state: WorkerState, **fields: Any) -> None:
    job.on_worker_status(node, WorkerStatus(job=JOB, node=node, state=state, **fields), retained=False)


def test_start_runs_the_script_and_config_publishes_the_plan() -> None:
    """The script starts with the job's settings; its config frame publishes the plan and the job runs."""
    port = MemoryPort()
    job = new_job(port)

    job.start(0.0)

    assert port.scripts[0].job == JOB and port.scripts[0].participants_count == 2
    assert port.job_status(JOB).phase is Phase.PENDING
    assert JOB not in port.plans

    job.on_script_frame(WorkerFrame(type="config", aggregation="fedavg", exit_round=3, participants_count=2), 1.0)

    plan = port.plans[JOB]
    assert plan is not None and plan.uid == UID and plan.aggregation == "FedAvg" and plan.exit_round == 3
    assert plan.participants == EDGES
    assert plan.workers[0].dataset.name == "edge1-surface-defect-detection-dataset"
    assert plan.workers[0].dataset.url == "/data/1.txt"
    assert plan.model.url == "/model" and plan.chunk_size == 4096
    status = port.job_status(JOB)
    assert status.phase is Phase.RUNNING and status.start_time is not None and status.exit_round == 3
    assert status.conditions[-1].type is ConditionType.TRAINING
    assert [(w.node, w.state) for w in status.workers if w.role == "training"] == [
        ("edge1", WorkerState.PENDING),
        ("edge2", WorkerState.PENDING),
    ]


def test_round0_global_is_the_first_init() -> None:
    """The first valid init becomes the round-0 global model; a later one is acknowledged and not used."""
    port = MemoryPort()
    job = running(port)

    init(job, "edge2", weights(7.0))
    init(job, "edge1", weights(1.0))

    assert [g.round for g in port.published_globals] == [0]
    round0 = port.published_globals[0]
    assert round0.uid == UID and not round0.final
    for got, want in zip(round0.arrays, weights(7.0), strict=True):
        np.testing.assert_array_equal(got, want)
    assert job.stage is Stage.TRAINING and job.round == 1
    assert port.acks_for("edge1")[-1].accepted
    assert "already chosen" in port.acks_for("edge1")[-1].reason


def test_exactly_exit_round_aggregations() -> None:
    """exit_round=3 gives globals for rounds 0..3, FedAvg-weighted, final only on 3, only the latest retained."""
    port = MemoryPort()
    job = training(port, exit_round=3)

    for r in (1, 2, 3):
        update(job, "edge1", r, weights(float(r)), samples=10)
        update(job, "edge2", r, weights(float(r) + 4.0), samples=30)

    assert [g.round for g in port.published_globals] == [0, 1, 2, 3]
    assert [g.final for g in port.published_globals] == [False, False, False, True]
    assert list(port.retained_globals[JOB]) == [3]
    final = port.published_globals[-1]
    np.testing.assert_allclose(final.arrays[0], np.full((3, 2), 6.0))  # (3*10 + 7*30) / 40
    assert final.num_samples == 40
    status = port.job_status(JOB)
    assert [r.round for r in status.rounds] == [1, 2, 3]
    assert all(sorted(r.participants) == EDGES and r.total_samples == 40 for r in status.rounds)
    assert status.current_round == 3
    assert status.conditions[-1].message.startswith("Round 3 reaches at ")
    assert job.stage is Stage.FINAL and status.phase is Phase.RUNNING
    # The aggregator keeps the final model under its Model url.
    written_job, model, _arrays, _names, meta = port.models[0]
    assert written_job == JOB and model.name == "surface-defect-detection-model"
    assert meta["digest"] == weights_digest(final.arrays) and meta["round"] == 3
    assert status.model_path == "/memory/model/surface-defect-detection-model.npz"
    # A further update after the last round is rejected: there are exactly exit_round aggregations.
    update(job, "edge1", 3, weights(9.0))
    assert len(port.published_globals) == 4


def test_duplicate_update_counts_once() -> None:
    """The same worker's update twice in a round (redelivered or re-sent) is counted once."""
    port = MemoryPort()
    job = training(port)

    first = update(job, "edge1", 1, weights(1.0), samples=10)
    job.on_update(
        "edge1",
        1,
        first,
        make_transfer(weights(1.0), kind="update", job=JOB, uid=UID, round_=1, sender="edge1", num_samples=10)[1],
    )
    update(job, "edge1", 1, weights(100.0), samples=1000, transfer="aaaaaaaaaaaaaaaa")

    assert [g.round for g in port.published_globals] == [0]  # edge2 is still missing
    update(job, "edge2", 1, weights(3.0), samples=10)

    assert [g.round for g in port.published_globals] == [0, 1]
    np.testing.assert_allclose(port.published_globals[-1].arrays[0], np.full((3, 2), 2.0))
    assert port.job_status(JOB).rounds[0].total_samples == 20
    assert all(a.accepted for a in port.acks_for("edge1"))
    assert "already counted" in port.acks_for("edge1")[-1].reason


def test_update_for_a_closed_round_is_rejected() -> None:
    """An update for a round that already closed is rejected and not folded into the next round."""
    port = MemoryPort()
    job = training(port)
    update(job, "edge1", 1, weights(1.0))
    update(job, "edge2", 1, weights(1.0))

    late = update(job, "edge1", 1, weights(50.0))

    ack = port.acks_for("edge1")[-1]
    assert ack.transfer == late.transfer and not ack.accepted and "round 1 is closed" in ack.reason
    update(job, "edge1", 2, weights(2.0))
    update(job, "edge2", 2, weights(2.0))
    np.testing.assert_allclose(port.published_globals[-1].arrays[0], np.full((3, 2), 2.0))


def test_manifest_for_a_future_round_is_dropped_early() -> None:
    """A manifest for a round that has not started is rejected before its chunks are assembled."""
    port = MemoryPort()
    job = training(port)
    manifest, _ = make_transfer(weights(1.0), kind="update", job=JOB, uid=UID, round_=2, sender="edge1", num_samples=5)

    assert not job.wants_transfer(2)
    job.on_update_manifest("edge1", 2, manifest, 1.0)
    ack = port.acks_for("edge1")[-1]
    assert not ack.accepted and not ack.missing and "has not started" in ack.reason


@pytest.mark.parametrize(
    ("arrays", "kwargs", "reason"),
    [
        ([np.zeros((3, 2), np.float32)], {}, "1 tensors, the global model has 2"),
        ([np.zeros((2, 3), np.float32), np.zeros(4, np.float32)], {}, "tensor 0 is w0 float32[2, 3]"),
        ([np.zeros((3, 2), np.float64), np.zeros(4, np.float32)], {}, "float64"),
        ([np.full((3, 2), np.nan, np.float32), np.zeros(4, np.float32)], {}, "non-finite"),
        ([np.zeros((3, 2), np.float32), np.array([0, np.inf, 0, 0], np.float32)], {}, "non-finite"),
        (weights(1.0), {"manifest_sender": "edge2"}, "does not match the topic's node"),
        (weights(1.0), {"samples": 0}, "num_samples must be > 0"),
    ],
    ids=["tensor-count", "shape", "dtype", "nan", "inf", "wrong-sender", "no-samples"],
)
def test_invalid_update_is_rejected_with_an_event(arrays: Arrays, kwargs: dict[str, Any], reason: str) -> None:
    """An invalid update gets a rejected ack and a Warning event naming worker, round and reason; the round goes on."""
    port = MemoryPort()
    job = training(port)

    update(job, "edge1", 1, arrays, **kwargs)

    ack = port.acks_for("edge1")[-1]
    assert not ack.accepted and reason in ack.reason
    event = port.job_status(JOB).events[-1]
    assert event.type == "Warning" and event.node == "edge1" and event.round == 1
    assert "edge1" in event.message and "round 1" in event.message and reason in event.message
    assert job.stage is Stage.TRAINING and port.job_status(JOB).phase is Phase.RUNNING
    update(job, "edge1", 1, weights(1.0))
    update(job, "edge2", 1, weights(1.0))
    assert [g.round for g in port.published_globals] == [0, 1]


def test_update_from_a_non_participant_is_rejected() -> None:
    """A node that is not a training worker of the job cannot contribute an update."""
    port = MemoryPort()
    job = training(port)

    manifest, blob = make_transfer(
        weights(1.0), kind="update", job=JOB, uid=UID, round_=1, sender="edge9", num_samples=5
    )
    job.on_update("edge9", 1, manifest, blob)

    assert "not a training worker" in port.acks_for("edge9")[-1].reason
    assert port.job_status(JOB).events[-1].type == "Warning"


def test_update_of_another_run_is_ignored_quietly() -> None:
    """A transfer with an earlier run's uid is rejected without a Warning event."""
    port = MemoryPort()
    job = training(port)
    events = len(port.job_status(JOB).events)

    manifest, blob = make_transfer(
        weights(1.0), kind="update", job=JOB, uid="f" * 32, round_=1, sender="edge1", num_samples=5
    )
    job.on_update("edge1", 1, manifest, blob)

    assert not port.acks_for("edge1")[-1].accepted
    assert len(port.job_status(JOB).events) == events


def test_init_with_another_layout_fails_that_worker() -> None:
    """A later init whose layout differs from the round-0 model fails its worker, and so the job."""
    port = MemoryPort()
    job = training(port)

    init(job, "edge2", [np.zeros(5, np.float32)])

    status = port.job_status(JOB)
    worker = next(w for w in status.workers if w.node == "edge2" and w.role == "training")
    assert worker.state is WorkerState.FAILED and "does not match the round-0 model" in worker.message
    assert status.phase is Phase.FAILED and "edge2" in status.message


def test_worker_failed_fails_the_job() -> None:
    """A training worker reporting Failed fails the job (Sedna): script stopped, plan cleared, Failed condition."""
    port = MemoryPort()
    job = training(port)

    report(job, "edge2", WorkerState.FAILED, message="dataset /data/2.txt not found")

    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED
    assert status.conditions[-1].type is ConditionType.FAILED and status.conditions[-1].reason == "WorkerFailed"
    assert "edge2" in status.message and "dataset /data/2.txt not found" in status.message
    assert port.signals == [(JOB, UID, "stop")]
    assert port.plans[JOB] is None
    assert status.failed == 1
    update(job, "edge1", 1, weights(1.0))
    assert [g.round for g in port.published_globals] == [0]


def test_every_worker_completed_succeeds() -> None:
    """After the final round, when every worker reports Completed, the job is Succeeded and the script finishes."""
    port = MemoryPort()
    job = training(port, exit_round=1)
    report(job, "edge1", WorkerState.TRAINING, round=1)
    update(job, "edge1", 1, weights(1.0))
    update(job, "edge2", 1, weights(3.0))
    digest = weights_digest(port.published_globals[-1].arrays)

    report(job, "edge1", WorkerState.COMPLETED, model_digest=digest)
    assert port.job_status(JOB).phase is Phase.RUNNING
    report(job, "edge2", WorkerState.COMPLETED, model_digest=digest)

    status = port.job_status(JOB)
    assert status.phase is Phase.SUCCEEDED and status.completion_time is not None
    assert status.conditions[-1].type is ConditionType.COMPLETE
    assert port.signals == [(JOB, UID, "finish")]
    assert status.succeeded == 2 and status.failed == 0
    assert not any(e.reason == "DigestMismatch" for e in status.events)
    job.on_script_exit(0, "", 5.0)
    status = port.job_status(JOB)
    assert status.succeeded == 3 and status.active == 0


def test_completed_before_the_final_round_does_not_succeed() -> None:
    """Workers reporting Completed early do not make a job Succeeded before its last aggregation."""
    port = MemoryPort()
    job = training(port, exit_round=2)

    for node in EDGES:
        report(job, node, WorkerState.COMPLETED)

    assert port.job_status(JOB).phase is Phase.RUNNING


def test_stale_retained_worker_status_is_ignored() -> None:
    """A retained worker status older than this run (an earlier run's Failed) does not fail the job."""
    port = MemoryPort()
    job = training(port)
    old = WorkerStatus(job=JOB, node="edge1", state=WorkerState.FAILED, updated_at=now() - timedelta(hours=1))

    job.on_worker_status("edge1", old, retained=True)

    assert port.job_status(JOB).phase is Phase.RUNNING


def test_config_timeout_fails_the_job() -> None:
    """A script that never sends its config fails the job after the config timeout."""
    port = MemoryPort()
    job = new_job(port)
    job.start(0.0)

    job.tick(119.0)
    assert port.job_status(JOB).phase is Phase.PENDING
    job.tick(120.0)

    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED and "sent no config within 120 s" in status.message
    assert JOB not in port.plans


def test_script_exit_before_config_fails_with_its_output() -> None:
    """A script that exits before its config fails the job with the tail of its output."""
    port = MemoryPort()
    job = new_job(port)
    job.start(0.0)

    job.on_script_exit(1, "Traceback ...\nModuleNotFoundError: No module named 'sedna'\n", 1.0)

    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED
    assert "exited with code 1" in status.message and "No module named 'sedna'" in status.message


def test_unknown_aggregation_fails_the_job() -> None:
    """A config naming an unknown aggregation algorithm fails the job and names the known ones."""
    port = MemoryPort()

    running(port, aggregation="MistNet")

    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED and "MistNet" in status.message and "FedAvg" in status.message
    assert JOB not in port.plans
    assert port.signals == [(JOB, UID, "stop")]


def test_exit_round_over_the_limit_fails_the_job() -> None:
    """A config frame whose exit_round is past the spec's bound fails the job naming the bound; no plan."""
    port = MemoryPort()

    running(port, exit_round=MAX_EXIT_ROUND + 1)

    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED
    assert f"exit_round={MAX_EXIT_ROUND + 1}, over the limit of {MAX_EXIT_ROUND}" in status.message
    assert JOB not in port.plans
    assert port.signals == [(JOB, UID, "stop")]


def test_aggregation_server_refuses_exit_round_over_the_limit() -> None:
    """A script that hard-codes an exit_round past the bound is told so before it sends anything."""
    with pytest.raises(WorkerScriptError, match=f"exit_round {10**20} is over the limit of {MAX_EXIT_ROUND}"):
        AggregationServer(exit_round=10**20)


def test_script_error_frame_fails_the_job() -> None:
    """An error frame from the aggregation script fails the job with its message."""
    port = MemoryPort()
    job = running(port)

    job.on_script_frame(WorkerFrame(type="error", message="out of memory"), 2.0)

    assert port.job_status(JOB).phase is Phase.FAILED
    assert "out of memory" in port.job_status(JOB).message


def test_delete_clears_everything() -> None:
    """Deleting a running job stops its script and clears its plan, status and retained globals."""
    port = MemoryPort()
    job = training(port)

    job.delete()

    assert port.signals == [(JOB, UID, "stop")]
    assert port.plans[JOB] is None
    assert port.statuses[(Kind.JOB, JOB)] is None
    assert JOB not in port.retained_globals


def test_aggregation_server_sends_config_and_waits_for_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    """AggregationServer.start() sends its clamped settings over FL_WORKER_FD and returns on finish."""
    service_end, script_end = socket.socketpair()
    monkeypatch.setenv("FL_WORKER_FD", str(script_end.detach()))
    server = AggregationServer(aggregation="FedAvg", exit_round="0", ws_size=20 * 1024 * 1024, participants_count="2")
    thread = threading.Thread(target=server.start, daemon=True)
    thread.start()
    channel = WorkerChannel(service_end)

    frame, body = channel.recv(timeout=10.0)
    channel.send(WorkerFrame(type="finish"))
    thread.join(10.0)

    assert frame.type == "config" and body is None
    assert (frame.aggregation, frame.exit_round, frame.participants_count) == ("FedAvg", 1, 2)
    assert not thread.is_alive() and server.finished_by == "finish"
    channel.close()


def test_aggregation_server_outside_the_service_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FL_WORKER_FD, start() explains that fl-cloud-aggregator must start the script."""
    monkeypatch.delenv("FL_WORKER_FD", raising=False)

    with pytest.raises(WorkerScriptError, match="must be started by fl-cloud-aggregator"):
        AggregationServer().start()

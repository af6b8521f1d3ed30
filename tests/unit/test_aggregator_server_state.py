"""The engine with a server-side optimiser: hyper-parameters from the spec, the server state kept with each
checkpoint, and restarts (mid-round, between rounds) that give bit for bit what an uninterrupted run gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_aggregator import ServerState
from cloud_aggregator.engine import Checkpoint, Job, JobFacts, Stage
from cloud_aggregator.service import StateStore
from cloud_aggregator.testing import MemoryPort
from schemas import FederatedLearningJob, JobStatus, Kind, Phase, WorkerFrame, WorkerState, parse_documents
from tests.unit.test_aggregator_intake import send, transfer
from tests.unit.test_job_rounds import EXAMPLE, JOB, SETTINGS, UID, report

EDGES = ("edge1", "edge2")
# The aggregation worker's parameters, as a user writes them in the job's YAML.
ADAM = {"aggregation_algorithm": "FedAdam", "server_learning_rate": "0.05", "beta_1": "0.8", "tau": "0.01"}


def facts(parameters: dict[str, str], *, resume: bool = False) -> JobFacts:
    resources = parse_documents(EXAMPLE.read_text(), str(EXAMPLE))
    spec = next(r for r in resources if isinstance(r, FederatedLearningJob))
    # Added after parsing, so a value past its bound reaches the engine (as a spec that got past
    # flctl's check would); the example's aggregation worker has exit_round, of the same type.
    listed = spec.spec.aggregation_worker.worker_spec.parameters  # type: ignore[union-attr]
    listed.extend(type(listed[0])(key=k, value=v) for k, v in parameters.items())
    datasets = {r.metadata.name: r for r in resources if r.kind == "Dataset"}
    models = {r.metadata.name: r for r in resources if r.kind == "Model"}
    return JobFacts.of(spec, datasets, models, node="cloud0", uid=UID, settings=SETTINGS, resume=resume)  # type: ignore[arg-type]


def started(port: MemoryPort, parameters: dict[str, str], *, resume: bool = False, at: float = 0.0) -> Job:
    previous = port.statuses.get((Kind.JOB, JOB)) if resume else None
    job = Job(facts(parameters, resume=resume), port, previous_status=previous)  # type: ignore[arg-type]
    job.start(at)
    name = parameters.get("aggregation_algorithm", "FedAvg")  # what the example's aggregate.py sends
    job.on_script_frame(WorkerFrame(type="config", aggregation=name, exit_round=3, participants_count=2), at + 0.1)
    return job


def update_of(node: str, round_: int) -> list[np.ndarray]:
    """Distinct, deterministic updates: each edge moves the model its own way every round."""
    k = 1.0 if node == "edge1" else -0.5
    return [np.full((3, 2), 0.1 * round_ * k, np.float32) + np.arange(6, dtype=np.float32).reshape(3, 2) * 0.01,
            np.arange(4, dtype=np.float32) * k + round_]  # fmt: skip


def deliver(job: Job, node: str, round_: int, now_s: float) -> None:
    manifest, chunks = transfer(node, round_, update_of(node, round_), samples=10 if node == "edge1" else 30)
    send(job, node, manifest, chunks, now_s)


def begin(port: MemoryPort, parameters: dict[str, str] = ADAM) -> Job:
    job = started(port, parameters)
    manifest, chunks = transfer("edge1", 0, [np.zeros((3, 2), np.float32), np.ones(4, np.float32)], kind="init")
    send(job, "edge1", manifest, chunks, 0.2)
    assert job.stage is Stage.TRAINING and job.round == 1
    return job


def globals_of(port: MemoryPort) -> dict[int, list[tuple[str, bytes]]]:
    """Each published global model's tensors, bit for bit (the blob's header holds the time it was made)."""
    return {g.round: [(a.dtype.name, a.tobytes()) for a in g.arrays] for g in port.published_globals}


def uninterrupted() -> dict[int, list[tuple[str, bytes]]]:
    port = MemoryPort()
    job = begin(port)
    for r in (1, 2, 3):
        for node in EDGES:
            deliver(job, node, r, float(r))
    assert job.stage is Stage.FINAL
    return globals_of(port)


def test_the_spec_chooses_fedadam_and_its_hyper_parameters_and_each_checkpoint_keeps_its_state() -> None:
    port = MemoryPort()
    job = begin(port)
    status = port.job_status(JOB)
    agg = next(w for w in status.workers if w.role == "aggregation")
    assert "FedAdam (server_learning_rate=0.05, beta_1=0.8, beta_2=0.99, tau=0.01)" in agg.message
    assert port.plans[JOB] is not None and port.plans[JOB].aggregation == "FedAdam"
    checkpoint, _ = port.disk.checkpoints[JOB]
    assert checkpoint.server_state is None and JOB not in port.disk.server_states  # round 0: no step yet

    for node in EDGES:
        deliver(job, node, 1, 1.0)

    checkpoint, _ = port.disk.checkpoints[JOB]
    saved_round, data = port.disk.server_states[JOB]
    assert checkpoint.closed_round == saved_round == 1
    server = ServerState.from_bytes(data)
    assert server.strategy == "FedAdam" and server.steps == 1 and sorted(server.slots) == ["m", "v"]
    assert any(np.any(m != 0) for m in server.slots["m"])
    closed = [e.message for e in port.job_status(JOB).events if e.reason == "RoundClosed"]
    assert closed == [
        "round 1: FedAdam (server_learning_rate=0.05, beta_1=0.8, beta_2=0.99, tau=0.01) of 2 updates, 40 samples"
    ]


def test_fedadam_moves_differently_from_fedavg() -> None:
    """The server step is applied: the same updates give another global model than FedAvg's."""
    adam, avg = MemoryPort(), MemoryPort()
    for port, params in ((adam, ADAM), (avg, {"aggregation_algorithm": "FedAvg"})):
        job = begin(port, params)
        for node in EDGES:
            deliver(job, node, 1, 1.0)
    assert globals_of(adam)[1] != globals_of(avg)[1]


@pytest.mark.parametrize("stored", [0, 1], ids=["between-rounds", "mid-round"])
def test_restart_gives_bit_identical_global_models(stored: int) -> None:
    """Killed after round 1 closed (and, mid-round, after edge1's round-2 update was stored): the restart
    publishes for rounds 2 and 3 exactly the bytes an uninterrupted run publishes."""
    want = uninterrupted()
    old = MemoryPort()
    job = begin(old)
    for node in EDGES:
        deliver(job, node, 1, 1.0)
    for node in EDGES[:stored]:
        deliver(job, node, 2, 2.0)

    port = MemoryPort(disk=old.disk)
    job = started(port, ADAM, resume=True, at=100.0)
    assert job.stage is Stage.TRAINING and job.round == 2
    for node in EDGES[stored:]:
        deliver(job, node, 2, 102.0)
    for node in EDGES:
        deliver(job, node, 3, 103.0)

    assert job.stage is Stage.FINAL
    got = {**globals_of(old), **globals_of(port)}
    assert got == want
    report(job, "edge1", WorkerState.COMPLETED, uid=UID)
    report(job, "edge2", WorkerState.COMPLETED, uid=UID)
    assert port.job_status(JOB).phase is Phase.SUCCEEDED


def test_restart_twice_in_the_same_round_still_gives_identical_models() -> None:
    want = uninterrupted()
    old = MemoryPort()
    job = begin(old)
    for node in EDGES:
        deliver(job, node, 1, 1.0)
    ports = [old]
    for at in (100.0, 200.0):  # two crashes, each restart steps from the state of round 1
        ports.append(MemoryPort(disk=old.disk))
        job = started(ports[-1], ADAM, resume=True, at=at)
    for r in (2, 3):
        for node in EDGES:
            deliver(job, node, r, 200.0 + r)
    got: dict[int, list[tuple[str, bytes]]] = {}
    for p in ports:
        got.update(globals_of(p))
    assert got == want


def test_a_checkpoint_whose_server_state_is_lost_fails_the_resumed_job() -> None:
    old = MemoryPort()
    job = begin(old)
    for node in EDGES:
        deliver(job, node, 1, 1.0)
    del old.disk.server_states[JOB]

    port = MemoryPort(disk=old.disk)
    started(port, ADAM, resume=True, at=100.0)

    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED
    assert "the checkpoint's server state of round 1: it is missing" in status.message


def test_a_server_state_of_another_round_is_refused_by_its_digest() -> None:
    old = MemoryPort()
    job = begin(old)
    for node in EDGES:
        deliver(job, node, 1, 1.0)
    round_, data = old.disk.server_states[JOB]
    stale = ServerState.from_bytes(data)
    old.disk.server_states[JOB] = (round_, ServerState(stale.strategy, stale.layout, stale.slots, steps=7).to_bytes())

    port = MemoryPort(disk=old.disk)
    started(port, ADAM, resume=True, at=100.0)

    assert "its digest differs" in port.job_status(JOB).message


def test_a_script_that_changes_the_strategy_on_restart_keeps_the_checkpoints() -> None:
    want = uninterrupted()
    old = MemoryPort()
    job = begin(old)
    for node in EDGES:
        deliver(job, node, 1, 1.0)

    port = MemoryPort(disk=old.disk)
    job = Job(facts(ADAM, resume=True), port, previous_status=old.statuses.get((Kind.JOB, JOB)))  # type: ignore[arg-type]
    job.start(100.0)
    # A script that hard-codes its aggregation (the spec, and so the checkpoint's run, says FedAdam)
    job.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=3), 100.1)

    assert any(e.reason == "AggregationChanged" and "keeps 'FedAdam'" in e.message for e in port.job_status(JOB).events)
    for r in (2, 3):
        for node in EDGES:
            deliver(job, node, r, 100.0 + r)
    assert {**globals_of(old), **globals_of(port)} == want


def test_an_unknown_algorithm_fails_the_job_naming_the_parameter_and_the_known_ones() -> None:
    port = MemoryPort()
    started(port, {"aggregation_algorithm": "FedAdamm"})

    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED
    assert status.message == (
        "aggregationWorker parameter aggregation_algorithm='FedAdamm': unknown aggregation algorithm "
        "'FedAdamm'; known: Bulyan, FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, FedYogi, Krum, MultiKrum"
    )
    assert status.conditions[-1].reason == "UnknownAggregation"
    assert JOB not in port.plans


def test_a_hyper_parameter_out_of_bounds_at_run_time_fails_the_job_naming_it() -> None:
    """flctl create refuses it (the spec's bounds); a spec that got past them still does not run."""
    port = MemoryPort()
    started(port, {"aggregation_algorithm": "FedYogi", "beta_2": "1.5"})

    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED and status.conditions[-1].reason == "InvalidAggregationParameter"
    assert "aggregationWorker parameter beta_2='1.5' (FedYogi): expected a number in [0, 1)" in status.message


def test_state_store_keeps_the_server_state_of_the_checkpointed_round_only(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    status = JobStatus(name=JOB, uid=UID, phase=Phase.RUNNING)
    for r in (1, 2):
        checkpoint = Checkpoint(
            job=JOB, uid=UID, spec_hash="h", closed_round=r, exit_round=3, participants=list(EDGES),
            strategy="FedAdam", status=status, server_state=f"digest-{r}",
        )  # fmt: skip
        store.save_checkpoint(checkpoint, f"global-{r}".encode(), f"server-{r}".encode())
    folder = tmp_path / "state" / JOB
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "global-2.blob", "server-2.npz"]
    assert store.load_server_state(JOB, 2) == b"server-2" and store.load_server_state(JOB, 1) is None
    loaded = store.load_checkpoint(JOB)
    assert loaded is not None and loaded[0].server_state == "digest-2"

    # A strategy without server state (FedAvg) leaves none behind.
    checkpoint = Checkpoint(
        job=JOB, uid=UID, spec_hash="h", closed_round=3, exit_round=3, participants=list(EDGES),
        strategy="FedAvg", status=status,
    )  # fmt: skip
    store.save_checkpoint(checkpoint, b"global-3")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.json", "global-3.blob"]

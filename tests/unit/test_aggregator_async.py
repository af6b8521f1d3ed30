"""The asynchronous mode (FedBuff): buffers of K updates, stale updates rebased and discounted, refused past
max_staleness, a node's next update carried to the next buffer, and restarts that change nothing (fake port,
hand-computed models)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from cloud_aggregator.engine import Job, JobFacts, Stage
from cloud_aggregator.testing import MemoryPort
from schemas import (
    Dataset,
    FederatedLearningJob,
    JobStatus,
    Kind,
    Model,
    Phase,
    WorkerFrame,
    WorkerState,
    parameter_value_problem,
    parse_documents,
)
from tests.unit.test_aggregator_intake import send, transfer
from tests.unit.test_job_rounds import EXAMPLE, JOB, SETTINGS, UID, report

SAMPLES = {"edge1": 10, "edge2": 30, "edge3": 20}
# Exponent 1: a stale update of staleness s weighs num_samples / (1 + s), easy to follow by hand.
ASYNC = {"aggregation_mode": "async", "buffer_size": "2", "max_staleness": "1", "staleness_exponent": "1"}


def three_edges(
    parameters: dict[str, str], training: dict[str, str] | None = None, *, resume: bool = False
) -> JobFacts:
    """The example job with a third training worker (edge3), `parameters` on its aggregation worker and
    `training` on every training worker."""
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    dataset = {**docs[1], "metadata": {"name": "edge3-dataset"}, "spec": {**docs[1]["spec"], "nodeName": "edge3"}}
    job = docs[-1]
    worker = {**job["spec"]["trainingWorkers"][1], "nodeName": "edge3", "dataset": {"name": "edge3-dataset"}}
    job["spec"]["trainingWorkers"].append(worker)
    job["spec"]["aggregationWorker"]["workerSpec"]["parameters"] += [
        {"key": k, "value": v} for k, v in parameters.items()
    ]
    for w in job["spec"]["trainingWorkers"]:
        w["workerSpec"] = {**w["workerSpec"], "parameters": [*w["workerSpec"]["parameters"]]}
        w["workerSpec"]["parameters"] += [{"key": k, "value": v} for k, v in (training or {}).items()]
    resources = parse_documents(yaml.safe_dump_all([*docs[:-1], dataset, job]), "three-edges.yaml")
    spec = next(r for r in resources if isinstance(r, FederatedLearningJob))
    datasets = {r.metadata.name: r for r in resources if isinstance(r, Dataset)}
    models = {r.metadata.name: r for r in resources if isinstance(r, Model)}
    return JobFacts.of(spec, datasets, models, node="cloud0", uid=UID, settings=SETTINGS, resume=resume)


def started(port: MemoryPort, parameters: dict[str, str] = ASYNC, *, exit_round: int = 4, resume: bool = False) -> Job:
    previous = port.statuses.get((Kind.JOB, JOB)) if resume else None
    job = Job(three_edges(parameters, resume=resume), port, previous_status=previous)  # type: ignore[arg-type]
    job.start(0.0)
    name = parameters.get("aggregation_algorithm", "FedAvg")  # what the example's aggregate.py sends
    job.on_script_frame(WorkerFrame(type="config", aggregation=name, exit_round=exit_round), 0.1)
    if not resume:
        manifest, chunks = transfer("edge1", 0, [np.zeros(2, np.float32)], kind="init")
        send(job, "edge1", manifest, chunks, 0.2)
    assert job.stage is Stage.TRAINING
    return job


def deliver(job: Job, node: str, round_: int, values: list[float], now_s: float = 1.0) -> None:
    manifest, chunks = transfer(node, round_, [np.array(values, np.float32)], samples=SAMPLES[node])
    send(job, node, manifest, chunks, now_s)


def model(port: MemoryPort, round_: int) -> list[float]:
    [published] = [g for g in port.published_globals if g.round == round_]
    return [float(x) for x in published.arrays[0]]


def events(port: MemoryPort, reason: str) -> list[str]:
    return [e.message for e in port.job_status(JOB).events if e.reason == reason]


def run_to_round_3(job: Job) -> None:
    """Round 1: edge1 and edge2 fresh. Round 2: edge3's update of round 1 (stale, from version 0), then its
    update of round 2 (carried to round 3), then edge1's of round 2. Round 3 opens with edge3's carried one."""
    deliver(job, "edge1", 1, [1.0, 0.0])
    deliver(job, "edge2", 1, [0.0, 1.0])
    deliver(job, "edge3", 1, [2.0, 2.0])  # trained from v0 = [0, 0]
    deliver(job, "edge3", 2, [0.25, 0.75])  # trained from v1: no change of its own
    deliver(job, "edge1", 2, [1.25, -0.25])  # trained from v1: +[1, -1]


def test_async_rules_come_from_the_aggregation_worker_with_defaults() -> None:
    rules = three_edges(ASYNC).asynchrony
    assert rules is not None and (rules.buffer_size, rules.max_staleness, rules.exponent) == (2, 1, 1.0)
    default = three_edges({"aggregation_mode": "ASYNC"}).asynchrony
    assert default is not None and (default.buffer_size, default.max_staleness, default.exponent) == (2, 4, 0.5)
    assert three_edges({"AGGREGATION_MODE": "async", "BUFFER_SIZE": "9"}).asynchrony.buffer_size == 3  # type: ignore[union-attr]
    assert three_edges({}).asynchrony is None and three_edges({"aggregation_mode": "sync"}).asynchrony is None
    assert parameter_value_problem("aggregation_mode", "fast") == "expected one of sync, async, got 'fast'"
    assert parameter_value_problem("max_staleness", "-1") == "expected a whole number in [0, 1000]"
    assert parameter_value_problem("buffer_size", "0") == "expected a whole number in [1, 1000]"


def test_a_stale_update_is_rebased_and_discounted_to_the_hand_computed_model() -> None:
    port = MemoryPort()
    job = started(port)
    run_to_round_3(job)

    # v1 = (10·[1,0] + 30·[0,1]) / 40
    assert model(port, 1) == [0.25, 0.75]
    # Round 2: edge3's update rebased onto v1: v1 + ([2,2] - v0) = [2.25, 2.75], weight 20 / (1+1) = 10;
    # edge1's fresh [1.25, -0.25], weight 10: v2 = ([2.25, 2.75] + [1.25, -0.25]) / 2.
    assert model(port, 2) == [1.75, 1.25]
    record = port.round_records[(JOB, 2)]
    assert record is not None and record.workers is not None and record.missing == []
    assert [(w.node, w.trained_from, w.staleness) for w in record.workers] == [("edge3", 0, 1), ("edge1", 1, 0)]
    assert record.total_samples == 30 and record.stale == 1
    assert port.job_status(JOB).rounds[1].stale == 1  # the summary on the job status keeps the count
    closed = events(port, "RoundClosed")
    assert closed[1].startswith("round 2: FedAvg of 2 updates, 30 samples (staleness 1, 0)")
    assert "update from edge3 for round 1 (20 samples, 1 versions stale) into round 2; 1/2 in" in events(
        port, "UpdateAccepted"
    )


def test_a_nodes_next_update_is_carried_to_the_next_buffer_and_folded_when_it_opens() -> None:
    port = MemoryPort()
    job = started(port)
    run_to_round_3(job)

    [carried] = events(port, "UpdateCarried")
    assert carried == "update from edge3 for round 2 kept for round 3: its update of round 1 is in round 2 already"
    assert [a.reason for a in port.acks_for("edge3")][-2:] == ["stored for round 3", "stored"]
    assert job.round == 3 and job.counted == ["edge3"]
    # edge2's update of round 2 (from v1: +[0, 1]) fills round 3: both trained from v1, staleness 1 each,
    # rebased onto v2 = [1.75, 1.25]: edge3's is v2 itself (weight 10), edge2's v2 + [0, 1] (weight 15).
    deliver(job, "edge2", 2, [0.25, 1.75])
    assert model(port, 3) == pytest.approx([1.75, 1.25 + 15 / 25])
    record = port.round_records[(JOB, 3)]
    assert record is not None and record.workers is not None
    assert [(w.node, w.trained_from, w.staleness) for w in record.workers] == [("edge3", 1, 1), ("edge2", 1, 1)]


def test_an_update_past_max_staleness_is_refused_saying_why() -> None:
    port = MemoryPort()
    job = started(port, {**ASYNC, "buffer_size": "1"})
    deliver(job, "edge1", 1, [1.0, 0.0])  # round 1 closes (buffer of 1)
    deliver(job, "edge1", 2, [1.0, 1.0])  # round 2 closes
    assert job.round == 3

    deliver(job, "edge2", 1, [5.0, 5.0])  # trained from v0: 2 versions behind v2

    [ack] = port.acks_for("edge2")
    assert not ack.accepted
    assert ack.reason == (
        "round 1 is too stale: it was trained from model version 0, the current is 2 (2 versions behind, max_staleness 1)"
    )
    assert job.round == 3 and job.counted == []


def test_a_second_transfer_of_an_update_already_folded_is_not_folded_again() -> None:
    port = MemoryPort()
    job = started(port, {**ASYNC, "buffer_size": "1"})
    deliver(job, "edge1", 1, [1.0, 0.0])
    assert job.round == 2

    deliver(job, "edge1", 1, [9.0, 9.0])  # another transfer id for round 1 (e.g. trained again)

    assert job.round == 2 and job.counted == []
    assert port.acks_for("edge1")[-1].reason == "already counted in round 2"


def test_the_same_arrival_order_gives_the_same_models_bit_for_bit() -> None:
    runs = []
    for _ in range(2):
        port = MemoryPort()
        job = started(port)
        run_to_round_3(job)
        deliver(job, "edge2", 2, [0.25, 1.75])
        runs.append([(g.round, g.arrays[0].tobytes()) for g in port.published_globals])
    assert runs[0] == runs[1] and len(runs[0]) == 4


@pytest.mark.parametrize("after", [3, 4])
def test_a_restart_with_a_carried_update_gives_the_same_models(after: int) -> None:
    """Killed in round 2 after edge3's carried update (3 deliveries) or after round 2 closed (4): the resumed
    run folds the spools (round 2's, the carried one in round 3's) and rebases onto the kept versions."""
    want = MemoryPort()
    job = started(want)
    run_to_round_3(job)
    deliver(job, "edge2", 2, [0.25, 1.75])

    old = MemoryPort()
    job = started(old)
    steps = [
        ("edge1", 1, [1.0, 0.0]),
        ("edge2", 1, [0.0, 1.0]),
        ("edge3", 1, [2.0, 2.0]),
        ("edge3", 2, [0.25, 0.75]),
        ("edge1", 2, [1.25, -0.25]),
        ("edge2", 2, [0.25, 1.75]),
    ]
    for node, r, values in steps[: after + 1]:
        deliver(job, node, r, values)
    port = MemoryPort(disk=old.disk)
    port.statuses = dict(old.statuses)
    job = started(port, resume=True)
    for node, r, values in steps[after + 1 :]:
        deliver(job, node, r, values, now_s=2.0)

    got = {g.round: g.arrays[0].tobytes() for g in [*old.published_globals, *port.published_globals]}
    assert got == {g.round: g.arrays[0].tobytes() for g in want.published_globals}
    assert job.round == 4


def test_the_final_round_refuses_a_second_update_of_a_node_and_the_job_completes() -> None:
    port = MemoryPort()
    job = started(port, {**ASYNC, "buffer_size": "2"}, exit_round=2)
    deliver(job, "edge1", 1, [1.0, 0.0])
    deliver(job, "edge2", 1, [0.0, 1.0])
    deliver(job, "edge3", 1, [2.0, 2.0])  # stale into the final round 2
    deliver(job, "edge3", 2, [0.25, 0.75])  # nothing comes after round 2: refused, not carried

    assert port.acks_for("edge3")[-1].reason.startswith("the final round 2 already holds this node's update")
    deliver(job, "edge1", 2, [1.25, -0.25])
    assert job.stage is Stage.FINAL
    for node in ("edge3", "edge1"):
        report(job, node, WorkerState.COMPLETED, uid=UID)
    assert port.job_status(JOB).phase is Phase.SUCCEEDED


def test_the_status_says_the_mode_and_the_buffer() -> None:
    port = MemoryPort()
    job = started(port)
    deliver(job, "edge1", 1, [1.0, 0.0])
    status: JobStatus = port.job_status(JOB)
    agg = next(w for w in status.workers if w.role == "aggregation")
    assert agg.message == "FedAvg, 4 rounds, asynchronous: buffers of 2, max staleness 1, weight (1+s)^-1"
    assert status.message.startswith("round 1/4: 1/2 updates in the buffer (asynchronous; any of 3 workers")
    assert any("asynchronous: buffers of 2" in m for m in events(port, "Started"))


def test_a_robust_rule_rebases_a_stale_update_before_it_ranks_it() -> None:
    """FedMedian over round 2's spool: edge3's stale update counts as its own change [2, 2], not as the pull
    [1.75, 1.25] from v1 its raw weights would make; the median of two deltas is their mean."""
    port = MemoryPort()
    job = started(port, {**ASYNC, "aggregation_algorithm": "FedMedian"})
    run_to_round_3(job)

    # v1 = median of [1,0] and [0,1] around v0 = [0.5, 0.5]; v2 = v1 + mean([2, 2], [1.25, -0.25] - v1).
    assert model(port, 1) == [0.5, 0.5]
    assert model(port, 2) == pytest.approx([0.5 + (2 + 0.75) / 2, 0.5 + (2 - 0.75) / 2])

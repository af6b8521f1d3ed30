"""Per-round history in the job status and on the round record topics, driven through the cloud engine
with `MemoryPort`: training and evaluation metrics, durations, bytes, per-worker figures, and a status
document whose size does not grow with the number of rounds."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from cloud_aggregator.engine import Job, JobFacts, JobSettings
from cloud_aggregator.testing import MemoryPort, make_transfer
from schemas import (
    MAX_EVENTS,
    MAX_STATUS_ROUNDS,
    ConditionType,
    Dataset,
    Evaluation,
    FederatedLearningJob,
    JobStatus,
    Kind,
    Model,
    Phase,
    WorkerFrame,
    WorkerState,
    WorkerStatus,
    parse_documents,
)
from tests.helpers.status_fleet import job_spec

UID = "0123456789abcdef0123456789abcdef"
JOB = "history"
WEIGHTS = [np.zeros((3, 2), np.float32), np.zeros(4, np.float32)]
TRAIN = {"loss": 0.5, "categorical_accuracy": 0.75}


def resources(edges: list[str]) -> tuple[FederatedLearningJob, dict[str, Dataset], dict[str, Model]]:
    parsed = parse_documents(job_spec(edges, JOB), "generated")
    spec = next(r for r in parsed if isinstance(r, FederatedLearningJob))
    datasets = {r.metadata.name: r for r in parsed if isinstance(r, Dataset)}
    models = {r.metadata.name: r for r in parsed if isinstance(r, Model)}
    return spec, datasets, models


class Run:
    """One job through the engine, its edges reporting the way `EdgeJob` does (statuses and transfers)."""

    def __init__(self, edges: list[str], rounds: int, *, status_interval: float = 0.0) -> None:
        """`status_interval` > 0: the service's timer runs after every event (`Job.tick`), and each worker
        status arrives 0.05 s after the one before."""
        spec, datasets, models = resources(edges)
        self.port = MemoryPort()
        self.edges = edges
        self.rounds = rounds
        self.clock = 0.0
        settings = JobSettings(chunk_size=4096, status_interval=status_interval)
        self.ticking = status_interval > 0
        facts = JobFacts.of(spec, datasets, models, node="cloud0", uid=UID, settings=settings)
        self.job = Job(facts, self.port)
        self.job.start(0.0)
        self.job.on_script_frame(
            WorkerFrame(type="config", aggregation="FedAvg", exit_round=rounds, participants_count=len(edges)), 0.1
        )
        # Each edge's own figures: samples, and a confusion matrix on its held-out data per global round.
        self.samples = {e: 100 + 10 * i for i, e in enumerate(edges)}

    def confusion(self, node: str, round_: int) -> list[list[int]]:
        i = self.edges.index(node)
        return [[10 + i, round_ % 3], [i % 2, 20 + round_]]

    def evaluation(self, node: str, round_: int) -> Evaluation:
        return Evaluation.of(round_, self.confusion(node, round_), loss=0.1 * (1 + self.edges.index(node)))

    def status(self, node: str, state: WorkerState, round_: int, message: str, **fields: Any) -> None:
        worker = WorkerStatus(
            job=JOB,
            uid=UID,
            node=node,
            state=state,
            round=round_,
            num_samples=self.samples[node],
            message=message,
            **fields,
        )
        self.job.on_worker_status(node, worker, retained=False)
        if self.ticking:
            self.clock += 0.05
            self.job.tick(self.clock)

    def start(self) -> None:
        for node in self.edges:
            self.status(node, WorkerState.STARTING, 0, "starting train.py")
            self.status(node, WorkerState.UPLOADING, 0, "uploading the initial weights")
            manifest, blob = make_transfer(
                WEIGHTS, kind="init", job=JOB, uid=UID, round_=0, sender=node, num_samples=self.samples[node]
            )
            self.job.on_init_transfer(node, 0, manifest, blob)
            self.status(node, WorkerState.READY, 0, "waiting for the first global model")

    def train_round(self, r: int) -> None:
        """Round r as the edges run it: the global model of r-1 scored (r > 1), trained, uploaded in chunks."""
        for node in self.edges:
            scored = {"evaluation": self.evaluation(node, r - 1)} if r > 1 else {}
            train = {"metrics": {k: v + r / 100 for k, v in TRAIN.items()}, "metrics_round": r}
            self.status(node, WorkerState.TRAINING, r, f"training round {r}")
            self.status(node, WorkerState.UPLOADING, r, f"uploading the update of round {r}", **train, **scored)
            manifest, blob = make_transfer(
                WEIGHTS,
                kind="update",
                job=JOB,
                uid=UID,
                round_=r,
                sender=node,
                num_samples=self.samples[node],
                chunk_size=128,
            )
            chunks = [blob[i * 128 : (i + 1) * 128] for i in range(manifest.chunks)]
            self.clock += 1.0
            self.job.on_update_manifest(node, r, manifest, self.clock)
            for index, chunk in enumerate(chunks):
                self.clock += 0.25
                self.job.on_update_chunk(node, r, manifest.transfer, index, chunk, now_s=self.clock)
                if self.ticking:
                    self.job.tick(self.clock)
            self.status(
                node, WorkerState.WAITING, r, f"update of round {r} stored by the aggregator", **train, **scored
            )

    def finish(self) -> None:
        r = self.rounds
        for node in self.edges:
            train = {"metrics": {k: v + r / 100 for k, v in TRAIN.items()}, "metrics_round": r}
            self.status(node, WorkerState.SAVING, r, "saving the final model", **train)
            final = {"evaluation": self.evaluation(node, r)}
            self.status(node, WorkerState.COMPLETED, r, "final model saved at /model", **train, **final)

    def run(self) -> None:
        self.start()
        for r in range(1, self.rounds + 1):
            self.train_round(r)
        self.finish()

    def statuses(self) -> list[bytes]:
        return [s.to_json() for k, _, s in self.port.status_history if k is Kind.JOB and s is not None]


def test_every_round_record_carries_training_and_evaluation_metrics() -> None:
    """Each closed round's record: who took part, sample-weighted training metrics, the federated evaluation
    of its global model (confusion matrices summed), duration, bytes and every worker's upload."""
    run = Run(["edge1", "edge2", "edge3"], rounds=4)

    run.run()

    status = run.port.job_status(JOB)
    assert status.phase is Phase.SUCCEEDED
    assert [r.round for r in status.rounds] == [1, 2, 3, 4]
    samples = run.samples
    total = sum(samples.values())
    for r in range(1, 5):
        record = run.port.round_records[(JOB, r)]
        assert record is not None and record.round == r
        assert record.participants == run.edges and record.total_samples == total
        # Training: each edge reported loss 0.5 + r/100; the weighted mean of equal values is that value.
        assert record.train == pytest.approx({k: v + r / 100 for k, v in TRAIN.items()})
        # Evaluation: the sum of the edges' confusion matrices, and what follows from it.
        summed = np.sum([run.confusion(e, r) for e in run.edges], axis=0)
        assert record.eval is not None and record.eval.round == r
        assert record.eval.confusion == summed.tolist()
        assert record.eval.num_samples == int(summed.sum())
        assert record.eval.accuracy == pytest.approx(np.trace(summed) / summed.sum(), abs=1e-6)
        recalls = [summed[i, i] / summed[i].sum() for i in range(2)]
        assert record.eval.balanced_accuracy == pytest.approx(np.mean(recalls), abs=1e-6)
        n = [run.evaluation(e, r).num_samples for e in run.edges]
        losses = [0.1 * (1 + i) for i in range(3)]
        assert record.eval.loss == pytest.approx(np.dot(n, losses) / sum(n), abs=1e-6)
        assert record.eval.workers == run.edges
        # Duration from the engine's clock (each edge: a manifest, then its chunks 0.25 s apart).
        assert record.duration_seconds is not None and record.duration_seconds > 0
        assert record.opened_at is not None and record.opened_at <= record.closed_at
        assert record.workers is not None and [w.node for w in record.workers] == run.edges
        for worker in record.workers:
            assert worker.num_samples == samples[worker.node]
            assert worker.train == pytest.approx({k: v + r / 100 for k, v in TRAIN.items()})
            assert worker.eval == run.evaluation(worker.node, r)
            assert worker.upload_bytes is not None and worker.upload_bytes > 0
            chunks = -(-worker.upload_bytes // 128)
            assert worker.upload_seconds == pytest.approx(0.25 * chunks)
        assert record.bytes_in == sum(w.upload_bytes or 0 for w in record.workers)
        assert record.bytes_out is not None and record.bytes_out > 0
        # The status keeps the summary: the same figures without the per-worker ones.
        summary = next(s for s in status.rounds if s.round == r)
        assert summary.workers is None
        assert summary.eval is not None and summary.eval.accuracy == record.eval.accuracy
        assert summary.train == record.train


def test_the_final_rounds_evaluation_is_in_before_the_job_succeeds() -> None:
    """The edges score the final model before they report Completed: the Succeeded status has its evaluation."""
    run = Run(["edge1", "edge2"], rounds=2)

    run.run()

    succeeded = [s for _, _, s in run.port.status_history if s is not None and s.phase is Phase.SUCCEEDED]
    assert succeeded
    first = succeeded[0]
    assert isinstance(first, type(run.port.job_status(JOB)))
    last_round = first.rounds[-1]
    assert last_round.round == 2 and last_round.eval is not None
    assert last_round.eval.num_samples == sum(run.evaluation(e, 2).num_samples for e in run.edges)


def test_a_round_closes_before_its_evaluation_and_is_filled_in_later() -> None:
    """Round 1's record is published when it closes (no evaluation yet) and again once every participant
    scored its global model during round 2."""
    run = Run(["edge1", "edge2"], rounds=3)
    run.start()
    run.train_round(1)

    closed = run.port.round_records[(JOB, 1)]
    assert closed is not None and closed.eval is None and closed.train
    assert run.port.job_status(JOB).rounds[-1].eval is None

    run.train_round(2)

    filled = run.port.round_records[(JOB, 1)]
    assert filled is not None and filled.eval is not None and filled.eval.workers == ["edge1", "edge2"]
    assert run.port.job_status(JOB).rounds[0].eval == filled.eval.model_copy(update={"workers": None})
    published = [r for job, n, r in run.port.round_record_history if n == 1]
    assert len(published) == 2, "once at the close, once complete"


def test_status_size_is_bounded_as_rounds_grow() -> None:
    """10 edges, 50 rounds: the status in rounds 11-50 is no larger than in rounds 1-10 (the newest rounds and
    events only), compact JSON on one line; every round's full record is on its own topic; publications per
    round bounded."""
    long = Run([f"edge{i}" for i in range(1, 11)], rounds=50)

    long.run()

    published = [s for k, _, s in long.port.status_history if k is Kind.JOB and isinstance(s, JobStatus)]
    # Once the status holds its 5 round summaries and 15 events (round 6 on), it stops growing: rounds
    # 31-50 are no larger than rounds 12-30. Measured: 12.7 kB at most (15.3 kB when each worker's entry
    # carried its figures); before: 35 kB at round 10 and 52 kB at round 50, indented, every round kept.
    steady = [len(s.to_json()) for s in published if 12 <= s.current_round <= 30]
    late = [len(s.to_json()) for s in published if s.current_round > 30]
    assert long.port.job_status(JOB).phase is Phase.SUCCEEDED and steady and late
    assert max(late) <= max(steady) * 1.02
    assert max(late) < 20_000
    final = long.statuses()[-1]
    assert b"\n" not in final
    document = json.loads(final)
    assert len(document["rounds"]) == MAX_STATUS_ROUNDS and document["rounds"][-1]["round"] == 50
    assert len(document["events"]) == MAX_EVENTS
    assert all("workers" not in r for r in document["rounds"])
    # Every round's record, with its evaluation and per-worker figures, is retained on its own topic.
    for r in range(1, 51):
        record = long.port.round_records[(JOB, r)]
        assert record is not None and record.eval is not None and record.workers is not None
        assert len(record.workers) == 10 and len(record.to_json()) < 6_000
    # Publications: about 5 status publications per edge and round (each edge's states and its fold);
    # at most 2 record publications per round.
    assert len(long.statuses()) / 50 <= 5.5 * 10
    assert len(long.port.round_record_history) <= 2 * 50


def test_conditions_are_one_row_per_type_updated_in_place() -> None:
    """Training is set once and updated each round; Complete ends it (Training turns False)."""
    run = Run(["edge1", "edge2"], rounds=3)
    run.start()
    run.train_round(1)
    run.train_round(2)

    training = run.port.job_status(JOB).conditions
    assert [c.type for c in training] == [ConditionType.TRAINING]
    assert training[0].message.startswith("Round 2 reaches at ")

    run.train_round(3)
    run.finish()

    done = run.port.job_status(JOB).conditions
    assert [(c.type, c.status) for c in done] == [(ConditionType.TRAINING, "False"), (ConditionType.COMPLETE, "True")]


def test_deleting_the_job_clears_its_round_records() -> None:
    """A deleted job leaves no retained round record behind."""
    run = Run(["edge1", "edge2"], rounds=3)
    run.run()
    assert all(run.port.round_records[(JOB, r)] is not None for r in (1, 2, 3))

    run.job.delete()

    assert all(run.port.round_records[(JOB, r)] is None for r in (1, 2, 3))
    assert run.port.statuses[(Kind.JOB, JOB)] is None


def test_a_resumed_job_keeps_its_round_history_and_fills_in_what_comes_later() -> None:
    """The aggregator killed after round 1 closed: the resumed run's status keeps round 1's summary, and
    round 1's evaluation, which the edges send during round 2, still fills it in; round 2 is recorded."""
    run = Run(["edge1", "edge2"], rounds=3)
    run.start()
    run.train_round(1)
    spec, datasets, models = resources(run.edges)
    port = MemoryPort(disk=run.port.disk)
    facts = JobFacts.of(
        spec, datasets, models, node="cloud0", uid=UID, settings=JobSettings(chunk_size=4096), resume=True
    )
    resumed = Job(facts, port, previous_status=run.port.job_status(JOB))
    resumed.start(100.0)
    resumed.on_script_frame(WorkerFrame(type="config", aggregation="FedAvg", exit_round=3), 100.1)
    assert [r.round for r in port.job_status(JOB).rounds] == [1]
    run.port, run.job, run.clock = port, resumed, 100.2

    run.train_round(2)

    status = port.job_status(JOB)
    assert [r.round for r in status.rounds] == [1, 2]
    first = status.rounds[0]
    assert first.eval is not None and first.eval.num_samples == sum(run.evaluation(e, 1).num_samples for e in run.edges)
    second = port.round_records[(JOB, 2)]
    assert second is not None and second.workers is not None and second.train


def test_status_publications_are_rate_limited_but_nothing_is_lost() -> None:
    """With `status_interval` (the service's default: 1 s), 10 edges, 50 rounds: far fewer publications than
    changes; every closed round and phase change is published at once, and the last status published is the
    job's status as it is (nothing held back)."""
    every = Run([f"edge{i}" for i in range(1, 11)], rounds=50)
    limited = Run([f"edge{i}" for i in range(1, 11)], rounds=50, status_interval=1.0)

    every.run()
    limited.run()

    per_round = len(every.statuses()) / 50
    limited_per_round = len(limited.statuses()) / 50
    # Measured: 41.2 publications per round for every change (4 per edge and round: its 3 states and its
    # update's fold; 51.2 when the edge also said "sent" before the aggregator's ack), 4.1 with the interval
    # (waits of 2, 4, 8 s; 11.1 when every change waited 1 s).
    assert per_round > 38 and limited_per_round < per_round / 2.5, (per_round, limited_per_round)
    published = [s for k, _, s in limited.port.status_history if k is Kind.JOB and isinstance(s, JobStatus)]
    closed = [s.current_round for s in published]
    assert sorted(set(closed)) == list(range(51)), "every round's close is published"
    final = limited.port.job_status(JOB)
    assert final.phase is Phase.SUCCEEDED
    # As published: each worker's entry brief (its figures are on its own status topic).
    engine = JobStatus.model_validate_json(limited.job.status.to_json())
    assert final.model_dump(exclude={"updated_at"}) == engine.model_dump(exclude={"updated_at"})
    assert [r.round for r in final.rounds] == list(range(51 - MAX_STATUS_ROUNDS, 51)) and all(
        r.eval for r in final.rounds
    )

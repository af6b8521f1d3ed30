"""N simulated edges around the real aggregator, on simulated time, counting every control message.

The `Controller` (which puts the event stream, `StreamingPort`, in front of its port, as the service does)
drives the job over a `CountingPort` (a `MemoryPort` that also counts the wire form of each job status,
event, round record, plan and ack); each simulated edge reports the way `edge_trainer`'s `EdgeJob` and its
service do: a whole `WorkerStatus` (metrics, evaluation, ledger summary) on each state change (Starting,
Uploading, Ready; then per round Training, Uploading, Waiting twice; Saving, Completed at the end), counted
too, and each update as a chunked transfer (not counted: control is everything but the transfers). A heap of
timed arrivals and the service's 0.2 s timer stand in for the clock, so a hundred edges take seconds and the
counts do not depend on the machine. `benchmarks/control.py` prints the figures; the status traffic tests
bound them.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import yaml

from cloud_aggregator.engine import Controller, Job, JobSettings, Stage
from cloud_aggregator.testing import MemoryPort, chunks_of, make_transfer
from schemas import (
    Evaluation,
    JobEvent,
    JobPlan,
    JobStatus,
    Kind,
    LedgerSummary,
    NodeState,
    NodeStatus,
    ResourceStatus,
    RoundRecord,
    Topics,
    UpdateAck,
    WorkerFrame,
    WorkerState,
    WorkerStatus,
    load_yaml_documents,
    weights_digest,
)

UID = "0123456789abcdef0123456789abcdef"
JOB = "surface-defect-detection"
WEIGHTS = [np.zeros((8, 4), np.float32), np.zeros(4, np.float32)]
TICK = 0.2  # the service's timer (cloud_aggregator.service POLL_SECONDS)


def job_spec(edges: list[str], job: str = JOB) -> str:
    """The Datasets, the Model and a FedAvg job of `edges` (one document stream, as `flctl create` reads it)."""
    docs = [
        f"apiVersion: sedna.io/v1alpha1\nkind: Dataset\nmetadata: {{name: d-{e}}}\n"
        f"spec: {{url: /data/1.txt, format: txt, nodeName: {e}}}\n"
        for e in edges
    ]
    docs.append("apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {url: /model, format: ckpt}\n")
    workers = "".join(
        f"    - nodeName: {e}\n      dataset: {{name: d-{e}}}\n"
        "      workerSpec: {scriptDir: /code, scriptBootFile: train.py, frameworkType: tensorflow}\n"
        for e in edges
    )
    docs.append(
        f"apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\nmetadata: {{name: {job}}}\nspec:\n"
        "  aggregationWorker:\n    model: {name: m}\n    nodeName: cloud0\n"
        "    workerSpec: {scriptDir: /code, scriptBootFile: aggregate.py, frameworkType: tensorflow}\n"
        f"  trainingWorkers:\n{workers}"
    )
    return "---\n".join(docs)


@dataclass
class Tally:
    """Bytes and messages of one kind, split by the job's round at the time they went out."""

    count: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    size: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    largest: int = 0

    def add(self, round_: int, payload: bytes) -> None:
        self.count[round_] += 1
        self.size[round_] += len(payload)
        self.largest = max(self.largest, len(payload))


class CountingPort(MemoryPort):
    """A `MemoryPort` that also counts the wire form of every control message it is given."""

    def __init__(self, round_of: Callable[[], int]) -> None:
        super().__init__()
        self.round_of = round_of
        self.tallies: dict[str, Tally] = defaultdict(Tally)

    def count(self, kind: str, payload: bytes) -> None:
        self.tallies[kind].add(self.round_of(), payload)

    def publish_status(self, kind: Kind, name: str, status: JobStatus | ResourceStatus | None) -> None:
        label = "job status" if kind is Kind.JOB else "resource statuses"
        self.count(label, status.to_json() if status is not None else b"")
        super().publish_status(kind, name, status)

    def publish_event(self, event: JobEvent) -> None:
        self.count("events", event.to_json())
        super().publish_event(event)

    def publish_round_record(self, job: str, round_: int, record: RoundRecord | None) -> None:
        self.count("round records", record.to_json() if record is not None else b"")
        super().publish_round_record(job, round_, record)

    def publish_plan(self, job: str, plan: JobPlan | None) -> None:
        self.count("plan", plan.to_json() if plan is not None else b"")
        super().publish_plan(job, plan)

    def send_ack(self, ack: UpdateAck) -> None:
        self.count("acks", ack.to_json())
        super().send_ack(ack)


class Fleet:
    """One job, its aggregator engine and N simulated edges, on simulated time."""

    def __init__(self, n: int, rounds: int, *, interval: float, train_s: float, seed: int) -> None:
        self.edges = [f"edge{i:03d}" for i in range(1, n + 1)]
        self.rounds = rounds
        self.train_s = train_s
        self.rng = random.Random(seed)
        self.port = CountingPort(lambda: self.job.round if hasattr(self, "job") else 0)
        # The controller, as the service runs it: it puts the event stream (`StreamingPort`) in front of the port.
        settings = JobSettings(chunk_size=1 << 20, status_interval=interval)
        controller = Controller(node="cloud0", port=self.port, settings=settings, new_uid=lambda: UID)
        for node in self.edges:
            presence = NodeStatus(node=node, role="edge", state=NodeState.ONLINE)
            controller.on_node_status(node, presence.to_json(), 0.0)
        controller.ready(0.0)
        kinds = {"Dataset": Kind.DATASET, "Model": Kind.MODEL, "FederatedLearningJob": Kind.JOB}
        for document in load_yaml_documents(job_spec(self.edges), "generated"):
            kind, name = kinds[document["kind"]], document["metadata"]["name"]
            payload = yaml.safe_dump(document, sort_keys=False).encode()
            controller.on_spec(kind, name, Topics().spec(kind, name), payload, 0.0)
        job = controller.job(JOB)
        if job is None:
            raise SystemExit(f"the controller did not start the job: {self.port.statuses}")
        self.job: Job = job
        self.samples = {e: 1000 + i for i, e in enumerate(self.edges)}
        self.queue: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.started: set[int] = set()
        self.ledger: dict[str, LedgerSummary] = {e: LedgerSummary() for e in self.edges}
        self.reported: dict[str, list[WorkerState]] = {}  # each edge's states, in the order it reported them

    # -- the simulated edges ---------------------------------------------------------------------------

    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (t, next(self.seq), action))

    def evaluation(self, node: str, round_: int) -> Evaluation:
        i = self.edges.index(node)
        return Evaluation.of(round_, [[100 + i % 7, round_ % 5], [i % 3, 40 + round_]], loss=0.2 + 0.01 * (i % 9))

    def status(self, node: str, state: WorkerState, round_: int, message: str, **fields: Any) -> None:
        """What the edge publishes (retained) on its worker status topic; the aggregator receives it."""
        ledger = self.ledger[node]
        worker = WorkerStatus(
            job=JOB,
            uid=UID,
            node=node,
            state=state,
            round=round_,
            num_samples=self.samples[node],
            message=message,
            ledger=ledger,
            **fields,
        )
        payload = worker.to_json()
        self.port.count("worker statuses", payload)
        self.reported.setdefault(node, []).append(state)
        self.ledger[node] = ledger.model_copy(update={"messages": ledger.messages + 1})
        self.job.on_worker_status(node, WorkerStatus.model_validate_json(payload), retained=False)

    def figures(self, node: str, r: int) -> dict[str, Any]:
        metrics = {"loss": 0.5 - r / 100, "categorical_accuracy": 0.8 + r / 100, "val_loss": 0.6, "val_acc": 0.7}
        scored = {"evaluation": self.evaluation(node, r - 1)} if r > 1 else {}
        return {"metrics": metrics, "metrics_round": r, **scored}

    def upload(self, node: str, kind: str, r: int) -> None:
        manifest, blob = make_transfer(
            WEIGHTS, kind="init" if kind == "init" else "update", job=JOB, uid=UID, round_=r, sender=node,
            num_samples=self.samples[node],
        )  # fmt: skip
        if kind == "init":
            self.job.on_init_transfer(node, 0, manifest, blob)
            return
        self.job.on_update_manifest(node, r, manifest, self.now)
        for index, chunk in enumerate(chunks_of(manifest, blob)):
            self.job.on_update_chunk(node, r, manifest.transfer, index, chunk, now_s=self.now)

    def edge_start(self, node: str) -> None:
        self.status(node, WorkerState.STARTING, 0, "starting train.py")
        self.status(node, WorkerState.UPLOADING, 0, "uploading the initial weights")
        self.upload(node, "init", 0)
        self.status(node, WorkerState.READY, 0, "waiting for the first global model")

    def edge_train(self, node: str, r: int) -> None:
        self.status(node, WorkerState.TRAINING, r, f"training round {r}")
        self.at(self.now + self.train_s * self.rng.uniform(0.8, 1.2), partial(self.edge_upload, node, r))

    def edge_upload(self, node: str, r: int) -> None:
        figures = self.figures(node, r)
        self.status(node, WorkerState.UPLOADING, r, f"uploading the update of round {r}", **figures)
        self.upload(node, "update", r)
        self.status(node, WorkerState.WAITING, r, f"update of round {r} stored by the aggregator", **figures)

    def edge_finish(self, node: str) -> None:
        r = self.rounds
        figures = self.figures(node, r)
        self.status(node, WorkerState.SAVING, r, f"saving the final model of round {r}", **figures)
        final = {**figures, "evaluation": self.evaluation(node, r), "model_path": "/model/model.ckpt"}
        digest = weights_digest(self.port.published_globals[-1].arrays)  # what the edge's saved weights hash to
        self.status(node, WorkerState.COMPLETED, r, "final model saved at /model", model_digest=digest, **final)

    # -- the run -----------------------------------------------------------------------------------

    def global_published(self) -> None:
        """A new global model: each edge receives it (jitter of the broker's fan-out) and trains or saves."""
        r, final = self.job.round, self.job.stage is Stage.FINAL
        for node in self.edges:
            delay = self.rng.uniform(0.01, 0.2)
            if final:
                self.at(self.now + delay, partial(self.edge_finish, node))
            else:
                self.at(self.now + delay, partial(self.edge_train, node, r))

    def run(self) -> None:
        self.job.on_script_frame(
            WorkerFrame(type="config", aggregation="FedAvg", exit_round=self.rounds, participants_count=len(self.edges)),
            0.1,
        )  # fmt: skip
        for node in self.edges:
            self.at(0.2 + self.rng.uniform(0, 0.5), partial(self.edge_start, node))
        published = 0
        next_tick = TICK
        while self.queue and not self.job.finished:
            t, _, action = heapq.heappop(self.queue)
            while next_tick <= t:
                self.now = next_tick
                self.job.tick(next_tick)
                next_tick += TICK
            self.now = t
            action()
            if len(self.port.published_globals) > published:
                published = len(self.port.published_globals)
                self.global_published()
        for _ in range(10):  # the service's timer flushes what is still deferred
            next_tick += TICK
            self.job.tick(next_tick)
        if not self.job.finished:
            raise SystemExit(f"the job did not finish: {self.job.status.message}")

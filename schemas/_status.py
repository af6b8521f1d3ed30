"""Status documents: what the retained ``.../status`` topics carry, as readable JSON.

A job's status mirrors Sedna's FLJobStatus (phase, conditions, startTime, completionTime, active,
succeeded, failed) and adds what Sedna users miss (issue kubeedge/sedna#419): the current and exit
round, every worker's state, a summary of the recent rounds (their training and evaluation metrics;
each round's full record, with per-worker figures, is on its own retained topic), and the job's recent
events. Training metrics (each edge's local fit, before aggregation) and evaluation metrics (the global
model scored on the edges' held-out data, `Evaluation`) are kept apart and named so: ``train``, ``eval``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from schemas._ledger import LedgerSummary

# The newest events a job status keeps: every publication of the status carries them, so they stay few
# (15 events and 5 summaries keep a 10-edge job's control traffic under 5 kB per round and edge;
# docs/performance.md). Every event is on the job's event stream; every round's full record is on its
# own retained topic (`flctl top` reads them all).
MAX_EVENTS = 15
# The recent rounds a job status keeps (summaries).
MAX_STATUS_ROUNDS = 5
# Classes an evaluation may report (a confusion matrix is classes x classes integers).
MAX_EVAL_CLASSES = 64


def now() -> datetime:
    """Timezone-aware UTC now; every timestamp in status is RFC 3339 UTC."""
    return datetime.now(UTC)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    def to_json(self) -> bytes:
        """Compact JSON, one line: retained statuses are republished on every change."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(StrEnum):
    TRAINING = "Training"
    COMPLETE = "Complete"
    FAILED = "Failed"
    # Only in jobs with edges behind site brokers: False while a site's bridge to the cloud broker is down.
    SITES_REACHABLE = "SitesReachable"


class Condition(_Wire):
    type: ConditionType
    status: Literal["True", "False", "Unknown"] = "True"
    reason: str
    message: str = ""
    last_probe_time: datetime = Field(default_factory=now)
    last_heartbeat_time: datetime = Field(default_factory=now)


class Event(_Wire):
    time: datetime = Field(default_factory=now)
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str
    message: str
    round: int | None = None
    node: str | None = None


class Evaluation(_Wire):
    """A model scored on held-out data: one edge's figures (`WorkerStatus.evaluation`), or the sum over the
    edges that evaluated it (`RoundRecord.eval`, combined by `Evaluation.combine`).

    `confusion[i][j]` counts held-out samples of class i (the index of the model's output) predicted as
    class j, so the per-class totals and hits, accuracy and balanced accuracy (mean per-class recall over
    the classes present) all follow from it and add up across edges exactly. `loss` is the mean
    cross-entropy of the predicted probabilities (None when the model's output is not a distribution).
    """

    round: int = Field(ge=0)  # the round whose global model was scored
    num_samples: int = Field(ge=0)
    loss: float | None = None
    accuracy: float
    balanced_accuracy: float
    confusion: list[Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_EVAL_CLASSES)]] = Field(
        max_length=MAX_EVAL_CLASSES
    )
    # In a combined evaluation: how many edges' figures it sums, and which.
    workers: list[str] | None = None

    @model_validator(mode="after")
    def _square(self) -> Evaluation:
        # An edge's report is input like any other: a ragged matrix would make the sum over edges wrong.
        if any(len(row) != len(self.confusion) for row in self.confusion):
            raise ValueError(
                f"confusion must be a square matrix (classes x classes), got rows of {[len(r) for r in self.confusion]}"
            )
        return self

    @classmethod
    def of(
        cls, round_: int, confusion: Sequence[Sequence[int]], *, loss: float | None, workers: list[str] | None = None
    ) -> Evaluation:
        """The figures that follow from a confusion matrix (and the mean loss, if known)."""
        matrix = [[int(v) for v in row] for row in confusion]
        total = sum(sum(row) for row in matrix)
        hits = sum(row[i] for i, row in enumerate(matrix) if i < len(row))
        recalls = [row[i] / sum(row) for i, row in enumerate(matrix) if sum(row) > 0 and i < len(row)]
        return cls(
            round=round_,
            num_samples=total,
            # Six decimals: beyond them the figures are noise, and every digit is republished with the status.
            loss=round(loss, 6) if loss is not None and math.isfinite(loss) else None,
            accuracy=round(hits / total, 6) if total else 0.0,
            balanced_accuracy=round(sum(recalls) / len(recalls), 6) if recalls else 0.0,
            confusion=matrix,
            workers=workers,
        )

    @classmethod
    def combine(cls, parts: Iterable[tuple[str, Evaluation]]) -> Evaluation | None:
        """The federated evaluation: confusion matrices summed, the loss weighted by samples (None when an
        edge did not report one). None when `parts` is empty."""
        items = sorted(parts, key=lambda p: p[0])
        if not items:
            return None
        size = max(len(e.confusion) for _, e in items)
        matrix = [[0] * size for _ in range(size)]
        for _, e in items:
            for i, row in enumerate(e.confusion):
                for j, value in enumerate(row):
                    matrix[i][j] += value
        total = sum(e.num_samples for _, e in items)
        losses = [(e.loss, e.num_samples) for _, e in items]
        loss = (
            sum(v * n for v, n in losses if v is not None) / total
            if total and all(v is not None for v, _ in losses)
            else None
        )
        return cls.of(items[0][1].round, matrix, loss=loss, workers=[n for n, _ in items])


class WorkerState(StrEnum):
    PENDING = "Pending"  # named by the job, not heard from yet
    STARTING = "Starting"  # script starting, dataset loading
    READY = "Ready"  # waiting for a global model
    TRAINING = "Training"
    UPLOADING = "Uploading"
    WAITING = "Waiting"  # update sent, waiting for the round to close
    SAVING = "Saving"
    COMPLETED = "Completed"
    FAILED = "Failed"
    OFFLINE = "Offline"

    @property
    def terminal(self) -> bool:
        return self in (WorkerState.COMPLETED, WorkerState.FAILED)


class WorkerStatus(_Wire):
    """One worker of a job. Published by the edge on its worker-status topic; folded into the job status."""

    job: str
    node: str
    # The run of the job (JobPlan.uid) this status belongs to: a retained status of an earlier run of a
    # job with the same name must not be taken for the current one.
    uid: str | None = None
    role: Literal["training", "aggregation"] = "training"
    state: WorkerState
    round: int = 0
    num_samples: int | None = None
    # Label lines the data loader skipped as not samples (README "Datasets"), and the first few of them
    # ("2.txt line 469: ..."); absent when none were.
    skipped: int | None = None
    skipped_lines: list[str] | None = None
    message: str = ""
    model_path: str | None = None
    model_digest: str | None = None
    # Training metrics of this worker's local fit of round `metricsRound` (the last epoch of the Keras
    # history: loss, accuracy, val_*), before aggregation.
    metrics: dict[str, float] = Field(default_factory=dict)
    metrics_round: int | None = None
    # The newest global model this worker scored on its held-out data (federated evaluation): the global
    # model of round r is scored when round r+1 starts training, the final one before it is saved.
    evaluation: Evaluation | None = None
    # What this worker published for the job and received of it, from its residency ledger (`flctl audit`).
    ledger: LedgerSummary | None = None
    updated_at: datetime = Field(default_factory=now)


class WorkerRound(_Wire):
    """One participant's figures in one round: what it trained on, its local metrics, its upload, and how
    the round's global model scored on its held-out data."""

    node: str
    num_samples: int
    train: dict[str, float] = Field(default_factory=dict)
    eval: Evaluation | None = None
    upload_bytes: int | None = None
    upload_seconds: float | None = None  # first chunk or manifest seen -> the whole blob stored
    # What robust aggregation did to this update, for an operator to read: "clipped from norm X to Y",
    # "excluded by Krum (score S)", "trimmed at k of n coordinates" (None: used as sent).
    robust: str | None = None
    # Asynchronous rounds only (None in synchronous ones, where every update trained from the previous
    # round's model): the global model version (round) the update was trained from, and how many
    # versions older than this round's base that is (its weight was discounted by it).
    trained_from: int | None = None
    staleness: int | None = None


class PrivacyStatus(_Wire):
    """A job's differential privacy (aggregation worker parameter ``dp_mode``): its settings and the
    (epsilon, delta) guarantee spent so far, after `rounds` closed rounds, by Google's ``dp-accounting``
    (`accountant`). `budget_spent`: the job ended because one more round would pass `target_epsilon`."""

    mode: Literal["central", "local", "distributed"]
    clip_norm: float  # C: the L2 bound on each update's delta from the global model it trained from
    noise_multiplier: float  # z: the noise std on the round's sum of clipped deltas is z*C
    delta: float
    target_epsilon: float | None = None  # None: no budget (the job runs to its exit_round)
    sampling_rate: float = 1.0  # the fraction of the training workers a round samples
    accountant: str = "rdp"
    rounds: int = 0
    epsilon: float = 0.0
    budget_spent: bool = False


class RoundRecord(_Wire):
    """One closed round. The job status keeps the newest `MAX_STATUS_ROUNDS` without `workers`; the full
    record is retained on the round's record topic (``.../rounds/<r>/record``).

    `eval` (the federated evaluation of this round's global model) is filled in after the round closed:
    the edges score the global model of round r when they start round r+1, and the final one before they
    save it, so a Succeeded job's last record has it.
    """

    round: int
    participants: list[str]
    total_samples: int
    opened_at: datetime | None = None
    closed_at: datetime = Field(default_factory=now)
    duration_seconds: float | None = None  # opened -> closed
    bytes_in: int | None = None  # the update blobs folded into this round
    bytes_out: int | None = None  # the round's global model blob, published once (retained)
    missing: list[str] = Field(default_factory=list)
    # How many updates robust aggregation left out of this round's model (Krum, Multi-Krum); each
    # worker's `robust` note says why (None: not a robust rule).
    excluded: int | None = None
    # Asynchronous rounds: how many of the folded updates were trained from an older model version than
    # this round's base (each worker's `staleness` says by how much; None: a synchronous round).
    stale: int | None = None
    # Differential privacy: the epsilon spent after this round (at the job's dp_delta; None: no DP).
    epsilon: float | None = None
    # Sample-weighted mean of the participants' local training metrics (pre-aggregation).
    train: dict[str, float] = Field(default_factory=dict)
    eval: Evaluation | None = None
    workers: list[WorkerRound] | None = None
    # Unused since `train`/`eval`; kept so that documents written before still parse.
    metrics: dict[str, float] | None = None

    def summary(self) -> RoundRecord:
        """The record without its per-worker figures (nor the names in `eval`): what the job status keeps."""
        evaluation = self.eval.model_copy(update={"workers": None}) if self.eval is not None else None
        return self.model_copy(update={"workers": None, "eval": evaluation})


# What a worker's entry in the published job status leaves out: the figures its own retained status
# (``.../workers/<node>/status``) carries. Every entry in every publication repeating each worker's metrics,
# evaluation and ledger made the job status grow with the edges times their changes (issue 12); the entry
# keeps what `flctl get` and `describe` show (state, round, samples, message, the saved model).
_BRIEF_OMITS = frozenset({"uid", "metrics", "metrics_round", "evaluation", "ledger", "skipped_lines"})


class SiteStatus(_Wire):
    """A factory site whose broker is bridged to the cloud broker, as one job sees it: its edges in the job and
    whether the bridge is up (the bridge's notification topic, `Topics.site_bridge`). While it is down the
    edges' own statuses and last wills cannot reach the cloud: their entries keep their last state."""

    name: str
    reachable: bool = True
    # When the aggregator saw the bridge go down (reachable: False) or come back (True); None: never changed.
    since: datetime | None = None
    nodes: list[str] = Field(default_factory=list)


class JobStatus(_Wire):
    api_version: Literal["sedna.io/v1alpha1"] = "sedna.io/v1alpha1"
    kind: Literal["FederatedLearningJob"] = "FederatedLearningJob"
    name: str
    namespace: str = "default"
    uid: str | None = None
    phase: Phase = Phase.PENDING
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    start_time: datetime | None = None
    completion_time: datetime | None = None
    current_round: int = 0
    exit_round: int | None = None
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    aggregation_node: str | None = None
    # Participants whose update for the current round has not arrived yet.
    waiting_for: list[str] = Field(default_factory=list)
    workers: list[WorkerStatus] = Field(default_factory=list)
    rounds: list[RoundRecord] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    spec_hash: str | None = None
    model_path: str | None = None
    # Differential privacy's settings and the epsilon spent so far (None: the job has none).
    privacy: PrivacyStatus | None = None
    # The sites of the job's edges that sit behind a site broker (None: every edge is on the cloud broker).
    sites: list[SiteStatus] | None = None
    updated_at: datetime = Field(default_factory=now)

    def to_json(self) -> bytes:
        """Compact JSON, one line, each worker's entry brief (`_BRIEF_OMITS`): the wire form. The object
        keeps every field (the aggregator's metrics read them); a document without them parses as before."""
        omit = {"workers": {"__all__": set(_BRIEF_OMITS)}}
        return self.model_dump_json(by_alias=True, exclude_none=True, exclude=omit).encode()

    def add_event(self, event: Event) -> None:
        """Keep the newest MAX_EVENTS events: the retained status must stay small."""
        self.events.append(event)
        del self.events[:-MAX_EVENTS]

    def worker(self, node: str) -> WorkerStatus | None:
        return next((w for w in self.workers if w.node == node), None)


class ResourceStatus(_Wire):
    """Status of a Dataset or Model document: whether the controller accepted it, and why not."""

    kind: str
    name: str
    valid: bool
    message: str = ""
    observed_at: datetime = Field(default_factory=now)


class NodeState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


#: A node's status names at most this many Model urls, and this many versions of each (the newest).
MAX_HELD_MODELS = 16
MAX_HELD_VERSIONS = 8


class HeldVersion(_Wire):
    """One model version a node holds under a Model url (``<url>/versions/<version>/``), from its model.json."""

    version: str
    job: str
    uid: str | None = None
    round: int
    # The first 16 hex digits of the weights' SHA-256: enough to tell versions apart; model.json has it all.
    digest: str | None = Field(default=None, max_length=16)
    created: datetime | None = None


class HeldModel(_Wire):
    """The versions a node holds under one Model url (the url as the Model spec writes it), newest first."""

    url: str
    latest: str | None = None  # the version the url's ``latest`` pointer names
    count: int = 0  # versions on disk; `versions` lists only the newest few (at most MAX_HELD_VERSIONS)
    versions: list[HeldVersion] = Field(default_factory=list, max_length=MAX_HELD_VERSIONS)


class NodeStatus(_Wire):
    """Presence of a node service; the offline form is also the node's MQTT last will."""

    node: str
    role: Literal["edge", "aggregator", "cli"]
    state: NodeState
    since: datetime = Field(default_factory=now)
    version: str | None = None
    # The factory site whose broker this node connects to (node.yaml `site:`); None: the cloud broker. Sent
    # only when set, so a node without a site publishes what it always did.
    site: str | None = None
    # The model versions this node holds, per Model url it wrote to (None: not reported, e.g. the last will).
    models: list[HeldModel] | None = Field(default=None, max_length=MAX_HELD_MODELS)

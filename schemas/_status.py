"""Status documents: what the retained ``.../status`` topics carry, as readable JSON.

A job's status mirrors Sedna's FLJobStatus (phase, conditions, startTime, completionTime, active,
succeeded, failed) and adds what Sedna users miss (issue kubeedge/sedna#419): the current and exit
round, every worker's state, a record per closed round, and the job's recent events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from schemas._ledger import LedgerSummary

MAX_EVENTS = 100


def now() -> datetime:
    """Timezone-aware UTC now; every timestamp in status is RFC 3339 UTC."""
    return datetime.now(UTC)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2).encode()


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
    metrics: dict[str, float] = Field(default_factory=dict)
    # What this worker published for the job and received of it, from its residency ledger (`flctl audit`).
    ledger: LedgerSummary | None = None
    updated_at: datetime = Field(default_factory=now)


class RoundRecord(_Wire):
    round: int
    participants: list[str]
    total_samples: int
    closed_at: datetime = Field(default_factory=now)
    missing: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)


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
    updated_at: datetime = Field(default_factory=now)

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


class NodeStatus(_Wire):
    """Presence of a node service; the offline form is also the node's MQTT last will."""

    node: str
    role: Literal["edge", "aggregator", "cli"]
    state: NodeState
    since: datetime = Field(default_factory=now)
    version: str | None = None

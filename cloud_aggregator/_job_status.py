"""One job's `JobStatus` and its bookkeeping: worker entries, capped conditions, events and counts.

The job engine decides; this class only keeps the document consistent and small: conditions and round
records are capped (events are capped by `JobStatus.add_event`), and `active`/`succeeded`/`failed`
are counted like Sedna counts pods (every worker, the aggregation worker included).
"""

from __future__ import annotations

from typing import Any, Literal

from schemas import Condition, ConditionType, Event, JobStatus, RoundRecord, WorkerState, WorkerStatus, now

__all__ = ["MAX_CONDITIONS", "MAX_ROUND_RECORDS", "Role", "StatusBook"]

MAX_CONDITIONS = 20
MAX_ROUND_RECORDS = 100
Role = Literal["training", "aggregation"]


class StatusBook:
    """Keeps one job's status document."""

    def __init__(self, status: JobStatus) -> None:
        self.status = status

    def worker(self, node: str, role: Role = "training") -> WorkerStatus | None:
        return next((w for w in self.status.workers if w.node == node and w.role == role), None)

    def replace_worker(self, worker: WorkerStatus) -> None:
        """Put `worker` in place of the entry with its node and role (or append it)."""
        workers = self.status.workers
        for i, w in enumerate(workers):
            if w.node == worker.node and w.role == worker.role:
                workers[i] = worker
                return
        workers.append(worker)

    def set_worker(
        self, node: str, state: WorkerState, message: str, *, role: Role = "training", round_: int | None = None
    ) -> None:
        """Change a worker's state and message (as the controller sees it)."""
        base = self.worker(node, role) or WorkerStatus(job=self.status.name, node=node, role=role, state=state)
        update: dict[str, Any] = {"state": state, "message": message, "updated_at": now()}
        if round_ is not None:
            update["round"] = round_
        self.replace_worker(base.model_copy(update=update))

    def all_training(self, nodes: list[str], state: WorkerState) -> bool:
        return all((w := self.worker(n)) is not None and w.state is state for n in nodes)

    def condition(self, type_: ConditionType, reason: str, message: str) -> None:
        conditions = self.status.conditions
        conditions.append(Condition(type=type_, reason=reason, message=message))
        del conditions[:-MAX_CONDITIONS]

    def event(
        self, type_: Literal["Normal", "Warning"], reason: str, message: str, *, round_: int, node: str | None
    ) -> None:
        self.status.add_event(Event(type=type_, reason=reason, message=message, round=round_, node=node))

    def record_round(self, record: RoundRecord) -> None:
        rounds = self.status.rounds
        rounds.append(record)
        del rounds[:-MAX_ROUND_RECORDS]

    def snapshot(self) -> JobStatus:
        """The status with fresh counts and timestamp, ready to publish."""
        status = self.status
        status.active = sum(1 for w in status.workers if not w.state.terminal)
        status.succeeded = sum(1 for w in status.workers if w.state is WorkerState.COMPLETED)
        status.failed = sum(1 for w in status.workers if w.state is WorkerState.FAILED)
        status.updated_at = now()
        return status

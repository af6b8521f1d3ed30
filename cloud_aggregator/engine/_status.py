"""What a job's status says: the `JobStatus` document's bookkeeping and the wording of its messages.

The job engine decides; `StatusBook` only keeps the document consistent and small: one condition per
type, updated in place (as kubectl shows them), the recent round summaries only (`RoundLedger` keeps
the records; events are capped by `JobStatus.add_event`), and `active`/`succeeded`/`failed`
are counted like Sedna counts pods (every worker, the aggregation worker included). The functions below
word the status messages that are built from the job's state (tests and users read them: keep them
stable); one-line event texts stay next to the decision that emits them.
"""

from __future__ import annotations

from typing import Any, Literal

from cloud_aggregator._privacy import Privacy
from cloud_aggregator.engine._facts import JobFacts
from cloud_aggregator.engine._stages import Init, JobState, Training
from schemas import (
    Condition,
    ConditionType,
    Event,
    JobStatus,
    Phase,
    RoundRecord,
    WorkerState,
    WorkerStatus,
    now,
)

__all__ = [
    "Role",
    "StatusBook",
    "budget_message",
    "completed_message",
    "final_message",
    "initial_status",
    "named",
    "rejected_message",
    "show_state",
    "waiting_for",
]

Role = Literal["training", "aggregation"]


class StatusBook:
    """Keeps one job's status document."""

    def __init__(self, status: JobStatus) -> None:
        self.status = status
        # (node, role) -> position in `status.workers`: every report looks its worker up, and a scan of a
        # hundred entries per report made a round cost the square of its edges.
        self._index: dict[tuple[str, str], int] = {}

    def _find(self, node: str, role: str) -> int | None:
        workers = self.status.workers
        i = self._index.get((node, role))
        if i is not None and i < len(workers) and workers[i].node == node and workers[i].role == role:
            return i
        # Not indexed yet, or the list was replaced (a restored status): index it again.
        self._index = {}
        for j, w in enumerate(workers):
            self._index.setdefault((w.node, w.role), j)
        return self._index.get((node, role))

    def worker(self, node: str, role: Role = "training") -> WorkerStatus | None:
        i = self._find(node, role)
        return None if i is None else self.status.workers[i]

    def replace_worker(self, worker: WorkerStatus) -> None:
        """Put `worker` in place of the entry with its node and role (or append it)."""
        workers = self.status.workers
        i = self._find(worker.node, worker.role)
        if i is not None:
            workers[i] = worker
            return
        workers.append(worker)
        self._index[(worker.node, worker.role)] = len(workers) - 1

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

    def condition(
        self, type_: ConditionType, reason: str, message: str, *, status: Literal["True", "False"] = "True"
    ) -> None:
        """Set the condition of `type_` (True unless `status`) in place, or add it. Complete or Failed ends
        Training: its row turns False, keeping its last message."""
        conditions = self.status.conditions
        stamp = now()
        row = Condition(
            type=type_, status=status, reason=reason, message=message, last_probe_time=stamp, last_heartbeat_time=stamp
        )
        for i, existing in enumerate(conditions):
            if existing.type is type_:
                conditions[i] = row
                break
        else:
            conditions.append(row)
        if type_ in (ConditionType.COMPLETE, ConditionType.FAILED):
            for i, existing in enumerate(conditions):
                if existing.type is ConditionType.TRAINING and existing.status == "True":
                    conditions[i] = existing.model_copy(update={"status": "False", "last_probe_time": stamp})

    def event(
        self, type_: Literal["Normal", "Warning"], reason: str, message: str, *, round_: int, node: str | None
    ) -> None:
        self.status.add_event(Event(type=type_, reason=reason, message=message, round=round_, node=node))

    def show_rounds(self, recent: list[RoundRecord]) -> None:
        """The round summaries the status shows (the ledger's newest)."""
        self.status.rounds = recent

    def snapshot(self, *, counts: bool = True) -> JobStatus:
        """The status with a fresh timestamp and (`counts`) fresh worker counts, ready to publish; the event
        stream of a held-back change reads no counts, and counting every worker on every change is what
        made a round's cost grow with the square of its edges."""
        status = self.status
        if not counts:
            status.updated_at = now()
            return status
        status.active = sum(1 for w in status.workers if not w.state.terminal)
        status.succeeded = sum(1 for w in status.workers if w.state is WorkerState.COMPLETED)
        status.failed = sum(1 for w in status.workers if w.state is WorkerState.FAILED)
        status.updated_at = now()
        return status


# -- wording -------------------------------------------------------------------------------------


def initial_status(facts: JobFacts) -> JobStatus:
    """The status of a job whose aggregation script is being started: every worker pending."""
    return JobStatus(
        name=facts.name,
        namespace=facts.namespace,
        uid=facts.uid,
        phase=Phase.PENDING,
        message="starting the aggregation script",
        aggregation_node=facts.node,
        spec_hash=facts.spec_hash,
        workers=[WorkerStatus(job=facts.name, node=n, state=WorkerState.PENDING) for n in facts.participants]
        + [WorkerStatus(job=facts.name, node=facts.node, role="aggregation", state=WorkerState.STARTING)],
    )


def waiting_for(state: JobState, participants: list[str]) -> list[str]:
    """Whose transfer the job waits for: the plan's init source (without one, everyone's init), then the open
    round's missing updates."""
    if isinstance(state, Init):
        source = state.run.plan.init_source
        return [source] if source is not None else list(participants)
    if isinstance(state, Training):
        return state.waiting_for(participants)
    return []


def show_state(status: JobStatus, state: JobState, facts: JobFacts) -> None:
    """Bring `waiting_for`, the round in progress and, while a round is open, the message up to date
    before a publication. `current_round` is the round the job is in (0 until the round-0 model is chosen,
    then the open round, then the final one), the round the message names, so `flctl get`'s ROUND column
    and the message agree ("round 2/3: waiting for ..." while ROUND is 2/3)."""
    status.waiting_for = waiting_for(state, facts.participants)
    status.current_round = state.round
    if not isinstance(state, Training):
        return
    who = named(status.waiting_for)
    n, total = len(state.counted), len(facts.participants)
    # Said because an offline participant is what a round waits for longest (until the deadline or, past
    # the offline grace and with the quorum in, not at all: `RoundEngine.closes_early`).
    waiting = set(status.waiting_for)
    offline = [w.node for w in status.workers if w.state is WorkerState.OFFLINE and w.node in waiting]
    gone = f"; offline: {named(offline)}" if offline else ""
    # A site whose bridge is down: its edges' updates wait on the site broker (`_sites`).
    away = [s for s in status.sites or [] if not s.reachable]
    if away:
        gone += "; " + "; ".join(
            f"site {s.name} unreachable" + (f" since {s.since:%H:%M:%S} UTC" if s.since else "") for s in away
        )
    if facts.asynchrony is not None:
        k = facts.asynchrony.buffer_size
        status.message = (
            f"round {state.round}/{state.run.plan.exit_round}: {n}/{k} updates in the buffer "
            f"(asynchronous; any of {total} workers, up to {facts.asynchrony.max_staleness} versions stale){gone}"
        )
        return
    if state.deadline_passed:
        status.message = (
            f"round {state.round}: waiting for {who} ({n}/{total} updates, quorum {facts.min_participants}){gone}"
        )
        return
    status.message = f"round {state.round}/{state.run.plan.exit_round}: waiting for updates from {who} ({n}/{total} in)"
    if facts.round_deadline is not None:
        status.message += f", deadline {facts.round_deadline:g} s, quorum {facts.min_participants}"
    status.message += gone
    if state.secagg is not None:
        status.message += f"; secure aggregation phase {state.secagg.phase}"


# Nodes a status message names before it counts the rest: `waitingFor` lists them all, and a message that
# named a hundred edges in every publication would be most of the document.
_NAMED = 5


def named(nodes: list[str]) -> str:
    """``edge1, edge2`` or, for many, ``edge1, ..., edge5 and 95 more``."""
    if len(nodes) <= _NAMED + 1:
        return ", ".join(nodes)
    return f"{', '.join(nodes[:_NAMED])} and {len(nodes) - _NAMED} more"


def final_message(round_: int) -> str:
    return f"final model published (round {round_}); waiting for every worker to save it"


def completed_message(rounds: int, left_out: list[str]) -> str:
    message = f"completed {rounds} rounds; every worker of the final round saved the final model"
    if left_out:
        message += f" (not in the final round: {', '.join(left_out)})"
    return message


def budget_message(privacy: Privacy, round_: int) -> str:
    """Why a DP job ends at `round_`, before its exit_round."""
    return (
        f"privacy budget spent: epsilon {privacy.epsilon(round_):.4g} after round {round_}, one more round would "
        f"spend {privacy.epsilon(round_ + 1):.4g} > dp_target_epsilon {privacy.target_epsilon:g} "
        f"(delta {privacy.delta:g}); round {round_} is the final one"
    )


def rejected_message(kind: str, node: str, round_: int, reason: str) -> str:
    """The Warning event of a refused transfer (`kind`: init or update)."""
    return f"{kind} from {node} for round {round_} rejected: {reason}"

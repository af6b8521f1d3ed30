"""Pre-start gating: what holds back a job that has not started yet, and what its status says meanwhile.

A job of this aggregator starts when everything it names is there:

- its Datasets and Models (`schemas.check_references`: each exists, and each Dataset sits on the node of
  the worker that reads it);
- its training workers' nodes: a node is known once any `NodeStatus` of it arrived (retained or live,
  online or offline) with role ``edge``.

Until then the job is Pending, its message names what it waits for, and an event says why (a Warning
`UnknownNode` naming each node never seen). Each kind of problem has its own grace, counted from when it
appeared: `JobSettings.reference_grace` for Datasets and Models (documents published together arrive
within moments), `JobSettings.node_grace` for nodes (an edge may still be booting). When one runs out the
job is Failed: condition Failed with reason InvalidReference or UnknownNode, the message listing every
problem.

Why wait for the nodes instead of starting: a started job runs its aggregation script and publishes its
plan, and without a quorum every round waits for every participant, so a typo in a nodeName would look
like a slow edge ("round 1: waiting for updates from edge3") for as long as nobody looks. Kubernetes
keeps a pod bound to a node that does not exist Pending in the same way. A job that already ran (one
that resumes after a restart) is not held for its nodes: they were there, and a broker that lost their
presence must not stop it.

A job held back has never run (no uid, no plan, no script), so its failure is not final, as in
Kubernetes: the controller looks at it again whenever a Dataset or Model is created or changed and
whenever a node shows up for the first time, and starts it as soon as nothing is missing (event
`ReferencesResolved`, its earlier events kept, the Failed condition gone). The same holds after a
restart: a retained status Failed this way, same spec hash, is re-evaluated, not taken as finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from structlog.typing import FilteringBoundLogger

from cloud_aggregator.engine._facts import JobSettings
from cloud_aggregator.engine._port import Port
from schemas import (
    Condition,
    ConditionType,
    Dataset,
    Event,
    FederatedLearningJob,
    JobStatus,
    Kind,
    Model,
    Phase,
    check_references,
)

__all__ = ["HELD_BACK_REASONS", "NEVER_SEEN", "Blockers", "Gate", "Hold", "NodeProblem", "Nodes", "Role", "held_back"]

#: The Failed reasons of a job that never ran because something it names was missing (re-evaluated).
HELD_BACK_REASONS = ("InvalidReference", "UnknownNode")
NEVER_SEEN = "never seen"

Role = Literal["edge", "aggregator", "cli"]


class Nodes:
    """Every node seen so far (any `NodeStatus`, online or offline), the role its last status gave and
    whether that status said offline (a job that starts learns which of its participants are gone)."""

    def __init__(self) -> None:
        self._roles: dict[str, Role] = {}
        self._offline: set[str] = set()

    def saw(self, node: str, role: Role, *, offline: bool = False) -> bool:
        """Note a status of `node`; True when that is news (its first status, or another role)."""
        news = self._roles.get(node) != role
        self._roles[node] = role
        if offline:
            self._offline.add(node)
        else:
            self._offline.discard(node)
        return news

    def offline(self, node: str) -> bool:
        """`node`'s last status said offline (its last will)."""
        return node in self._offline

    def online(self, node: str) -> bool:
        """`node` was seen and its last status did not say offline."""
        return node in self._roles and node not in self._offline

    def problem(self, node: str, role: Role) -> str | None:
        """Why `node` cannot take a `role` part (None: it can)."""
        seen = self._roles.get(node)
        if seen is None:
            return NEVER_SEEN
        if seen != role:
            return f"seen as {_a(seen)} node, not {_a(role)}"
        return None


def _a(role: str) -> str:
    return f"{'an' if role[0] in 'aeiou' else 'a'} {role}"


@dataclass(frozen=True)
class NodeProblem:
    """A node a job names that cannot run its part: `where` is the spec field, `why` the short reason."""

    where: str
    node: str
    why: str

    def __str__(self) -> str:
        what = "has never been seen (no node status from it)" if self.why == NEVER_SEEN else self.why
        return f"{self.where}: node {self.node} {what}"


@dataclass(frozen=True)
class Blockers:
    """What keeps a job from starting now."""

    references: list[str] = field(default_factory=list)  # check_references problems, as text
    missing: list[str] = field(default_factory=list)  # 'Dataset "x"', 'Model "y"': what the wait names
    nodes: list[NodeProblem] = field(default_factory=list)

    @property
    def clear(self) -> bool:
        return not self.references and not self.nodes


@dataclass
class Hold:
    """A job held back: the status last published for it, what blocks it and when each grace runs out."""

    status: JobStatus  # its events carry over into the run's status when the job starts
    blockers: Blockers = field(default_factory=Blockers)
    references_due: float | None = None
    nodes_due: float | None = None

    @property
    def failed(self) -> bool:
        return self.status.phase is Phase.FAILED


def held_back(status: JobStatus) -> bool:
    """Whether `status` is the Failed status of a job that never ran because something it named was missing."""
    return (
        status.phase is Phase.FAILED
        and status.uid is None
        and bool(status.conditions)
        and status.conditions[-1].type is ConditionType.FAILED
        and status.conditions[-1].reason in HELD_BACK_REASONS
    )


def _missing(spec: FederatedLearningJob, datasets: Mapping[str, Dataset], models: Mapping[str, Model]) -> list[str]:
    names = [spec.spec.aggregation_worker.model.name]
    if spec.spec.pretrained_model:
        names.append(spec.spec.pretrained_model.name)
    missing = [f'Model "{n}"' for n in dict.fromkeys(names) if n not in models]
    wanted = [w.dataset.name for w in spec.spec.training_workers]
    return missing + [f'Dataset "{n}"' for n in dict.fromkeys(wanted) if n not in datasets]


def _node_wait(problems: list[NodeProblem], grace: float) -> str:
    """'node edge3 (never seen; fails after 60 s)', one group per reason."""
    by_why: dict[str, list[str]] = {}
    for p in problems:
        names = by_why.setdefault(p.why, [])
        if p.node not in names:
            names.append(p.node)
    groups = [f"{'node' if len(n) == 1 else 'nodes'} {', '.join(n)} ({why}" for why, n in by_why.items()]
    return "), ".join(groups) + f"; fails after {grace:g} s)"


class Gate:
    """Holds back this aggregator's jobs that cannot start yet, and publishes their status while it does."""

    def __init__(
        self, *, node: str, nodes: Nodes, port: Port, settings: JobSettings, log: FilteringBoundLogger
    ) -> None:
        self._node = node
        self._nodes = nodes
        self._port = port
        self._settings = settings
        self._log = log

    def blockers(
        self,
        spec: FederatedLearningJob,
        datasets: Mapping[str, Dataset],
        models: Mapping[str, Model],
        *,
        nodes: bool = True,
    ) -> Blockers:
        """What keeps `spec` from starting (`nodes`: whether its training nodes must have been seen)."""
        node_problems: list[NodeProblem] = []
        if nodes:
            for i, worker in enumerate(spec.spec.training_workers):
                name = worker.effective_node() or ""
                why = self._nodes.problem(name, "edge")
                if why is not None:
                    node_problems.append(NodeProblem(f"spec.trainingWorkers[{i}].nodeName", name, why))
        return Blockers(
            references=[str(p) for p in check_references(spec, datasets, models)],
            missing=_missing(spec, datasets, models),
            nodes=node_problems,
        )

    def restore(self, previous: JobStatus) -> Hold:
        """The hold of a job whose retained status (before a restart) says it failed this way."""
        return Hold(status=previous.model_copy(deep=True))

    def hold(
        self, hold: Hold | None, spec: FederatedLearningJob, spec_hash: str, blockers: Blockers, now_s: float
    ) -> Hold:
        """Keep a job that cannot start back: Pending naming what it waits for, or still Failed (message
        brought up to date) when its grace ran out before. Publishes only what changed."""
        if hold is None:
            status = JobStatus(
                name=spec.metadata.name,
                namespace=spec.metadata.namespace,
                aggregation_node=self._node,
                spec_hash=spec_hash,
            )
            hold = Hold(status=status)
        before, hold.blockers = hold.blockers, blockers
        # Each kind of problem has its own grace, counted from when that kind appeared.
        if not blockers.references:
            hold.references_due = None
        elif hold.references_due is None:
            hold.references_due = now_s + self._settings.reference_grace
        if not blockers.nodes:
            hold.nodes_due = None
        elif hold.nodes_due is None:
            hold.nodes_due = now_s + self._settings.node_grace
        status = hold.status
        # Whom it waits for, as a started job's status names whom its round waits for.
        status.waiting_for = list(dict.fromkeys(p.node for p in blockers.nodes))
        if hold.failed:
            self._still_failed(status, blockers)
        else:
            self._waiting(status, blockers, before)
        return hold

    def _still_failed(self, status: JobStatus, blockers: Blockers) -> None:
        """A job Failed this way that is still not complete: its message follows what is still missing."""
        message = self._failure(blockers)
        if message == status.message:
            return
        reason = HELD_BACK_REASONS[0] if blockers.references else HELD_BACK_REASONS[1]
        status.message = message
        status.conditions[-1:] = [Condition(type=ConditionType.FAILED, reason=reason, message=message)]
        status.add_event(Event(type="Normal", reason="ReferencesChanged", message=f"still cannot start: {message}"))
        self._publish(status)

    def _waiting(self, status: JobStatus, blockers: Blockers, before: Blockers) -> None:
        """Pending: the message names what the job waits for; each node newly missing gets an event.

        The event is Normal (`WaitingForNode`), as `WaitingForReferences` is: a job created while its edges
        are still booting waits for a moment, and that is not a problem. The Warning is the failure
        (`UnknownNode`), when the grace has run out."""
        references = nodes = ""
        if blockers.references:
            what = ", ".join(blockers.missing) if blockers.missing else "; ".join(blockers.references)
            references = f"waiting for {what} (fails after {self._settings.reference_grace:g} s)"
        if blockers.nodes:
            nodes = f"waiting for {_node_wait(blockers.nodes, self._settings.node_grace)}"
        message = "; ".join(part for part in (references, nodes) if part)
        if message == status.message:
            return
        status.message = message
        if references:
            status.add_event(Event(type="Normal", reason="WaitingForReferences", message=references))
        for problem in blockers.nodes:
            if problem not in before.nodes:
                text = f"{problem}: the job waits for it (fails after {self._settings.node_grace:g} s)"
                status.add_event(Event(type="Normal", reason="WaitingForNode", message=text))
        self._log.info("job waits", job=status.name, waiting=message)
        self._publish(status)

    def expire(self, hold: Hold, now_s: float) -> None:
        """Fail a job held back past a grace period (it is still re-evaluated when things appear)."""
        if hold.failed:
            return
        references = hold.references_due is not None and now_s >= hold.references_due
        nodes = hold.nodes_due is not None and now_s >= hold.nodes_due
        if not references and not nodes:
            return
        reason = HELD_BACK_REASONS[0] if references else HELD_BACK_REASONS[1]
        status = hold.status
        status.phase = Phase.FAILED
        status.message = self._failure(hold.blockers)
        status.conditions.append(Condition(type=ConditionType.FAILED, reason=reason, message=status.message))
        status.add_event(Event(type="Warning", reason=reason, message=status.message))
        self._log.warning(
            "job failed: what it names is still missing after the grace period",
            job=status.name,
            problems=status.message,
        )
        self._publish(status)

    def release(self, hold: Hold, status: JobStatus, cause: str) -> None:
        """The job starts: its events so far carry over into the run's `status`, plus why it starts now."""
        for event in hold.status.events:
            status.add_event(event)
        status.add_event(Event(type="Normal", reason="ReferencesResolved", message=f"{cause}: the job starts"))
        self._log.info("job held back starts", job=status.name, cause=cause)

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _failure(blockers: Blockers) -> str:
        problems = [*blockers.references, *(str(p) for p in blockers.nodes)]
        return "; ".join(problems) + "; the job starts as soon as this is fixed"

    def _publish(self, status: JobStatus) -> None:
        self._port.publish_status(Kind.JOB, status.name, status)

"""What the controller does with the retained state a broker delivers at startup or after a reconnect.

Three questions, answered with the kept copy (`KeptState`):

- **Which kept specs did the broker lose?** Those it did not deliver during the catch-up. A missing spec
  is never a delete (a broker killed -9 before its autosave, or started from an empty or old data
  directory, simply does not have it): the controller takes the kept spec as if it had been delivered,
  and the service republishes it.
- **What did a deleted resource leave behind?** Only a resource with a tombstone (an explicit empty
  retained spec was seen, e.g. ``flctl delete``) and no spec now is deleted: its retained status, and for
  a job of this node its plan and global models, are cleared. A status whose spec is missing and that
  this node never accepted is left as it is (and logged): it may belong to a spec the broker lost
  before this node kept anything.
- **What does a job's earlier status mean for the same spec?** (`restart_rule`) Finished: not run
  again; Failed before it ever ran for something missing: re-evaluated; Running here: resumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from cloud_aggregator.engine._gate import held_back
from cloud_aggregator.engine._kept import KeptState
from cloud_aggregator.engine._port import Port
from schemas import JobPlan, JobStatus, Kind, Phase

__all__ = [
    "Delivered",
    "Leftovers",
    "RestartRule",
    "clear_if_deleted",
    "clear_leftovers",
    "leftovers",
    "lost_specs",
    "restart_rule",
]

# Datasets and Models before jobs, so a restored job finds its references restored too.
_ORDER = {Kind.DATASET: 0, Kind.MODEL: 1, Kind.JOB: 2}


class Delivered:
    """What the broker delivered while the controller listens for its retained state: at startup (until
    `ready`) and during a reconnect's audit. An empty payload (a clear) forgets what came before."""

    def __init__(self) -> None:
        self.statuses: dict[tuple[Kind, str], bytes] = {}
        self.plans: dict[str, bytes] = {}
        self.specs: set[tuple[Kind, str]] = set()
        self.listening = True

    def status(self, kind: Kind, name: str, payload: bytes) -> None:
        if not self.listening:
            return
        if payload:
            self.statuses[(kind, name)] = payload
        else:
            self.statuses.pop((kind, name), None)

    def plan(self, job: str, payload: bytes) -> None:
        if not self.listening:
            return
        if payload:
            self.plans[job] = payload
        else:
            self.plans.pop(job, None)

    def listen(self, listening: bool) -> None:
        """Start (True) or stop listening; either way, forget what was collected."""
        self.listening = listening
        self.statuses.clear()
        self.plans.clear()
        self.specs.clear()


def lost_specs(
    kept: KeptState, delivered: set[tuple[Kind, str]], log: FilteringBoundLogger
) -> list[tuple[Kind, str, bytes]]:
    """The kept specs the broker did not deliver (or delivered as deleted), in the order to restore them."""
    lost = sorted(
        [(k, n, p) for (k, n), p in kept.specs.items() if (k, n) not in delivered],
        key=lambda item: (_ORDER[item[0]], item[1]),
    )
    for kind, name, _ in lost:
        log.warning(
            "spec missing on the broker: restored from the kept copy (not a delete)", kind=kind.value, name=name
        )
    return lost


def clear_if_deleted(port: Port, log: FilteringBoundLogger, kind: Kind, name: str, payload: bytes) -> bool:
    """A spec from the broker's store whose bytes were explicitly deleted (an old snapshot brought it back):
    publish an empty spec over it again and say so (True); False for any other spec."""
    if not port.kept().was_deleted(kind, name, payload):
        return False
    log.warning(
        "a deleted spec came back from the broker's store (an old snapshot?): cleared again",
        kind=kind.value,
        name=name,
    )
    port.restore_spec(kind, name, b"")
    return True


@dataclass
class Leftovers:
    """Retained messages of deleted resources, to clear; and statuses left alone because nothing is known."""

    resource_statuses: list[tuple[Kind, str]] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)  # plan, global models, status and state of each
    unknown: list[tuple[Kind, str]] = field(default_factory=list)


def leftovers(delivered: Delivered, *, node: str, kept: KeptState, known: set[tuple[Kind, str]]) -> Leftovers:
    """Sort the delivered statuses and plans whose resource is not `known` (no spec now) into leftovers."""
    out = Leftovers()
    jobs: set[str] = set()
    for (kind, name), payload in sorted(delivered.statuses.items()):
        if (kind, name) in known:
            continue
        if not kept.was_deleted(kind, name):
            out.unknown.append((kind, name))
        elif kind is not Kind.JOB:
            out.resource_statuses.append((kind, name))
        elif _aggregation_node(JobStatus, payload) in (node, None):
            jobs.add(name)
    for name, payload in delivered.plans.items():
        deleted = (Kind.JOB, name) not in known and kept.was_deleted(Kind.JOB, name)
        if deleted and _aggregation_node(JobPlan, payload) == node:
            jobs.add(name)
    out.jobs = sorted(jobs)
    return out


def _aggregation_node(model: type[JobStatus] | type[JobPlan], payload: bytes) -> str | None:
    """The document's aggregation node; a document that does not parse counts as another node's."""
    try:
        return model.model_validate_json(payload).aggregation_node
    except ValidationError:
        return "?"


def clear_leftovers(found: Leftovers, port: Port, log: FilteringBoundLogger) -> None:
    """Clear what deleted resources left on the broker: statuses; a job's plan, global models and state too."""
    for kind, name in found.unknown:
        log.info(
            "status left as it is: its spec is not on the broker and this node never accepted it",
            kind=kind.value,
            name=name,
        )
    for kind, name in found.resource_statuses:
        log.info("clearing the status of a deleted resource", kind=kind.value, name=name)
        port.publish_status(kind, name, None)
    for name in found.jobs:
        log.info("clearing what a deleted job left behind", job=name)
        port.publish_plan(name, None)
        port.clear_globals(name)
        port.clear_state(name)
        port.publish_status(Kind.JOB, name, None)


@dataclass(frozen=True)
class RestartRule:
    """What the status of an earlier run (the kept copy's, else the broker's) means for the same spec.

    ``finished``: it Succeeded or Failed, so it is not run again. ``held``: it Failed before it ever ran
    because something it names was missing (`_gate.held_back`), so it is re-evaluated, not finished.
    ``resume``: it was Running here, so it resumes with the same uid from its checkpoint."""

    action: Literal["finished", "held", "resume"]
    status: JobStatus


def restart_rule(payload: bytes | None, spec_hash: str, node: str) -> RestartRule | None:
    """The rule for a job of this `node` whose earlier status is `payload`; None: start it afresh."""
    if payload is None:
        return None
    try:
        previous = JobStatus.model_validate_json(payload)
    except ValidationError:
        return None
    if previous.spec_hash != spec_hash:
        return None
    if previous.phase.finished:
        return RestartRule("held" if held_back(previous) else "finished", previous)
    if previous.phase is Phase.RUNNING and previous.uid and previous.aggregation_node in (node, None):
        return RestartRule("resume", previous)
    return None

"""The controller: specs, the jobs of this aggregation node, and their status until a `Job` owns it.

It is a plain object driven by method calls (one per received message, plus `tick`), with its side
effects behind a `Port`, so tests drive it without a broker. What it decides, and where:

- **Specs** (``<kind>/<name>/spec``, retained) are parsed with `schemas.parse_for_topic`. A bad document
  gets a status naming the document and the field (a Dataset or Model: ``valid: false``, `_registry`; a
  job: phase Failed, condition Failed/InvalidSpec, or SpecTooLarge with the size and the limit). An empty
  payload deletes the resource; for a job that stops everything and clears its retained plan, status
  and global models.
- **Jobs** are identified by their spec hash. The same spec again is a no-op. A different spec for a job
  that has started is rejected (Warning event, the running spec is published back on the spec topic):
  delete and re-create the job to change it. A job that has not started yet is simply replaced. Jobs
  whose aggregation worker runs on another node are not run here (`_foreign` reports them while that
  node has never been seen).
- **What a job names** (`_gate`): its Datasets and Models, and its training workers' nodes (seen: some
  node status with role edge). A job missing one is Pending, then Failed after a grace period, and is
  looked at again whenever a Dataset, Model or node appears: it never ran, so that Failed status (a
  retained one too, after a restart) is not final.
- **Restart and durability** (`_restart`): before `ready()`, the service feeds the retained specs, job
  statuses, plans, node and worker statuses. Every accepted spec is kept through the port
  (`Port.keep_spec`), so a spec the broker lost is restored, never taken as a delete; a job already
  finished with the same spec hash is not run again, one Running here resumes with the same uid.

Valid jobs are handed to a `Job`, which owns the job's status from then on.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from cloud_aggregator.engine._facts import JobFacts, JobSettings
from cloud_aggregator.engine._foreign import ForeignJobs
from cloud_aggregator.engine._gate import Gate, Hold, Nodes
from cloud_aggregator.engine._job import Job
from cloud_aggregator.engine._port import Port
from cloud_aggregator.engine._registry import Registry
from cloud_aggregator.engine._restart import (
    Delivered,
    clear_if_deleted,
    clear_leftovers,
    leftovers,
    lost_specs,
    restart_rule,
)
from cloud_aggregator.engine._routes import JobRoutes
from cloud_aggregator.engine._sites import SiteMap
from cloud_aggregator.engine._stream import StreamingPort
from schemas import (
    Condition,
    ConditionType,
    Dataset,
    Event,
    FederatedLearningJob,
    JobStatus,
    Kind,
    Model,
    NodeState,
    NodeStatus,
    Phase,
    SpecError,
    SpecTooLargeError,
    WorkerStatus,
    now,
    parse_for_topic,
)

__all__ = ["Controller"]


@dataclass
class _Entry:
    """One job spec this controller is responsible for."""

    name: str
    spec: FederatedLearningJob
    payload: bytes
    spec_hash: str
    engine: Job | None = None
    hold: Hold | None = None  # why it cannot start yet (Pending, or Failed and still re-evaluated)
    finished: JobStatus | None = None  # the retained terminal status of an earlier run (not re-run)
    resume_from: JobStatus | None = None  # the retained Running status of the run to resume

    @property
    def started(self) -> bool:
        """Whether this spec ran (here, or in an earlier process whose terminal status is retained)."""
        return self.engine is not None or (self.finished is not None and self.finished.uid is not None)


class Controller(JobRoutes):
    """Owns every resource's status and every job of this aggregation node."""

    def __init__(
        self,
        *,
        node: str,
        port: Port,
        settings: JobSettings | None = None,
        new_uid: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.node = node
        self._settings = settings or JobSettings()
        self._new_uid = new_uid
        self._log: FilteringBoundLogger = structlog.get_logger("cloud_aggregator.controller")
        # Everything below publishes through it: each job status is followed by its event-stream lines.
        port = StreamingPort(port, self._log)
        self._port: Port = port
        self._registry = Registry(port, self._log)
        self._jobs: dict[str, _Entry] = {}
        self._invalid_jobs: set[str] = set()  # jobs whose spec is invalid: we own their Failed status
        self._ready = False
        self._delivered = Delivered()  # the broker's retained state, until ready() and during an audit
        self._old_status = self._delivered.statuses
        self._old_worker_statuses: dict[tuple[str, str], bytes] = {}
        self._nodes = Nodes()  # every node status seen: what the gate and the foreign reports judge by
        self._gate = Gate(node=node, nodes=self._nodes, port=port, settings=self._settings, log=self._log)
        self._foreign = ForeignJobs(nodes=self._nodes, port=port, settings=self._settings, log=self._log)
        self._sites = SiteMap(self._log)  # which edges sit behind which site broker, and is its bridge up

    # -- queries ---------------------------------------------------------------------------------

    @property
    def datasets(self) -> dict[str, Dataset]:
        return self._registry.datasets

    @property
    def models(self) -> dict[str, Model]:
        return self._registry.models

    @property
    def is_ready(self) -> bool:
        return self._ready

    def job(self, name: str) -> Job | None:
        """The running (or finished) engine of job `name`, if it started in this process."""
        entry = self._jobs.get(name)
        return entry.engine if entry else None

    def run_of(self, name: str) -> str | None:
        """The uid of the current or last run of job `name` on this aggregation node (after a restart, that of
        its retained terminal status); None when it is not one of this node's jobs or never ran."""
        entry = self._jobs.get(name)
        if entry is None:
            return None
        if entry.engine is not None:
            return entry.engine.facts.uid
        return entry.finished.uid if entry.finished is not None else None

    def engines(self) -> list[Job]:
        return [e.engine for e in self._jobs.values() if e.engine is not None]

    # -- startup ---------------------------------------------------------------------------------

    def on_retained_status(self, kind: Kind, name: str, payload: bytes) -> None:
        """A retained status seen before `ready()` or during an audit: remembered for the restart rules."""
        self._delivered.status(kind, name, payload)

    def on_retained_plan(self, job: str, payload: bytes) -> None:
        """A retained plan seen before `ready()` or during an audit: cleared if its job was deleted."""
        self._delivered.plan(job, payload)

    def ready(self, now_s: float) -> None:
        """Every retained message is in: restore what the broker lost, evaluate the jobs, clear what deleted
        resources left behind."""
        if self._ready:
            return
        self._restore_lost(now_s)
        self._ready = True
        for entry in list(self._jobs.values()):
            self._evaluate(entry, now_s)
        self._foreign.ready(now_s, self._old_status)
        self._clear_orphans()
        self._delivered.listen(False)
        self._old_worker_statuses.clear()
        self._log.info(
            "controller ready", jobs=sorted(self._jobs), datasets=len(self.datasets), models=len(self.models)
        )

    def _restore_lost(self, now_s: float) -> None:
        """Kept specs the broker did not deliver are taken as delivered; kept job statuses are the old ones."""
        kept = self._port.kept()
        for kind, name, payload in lost_specs(kept, self._delivered.specs, self._log):
            self.on_spec(kind, name, f"{kind.value}/{name}/spec (kept copy)", payload, now_s)
        # The kept status is the last one this node published: newer than a broker snapshot's, and there
        # when the broker lost it, so the restart rules (finished: not run again; Running: resume) use it.
        for (kind, name), payload in kept.statuses.items():
            if kind is Kind.JOB:
                self._old_status[(kind, name)] = payload

    def begin_audit(self) -> None:
        """The session reconnected: until `end_audit`, retained statuses and plans are collected again."""
        self._delivered.listen(True)

    def end_audit(self) -> None:
        """The retained statuses and plans of the reconnect are in: clear what deleted resources left."""
        self._clear_orphans()
        self._delivered.listen(False)

    def _clear_orphans(self) -> None:
        known = {(Kind.JOB, n) for n in [*self._jobs, *self._invalid_jobs]} | self._registry.statuses
        clear_leftovers(
            leftovers(self._delivered, node=self.node, kept=self._port.kept(), known=known), self._port, self._log
        )

    # -- specs -----------------------------------------------------------------------------------

    def on_spec(
        self, kind: Kind, name: str, topic: str, payload: bytes, now_s: float, *, retained: bool = False
    ) -> None:
        """A spec message: create, replace or (empty payload) delete a resource. `retained`: the broker
        delivered it from its store (a subscription, a reconnect), not as a publish made now."""
        if not self._ready:
            self._delivered.specs.add((kind, name))
        if not payload:
            if kind is Kind.JOB:
                self._foreign.deleted(name)
            self._delete(kind, name)
            return
        if retained and clear_if_deleted(self._port, self._log, kind, name, payload):
            return  # only a copy from the broker's store can be stale; the same spec published now is a re-create
        try:
            resource = parse_for_topic(payload, topic, kind, name)
        except SpecError as exc:
            self._invalid(kind, name, payload, exc)
            return
        if isinstance(resource, FederatedLearningJob):
            self._job_spec(name, resource, payload, now_s)
            return
        news = self._registry.accept(resource, payload)
        self._recheck(now_s, f'{kind.kind} "{name}" {news}')

    def _invalid(self, kind: Kind, name: str, payload: bytes, exc: SpecError) -> None:
        self._log.warning("invalid spec", kind=kind.value, name=name, error=str(exc))
        if kind is not Kind.JOB:
            self._registry.invalid(kind, name, payload, exc)
            return
        entry = self._jobs.get(name)
        self._foreign.drop(name)
        if entry is not None and entry.started:
            self._reject_change(
                entry,
                f"an invalid spec was published for this job and was not applied (the job keeps its original "
                f"spec; delete and re-create the job to change it): {exc}",
            )
            return
        self._jobs.pop(name, None)
        self._invalid_jobs.add(name)
        self._port.keep_spec(kind, name, payload)
        # The message names the topic and, for an oversized document, its size and the limit.
        reason = "SpecTooLarge" if isinstance(exc, SpecTooLargeError) else "InvalidSpec"
        status = JobStatus(name=name, phase=Phase.FAILED, message=str(exc))
        status.conditions.append(Condition(type=ConditionType.FAILED, reason=reason, message=str(exc)))
        status.add_event(Event(type="Warning", reason=reason, message=str(exc)))
        self._port.publish_status(Kind.JOB, name, status)

    def _reject_change(self, entry: _Entry, message: str) -> None:
        """Keep the job as it is: a Warning event, and its spec published back on the spec topic."""
        if entry.engine is not None:
            entry.engine.reject_spec(message)
        elif entry.finished is not None:
            entry.finished.add_event(Event(type="Warning", reason="SpecRejected", message=message))
            self._port.publish_status(Kind.JOB, entry.name, entry.finished)
        self._port.restore_spec(Kind.JOB, entry.name, entry.payload)

    def _job_spec(self, name: str, spec: FederatedLearningJob, payload: bytes, now_s: float) -> None:
        spec_hash = spec.spec_hash()
        entry = self._jobs.get(name)
        if entry is not None and entry.spec_hash == spec_hash:
            self._log.info("the same job spec was published again: nothing to do", job=name)
            entry.payload = payload  # the same spec may be written differently: keep what the broker holds
            self._port.keep_spec(Kind.JOB, name, payload)
            return
        if entry is not None and entry.started:
            self._log.warning("a different spec for a started job was rejected", job=name)
            self._reject_change(
                entry,
                "a different spec was published for this job and was not applied (the job keeps its "
                "original spec): delete and re-create the job to change it",
            )
            return
        self._invalid_jobs.discard(name)
        node = spec.spec.aggregation_worker.effective_node()
        if node != self.node:
            self._jobs.pop(name, None)
            self._port.forget_spec(Kind.JOB, name, deleted=False)  # another node's job: not ours to keep
            self._log.info("job ignored: its aggregation worker runs on another node", job=name, aggregation_node=node)
            self._foreign.on_spec(spec, spec_hash, now_s, ready=self._ready)
            return
        self._foreign.drop(name)
        entry = _Entry(name=name, spec=spec, payload=payload, spec_hash=spec_hash)
        self._jobs[name] = entry
        self._port.keep_spec(Kind.JOB, name, payload)
        if self._ready:
            self._evaluate(entry, now_s)

    def _delete(self, kind: Kind, name: str) -> None:
        # An explicit delete: the tombstone makes a retained copy of this spec that comes back (an old
        # broker snapshot) a stale one, and lets the leftovers of the resource be cleared.
        self._port.forget_spec(kind, name, deleted=True)
        if kind is not Kind.JOB:
            self._registry.delete(kind, name)
            return
        entry = self._jobs.pop(name, None)
        if entry is not None and entry.engine is not None:
            entry.engine.delete()
            return
        if entry is not None and entry.started:
            # Finished before this process started: its plan and last global model may still be retained.
            self._port.publish_plan(name, None)
            self._port.clear_globals(name)
            self._port.clear_state(name)
        if entry is not None or name in self._invalid_jobs:
            self._invalid_jobs.discard(name)
            self._log.info("job deleted", job=name)
            self._port.publish_status(Kind.JOB, name, None)

    # -- references and nodes (the gate) ---------------------------------------------------------

    def _evaluate(self, entry: _Entry, now_s: float) -> None:
        rule = restart_rule(self._old_status.pop((Kind.JOB, entry.name), None), entry.spec_hash, self.node)
        if rule is not None and rule.action == "finished":
            entry.finished = rule.status
            self._log.info(
                "job already finished with this spec; not run again", job=entry.name, phase=rule.status.phase.value
            )
            return
        if rule is not None and rule.action == "held":
            entry.hold = self._gate.restore(rule.status)  # it failed before it ever ran: it runs once all is there
        elif rule is not None:
            entry.resume_from = rule.status
        self._check(entry, now_s, "everything the job names is there")

    def _check(self, entry: _Entry, now_s: float, cause: str) -> None:
        """Start the job if nothing holds it back; else hold it (Pending, Failed after a grace period)."""
        # A run that resumes had its nodes: a broker that lost their presence must not hold it back.
        blockers = self._gate.blockers(entry.spec, self.datasets, self.models, nodes=entry.resume_from is None)
        if blockers.clear:
            self._start(entry, now_s, cause)
        else:
            entry.hold = self._gate.hold(entry.hold, entry.spec, entry.spec_hash, blockers, now_s)

    def _recheck(self, now_s: float, cause: str) -> None:
        """A Dataset, Model or node appeared or changed: look again at every job held back."""
        if not self._ready:
            return
        for entry in list(self._jobs.values()):
            if entry.hold is not None:
                self._check(entry, now_s, cause)

    def _start(self, entry: _Entry, now_s: float, cause: str) -> None:
        hold, entry.hold = entry.hold, None
        previous, entry.resume_from = entry.resume_from, None
        facts = JobFacts.of(
            entry.spec,
            self.datasets,
            self.models,
            node=self.node,
            uid=previous.uid if previous is not None and previous.uid else self._new_uid(),
            settings=self._settings,
            resume=previous is not None,
        )
        engine = Job(facts, self._port, previous_status=previous)
        entry.engine = engine
        if hold is not None:
            self._gate.release(hold, engine.status, cause)
        self._log.info("job resumes" if previous is not None else "job starts", job=entry.name, uid=engine.facts.uid)
        engine.start(now_s)
        for node in facts.participants:
            if self._nodes.offline(node):  # its last will came before the job: the job knows it is gone
                engine.on_node_status(node, NodeState.OFFLINE, now_s)
            elif self._nodes.online(node):  # the plan asks an online node for the initial weights
                engine.on_node_status(node, NodeState.ONLINE, now_s)
        engine.on_sites(self._sites.statuses(), now_s)
        for (job, node), payload in list(self._old_worker_statuses.items()):
            if job == entry.name:
                del self._old_worker_statuses[(job, node)]
                self.on_worker_status(job, node, payload, retained=True)

    # -- timers ----------------------------------------------------------------------------------

    def tick(self, now_s: float) -> None:
        """Fail jobs held back past their grace period; run the jobs' timers."""
        if not self._ready:
            return
        for entry in list(self._jobs.values()):
            if entry.hold is not None:
                self._gate.expire(entry.hold, now_s)
            elif entry.engine is not None and not entry.engine.finished:
                entry.engine.tick(now_s)
        self._foreign.tick(now_s)

    # -- job runtime -----------------------------------------------------------------------------

    def on_worker_status(self, job: str, node: str, payload: bytes, *, retained: bool) -> None:
        """A worker's status (``.../workers/<node>/status``), for a job this node runs."""
        engine = self.job(job)
        if engine is None and not self._ready and payload:
            self._old_worker_statuses[(job, node)] = payload  # for a job that resumes at ready()
            return
        if engine is None or not payload:
            return
        try:
            status = WorkerStatus.model_validate_json(payload)
        except ValidationError as exc:
            self._log.warning("unreadable worker status", job=job, worker=node, error=str(exc).splitlines()[0])
            return
        engine.on_worker_status(node, status, retained=retained)

    def on_node_status(self, node: str, payload: bytes, now_s: float) -> None:
        """A node's presence (``nodes/<node>/status``). Before `ready()` it is only noted, so that "never
        seen" is judged with every retained presence in."""
        if not payload:
            return
        try:
            status = NodeStatus.model_validate_json(payload)
        except ValidationError:
            self._log.warning("unreadable node status", node=node)
            return
        if status.node != node:
            return
        if self._nodes.saw(node, status.role, offline=status.state is NodeState.OFFLINE) and self._ready:
            self._foreign.node_seen(node, now_s)
            self._recheck(now_s, f"node {node} appeared")
        for engine in self.engines():
            engine.on_node_status(node, status.state, now_s)
        if self._sites.saw_node(status):
            self._show_sites(now_s)

    def on_site_bridge(self, site: str, payload: bytes, now_s: float, *, retained: bool = False) -> None:
        """A site bridge's notification (``sites/<site>/bridge``: "1" up, "0" down, retained; `_sites`)."""
        if self._sites.on_bridge(site, payload, now(), retained=retained):
            self._show_sites(now_s)

    def _show_sites(self, now_s: float) -> None:
        sites = self._sites.statuses()
        for engine in self.engines():
            engine.on_sites(sites, now_s)

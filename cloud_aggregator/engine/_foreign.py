"""Jobs whose aggregation node nobody has seen: every aggregator says so, until that node shows up.

An aggregator runs only the jobs whose aggregationWorker names its node and ignores the others, so a job
naming a node no aggregator runs (a typo, a node not installed yet) would get no status at all. So each
aggregator also watches the jobs of other aggregation nodes: while the named node has never sent a
`NodeStatus` as an aggregator, it publishes the job's status itself: Pending "aggregation node cloud9 has
never been seen", then Failed (reason UnknownNode) after `JobSettings.node_grace`. The moment a status of
that node arrives it stops touching the job: the real owner takes over, and re-runs a job that failed this
way (`_gate.held_back`) instead of taking it as finished.

Several aggregators report the same job. Each builds the same document from the spec and its settings
(phase, message, condition, events: only timestamps differ), so whichever copy the broker keeps says the
same thing: no election, and one reporter going away changes nothing. Nodes may give reporters different
`node_grace` values; the earliest Failed wins, which is what an operator reading either log expects.

A reporter never overwrites the status of a run (one with a uid): if the job ran on that node before and
the broker lost the node's presence, the run's status stays as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from cloud_aggregator.engine._facts import JobSettings
from cloud_aggregator.engine._gate import NEVER_SEEN, Nodes, held_back
from cloud_aggregator.engine._port import Port
from schemas import Condition, ConditionType, Event, FederatedLearningJob, JobStatus, Kind, Phase

__all__ = ["ForeignJobs"]


@dataclass
class _Report:
    """A job of another aggregation node that this aggregator reports on."""

    spec: FederatedLearningJob
    spec_hash: str
    node: str
    status: JobStatus | None = None  # what this aggregator published (None: nothing yet)
    due: float | None = None  # when it fails

    @property
    def name(self) -> str:
        return self.spec.metadata.name


class ForeignJobs:
    """The jobs of aggregation nodes never seen, reported by this aggregator."""

    def __init__(self, *, nodes: Nodes, port: Port, settings: JobSettings, log: FilteringBoundLogger) -> None:
        self._nodes = nodes
        self._port = port
        self._settings = settings
        self._log = log
        self._reports: dict[str, _Report] = {}

    def on_spec(self, spec: FederatedLearningJob, spec_hash: str, now_s: float, *, ready: bool) -> None:
        """A valid spec of a job whose aggregation worker runs on another node."""
        name, node = spec.metadata.name, spec.spec.aggregation_worker.effective_node() or ""
        current = self._reports.get(name)
        if current is not None and current.spec_hash == spec_hash:
            return
        if self._nodes.problem(node, "aggregator") is None:
            self._reports.pop(name, None)  # an aggregator we know: its job, its status
            return
        report = _Report(spec, spec_hash, node)
        self._reports[name] = report
        if ready:
            self._report(report, now_s)

    def ready(self, now_s: float, retained: Mapping[tuple[Kind, str], bytes]) -> None:
        """Every retained message is in: report the jobs of nodes still unknown (never over a run's status)."""
        for report in list(self._reports.values()):
            if self._nodes.problem(report.node, "aggregator") is None:
                del self._reports[report.name]
                continue
            previous = self._retained(retained.get((Kind.JOB, report.name)))
            if previous is not None and previous.uid is not None:
                self._log.info("job of an unknown aggregation node keeps the status of its run", job=report.name)
                del self._reports[report.name]
            elif previous is not None and previous.spec_hash == report.spec_hash and held_back(previous):
                report.status = previous  # failed before (by us or another aggregator): nothing new to say
            else:
                self._report(report, now_s)

    def drop(self, name: str) -> None:
        """The job is no longer another node's (its spec changed or is invalid): leave its status to others."""
        self._reports.pop(name, None)

    def deleted(self, name: str) -> None:
        """The job's spec was deleted: clear the status this aggregator published for it."""
        report = self._reports.pop(name, None)
        if report is not None and report.status is not None:
            self._port.publish_status(Kind.JOB, name, None)

    def node_seen(self, node: str, now_s: float) -> None:
        """A node's status arrived: an aggregator by that name takes its jobs over; others are reworded."""
        for report in list(self._reports.values()):
            if report.node != node:
                continue
            if self._nodes.problem(node, "aggregator") is None:
                self._log.info("aggregation node appeared; it takes the job over", job=report.name, node=node)
                del self._reports[report.name]
            elif report.status is not None and report.status.phase is not Phase.FAILED:
                self._report(report, now_s)

    def tick(self, now_s: float) -> None:
        for report in list(self._reports.values()):
            if report.due is not None and now_s >= report.due:
                self._fail(report)

    # -- internals -------------------------------------------------------------------------------

    def _why(self, report: _Report) -> str:
        why = self._nodes.problem(report.node, "aggregator") or NEVER_SEEN
        what = "has never been seen" if why == NEVER_SEEN else why
        return f"spec.aggregationWorker.nodeName: aggregation node {report.node} {what}"

    def _report(self, report: _Report, now_s: float) -> None:
        grace = self._settings.node_grace
        message = f"{self._why(report)}: no aggregator runs this job until it connects (fails after {grace:g} s)"
        if report.status is not None and report.status.message == message:
            return
        status = JobStatus(
            name=report.name,
            namespace=report.spec.metadata.namespace,
            phase=Phase.PENDING,
            message=message,
            aggregation_node=report.node,  # the job's, not ours: this aggregator never clears it as an orphan
            spec_hash=report.spec_hash,
        )
        # Normal while the node may still come (an aggregator starting up); the Warning is the failure.
        status.add_event(Event(type="Normal", reason="WaitingForNode", message=message))
        report.status = status
        if report.due is None:
            report.due = now_s + grace
        self._log.warning("job names an aggregation node never seen", job=report.name, node=report.node)
        self._port.publish_status(Kind.JOB, report.name, status)

    def _fail(self, report: _Report) -> None:
        report.due = None
        message = (
            f"{self._why(report)} (no node status from it within {self._settings.node_grace:g} s); "
            "the job starts as soon as an aggregator with that node name connects"
        )
        status = report.status or JobStatus(name=report.name, aggregation_node=report.node, spec_hash=report.spec_hash)
        status.phase = Phase.FAILED
        status.message = message
        status.conditions.append(Condition(type=ConditionType.FAILED, reason="UnknownNode", message=message))
        status.add_event(Event(type="Warning", reason="UnknownNode", message=message))
        report.status = status
        self._log.warning("job failed: its aggregation node was never seen", job=report.name, node=report.node)
        self._port.publish_status(Kind.JOB, report.name, status)

    @staticmethod
    def _retained(payload: bytes | None) -> JobStatus | None:
        if not payload:
            return None
        try:
            return JobStatus.model_validate_json(payload)
        except ValidationError:
            return None

"""The aggregator's Prometheus metrics: what the engine publishes and the broker's `$SYS`, on /metrics.

Fed on the logic thread, read on the HTTP server's: every `observe_*` call is a few dictionary and
counter updates (no I/O, no waiting). Counters and the round-duration histogram are prometheus_client
metrics (thread-safe); everything that describes the current state of a job, a node or the broker is an
immutable snapshot that the logic thread replaces and a collector reads at scrape time. Each service
instance has its own `CollectorRegistry` (tests run several services in one process). A federated job's
name is the label `job_name` (as kube-state-metrics names a Kubernetes Job): `job` is Prometheus' own
target label.

Sources: the job statuses the controller publishes (`MqttPort.publish_status`), the acknowledgements it
sends (`MqttPort.send_ack`), the bytes the service receives and publishes, node statuses, and the
`$SYS` topics of `_broker_sys`. Off unless `serve` is called (`fl-cloud-aggregator --metrics-port`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud_aggregator.service._broker_sys import SYS_METRICS, parse_sys_value
from cloud_aggregator.service._job_view import JobView, RoundTracker, job_view, rejection_reason, round_duration
from schemas import JobStatus, NodeState, NodeStatus, Phase, SchemaError, UpdateAck, WorkerState

__all__ = ["ROUND_BUCKETS", "AggregatorMetrics"]

#: Round durations from a tiny test job (a second) to a slow real round (an hour).
ROUND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# An accepted ack whose reason says the update was taken in now (others: a replay or a late duplicate).
_TAKEN = ("stored", "round-0 model")


class AggregatorMetrics:
    """The metrics of one `fl-cloud-aggregator` (see the module docstring)."""

    def __init__(self, node: str, *, deadline_of: Callable[[str], float | None] | None = None) -> None:
        """`deadline_of(job)`: the job's round deadline in seconds (None: none), read when its status is seen."""
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self._deadline_of = deadline_of or (lambda _job: None)
        reg = self.registry
        self.rounds_closed = Counter("fl_rounds_closed", "Rounds closed by this aggregator", ["job_name"], registry=reg)
        self.round_duration = Histogram(
            "fl_round_duration_seconds",
            "From a round's opening to its close",
            ["job_name"],
            buckets=ROUND_BUCKETS,
            registry=reg,
        )
        self.updates_accepted = Counter(
            "fl_updates_accepted", "Updates (and round-0 models) stored and counted", ["job_name"], registry=reg
        )
        self.updates_duplicate = Counter(
            "fl_updates_duplicate", "Updates acknowledged again (replays, already counted)", ["job_name"], registry=reg
        )
        self.updates_rejected = Counter(
            "fl_updates_rejected", "Transfers refused for good, by reason", ["job_name", "reason"], registry=reg
        )
        self.resume_requests = Counter(
            "fl_update_resume_requests",
            "Acks naming missing chunks of an incomplete update",
            ["job_name"],
            registry=reg,
        )
        self.received_bytes = Counter(
            "fl_mqtt_received_bytes", "Payload bytes received, by topic channel", ["channel"], registry=reg
        )
        self.sent_bytes = Counter(
            "fl_mqtt_sent_bytes", "Payload bytes published, by topic channel", ["channel"], registry=reg
        )
        # Snapshots (replaced whole, never mutated: the scrape thread reads them without a lock).
        self._jobs: dict[str, JobView] = {}
        self._nodes: dict[str, tuple[str, bool]] = {}  # node -> (role, online)
        self._sys: dict[str, float] = {}
        self._trackers: dict[str, RoundTracker] = {}
        self._connected: Callable[[], bool] = lambda: False
        self.registry.register(_StateCollector(self))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- serving -----------------------------------------------------------------------------------

    def serve(self, bind: str, port: int) -> int:
        """Serve /metrics on `bind`:`port` from a daemon thread; returns the port (0: a free one).
        Raises OSError when the address cannot be bound."""
        server, thread = start_http_server(port, addr=bind, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    @property
    def serving(self) -> bool:
        return self._server is not None

    def connected_by(self, probe: Callable[[], bool]) -> None:
        """Where `fl_broker_connected` is read at scrape time (the session's `connected`)."""
        self._connected = probe

    # -- observations (the logic thread) ------------------------------------------------------------

    def observe_job(self, name: str, status: JobStatus | None) -> None:
        """A job status the controller publishes; None: the job is gone (its series go too)."""
        if status is None:
            self._forget_job(name)
            return
        tracker = self._trackers.setdefault(name, RoundTracker())
        for record in tracker.new_records(status):
            self.rounds_closed.labels(name).inc()
            seconds = round_duration(status, record)
            if seconds is not None:
                self.round_duration.labels(name).observe(seconds)
        self._jobs = {**self._jobs, name: job_view(status, self._deadline_of(name))}

    def _forget_job(self, name: str) -> None:
        self._jobs = {k: v for k, v in self._jobs.items() if k != name}
        self._trackers.pop(name, None)
        for metric in (
            self.rounds_closed,
            self.round_duration,
            self.updates_accepted,
            self.updates_duplicate,
            self.updates_rejected,
            self.resume_requests,
        ):
            metric.remove_by_labels({"job_name": name})

    def observe_ack(self, ack: UpdateAck) -> None:
        """An acknowledgement the engine sends: what became of one transfer."""
        if ack.job not in self._trackers:
            return  # not a job this node published a status of: no label for it
        if ack.accepted:
            counter = self.updates_accepted if ack.reason in _TAKEN else self.updates_duplicate
            counter.labels(ack.job).inc()
        elif ack.missing:
            self.resume_requests.labels(ack.job).inc()
        else:
            self.updates_rejected.labels(ack.job, rejection_reason(ack.reason)).inc()

    def observe_received(self, channel: str, size: int) -> None:
        self.received_bytes.labels(channel).inc(size)

    def observe_sent(self, channel: str, size: int) -> None:
        self.sent_bytes.labels(channel).inc(size)

    def observe_node(self, node: str, payload: bytes) -> None:
        """A retained node status (empty: the node was removed)."""
        if not payload:
            self._nodes = {k: v for k, v in self._nodes.items() if k != node}
            return
        try:
            status = NodeStatus.model_validate_json(payload)
        except (SchemaError, ValueError):
            return
        if status.node == node:
            self._nodes = {**self._nodes, node: (status.role, status.state is NodeState.ONLINE)}

    def observe_sys(self, topic: str, payload: bytes) -> None:
        """A `$SYS` message of one of the subscribed topics."""
        value = parse_sys_value(payload)
        if value is not None and topic in _SYS_BY_TOPIC:
            self._sys = {**self._sys, topic: value}

    @staticmethod
    def sys_topics() -> list[str]:
        """The `$SYS` topics to subscribe to."""
        return [m.topic for m in SYS_METRICS]


_SYS_BY_TOPIC = {m.topic: m for m in SYS_METRICS}


class _StateCollector(Collector):
    """The current state (jobs, workers, nodes, broker) as gauges, built from the snapshots at scrape time."""

    def __init__(self, metrics: AggregatorMetrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: the families depend on the state

    def collect(self) -> Iterable[Metric]:
        m = self._m
        jobs, nodes, sys = m._jobs, m._nodes, m._sys  # one consistent reference each
        yield from _job_families(jobs)
        online = GaugeMetricFamily(
            "fl_node_online", "1 if the node's service is online (its retained status)", labels=["node", "role"]
        )
        for node, (role, up) in sorted(nodes.items()):
            online.add_metric([node, role], 1.0 if up else 0.0)
        yield online
        yield GaugeMetricFamily(
            "fl_nodes_online", "Nodes whose service is online", value=sum(up for _, up in nodes.values())
        )
        yield GaugeMetricFamily(
            "fl_broker_connected", "1 while this aggregator is connected to the broker", value=float(m._connected())
        )
        for spec in SYS_METRICS:
            if spec.topic in sys:
                family = CounterMetricFamily if spec.type == "counter" else GaugeMetricFamily
                yield family(spec.name, f"{spec.help} (broker {spec.topic})", value=sys[spec.topic])


def _job_families(jobs: dict[str, JobView]) -> Iterable[Metric]:
    by_phase = GaugeMetricFamily("fl_jobs", "Jobs by phase", labels=["phase"])
    for p in Phase:
        by_phase.add_metric([p.value], float(sum(1 for v in jobs.values() if v.phase is p)))
    yield by_phase
    phase = GaugeMetricFamily("fl_job_phase", "1 for the job's current phase", labels=["job_name", "phase"])
    closed = GaugeMetricFamily("fl_job_rounds_closed", "The newest closed round of the job's run", labels=["job_name"])
    exit_round = GaugeMetricFamily("fl_job_exit_round", "Rounds the job's run aggregates", labels=["job_name"])
    workers = GaugeMetricFamily("fl_job_workers", "The job's workers by state", labels=["job_name", "state"])
    in_progress = GaugeMetricFamily("fl_job_round", "The round in progress (0: none is open)", labels=["job_name"])
    opened = GaugeMetricFamily(
        "fl_job_round_opened_timestamp_seconds", "When the round in progress opened (unix time)", labels=["job_name"]
    )
    deadline = GaugeMetricFamily(
        "fl_job_round_deadline_seconds", "The job's round_deadline parameter", labels=["job_name"]
    )
    accuracy = GaugeMetricFamily(
        "fl_job_eval_accuracy",
        "Federated evaluation accuracy of the newest evaluated global model",
        labels=["job_name"],
    )
    eval_round = GaugeMetricFamily(
        "fl_job_eval_round", "The round whose global model fl_job_eval_accuracy scores", labels=["job_name"]
    )
    round_metric = GaugeMetricFamily(
        "fl_job_round_metric",
        "Round figures (train_*, eval_*), each from the newest round with it",
        labels=["job_name", "name"],
    )
    worker_metric = GaugeMetricFamily(
        "fl_worker_metric", "A training worker's latest local metrics", labels=["job_name", "worker", "name"]
    )
    for job, view in sorted(jobs.items()):
        for p in Phase:
            phase.add_metric([job, p.value], 1.0 if view.phase is p else 0.0)
        closed.add_metric([job], float(view.closed_round))
        if view.exit_round is not None:
            exit_round.add_metric([job], float(view.exit_round))
        for state in WorkerState:
            workers.add_metric([job, state.value], float(view.workers.get(state.value, 0)))
        in_progress.add_metric([job], float(view.round_opened[0]) if view.round_opened is not None else 0.0)
        if view.round_opened is not None:
            opened.add_metric([job], view.round_opened[1])
        if view.round_deadline is not None:
            deadline.add_metric([job], view.round_deadline)
        if view.eval_accuracy is not None:
            eval_round.add_metric([job], float(view.eval_accuracy[0]))
            accuracy.add_metric([job], view.eval_accuracy[1])
        for name, value in view.round_metrics.items():
            round_metric.add_metric([job, name], value)
        for (worker, name), value in sorted(view.worker_metrics.items()):
            worker_metric.add_metric([job, worker, name], value)
    yield from (
        phase,
        closed,
        exit_round,
        workers,
        in_progress,
        opened,
        deadline,
        accuracy,
        eval_round,
        round_metric,
        worker_metric,
    )

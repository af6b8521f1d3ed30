"""`fl-cloud-aggregator`: one MQTT session, one logic thread, the controller and the aggregation scripts.

Threads: paho's network thread and the session's reconciler only put `broker.Inbound` messages on the
service's `runtime.EventLoop`; each script's reader thread puts `runtime.ScriptFrame` /
`runtime.ScriptExited` events there too. ONE thread (`run`) takes them in order, dispatches by
`Topics.parse(topic).channel`, runs the controller's timers, and acknowledges each MQTT message after
handling it. No work happens in callbacks. Two helpers take work off that thread: update chunks are
hashed on two threads as they arrive (`ChunkHasher`: the session's inbox, which queues each chunk with
its digest's `runtime.Pending` in arrival order), and spooled updates are written in groups by the port's
`SpoolWriter`, whose `SpoolDurable` events release the messages held until those updates are durable.

Startup: connect, announce the node online (offline is the last will), subscribe to every spec, status,
plan, global model, worker status, update and node status, then `Session.barrier` so every retained
message is in before any job is evaluated (a job published together with its datasets must not fail
because a dataset's retained message came later). Statuses, plans and global models are only read at
startup (restart rules, clearing what deleted jobs left); those subscriptions are then dropped. Then
every kept spec, status and plan the broker did not deliver is republished (`MqttPort.resync`), and
every later connection is audited the same way (`ReconnectAudit`): the broker may have lost them.

Metrics (`AggregatorMetrics`, served on /metrics only with a `metrics_port`): the port reports what the
engine publishes and acknowledges; the loop reports the bytes it receives, node statuses and the broker's
`$SYS` topics (subscribed at QoS 0, only while serving). The HTTP server runs in its own thread from
before the first connection, so a scrape answers even while the broker cannot be reached.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from broker import BrokerError, Inbound, MqttSettings, RequestServer, Session, manifest_from_payload
from cloud_aggregator._errors import AggregatorError
from cloud_aggregator.engine import Controller, JobSettings
from cloud_aggregator.service._audit import AuditBarrier, ReconnectAudit
from cloud_aggregator.service._inbound import record, route_transfer
from cloud_aggregator.service._metrics import AggregatorMetrics
from cloud_aggregator.service._port import MqttPort
from cloud_aggregator.service._prehash import ChunkHasher, Prehashed
from cloud_aggregator.service._scripts import AggregationScripts
from cloud_aggregator.service._spool_writer import SpoolDurable
from runtime import (
    EventLoop,
    JobFiles,
    Ledger,
    ModelUrlBook,
    Pending,
    ScriptExited,
    ScriptFrame,
    get_logger,
    held_models,
)
from schemas import (
    DEFAULT_CODE_ROOT,
    Channel,
    HeldModel,
    NodeRoot,
    NodeState,
    NodeStatus,
    ParsedTopic,
    SchemaError,
    TopicError,
    Topics,
    WireError,
)

__all__ = ["AggregatorService", "Event"]

POLL_SECONDS = 0.2
BARRIER_TIMEOUT = 30.0
SHUTDOWN_GRACE = 5.0
# Under <root>/state/ (no job name has "_"): the Model urls whose versions this node reports.
MODEL_URLS_FILE = "_model_urls.json"

#: Everything the logic thread handles.
Event = Inbound | Prehashed | ScriptFrame | ScriptExited | AuditBarrier | SpoolDurable

# What the broker is seen to hold of these is compared with the kept copy (`MqttPort.resync`).
_KEPT_CHANNELS = (Channel.SPEC, Channel.STATUS, Channel.PLAN, Channel.GLOBAL_MANIFEST)
# Secure aggregation: what the edges publish, and the state (this node's own: a closed round's is cleared).
_SECAGG_STEP_CHANNELS = (Channel.SECAGG_KEYS, Channel.SECAGG_SHARES, Channel.SECAGG_UNMASK)
_SECAGG_CHANNELS = (*_SECAGG_STEP_CHANNELS, Channel.SECAGG_STATE)
_RUNTIME_CHANNELS = (
    Channel.WORKER_STATUS,
    Channel.UPDATE_MANIFEST,
    Channel.UPDATE_CHUNK,
    Channel.NODE_STATUS,
    *_SECAGG_CHANNELS,
)
# What an edge publishes for a job: the aggregator's ledger of the job records each arrival.
_LEDGER_CHANNELS = (Channel.WORKER_STATUS, Channel.UPDATE_MANIFEST, Channel.UPDATE_CHUNK, *_SECAGG_STEP_CHANNELS)


class AggregatorService:
    """`fl-cloud-aggregator`: the controller for every resource, the aggregator for this node's jobs."""

    def __init__(
        self,
        *,
        node: str,
        root: Path,
        settings: MqttSettings,
        job_settings: JobSettings,
        prefix: str = "fl",
        code_root: str = DEFAULT_CODE_ROOT,
        publish_timeout: float = 120.0,
        script_stop_grace: float = 10.0,
        metrics_port: int | None = None,
        metrics_bind: str = "127.0.0.1",
    ) -> None:
        """`metrics_port`: serve /metrics there (0: a free port, see `metrics_address`); None: no endpoint."""
        self.node = node
        self.root = root.resolve()
        self.settings = settings
        self.topics = Topics(prefix)
        self._job_settings = job_settings
        self._publish_timeout = publish_timeout
        self._log: FilteringBoundLogger = get_logger(component="service")
        self._loop: EventLoop[Event] = EventLoop(
            self._handle,
            tick=self._tick,
            poll=POLL_SECONDS,
            expected=(AggregatorError, SchemaError, BrokerError),
            log=self._log,
        )
        self._hasher = ChunkHasher(self._loop.put)  # the session's inbox: update chunks hashed as they arrive
        self._stopping = threading.Event()
        self._scripts = AggregationScripts(
            root=NodeRoot(self.root, code_root),
            node=node,
            emit=self._loop.put,
            stop_grace=script_stop_grace,
            log=self._log,
        )
        self._session: Session | None = None
        self._requests: RequestServer | None = None
        # What arrived on the edges' topics of this node's jobs, and the global models it published.
        self._ledger = Ledger(self.root / "state", node, self.topics, self._uid_of, self._log)
        self._port: MqttPort | None = None
        self._controller: Controller | None = None
        self._audit: ReconnectAudit | None = None
        # The Model urls this node wrote final models to: their versions go on its node status.
        self._model_urls = ModelUrlBook(self.root / "state" / MODEL_URLS_FILE)
        self.metrics = AggregatorMetrics(node, deadline_of=self._round_deadline)
        self._metrics_at: tuple[str, int] | None = (metrics_bind, metrics_port) if metrics_port is not None else None
        self.metrics_address: tuple[str, int] | None = None  # where /metrics is served, once it is

    # -- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to return (safe from signal handlers and other threads)."""
        self._stopping.set()

    @property
    def controller(self) -> Controller | None:
        return self._controller

    def _round_deadline(self, job: str) -> float | None:
        engine = self._controller.job(job) if self._controller is not None else None
        return engine.facts.round_deadline if engine is not None else None

    def _serve_metrics(self) -> bool:
        if self._metrics_at is None:
            return True
        bind, port = self._metrics_at
        try:
            self.metrics_address = (bind, self.metrics.serve(bind, port))
        except OSError as exc:
            self._log.error("cannot serve metrics", bind=bind, port=port, error=str(exc))
            return False
        self._log.info("serving metrics", url=f"http://{bind}:{self.metrics_address[1]}/metrics")
        return True

    def run(self) -> int:
        """Connect, catch up with the retained state, then handle messages until `stop`. Returns an exit code."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self._serve_metrics():
            return 1
        offline = NodeStatus(node=self.node, role="aggregator", state=NodeState.OFFLINE).to_json()
        session = Session(
            self.settings,
            inbox=self._hasher,
            will=(self.topics.node_status(self.node), offline),
            topics=self.topics,
        )
        self._session = session
        self.metrics.connected_by(lambda: session.connected)
        self._requests = RequestServer(session, self.topics, self.node, self._job_files, self._log)
        session.subscribe(self._requests.filter)
        session.start()
        try:
            if not self._connect(session):
                return 0 if self._stopping.is_set() else 1
            self._catch_up(session)
            if not self._stopping.is_set():
                self._loop.run(self._stopping)
            return 0
        finally:
            self._shutdown(session, offline)

    # -- startup ---------------------------------------------------------------------------------

    def _connect(self, session: Session) -> bool:
        self._log.info("connecting", host=self.settings.host, port=self.settings.port, root=str(self.root))
        while not self._stopping.is_set():
            if session.wait_connected(1.0):
                break
            if session.connect_error is not None:
                self._log.error("the broker refused the connection", error=str(session.connect_error))
                return False
        else:
            return False
        # A chunk must fit in one packet of this broker (its maximum, known once connected).
        chunk_size = max(1024, min(self._job_settings.chunk_size, session.max_payload))
        jobs = replace(self._job_settings, chunk_size=chunk_size)
        self._port = MqttPort(
            session=session,
            topics=self.topics,
            node=self.node,
            root=self.root,
            scripts=self._scripts,
            chunk_size=chunk_size,
            publish_timeout=self._publish_timeout,
            log=self._log,
            model_written=self._model_written,
            metrics=self.metrics,
            ledger=self._ledger,
            spool_durable=lambda: self._loop.put(SpoolDurable()),
        )
        self._controller = Controller(node=self.node, port=self._port, settings=jobs)
        self._audit = ReconnectAudit(
            session=session,
            filters=(self.topics.all_statuses(), self.topics.all_plans(), self.topics.all_global_manifests()),
            emit=self._loop.put,
            barrier_timeout=BARRIER_TIMEOUT,
            log=self._log,
        )
        self._announce()
        return True

    def _announce(self) -> None:
        """Say this node is online (retained): at startup, and after a reconnect (the last will said offline,
        or a restarted broker has no presence at all)."""
        if self._session is None:
            return
        online = NodeStatus(node=self.node, role="aggregator", state=NodeState.ONLINE, models=self._held())
        try:
            self._session.publish(self.topics.node_status(self.node), online.to_json(), retain=True)
        except BrokerError as exc:
            self._log.warning("cannot announce this node online", error=str(exc))

    def _held(self) -> list[HeldModel] | None:
        """The model versions this node holds under the Model urls it wrote final models to (issue 9)."""
        try:
            return held_models(NodeRoot(self.root), self._model_urls.urls)
        except OSError as exc:
            self._log.warning("cannot list the model versions this node holds", error=str(exc))
            return None

    def _model_written(self, url: str) -> None:
        """A final model version was written under `url`: say so on this node's status."""
        try:
            self._model_urls.add(url)
        except OSError as exc:  # the version is on disk; only the listing after a restart misses this url
            self._log.warning("cannot record the Model url this node holds versions of", url=url, error=str(exc))
        self._announce()

    def _catch_up(self, session: Session) -> None:
        startup_only = [self.topics.all_statuses(), self.topics.all_plans(), self.topics.all_globals()]
        for flt in (
            self.topics.all_specs(),
            *startup_only,
            self.topics.all_worker_statuses(),
            self.topics.all_updates(),
            self.topics.all_node_statuses(),
            self.topics.all_secagg(),  # the edges' secure aggregation steps (retained: a restart reads them)
            self.topics.all_site_bridges(),  # whether each site's bridge is up (engine/_sites)
        ):
            session.subscribe(flt)
        if self.metrics.serving:
            for topic in self.metrics.sys_topics():  # QoS 0: nothing is queued for us while we are away
                session.subscribe(topic, qos=0)
        while not self._stopping.is_set():
            try:
                session.barrier(BARRIER_TIMEOUT)
                break
            except (TimeoutError, BrokerError) as exc:
                self._log.warning("waiting for the retained messages", error=str(exc))
        connection = session.connection  # what was delivered on it is what the broker holds
        # Everything retained is queued now: handle it before any job is evaluated. Runtime traffic
        # (updates, worker and node statuses) that came in meanwhile is kept, unacknowledged, until the
        # jobs are known: dropping it would leave edges waiting for an ack timeout to resend.
        deferred: list[Event] = []
        controller = self._ready_controller()
        for event in self._loop.take_pending():
            msg = event.msg if isinstance(event, Prehashed) else event
            if isinstance(msg, Inbound) and self._is_runtime(msg.topic):
                deferred.append(event)
                self._note_presence(controller, msg)
            else:
                self._loop.handle(event)
        for flt in startup_only:
            try:
                session.unsubscribe(flt)
            except BrokerError as exc:
                self._log.warning("cannot drop a startup subscription", filter=flt, error=str(exc))
        self._ready_controller().ready(time.monotonic())
        if self._port is not None and self._audit is not None:
            republished = self._port.resync(connection)
            self._audit.audited = connection
            self._log.info("ready", node=self.node, deferred=len(deferred), republished=republished)
        for event in deferred:
            self._loop.handle(event)

    def _note_presence(self, controller: Controller, msg: Inbound) -> None:
        """A retained node status, noted before `ready()`: a job naming a node is judged "never seen" only
        against every presence the broker kept. (Handled again after `ready()`, for the resumed jobs.)"""
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError:
            return
        if parsed.channel is Channel.NODE_STATUS and parsed.node is not None:
            controller.on_node_status(parsed.node, msg.payload, time.monotonic())

    def _is_runtime(self, topic: str) -> bool:
        try:
            return self.topics.parse(topic).channel in _RUNTIME_CHANNELS
        except TopicError:
            return False

    # -- the logic thread ------------------------------------------------------------------------

    def _ready_controller(self) -> Controller:
        if self._controller is None:  # events are only handled after _connect made it
            raise AggregatorError("the controller is not set up yet")
        return self._controller

    def _tick(self, now_s: float) -> None:
        if self._controller is not None:
            self._controller.tick(now_s)
            if self._controller.is_ready and self._audit is not None and self._audit.due():
                self._audit.start(self._controller)

    def _handle(self, event: Event) -> None:
        controller = self._ready_controller()
        match event:
            case ScriptFrame():
                controller.on_script_frame(event.job, event.run_id, event.frame, time.monotonic())
            case ScriptExited():
                controller.on_script_exit(event.job, event.run_id, event.code, event.tail, time.monotonic())
            case AuditBarrier():
                if self._audit is not None and self._port is not None:
                    self._audit.finish(event, controller, self._port, self._announce)
            case SpoolDurable():
                if self._port is not None:
                    self._port.release()
            case Inbound() | Prehashed():
                msg = event.msg if isinstance(event, Prehashed) else event
                try:
                    self._dispatch(controller, msg, event.digest if isinstance(event, Prehashed) else None)
                finally:
                    if self._session is not None:
                        self._session.ack(msg)

    def _dispatch(self, controller: Controller, msg: Inbound, digest: Pending[str] | None = None) -> None:
        if msg.topic.startswith("$SYS/"):
            self.metrics.observe_sys(msg.topic, msg.payload)
            return
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError as exc:
            self._log.warning("message on a topic outside the layout ignored", topic=msg.topic, error=exc.reason)
            return
        channel = parsed.channel
        self.metrics.observe_received(channel.value, len(msg.payload))
        if channel is Channel.NODE_STATUS and parsed.node is not None:
            self.metrics.observe_node(parsed.node, msg.payload)
        if channel is Channel.NODE_REQUEST:
            if self._requests is not None:
                self._requests.handle(msg)
            return
        if channel in _KEPT_CHANNELS and self._port is not None:
            self._port.saw(msg.topic, msg.payload, msg.connection)
        if channel is Channel.SPEC and parsed.kind is not None and parsed.name is not None:
            controller.on_spec(parsed.kind, parsed.name, msg.topic, msg.payload, time.monotonic(), retained=msg.retain)
        elif channel is Channel.STATUS and parsed.kind is not None and parsed.name is not None:
            controller.on_retained_status(parsed.kind, parsed.name, msg.payload)
        elif channel is Channel.PLAN:
            controller.on_retained_plan(parsed.job, msg.payload)
        elif channel is Channel.GLOBAL_MANIFEST:
            self._seen_global(controller, parsed, msg)
        elif channel is Channel.SITE_BRIDGE and parsed.name is not None:
            controller.on_site_bridge(parsed.name, msg.payload, time.monotonic(), retained=msg.retain)
        elif controller.is_ready:  # runtime traffic before the catch-up belongs to earlier runs
            self._runtime(controller, parsed, msg, digest)

    def _runtime(
        self, controller: Controller, parsed: ParsedTopic, msg: Inbound, digest: Pending[str] | None = None
    ) -> None:
        channel = parsed.channel
        if channel in (Channel.UPDATE_MANIFEST, Channel.UPDATE_CHUNK):
            # In the ledger too, hashed once for both (`digest`: hashed as it arrived, `ChunkHasher`).
            route_transfer(self._ledger, controller, parsed, msg, digest=digest.result() if digest else None)
            return
        if channel in _LEDGER_CHANNELS:
            record(self._ledger, controller, parsed, msg)
        if channel is Channel.WORKER_STATUS and parsed.node is not None:
            controller.on_worker_status(parsed.job, parsed.node, msg.payload, retained=msg.retain)
        elif channel is Channel.NODE_STATUS and parsed.node is not None:
            controller.on_node_status(parsed.node, msg.payload, time.monotonic())
        elif channel in _SECAGG_CHANNELS:
            controller.on_secagg(parsed, msg.topic, msg.payload, time.monotonic())

    def _uid_of(self, job: str) -> str | None:
        return self._controller.run_of(job) if self._controller is not None else None

    def _job_files(self, name: str) -> JobFiles | None:
        """The aggregation script's log and the ledger of a job this node aggregates (`RequestServer`)."""
        if self._controller is None or self._controller.run_of(name) is None:
            return None  # not a job this node aggregates (or it never ran): its ledger is not here
        log = self.root / "logs" / name / "aggregation.log"
        ledger = self._ledger.path(name)
        return JobFiles(log, ledger, f"/logs/{name}/aggregation.log", f"/state/{name}/{ledger.name}")

    def _seen_global(self, controller: Controller, parsed: ParsedTopic, msg: Inbound) -> None:
        """A retained global manifest at startup: remembered so the job's globals can be cleared later."""
        if controller.is_ready or not msg.payload or self._port is None or parsed.round is None:
            return
        try:
            manifest = manifest_from_payload(msg.payload)
        except WireError:
            return
        if manifest.sender == self.node:
            self._port.retained_globals.setdefault(parsed.job, {})[parsed.round] = manifest.chunks

    # -- shutdown --------------------------------------------------------------------------------

    def _shutdown(self, session: Session, offline: bytes) -> None:
        self._log.info("stopping")
        self._hasher.close()
        if self._port is not None:
            self._port.close(SHUTDOWN_GRACE)  # updates being stored, and the acks that wait for them
        self._scripts.stop_all(SHUTDOWN_GRACE)
        session.stop(timeout=5.0, final=(self.topics.node_status(self.node), offline))
        self.metrics.close()
        self._ledger.close()
        self._log.info("stopped")

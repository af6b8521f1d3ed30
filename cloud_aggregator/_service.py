"""The service: one MQTT session, one logic thread, the controller and the aggregation scripts.

Threads: paho's network thread and the session's reconciler only put `Inbound` messages into one queue;
each script's reader thread puts `ScriptFrame`/`ScriptExited` events into the same queue. ONE thread
(`run`) takes items from it, dispatches by `Topics.parse(topic).channel`, runs the timers and acks each
MQTT message after handling it. No work happens in callbacks.

Startup: connect, announce the node online (offline is the last will), subscribe to every spec, status,
plan, global model, worker status, update and node status, then `Session.barrier` so every retained
message is in before any job is evaluated (a job published together with its datasets must not fail
because a dataset's retained message came later). Statuses, plans and global models are only read at
startup (restart rules, clearing what deleted jobs left); those subscriptions are then dropped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from structlog.typing import FilteringBoundLogger

from broker import (
    BlobSender,
    BrokerError,
    Inbound,
    MqttSettings,
    Session,
    manifest_from_payload,
)
from cloud_aggregator._checkpoint import StateStore
from cloud_aggregator._errors import AggregatorError, PublishFailedError
from cloud_aggregator._scripts import ScriptExited, ScriptFrame, ScriptSupervisor
from cloud_aggregator._storage import write_model
from cloud_aggregator.engine import Checkpoint, Controller, ScriptRequest, ScriptSignal, SpooledUpdate
from schemas import (
    Channel,
    JobPlan,
    JobStatus,
    Kind,
    ModelRef,
    NodeState,
    NodeStatus,
    ParsedTopic,
    ResourceStatus,
    SchemaError,
    TopicError,
    Topics,
    UpdateAck,
    WireError,
)

__all__ = ["AggregatorService", "MqttPort"]

POLL_SECONDS = 0.2
BARRIER_TIMEOUT = 30.0


class MqttPort:
    """The `Port` over a broker session, the script supervisor and the node root."""

    def __init__(
        self,
        *,
        session: Session,
        topics: Topics,
        node: str,
        root: Path,
        scripts: ScriptSupervisor,
        chunk_size: int,
        publish_timeout: float,
        log: FilteringBoundLogger,
    ) -> None:
        self._session = session
        self._topics = topics
        self._node = node
        self._root = root
        self._scripts = scripts
        self._sender = BlobSender(session, chunk_size=chunk_size)
        self._timeout = publish_timeout
        self._log = log
        self._state = StateStore(root)
        # Retained global models this node knows of: job -> round -> chunk count.
        self.retained_globals: dict[str, dict[int, int]] = {}

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        try:
            self._session.publish(topic, payload, qos=1, retain=retain)
        except BrokerError as exc:
            raise PublishFailedError(str(exc)) from exc

    def publish_status(self, kind: Kind, name: str, status: JobStatus | ResourceStatus | None) -> None:
        self._publish(self._topics.status(kind, name), status.to_json() if status else b"", retain=True)

    def publish_plan(self, job: str, plan: JobPlan | None) -> None:
        self._publish(self._topics.plan(job), plan.to_json() if plan else b"", retain=True)

    def restore_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        self._publish(self._topics.spec(kind, name), payload, retain=True)

    def publish_global(self, job: str, round_: int, blob: bytes, *, uid: str, num_samples: int, final: bool) -> None:
        try:
            manifest = self._sender.send(
                self._topics.global_manifest(job, round_),
                self._chunk_topics(job, round_),
                blob,
                kind="global",
                job=job,
                uid=uid,
                round_=round_,
                sender_name=self._node,
                num_samples=num_samples,
                final=final,
                retain=True,
                timeout=self._timeout,
            )
        except (BrokerError, TimeoutError) as exc:
            raise PublishFailedError(str(exc)) from exc
        self.retained_globals.setdefault(job, {})[round_] = manifest.chunks

    def clear_globals(self, job: str, keep: int | None = None) -> None:
        known = self.retained_globals.get(job, {})
        for round_, chunks in sorted(known.items()):
            if round_ == keep:
                continue
            try:
                self._sender.clear(
                    self._topics.global_manifest(job, round_),
                    self._chunk_topics(job, round_),
                    chunks,
                    timeout=self._timeout,
                )
            except (BrokerError, TimeoutError) as exc:
                raise PublishFailedError(f"cannot clear the global model of round {round_}: {exc}") from exc
            del known[round_]
        if not known:
            self.retained_globals.pop(job, None)

    def _chunk_topics(self, job: str, round_: int) -> Callable[[int], str]:
        def chunk_topic(index: int) -> str:
            return self._topics.global_chunk(job, round_, index)

        return chunk_topic

    def send_ack(self, ack: UpdateAck) -> None:
        self._publish(self._topics.ack(ack.job, ack.round, ack.node), ack.to_json(), retain=False)

    def start_script(self, request: ScriptRequest) -> None:
        self._scripts.start(request)

    def signal_script(self, job: str, uid: str, signal: ScriptSignal) -> None:
        self._scripts.signal(job, uid, signal)

    def write_model(
        self,
        job: str,
        model: ModelRef,
        arrays: Sequence[npt.NDArray[np.generic]],
        names: Sequence[str],
        meta: Mapping[str, Any],
    ) -> str:
        return str(write_model(self._root, url=model.url, model_name=model.name, arrays=arrays, names=names, meta=meta))

    def store_update(self, job: str, round_: int, node: str, transfer: str, blob: bytes) -> None:
        self._state.store_update(job, round_, node, transfer, blob)

    def spooled_updates(self, job: str, round_: int) -> list[SpooledUpdate]:
        return self._state.spooled_updates(job, round_)

    def drop_spool(self, job: str, upto: int) -> None:
        self._state.drop_spool(job, upto)

    def save_checkpoint(self, checkpoint: Checkpoint, global_blob: bytes) -> None:
        self._state.save_checkpoint(checkpoint, global_blob)

    def load_checkpoint(self, job: str) -> tuple[Checkpoint, bytes] | None:
        return self._state.load_checkpoint(job)

    def clear_state(self, job: str) -> None:
        self._state.clear_state(job)


class AggregatorService:
    """`fl-cloud-aggregator`: the controller for every resource, the aggregator for this node's jobs."""

    def __init__(
        self,
        *,
        node: str,
        root: Path,
        settings: MqttSettings,
        prefix: str = "fl",
        reference_grace: float = 5.0,
        config_timeout: float = 120.0,
        chunk_size: int = 512 * 1024,
        publish_timeout: float = 120.0,
        script_stop_grace: float = 10.0,
        resume_after: float = 3.0,
    ) -> None:
        self.node = node
        self.root = root.resolve()
        self.settings = settings
        self.topics = Topics(prefix)
        self._grace = reference_grace
        self._config_timeout = config_timeout
        self._chunk_size = chunk_size
        self._publish_timeout = publish_timeout
        self._resume_after = resume_after
        self._log: FilteringBoundLogger = structlog.get_logger("cloud_aggregator").bind(component="service")
        # One queue for everything the logic thread handles: Inbound messages and script events.
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stopping = threading.Event()
        self._scripts = ScriptSupervisor(
            root=self.root, node=node, emit=self._queue.put, clock=time.monotonic, stop_grace=script_stop_grace
        )
        self._session: Session | None = None
        self._port: MqttPort | None = None
        self._controller: Controller | None = None

    # -- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to return (safe from signal handlers and other threads)."""
        self._stopping.set()

    @property
    def controller(self) -> Controller | None:
        return self._controller

    def run(self) -> int:
        """Connect, catch up with the retained state, then handle messages until `stop`. Returns an exit code."""
        self.root.mkdir(parents=True, exist_ok=True)
        offline = NodeStatus(node=self.node, role="aggregator", state=NodeState.OFFLINE).to_json()
        session = Session(
            self.settings,
            inbox=self._queue,
            will=(self.topics.node_status(self.node), offline),
            topics=self.topics,
        )
        self._session = session
        session.start()
        try:
            if not self._connect(session):
                return 0 if self._stopping.is_set() else 1
            self._catch_up(session)
            if self._stopping.is_set():
                return 0
            self._loop()
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
        chunk_size = max(1024, min(self._chunk_size, session.max_payload))
        self._port = MqttPort(
            session=session,
            topics=self.topics,
            node=self.node,
            root=self.root,
            scripts=self._scripts,
            chunk_size=chunk_size,
            publish_timeout=self._publish_timeout,
            log=self._log,
        )
        self._controller = Controller(
            node=self.node,
            port=self._port,
            chunk_size=chunk_size,
            reference_grace=self._grace,
            config_timeout=self._config_timeout,
            resume_after=self._resume_after,
        )
        online = NodeStatus(node=self.node, role="aggregator", state=NodeState.ONLINE)
        session.publish(self.topics.node_status(self.node), online.to_json(), retain=True)
        return True

    def _catch_up(self, session: Session) -> None:
        startup_only = [self.topics.all_statuses(), self.topics.all_plans(), self.topics.all_globals()]
        for flt in (
            self.topics.all_specs(),
            *startup_only,
            self.topics.all_worker_statuses(),
            self.topics.all_updates(),
            self.topics.all_node_statuses(),
        ):
            session.subscribe(flt)
        while not self._stopping.is_set():
            try:
                session.barrier(BARRIER_TIMEOUT)
                break
            except (TimeoutError, BrokerError) as exc:
                self._log.warning("waiting for the retained messages", error=str(exc))
        # Everything retained is queued now: handle it before any job is evaluated. Runtime traffic
        # (updates, worker and node statuses) that came in meanwhile is kept, unacknowledged, until the
        # jobs are known: dropping it would leave edges waiting for an ack timeout to resend.
        deferred: list[Inbound] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Inbound) and self._is_runtime(item.topic):
                deferred.append(item)
            else:
                self._handle(item)
        for flt in startup_only:
            try:
                session.unsubscribe(flt)
            except BrokerError as exc:
                self._log.warning("cannot drop a startup subscription", filter=flt, error=str(exc))
        assert self._controller is not None
        self._controller.ready(time.monotonic())
        self._log.info("ready", node=self.node, deferred=len(deferred))
        for item in deferred:
            self._handle(item)

    def _is_runtime(self, topic: str) -> bool:
        try:
            channel = self.topics.parse(topic).channel
        except TopicError:
            return False
        return channel in (Channel.WORKER_STATUS, Channel.UPDATE_MANIFEST, Channel.UPDATE_CHUNK, Channel.NODE_STATUS)

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        controller = self._controller
        assert controller is not None
        next_tick = 0.0
        while not self._stopping.is_set():
            try:
                item = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                item = None
            if item is not None:
                self._handle(item)
            now_s = time.monotonic()
            if now_s >= next_tick:
                next_tick = now_s + POLL_SECONDS
                self._guarded(controller.tick, now_s)
                self._scripts.tick(now_s)

    def _guarded(self, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except (AggregatorError, SchemaError, BrokerError) as exc:
            self._log.error("handling failed", error=str(exc), error_type=type(exc).__name__)
        except Exception as exc:  # one bad message must not take the aggregator down
            self._log.exception("handling failed (bug)", error=str(exc))

    def _handle(self, item: object) -> None:
        controller = self._controller
        assert controller is not None
        if isinstance(item, ScriptFrame):
            self._guarded(controller.on_script_frame, item.job, item.uid, item.frame, time.monotonic())
        elif isinstance(item, ScriptExited):
            self._guarded(controller.on_script_exit, item.job, item.uid, item.code, item.tail, time.monotonic())
        elif isinstance(item, Inbound):
            try:
                self._guarded(self._dispatch, item)
            finally:
                if self._session is not None:
                    self._session.ack(item)

    def _dispatch(self, msg: Inbound) -> None:
        controller = self._controller
        assert controller is not None
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError as exc:
            self._log.warning("message on a topic outside the layout ignored", topic=msg.topic, error=exc.reason)
            return
        channel = parsed.channel
        if channel is Channel.SPEC and parsed.kind is not None and parsed.name is not None:
            controller.on_spec(parsed.kind, parsed.name, msg.topic, msg.payload, time.monotonic())
        elif channel is Channel.STATUS and parsed.kind is not None and parsed.name is not None:
            controller.on_retained_status(parsed.kind, parsed.name, msg.payload)
        elif channel is Channel.PLAN:
            controller.on_retained_plan(parsed.job, msg.payload)
        elif channel is Channel.GLOBAL_MANIFEST:
            self._seen_global(parsed, msg)
        elif not controller.is_ready:
            return  # runtime traffic before the catch-up belongs to earlier runs
        elif channel is Channel.WORKER_STATUS and parsed.node is not None:
            controller.on_worker_status(parsed.job, parsed.node, msg.payload, retained=msg.retain)
        elif channel in (Channel.UPDATE_MANIFEST, Channel.UPDATE_CHUNK):
            self._transfer(parsed, msg)
        elif channel is Channel.NODE_STATUS and parsed.node is not None:
            controller.on_node_status(parsed.node, msg.payload)

    def _seen_global(self, parsed: ParsedTopic, msg: Inbound) -> None:
        """A retained global manifest at startup: remembered so the job's globals can be cleared later."""
        controller = self._controller
        if controller is None or controller.is_ready or not msg.payload or self._port is None or parsed.round is None:
            return
        try:
            manifest = manifest_from_payload(msg.payload)
        except WireError:
            return
        if manifest.sender == self.node:
            self._port.retained_globals.setdefault(parsed.job, {})[parsed.round] = manifest.chunks

    def _transfer(self, parsed: ParsedTopic, msg: Inbound) -> None:
        """An update manifest or chunk: the job engine assembles, stores and acknowledges (before our MQTT ack)."""
        controller = self._controller
        assert controller is not None and parsed.round is not None
        now_s = time.monotonic()
        if parsed.channel is Channel.UPDATE_MANIFEST:
            if not msg.payload:
                return
            try:
                manifest = manifest_from_payload(msg.payload)
            except WireError as exc:
                controller.on_malformed_manifest(parsed, exc.reason)
                return
            controller.on_update_manifest(parsed, manifest, now_s)
        else:
            controller.on_update_chunk(parsed, msg.payload, now_s)

    # -- shutdown --------------------------------------------------------------------------------

    def _shutdown(self, session: Session, offline: bytes) -> None:
        self._log.info("stopping")
        self._scripts.stop_all(timeout=5.0)
        session.stop(timeout=5.0, final=(self.topics.node_status(self.node), offline))
        self._log.info("stopped")

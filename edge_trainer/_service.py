"""The edge node service: one MQTT session, one logic thread, one child process per job.

Threads:

- paho's network thread puts every received message (`broker.Inbound`) on the event queue;
- each job's worker threads (`WorkerProcess`) put the script's frames and its exit there too;
- the uploader thread sends weights blobs as chunked transfers (it waits for the broker's acks, which
  may take long on a slow link) and puts an `UploadDone` there when a transfer is through;
- the logic thread (`EdgeService.run`, the caller's thread) takes one event at a time and hands it to
  the job's `EdgeJob`; an MQTT message is acknowledged only after it was handled.

Subscriptions: every plan (a plan is small and retained; the ones naming this node matter), this
node's acks, this node's own presence topic (to put ``online`` back after the broker published the
last will), and the global models of each job this node runs.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from broker import (
    Assembler,
    BlobSender,
    BrokerError,
    Inbound,
    MqttSettings,
    Session,
    TransferError,
    get_logger,
    manifest_from_payload,
    transfer_key,
)
from edge_trainer._job import EdgeJob, UploadDone, UploadRequest
from edge_trainer._launch import LaunchSpec, installed_tensorflow_version
from edge_trainer._runner import WorkerExitEvent, WorkerFrameEvent, WorkerProcess
from schemas import (
    Channel,
    JobPlan,
    NodeRoot,
    NodeState,
    NodeStatus,
    ParsedTopic,
    TopicError,
    Topics,
    WireError,
    WorkerStatus,
)

__all__ = ["EdgeService"]

_POLL = 0.5  # how often the logic thread looks at the stop flag and the connection when idle
_UPLOAD_ATTEMPTS = 3


def _version() -> str | None:
    try:
        return metadata.version("mqtt-fl-edge")
    except metadata.PackageNotFoundError:
        return None


class EdgeService:
    """``fl-edge-trainer``: runs this node's part of every job whose plan names it."""

    def __init__(
        self,
        node: str,
        root: Path | str,
        settings: MqttSettings,
        *,
        topics: Topics | None = None,
        stop_grace: float = 10.0,
        upload_timeout: float = 120.0,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.node = node
        Path(root).mkdir(parents=True, exist_ok=True)
        self.root = NodeRoot(root)
        self.topics = topics or Topics()
        self._stop_grace = stop_grace
        self._upload_timeout = upload_timeout
        self._log = (log or get_logger()).bind(component="edge")
        self._events: queue.Queue[Any] = queue.Queue()
        self._session = Session(
            settings,
            inbox=cast("queue.Queue[Inbound]", self._events),
            will=(self.topics.node_status(node), self._presence(NodeState.OFFLINE)),
            log=self._log,
            topics=self.topics,
        )
        self._assembler = Assembler(log=self._log)
        self._jobs: dict[str, EdgeJob] = {}
        self._transfer_keys: dict[str, set[str]] = {}
        self._workers: dict[str, WorkerProcess] = {}
        self._uploads: queue.SimpleQueue[UploadRequest | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._tf_version = installed_tensorflow_version()

    # -- lifecycle ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set, then stop the scripts, publish offline and disconnect."""
        self._log.info("edge trainer starting", root=str(self.root.path), tensorflow=self._tf_version)
        threading.Thread(target=self._upload_loop, name="uploader", daemon=True).start()
        self._session.subscribe(self.topics.all_plans())
        self._session.subscribe(self.topics.acks_for(self.node))
        self._session.subscribe(self.topics.node_status(self.node))
        self._session.start()
        online = False
        try:
            while not stop.is_set():
                if self._session.connected != online:
                    online = self._session.connected
                    if online:
                        self._announce()
                try:
                    event = self._events.get(timeout=_POLL)
                except queue.Empty:
                    continue
                self.handle(event)
        finally:
            self._shutdown()

    def handle(self, event: object) -> None:
        """Handle one event of the queue (an MQTT message, a worker frame or exit, an upload result)."""
        try:
            if isinstance(event, Inbound):
                self._on_message(event)
            elif isinstance(event, WorkerFrameEvent):
                job = self._job_of(event.job, event.run_id)
                if job is not None:
                    job.on_frame(event.frame, event.body)
                    self._after(job)
            elif isinstance(event, WorkerExitEvent):
                self._workers.pop(event.run_id, None)
                job = self._job_of(event.job, event.run_id)
                if job is not None:
                    job.on_exit(event.returncode)
                    self._after(job)
            elif isinstance(event, UploadDone):
                job = self._job_of(event.job, event.run_id)
                if job is not None:
                    job.on_uploaded(event)
                    self._after(job)
        except Exception as exc:  # one bad event must not take the node down
            self._log.exception("event handling failed", kind=type(event).__name__, error=str(exc))
        finally:
            if isinstance(event, Inbound):
                self._session.ack(event)

    def _shutdown(self) -> None:
        self._log.info("edge trainer stopping", jobs=len(self._jobs))
        self._closing.set()
        for job in self._jobs.values():
            job.shutdown()
        deadline = time.monotonic() + self._stop_grace + 6.0
        for worker in list(self._workers.values()):
            if not worker.wait(max(0.0, deadline - time.monotonic())):
                self._log.error("training script still running at shutdown", job=worker.spec.job, pid=worker.pid)
        self._uploads.put(None)
        self._session.stop(final=(self.topics.node_status(self.node), self._presence(NodeState.OFFLINE)))
        self._log.info("edge trainer stopped")

    # -- MQTT messages -----------------------------------------------------------------------------

    def _on_message(self, msg: Inbound) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError:
            self._log.debug("message on an unknown topic ignored", topic=msg.topic)
            return
        if parsed.channel is Channel.PLAN:
            self._on_plan(parsed.job, msg.payload)
        elif parsed.channel in (Channel.GLOBAL_MANIFEST, Channel.GLOBAL_CHUNK):
            self._on_global_part(parsed, msg)
        elif parsed.channel is Channel.NODE_STATUS and parsed.node == self.node:
            self._on_own_presence(msg.payload)
        # Channel.ACK: the aggregator's receipts are used by the outbox (next issue).

    def _on_plan(self, name: str, payload: bytes) -> None:
        current = self._jobs.get(name)
        if not payload:
            if current is not None:
                self._log.info("job deleted", job=name)
                self._retire(current, clear_status=True)
            return
        try:
            plan = JobPlan.model_validate_json(payload)
        except ValidationError as exc:
            self._log.error("plan ignored: not a valid JobPlan", job=name, error=str(exc.errors()[:3]))
            return
        if plan.job != name:
            self._log.error("plan ignored: its job name does not match its topic", job=name, plan_job=plan.job)
            return
        mine = plan.worker(self.node) is not None
        if current is not None:
            if current.uid == plan.uid and mine:
                return  # the same plan again (retained, redelivered)
            self._log.info("job replaced or no longer runs here", job=name, old_uid=current.uid, new_uid=plan.uid)
            self._retire(current, clear_status=not mine)
        if not mine:
            return
        job = EdgeJob(
            plan,
            node=self.node,
            root=self.root,
            ports=self,
            launcher=self._launch,
            tf_version=lambda: self._tf_version,
            stop_grace=self._stop_grace,
            log=self._log,
        )
        self._jobs[name] = job
        self._log.info("job planned on this node", job=name, uid=plan.uid, exit_round=plan.exit_round)
        if job.start():
            self._session.subscribe(self.topics.job_globals(name))

    def _on_global_part(self, parsed: ParsedTopic, msg: Inbound) -> None:
        job = self._jobs.get(parsed.job)
        if job is None or not job.active or not msg.payload:
            return
        key = transfer_key(msg.topic)
        if parsed.round is not None and parsed.round <= job.newest_global:
            self._assembler.discard(key)  # not newer than what the job holds: do not buffer it
            return
        try:
            if parsed.channel is Channel.GLOBAL_MANIFEST:
                manifest = manifest_from_payload(msg.payload)
                if manifest.round != parsed.round:
                    self._log.warning("global manifest ignored: its round does not match its topic", topic=msg.topic)
                    return
                done = self._assembler.add_manifest(key, manifest)
            else:
                assert parsed.chunk is not None  # a chunk topic always has its index
                done = self._assembler.add_chunk(key, parsed.chunk, msg.payload)
        except (TransferError, WireError) as exc:
            self._log.warning("global model transfer dropped", topic=msg.topic, error=str(exc))
            self._assembler.discard(key)
            return
        self._transfer_keys.setdefault(job.name, set()).add(key)
        if done is not None:
            self._transfer_keys[job.name].discard(key)
            job.on_global(done.manifest, done.blob)
            self._after(job)

    def _on_own_presence(self, payload: bytes) -> None:
        # The broker published our last will while we were cut off (or a previous run's status is
        # retained): we are here, so say so again.
        try:
            status = NodeStatus.model_validate_json(payload) if payload else None
        except ValidationError:
            status = None
        offline = status is None or status.state is not NodeState.ONLINE
        if offline and self._session.connected and not self._closing.is_set():
            self._announce()

    # -- jobs --------------------------------------------------------------------------------------

    def _job_of(self, name: str, run_id: str) -> EdgeJob | None:
        job = self._jobs.get(name)
        return job if job is not None and job.run_id == run_id else None

    def _after(self, job: EdgeJob) -> None:
        """Once a job is finished, stop receiving its global models."""
        if job.finished:
            self._forget_transfers(job.name)
            self._session.unsubscribe(self.topics.job_globals(job.name))

    def _retire(self, job: EdgeJob, *, clear_status: bool) -> None:
        job.delete()
        self._jobs.pop(job.name, None)
        self._forget_transfers(job.name)
        self._session.unsubscribe(self.topics.job_globals(job.name))
        if clear_status:
            self._publish(self.topics.worker_status(job.name, self.node), b"", retain=True)

    def _forget_transfers(self, name: str) -> None:
        for key in self._transfer_keys.pop(name, set()):
            self._assembler.discard(key)

    def _launch(self, spec: LaunchSpec, run_id: str) -> WorkerProcess:
        worker = WorkerProcess.start(spec, run_id, self._events.put, log=self._log)
        self._workers[run_id] = worker
        return worker

    # -- JobPorts ----------------------------------------------------------------------------------

    def publish_status(self, status: WorkerStatus) -> None:
        self._log.info(
            "worker status", job=status.job, state=status.state.value, round=status.round, message=status.message[:300]
        )
        self._publish(self.topics.worker_status(status.job, status.node), status.to_json(), retain=True)

    def upload(self, request: UploadRequest) -> None:
        self._uploads.put(request)

    def _upload_loop(self) -> None:
        while True:
            request = self._uploads.get()
            if request is None:
                return
            self._events.put(self._upload_one(request))

    def _upload_one(self, req: UploadRequest) -> UploadDone:
        sender = BlobSender(self._session, chunk_size=req.chunk_size)
        error = "not attempted"
        for attempt in range(1, _UPLOAD_ATTEMPTS + 1):
            if self._closing.is_set():
                error = "the node service is stopping"
                break
            transfer = uuid.uuid4().hex
            try:
                manifest = sender.send(
                    self.topics.update_manifest(req.job, req.round, self.node, transfer),
                    functools.partial(self.topics.update_chunk, req.job, req.round, self.node, transfer),
                    req.blob,
                    kind=req.kind,
                    job=req.job,
                    uid=req.uid,
                    round_=req.round,
                    sender_name=self.node,
                    num_samples=req.num_samples,
                    timeout=self._upload_timeout,
                    transfer=transfer,
                )
            except BrokerError as exc:
                error = str(exc)
                self._log.warning("upload failed", job=req.job, round=req.round, attempt=attempt, error=error)
                continue
            self._log.info(
                "weights uploaded",
                job=req.job,
                round=req.round,
                kind=req.kind,
                transfer=transfer,
                bytes=manifest.total_bytes,
            )
            return UploadDone(req.job, req.run_id, req.kind, req.round)
        return UploadDone(req.job, req.run_id, req.kind, req.round, error=f"{error} (after {attempt} attempts)")

    # -- publishing --------------------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        try:
            self._session.publish(topic, payload, retain=retain)
        except BrokerError as exc:
            self._log.error("publish failed", topic=topic, error=str(exc))

    def _announce(self) -> None:
        self._publish(self.topics.node_status(self.node), self._presence(NodeState.ONLINE), retain=True)

    def _presence(self, state: NodeState) -> bytes:
        return NodeStatus(node=self.node, role="edge", state=state, version=_version()).to_json()

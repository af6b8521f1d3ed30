"""The edge node service: one MQTT session, one logic thread, one child process per job.

Threads:

- paho's network thread puts every received message (`broker.Inbound`) on the event queue;
- each job's worker threads (`WorkerProcess`) put the script's frames and its exit there too;
- the uploader thread stores each update in the outbox (`_outbox.Outbox`: on disk, fsynced) and then
  publishes it as a chunked transfer (it waits for the broker's acks, which may take long on a slow
  link); it also republishes chunks and manifests of stored entries. It reports `OutboxWritten`,
  `UploadDone` and `ResendDone` on the event queue;
- the logic thread (`EdgeService.run`, the caller's thread) takes one event at a time and hands it to
  the job's `EdgeJob`; an MQTT message is acknowledged only after it was handled. It also owns the
  outbox bookkeeping (`_outbox.Deliveries`) and its timers: an entry is deleted when the aggregator's
  `UpdateAck` accepts it or refuses it for good; the chunks it names missing are republished (same
  transfer), and an entry without an ack within ``ack_timeout`` gets its manifest republished.

Restarts: when a plan arrives, the job's outbox entries of the same run (uid) are loaded and their
manifests republished (the aggregator answers with an ack or with what it misses); entries of another
run are deleted. An accepted ack is recorded in the job's delivery record (`Outbox.mark_delivered`)
before its entry is deleted, so a restarted job knows the newest round it delivered even when its
outbox is empty. A job whose retained worker status says Completed for the same uid, and whose saved
model (its model.json digest) is on disk, is not run again.

Subscriptions, in this order: this node's worker statuses (so a retained Completed is known before the
plan it belongs to), every plan (a plan is small and retained; the ones naming this node matter), this
node's acks, this node's own presence topic (to put ``online`` back after the broker published the
last will), and the global models of each job this node runs.
"""

from __future__ import annotations

import functools
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    PublishError,
    Session,
    TransferError,
    manifest_from_payload,
    new_transfer_id,
    transfer_key,
)
from edge_trainer._job import EdgeJob, UploadDone, UploadRequest
from edge_trainer._launch import LaunchSpec, installed_tensorflow_version
from edge_trainer._model_io import METADATA_FILE
from edge_trainer._outbox import AckOutcome, Deliveries, Delivery, Outbox, OutboxEntry, OutboxError
from edge_trainer._runner import WorkerExitEvent, WorkerFrameEvent, WorkerProcess
from runtime import get_logger
from schemas import (
    DEFAULT_CODE_ROOT,
    Channel,
    JobPlan,
    NodeRoot,
    NodeState,
    NodeStatus,
    ParsedTopic,
    TopicError,
    Topics,
    TransferOrigin,
    UpdateAck,
    WireError,
    WorkerState,
    WorkerStatus,
)

__all__ = ["EdgeService"]

_POLL = 0.5  # how often the logic thread looks at the stop flag and the connection when idle
_WINDOW = 16  # unacknowledged chunks in flight per transfer


@dataclass(frozen=True)
class OutboxWritten:
    """The uploader stored an update in the outbox and is about to publish it."""

    entry: OutboxEntry
    run_id: str


@dataclass(frozen=True)
class ResendDone:
    """A republish of an outbox entry ended; `complete`: the broker acknowledged all of it."""

    job: str
    transfer: str
    complete: bool
    error: str | None = None


@dataclass(frozen=True)
class _Resend:
    """Uploader work: publish chunks `indices` of a stored entry (None: all; empty: none), then its manifest."""

    entry: OutboxEntry
    indices: list[int] | None


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
        ack_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        log: FilteringBoundLogger | None = None,
        code_root: str = DEFAULT_CODE_ROOT,
    ) -> None:
        self.node = node
        Path(root).mkdir(parents=True, exist_ok=True)
        self.root = NodeRoot(root, code_root)  # training scripts run only from its code root
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
        self._assembler: Assembler[str] = Assembler(log=self._log)
        self._jobs: dict[str, EdgeJob] = {}
        self._transfer_keys: dict[str, set[str]] = {}
        self._workers: dict[str, WorkerProcess] = {}
        self._uploads: queue.SimpleQueue[UploadRequest | _Resend | None] = queue.SimpleQueue()
        self._outbox = Outbox(self.root.path / "state")
        self._deliveries = Deliveries(ack_timeout, clock)
        self._clock = clock
        self._own_status: dict[str, WorkerStatus] = {}  # job -> this node's retained worker status
        self._closing = threading.Event()
        self._tf_version = installed_tensorflow_version()

    # -- lifecycle ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set, then stop the scripts, publish offline and disconnect."""
        self._log.info("edge trainer starting", root=str(self.root.path), tensorflow=self._tf_version)
        threading.Thread(target=self._upload_loop, name="uploader", daemon=True).start()
        self._session.subscribe(self.own_statuses_filter())
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
                    event = self._events.get(timeout=self._wait_time())
                except queue.Empty:
                    event = None
                if event is not None:
                    self.handle(event)
                self.tick()
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
                self._on_upload_done(event)
            elif isinstance(event, OutboxWritten):
                self._on_outbox_written(event)
            elif isinstance(event, ResendDone):
                self._on_resend_done(event)
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
        elif parsed.channel is Channel.ACK and parsed.node == self.node:
            self._on_ack(msg.payload)
        elif parsed.channel is Channel.WORKER_STATUS and parsed.node == self.node:
            self._on_own_status(parsed.job, msg.payload)

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
            pending_rounds=functools.partial(self._deliveries.rounds, plan.job, plan.uid),
            delivered_round=functools.partial(self._outbox.delivered_round, plan.job, plan.uid),
            log=self._log,
        )
        self._jobs[name] = job
        self._log.info("job planned on this node", job=name, uid=plan.uid, exit_round=plan.exit_round)
        self._resume_outbox(job)
        completed = self._completed_before(plan)
        if completed is not None:
            job.resume_completed(completed)
            return
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
        # The run is gone (deleted, replaced, or no longer ours): its pending updates mean nothing now.
        self._deliveries.drop_job(job.name)
        self._outbox.clear(job.name)
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

    # -- outbox (logic thread) ---------------------------------------------------------------------

    def own_statuses_filter(self) -> str:
        """This node's worker status of every job (a topic filter)."""
        return self.topics.worker_statuses_of(self.node)

    def tick(self) -> None:
        """Timers: republish the manifest of every entry whose ack did not come within the ack timeout."""
        for delivery in self._deliveries.due():
            if not self._session.connected:
                self._deliveries.rearm(delivery)  # offline: paho holds what was sent; try when back
                continue
            delivery.resends += 1
            self._log.info(
                "no ack for an update; republishing its manifest",
                job=delivery.entry.job,
                round=delivery.entry.round,
                transfer=delivery.entry.transfer,
                after=self._deliveries.ack_timeout,
                times=delivery.resends,
            )
            self._resend(delivery, [])

    def _wait_time(self) -> float:
        deadline = self._deliveries.next_deadline()
        if deadline is None:
            return _POLL
        return max(0.0, min(_POLL, deadline - self._clock()))

    def _resend(self, delivery: Delivery, indices: list[int] | None) -> None:
        self._deliveries.start_publish(delivery)
        self._uploads.put(_Resend(delivery.entry, indices))

    def _resume_outbox(self, job: EdgeJob) -> None:
        """After a restart: take over the job's stored updates of this run and ask the aggregator about each."""
        for entry in self._outbox.entries(job.name):
            if entry.uid != job.uid or entry.manifest.sender != self.node:
                self._log.info("outbox entry of another run deleted", job=job.name, uid=entry.uid, round=entry.round)
                self._outbox.remove(entry)
                continue
            if self._deliveries.get(entry.job, entry.transfer) is not None:
                continue
            self._log.info(
                "outbox entry resumed; republishing its manifest",
                job=job.name,
                round=entry.round,
                kind=entry.manifest.kind,
                transfer=entry.transfer,
            )
            self._resend(self._deliveries.add(entry, job.run_id), [])

    def _completed_before(self, plan: JobPlan) -> WorkerStatus | None:
        """This node's retained Completed status of this run, if the model it names is on disk with that digest."""
        status = self._own_status.get(plan.job)
        if status is None or status.uid != plan.uid or status.state is not WorkerState.COMPLETED:
            return None
        if not status.model_path or not status.model_digest:
            return None
        try:
            meta_path = self.root.resolve(status.model_path, "model path").parent / METADATA_FILE
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self._log.info("completed before, but the saved model is not readable: running again", error=str(exc))
            return None
        if not isinstance(meta, dict) or meta.get("digest") != status.model_digest or meta.get("job") != plan.job:
            self._log.info("completed before, but the saved model differs: running again", job=plan.job)
            return None
        return status

    def _on_own_status(self, job: str, payload: bytes) -> None:
        if not payload:
            self._own_status.pop(job, None)
            return
        try:
            self._own_status[job] = WorkerStatus.model_validate_json(payload)
        except ValidationError:
            self._own_status.pop(job, None)

    def _on_outbox_written(self, event: OutboxWritten) -> None:
        entry = event.entry
        job = self._jobs.get(entry.job)
        if job is None or job.uid != entry.uid:
            self._outbox.remove(entry)  # the run ended while it was being stored
            return
        self._deliveries.add(entry, event.run_id)

    def _on_upload_done(self, done: UploadDone) -> None:
        if done.transfer is not None:
            if done.error is not None:
                self._deliveries.remove(done.job, done.transfer)
            else:
                self._deliveries.published(done.job, done.transfer, complete=not done.pending)
        job = self._job_of(done.job, done.run_id)
        if job is not None:
            job.on_uploaded(done)
            self._after(job)

    def _on_resend_done(self, done: ResendDone) -> None:
        delivery = self._deliveries.published(done.job, done.transfer, complete=done.complete)
        if delivery is None or done.error is None:
            return
        self._log.error(
            "outbox entry cannot be sent again; dropped", job=done.job, transfer=done.transfer, error=done.error
        )
        self._deliveries.remove(done.job, done.transfer)
        self._outbox.remove(delivery.entry)
        job = self._jobs.get(done.job)
        if job is not None and job.uid == delivery.entry.uid:
            job.on_refused(delivery.entry.manifest.kind, delivery.entry.round, done.error)

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = UpdateAck.model_validate_json(payload)
        except ValidationError:
            self._log.warning("ack ignored: not a valid UpdateAck")
            return
        if ack.node != self.node:
            return
        outcome, delivery = self._deliveries.on_ack(ack)
        log = self._log.bind(job=ack.job, round=ack.round, transfer=ack.transfer)
        if delivery is None or outcome is AckOutcome.IGNORED:
            log.debug("ack for no pending update ignored", accepted=ack.accepted)
            return
        entry = delivery.entry
        job = self._jobs.get(ack.job)
        job = job if job is not None and job.uid == entry.uid else None
        if outcome is AckOutcome.ACCEPTED:
            log.info("update confirmed by the aggregator", kind=entry.manifest.kind, reason=ack.reason)
            try:
                self._outbox.mark_delivered(entry)
            except OutboxError as exc:
                # Without the record the entry is the only evidence of the delivery: keep it, so a restart
                # sends it again (the aggregator answers "already stored") instead of training the round again.
                log.error("delivery not recorded; the outbox entry is kept", error=str(exc))
            else:
                self._outbox.remove(entry)
            if job is not None:
                job.on_acked(entry.manifest.kind, entry.round)
        elif outcome is AckOutcome.REFUSED:
            log.warning("update refused by the aggregator", kind=entry.manifest.kind, reason=ack.reason)
            self._outbox.remove(entry)
            if job is not None:
                job.on_refused(entry.manifest.kind, entry.round, ack.reason or "no reason given")
        elif outcome is AckOutcome.RESEND:
            log.info("aggregator misses chunks; resending them", missing=len(delivery.missing))
            self._resend(delivery, list(delivery.missing))
        else:
            log.debug("aggregator misses chunks while they are being sent", missing=len(ack.missing))

    # -- the uploader thread -----------------------------------------------------------------------

    def _upload_loop(self) -> None:
        while True:
            work = self._uploads.get()
            if work is None:
                return
            try:
                if isinstance(work, _Resend):
                    self._events.put(self._resend_one(work))
                else:
                    self._events.put(self._upload_one(work))
            except Exception as exc:  # the uploader must outlive any one transfer
                self._log.exception("uploader failed on one transfer", error=str(exc))

    def _upload_one(self, req: UploadRequest) -> UploadDone:
        """Store the update in the outbox, then publish it whole."""
        sender = BlobSender(self._session, chunk_size=req.chunk_size, window=_WINDOW)
        try:
            origin = TransferOrigin(req.kind, req.job, req.uid, req.round, self.node, req.num_samples)
            manifest = sender.prepare(req.blob, origin, transfer=new_transfer_id())
            entry = self._outbox.put(manifest, req.blob)
        except (BrokerError, OutboxError) as exc:
            return UploadDone(req.job, req.run_id, req.kind, req.round, error=str(exc))
        self._events.put(OutboxWritten(entry, req.run_id))
        complete, error = self._publish_entry(sender, entry, req.blob, None)
        if complete:
            self._log.info(
                "weights uploaded",
                job=req.job,
                round=req.round,
                kind=req.kind,
                transfer=manifest.transfer,
                bytes=manifest.total_bytes,
            )
        return UploadDone(
            req.job, req.run_id, req.kind, req.round, error=error, transfer=manifest.transfer, pending=not complete
        )

    def _resend_one(self, work: _Resend) -> ResendDone:
        entry = work.entry
        try:
            blob = self._outbox.read(entry)
        except OutboxError as exc:
            gone = not entry.meta_path.exists()  # confirmed (and deleted) meanwhile: nothing to send
            return ResendDone(entry.job, entry.transfer, complete=gone, error=None if gone else str(exc))
        sender = BlobSender(self._session, chunk_size=entry.manifest.chunk_size, window=_WINDOW)
        complete, error = self._publish_entry(sender, entry, blob, work.indices)
        return ResendDone(entry.job, entry.transfer, complete=complete, error=error)

    def _publish_entry(
        self, sender: BlobSender, entry: OutboxEntry, blob: bytes, indices: list[int] | None
    ) -> tuple[bool, str | None]:
        """(complete, permanent error). A timeout is no error: the entry stays and is sent again."""
        m = entry.manifest
        try:
            sender.resend(
                self.topics.update_manifest(m.job, m.round, self.node, m.transfer),
                functools.partial(self.topics.update_chunk, m.job, m.round, self.node, m.transfer),
                blob,
                m,
                indices,
                timeout=self._upload_timeout,
            )
        except TransferError as exc:
            self._log.warning(
                "publish not acknowledged in time; kept in the outbox", job=m.job, round=m.round, error=str(exc)
            )
            return False, None
        except PublishError as exc:
            if self._closing.is_set():
                return False, None
            return False, str(exc)
        return True, None

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

"""`fl-edge-trainer`: one MQTT session, one logic thread, one training script per job.

Threads: paho's network thread puts every received message (`broker.Inbound`) on the service's
`runtime.EventLoop`; each script's reader thread (`runtime.ScriptSupervisor`) puts its frames and its
exit there; the uploader thread (`Uploads`) puts `OutboxWritten`, `UploadDone` and `ResendDone` there.
The logic thread (`EdgeService.run`, the caller's thread) takes one event at a time and hands it to the
job's `engine.EdgeJob` or to `Uploads`; an MQTT message is acknowledged only after it was handled.

Timers run on the logic thread between events (`runtime.EventLoop`'s `tick` and `next_deadline`): the
deliveries' ack timeouts, and each job's wait for another edge's round-0 model (`EdgeJob.tick`).

Restarts: when a plan arrives, the job's outbox entries of the same run (uid) are taken over and their
manifests republished (the aggregator answers with an ack or with what it misses); entries of another
run are deleted. An accepted ack is recorded in the job's delivery record before its entry is deleted,
so a restarted job knows the newest round it delivered even when its outbox is empty. A job whose
retained worker status says Completed for the same uid, and whose saved model (its model.json digest)
is on disk, is not run again.

Subscriptions, in this order: this node's worker statuses (so a retained Completed is known before the
plan it belongs to), every plan (a plan is small and retained; the ones naming this node matter), this
node's acks, this node's own presence topic (to put ``online`` back after the broker published the
last will), and the global models of each job this node runs (and, for a secure aggregation job, its rounds'
states and share bundles: `SecAggWire`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from broker import (
    Assembler,
    BrokerError,
    Inbound,
    MqttSettings,
    RequestServer,
    Session,
    TransferError,
    manifest_from_payload,
)
from edge_trainer.engine import (
    Deliveries,
    EdgeJob,
    LaunchSpec,
    Outbox,
    UploadDone,
    UploadRequest,
    WorkerHandle,
    installed_tensorflow_version,
)
from edge_trainer.service._resume import completed_before
from edge_trainer.service._secagg_wire import SECAGG_CHANNELS, SecAggWire
from edge_trainer.service._uploads import OutboxWritten, ResendDone, Uploads, UploadWiring
from edge_trainer.service._warm import edge_warm_pool
from runtime import (
    EventLoop,
    JobFiles,
    Ledger,
    ModelUrlBook,
    ScriptExited,
    ScriptFrame,
    ScriptSupervisor,
    get_logger,
    held_models,
)
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
    WireError,
    WorkerState,
    WorkerStatus,
)

__all__ = ["EdgeService", "Event"]

# Under <root>/state/ (no job name has "_"): the Model urls whose versions this node reports.
MODEL_URLS_FILE = "_model_urls.json"
_POLL = 0.5  # how often the logic thread looks at the stop flag and the connection when idle

#: Everything the logic thread handles.
Event = Inbound | ScriptFrame | ScriptExited | UploadDone | OutboxWritten | ResendDone


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
        warm_worker: bool = False,  # scripts start in a warm worker (`edge_warm_pool`) when they can
        site: str | None = None,  # node.yaml `site:`: announced in the presence (the aggregator's site view)
    ) -> None:
        self.node = node
        self.site = site
        Path(root).mkdir(parents=True, exist_ok=True)
        self.root = NodeRoot(root, code_root)  # training scripts run only from its code root
        self.topics = topics or Topics()
        self._stop_grace = stop_grace
        self._log = (log or get_logger()).bind(component="edge")
        self._clock = clock
        self._events: EventLoop[Event] = EventLoop(
            self.handle, tick=self._tick, next_deadline=self._next_deadline, poll=_POLL, clock=clock, log=self._log
        )
        self._uids: dict[str, str] = {}  # job -> the run this node last planned (kept after it retired)
        # Every message the session publishes goes through the ledger: the account `flctl audit` reads.
        self._ledger = Ledger(self.root.path / "state", node, self.topics, self._uids.get, self._log)
        self._session = Session(
            settings,
            inbox=self._events,
            will=(self.topics.node_status(node), self._presence(NodeState.OFFLINE)),
            log=self._log,
            topics=self.topics,
            observer=self._ledger.published,
        )
        self._requests = RequestServer(self._session, self.topics, node, self._job_files, self._log)
        self._secagg = SecAggWire(self._session, self.topics, node, self._log)
        # Global models being reassembled, by (job, round).
        self._assembler: Assembler[tuple[str, int]] = Assembler(log=self._log)
        self._jobs: dict[str, EdgeJob] = {}
        warm = edge_warm_pool(self.root.path, self._log) if warm_worker else None
        self._scripts = ScriptSupervisor(self._events.put, stop_grace=stop_grace, log=self._log, warm=warm)
        self._deliveries = Deliveries(ack_timeout, clock)
        self._uploads = Uploads(
            Outbox(self.root.path / "state"),
            self._deliveries,
            UploadWiring(
                self._session,
                self.topics,
                node,
                self._events.put,
                self._jobs,
                self._after,
                self._log,
                note_blob=self._ledger.note_blob,
            ),
            upload_timeout=upload_timeout,
        )
        self._own_status: dict[str, WorkerStatus] = {}  # job -> this node's retained worker status
        # The Model urls this node saved models to: their versions go on its node status.
        self._model_urls = ModelUrlBook(self.root.path / "state" / MODEL_URLS_FILE)
        self._online = False
        self._closing = threading.Event()
        self._tf_version = installed_tensorflow_version()

    # -- lifecycle ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set, then stop the scripts, publish offline and disconnect."""
        self._log.info("edge trainer starting", root=str(self.root.path), tensorflow=self._tf_version)
        self._uploads.start()
        self._session.subscribe(self.own_statuses_filter())
        self._session.subscribe(self.topics.all_plans())
        self._session.subscribe(self.topics.acks_for(self.node))
        self._session.subscribe(self.topics.node_status(self.node))
        self._session.subscribe(self._requests.filter)
        self._session.start()
        try:
            self._events.run(stop)
        finally:
            self._shutdown()

    def put(self, event: Event) -> None:
        """Queue an event for the logic thread (any thread)."""
        self._events.put(event)

    def handle(self, event: Event) -> None:
        """Handle one event (an MQTT message, a script frame or exit, an upload result) on the logic thread."""
        try:
            match event:
                case Inbound():
                    self._on_message(event)
                case ScriptFrame():
                    job = self._job_of(event.job, event.run_id)
                    if job is not None:
                        job.on_frame(event.frame, event.body)
                        self._after(job)
                case ScriptExited():
                    job = self._job_of(event.job, event.run_id)
                    if job is not None:
                        job.on_exit(event.code)
                        self._after(job)
                case UploadDone():
                    self._uploads.on_upload_done(event)
                case OutboxWritten():
                    self._uploads.on_outbox_written(event)
                case ResendDone():
                    self._uploads.on_resend_done(event)
        finally:
            if isinstance(event, Inbound):
                self._session.ack(event)

    def _shutdown(self) -> None:
        self._log.info("edge trainer stopping", jobs=len(self._jobs))
        self._closing.set()
        for job in self._jobs.values():
            job.shutdown()
        self._scripts.stop_all()
        self._uploads.close()
        final = self._presence(NodeState.OFFLINE, models=True)
        self._session.stop(final=(self.topics.node_status(self.node), final))
        self._log.info("edge trainer stopped")

    # -- timers ------------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        connected = self._session.connected
        if connected != self._online:
            self._online = connected
            if connected:
                self._announce()
        self._uploads.tick(connected)
        for job in list(self._jobs.values()):
            if job.next_deadline() is not None:
                job.tick(now)
                self._after(job)

    def _next_deadline(self) -> float | None:
        # The jobs' timers (the wait for another edge's round-0 model) wake the loop as the deliveries' do.
        deadlines = [
            d
            for d in (self._deliveries.next_deadline(), *(j.next_deadline() for j in self._jobs.values()))
            if d is not None
        ]
        return min(deadlines, default=None)

    # -- MQTT messages -----------------------------------------------------------------------------

    def _on_message(self, msg: Inbound) -> None:
        if self._requests.handle(msg):
            return
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError:
            if not self._uploads.on_site_local(msg.topic, msg.payload):
                self._log.debug("message on an unknown topic ignored", topic=msg.topic)
            return
        if parsed.channel is Channel.PLAN:
            self._on_plan(parsed.job, msg.payload)
        elif parsed.channel in (Channel.GLOBAL_MANIFEST, Channel.GLOBAL_CHUNK):
            self._on_global_part(parsed, msg)
        elif parsed.channel is Channel.NODE_STATUS and parsed.node == self.node:
            self._on_own_presence(msg.payload)
        elif parsed.channel is Channel.ACK and parsed.node == self.node:
            self._uploads.on_ack(msg.payload)
        elif parsed.channel is Channel.WORKER_STATUS and parsed.node == self.node:
            self._on_own_status(parsed.job, msg.payload)
        elif parsed.channel in SECAGG_CHANNELS:
            self._secagg.route(parsed, msg, job := self._jobs.get(parsed.job))
            if job is not None:
                self._after(job)

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
        if mine:
            self._uids[name] = plan.uid
        if current is not None:
            if current.plan.uid == plan.uid and mine:
                return  # the same plan again (retained, redelivered)
            self._log.info("job replaced or no longer runs here", job=name, old_uid=current.plan.uid, new_uid=plan.uid)
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
            pending_rounds=self._uploads.pending_rounds(plan.job, plan.uid),
            delivered_round=self._uploads.delivered_round(plan.job, plan.uid),
            log=self._log,
            site=self.site,
            clock=self._clock,
        )
        self._jobs[name] = job
        self._log.info("job planned on this node", job=name, uid=plan.uid, exit_round=plan.exit_round)
        self._uploads.follow_site(plan)
        self._uploads.resume(job)
        completed = completed_before(self._own_status.get(plan.job), plan, self.root, self._log)
        if completed is not None:
            job.resume_completed(completed)
            return
        if job.start():
            self._secagg.follow(job)  # before the globals: a round's state is read before its model
            self._session.subscribe(self.topics.job_globals(name))

    def _on_global_part(self, parsed: ParsedTopic, msg: Inbound) -> None:
        job = self._jobs.get(parsed.job)
        if job is None or not job.active or not msg.payload or parsed.round is None:
            return
        key = (parsed.job, parsed.round)
        if parsed.round <= job.newest_global:
            self._assembler.discard(key)  # not newer than what the job holds: do not buffer it
            return
        try:
            if parsed.channel is Channel.GLOBAL_MANIFEST:
                manifest = manifest_from_payload(msg.payload)
                if manifest.round != parsed.round:
                    self._log.warning("global manifest ignored: its round does not match its topic", topic=msg.topic)
                    return
                done = self._assembler.add_manifest(key, manifest)
            elif parsed.chunk is not None:
                done = self._assembler.add_chunk(key, parsed.chunk, msg.payload)
            else:
                return
        except (TransferError, WireError) as exc:
            self._log.warning("global model transfer dropped", topic=msg.topic, error=str(exc))
            self._assembler.discard(key)
            return
        if done is not None:
            self._ledger.received_transfer(done.manifest, done.blob, topic=self.topics.global_manifest(*key))
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

    def _on_own_status(self, job: str, payload: bytes) -> None:
        if not payload:
            self._own_status.pop(job, None)
            return
        try:
            self._own_status[job] = WorkerStatus.model_validate_json(payload)
        except ValidationError:
            self._own_status.pop(job, None)

    # -- jobs --------------------------------------------------------------------------------------

    def _job_of(self, name: str, run_id: str) -> EdgeJob | None:
        job = self._jobs.get(name)
        return job if job is not None and job.run_id == run_id else None

    def _after(self, job: EdgeJob) -> None:
        """Once a job is finished, stop receiving its global models."""
        if job.finished:
            self._forget_transfers(job.plan.job)
            self._session.unsubscribe(self.topics.job_globals(job.plan.job))
            self._secagg.unfollow(job.plan.job)

    def _retire(self, job: EdgeJob, *, clear_status: bool) -> None:
        job.delete()
        name = job.plan.job
        self._jobs.pop(name, None)
        self._forget_transfers(name)
        self._uploads.drop_job(name)
        self._session.unsubscribe(self.topics.job_globals(name))
        self._secagg.unfollow(name)
        if clear_status:
            self._publish(self.topics.worker_status(name, self.node), b"", retain=True)

    def _forget_transfers(self, name: str) -> None:
        self._assembler.discard_where(lambda key: key[0] == name)

    def _job_files(self, name: str) -> JobFiles | None:
        """A job's script log and ledger, for the jobs whose current plan names this node (`RequestServer`)."""
        if name not in self._jobs:
            return None
        log = self.root.path / "logs" / name / "worker.log"
        ledger = self._ledger.path(name)
        return JobFiles(log, ledger, self.root.to_url(log), self.root.to_url(ledger))

    def _launch(self, spec: LaunchSpec, run_id: str) -> WorkerHandle:
        """Start the job's training script (the `engine.Launcher` of every job)."""
        return self._scripts.start(spec.script_launch(run_id))

    # -- JobPorts ----------------------------------------------------------------------------------

    def publish_status(self, status: WorkerStatus) -> None:
        status = status.model_copy(update={"ledger": self._ledger.summary(status.job, status.uid)})
        self._log.info(
            "worker status", job=status.job, state=status.state.value, round=status.round, message=status.message[:300]
        )
        self._publish(self.topics.worker_status(status.job, status.node), status.to_json(), retain=True)
        job = self._jobs.get(status.job)
        if status.state is WorkerState.COMPLETED and status.model_path and job is not None:
            self._model_written(job.plan.model.url)

    def _model_written(self, url: str) -> None:
        """A model version was saved under `url`: publish this node's status again with the versions it holds."""
        try:
            self._model_urls.add(url)
        except OSError as exc:  # the versions are on disk; only the listing after a restart misses this url
            self._log.warning("cannot record the Model url this node holds versions of", url=url, error=str(exc))
        if self._session.connected:
            self._announce()

    def upload(self, request: UploadRequest) -> None:
        self._uploads.submit(request)

    def publish_secagg(self, step: str, job: str, round_: int, payload: bytes) -> None:
        self._secagg.publish(step, job, round_, payload)

    # -- publishing --------------------------------------------------------------------------------

    def own_statuses_filter(self) -> str:
        """This node's worker status of every job (a topic filter)."""
        return self.topics.worker_statuses_of(self.node)

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        try:
            self._session.publish(topic, payload, retain=retain)
        except BrokerError as exc:
            self._log.error("publish failed", topic=topic, error=str(exc))

    def _announce(self) -> None:
        self._publish(self.topics.node_status(self.node), self._presence(NodeState.ONLINE, models=True), retain=True)

    def _presence(self, state: NodeState, *, models: bool = False) -> bytes:
        """This node's status; with `models`, the model versions it holds (read from disk; not in the last
        will, which is fixed when the session is made)."""
        held = None
        if models:
            try:
                held = held_models(self.root, self._model_urls.urls)
            except OSError as exc:
                self._log.warning("cannot list the model versions this node holds", error=str(exc))
        return NodeStatus(
            node=self.node, role="edge", state=state, version=_version(), models=held, site=self.site
        ).to_json()

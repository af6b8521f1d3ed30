"""`fl-cloud-aggregator --site S`: a site aggregator of hierarchical jobs, on the site's broker.

One MQTT session (to the site broker), one logic thread, one sender thread. It reads the plans and the
global models the bridge brings in from the cloud, takes the updates the site's edges publish on the
site's own topics (``<prefix>/sites/<site>/...``, which no bridge carries), and for each hierarchical job
with edges at this site runs a `SiteJob`: checks, spool (`StateStore`, the same files as the cloud's),
acks, the fold, and one partial aggregate per round, published as this node's own transfer on the job's
normal update topics (which the bridge carries to the cloud). The partial waits in
``<root>/state/<job>/partial.{json,blob}`` until the cloud acknowledges it.

It is no controller: it publishes no statuses, plans or specs, and starts no script.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from pathlib import Path

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
    manifest_from_payload,
)
from cloud_aggregator._errors import AggregatorError
from cloud_aggregator.engine import SiteJob, SpooledUpdate
from cloud_aggregator.service._state_store import StateStore
from runtime import EventLoop, get_logger, write_atomic
from schemas import (
    Channel,
    JobPlan,
    ParsedTopic,
    SchemaError,
    TopicError,
    Topics,
    TransferManifest,
    UpdateAck,
    WireError,
)

__all__ = ["SiteAggregatorService"]

POLL_SECONDS = 0.5
_PARTIAL_META, _PARTIAL_BLOB = "partial.json", "partial.blob"
_Send = tuple[TransferManifest, bytes, list[int] | None]


class SiteAggregatorService:
    """The site aggregator of `site`: hierarchical jobs' updates in from the site's edges, partials out."""

    def __init__(
        self,
        *,
        node: str,
        site: str,
        root: Path,
        settings: MqttSettings,
        prefix: str = "fl",
        ack_timeout: float = 30.0,
        publish_timeout: float = 120.0,
    ) -> None:
        self.node = node
        self.site = site
        self.root = root.resolve()
        self.settings = settings
        self.topics = Topics(prefix)
        self.local = self.topics.site_local(site)
        self._ack_timeout = ack_timeout
        self._publish_timeout = publish_timeout
        self._log: FilteringBoundLogger = get_logger(component="site", site=site)
        self._loop: EventLoop[Inbound] = EventLoop(
            self._handle, tick=self._tick, poll=POLL_SECONDS, expected=(AggregatorError, SchemaError, BrokerError)
        )
        self._store = StateStore(self.root)
        self._jobs: dict[str, SiteJob] = {}
        self._globals: Assembler[tuple[str, int]] = Assembler(log=self._log)
        self._updates: Assembler[tuple[str, int, str, str]] = Assembler(log=self._log)
        self._manifests_seen: set[tuple[str, int, str, str]] = set()
        self._stopping = threading.Event()
        self._sends: queue.SimpleQueue[_Send | None] = queue.SimpleQueue()
        self._session: Session | None = None

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        session = Session(self.settings, inbox=self._loop, topics=self.topics, log=self._log)
        self._session = session
        for filter_ in (
            self.topics.all_plans(),
            self.topics.all_globals(),
            self.topics.acks_for(self.node),
            self.local.all_updates(),
        ):
            session.subscribe(filter_)
        sender = threading.Thread(target=self._send_loop, args=(session,), name="partial-sender", daemon=True)
        sender.start()
        session.start()
        self._log.info("site aggregator connecting", host=self.settings.host, port=self.settings.port)
        try:
            self._loop.run(self._stopping)
            return 0
        finally:
            self._sends.put(None)
            session.stop()

    # -- the logic thread ---------------------------------------------------------------------------

    def _tick(self, _now: float) -> None:
        for job in self._jobs.values():
            job.tick()

    def _handle(self, msg: Inbound) -> None:
        try:
            self._dispatch(msg)
        finally:
            if self._session is not None:
                self._session.ack(msg)

    def _dispatch(self, msg: Inbound) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except TopicError:
            try:
                site, parsed = self.topics.parse_site_local(msg.topic)
            except TopicError:
                return
            if site == self.site and parsed.channel in (Channel.UPDATE_MANIFEST, Channel.UPDATE_CHUNK):
                self._on_update_part(parsed, msg.payload)
            return
        if parsed.channel is Channel.PLAN:
            self._on_plan(parsed.job, msg.payload)
        elif parsed.channel in (Channel.GLOBAL_MANIFEST, Channel.GLOBAL_CHUNK):
            self._on_global_part(parsed, msg.payload)
        elif parsed.channel is Channel.ACK and parsed.node == self.node and msg.payload:
            job = self._jobs.get(parsed.job)
            try:
                ack = UpdateAck.model_validate_json(msg.payload)
            except ValidationError:
                self._log.warning("ack ignored: not an UpdateAck", topic=msg.topic)
                return
            if job is not None:
                job.on_ack(ack)

    def _on_plan(self, name: str, payload: bytes) -> None:
        current = self._jobs.get(name)
        plan = None
        if payload:
            try:
                plan = JobPlan.model_validate_json(payload)
            except ValidationError as exc:
                self._log.error("plan ignored: not a valid JobPlan", job=name, error=str(exc.errors()[:3]))
                return
        if plan is not None and current is not None and current.plan.uid == plan.uid:
            return
        if current is not None:
            del self._jobs[name]
            self._store.clear_state(name)
            self._log.info("job gone or replaced", job=name)
        if plan is None or not any(plan.site_of(w.node) == self.site for w in plan.workers):
            return
        self._jobs[name] = SiteJob(
            plan,
            site=self.site,
            node=self.node,
            port=_Port(self, name),
            log=self._log,
            ack_timeout=self._ack_timeout,
            clock=time.monotonic,
        )
        self._log.info("hierarchical job at this site", job=name, uid=plan.uid, edges=self._jobs[name].edges)
        if self._session is not None:  # its retained global model again, now that the job is known
            self._session.subscribe(self.topics.job_globals(name))

    def _on_global_part(self, parsed: ParsedTopic, payload: bytes) -> None:
        job = self._jobs.get(parsed.job)
        if job is None or not payload or parsed.round is None or parsed.round <= job.global_round:
            return
        key = (parsed.job, parsed.round)
        try:
            if parsed.channel is Channel.GLOBAL_MANIFEST:
                done = self._globals.add_manifest(key, manifest_from_payload(payload))
            elif parsed.chunk is not None:
                done = self._globals.add_chunk(key, parsed.chunk, payload)
            else:
                return
        except (TransferError, WireError) as exc:
            self._log.warning("global model part ignored", job=parsed.job, round=parsed.round, error=str(exc))
            return
        if done is not None:
            self._globals.discard_where(lambda k: k[0] == parsed.job and k[1] <= key[1])
            job.on_global(key[1], done.view)

    def _on_update_part(self, parsed: ParsedTopic, payload: bytes) -> None:
        job = self._jobs.get(parsed.job)
        if job is None or parsed.round is None or parsed.node is None or parsed.transfer is None or not payload:
            return
        key = (parsed.job, parsed.round, parsed.node, parsed.transfer)
        try:
            if parsed.channel is Channel.UPDATE_MANIFEST:
                manifest = manifest_from_payload(payload)
                done = self._updates.add_manifest(key, manifest)
                if done is None and key in self._manifests_seen:  # sent again, still incomplete: ask
                    missing = self._updates.missing(key) or []
                    reason = f"{len(missing)} of {manifest.chunks} chunks missing"
                    self._answer(UpdateAck(**_ack(manifest), accepted=False, reason=reason, missing=missing))
                self._manifests_seen.add(key)
            elif parsed.chunk is not None:
                done = self._updates.add_chunk(key, parsed.chunk, payload)
            else:
                return
        except (TransferError, WireError) as exc:
            self._log.warning("update part ignored", job=parsed.job, worker=parsed.node, error=str(exc))
            return
        if done is not None:
            self._manifests_seen.discard(key)
            job.on_update(parsed.node, parsed.round, done.manifest, done.view)

    def _answer(self, ack: UpdateAck) -> None:
        if self._session is not None:
            self._session.publish(self.local.ack(ack.job, ack.round, ack.node), ack.to_json())

    # -- the sender thread --------------------------------------------------------------------------

    def _send_loop(self, session: Session) -> None:
        """Publishes partials (chunks, then manifest) off the logic thread: a WAN upload takes a while."""
        while (item := self._sends.get()) is not None:
            manifest, blob, indices = item
            sender = BlobSender(session, chunk_size=manifest.chunk_size)
            try:
                sender.resend(
                    self.topics.update_manifest(manifest.job, manifest.round, self.node, manifest.transfer),
                    functools.partial(
                        self.topics.update_chunk, manifest.job, manifest.round, self.node, manifest.transfer
                    ),
                    blob,
                    manifest,
                    indices,
                    timeout=self._publish_timeout,
                )
            except BrokerError as exc:  # kept in the outbox: its manifest goes out again at the ack timeout
                self._log.warning(
                    "partial not published in time", job=manifest.job, round=manifest.round, error=str(exc)
                )


def _ack(manifest: TransferManifest) -> dict[str, object]:
    return {
        "job": manifest.job,
        "uid": manifest.uid,
        "round": manifest.round,
        "node": manifest.sender,
        "transfer": manifest.transfer,
    }


class _Port:
    """`SitePort` of one job: the state store, the outbox files, the session."""

    def __init__(self, service: SiteAggregatorService, job: str) -> None:
        self._s = service
        self._dir = service._store.job_dir(job)

    def answer(self, ack: UpdateAck) -> None:
        self._s._answer(ack)

    def store_update(self, job: str, round_: int, node: str, transfer: str, blob: bytes | memoryview) -> None:
        self._s._store.store_update(job, round_, node, transfer, blob)

    def spooled_updates(self, job: str, round_: int) -> list[SpooledUpdate]:
        return self._s._store.spooled_updates(job, round_)

    def drop_spool(self, job: str, upto: int) -> None:
        self._s._store.drop_spool(job, upto)

    def save_partial(self, job: str, manifest: TransferManifest, blob: bytes) -> None:
        try:
            write_atomic(self._dir / _PARTIAL_BLOB, blob)
            write_atomic(self._dir / _PARTIAL_META, manifest.to_json())
        except OSError as exc:
            raise AggregatorError(f"cannot write the partial aggregate of {job}: {exc}") from exc

    def load_partial(self, job: str) -> tuple[TransferManifest, bytes] | None:
        try:
            meta = (self._dir / _PARTIAL_META).read_bytes()
            blob = (self._dir / _PARTIAL_BLOB).read_bytes()
            return manifest_from_payload(meta), blob
        except (OSError, WireError):
            return None  # none, or one whose write a crash interrupted (its round's spool is folded again)

    def drop_partial(self, job: str) -> None:
        for name in (_PARTIAL_META, _PARTIAL_BLOB):
            (self._dir / name).unlink(missing_ok=True)

    def send_partial(self, manifest: TransferManifest, blob: bytes, indices: list[int] | None) -> None:
        self._s._sends.put((manifest, blob, indices))

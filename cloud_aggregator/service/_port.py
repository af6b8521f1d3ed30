"""The job engine's `Port` over this node's broker session, its aggregation scripts and its node root.

Every broker error becomes a `PublishFailedError` (an `AggregatorError`), which the engine turns into a
failed job or a Warning event; global models travel as retained chunked transfers (`broker.BlobSender`),
and this port remembers which rounds it left retained so it can clear them again.

Specs, statuses and plans are kept durably (`KeptStore`, ``ROOT/state/_kept``) before they are published,
and every retained message this port publishes or the service sees delivered is noted in a `BrokerView`;
`resync` republishes what a broker that lost (or turned back) its retained state does not hold.

Spooled updates are stored by a `SpoolWriter` on its own thread, in groups. "Acknowledged only once
stored" holds because every message this port publishes after an update was handed to the writer is held
back, in order, until the writer says that update is durable (`release`, run by the service on the
writer's `SpoolDurable` event): the ack, and every event or status that follows it. An update the writer
could not store is not acknowledged (its accepted acks are dropped) until a checkpoint holds its round.
What reads or replaces the state (checkpoints, the spool's listing, a global model going out) first waits
for the writer (`_barrier`), so nothing overtakes an update in flight to the disk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from broker import BlobSender, BrokerError, Session
from cloud_aggregator._errors import PublishFailedError, StateError
from cloud_aggregator.engine import Checkpoint, FinalModel, KeptState, ScriptRequest, ScriptSignal, SpooledUpdate
from cloud_aggregator.service._kept_store import BrokerView, KeptStore
from cloud_aggregator.service._metrics import AggregatorMetrics
from cloud_aggregator.service._model_files import write_model
from cloud_aggregator.service._scripts import AggregationScripts
from cloud_aggregator.service._spool_writer import SpoolWriter
from cloud_aggregator.service._state_store import FileSpill, SpoolItem, StateStore
from runtime import Ledger
from schemas import (
    Channel,
    JobEvent,
    JobPlan,
    JobStatus,
    Kind,
    ResourceStatus,
    RoundRecord,
    SecAggState,
    ShareBundle,
    TopicError,
    Topics,
    TransferOrigin,
    UpdateAck,
)

__all__ = ["MqttPort"]

_BARRIER_SECONDS = 120.0  # how long a checkpoint (or the spool's listing) waits for updates still being stored


@dataclass(frozen=True)
class _Held:
    """A message published while an update was on its way to the disk: sent once writes up to `after` are."""

    topic: str
    payload: bytes
    retain: bool
    after: int  # the writer's seq it waits for
    transfer: str | None  # an accepted ack: the transfer it acknowledges (not sent if its store failed)


# eq=False: a port is one live session, equal only to itself (and hashable), as a plain class would be.
@dataclass(eq=False, kw_only=True)
class MqttPort:
    """The `Port` over a broker session, the script supervisor and the node root."""

    session: Session
    topics: Topics
    node: str
    root: Path
    scripts: AggregationScripts
    chunk_size: int
    publish_timeout: float
    log: FilteringBoundLogger
    # Told the Model url after a final model was written there (the service republishes its node status).
    model_written: Callable[[str], None] = lambda _url: None
    # What the engine publishes is also what the metrics count (None: no metrics).
    metrics: AggregatorMetrics | None = None
    # The node's residency ledger: each global model published is noted with its tensor layout.
    ledger: Ledger | None = None
    # Called on the spool writer's thread after each group it stored (the service queues a `SpoolDurable`).
    spool_durable: Callable[[], None] = lambda: None
    # Retained global models this node knows of: job -> round -> chunk count.
    retained_globals: dict[str, dict[int, int]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._sender = BlobSender(self.session, chunk_size=self.chunk_size)
        self._state = StateStore(self.root)
        self._state.clear_spills()  # transfers in flight when the service stopped are asked for again
        self._kept = KeptStore(self.root, self.topics, self.log)
        self._view = BrokerView()
        self._writer = SpoolWriter(self._state, on_durable=self.spool_durable, log=self.log)
        self._held: deque[_Held] = deque()
        self._unstored: dict[str, int] = {}  # transfer -> spool round, of updates the writer could not store

    # -- the spool's writes and what waits for them --------------------------------------------------

    def release(self) -> None:
        """Send, in order, the held messages whose updates are durable now (the logic thread, on `SpoolDurable`)."""
        done = self._writer.done
        for failure in self._writer.take_failures():
            item = failure.item
            self._unstored[item.transfer] = item.round
            self.log.error(
                "update folded but not stored: not acknowledged until a checkpoint holds its round",
                worker=item.node,
                round=item.round,
                error=str(failure.error),
            )
        while self._held and self._held[0].after <= done:
            held = self._held.popleft()
            if held.transfer is not None and held.transfer in self._unstored:
                continue
            try:
                self._send(held.topic, held.payload, retain=held.retain)
            except PublishFailedError as exc:  # its caller is gone: said here
                self.log.warning("a held message could not be published", topic=held.topic, error=str(exc))

    def _barrier(self) -> None:
        """Wait for every update handed to the writer, then send what waited for them."""
        if self._writer.done < self._writer.submitted and not self._writer.drain(_BARRIER_SECONDS):
            raise StateError(f"the spooled updates were not stored within {_BARRIER_SECONDS:.0f} s")
        self.release()

    def close(self, timeout: float) -> None:
        """Store what is queued (at most `timeout` s) and send what waited for it; stop the writer."""
        self._writer.close(timeout)
        self.release()

    def _publish(self, topic: str, payload: bytes, *, retain: bool, transfer: str | None = None) -> None:
        """Publish now, or, while an update handed to the writer is not durable yet, once it is (in order)."""
        pending = self._writer.done < self._writer.submitted
        if self._held and not pending:
            self.release()
        if self._held or pending:
            self._held.append(_Held(topic, payload, retain, self._writer.submitted, transfer))
            return
        if transfer is not None and transfer in self._unstored:
            self.log.info("accepted ack of an update not stored withheld", topic=topic)
            return
        self._send(topic, payload, retain=retain)

    def _send(self, topic: str, payload: bytes, *, retain: bool) -> None:
        try:
            self.session.publish(topic, payload, qos=1, retain=retain)
        except BrokerError as exc:
            raise PublishFailedError(str(exc)) from exc
        if retain:
            self._view.saw(topic, payload, self.session.connection)
        if self.metrics is not None:
            try:
                channel = self.topics.parse(topic).channel.value
            except TopicError:
                channel = "other"
            self.metrics.observe_sent(channel, len(payload))

    def publish_status(self, kind: Kind, name: str, status: JobStatus | ResourceStatus | None) -> None:
        if self.metrics is not None and kind is Kind.JOB:
            # The engine's view, whether or not the broker takes it now.
            self.metrics.observe_job(name, status if isinstance(status, JobStatus) else None)
        payload = status.to_json() if status else b""
        self._kept.keep_status(kind, name, payload)
        self._publish(self.topics.status(kind, name), payload, retain=True)

    def status_changed(self, name: str, status: JobStatus) -> None:
        pass  # the engine's StreamingPort turns it into stream lines; the status topic waits for its interval

    def publish_event(self, event: JobEvent) -> None:
        self._publish(self.topics.events(event.job), event.to_json(), retain=False)

    def publish_round_record(self, job: str, round_: int, record: RoundRecord | None) -> None:
        # Retained history, not kept for resync: a broker that lost it loses old rounds' details only.
        self._publish(self.topics.round_record(job, round_), record.to_json() if record else b"", retain=True)

    def publish_plan(self, job: str, plan: JobPlan | None) -> None:
        payload = plan.to_json() if plan else b""
        self._kept.keep_plan(job, payload)
        self._publish(self.topics.plan(job), payload, retain=True)

    def restore_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        self._publish(self.topics.spec(kind, name), payload, retain=True)

    # -- the kept copy and the broker's view of it ------------------------------------------------

    def keep_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        self._kept.keep_spec(kind, name, payload)

    def forget_spec(self, kind: Kind, name: str, *, deleted: bool) -> None:
        self._kept.forget_spec(kind, name, deleted=deleted)

    def kept(self) -> KeptState:
        return self._kept.state

    def saw(self, topic: str, payload: bytes, connection: int) -> None:
        """The broker delivered `payload` on `topic` (a spec, status or plan) on connection `connection`."""
        self._view.saw(topic, payload, connection)

    def holds_global(self, job: str, round_: int, connection: int) -> bool:
        """Whether the broker was seen holding the global model of `round_` (its manifest) on `connection`."""
        return self._view.holds(self.topics.global_manifest(job, round_), connection)

    def resync(self, connection: int) -> int:
        """Republish (retained) every kept entry the broker was not seen holding on `connection`; return how many."""
        stale = self._view.stale(self._kept.entries(), connection)
        for topic, payload in stale:
            self.log.warning("the broker lost a retained message; republished from the kept copy", topic=topic)
            try:
                self._publish(topic, payload, retain=True)
            except PublishFailedError as exc:  # one refused message must not keep the others back
                self.log.error("cannot republish a kept message", topic=topic, error=str(exc))
        return len(stale)

    def publish_global(self, job: str, round_: int, blob: bytes, *, uid: str, num_samples: int, final: bool) -> None:
        self._barrier()
        try:
            manifest = self._sender.send(
                self.topics.global_manifest(job, round_),
                self._chunk_topics(job, round_),
                blob,
                TransferOrigin("global", job, uid, round_, self.node, num_samples, final),
                retain=True,
                timeout=self.publish_timeout,
            )
        except (BrokerError, TimeoutError) as exc:
            raise PublishFailedError(str(exc)) from exc
        self.retained_globals.setdefault(job, {})[round_] = manifest.chunks
        if self.ledger is not None:
            self.ledger.published_transfer(manifest, blob, topic=self.topics.global_manifest(job, round_))
        self._view.saw(self.topics.global_manifest(job, round_), manifest.to_json(), self.session.connection)
        if self.metrics is not None:
            self.metrics.observe_sent(Channel.GLOBAL_CHUNK.value, len(blob))
            self.metrics.observe_sent(Channel.GLOBAL_MANIFEST.value, len(manifest.to_json()))

    def clear_globals(self, job: str, keep: int | None = None) -> None:
        self._barrier()
        known = self.retained_globals.get(job, {})
        for round_, chunks in sorted(known.items()):
            if round_ == keep:
                continue
            try:
                self._sender.clear(
                    self.topics.global_manifest(job, round_),
                    self._chunk_topics(job, round_),
                    chunks,
                    timeout=self.publish_timeout,
                )
            except (BrokerError, TimeoutError) as exc:
                raise PublishFailedError(f"cannot clear the global model of round {round_}: {exc}") from exc
            del known[round_]
        if not known:
            self.retained_globals.pop(job, None)

    def _chunk_topics(self, job: str, round_: int) -> Callable[[int], str]:
        def chunk_topic(index: int) -> str:
            return self.topics.global_chunk(job, round_, index)

        return chunk_topic

    def send_ack(self, ack: UpdateAck) -> None:
        if self.metrics is not None:
            self.metrics.observe_ack(ack)
        transfer = ack.transfer if ack.accepted else None
        self._publish(self.topics.ack(ack.job, ack.round, ack.node), ack.to_json(), retain=False, transfer=transfer)

    def publish_secagg_state(self, job: str, round_: int, state: SecAggState | None) -> None:
        self._publish(self.topics.secagg_state(job, round_), state.to_json() if state else b"", retain=True)

    def restore_secagg_bundle(self, job: str, bundle: ShareBundle) -> None:
        topic = self.topics.secagg_step(job, bundle.round, "shares", bundle.node)
        self._publish(topic, bundle.to_json(), retain=True)

    def clear_secagg_step(self, job: str, round_: int, step: str, node: str) -> None:
        self._publish(self.topics.secagg_step(job, round_, step, node), b"", retain=True)

    def start_script(self, request: ScriptRequest) -> None:
        self.scripts.start(request)

    def signal_script(self, job: str, uid: str, signal: ScriptSignal) -> None:
        self.scripts.signal(job, uid, signal)

    def write_model(self, final: FinalModel) -> str:
        model = final.model
        path = write_model(
            self.root, url=model.url, model_name=model.name, arrays=final.arrays, names=final.names, meta=final.meta
        )
        self.model_written(model.url)
        return str(path)

    def store_update(self, job: str, round_: int, node: str, transfer: str, blob: bytes | memoryview) -> None:
        """Hand the update to the spool's writer and return: what this port publishes from now on waits until
        it is durable (`release`). The blob is the assembler's read-only view, never written to again."""
        self._unstored.pop(transfer, None)  # stored again (a retry after a failure)
        self._writer.submit(SpoolItem(job, round_, node, transfer, blob))

    def spooled_updates(self, job: str, round_: int) -> list[SpooledUpdate]:
        self._barrier()
        return self._state.spooled_updates(job, round_)

    def open_spill(self, job: str) -> FileSpill:
        return self._state.open_spill(job)

    def read_spooled_update(self, job: str, round_: int, node: str, transfer: str) -> memoryview:
        self._barrier()
        return self._state.read_spooled_update(job, round_, node, transfer)

    def drop_spool(self, job: str, upto: int) -> None:
        self._barrier()  # the writer must not write into a round's folder while it is set aside
        self._state.drop_spool(job, upto)

    def save_secagg(self, job: str, round_: int, data: bytes) -> None:
        self._barrier()
        self._state.save_secagg(job, round_, data)

    def load_secagg(self, job: str, round_: int) -> bytes | None:
        return self._state.load_secagg(job, round_)

    def save_checkpoint(
        self, checkpoint: Checkpoint, global_blob: bytes, server_state: bytes | None = None, *, keep_globals: int = 1
    ) -> None:
        self._barrier()
        self._state.save_checkpoint(checkpoint, global_blob, server_state, keep_globals=keep_globals)
        # The rounds it closed hold their updates now: an update that could not be spooled is durable in it.
        closed = checkpoint.closed_round
        self._unstored = {t: r for t, r in self._unstored.items() if r > closed}

    def load_global(self, job: str, round_: int) -> bytes | None:
        return self._state.load_global(job, round_)

    def load_server_state(self, job: str, round_: int) -> bytes | None:
        return self._state.load_server_state(job, round_)

    def load_checkpoint(self, job: str) -> tuple[Checkpoint, bytes] | None:
        return self._state.load_checkpoint(job)

    def clear_state(self, job: str) -> None:
        self._barrier()
        self._state.clear_state(job)

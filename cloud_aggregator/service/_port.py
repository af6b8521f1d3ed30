"""The job engine's `Port` over this node's broker session, its aggregation scripts and its node root.

Every broker error becomes a `PublishFailedError` (an `AggregatorError`), which the engine turns into a
failed job or a Warning event; global models travel as retained chunked transfers (`broker.BlobSender`),
and this port remembers which rounds it left retained so it can clear them again.

Specs, statuses and plans are kept durably (`KeptStore`, ``ROOT/state/_kept``) before they are published,
and every retained message this port publishes or the service sees delivered is noted in a `BrokerView`;
`resync` republishes what a broker that lost (or turned back) its retained state does not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from broker import BlobSender, BrokerError, Session
from cloud_aggregator._errors import PublishFailedError
from cloud_aggregator.engine import Checkpoint, FinalModel, KeptState, ScriptRequest, ScriptSignal, SpooledUpdate
from cloud_aggregator.service._kept_store import BrokerView, KeptStore
from cloud_aggregator.service._metrics import AggregatorMetrics
from cloud_aggregator.service._model_files import write_model
from cloud_aggregator.service._scripts import AggregationScripts
from cloud_aggregator.service._state_store import FileSpill, StateStore
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
    # Retained global models this node knows of: job -> round -> chunk count.
    retained_globals: dict[str, dict[int, int]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._sender = BlobSender(self.session, chunk_size=self.chunk_size)
        self._state = StateStore(self.root)
        self._state.clear_spills()  # transfers in flight when the service stopped are asked for again
        self._kept = KeptStore(self.root, self.topics, self.log)
        self._view = BrokerView()

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
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
        self._publish(self.topics.ack(ack.job, ack.round, ack.node), ack.to_json(), retain=False)

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
        self._state.store_update(job, round_, node, transfer, blob)

    def spooled_updates(self, job: str, round_: int) -> list[SpooledUpdate]:
        return self._state.spooled_updates(job, round_)

    def open_spill(self, job: str) -> FileSpill:
        return self._state.open_spill(job)

    def read_spooled_update(self, job: str, round_: int, node: str, transfer: str) -> memoryview:
        return self._state.read_spooled_update(job, round_, node, transfer)

    def drop_spool(self, job: str, upto: int) -> None:
        self._state.drop_spool(job, upto)

    def save_secagg(self, job: str, round_: int, data: bytes) -> None:
        self._state.save_secagg(job, round_, data)

    def load_secagg(self, job: str, round_: int) -> bytes | None:
        return self._state.load_secagg(job, round_)

    def save_checkpoint(
        self, checkpoint: Checkpoint, global_blob: bytes, server_state: bytes | None = None, *, keep_globals: int = 1
    ) -> None:
        self._state.save_checkpoint(checkpoint, global_blob, server_state, keep_globals=keep_globals)

    def load_global(self, job: str, round_: int) -> bytes | None:
        return self._state.load_global(job, round_)

    def load_server_state(self, job: str, round_: int) -> bytes | None:
        return self._state.load_server_state(job, round_)

    def load_checkpoint(self, job: str) -> tuple[Checkpoint, bytes] | None:
        return self._state.load_checkpoint(job)

    def clear_state(self, job: str) -> None:
        self._state.clear_state(job)

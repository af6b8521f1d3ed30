"""The edge's uploads: an uploader thread that stores and publishes, and the outbox's logic-thread side.

The uploader thread encodes an update when its job compresses them (`UploadRequest.compression`:
`schemas.compress_update` over the delta from the global model the script trained from; top-k's residual
in `engine.Residuals`), stores it in the outbox (`engine.Outbox`: on disk, fsynced: the encoded blob is
what is stored, resent and acknowledged) and then publishes it as a chunked transfer (it waits for the broker's acks, which may take long on a slow
link); it also republishes chunks and manifests of stored entries. It reports `OutboxWritten`,
`UploadDone` and `ResendDone` to the service's event loop; nothing it does decides anything.

On the logic thread, `Uploads` keeps the bookkeeping (`engine.Deliveries`) and its timers: an entry is
deleted when the aggregator's `UpdateAck` accepts it (after the delivery is recorded) or refuses it for
good; the chunks it names missing are republished (same transfer); an entry without an ack within
``ack_timeout`` gets its manifest republished. After a restart, a job's entries of the same run are
taken over and their manifests republished; entries of another run are deleted.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from broker import BlobSender, BrokerError, PublishError, Session, TransferError, new_transfer_id
from edge_trainer._errors import OutboxError
from edge_trainer.engine import (
    AckOutcome,
    Deliveries,
    Delivery,
    EdgeJob,
    Outbox,
    OutboxEntry,
    Residuals,
    UploadDone,
    UploadRequest,
)
from schemas import Channel, JobPlan, TopicError, Topics, UpdateAck, WireError, compress_update

__all__ = ["OutboxWritten", "ResendDone", "UploadEvent", "UploadWiring", "Uploads"]

_WINDOW = 16  # unacknowledged chunks in flight per transfer


@dataclass(frozen=True)
class OutboxWritten:
    """The uploader stored an update in the outbox and is about to publish it.

    The logic thread tracks the entry (`Deliveries`) from here on, so an aggregator's ack that overtakes
    the `UploadDone` finds it."""

    entry: OutboxEntry
    run_id: str


@dataclass(frozen=True)
class ResendDone:
    """A republish of an outbox entry ended; `complete`: the broker acknowledged all of it.

    `error` is a failure for good (the entry cannot be read or published): the entry is dropped."""

    entry: OutboxEntry
    complete: bool
    error: str | None = None


#: What the uploader reports to the service's logic thread.
UploadEvent = UploadDone | OutboxWritten | ResendDone


@dataclass(frozen=True)
class UploadWiring:
    """How `Uploads` reaches the rest of its service (used on the logic thread, except `emit`)."""

    session: Session
    topics: Topics
    node: str
    emit: Callable[[UploadEvent], None]  # any thread: the service's event loop
    jobs: Mapping[str, EdgeJob]  # the service's jobs by name (a live view)
    after: Callable[[EdgeJob], None]  # a job handled an event
    log: FilteringBoundLogger  # the service's (any thread)
    # the uploader thread: the blob a transfer is about to carry (the ledger records its tensor layout)
    note_blob: Callable[[str, bytes], None] = lambda _transfer, _blob: None


class Uploads:
    """This node's outbox, its bookkeeping and its uploader thread."""

    def __init__(self, outbox: Outbox, deliveries: Deliveries, wiring: UploadWiring, *, upload_timeout: float) -> None:
        self.outbox = outbox
        self.residuals = Residuals(outbox.state_dir)
        self.deliveries = deliveries
        self._w = wiring
        self._timeout = upload_timeout
        self._log = wiring.log
        # The uploader's work: a call that stores or publishes and returns what to report (None: stop).
        self._work: queue.SimpleQueue[Callable[[], UploadEvent] | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """The service stops: publish failures from now on are expected, and the thread ends."""
        self._closing.set()
        self._work.put(None)

    # -- logic thread: requests and timers -----------------------------------------------------------

    def submit(self, request: UploadRequest) -> None:
        """Store the update in the outbox and publish it (`JobPorts.upload`); never blocks."""
        self._work.put(functools.partial(self._upload_one, request))

    def tick(self, connected: bool) -> None:
        """Republish the manifest of every entry whose ack did not come within the ack timeout."""
        for delivery in self.deliveries.due():
            if not connected:
                self.deliveries.rearm(delivery)  # offline: paho holds what was sent; try when back
                continue
            delivery.resends += 1
            m = delivery.entry.manifest
            if delivery.resends == 1 and (job := self._job(m.job, m.uid)) is not None:
                job.on_unconfirmed(m.kind, m.round, self.deliveries.ack_timeout)
            self._log.info(
                "no ack for an update; republishing its manifest",
                job=delivery.entry.manifest.job,
                round=delivery.entry.round,
                transfer=delivery.entry.transfer,
                after=self.deliveries.ack_timeout,
                times=delivery.resends,
            )
            self._resend(delivery, [])

    def resume(self, job: EdgeJob) -> None:
        """After a restart: take over the job's stored updates of this run and ask the aggregator about each."""
        for entry in self.outbox.entries(job.plan.job):
            m = entry.manifest
            if m.uid != job.plan.uid or m.sender != self._w.node:
                self._log.info("outbox entry of another run deleted", job=job.plan.job, uid=m.uid, round=m.round)
                self.outbox.remove(entry)
                continue
            if self.deliveries.get(m.job, m.transfer) is not None:
                continue
            self._log.info(
                "outbox entry resumed; republishing its manifest",
                job=job.plan.job,
                round=m.round,
                kind=m.kind,
                transfer=m.transfer,
            )
            self._resend(self.deliveries.add(entry, job.run_id), [])

    def drop_job(self, job: str) -> None:
        """The run is gone (deleted, replaced, or no longer ours): its pending updates mean nothing now."""
        self.deliveries.drop_job(job)
        self.outbox.clear(job)
        self.residuals.clear(job)

    def pending_rounds(self, job: str, uid: str) -> Callable[[], set[int]]:
        """For `EdgeJob`: the rounds of this run whose update is in the outbox."""
        return functools.partial(self.deliveries.rounds, job, uid)

    def delivered_round(self, job: str, uid: str) -> Callable[[], int]:
        """For `EdgeJob`: the newest round of this run the aggregator confirmed (the delivery record)."""
        return functools.partial(self.outbox.delivered_round, job, uid)

    # -- logic thread: what the uploader and the aggregator said -------------------------------------

    def on_outbox_written(self, event: OutboxWritten) -> None:
        entry = event.entry
        if self._job(entry.manifest.job, entry.manifest.uid) is None:
            self.outbox.remove(entry)  # the run ended while it was being stored
            return
        self.deliveries.add(entry, event.run_id)

    def on_upload_done(self, done: UploadDone) -> None:
        if done.transfer is not None:
            if done.error is not None:
                self.deliveries.remove(done.job, done.transfer)
            else:
                self.deliveries.published(done.job, done.transfer, complete=not done.pending)
        job = self._w.jobs.get(done.job)
        if job is not None and job.run_id == done.run_id:
            job.on_uploaded(done)
            self._w.after(job)

    def on_resend_done(self, done: ResendDone) -> None:
        m = done.entry.manifest
        delivery = self.deliveries.published(m.job, m.transfer, complete=done.complete)
        if delivery is None or done.error is None:
            return
        self._log.error("outbox entry cannot be sent again; dropped", job=m.job, transfer=m.transfer, error=done.error)
        self.deliveries.remove(m.job, m.transfer)
        self.outbox.remove(delivery.entry)
        job = self._job(m.job, m.uid)
        if job is not None:
            job.on_refused(m.kind, m.round, done.error)

    def follow_site(self, plan: JobPlan) -> None:
        """A hierarchical job's updates go to this node's site aggregator: its acks come on the site's topics."""
        site = plan.site_of(self._w.node)
        if site is not None:
            self._w.session.subscribe(self._w.topics.site_local(site).acks_for(self._w.node))

    def on_site_local(self, topic: str, payload: bytes) -> bool:
        """A message on a site's own topics: the site aggregator's ack (handled); False: no such topic."""
        try:
            _, parsed = self._w.topics.parse_site_local(topic)
        except TopicError:
            return False
        if parsed.channel is Channel.ACK and parsed.node == self._w.node:
            self.on_ack(payload)
        return True

    def on_ack(self, payload: bytes) -> None:
        try:
            ack = UpdateAck.model_validate_json(payload)
        except ValidationError:
            self._log.warning("ack ignored: not a valid UpdateAck")
            return
        if ack.node != self._w.node:
            return
        outcome, delivery = self.deliveries.on_ack(ack)
        log = self._log.bind(job=ack.job, round=ack.round, transfer=ack.transfer)
        if delivery is None or outcome is AckOutcome.IGNORED:
            log.debug("ack for no pending update ignored", accepted=ack.accepted)
            return
        entry = delivery.entry
        job = self._job(ack.job, entry.manifest.uid)
        if outcome is AckOutcome.ACCEPTED:
            log.info("update confirmed by the aggregator", kind=entry.manifest.kind, reason=ack.reason)
            try:
                self.outbox.mark_delivered(entry)
            except OutboxError as exc:
                # Without the record the entry is the only evidence of the delivery: keep it, so a restart
                # sends it again (the aggregator answers "already stored") instead of training the round again.
                log.error("delivery not recorded; the outbox entry is kept", error=str(exc))
            else:
                self.outbox.remove(entry)
            if job is not None:
                job.on_acked(entry.manifest.kind, entry.round)
        elif outcome is AckOutcome.REFUSED:
            log.warning("update refused by the aggregator", kind=entry.manifest.kind, reason=ack.reason)
            self.outbox.remove(entry)
            if job is not None:
                job.on_refused(entry.manifest.kind, entry.round, ack.reason or "no reason given")
        elif outcome is AckOutcome.RESEND:
            log.info("aggregator misses chunks; resending them", missing=len(delivery.missing))
            self._resend(delivery, list(delivery.missing))
        else:
            log.debug("aggregator misses chunks while they are being sent", missing=len(ack.missing))

    def _job(self, name: str, uid: str) -> EdgeJob | None:
        """The job `name` if it is still the run `uid`."""
        job = self._w.jobs.get(name)
        return job if job is not None and job.plan.uid == uid else None

    def _resend(self, delivery: Delivery, indices: list[int] | None) -> None:
        self.deliveries.start_publish(delivery)
        self._work.put(functools.partial(self._resend_one, delivery.entry, indices))

    # -- the uploader thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            try:
                self._w.emit(work())
            except Exception as exc:  # the uploader must outlive any one transfer
                self._log.exception("uploader failed on one transfer", error=str(exc))

    def _upload_one(self, req: UploadRequest) -> UploadDone:
        """Store the update in the outbox, then publish it whole; a failure is reported, never swallowed."""
        try:
            return self._store_and_publish(req)
        except Exception as exc:
            # A bug, not the network: the job must hear of it (and fail, saying why) instead of waiting for
            # an upload that will never end.
            self._log.exception("uploader failed on one transfer", job=req.job, round=req.round, error=str(exc))
            return UploadDone(req.job, req.run_id, req.kind, req.round, error=f"the uploader failed: {exc}")

    def _encoded(self, req: UploadRequest) -> bytes:
        """The blob to store and send: the script's, or its encoded delta (top-k: the residual saved first)."""
        compression = req.compression
        if compression is None:
            return req.blob
        residual = self.residuals.load(req.job, req.uid) if compression.codec == "topk" else None
        try:
            blob, left = compress_update(
                req.blob, compression.base, compression.codec, fraction=compression.fraction, residual=residual
            )
        except WireError as exc:
            # Not the model it was trained from (a script that changed its layout): sent raw, so the
            # aggregator's layout check answers with its usual reason.
            self._log.warning("update not compressed; sent raw", job=req.job, round=req.round, error=str(exc))
            return req.blob
        if left is not None:
            try:
                self.residuals.save(req.job, req.uid, req.round, left)
            except OSError as exc:
                self._log.warning("top-k residual not saved; it is lost", job=req.job, round=req.round, error=str(exc))
        self._log.debug("update compressed", job=req.job, codec=compression.codec, raw=len(req.blob), sent=len(blob))
        return blob

    def _store_and_publish(self, req: UploadRequest) -> UploadDone:
        sender = BlobSender(self._w.session, chunk_size=req.chunk_size, window=_WINDOW)
        blob = self._encoded(req)
        try:
            m = sender.prepare(blob, req, transfer=new_transfer_id())
            entry = self.outbox.put(m, blob)
        except (BrokerError, OutboxError) as exc:
            return UploadDone(req.job, req.run_id, req.kind, req.round, error=str(exc))
        self._w.emit(OutboxWritten(entry, req.run_id))
        complete, error = self._publish_entry(sender, entry, blob, None)
        if complete:
            self._log.info(
                "weights uploaded", job=m.job, round=m.round, kind=m.kind, transfer=m.transfer, bytes=m.total_bytes
            )
        return UploadDone(
            req.job, req.run_id, req.kind, req.round, error=error, transfer=m.transfer, pending=not complete
        )

    def _resend_one(self, entry: OutboxEntry, indices: list[int] | None) -> ResendDone:
        """Publish chunks `indices` of a stored entry (None: all; empty: none), then its manifest."""
        try:
            blob = self.outbox.read(entry, indices)
        except OutboxError as exc:
            gone = not entry.meta_path.exists()  # confirmed (and deleted) meanwhile: nothing to send
            return ResendDone(entry, complete=gone, error=None if gone else str(exc))
        sender = BlobSender(self._w.session, chunk_size=entry.manifest.chunk_size, window=_WINDOW)
        complete, error = self._publish_entry(sender, entry, blob, indices)
        return ResendDone(entry, complete=complete, error=error)

    def _publish_entry(
        self, sender: BlobSender, entry: OutboxEntry, blob: bytes, indices: list[int] | None
    ) -> tuple[bool, str | None]:
        """(complete, permanent error). A timeout is no error: the entry stays and is sent again."""
        m = entry.manifest
        topics, node = self._w.topics, self._w.node
        job = self._w.jobs.get(m.job)
        site = job.plan.site_of(node) if job is not None and m.kind == "update" else None
        if site is not None:  # hierarchical: to the site aggregator on the site's own topics (not bridged)
            topics = topics.site_local(site)
        self._w.note_blob(m.transfer, blob)
        try:
            sender.resend(
                topics.update_manifest(m.job, m.round, node, m.transfer),
                functools.partial(topics.update_chunk, m.job, m.round, node, m.transfer),
                blob,
                m,
                indices,
                timeout=self._timeout,
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

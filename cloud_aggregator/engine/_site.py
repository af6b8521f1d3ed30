"""A site aggregator's part of one hierarchical job (pure: effects only through `SitePort`).

Round r opens at the site when the cloud's global model of round r-1 arrives (retained, over the bridge).
Each of the site's edges uploads its round-r update on the site's own topics; the site checks it as the
cloud would (run, sender, round, layout, finite values; deltas decoded onto the global model), stores it
in its spool (`SitePort.store_update`) before it acknowledges it, and folds it (`SiteFold`): an update
counts once per edge and round. When every edge of the site is in, the partial aggregate is written to
the site's outbox (`save_partial`) and sent to the cloud as the site aggregator's own transfer (kind
``partial``); it stays in the outbox until the cloud's `UpdateAck` says stored (or refused for good), and
its manifest goes out again every `ack_timeout` seconds without one (the bridge queues it meanwhile).

A restart (kill -9) loses nothing and counts nothing twice: the spool of the open round is folded again
when its global model arrives (the broker holds it retained), an outbox partial is sent again, and the
cloud takes a partial once per site and round (`_hier`). A global model of round r or later ends the site's
round r: the cloud closed it (with the partial, or without the site at its deadline), so its spool and
any unconfirmed partial of it are dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from structlog.typing import FilteringBoundLogger

from cloud_aggregator._errors import AggregatorError, UpdateRejectedError
from cloud_aggregator.engine._checkpoint import SpooledUpdate
from cloud_aggregator.engine._hier import SiteFold
from cloud_aggregator.engine._transfers import decode_checked, describe_layout_difference
from schemas import (
    JobPlan,
    TransferManifest,
    TransferOrigin,
    UpdateAck,
    WireError,
    decode_weights,
    manifest_for,
    read_header,
)

__all__ = ["SiteJob", "SitePort"]

Arrays = list[npt.NDArray[Any]]


class SitePort(Protocol):
    """What a site aggregator's job engine does to the world."""

    def answer(self, ack: UpdateAck) -> None:
        """An ack to one of the site's edges, on the site's own topics."""

    def store_update(self, job: str, round_: int, node: str, transfer: str, blob: bytes | memoryview) -> None:
        """Store an edge's update durably before it is acknowledged (AggregatorError: not stored)."""

    def spooled_updates(self, job: str, round_: int) -> list[SpooledUpdate]: ...

    def drop_spool(self, job: str, upto: int) -> None: ...

    def save_partial(self, job: str, manifest: TransferManifest, blob: bytes) -> None:
        """The partial aggregate into the outbox, durably, before it is sent."""

    def load_partial(self, job: str) -> tuple[TransferManifest, bytes] | None: ...

    def drop_partial(self, job: str) -> None: ...

    def send_partial(self, manifest: TransferManifest, blob: bytes, indices: list[int] | None) -> None:
        """Publish chunks `indices` (None: all, []: none) and the manifest to the cloud; never blocks."""


@dataclass
class _Pending:
    manifest: TransferManifest
    blob: bytes
    sent_at: float


class SiteJob:
    """One hierarchical job at one site: its edges' updates in, one partial per round out."""

    def __init__(
        self,
        plan: JobPlan,
        *,
        site: str,
        node: str,
        port: SitePort,
        log: FilteringBoundLogger,
        ack_timeout: float = 30.0,
        clock: Callable[[], float],
    ) -> None:
        self.plan = plan
        self.site = site
        self.node = node
        self.edges = [w.node for w in plan.workers if plan.site_of(w.node) == site]
        self._port = port
        self._log = log.bind(job=plan.job, site=site)
        self._ack_timeout = ack_timeout
        self._clock = clock
        self.global_round = -1
        self._base: Arrays = []
        self._names: list[str] = []
        self._dtypes: list[np.dtype[Any]] = []
        self._layout: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
        self.fold: SiteFold | None = None
        self._opened = 0.0  # when the open round opened here
        mine = plan.worker(self.edges[0]) if self.edges else None
        raw = {k.lower(): v for k, v in mine.parameters.items()}.get("site_deadline", "0") if mine else "0"
        try:
            self.deadline = max(0.0, float(raw or 0))  # 0: every edge of the site, however long it takes
        except ValueError:
            self.deadline = 0.0
        self.pending: _Pending | None = None
        self.forwarded = 0  # the last round whose partial was sent (each round's once)
        saved = port.load_partial(plan.job)
        if saved is not None and saved[0].uid == plan.uid:
            self.pending = _Pending(saved[0], saved[1], clock())
            self.forwarded = saved[0].round
            self._log.info("partial aggregate from the outbox sent again", round=saved[0].round)
            port.send_partial(saved[0], saved[1], None)
        elif saved is not None:
            port.drop_partial(plan.job)  # an earlier run's

    # -- the cloud's messages ---------------------------------------------------------------------

    def on_global(self, round_: int, blob: bytes | memoryview) -> None:
        """The cloud's global model of `round_`: rounds up to it are closed; round_+1 opens (spool refolded)."""
        if round_ <= self.global_round:
            return
        try:
            header, arrays = decode_weights(blob)
        except WireError as exc:
            self._log.warning("global model ignored: unreadable", round=round_, error=str(exc))
            return
        self.global_round = round_
        self._base = [np.array(a) for a in arrays]
        self._names = [t.name for t in header.tensors]
        self._dtypes = [np.dtype(t.dtype) for t in header.tensors]
        self._layout = header.layout()
        if self.pending is not None and self.pending.manifest.round <= round_:
            self._log.info("the cloud closed the partial's round", round=self.pending.manifest.round)
            self._port.drop_partial(self.plan.job)
            self.pending = None
        self._port.drop_spool(self.plan.job, round_)
        self.fold = None
        if round_ >= self.plan.exit_round or header.kind != "global":
            return
        self.fold = SiteFold(job=self.plan.job, round=round_ + 1, sender=self.node)
        self._opened = self._clock()
        for entry in self._port.spooled_updates(self.plan.job, round_ + 1):
            self._refold(entry)
        self._forward_if_complete()

    def on_ack(self, ack: UpdateAck) -> None:
        """The cloud's answer to this site's partial."""
        pending = self.pending
        if pending is None or ack.transfer != pending.manifest.transfer or ack.uid != self.plan.uid:
            return
        if ack.accepted:
            self._log.info("partial aggregate stored by the cloud", round=ack.round, reason=ack.reason)
            # Its updates are the cloud's now: a restart before the next global model forwards nothing again.
            self._port.drop_spool(self.plan.job, ack.round)
        elif ack.missing:
            self._port.send_partial(pending.manifest, pending.blob, list(ack.missing))
            pending.sent_at = self._clock()
            return
        else:
            self._log.warning("partial aggregate refused by the cloud", round=ack.round, reason=ack.reason)
        self._port.drop_partial(self.plan.job)
        self.pending = None

    def tick(self) -> None:
        """An unconfirmed partial's manifest again after `ack_timeout` (the cloud answers what it holds); past
        the site deadline, the partial of the edges that are in."""
        fold = self.fold
        if fold is not None and fold.parts and self.deadline and self._clock() - self._opened >= self.deadline:
            self._forward_if_complete(deadline_passed=True)
        pending = self.pending
        if pending is not None and self._clock() - pending.sent_at >= self._ack_timeout:
            pending.sent_at = self._clock()
            self._port.send_partial(pending.manifest, pending.blob, [])

    # -- the edges' updates -----------------------------------------------------------------------

    def on_update(self, edge: str, round_: int, manifest: TransferManifest, blob: bytes | memoryview) -> None:
        """A complete update transfer from `edge` on the site's topics: checked, stored, acknowledged, folded."""
        fold = self.fold
        if fold is not None and round_ == fold.round and edge in fold.parts:
            self._answer(manifest, True, "already stored")
            return
        try:
            arrays = self._check(edge, round_, manifest, blob)
        except UpdateRejectedError as exc:
            self._log.warning("update refused", worker=edge, round=round_, reason=exc.reason)
            self._answer(manifest, False, exc.reason)
            return
        if arrays is None or fold is None:
            return  # its round is not open here yet: unanswered, the edge sends its manifest again later
        try:
            self._port.store_update(self.plan.job, round_, edge, manifest.transfer, blob)
        except AggregatorError as exc:
            self._log.error("update not stored (not acknowledged)", worker=edge, round=round_, error=str(exc))
            return
        fold.fold(edge, arrays, manifest.num_samples)
        # Logged before the edge hears of it: whoever sees the ack (a test that kills this process then, an
        # operator reading the log) finds the fold already written down.
        self._log.info("update folded", worker=edge, round=round_, samples=manifest.num_samples, have=len(fold.parts))
        self._answer(manifest, True, "stored")
        self._forward_if_complete()

    def _check(self, edge: str, round_: int, manifest: TransferManifest, blob: bytes | memoryview) -> Arrays | None:
        if manifest.uid != self.plan.uid:
            raise UpdateRejectedError(f"transfer for job uid {manifest.uid}, the running job's uid is {self.plan.uid}")
        if manifest.sender != edge or manifest.round != round_ or manifest.job != self.plan.job:
            raise UpdateRejectedError("the manifest's sender, round or job does not match its topic")
        if edge not in self.edges:
            raise UpdateRejectedError(f"{edge} is not an edge of site {self.site} in this job")
        if manifest.kind != "update":
            raise UpdateRejectedError(f"kind {manifest.kind}: the site aggregator takes updates")
        if self.fold is None or round_ != self.fold.round:
            if round_ <= self.global_round:
                raise UpdateRejectedError(f"round {round_} is closed")
            return None
        if self.forwarded >= round_:
            raise UpdateRejectedError(
                f"round {round_}'s partial went to the cloud without it (the site deadline passed)"
            )
        _, arrays, _ = decode_checked(manifest, blob, node=edge, job=self.plan.job, base=lambda: self._base)
        if manifest.num_samples <= 0:
            raise UpdateRejectedError("num_samples must be > 0")
        diff = describe_layout_difference(self._layout, read_header(blob)[0].layout())
        if diff:
            raise UpdateRejectedError(f"layout differs from the global model: {diff}")
        return arrays

    def _refold(self, entry: SpooledUpdate) -> None:
        """A spooled update of the open round (a restart): folded again, each edge once, not answered."""
        assert self.fold is not None
        if entry.node not in self.edges or entry.node in self.fold.parts or self.forwarded >= self.fold.round:
            return  # (a partial in the outbox is what the round forwards: it goes out again as it is)
        try:
            header, _ = read_header(entry.blob)
            origin = TransferOrigin(
                "update", self.plan.job, self.plan.uid, header.round, entry.node, header.num_samples
            )
            manifest = manifest_for(entry.blob, origin, chunk_size=max(1, len(entry.blob)), transfer=entry.transfer)
            arrays = self._check(entry.node, self.fold.round, manifest, entry.blob)
        except (WireError, UpdateRejectedError) as exc:
            self._log.warning("spooled update left out", worker=entry.node, error=str(exc))
            return
        if arrays is not None:
            self.fold.fold(entry.node, arrays, header.num_samples)
            self._log.info("update refolded from the spool", worker=entry.node, round=self.fold.round)

    def _forward_if_complete(self, *, deadline_passed: bool = False) -> None:
        fold = self.fold
        if fold is None or fold.round <= self.forwarded or not fold.parts:
            return
        missing = sorted(set(self.edges) - set(fold.parts))
        if missing and not deadline_passed:
            return
        if missing:
            self._log.warning("site deadline passed: partial without some edges", round=fold.round, missing=missing)
        self.forwarded = fold.round
        blob = fold.partial(self._names, self._dtypes)
        origin = TransferOrigin("partial", self.plan.job, self.plan.uid, fold.round, self.node, fold.total)
        transfer = hashlib.sha256(blob).hexdigest()[:16]
        manifest = manifest_for(blob, origin, chunk_size=self.plan.chunk_size, transfer=transfer)
        self._port.save_partial(self.plan.job, manifest, blob)
        self.pending = _Pending(manifest, blob, self._clock())
        self._log.info("partial aggregate sent", round=fold.round, samples=fold.total, edges=sorted(fold.parts))
        self._port.send_partial(manifest, blob, None)

    def _answer(self, manifest: TransferManifest, accepted: bool, reason: str) -> None:
        self._port.answer(
            UpdateAck(
                job=self.plan.job,
                uid=self.plan.uid,
                round=manifest.round,
                node=manifest.sender,
                transfer=manifest.transfer,
                accepted=accepted,
                reason=reason,
            )
        )

"""The update path: a complete update transfer checked, stored, folded into the open round, answered.

Each update is counted once per (node, round). Before it is folded it is stored (`Port.store_update`,
under the round that folds it) and so survives a crash: `refold_spool` folds the stored updates of a
round again when it reopens after a restart. In the asynchronous mode (`_staleness`) an update of an
earlier round is rebased onto the open round's model and discounted by its staleness, and a node's next
update that arrives while its previous one is in the buffer is carried to the next round's spool.
Whether the round closes is the `RoundEngine`'s rule (`Closer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy.typing as npt

from cloud_aggregator._errors import AggregatorError, StrategyError, UpdateRejectedError
from cloud_aggregator._robust import RobustStrategy
from cloud_aggregator.engine._commit import Committer
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._intake import Intake
from cloud_aggregator.engine._secagg import SecureAggregation
from cloud_aggregator.engine._stages import Training
from cloud_aggregator.engine._staleness import rebase
from cloud_aggregator.engine._transfers import check_manifest, decode_checked, describe_layout_difference
from schemas import (
    PartShare,
    TransferManifest,
    TransferOrigin,
    WeightsKind,
    WireError,
    manifest_for,
    read_header,
)

__all__ = ["Closer", "UpdatePath"]

Arrays = list[npt.NDArray[Any]]


class Closer(Protocol):
    """What the update path asks of the round engine."""

    def closable(self, open_round: Training) -> bool: ...

    def close(self, open_round: Training) -> None: ...

    def fail(self, reason: str, message: str) -> None: ...


@dataclass
class _Checked:
    open_round: Training
    arrays: Arrays
    base: Arrays | None  # the model it was trained from, when not the open round's (asynchronous)
    carry: bool  # asynchronous: its node's older update is in the buffer; this one goes to the next
    parts: tuple[PartShare, ...] = ()  # a site's partial aggregate (`_hier`): the edges it counts for


class UpdatePath:
    """Takes one job's update transfers into its open round."""

    def __init__(
        self, ctx: JobContext, intake: Intake, committer: Committer, closer: Closer, secagg: SecureAggregation
    ) -> None:
        self._ctx = ctx
        self._intake = intake
        self._committer = committer
        self._closer = closer
        self._secagg = secagg

    def on_update(
        self,
        node: str,
        round_: int,
        manifest: TransferManifest,
        blob: bytes | memoryview,
        *,
        spooled: bool = False,
        payload_sha256: str | None = None,
    ) -> None:
        """A complete `update` transfer: checked, stored, counted once per worker and round, folded on arrival.

        `spooled`: the update comes from the spool (a restart refolds it): it is stored already.
        `payload_sha256`: the SHA-256 of its tensor bytes, hashed as they arrived (else hashed when decoded).
        """
        ctx = self._ctx
        state = ctx.state
        if isinstance(state, Training) and state.secagg is not None:
            self._on_masked(node, round_, manifest, blob, spooled=spooled)
            return
        try:
            checked = self._check(node, round_, manifest, blob, payload_sha256)
        except UpdateRejectedError as exc:
            self._intake.reject(node, manifest, exc)
            ctx.publish()
            return
        if checked is None:
            return
        open_round = checked.open_round
        if checked.carry:
            self._carry(open_round, node, round_, manifest, blob)
        elif (spooled or self._store(open_round, node, round_, manifest, blob)) and self._fold(
            checked, node, round_, manifest
        ):
            if checked.parts:
                self._count_partial(open_round, node, checked.parts, manifest, spooled=spooled)
            else:
                self._count(open_round, node, round_, manifest, spooled=spooled)
            if self._closer.closable(open_round):
                self._closer.close(open_round)
        ctx.publish()

    def base_of(self, open_round: Training, round_: int) -> Arrays | None:
        """The model an update of `round_` was trained from, when it is not the open round's (None: it is)."""
        if round_ == open_round.round:
            return None
        base = self._committer.bases.get(round_ - 1)
        if base is None:
            raise UpdateRejectedError(f"the model version it was trained from ({round_ - 1}) is no longer kept")
        return base

    def decode_base(self, open_round: Training, round_: int) -> Arrays:
        """The model an encoded update of `round_` holds deltas from: the global model of round_ - 1."""
        base = self.base_of(open_round, round_)
        return open_round.model.arrays if base is None else base

    def refold_spool(self, round_: int) -> None:
        """Fold the updates stored for `round_` before it opened, each (node, round) once: a restart's spool,
        or (asynchronous) the updates carried to it. A buffer that fills on the way closes, and the rest of
        the spool goes to the round open then (stored there: this spool is dropped with its round)."""
        ctx, facts = self._ctx, self._ctx.facts
        try:
            spooled = ctx.port.spooled_updates(facts.name, round_)
        except AggregatorError as exc:
            ctx.event("Warning", "SpoolUnreadable", f"round {round_}: the spooled updates cannot be read: {exc}")
            return
        for entry in spooled:
            state = ctx.state
            if not isinstance(state, Training) or (state.round != round_ and facts.asynchrony is None):
                break  # the round closed (or the job ended) on an update folded before this one
            if entry.node not in facts.senders:
                continue
            try:
                header, _ = read_header(entry.blob)
            except WireError as exc:
                ctx.log.warning("unreadable spooled update skipped", worker=entry.node, error=str(exc))
                continue
            if state.holds(entry.node, header.round):
                continue
            kind: WeightsKind = "partial" if header.kind == "partial" else "update"
            origin = TransferOrigin(kind, facts.name, facts.uid, header.round, entry.node, header.num_samples)
            manifest = manifest_for(entry.blob, origin, chunk_size=max(1, len(entry.blob)), transfer=entry.transfer)
            self.on_update(entry.node, header.round, manifest, entry.blob, spooled=state.round == round_)

    def _on_masked(
        self, node: str, round_: int, manifest: TransferManifest, blob: bytes | memoryview, *, spooled: bool
    ) -> None:
        """Secure aggregation: a masked update (checked as any update's origin, then by the round's phase),
        stored, added into the masked sum, counted and acknowledged; all of U2 in moves the round on."""
        ctx = self._ctx
        try:
            open_round = check_manifest(ctx.facts, ctx.state, node, round_, manifest)
            if open_round is None:
                raise UpdateRejectedError(f"expected an update transfer, got kind {manifest.kind}")
            if open_round.holds(node, round_):
                self._intake.duplicate(node, manifest)
                return
            vector = self._secagg.check_masked(open_round, node, manifest, blob, spooled=spooled)
        except UpdateRejectedError as exc:
            if spooled:  # stored before the phase moved on without it: it stays out of the sum, nothing to answer
                ctx.log.info("spooled masked update left out", worker=node, reason=str(exc))
                return
            self._intake.reject(node, manifest, exc)
            ctx.publish()
            return
        if spooled or self._store(open_round, node, round_, manifest, blob):
            assert open_round.secagg is not None
            open_round.secagg.add_masked(vector)
            self._count(open_round, node, round_, manifest, spooled=spooled)
            if not spooled:  # a restart's refold moves on once every spooled update is in (`Recovery`)
                self._secagg.progress(open_round)
        ctx.publish()

    # -- steps -------------------------------------------------------------------------------------

    def _check(
        self, node: str, round_: int, manifest: TransferManifest, blob: bytes | memoryview, payload_sha256: str | None
    ) -> _Checked | None:
        """The update's checks (raise UpdateRejectedError); None when it is a duplicate (answered here)."""
        facts = self._ctx.facts
        open_round = check_manifest(facts, self._ctx.state, node, round_, manifest)
        if open_round is None:
            raise UpdateRejectedError(f"expected an update transfer, got kind {manifest.kind}")
        if open_round.holds(node, round_) or (facts.asynchrony is not None and self._intake.delivered(node, round_)):
            # Asynchronous: an update of an earlier round may still be taken, but not twice (a second
            # transfer of one round, e.g. trained again after a restart of its edge, is not a new update).
            self._intake.duplicate(node, manifest)
            return None
        # Asynchronous only (a synchronous round holds one update per node and round): this node's
        # update of an older round is in the buffer already; this one goes to the next buffer.
        carry = node in open_round.counted
        if carry and open_round.round >= open_round.run.plan.exit_round:
            raise UpdateRejectedError(
                f"the final round {open_round.round} already holds this node's update of round "
                f"{open_round.origins.get(node, open_round.round)}"
            )
        layout, arrays, _ = decode_checked(
            manifest,
            blob,
            node=node,
            job=facts.name,
            base=lambda: self.decode_base(open_round, round_),
            payload_sha256=payload_sha256,
        )
        if manifest.num_samples <= 0:
            raise UpdateRejectedError("num_samples must be > 0")
        diff = describe_layout_difference(open_round.model.layout, layout)
        if diff:
            raise UpdateRejectedError(f"layout differs from the global model: {diff}")
        try:
            open_round.run.strategy.check(open_round.acc, arrays, manifest.num_samples)
        except StrategyError as exc:
            raise UpdateRejectedError(str(exc)) from exc
        base = None if carry else self.base_of(open_round, round_)
        parts: tuple[PartShare, ...] = ()
        if manifest.kind == "partial" and facts.hierarchy is not None:
            parts = facts.hierarchy.check_parts(node, read_header(blob)[0], open_round.counted)
        return _Checked(open_round, arrays, base, carry, parts)

    def _store(
        self, open_round: Training, node: str, round_: int, manifest: TransferManifest, blob: bytes | memoryview
    ) -> bool:
        """Store the update under the round that folds it (a stale update's own round may be closed)."""
        ctx = self._ctx
        try:
            ctx.port.store_update(ctx.facts.name, open_round.round, node, manifest.transfer, blob)
        except AggregatorError as exc:
            # Not acknowledged: the edge keeps its copy and sends the manifest again later.
            ctx.event(
                "Warning",
                "UpdateNotStored",
                f"update from {node} for round {round_} could not be stored (not acknowledged): {exc}",
                node=node,
            )
            return False
        return True

    def _fold(self, checked: _Checked, node: str, round_: int, manifest: TransferManifest) -> bool:
        """Rebase (asynchronous), clip and fold the update; a strategy that fails here fails the job (False)."""
        open_round, arrays = checked.open_round, checked.arrays
        strategy, asynchrony = open_round.run.strategy, self._ctx.facts.asynchrony
        try:
            # Clipping comes before any strategy; a restart refolds the spooled (unclipped) update and
            # clips it again identically. A robust rule folds no values: it rebases and clips at its close.
            if not isinstance(strategy, RobustStrategy):
                if checked.base is not None:
                    arrays = rebase(arrays, checked.base, open_round.model.arrays)
                arrays, note = strategy.clip(arrays, open_round.model.arrays)
                if note is not None:
                    open_round.clipped[node] = note
            scale = asynchrony.scale(open_round.round - round_) if asynchrony is not None else 1.0
            privacy = open_round.run.privacy
            if privacy is not None:  # DP-FedAvg weighs every update equally (`cloud_aggregator._privacy`)
                scale = privacy.fold_scale(manifest.num_samples)
            open_round.acc = strategy.fold_in_place(open_round.acc, arrays, manifest.num_samples, scale)
        except StrategyError as exc:  # check() passed: a bug in the strategy
            self._closer.fail("AggregationFailed", f"round {round_}: folding the update of {node} failed: {exc}")
            return False
        return True

    def _count(
        self, open_round: Training, node: str, round_: int, manifest: TransferManifest, *, spooled: bool
    ) -> None:
        """The folded update counts: recorded, acknowledged, said."""
        ctx, facts = self._ctx, self._ctx.facts
        open_round.counted[node] = manifest.num_samples
        open_round.origins[node] = round_
        open_round.transfers[node] = manifest.transfer
        open_round.received[node] = (
            manifest.total_bytes,
            self._intake.receive_seconds(round_, node, manifest.transfer),
        )
        self._intake.mark_stored(round_, node, manifest.transfer)
        ctx.answer(node, manifest, True, "stored")
        stale = f", {open_round.round - round_} versions stale" if round_ != open_round.round else ""
        wanted = facts.asynchrony.buffer_size if facts.asynchrony is not None else len(facts.participants)
        ctx.event(
            "Normal",
            "UpdateAccepted",
            f"update from {node} for round {round_} ({manifest.num_samples} samples{stale})"
            + (f" into round {open_round.round}" if stale else "")
            + (", from the spool" if spooled else "")
            + f"; {len(open_round.counted)}/{wanted} in",
            node=node,
        )

    def _count_partial(
        self,
        open_round: Training,
        node: str,
        parts: tuple[PartShare, ...],
        manifest: TransferManifest,
        *,
        spooled: bool,
    ) -> None:
        """A site's folded partial counts for each edge it lists (their sample counts go on the round's
        record) and settles the site's other edges for the round; acknowledged to its site aggregator."""
        ctx, facts = self._ctx, self._ctx.facts
        assert facts.hierarchy is not None  # `_check` took a partial only for a hierarchical job
        site = facts.hierarchy.site_of_aggregator(node) or node
        seconds = self._intake.receive_seconds(open_round.round, node, manifest.transfer)
        for part in parts:
            open_round.counted[part.node] = part.samples
            open_round.transfers[part.node] = manifest.transfer
        if parts:  # the blob's bytes and time once, on the first edge: the WAN carried one model
            open_round.received[parts[0].node] = (manifest.total_bytes, seconds)
        open_round.partials[node] = manifest.transfer
        open_round.settled.update(facts.hierarchy.edges.get(site, ()))
        self._intake.mark_stored(open_round.round, node, manifest.transfer)
        ctx.answer(node, manifest, True, "stored")
        sites_in = len(open_round.partials)
        ctx.event(
            "Normal",
            "PartialAccepted",
            f"partial aggregate of site {site} from {node} for round {open_round.round} ("
            + ", ".join(f"{p.node}: {p.samples}" for p in parts)
            + f"; {manifest.num_samples} samples)"
            + (", from the spool" if spooled else "")
            + f"; {sites_in}/{len(facts.hierarchy.aggregators)} sites in",
            node=node,
        )

    def _carry(
        self, open_round: Training, node: str, round_: int, manifest: TransferManifest, blob: bytes | memoryview
    ) -> None:
        """Asynchronous: `node`'s update of `round_` while its older one is in the buffer: stored for the next
        round (its spool), acknowledged, and folded when that round opens (`RoundEngine.open_round`)."""
        ctx, facts = self._ctx, self._ctx.facts
        target = open_round.round + 1
        try:
            ctx.port.store_update(facts.name, target, node, manifest.transfer, blob)
        except AggregatorError as exc:
            ctx.event("Warning", "UpdateNotStored", f"update from {node} for round {round_} could not be stored: {exc}")
            return
        # Not marked stored yet: `holds` answers for it while this round is open, and the next one counts it.
        open_round.carried[node] = round_
        ctx.answer(node, manifest, True, f"stored for round {target}")
        ctx.event(
            "Normal",
            "UpdateCarried",
            f"update from {node} for round {round_} kept for round {target}: its update of round "
            f"{open_round.origins.get(node, open_round.round)} is in round {open_round.round} already",
            node=node,
        )

"""Committing a closed round: make it durable, then public, then forget its spooled updates.

The order is what crash recovery relies on: the checkpoint (global blob, then checkpoint.json) is
written before the global model is published, and the round's spool is dropped only after both. An
aggregator killed anywhere in between restarts from the previous checkpoint and its spool, or from
this one. `folded` is the ledger the checkpoints carry: which (node, transfer) made each closed round.
A strategy's server state (FedAdam's moments, FedAvgM's momentum) after a round is saved with that
round's checkpoint, so a restart steps from exactly the state the global model was made with.
With ``global_compression: float16`` the global models are published as float16 and the job's model *is*
the float16-rounded one (`published`): the edges train from it and their encoded deltas are relative to
it, so the aggregator's base and the edges' agree bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import AggregatorError, PublishFailedError
from cloud_aggregator._strategy import ServerState
from cloud_aggregator.engine._checkpoint import Checkpoint
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._stages import Run, TransferId
from cloud_aggregator.engine._staleness import BaseModels
from schemas import encode_weights

__all__ = ["Committer"]


class Committer:
    """Checkpoints and publishes one job's global models."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self.folded: dict[int, list[tuple[str, str]]] = {}  # closed round -> (node, transfer) folded
        # closed round -> node -> the round its update was for, where that is not the closed round (stale)
        self.origins: dict[int, dict[str, int]] = {}
        asynchrony = ctx.facts.asynchrony
        # How many of the newest global models the checkpoints keep, and `bases` holds in memory: the
        # asynchronous mode rebases an update onto the version it was trained from (`_staleness`).
        self.keep_globals = asynchrony.max_staleness + 1 if asynchrony is not None else 1
        self.bases = BaseModels(self.keep_globals)

    def folded_transfers(self) -> set[TransferId]:
        """(the update's own round, node, transfer) of every folded update: what the edges' acks name."""
        return {(self.origins.get(r, {}).get(n, r), n, t) for r, pairs in self.folded.items() for n, t in pairs}

    def published(self, weights: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """`weights` as the edges will decode them from the published blob (float16-rounded when compressed)."""
        if not self._ctx.facts.global_float16:
            return list(weights)
        return [w.astype(np.float16).astype(w.dtype) if w.dtype.kind == "f" else w for w in weights]

    def encode(self, round_: int, weights: Sequence[npt.NDArray[Any]], names: list[str], num_samples: int) -> bytes:
        """The global model blob of `round_` (what `commit` publishes)."""
        return encode_weights(
            weights,
            kind="global",
            job=self._ctx.facts.name,
            round_=round_,
            sender=self._ctx.facts.node,
            num_samples=num_samples,
            names=names,
            float16=self._ctx.facts.global_float16,
        )

    def commit(
        self,
        run: Run,
        round_: int,
        weights: Sequence[npt.NDArray[Any]],
        names: list[str],
        num_samples: int,
        *,
        final: bool,
    ) -> None:
        """A closed round (0: the chosen init): checkpoint, publish the global model, drop the round's spool."""
        self.commit_blob(run, round_, self.encode(round_, weights, names, num_samples), num_samples, final=final)
        self.bases.add(round_, weights)

    def commit_blob(
        self, run: Run, round_: int, blob: bytes, num_samples: int, *, final: bool, server: ServerState | None = None
    ) -> None:
        """Commit an encoded global model and the server state after its round: checkpoint, publish, drop the spool.

        A checkpoint that cannot be written is a Warning (the round goes on, a restart would redo it);
        a global model that cannot be published raises `PublishFailedError` (the job cannot go on).
        """
        ctx, facts = self._ctx, self._ctx.facts
        state = server.to_bytes() if server is not None else None
        checkpoint = Checkpoint(
            job=facts.name,
            uid=facts.uid,
            spec_hash=facts.spec_hash,
            closed_round=round_,
            exit_round=run.plan.exit_round,
            participants=list(facts.participants),
            strategy=run.strategy.name,
            folded={str(r): list(pairs) for r, pairs in sorted(self.folded.items())},
            status=ctx.book.snapshot().model_copy(deep=True),
            server_state=hashlib.sha256(state).hexdigest() if state is not None else None,
            origins={str(r): dict(o) for r, o in sorted(self.origins.items()) if o} or None,
        )
        try:
            ctx.port.save_checkpoint(checkpoint, blob, state, keep_globals=self.keep_globals)
        except AggregatorError as exc:
            ctx.event("Warning", "CheckpointFailed", f"round {round_}: the checkpoint could not be written: {exc}")
        self.publish_global(round_, blob, num_samples, final=final)
        ctx.safely(ctx.port.drop_spool, facts.name, round_)

    def publish_global(self, round_: int, blob: bytes, num_samples: int, *, final: bool) -> None:
        """Publish the global model of `round_` (retained) and clear the older ones."""
        ctx, facts = self._ctx, self._ctx.facts
        try:
            ctx.port.publish_global(facts.name, round_, blob, uid=facts.uid, num_samples=num_samples, final=final)
        except AggregatorError as exc:
            raise PublishFailedError(f"cannot publish the global model of round {round_}: {exc}") from exc
        ctx.safely(ctx.port.clear_globals, facts.name, round_)
        ctx.log.info("global model published", global_round=round_, final=final, bytes=len(blob))

"""Crash recovery: a job created with ``resume=True`` restarts from its last checkpoint.

The controller resumes a job whose retained status is Running with the same uid and spec hash. At
`start` its checkpoint is loaded (one of another run or spec is ignored and cleared); once the script
sent its config, `resume` restores the status, the global model and what was folded, republishes the
latest global model (retained), and opens the round after the checkpoint's on the strategy's server
state saved with it (checked against the checkpoint's digest), folding again the updates stored for it
before the crash (the spool), each (node, round) once. So a restart closes that round exactly as an
uninterrupted run would have. A secure aggregation round reloads its record (`_secagg`), and its spooled
masked updates go into the masked sum again. Without a checkpoint the run resumes at round 0.
"""

from __future__ import annotations

import hashlib

import numpy as np

from cloud_aggregator._errors import AggregatorError, PublishFailedError, StrategyError
from cloud_aggregator._strategy import Layout, ServerState
from cloud_aggregator.engine._checkpoint import Checkpoint
from cloud_aggregator.engine._commit import Committer
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._intake import Intake
from cloud_aggregator.engine._rounds import RoundEngine
from cloud_aggregator.engine._stages import Final, GlobalWeights, Run, Training
from cloud_aggregator.engine._status import final_message
from schemas import JobStatus, Phase, WireError, WorkerState, decode_weights

__all__ = ["Recovery"]


class Recovery:
    """Loads one job's checkpoint and resumes the job from it."""

    def __init__(
        self,
        ctx: JobContext,
        intake: Intake,
        committer: Committer,
        rounds: RoundEngine,
        previous_status: JobStatus | None,
    ) -> None:
        self._ctx = ctx
        self._intake = intake
        self._committer = committer
        self._rounds = rounds
        self._previous = previous_status  # the retained status of the run being resumed

    def load(self) -> tuple[Checkpoint, bytes] | None:
        """Read the job's checkpoint for a resumed run; one of another run or spec is ignored."""
        ctx, facts = self._ctx, self._ctx.facts
        try:
            loaded = ctx.port.load_checkpoint(facts.name)
        except AggregatorError as exc:
            ctx.event("Warning", "CheckpointUnreadable", f"the checkpoint cannot be read; resuming at round 0: {exc}")
            return None
        if loaded is None:
            return None
        checkpoint = loaded[0]
        if checkpoint.uid != facts.uid or checkpoint.spec_hash != facts.spec_hash:
            ctx.log.info("checkpoint of another run ignored", checkpoint_uid=checkpoint.uid)
            ctx.safely(ctx.port.clear_state, facts.name)
            return None
        return loaded

    def resume(self, run: Run, checkpoint: Checkpoint, blob: bytes) -> None:
        """Resume after the checkpoint's round: status, global model, what was folded, the spool of the open round."""
        ctx = self._ctx
        try:
            header, arrays = decode_weights(blob)
        except WireError as exc:
            self._rounds.fail("CheckpointUnreadable", f"the checkpoint's global model cannot be read: {exc}")
            return
        closed = checkpoint.closed_round
        try:
            server = self._server_state(run, checkpoint, header.layout())
        except AggregatorError as exc:
            self._rounds.fail("CheckpointUnreadable", f"the checkpoint's server state of round {closed}: {exc}")
            return
        ctx.book.status = self._restored_status(checkpoint)
        ctx.restore_rounds()
        status = ctx.status
        status.phase = Phase.RUNNING
        status.exit_round = run.plan.exit_round
        status.current_round = closed
        source = checkpoint.folded.get("0", [("?", "")])[0][0]
        model = GlobalWeights.of(
            [np.array(a) for a in arrays], header.layout(), [t.name for t in header.tensors], source
        )
        self._committer.folded = {int(r): [(n, t) for n, t in pairs] for r, pairs in checkpoint.folded.items()}
        self._committer.origins = {int(r): dict(o) for r, o in (checkpoint.origins or {}).items()}
        self._intake.restore_stored(self._committer.folded_transfers())
        final = run.is_final(closed)
        if run.privacy is not None:  # derived from the closed rounds, as the round that closed computed it
            status.privacy = run.privacy.status(closed, budget_spent=final and closed < run.plan.exit_round)
        ctx.set_agg_worker(WorkerState.READY, f"{run.strategy.name}, {run.plan.exit_round} rounds (resumed)")
        ctx.event(
            "Normal",
            "Resumed",
            f"resumed from the checkpoint of round {closed}" + ("" if final else f"; round {closed + 1} is open"),
        )
        try:
            self._committer.publish_global(closed, blob, header.num_samples, final=final)
        except PublishFailedError as exc:
            self._rounds.fail("PublishFailed", str(exc))
            return
        if final:
            # A hierarchical round's ledger names its site aggregators too: they train nothing to complete.
            participants = [n for n, _ in self._committer.folded.get(closed, []) if n in ctx.facts.participants]
            # The final round is the one that closed: its events and the aggregation worker's entry say so
            # (before the split a run resumed here reported round 0, a round it never had).
            ctx.state = Final(run=run, model=model, round=closed, participants=participants)
            status.message = final_message(closed)
            self._rounds.check_complete()
            return
        self._load_bases(closed)
        self._rounds.open_round(run, model, closed + 1, server)
        if ctx.facts.asynchrony is None:  # the asynchronous mode's open_round refolds its spool itself
            self._rounds.updates.refold_spool(closed + 1)
        state = ctx.state
        if isinstance(state, Training) and state.secagg is not None:
            # The masked sum is whole again: the saved phase may be ready to move on (or to unmask).
            self._rounds.secagg.progress(state)

    def _load_bases(self, closed: int) -> None:
        """The global models kept with the checkpoints that updates may still be rebased onto (asynchronous)."""
        ctx = self._ctx
        keep = self._committer.keep_globals
        for version in range(max(0, closed - keep + 1), closed + 1):
            try:
                blob = ctx.port.load_global(ctx.facts.name, version)
                if blob is not None:
                    self._committer.bases.add(version, decode_weights(blob)[1])
            except (AggregatorError, WireError) as exc:
                # Updates trained from it are refused ("no longer kept"); the edges train again from the newest.
                ctx.log.warning("kept global model unreadable", version=version, error=str(exc))

    def _server_state(self, run: Run, checkpoint: Checkpoint, layout: Layout) -> ServerState | None:
        """The strategy's server state after the checkpoint's round (raise when it is missing or not that one)."""
        initial = run.strategy.begin_server(layout)
        if initial is None:
            return None
        if checkpoint.server_state is None:
            if checkpoint.closed_round == 0:
                return initial  # round 0 is the chosen init: no step was taken yet
            raise StrategyError(f"{run.strategy.name} keeps state across rounds, and the checkpoint has none")
        data = self._ctx.port.load_server_state(self._ctx.facts.name, checkpoint.closed_round)
        if data is None:
            raise StrategyError("it is missing")
        if hashlib.sha256(data).hexdigest() != checkpoint.server_state:
            raise StrategyError("it is not the one the checkpoint names (its digest differs)")
        server = ServerState.from_bytes(data)
        if server.strategy != initial.strategy or server.layout != initial.layout:
            raise StrategyError(f"it belongs to {server.strategy}, not to {run.strategy.name} with this model")
        return server

    def _restored_status(self, checkpoint: Checkpoint) -> JobStatus:
        """The checkpoint's status, with the training workers' own states from the retained status."""
        restored = checkpoint.status.model_copy(deep=True)
        previous = self._previous
        if previous is not None and previous.uid == self._ctx.facts.uid:
            # The retained status is at least as new as the checkpoint for the workers' own states.
            for worker in previous.workers:
                if worker.role == "training" and worker.node in self._ctx.facts.participants:
                    restored.workers = [
                        w for w in restored.workers if not (w.node == worker.node and w.role == "training")
                    ]
                    restored.workers.append(worker)
        return restored

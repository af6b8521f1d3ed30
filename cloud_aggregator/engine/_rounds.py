"""The round engine: from the round-0 model through the rounds to the final model, and failing a job.

- **INIT** (round 0): the first valid init transfer becomes the global model of round 0, so every edge
  starts round 1 from identical weights. Later inits are acknowledged and not used; one whose layout
  differs fails its worker (and so the job).
- **TRAINING** (rounds 1..exit_round): each participant's update is checked, stored (`Port.store_update`)
  and folded into the strategy's accumulator on arrival, exactly once, then acknowledged. The round
  closes when every participant is in, or after its deadline (aggregationWorker parameter
  ``round_deadline``) as soon as ``min_participants`` are in, or (`closes_early`) before the deadline
  when the quorum is in and every participant still missing is *absent*: its node's last will said
  offline at least ``offline_grace`` seconds ago and it has not spoken since. Missing workers are named
  in `RoundRecord.missing` and a Warning event (saying since when an absent one is offline). Each closed
  round is committed (`Committer`). With differential privacy (`Run.privacy`) the close adds the noise to
  the round's mean and the record carries the epsilon spent (`cloud_aggregator._privacy`); a round after
  which one more would pass the budget is the final one (`Run.is_final`).
- **FINAL**: the final weights are written under the Model url; once every worker of the final round
  reported Completed the job is Succeeded and the script gets `finish`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import AggregatorError, PublishFailedError, StrategyError, UpdateRejectedError
from cloud_aggregator._robust import RobustResult, RobustStrategy
from cloud_aggregator._strategy import ServerState
from cloud_aggregator.engine._commit import Committer
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._intake import Intake
from cloud_aggregator.engine._port import FinalModel
from cloud_aggregator.engine._robust_close import robust_close
from cloud_aggregator.engine._secagg import SecureAggregation
from cloud_aggregator.engine._stages import Done, Final, GlobalWeights, Init, Run, Training
from cloud_aggregator.engine._status import budget_message, completed_message, final_message
from cloud_aggregator.engine._transfers import (
    check_manifest,
    checked_header,
    decode_checked,
    describe_layout_difference,
)
from cloud_aggregator.engine._updates import UpdatePath
from schemas import (
    ConditionType,
    Phase,
    RoundRecord,
    TransferManifest,
    WorkerRound,
    WorkerState,
    now,
)

__all__ = ["RoundEngine"]


class RoundEngine:
    """Moves one job through INIT, TRAINING and FINAL to DONE."""

    def __init__(self, ctx: JobContext, intake: Intake, committer: Committer) -> None:
        self._ctx = ctx
        self._intake = intake
        self._committer = committer
        self.secagg = SecureAggregation(ctx, self)
        self.updates = UpdatePath(ctx, intake, committer, self, self.secagg)

    # -- transfers -------------------------------------------------------------------------------

    def on_transfer(
        self, node: str, round_: int, manifest: TransferManifest, blob: bytes | memoryview, payload_sha256: str | None
    ) -> None:
        """A complete transfer from the intake (every chunk checked against the manifest's hashes;
        `payload_sha256`: its tensor bytes' SHA-256, hashed as they arrived, or None)."""
        if manifest.kind == "init":
            self.on_init(node, round_, manifest, blob, payload_sha256=payload_sha256)
        else:
            self.updates.on_update(node, round_, manifest, blob, payload_sha256=payload_sha256)

    def on_init(
        self,
        node: str,
        round_: int,
        manifest: TransferManifest,
        blob: bytes | memoryview,
        *,
        payload_sha256: str | None = None,
    ) -> None:
        """A complete `init` transfer: the first valid one becomes the global model of round 0. Once it is
        chosen, a later init is compared by its header's layout alone: its tensors are never used, so they are
        not decoded (at 100 edges, 99 inits of which one is used)."""
        ctx = self._ctx
        decoded = None
        try:
            if check_manifest(ctx.facts, ctx.state, node, round_, manifest) is not None:
                raise UpdateRejectedError(f"expected an init transfer, got kind {manifest.kind}")
            if isinstance(ctx.state, Init):
                decoded = decode_checked(manifest, blob, node=node, job=ctx.facts.name, payload_sha256=payload_sha256)
                layout = decoded[0]
            else:
                layout = checked_header(manifest, blob, node=node, job=ctx.facts.name).layout()
        except UpdateRejectedError as exc:
            self._intake.reject(node, manifest, exc)
            ctx.publish()
            return
        state = ctx.state
        if isinstance(state, Init) and decoded is not None:
            _, arrays, names = decoded
            model = GlobalWeights.of([np.array(a) for a in self._committer.published(arrays)], layout, names, node)
            self._committer.folded[0] = [(node, manifest.transfer)]
            params = sum(int(np.prod(shape)) for _, _, shape in layout)
            ctx.event(
                "Normal",
                "InitialModel",
                f"the round-0 model comes from {node} ({len(layout)} tensors, {params} parameters)",
                node=node,
            )
            # The checkpoint of round 0 is the durable store of this init: acknowledged after it.
            if self._commit(state.run, 0, model, manifest.num_samples, final=False):
                self._intake.mark_stored(0, node, manifest.transfer)
                ctx.answer(node, manifest, True, "round-0 model")
                self.open_round(state.run, model, 1, state.run.strategy.begin_server(layout))
        elif isinstance(state, Training | Final):
            source = state.model.source
            diff = describe_layout_difference(state.model.layout, layout)
            if diff:
                ctx.answer(node, manifest, False, f"layout differs from the round-0 model: {diff}")
                message = f"its initial model does not match the round-0 model from {source}: {diff}"
                ctx.book.set_worker(node, WorkerState.FAILED, message)
                ctx.event("Warning", "LayoutMismatch", f"worker {node}: {message}", node=node)
                self.fail("WorkerFailed", f"worker {node} failed: {message}")
            else:
                self._intake.mark_stored(0, node, manifest.transfer)
                ctx.answer(node, manifest, True, f"a round-0 model was already chosen (from {source})")
                ctx.log.info("init transfer ignored: the round-0 model is already chosen", worker=node)
        ctx.publish()

    # -- timers ----------------------------------------------------------------------------------

    def tick(self, now_s: float) -> None:
        """The round deadline: close with a quorum, else wait for it (and say for whom). Before it, the
        offline grace of an absent participant may run out (`closes_early`)."""
        ctx, facts = self._ctx, self._ctx.facts
        state, deadline = ctx.state, facts.round_deadline
        if isinstance(state, Training) and state.secagg is not None:
            self.secagg.tick(state, now_s)  # each phase has its deadline; the unmasked sum closes the round
            return
        if not isinstance(state, Training) or deadline is None or state.deadline_passed:
            return
        if now_s < state.opened + deadline:
            self.on_presence()
            return
        state.deadline_passed = True
        if self.closable(state):
            self.close(state)
        else:
            ctx.event(
                "Warning",
                "BelowQuorum",
                f"round {state.round}: the deadline of {deadline:g} s passed with "
                f"{len(state.counted)}/{len(facts.participants)} updates, quorum {facts.min_participants}; "
                f"waiting for {', '.join(state.waiting_for(facts.participants))}",
            )
        ctx.publish()

    def on_presence(self) -> None:
        """A participant went offline, or time passed: close the open round if the absent no longer hold it."""
        state = self._ctx.state
        if isinstance(state, Training) and self.closes_early(state):
            self.close(state)
            self._ctx.publish()

    # -- the closing rule --------------------------------------------------------------------------

    def absent(self, node: str) -> bool:
        """`node`'s worker is Offline (its node's last will) since at least the job's offline_grace."""
        ctx = self._ctx
        worker = ctx.book.worker(node)
        if worker is None or worker.state is not WorkerState.OFFLINE:
            return False
        # A resumed run restores an Offline entry from the retained status, and the retained will then
        # changes nothing: its grace counts from now (this run saw no will), its wall time is the entry's.
        since = ctx.offline_since.setdefault(node, (ctx.clock, worker.updated_at))
        return ctx.clock - since[0] >= ctx.facts.offline_grace

    def _quorum(self) -> int:
        """Updates a round needs once its deadline passed: the quorum, or any one in the asynchronous mode."""
        return 1 if self._ctx.facts.asynchrony is not None else self._ctx.facts.min_participants

    def closes_early(self, open_round: Training) -> bool:
        """Before its deadline, with the quorum in, a round stops waiting for participants known to be gone.

        Only a job with a ``round_deadline`` agreed to rounds without everyone; without one, every
        participant is awaited every round (Sedna's contract), offline or not. The quorum still holds
        (``min_participants``, by default every participant: then nothing closes early either)."""
        facts = self._ctx.facts
        missing = open_round.waiting_for(facts.participants)
        return (
            open_round.secagg is None  # a secure aggregation round closes when its sum is unmasked
            and facts.round_deadline is not None
            and facts.asynchrony is None  # a buffer waits for no one in particular
            and not open_round.deadline_passed
            and bool(missing)
            and len(open_round.counted) >= facts.min_participants
            and all(self.absent(node) for node in missing)
        )

    def closable(self, open_round: Training) -> bool:
        facts = self._ctx.facts
        if open_round.secagg is not None:
            return False  # it closes when its sum is unmasked (`SecureAggregation`)
        if facts.asynchrony is not None and len(open_round.counted) >= facts.asynchrony.buffer_size:
            return True
        if not open_round.waiting_for(facts.participants):
            return True
        if open_round.deadline_passed:
            return len(open_round.counted) >= self._quorum()
        return self.closes_early(open_round)

    # -- stages ----------------------------------------------------------------------------------

    def open_round(self, run: Run, model: GlobalWeights, round_: int, server: ServerState | None) -> None:
        """TRAINING: round `round_` opens on `model` and the strategy's `server` state, with an empty accumulator."""
        ctx = self._ctx
        acc = run.strategy.begin(model.layout, model.arrays)
        ctx.state = Training(run=run, model=model, round=round_, acc=acc, opened=ctx.clock, server=server)
        ctx.log = ctx.log.bind(round=round_)
        if run.secagg is not None:
            self.secagg.open(ctx.state)  # state keys (or, after a restart, the round's saved phase)
        if ctx.facts.asynchrony is not None:
            self.updates.refold_spool(round_)  # the updates carried to this buffer while the previous one was open

    def check_complete(self) -> None:
        """FINAL -> DONE (Succeeded) once every worker of the final round reported Completed."""
        ctx = self._ctx
        state = ctx.state
        if not isinstance(state, Final) or not ctx.book.all_training(state.participants, WorkerState.COMPLETED):
            return
        ctx.state = Done(run=state.run, model=state.model, round=state.round)
        status = ctx.status
        status.phase = Phase.SUCCEEDED
        status.completion_time = now()
        left_out = [p for p in ctx.facts.participants if p not in state.participants]
        status.message = completed_message(state.round, left_out)
        if (
            state.run.privacy is not None
            and state.run.budget_spent(state.round)
            and state.round < state.run.plan.exit_round
        ):
            status.message += f" ({budget_message(state.run.privacy, state.round)})"
        ctx.book.condition(ConditionType.COMPLETE, "Completed", "FederatedLearningJob completed")
        ctx.event("Normal", "Completed", "FederatedLearningJob completed")
        ctx.signal("finish")

    def fail(self, reason: str, message: str) -> None:
        """Any stage -> DONE (Failed): the script is stopped and the plan cleared, so the edges stop too."""
        ctx = self._ctx
        state = ctx.state
        if isinstance(state, Done):
            return
        ctx.state = Done(run=state.run, model=state.model, round=state.round)
        status = ctx.status
        status.phase = Phase.FAILED
        status.message = message
        ctx.book.condition(ConditionType.FAILED, reason, message)
        ctx.event("Warning", reason, message)
        ctx.signal("stop")
        self._intake.discard()
        if state.run is not None:
            # No plan, no work: the edges stop this job's training scripts.
            ctx.safely(ctx.port.publish_plan, ctx.facts.name, None)

    def close(self, closing: Training) -> None:
        """Close the open round: record it, commit its global model, then open the next or go FINAL."""
        ctx, facts = self._ctx, self._ctx.facts
        r, run = closing.round, closing.run
        try:
            weights, server, audit = self._aggregate(closing)
        except StrategyError as exc:
            self.fail("AggregationFailed", f"round {r}: {exc}")
            return
        final = run.is_final(r)
        total = closing.acc.total_samples
        counted = list(closing.counted)
        # A buffer waits for no one in particular: nobody is "missing" from an asynchronous round.
        # (Hierarchical: a site's edges its partial left out are missing too, though the round no longer waited.)
        missing = [p for p in facts.participants if p not in closing.counted] if facts.asynchrony is None else []
        stamp = now()
        self._committer.folded[r] = [(n, closing.transfers.get(n, "")) for n in counted]
        self._committer.folded[r] += list(closing.partials.items())  # a replayed partial is answered as stored
        self._committer.origins[r] = {n: o for n, o in closing.origins.items() if o != r}
        model = closing.model.evolved(self._committer.published(weights))
        blob = self._committer.encode(r, model.arrays, model.names, total)
        record = self._record(closing, counted, missing, stamp, len(blob), audit=audit)
        spent = run.budget_spent(r) and r < run.plan.exit_round
        if run.privacy is not None:
            ctx.status.privacy = run.privacy.status(r, budget_spent=spent)
            record.epsilon = ctx.status.privacy.epsilon
        ctx.close_round(record)
        if spent and run.privacy is not None:
            ctx.event("Normal", "PrivacyBudgetSpent", budget_message(run.privacy, r))
        ctx.book.condition(ConditionType.TRAINING, "DoTraining", f"Round {r} reaches at {stamp.isoformat()}")
        ctx.status.current_round = r
        if missing:
            self._closed_without(closing, missing)
        stale = [r - closing.origins.get(n, r) for n in counted]
        ctx.event(
            "Normal",
            "RoundClosed",
            f"round {r}: {run.strategy.describe()} of {len(counted)} updates, {total} samples"
            + (f" (staleness {', '.join(map(str, stale))})" if facts.asynchrony is not None else "")
            + (f", {len(audit.excluded)} excluded ({', '.join(audit.excluded)})" if audit.excluded else "")
            + (" (final)" if final else ""),
        )
        if final:
            ctx.status.message = final_message(r)  # the checkpoint of the final round says so too
        try:
            self._committer.commit_blob(run, r, blob, total, final=final, server=server)
        except PublishFailedError as exc:
            self.fail("PublishFailed", str(exc))
            return
        self._committer.bases.add(r, model.arrays)
        # Incomplete transfers the next round cannot take any more (asynchronous: too stale for it).
        self._intake.discard(r - (facts.asynchrony.max_staleness if facts.asynchrony is not None else 0))
        if not final:
            self.open_round(run, model, r + 1, server)
            return
        finished = Final(run=run, model=model, round=r, participants=counted)
        ctx.state = finished
        self._save_model(finished)
        left_out = [p for p in facts.participants if p not in counted]
        if left_out:
            ctx.event(
                "Warning",
                "LeftOutOfFinalRound",
                f"{', '.join(left_out)} did not take part in the final round {r}; the job completes without "
                "waiting for them (they catch up from the retained final model)",
            )
        self.check_complete()

    def _aggregate(self, closing: Training) -> tuple[list[npt.NDArray[Any]], ServerState | None, RobustResult]:
        """The round's global weights, the server state after it and the robust rule's audit (StrategyError)."""
        run = closing.run
        if isinstance(run.strategy, RobustStrategy):
            audit = robust_close(self._ctx, run.strategy, closing, self.updates.base_of)
            return audit.weights, closing.server, audit
        acc = closing.acc
        if run.privacy is not None:
            # Fresh OS entropy every close: noise that could be replayed from a seed protects nothing.
            acc = run.privacy.close(acc, closing.model.arrays, np.random.default_rng())
        weights, server = run.strategy.step(acc, closing.model.arrays, closing.server)
        return weights, server, RobustResult(weights=[], notes=dict(closing.clipped))

    def _closed_without(self, closing: Training, missing: list[str]) -> None:
        """The Warning event of a round closed with participants missing: who, after how long, and why."""
        ctx, facts = self._ctx, self._ctx.facts
        waited = ctx.clock - closing.opened
        offline = [
            f"{node} offline since {ctx.offline_since[node][1]:%H:%M:%S} UTC" for node in missing if self.absent(node)
        ]
        why = f"{'; '.join(offline)}; " if offline else ""
        early = "" if closing.deadline_passed or facts.round_deadline is None else ", before its deadline"
        ctx.event(
            "Warning",
            "RoundClosedWithout",
            f"round {closing.round} closed without {', '.join(missing)} after {waited:.0f} s{early} "
            f"({why}{len(closing.counted)}/{len(facts.participants)} updates, quorum {facts.min_participants})",
        )

    def _record(
        self,
        closing: Training,
        counted: list[str],
        missing: list[str],
        closed_at: datetime,
        bytes_out: int,
        *,
        audit: RobustResult,
    ) -> RoundRecord:
        """The record of a closing round: who, how much, how long, and each worker's upload."""
        asynchronous = self._ctx.facts.asynchrony is not None
        workers = []
        for node in counted:
            size, seconds = closing.received.get(node, (None, None))
            workers.append(
                WorkerRound(
                    node=node,
                    num_samples=closing.counted[node],
                    upload_bytes=size,
                    upload_seconds=round(seconds, 3) if seconds is not None else None,
                    robust=audit.notes.get(node),
                    trained_from=closing.origins.get(node, closing.round) - 1 if asynchronous else None,
                    staleness=closing.round - closing.origins.get(node, closing.round) if asynchronous else None,
                )
            )
        return RoundRecord(
            round=closing.round,
            participants=counted,
            total_samples=closing.acc.total_samples,
            opened_at=closing.opened_at,
            closed_at=closed_at,
            duration_seconds=round(max(0.0, self._ctx.clock - closing.opened), 3),
            bytes_in=sum(size for size, _ in closing.received.values()),
            bytes_out=bytes_out,
            missing=missing,
            excluded=len(audit.excluded) if isinstance(closing.run.strategy, RobustStrategy) else None,
            stale=sum(closing.origins.get(n, closing.round) != closing.round for n in counted)
            if asynchronous
            else None,
            workers=workers,
        )

    def _commit(self, run: Run, round_: int, model: GlobalWeights, num_samples: int, *, final: bool) -> bool:
        """Commit a closed round; a global model that cannot be published fails the job (False)."""
        try:
            self._committer.commit(run, round_, model.arrays, model.names, num_samples, final=final)
        except PublishFailedError as exc:
            self.fail("PublishFailed", str(exc))
            return False
        return True

    def _save_model(self, final: Final) -> None:
        """Write the final weights under the job's Model url (a failure is a Warning: the edges have them)."""
        ctx, facts = self._ctx, self._ctx.facts
        model = final.model
        meta = {
            "job": facts.name,
            "namespace": facts.namespace,
            "uid": facts.uid,
            "round": final.round,
            "aggregation": final.run.strategy.name,
            "participants": facts.participants,
            "digest": model.digest,
            # The last closed round's aggregated training metrics (empty when none); its federated
            # evaluation arrives after this is written, on the round's record.
            "metrics": dict(ctx.status.rounds[-1].train) if ctx.status.rounds else {},
            "tensors": [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in model.layout],
            "savedAt": now().isoformat(),
        }
        try:
            path = ctx.port.write_model(FinalModel(facts.name, facts.model, model.arrays, model.names, meta))
        except AggregatorError as exc:
            ctx.event("Warning", "ModelNotSaved", f"cannot write the final model under the Model url: {exc}")
            return
        ctx.status.model_path = path
        ctx.event("Normal", "ModelSaved", f"final model written to {path}")

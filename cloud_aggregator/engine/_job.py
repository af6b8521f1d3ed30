"""`Job`: one job of this aggregator as the controller drives it, from script start to Succeeded or Failed.

A thin facade: each method is one received message or timer tick, handed to the part that owns it:
the aggregation script and the STARTING stage to `AggregationScript`, transfers to `Intake`, rounds to
`RoundEngine`, restarts to `Recovery`, worker reports to `Workers`. They share one `JobContext` (the
job's facts, stage and status). Every effect goes through the `Port`; the status is published after
each change. A job is made from its `JobFacts` (`JobFacts.of`: the spec with its references resolved,
plus what the controller fixed: node, uid, `JobSettings`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy.typing as npt

from cloud_aggregator._errors import AggregatorError
from cloud_aggregator._strategy import Strategy
from cloud_aggregator.engine._commit import Committer
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._facts import JobFacts
from cloud_aggregator.engine._intake import Intake
from cloud_aggregator.engine._port import Port
from cloud_aggregator.engine._recovery import Recovery
from cloud_aggregator.engine._rounds import RoundEngine
from cloud_aggregator.engine._script import AggregationScript
from cloud_aggregator.engine._sites import SiteView
from cloud_aggregator.engine._stages import Done, Final, Stage, Starting, Training
from cloud_aggregator.engine._workers import Workers
from schemas import (
    JobPlan,
    JobStatus,
    Kind,
    NodeState,
    Phase,
    SiteStatus,
    TransferManifest,
    WireError,
    WorkerFrame,
    WorkerStatus,
    decode_weights,
)

__all__ = ["Job"]


class Job:
    """One FederatedLearningJob run by this aggregator, from script start to Succeeded or Failed."""

    def __init__(self, facts: JobFacts, port: Port, previous_status: JobStatus | None = None) -> None:
        """`previous_status`: the retained status of the run a resumed job (`facts.resume`) continues."""
        self._ctx = ctx = JobContext(facts, port)
        self._committer = committer = Committer(ctx)
        self._intake = Intake(ctx, deliver=self._deliver, memory_budget=facts.settings.transfer_memory)
        self._rounds = RoundEngine(ctx, self._intake, committer)
        recovery = Recovery(ctx, self._intake, committer, self._rounds, previous_status)
        self._workers = Workers(ctx, self._rounds)
        self._script = AggregationScript(ctx, self._intake, self._rounds, recovery, self._workers)
        self._sites = SiteView(ctx)

    # -- queries ---------------------------------------------------------------------------------

    @property
    def facts(self) -> JobFacts:
        """What the spec and the controller fixed for this run: `facts.name`, `.uid`, `.spec`, `.participants`,
        `.round_deadline`, `.min_participants`, the models and the planned workers."""
        return self._ctx.facts

    @property
    def stage(self) -> Stage:
        return self._ctx.state.stage

    @property
    def round(self) -> int:
        """The round in progress (0 until the round-0 model is chosen)."""
        return self._ctx.state.round

    @property
    def finished(self) -> bool:
        """Succeeded or failed (the status says which)."""
        return self.stage is Stage.DONE

    @property
    def status(self) -> JobStatus:
        """The job's status document (owned by this engine; published on every change)."""
        return self._ctx.status

    @property
    def plan(self) -> JobPlan | None:
        run = self._ctx.state.run
        return run.plan if run is not None else None

    @property
    def strategy(self) -> Strategy | None:
        run = self._ctx.state.run
        return run.strategy if run is not None else None

    @property
    def exit_round(self) -> int:
        """How many rounds the run aggregates (0 until the script's config)."""
        run = self._ctx.state.run
        return run.plan.exit_round if run is not None else 0

    @property
    def global_weights(self) -> list[npt.NDArray[Any]] | None:
        """The current global model (a copy): round 0's after INIT, else the last closed round's."""
        model = self._ctx.state.model
        return None if model is None else [a.copy() for a in model.arrays]

    @property
    def counted(self) -> list[str]:
        """The workers whose update counts in `round`: the open round's so far, or the final round's."""
        state = self._ctx.state
        if isinstance(state, Training):
            return list(state.counted)
        return list(state.participants) if isinstance(state, Final) else []

    def wants_transfer(self, round_: int) -> bool:
        """Whether chunks of a transfer for `round_` are worth keeping (a cheap filter before assembly)."""
        return self._intake.wants(round_)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, now_s: float) -> None:
        """Start the aggregation script; the job waits for its `config` frame until `config_timeout`."""
        self._script.start(now_s)

    def on_script_frame(self, frame: WorkerFrame, now_s: float) -> None:
        """A frame from the aggregation script: `config` starts the job, `error` fails it."""
        self._script.on_frame(frame)

    def on_script_exit(self, code: int | None, tail: str, now_s: float) -> None:
        """The aggregation script exited (`code` None: unknown). Before the job ended, that fails the job."""
        self._script.on_exit(code, tail)

    def tick(self, now_s: float) -> None:
        """Timers: the config deadline, resume requests for stalled transfers, the round deadline, a deferred
        status publication."""
        self._ctx.advance(now_s)
        if self._script.tick(now_s):
            return
        self._intake.tick(now_s)
        self._rounds.tick(now_s)
        self._ctx.flush_due(now_s)

    def delete(self) -> None:
        """The job's spec was deleted: stop everything and clear the job's retained plan, status and globals."""
        ctx, name, port = self._ctx, self._ctx.facts.name, self._ctx.port
        state = ctx.state
        if not isinstance(state, Done):
            ctx.state = Done(run=state.run, model=state.model, round=state.round)
        ctx.signal("stop")
        self._intake.discard()
        ctx.safely(port.clear_state, name)
        ctx.safely(port.publish_plan, name, None)
        ctx.safely(port.clear_globals, name)
        if state.run is not None and state.run.secagg is not None and state.round > 0:
            self._rounds.secagg.clear(state.round)  # the retained state and messages of its last round
        # Every round record this run published (rounds 1..current_round; the status says how far it got).
        for round_ in range(1, self.status.current_round + 1):
            ctx.safely(port.publish_round_record, name, round_, None)
        ctx.safely(port.publish_status, Kind.JOB, name, None)
        ctx.log.info("job deleted")

    def republish_global(self, held: Callable[[int], bool]) -> None:
        """A broker that lost its retained state may have lost the last global model, which an edge that
        did not receive it yet needs: unless the broker `held` that round's manifest, publish it again from
        the checkpoint (the global model of the last closed round, as it was published)."""
        ctx = self._ctx
        if self.finished and self.status.phase is not Phase.SUCCEEDED:
            return  # a failed job's edges stopped; a worker left out of a Succeeded job's last round catches up
        try:
            loaded = ctx.port.load_checkpoint(ctx.facts.name)
            if loaded is None or loaded[0].uid != ctx.facts.uid or held(loaded[0].closed_round):
                return
            checkpoint, blob = loaded
            header, _ = decode_weights(blob)
            final = checkpoint.closed_round >= checkpoint.exit_round
            ctx.log.warning("the broker lost the global model; republished", global_round=checkpoint.closed_round)
            self._committer.publish_global(checkpoint.closed_round, blob, header.num_samples, final=final)
        except (AggregatorError, WireError) as exc:
            ctx.event("Warning", "GlobalNotRestored", f"the global model could not be published again: {exc}")
            ctx.publish()

    def republish_secagg(self) -> None:
        """A broker that may have lost its retained state: the open secure aggregation round's state again
        (the edges take the same state twice as once)."""
        self._rounds.secagg.republish()

    def reject_spec(self, message: str) -> None:
        """A different or invalid spec was published for this job; it goes on unchanged."""
        self._ctx.event("Warning", "SpecRejected", message)
        self._ctx.publish()

    def fail(self, reason: str, message: str) -> None:
        """Fail the job from outside (e.g. the service cannot go on with it)."""
        self._rounds.fail(reason, message)
        self._ctx.publish()

    # -- transfers -------------------------------------------------------------------------------

    def on_update_manifest(self, node: str, round_: int, manifest: TransferManifest, now_s: float) -> None:
        """An update or init manifest: answered at once when already stored or refused, else assembled."""
        self._intake.on_manifest(node, round_, manifest, now_s)

    def on_malformed_manifest(self, node: str, round_: int, transfer: str, reason: str) -> None:
        """A manifest on this job's update topic that is not a valid manifest: refused, and said so."""
        self._intake.on_malformed(node, round_, transfer, reason)

    def on_update_chunk(
        self, node: str, round_: int, transfer: str, index: int, data: bytes, *, now_s: float, digest: str | None = None
    ) -> None:
        """One chunk of an update transfer; the transfer is handled when its last chunk arrives. `digest`: the
        chunk's SHA-256 (hex) if the caller hashed it already (the service does, for the ledger too)."""
        self._intake.on_chunk(node, round_, transfer, index, data, now_s=now_s, digest=digest)

    def reject_transfer(self, node: str, manifest: TransferManifest, reason: str) -> None:
        """The medium could not take this transfer (e.g. larger than the receiver's limit): reject it."""
        self._intake.refuse(node, manifest, reason)

    def on_init_transfer(self, node: str, round_: int, manifest: TransferManifest, blob: bytes | memoryview) -> None:
        """A complete `init` transfer: the first valid one becomes the global model of round 0."""
        self._rounds.on_init(node, round_, manifest, blob)

    def on_update(self, node: str, round_: int, manifest: TransferManifest, blob: bytes) -> None:
        """A complete `update` transfer: checked, stored, counted once per worker and round, folded on arrival."""
        self._rounds.updates.on_update(node, round_, manifest, blob)

    def on_secagg(self, step: str, node: str, round_: int, topic: str, payload: bytes, *, now_s: float) -> None:
        """An edge's secure aggregation message (`step`: keys, shares or unmask) on `topic`; while the job starts
        (a restart: the retained ones arrive at the subscription) it waits for the round to be restored."""
        self._ctx.advance(now_s)  # a phase's deadline counts from the arrival that started it
        state = self._ctx.state
        if isinstance(state, Starting):
            state.early_secagg.append((step, node, round_, topic, payload))
        else:
            self._rounds.secagg.on_message(step, node, round_, topic, payload)

    def _deliver(
        self, node: str, round_: int, manifest: TransferManifest, blob: bytes | memoryview, payload_sha256: str | None
    ) -> None:
        # The intake is made before the round engine (which needs it), so it delivers through here.
        self._rounds.on_transfer(node, round_, manifest, blob, payload_sha256)

    # -- workers and nodes -----------------------------------------------------------------------

    def on_worker_status(self, node: str, worker: WorkerStatus, *, retained: bool) -> None:
        """A training worker's own status: folded into the job status; Failed fails the job."""
        self._workers.on_worker_status(node, worker, retained=retained)

    def on_node_status(self, node: str, state: NodeState, now_s: float) -> None:
        """A participant's node went offline (its last will) or came back."""
        self._workers.on_node_status(node, state, now_s)

    def on_sites(self, sites: list[SiteStatus], now_s: float) -> None:
        """The factory sites as the controller sees them (`SiteMap.statuses`): whether the sites of this job's
        edges are reachable, into the status and the event stream (`SiteView`)."""
        self._ctx.advance(now_s)
        self._sites.show(sites)

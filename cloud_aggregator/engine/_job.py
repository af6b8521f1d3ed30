"""`Job`: one job of this aggregator as the controller drives it, from script start to Succeeded or Failed.

A thin facade: it runs the STARTING stage itself (start the aggregation script, wait for its `config`
frame, publish the plan) and hands everything else to the part that owns it: transfers to `Intake`,
rounds to `RoundEngine`, restarts to `Recovery`, worker reports to `Workers`. Every method is one
received message or timer tick; every effect goes through the `Port`; the status is published after
each change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from cloud_aggregator._errors import AggregatorError, StrategyError
from cloud_aggregator._strategy import Strategy, get_strategy
from cloud_aggregator.engine._commit import Committer
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._facts import DEFAULT_RESUME_AFTER, JobFacts
from cloud_aggregator.engine._intake import Intake
from cloud_aggregator.engine._port import Port, ScriptRequest
from cloud_aggregator.engine._recovery import Recovery
from cloud_aggregator.engine._rounds import RoundEngine
from cloud_aggregator.engine._stages import Done, Init, Run, Stage, Starting, Training
from cloud_aggregator.engine._workers import Workers
from schemas import (
    ConditionType,
    Dataset,
    FederatedLearningJob,
    JobPlan,
    JobStatus,
    Kind,
    Model,
    ModelRef,
    NodeState,
    PathEscapeError,
    Phase,
    TransferManifest,
    WorkerFrame,
    WorkerState,
    WorkerStatus,
    now,
)

__all__ = ["DEFAULT_AGGREGATION", "TAIL_CHARS", "Job"]

DEFAULT_AGGREGATION = "FedAvg"
TAIL_CHARS = 1500


class Job:
    """One FederatedLearningJob run by this aggregator, from script start to Succeeded or Failed."""

    def __init__(
        self,
        *,
        spec: FederatedLearningJob,
        datasets: Mapping[str, Dataset],
        models: Mapping[str, Model],
        node: str,
        port: Port,
        uid: str,
        chunk_size: int,
        config_timeout: float = 120.0,
        resume_after: float = DEFAULT_RESUME_AFTER,
        resume: bool = False,
        previous_status: JobStatus | None = None,
    ) -> None:
        facts = JobFacts.of(
            spec,
            datasets,
            models,
            node=node,
            uid=uid,
            chunk_size=chunk_size,
            config_timeout=config_timeout,
            resume_after=resume_after,
            resume=resume,
        )
        self._ctx = ctx = JobContext(facts, port)
        committer = Committer(ctx)
        self._intake = Intake(ctx, deliver=self._deliver)
        self._rounds = RoundEngine(ctx, self._intake, committer)
        self._recovery = Recovery(ctx, self._intake, committer, self._rounds, previous_status)
        self._workers = Workers(ctx, self._rounds)

    # -- queries ---------------------------------------------------------------------------------

    @property
    def spec(self) -> FederatedLearningJob:
        return self._ctx.facts.spec

    @property
    def name(self) -> str:
        return self._ctx.facts.name

    @property
    def namespace(self) -> str:
        return self._ctx.facts.namespace

    @property
    def uid(self) -> str:
        return self._ctx.facts.uid

    @property
    def node(self) -> str:
        """The aggregation node (this one)."""
        return self._ctx.facts.node

    @property
    def model(self) -> ModelRef:
        return self._ctx.facts.model

    @property
    def pretrained_model(self) -> ModelRef | None:
        return self._ctx.facts.pretrained_model

    @property
    def participants(self) -> list[str]:
        return self._ctx.facts.participants

    @property
    def round_deadline(self) -> float | None:
        return self._ctx.facts.round_deadline

    @property
    def min_participants(self) -> int:
        return self._ctx.facts.min_participants

    @property
    def stage(self) -> Stage:
        return self._ctx.state.stage

    @property
    def round(self) -> int:
        """The round in progress (0 until the round-0 model is chosen)."""
        return self._ctx.state.round

    @property
    def finished(self) -> bool:
        return self._ctx.finished

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
        return run.exit_round if run is not None else 0

    @property
    def global_weights(self) -> list[npt.NDArray[Any]] | None:
        """The current global model (a copy): round 0's after INIT, else the last closed round's."""
        model = self._ctx.state.model
        return None if model is None else [a.copy() for a in model.arrays]

    @property
    def counted(self) -> dict[str, int]:
        """The workers whose update the open round counted, with their sample counts (a copy)."""
        state = self._ctx.state
        return dict(state.counted) if isinstance(state, Training) else {}

    def wants_transfer(self, round_: int) -> bool:
        """Whether chunks of a transfer for `round_` are worth keeping (a cheap filter before assembly)."""
        return self._intake.wants(round_)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, now_s: float) -> None:
        """Start the aggregation script; the job waits for its `config` frame until `config_timeout`."""
        ctx, facts, port = self._ctx, self._ctx.facts, self._ctx.port
        ctx.clock = now_s
        starting = Starting(config_deadline=now_s + facts.config_timeout)
        ctx.state = starting
        if facts.resume:
            starting.checkpoint = self._recovery.load()
        else:
            ctx.safely(port.clear_state, facts.name)
        worker = facts.aggregation_worker
        ctx.event("Normal", "Starting", f"starting aggregation script {worker.script_dir}/{worker.script_boot_file}")
        try:
            if not facts.resume:
                port.clear_globals(facts.name)
            port.start_script(
                ScriptRequest(
                    job=facts.name,
                    uid=facts.uid,
                    namespace=facts.namespace,
                    worker=worker,
                    model=facts.model,
                    pretrained_model=facts.pretrained_model,
                    participants_count=len(facts.participants),
                )
            )
        except (AggregatorError, PathEscapeError) as exc:
            ctx.set_agg_worker(WorkerState.FAILED, str(exc))
            self._rounds.fail("AggregationWorkerFailed", f"cannot start the aggregation script: {exc}")
        ctx.publish()

    def on_script_frame(self, frame: WorkerFrame, now_s: float) -> None:
        """A frame from the aggregation script: `config` starts the job, `error` fails it."""
        ctx = self._ctx
        if ctx.finished:
            ctx.log.info("frame from the aggregation script after the job ended", frame=frame.type)
            return
        if frame.type == "config":
            state = ctx.state
            if not isinstance(state, Starting):
                ctx.log.warning("the aggregation script sent config twice; the first one stands")
                return
            self._configure(state, frame)
        elif frame.type == "error":
            ctx.set_agg_worker(WorkerState.FAILED, frame.message)
            self._rounds.fail("AggregationWorkerFailed", f"the aggregation script reported an error: {frame.message}")
        else:
            ctx.log.warning("unexpected frame from the aggregation script", frame=frame.type)
            return
        ctx.publish()

    def on_script_exit(self, code: int | None, tail: str, now_s: float) -> None:
        """The aggregation script exited (`code` None: unknown). Before the job ended, that fails the job."""
        ctx = self._ctx
        tail = tail.strip()[-TAIL_CHARS:]
        said = f": {tail}" if tail else " (no output)"
        state = ctx.state
        if isinstance(state, Done):
            if code == 0 or (ctx.signalled is not None and code is not None and code < 0):
                ctx.set_agg_worker(WorkerState.COMPLETED, f"exited with code {code}")
            else:
                ctx.set_agg_worker(WorkerState.FAILED, f"exited with code {code}{said}")
            ctx.log.info("aggregation script exited", code=code)
        elif isinstance(state, Starting):
            ctx.set_agg_worker(WorkerState.FAILED, f"exited with code {code}")
            self._rounds.fail(
                "AggregationWorkerFailed",
                f"the aggregation script exited with code {code} before sending its config "
                f"(does it call AggregationServer(...).start()?){said}",
            )
        elif code == 0:
            ctx.set_agg_worker(WorkerState.COMPLETED, "exited with code 0 before the job finished")
            ctx.event("Warning", "AggregationScriptExited", "the aggregation script exited (code 0); the job goes on")
        else:
            ctx.set_agg_worker(WorkerState.FAILED, f"exited with code {code}")
            self._rounds.fail("AggregationWorkerFailed", f"the aggregation script exited with code {code}{said}")
        ctx.publish()

    def tick(self, now_s: float) -> None:
        """Timers: the config deadline, resume requests for stalled transfers, the round deadline."""
        ctx = self._ctx
        ctx.advance(now_s)
        state = ctx.state
        if isinstance(state, Starting) and now_s >= state.config_deadline:
            ctx.set_agg_worker(WorkerState.FAILED, "sent no config")
            self._rounds.fail(
                "AggregationWorkerFailed",
                f"the aggregation script sent no config within {ctx.facts.config_timeout:g} s "
                "(does it call AggregationServer(...).start()?)",
            )
            ctx.publish()
            return
        self._intake.tick(now_s)
        self._rounds.tick(now_s)

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
        ctx.safely(port.publish_status, Kind.JOB, name, None)
        ctx.log.info("job deleted")

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

    def on_update_chunk(self, node: str, round_: int, transfer: str, index: int, data: bytes, *, now_s: float) -> None:
        """One chunk of an update transfer; the transfer is handled when its last chunk arrives."""
        self._intake.on_chunk(node, round_, transfer, index, data, now_s=now_s)

    def reject_transfer(self, node: str, manifest: TransferManifest, reason: str) -> None:
        """The medium could not take this transfer (e.g. larger than the receiver's limit): reject it."""
        self._intake.refuse(node, manifest, reason)

    def on_init_transfer(self, node: str, round_: int, manifest: TransferManifest, blob: bytes) -> None:
        """A complete `init` transfer: the first valid one becomes the global model of round 0."""
        self._rounds.on_init(node, round_, manifest, blob)

    def on_update(self, node: str, round_: int, manifest: TransferManifest, blob: bytes) -> None:
        """A complete `update` transfer: checked, stored, counted once per worker and round, folded on arrival."""
        self._rounds.on_update(node, round_, manifest, blob)

    def _deliver(self, node: str, round_: int, manifest: TransferManifest, blob: bytes) -> None:
        # The intake is made before the round engine (which needs it), so it delivers through here.
        self._rounds.on_transfer(node, round_, manifest, blob)

    # -- workers and nodes -----------------------------------------------------------------------

    def on_worker_status(self, node: str, worker: WorkerStatus, *, retained: bool) -> None:
        """A training worker's own status: folded into the job status; Failed fails the job."""
        self._workers.on_worker_status(node, worker, retained=retained)

    def on_node_status(self, node: str, state: NodeState) -> None:
        """A participant's node went offline (its last will) or came back."""
        self._workers.on_node_status(node, state)

    # -- STARTING -> INIT ------------------------------------------------------------------------

    def _configure(self, starting: Starting, frame: WorkerFrame) -> None:
        """The script's config: the strategy and exit_round, the plan published, then INIT (or resume)."""
        ctx, facts = self._ctx, self._ctx.facts
        try:
            strategy = get_strategy(frame.aggregation or DEFAULT_AGGREGATION)
        except StrategyError as exc:
            ctx.set_agg_worker(WorkerState.FAILED, str(exc))
            self._rounds.fail("UnknownAggregation", str(exc))
            return
        exit_round = max(int(frame.exit_round or 1), 1)
        checkpoint = starting.checkpoint[0] if starting.checkpoint else None
        if checkpoint is not None and checkpoint.exit_round != exit_round:
            ctx.event(
                "Warning",
                "ExitRoundChanged",
                f"the aggregation script says exit_round={exit_round}, the checkpoint's run has "
                f"{checkpoint.exit_round}; the run keeps {checkpoint.exit_round}",
            )
            exit_round = checkpoint.exit_round
        count = frame.participants_count
        if count is not None and count != len(facts.participants):
            ctx.event(
                "Warning",
                "ParticipantsCount",
                f"the aggregation script says participants_count={count}, the job has "
                f"{len(facts.participants)} training workers; every training worker takes part in each round",
            )
        plan = JobPlan(
            job=facts.name,
            namespace=facts.namespace,
            uid=facts.uid,
            aggregation_node=facts.node,
            aggregation=strategy.name,
            exit_round=exit_round,
            participants=list(facts.participants),
            model=facts.model,
            pretrained_model=facts.pretrained_model,
            workers=facts.planned,
            chunk_size=facts.chunk_size,
        )
        run = Run(strategy=strategy, plan=plan)
        # The plan counts as issued from here on: failing the job clears it, also when publishing it failed.
        ctx.state = Init(run)
        try:
            ctx.port.publish_plan(facts.name, plan)
        except AggregatorError as exc:
            self._rounds.fail("PublishFailed", f"cannot publish the job plan: {exc}")
            return
        if starting.checkpoint is not None:
            self._recovery.resume(run, *starting.checkpoint)
        else:
            self._running(run)
        for node, (worker, retained) in starting.early_statuses.items():
            if not ctx.finished:
                self.on_worker_status(node, worker, retained=retained)
        for (round_, node, _), manifest in starting.early_manifests.items():
            if not ctx.finished:
                self.on_update_manifest(node, round_, manifest, ctx.clock)

    def _running(self, run: Run) -> None:
        """The job runs (a new run, or one resumed without a checkpoint): round 0 waits for an init."""
        ctx, facts = self._ctx, self._ctx.facts
        status = ctx.status
        status.phase = Phase.RUNNING
        if status.start_time is None:
            status.start_time = now()
        status.exit_round = run.exit_round
        status.message = f"round 0: waiting for an initial model from {', '.join(facts.participants)}"
        ctx.book.condition(ConditionType.TRAINING, "DoTraining", "waiting for the round-0 model")
        ctx.set_agg_worker(WorkerState.READY, f"{run.strategy.name}, {run.exit_round} rounds")
        ctx.event(
            "Normal",
            "Started" if not facts.resume else "Resumed",
            f"plan published: {run.strategy.name}, {run.exit_round} rounds, participants "
            f"{', '.join(facts.participants)}" + (" (resumed without a checkpoint: round 0)" if facts.resume else ""),
        )

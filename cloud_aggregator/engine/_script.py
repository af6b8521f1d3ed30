"""The aggregation script's side of a job: starting it, its config (STARTING -> INIT), its errors and its exit.

The script is Sedna's aggregation worker: `AggregationServer(...).start()` sends one `config` frame
(aggregation, exit_round, participants_count) and waits. That frame must arrive within
`config_timeout`; then the strategy is chosen (the frame's aggregation name, Sedna's
``aggregation_algorithm`` parameter in the example's script; its hyper-parameters from the aggregation
worker's parameters; with it the job's differential privacy, `Privacy`, and secure aggregation,
`SecAggSettings`, each refused when it cannot hold),
the plan is published (retained) and the job runs, or resumes from its checkpoint. An `error` frame, or an exit before the job ended, fails the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from cloud_aggregator._errors import AggregatorError, StrategyError
from cloud_aggregator._privacy import Privacy
from cloud_aggregator._robust import RobustStrategy
from cloud_aggregator._strategy import Strategy, get_strategy
from cloud_aggregator.engine._checkpoint import Checkpoint
from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._hier import Hierarchy, hierarchy_conflict, hierarchy_of, plan_parameters
from cloud_aggregator.engine._intake import Intake
from cloud_aggregator.engine._port import ScriptRequest
from cloud_aggregator.engine._recovery import Recovery
from cloud_aggregator.engine._rounds import RoundEngine
from cloud_aggregator.engine._stages import Done, Init, Run, Starting
from cloud_aggregator.engine._status import named
from cloud_aggregator.engine._workers import Workers
from schemas import (
    MAX_EXIT_ROUND,
    ConditionType,
    JobPlan,
    NodeState,
    PathEscapeError,
    Phase,
    SecAggSettings,
    WorkerFrame,
    WorkerState,
    now,
    update_compression,
)

__all__ = ["DEFAULT_AGGREGATION", "TAIL_CHARS", "AggregationScript"]

DEFAULT_AGGREGATION = "FedAvg"
TAIL_CHARS = 1500
_START_HINT = "(does it call AggregationServer(...).start()?)"


@dataclass(frozen=True)
class AggregationScript:
    """Starts one job's aggregation script and turns what the script says into the job's stages.

    It holds no state of its own, only the parts of the job it drives (the stage lives in `ctx`)."""

    ctx: JobContext
    intake: Intake
    rounds: RoundEngine
    recovery: Recovery
    workers: Workers

    def start(self, now_s: float) -> None:
        """STARTING: start the script; its `config` frame is due within `config_timeout`."""
        ctx, facts, port = self.ctx, self.ctx.facts, self.ctx.port
        ctx.clock = now_s
        starting = Starting(config_deadline=now_s + facts.settings.config_timeout)
        ctx.state = starting
        if facts.resume:
            starting.checkpoint = self.recovery.load()
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
            self.rounds.fail("AggregationWorkerFailed", f"cannot start the aggregation script: {exc}")
        ctx.publish()

    def on_frame(self, frame: WorkerFrame) -> None:
        """A frame from the script: `config` starts the job, `error` fails it."""
        ctx = self.ctx
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
            self.rounds.fail("AggregationWorkerFailed", f"the aggregation script reported an error: {frame.message}")
        else:
            ctx.log.warning("unexpected frame from the aggregation script", frame=frame.type)
            return
        ctx.publish()

    def on_exit(self, code: int | None, tail: str) -> None:
        """The script exited (`code` None: unknown). Before the job ended, that fails the job."""
        ctx = self.ctx
        tail = tail.strip()[-TAIL_CHARS:]
        said = f": {tail}" if tail else " (no output)"
        state = ctx.state
        if isinstance(state, Done):
            # After `finish` or `stop`, being killed by a signal is how a script that hangs ends.
            if code == 0 or (ctx.signalled is not None and code is not None and code < 0):
                ctx.set_agg_worker(WorkerState.COMPLETED, f"exited with code {code}")
            else:
                ctx.set_agg_worker(WorkerState.FAILED, f"exited with code {code}{said}")
            ctx.log.info("aggregation script exited", code=code)
        elif isinstance(state, Starting):
            ctx.set_agg_worker(WorkerState.FAILED, f"exited with code {code}")
            self.rounds.fail(
                "AggregationWorkerFailed",
                f"the aggregation script exited with code {code} before sending its config {_START_HINT}{said}",
            )
        elif code == 0:
            ctx.set_agg_worker(WorkerState.COMPLETED, "exited with code 0 before the job finished")
            ctx.event("Warning", "AggregationScriptExited", "the aggregation script exited (code 0); the job goes on")
        else:
            ctx.set_agg_worker(WorkerState.FAILED, f"exited with code {code}")
            self.rounds.fail("AggregationWorkerFailed", f"the aggregation script exited with code {code}{said}")
        ctx.publish()

    def tick(self, now_s: float) -> bool:
        """The config deadline: True when it passed now (the job failed; nothing else is due)."""
        ctx = self.ctx
        state = ctx.state
        if not isinstance(state, Starting) or now_s < state.config_deadline:
            return False
        ctx.set_agg_worker(WorkerState.FAILED, "sent no config")
        self.rounds.fail(
            "AggregationWorkerFailed",
            f"the aggregation script sent no config within {ctx.facts.settings.config_timeout:g} s {_START_HINT}",
        )
        ctx.publish()
        return True

    def _configure(self, starting: Starting, frame: WorkerFrame) -> None:
        """The script's config: the strategy and exit_round, the plan published, then INIT (or resume)."""
        ctx, facts = self.ctx, self.ctx.facts
        checkpoint = starting.checkpoint[0] if starting.checkpoint else None
        # Warnings said once the run's status is in place (a resume restores the checkpoint's status,
        # which would drop events said before it).
        warnings: list[tuple[str, str]] = []
        strategy = self._strategy(frame.aggregation or DEFAULT_AGGREGATION, checkpoint, warnings)
        if strategy is None:
            return
        exit_round = max(int(frame.exit_round or 1), 1)
        if checkpoint is not None and checkpoint.exit_round != exit_round:
            warnings.append(
                (
                    "ExitRoundChanged",
                    f"the aggregation script says exit_round={exit_round}, the checkpoint's run has "
                    f"{checkpoint.exit_round}; the run keeps {checkpoint.exit_round}",
                )
            )
            exit_round = checkpoint.exit_round
        if exit_round > MAX_EXIT_ROUND:  # the spec's bound; a plan past it would be refused by every edge
            said = "the checkpoint's run has" if checkpoint is not None else "the aggregation script says"
            message = f"{said} exit_round={exit_round}, over the limit of {MAX_EXIT_ROUND}"
            self._refuse("InvalidExitRound", message)
            return
        count = frame.participants_count
        if count is not None and count != len(facts.participants):
            warnings.append(
                (
                    "ParticipantsCount",
                    f"the aggregation script says participants_count={count}, the job has "
                    f"{len(facts.participants)} training workers; every training worker takes part in each round",
                )
            )
        privacy = self._privacy(strategy)
        if privacy is False:
            return
        secagg = self._secagg(strategy, privacy)
        if secagg is False:
            return
        hierarchy = self._hierarchy(strategy, privacy, secagg)
        if hierarchy is False:
            return
        online = starting.online - starting.offline
        plan = facts.plan(
            strategy.name, exit_round, _edge_parameters(privacy, secagg, hierarchy) or None, online=online
        )
        if facts.resume:
            plan = _same_init_source(plan, ctx.port.kept().plans.get(facts.name))
        run = Run(strategy=strategy, plan=plan, privacy=privacy, secagg=secagg)
        # The plan counts as issued from here on: failing the job clears it, also when publishing it failed.
        ctx.state = Init(run)
        try:
            ctx.port.publish_plan(facts.name, run.plan)
        except AggregatorError as exc:
            self.rounds.fail("PublishFailed", f"cannot publish the job plan: {exc}")
            return
        if starting.checkpoint is not None:
            self.recovery.resume(run, *starting.checkpoint)
        else:
            self._running(run)
        for reason, message in warnings:
            self.ctx.event("Warning", reason, message)
        self._replay(starting)

    def _replay(self, starting: Starting) -> None:
        """What arrived for this run while it was starting, in the order it came; then the offline nodes."""
        ctx = self.ctx
        for node, (worker, retained) in starting.early_statuses.items():
            if not ctx.finished:
                self.workers.on_worker_status(node, worker, retained=retained)
        for (round_, node, _), manifest in starting.early_manifests.items():
            if not ctx.finished:
                self.intake.on_manifest(node, round_, manifest, ctx.clock)
        for step, node, round_, topic, payload in starting.early_secagg:
            if not ctx.finished:
                self.rounds.secagg.on_message(step, node, round_, topic, payload)
        for node in sorted(starting.offline):
            if not ctx.finished:
                self.workers.on_node_status(node, NodeState.OFFLINE, ctx.clock)

    def _strategy(self, name: str, checkpoint: Checkpoint | None, warnings: list[tuple[str, str]]) -> Strategy | None:
        """The run's strategy, its hyper-parameters from the aggregation worker's parameters (None: the job failed)."""
        ctx = self.ctx
        if checkpoint is not None and checkpoint.strategy != name:
            # The run's global models and server state were made by the checkpoint's strategy.
            warnings.append(
                (
                    "AggregationChanged",
                    f"the aggregation script says aggregation={name!r}, the checkpoint's run has "
                    f"{checkpoint.strategy!r}; the run keeps {checkpoint.strategy!r}",
                )
            )
            name = checkpoint.strategy
        parameters = ctx.facts.aggregation_worker.parameters
        # The name first (its error lists the known ones), then the hyper-parameters' bounds.
        for reason, given in (("UnknownAggregation", None), ("InvalidAggregationParameter", parameters)):
            try:
                strategy = get_strategy(name, given)
            except StrategyError as exc:
                message = f"{_said_by(name, parameters)}: {exc}"
                self._refuse(reason, message)
                return None
        topk = ctx.facts.topk_workers()
        if isinstance(strategy, RobustStrategy) and topk:
            # A robust rule ranks each coordinate across updates; top-k updates are zero almost everywhere
            # (each edge's few entries at different places), so a median or trimmed mean would drop nearly
            # every change and Krum's distances would compare sparsity patterns, not models.
            message = (
                f"{_said_by(name, parameters)}: the robust rule {name} cannot aggregate top-k sparsified "
                f"updates (trainingWorkers with compression=topk: {', '.join(topk)}); use float16 or int8"
            )
            self._refuse("InvalidAggregationParameter", message)
            return None
        return strategy

    def _refuse(self, reason: str, message: str) -> None:
        """The script's config cannot run: its worker entry and the job fail, both saying `message`."""
        self.ctx.set_agg_worker(WorkerState.FAILED, message)
        self.rounds.fail(reason, message)

    def _privacy(self, strategy: Strategy) -> Privacy | Literal[False] | None:
        """The run's differential privacy from the aggregation worker's parameters (None: none; False: the
        job failed on them). Central DP clips at the aggregator: `strategy.clip_norm` becomes at most C."""
        facts = self.ctx.facts
        try:
            privacy = Privacy.of(facts.aggregation_worker.parameters, len(facts.participants))
            if privacy is not None:
                if isinstance(strategy, RobustStrategy):
                    # A median or Krum has no sensitivity bound of C/n: the Gaussian noise would not cover it.
                    raise StrategyError(
                        f"dp_mode={privacy.mode} needs a mean (FedAvg and its server-side optimisers), not {strategy.name}"
                    )
                if facts.asynchrony is not None:
                    raise StrategyError(
                        f"dp_mode={privacy.mode} is for synchronous rounds (not aggregation_mode: async)"
                    )
                if not privacy.allows(1):
                    raise StrategyError(
                        f"dp_target_epsilon={privacy.target_epsilon:g} allows no round: one round already spends "
                        f"epsilon {privacy.epsilon(1):.4g} at dp_delta={privacy.delta:g} "
                        f"(raise dp_noise_multiplier or the budget)"
                    )
        except StrategyError as exc:
            self._refuse("InvalidPrivacyParameters", str(exc))
            return False
        if privacy is not None and privacy.aggregator_clips:
            strategy.clip_norm = (
                min(strategy.clip_norm, privacy.clip_norm) if strategy.clip_norm > 0 else privacy.clip_norm
            )
        return privacy

    def _secagg(self, strategy: Strategy, privacy: Privacy | None) -> SecAggSettings | Literal[False] | None:
        """The run's secure aggregation from the aggregation worker's parameters (None: none; False: the job
        failed on them, `InvalidSecAggParameters`, one message naming the parameters that cannot go together)."""
        facts = self.ctx.facts
        parameters = facts.aggregation_worker.parameters
        try:
            settings = SecAggSettings.of(parameters, len(facts.participants))
        except ValueError as exc:
            self._refuse("InvalidSecAggParameters", f"aggregationWorker parameter {exc}")
            return False
        if settings is None:
            return None
        # The aggregator sees only the sum of a round's updates: anything that needs each update is out.
        compressed = [w.node for w in facts.planned if update_compression(w.parameters)[0] is not None]
        conflict = None
        if isinstance(strategy, RobustStrategy):
            conflict = f"the robust rule {strategy.name} (it needs each update; use FedAvg or a server optimiser)"
        elif facts.asynchrony is not None:
            conflict = "aggregation_mode=async (staleness weights are per update)"
        elif privacy is not None and privacy.mode == "central":
            conflict = "dp_mode=central (the aggregator would clip each update; use dp_mode=distributed)"
        elif strategy.clip_norm > 0:
            conflict = f"clip_norm={strategy.clip_norm:g} at the aggregator (each edge clips to secagg_clip)"
        elif compressed:
            conflict = (
                f"compression on trainingWorkers {', '.join(compressed)} (a masked update is incompressible "
                "uniform words; set compression: none)"
            )
        if conflict is not None:
            self._refuse(
                "InvalidSecAggParameters",
                f"aggregationWorker parameter secure_aggregation=true cannot be combined with {conflict}",
            )
            return False
        return settings

    def _hierarchy(
        self, strategy: Strategy, privacy: Privacy | None, secagg: SecAggSettings | None
    ) -> Hierarchy | Literal[False] | None:
        """The run's sites (``hierarchical: "true"``; None: a flat job; False: the job failed on them,
        `InvalidHierarchyParameters`, naming the parameter)."""
        facts = self.ctx.facts
        try:
            hierarchy = hierarchy_of(facts.aggregation_worker.parameters, facts.planned)
        except ValueError as exc:
            self._refuse("InvalidHierarchyParameters", f"aggregationWorker parameter {exc}")
            return False
        if hierarchy is None:
            return None
        conflict = hierarchy_conflict(
            strategy, privacy, secagg, facts.planned, asynchronous=facts.asynchrony is not None
        )
        if conflict is not None:
            self._refuse(
                "InvalidHierarchyParameters",
                f"aggregationWorker parameter hierarchical=true cannot be combined with {conflict}",
            )
            return False
        return hierarchy

    def _running(self, run: Run) -> None:
        """The job runs (a new run, or one resumed without a checkpoint): round 0 waits for an init."""
        ctx, facts = self.ctx, self.ctx.facts
        status = ctx.status
        status.phase = Phase.RUNNING
        if status.start_time is None:
            status.start_time = now()
        status.exit_round = run.plan.exit_round
        source = run.plan.init_source
        if source is not None:  # the others wait init_wait for its round-0 model before sending theirs
            status.message = f"round 0: waiting for the initial model from {source} (the plan's init source)"
        else:
            status.message = f"round 0: waiting for an initial model from {named(facts.participants)}"
        ctx.book.condition(ConditionType.TRAINING, "DoTraining", "waiting for the round-0 model")
        mode = f", {facts.asynchrony.describe()}" if facts.asynchrony is not None else ""
        if run.privacy is not None:
            mode += f", {run.privacy.describe()}"
            status.privacy = run.privacy.status(0)
        if run.secagg is not None:
            mode += f", secure aggregation ({run.secagg.threshold} of {len(facts.participants)})"
        if facts.hierarchy is not None:
            mode += f", {facts.hierarchy.describe()}"
        ctx.set_agg_worker(WorkerState.READY, f"{run.strategy.describe()}, {run.plan.exit_round} rounds{mode}")
        ctx.event(
            "Normal",
            "Started" if not facts.resume else "Resumed",
            f"plan published: {run.strategy.describe()}, {run.plan.exit_round} rounds{mode}, participants "
            f"{', '.join(facts.participants)}" + (" (resumed without a checkpoint: round 0)" if facts.resume else ""),
        )


def _edge_parameters(
    privacy: Privacy | None, secagg: SecAggSettings | None, hierarchy: Hierarchy | None
) -> dict[str, str]:
    """What the plan adds to every training worker's parameters for the run's modes."""
    edge = privacy.edge_parameters() if privacy is not None else {}
    if secagg is not None:
        edge["secure_aggregation"] = "true"  # how an edge knows to mask its updates
    if hierarchy is not None:
        edge.update(plan_parameters(hierarchy))  # where each edge's updates go: its site's aggregator
    return edge


def _same_init_source(plan: JobPlan, kept: bytes | None) -> JobPlan:
    """A resumed run names the init source its first plan named (`kept`: the plan this node published),
    whoever is online now: its edges ignore a plan of the same run, so the ones waiting for the round-0
    model wait for that worker, and the job status should say so."""
    if not kept:
        return plan
    try:
        before = JobPlan.model_validate_json(kept)
    except ValidationError:
        return plan
    if before.uid != plan.uid or before.init_source == plan.init_source:
        return plan
    if before.init_source is not None and before.init_source not in plan.participants:
        return plan
    return plan.model_copy(update={"init_source": before.init_source})


def _said_by(name: str, parameters: Mapping[str, str]) -> str:
    """Where the aggregation name came from, as the user wrote it: the aggregation worker's parameter
    (``aggregation_algorithm``, Sedna's, or ``aggregation``) when it holds that name, else the script."""
    for key in ("aggregation_algorithm", "AGGREGATION_ALGORITHM", "aggregation", "AGGREGATION"):
        if parameters.get(key) == name:
            return f"aggregationWorker parameter {key}={name!r}"
    return f"the aggregation script's AggregationServer(aggregation={name!r})"

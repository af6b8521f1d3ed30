"""One job's lifecycle and round engine: a plain object driven by method calls, side effects via a `Port`.

Stages (`Stage`) and what moves a job between them::

    STARTING --config frame--> INIT --first valid init--> TRAINING --round exit_round closes--> FINAL
       |                         |                          |                                     |
       +-- script exit/error, config timeout, unknown strategy, worker Failed, publish failure ---+--> DONE
                                                                 every worker Completed (FINAL) --> DONE

- **STARTING**: the aggregation script runs; its `config` frame (aggregation, exit_round,
  participants_count) must arrive within `config_timeout`. Then the plan is published (retained) and
  the job is Running.
- **INIT** (round 0): the first valid `init` transfer from any participant becomes the global model of
  round 0, so every edge starts round 1 from identical weights. Later inits are ignored; one whose
  layout differs fails its worker.
- **TRAINING** (rounds 1..exit_round): each participant's update for the current round is checked and
  folded into the strategy's accumulator on arrival, exactly once; when every participant is in, the
  round's global model is published (retained; only the latest round stays retained), with `final` on
  round exit_round. exit_round counts aggregations.
- **FINAL**: the final weights are written under the Model url; when every training worker reports
  Completed the job is Succeeded and the script gets `finish`.

A failed job (Sedna: any failed worker fails the job) stops its script and clears its plan, so the
edges stop too. Every status change is published, retained, as one `JobStatus`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog
from structlog.typing import FilteringBoundLogger

from cloud_aggregator._errors import AggregatorError, StrategyError, UpdateRejectedError
from cloud_aggregator._job_status import StatusBook
from cloud_aggregator._ports import Port, ScriptRequest, ScriptSignal
from cloud_aggregator._strategy import AggregationState, Layout, Strategy, get_strategy
from cloud_aggregator._transfer_checks import check_origin, decode_checked, describe_layout_difference
from schemas import (
    ConditionType,
    Dataset,
    DatasetRef,
    FederatedLearningJob,
    JobPlan,
    JobStatus,
    Kind,
    Model,
    ModelRef,
    NodeState,
    PathEscapeError,
    Phase,
    PlannedWorker,
    RoundRecord,
    ScriptRef,
    TransferManifest,
    UpdateAck,
    WorkerFrame,
    WorkerState,
    WorkerStatus,
    encode_weights,
    now,
    weights_digest,
)

__all__ = ["Job", "Stage"]

DEFAULT_AGGREGATION = "FedAvg"
TAIL_CHARS = 1500

Arrays = list[npt.NDArray[Any]]


class Stage(StrEnum):
    STARTING = "starting"
    INIT = "init"
    TRAINING = "training"
    FINAL = "final"
    DONE = "done"


def _model_ref(model: Model) -> ModelRef:
    return ModelRef(name=model.metadata.name, url=model.spec.url, format=model.spec.format)


def planned_workers(spec: FederatedLearningJob, datasets: Mapping[str, Dataset]) -> list[PlannedWorker]:
    """Each training worker as the plan tells its edge: node, resolved Dataset, script and parameters."""
    planned = []
    for worker in spec.spec.training_workers:
        eff = worker.effective()
        ds = datasets[worker.dataset.name]
        planned.append(
            PlannedWorker(
                node=eff.node_name,
                dataset=DatasetRef(
                    name=ds.metadata.name, url=ds.spec.url, format=ds.spec.format, node_name=ds.spec.node_name
                ),
                script=ScriptRef(
                    dir=eff.script_dir,
                    boot_file=eff.script_boot_file,
                    framework_type=eff.framework_type,
                    framework_version=eff.framework_version,
                ),
                parameters=dict(eff.parameters),
            )
        )
    return planned


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
    ) -> None:
        self.spec = spec
        self.name = spec.metadata.name
        self.namespace = spec.metadata.namespace
        self.uid = uid
        self.node = node
        self._port = port
        self._chunk_size = chunk_size
        self._config_timeout = config_timeout
        self._log: FilteringBoundLogger = structlog.get_logger("cloud_aggregator.job").bind(job=self.name, uid=uid)

        agg = spec.spec.aggregation_worker
        self._agg_worker = agg.effective()
        self.model = _model_ref(models[agg.model.name])
        pretrained = spec.spec.pretrained_model
        self.pretrained_model = _model_ref(models[pretrained.name]) if pretrained else None
        self._planned = planned_workers(spec, datasets)
        self.participants: list[str] = [w.node for w in self._planned]

        self.stage = Stage.STARTING
        self.round = 0  # the round in progress (0 until the round-0 model is chosen)
        self.exit_round = 0
        self.plan: JobPlan | None = None
        self.strategy: Strategy | None = None
        self._config_deadline: float | None = None
        self._signalled: ScriptSignal | None = None
        self._global: Arrays | None = None
        self._layout: Layout = ()
        self._names: list[str] = []
        self._global_from = ""
        self._global_digest = ""
        self._acc: AggregationState | None = None
        self._counted: dict[str, int] = {}
        self._book = StatusBook(
            JobStatus(
                name=self.name,
                namespace=self.namespace,
                uid=uid,
                phase=Phase.PENDING,
                message="starting the aggregation script",
                aggregation_node=node,
                spec_hash=spec.spec_hash(),
                workers=[WorkerStatus(job=self.name, node=n, state=WorkerState.PENDING) for n in self.participants]
                + [WorkerStatus(job=self.name, node=node, role="aggregation", state=WorkerState.STARTING)],
            )
        )

    # -- queries ---------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.stage is Stage.DONE

    @property
    def global_weights(self) -> Arrays | None:
        """The current global model (a copy): round 0's after INIT, else the last closed round's."""
        return None if self._global is None else [a.copy() for a in self._global]

    def wants_transfer(self, round_: int) -> bool:
        """Whether chunks of a transfer for `round_` are worth keeping (a cheap filter before assembly)."""
        if self.stage in (Stage.STARTING, Stage.DONE):
            return False
        return round_ == 0 or (self.stage is Stage.TRAINING and round_ == self.round)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, now_s: float) -> None:
        """Start the aggregation script; the job waits for its `config` frame until `config_timeout`."""
        self._config_deadline = now_s + self._config_timeout
        worker = self._agg_worker
        self._event("Normal", "Starting", f"starting aggregation script {worker.script_dir}/{worker.script_boot_file}")
        try:
            self._port.clear_globals(self.name)
            self._port.start_script(
                ScriptRequest(
                    job=self.name,
                    uid=self.uid,
                    namespace=self.namespace,
                    worker=worker,
                    model=self.model,
                    pretrained_model=self.pretrained_model,
                    participants_count=len(self.participants),
                )
            )
        except (AggregatorError, PathEscapeError) as exc:
            self._set_agg_worker(WorkerState.FAILED, str(exc))
            self._fail("AggregationWorkerFailed", f"cannot start the aggregation script: {exc}")
        self._publish()

    def on_script_frame(self, frame: WorkerFrame, now_s: float) -> None:
        """A frame from the aggregation script: `config` starts the job, `error` fails it."""
        if self.finished:
            self._log.info("frame from the aggregation script after the job ended", frame=frame.type)
            return
        if frame.type == "config":
            if self.stage is not Stage.STARTING:
                self._log.warning("the aggregation script sent config twice; the first one stands")
                return
            self._configure(frame)
        elif frame.type == "error":
            self._set_agg_worker(WorkerState.FAILED, frame.message)
            self._fail("AggregationWorkerFailed", f"the aggregation script reported an error: {frame.message}")
        else:
            self._log.warning("unexpected frame from the aggregation script", frame=frame.type)
            return
        self._publish()

    def on_script_exit(self, code: int | None, tail: str, now_s: float) -> None:
        """The aggregation script exited (`code` None: unknown). Before the job ended, that fails the job."""
        tail = tail.strip()[-TAIL_CHARS:]
        said = f": {tail}" if tail else " (no output)"
        if self.finished:
            if code == 0 or (self._signalled is not None and code is not None and code < 0):
                self._set_agg_worker(WorkerState.COMPLETED, f"exited with code {code}")
            else:
                self._set_agg_worker(WorkerState.FAILED, f"exited with code {code}{said}")
            self._log.info("aggregation script exited", code=code)
        elif self.stage is Stage.STARTING:
            self._set_agg_worker(WorkerState.FAILED, f"exited with code {code}")
            self._fail(
                "AggregationWorkerFailed",
                f"the aggregation script exited with code {code} before sending its config "
                f"(does it call AggregationServer(...).start()?){said}",
            )
        elif code == 0:
            self._set_agg_worker(WorkerState.COMPLETED, "exited with code 0 before the job finished")
            self._event("Warning", "AggregationScriptExited", "the aggregation script exited (code 0); the job goes on")
        else:
            self._set_agg_worker(WorkerState.FAILED, f"exited with code {code}")
            self._fail("AggregationWorkerFailed", f"the aggregation script exited with code {code}{said}")
        self._publish()

    def tick(self, now_s: float) -> None:
        """Timers: the config deadline (later: round deadlines)."""
        if self.stage is Stage.STARTING and self._config_deadline is not None and now_s >= self._config_deadline:
            self._set_agg_worker(WorkerState.FAILED, "sent no config")
            self._fail(
                "AggregationWorkerFailed",
                f"the aggregation script sent no config within {self._config_timeout:g} s "
                "(does it call AggregationServer(...).start()?)",
            )
            self._publish()

    def delete(self) -> None:
        """The job's spec was deleted: stop everything and clear the job's retained plan, status and globals."""
        if not self.finished:
            self.stage = Stage.DONE
        self._signal("stop")
        self._safely(self._port.discard_transfers, self.name)
        self._safely(self._port.publish_plan, self.name, None)
        self._safely(self._port.clear_globals, self.name)
        self._safely(self._port.publish_status, Kind.JOB, self.name, None)
        self._log.info("job deleted")

    def reject_spec(self, message: str) -> None:
        """A different or invalid spec was published for this job; it goes on unchanged."""
        self._event("Warning", "SpecRejected", message)
        self._publish()

    def fail(self, reason: str, message: str) -> None:
        """Fail the job from outside (e.g. the service cannot go on with it)."""
        self._fail(reason, message)
        self._publish()

    # -- transfers -------------------------------------------------------------------------------

    def on_manifest(self, node: str, round_: int, manifest: TransferManifest) -> bool:
        """Early checks when a manifest arrives; False (rejected, acknowledged) means drop the transfer."""
        try:
            self._check_manifest(node, round_, manifest)
        except UpdateRejectedError as exc:
            self._reject(node, manifest, exc)
            self._publish()
            return False
        if manifest.kind == "update" and node in self._counted:
            self._duplicate(node, manifest)
            return False
        return True

    def reject_transfer(self, node: str, manifest: TransferManifest, reason: str) -> None:
        """The medium could not take this transfer (e.g. larger than the receiver's limit): reject it."""
        self._reject(node, manifest, UpdateRejectedError(reason))
        self._publish()

    def on_init_transfer(self, node: str, round_: int, manifest: TransferManifest, blob: bytes) -> None:
        """A complete `init` transfer: the first valid one becomes the global model of round 0."""
        try:
            self._check_manifest(node, round_, manifest)
            if manifest.kind != "init":
                raise UpdateRejectedError(f"expected an init transfer, got kind {manifest.kind}")
            layout, arrays, names = decode_checked(manifest, blob, node=node, job=self.name)
        except UpdateRejectedError as exc:
            self._reject(node, manifest, exc)
            self._publish()
            return
        if self._global is None:
            self._global = [np.array(a) for a in arrays]
            self._layout = layout
            self._names = names
            self._global_from = node
            self._ack(node, manifest, True, "round-0 model")
            params = sum(int(np.prod(shape)) for _, _, shape in layout)
            self._event(
                "Normal",
                "InitialModel",
                f"the round-0 model comes from {node} ({len(layout)} tensors, {params} parameters)",
                node=node,
            )
            if self._publish_global(0, self._global, manifest.num_samples, final=False):
                self._begin_round(1)
        else:
            diff = describe_layout_difference(self._layout, layout)
            if diff:
                self._ack(node, manifest, False, f"layout differs from the round-0 model: {diff}")
                message = f"its initial model does not match the round-0 model from {self._global_from}: {diff}"
                self._book.set_worker(node, WorkerState.FAILED, message)
                self._event("Warning", "LayoutMismatch", f"worker {node}: {message}", node=node)
                self._fail("WorkerFailed", f"worker {node} failed: {message}")
            else:
                self._ack(node, manifest, True, f"a round-0 model was already chosen (from {self._global_from})")
                self._log.info("init transfer ignored: the round-0 model is already chosen", worker=node)
        self._publish()

    def on_update(self, node: str, round_: int, manifest: TransferManifest, blob: bytes) -> None:
        """A complete `update` transfer: checked, counted once per worker and round, folded on arrival."""
        try:
            self._check_manifest(node, round_, manifest)
            if manifest.kind != "update":
                raise UpdateRejectedError(f"expected an update transfer, got kind {manifest.kind}")
            if node in self._counted:
                self._duplicate(node, manifest)
                return
            layout, arrays, _ = decode_checked(manifest, blob, node=node, job=self.name)
            if manifest.num_samples <= 0:
                raise UpdateRejectedError("num_samples must be > 0")
            diff = describe_layout_difference(self._layout, layout)
            if diff:
                raise UpdateRejectedError(f"layout differs from the global model: {diff}")
            assert self.strategy is not None and self._acc is not None  # set when TRAINING began
            try:
                self._acc = self.strategy.fold(self._acc, arrays, manifest.num_samples)
            except StrategyError as exc:
                raise UpdateRejectedError(str(exc)) from exc
        except UpdateRejectedError as exc:
            self._reject(node, manifest, exc)
            self._publish()
            return
        self._counted[node] = manifest.num_samples
        self._ack(node, manifest, True, "")
        self._event(
            "Normal",
            "UpdateAccepted",
            f"update from {node} for round {self.round} ({manifest.num_samples} samples); "
            f"{len(self._counted)}/{len(self.participants)} in",
            node=node,
        )
        if all(p in self._counted for p in self.participants):
            self._close_round()
        self._publish()

    # -- workers and nodes -----------------------------------------------------------------------

    def on_worker_status(self, node: str, worker: WorkerStatus, *, retained: bool) -> None:
        """A training worker's own status: folded into the job status; Failed fails the job."""
        if node not in self.participants or worker.node != node or worker.job != self.name:
            self._log.info("worker status ignored: not a training worker of this job", worker=node)
            return
        if self.stage is Stage.STARTING:
            self._log.info("worker status ignored: the job has not started yet", worker=node)
            return
        if worker.uid is not None and worker.uid != self.uid:
            self._log.info("worker status of another run of this job ignored", worker=node, uid=worker.uid)
            return
        started = self.status.start_time
        if retained and started is not None and worker.updated_at < started:
            self._log.info("stale retained worker status ignored", worker=node, state=worker.state.value)
            return
        previous = self._book.worker(node)
        self._book.replace_worker(worker.model_copy(update={"role": "training"}))
        if previous is None or previous.state is not worker.state:
            self._log.info("worker state", worker=node, state=worker.state.value, worker_round=worker.round)
        if self.finished:
            self._publish()
            return
        if worker.state is WorkerState.FAILED:
            self._event("Warning", "WorkerFailed", f"worker {node} failed: {worker.message}", node=node)
            self._fail("WorkerFailed", f"worker {node} failed: {worker.message or 'no reason given'}")
        elif worker.state is WorkerState.COMPLETED and (previous is None or previous.state is not worker.state):
            self._event("Normal", "WorkerCompleted", f"worker {node} completed", node=node)
            if self.stage is Stage.FINAL and worker.model_digest and worker.model_digest != self._global_digest:
                self._event(
                    "Warning",
                    "DigestMismatch",
                    f"worker {node} saved weights with digest {worker.model_digest[:16]}..., "
                    f"the final global model's is {self._global_digest[:16]}...",
                    node=node,
                )
            self._check_complete()
        self._publish()

    def on_node_status(self, node: str, state: NodeState) -> None:
        """A participant's node went offline (its last will) or came back."""
        if node not in self.participants or self.finished:
            return
        worker = self._book.worker(node)
        if worker is None or worker.state.terminal:
            return
        if state is NodeState.OFFLINE and worker.state is not WorkerState.OFFLINE:
            self._book.set_worker(node, WorkerState.OFFLINE, "node offline")
            self._event("Warning", "NodeOffline", f"node {node} went offline", node=node)
        elif state is NodeState.ONLINE and worker.state is WorkerState.OFFLINE:
            self._event("Normal", "NodeOnline", f"node {node} is back online", node=node)
        else:
            return
        self._publish()

    # -- internals: stages -----------------------------------------------------------------------

    def _configure(self, frame: WorkerFrame) -> None:
        name = frame.aggregation or DEFAULT_AGGREGATION
        try:
            self.strategy = get_strategy(name)
        except StrategyError as exc:
            self._set_agg_worker(WorkerState.FAILED, str(exc))
            self._fail("UnknownAggregation", str(exc))
            return
        self.exit_round = max(int(frame.exit_round or 1), 1)
        count = frame.participants_count
        if count is not None and count != len(self.participants):
            self._event(
                "Warning",
                "ParticipantsCount",
                f"the aggregation script says participants_count={count}, the job has "
                f"{len(self.participants)} training workers; every training worker takes part in each round",
            )
        self.plan = JobPlan(
            job=self.name,
            namespace=self.namespace,
            uid=self.uid,
            aggregation_node=self.node,
            aggregation=self.strategy.name,
            exit_round=self.exit_round,
            participants=list(self.participants),
            model=self.model,
            pretrained_model=self.pretrained_model,
            workers=self._planned,
            chunk_size=self._chunk_size,
        )
        try:
            self._port.publish_plan(self.name, self.plan)
        except AggregatorError as exc:
            self._fail("PublishFailed", f"cannot publish the job plan: {exc}")
            return
        self.stage = Stage.INIT
        status = self.status
        status.phase = Phase.RUNNING
        status.start_time = now()
        status.exit_round = self.exit_round
        status.message = f"round 0: waiting for an initial model from {', '.join(self.participants)}"
        self._book.condition(ConditionType.TRAINING, "DoTraining", "waiting for the round-0 model")
        self._set_agg_worker(WorkerState.READY, f"{self.strategy.name}, {self.exit_round} rounds")
        self._event(
            "Normal",
            "Started",
            f"plan published: {self.strategy.name}, {self.exit_round} rounds, participants {', '.join(self.participants)}",
        )

    def _begin_round(self, round_: int) -> None:
        assert self.strategy is not None and self._global is not None
        self.stage = Stage.TRAINING
        self.round = round_
        self._counted = {}
        self._acc = self.strategy.begin(self._layout, self._global)
        self._log = self._log.bind(round=round_)
        self.status.message = (
            f"round {round_}/{self.exit_round}: waiting for updates from {', '.join(self.participants)}"
        )

    def _close_round(self) -> None:
        assert self.strategy is not None and self._acc is not None
        r = self.round
        try:
            weights = self.strategy.finish(self._acc, self._global)
        except StrategyError as exc:
            self._fail("AggregationFailed", f"round {r}: {exc}")
            return
        final = r >= self.exit_round
        total = self._acc.total_samples
        if not self._publish_global(r, weights, total, final=final):
            return
        self._global = weights
        stamp = now()
        self._book.record_round(
            RoundRecord(round=r, participants=list(self._counted), total_samples=total, closed_at=stamp)
        )
        self._book.condition(ConditionType.TRAINING, "DoTraining", f"Round {r} reaches at {stamp.isoformat()}")
        self.status.current_round = r
        self._event(
            "Normal",
            "RoundClosed",
            f"round {r}: {self.strategy.name} of {len(self._counted)} updates, {total} samples"
            + (" (final)" if final else ""),
        )
        if not final:
            self._begin_round(r + 1)
            return
        self.stage = Stage.FINAL
        self._acc = None
        self.status.message = f"final model published (round {r}); waiting for every worker to save it"
        self._save_model(r)
        self._check_complete()

    def _check_complete(self) -> None:
        if self.stage is not Stage.FINAL:
            return
        if self._book.all_training(self.participants, WorkerState.COMPLETED):
            self.stage = Stage.DONE
            status = self.status
            status.phase = Phase.SUCCEEDED
            status.completion_time = now()
            status.message = f"completed {self.exit_round} rounds; every worker saved the final model"
            self._book.condition(ConditionType.COMPLETE, "Completed", "FederatedLearningJob completed")
            self._event("Normal", "Completed", "FederatedLearningJob completed")
            self._signal("finish")

    def _fail(self, reason: str, message: str) -> None:
        if self.finished:
            return
        had_plan = self.plan is not None
        self.stage = Stage.DONE
        status = self.status
        status.phase = Phase.FAILED
        status.message = message
        self._book.condition(ConditionType.FAILED, reason, message)
        self._event("Warning", reason, message)
        self._signal("stop")
        self._safely(self._port.discard_transfers, self.name)
        if had_plan:
            # No plan, no work: the edges stop this job's training scripts.
            self._safely(self._port.publish_plan, self.name, None)

    # -- internals: checks -----------------------------------------------------------------------

    def _check_manifest(self, node: str, round_: int, manifest: TransferManifest) -> None:
        """Who sent it, for which run and round, and whether the job takes it now: no weights needed."""
        check_origin(manifest, node=node, round_=round_, uid=self.uid, job=self.name, participants=self.participants)
        if self.stage in (Stage.STARTING, Stage.DONE):
            raise UpdateRejectedError(f"the job is not running (stage {self.stage.value})")
        self._check_round(round_, manifest.kind)

    def _check_round(self, round_: int, kind: str) -> None:
        """Whether a transfer of `kind` for `round_` fits the job's stage and current round."""
        if kind == "init":
            if round_ != 0:
                raise UpdateRejectedError(f"an init transfer belongs to round 0, not round {round_}")
        elif kind == "update":
            if self.stage is Stage.INIT:
                raise UpdateRejectedError(f"round {round_} has not started: no round-0 model yet")
            if self.stage is Stage.FINAL or round_ < self.round:
                raise UpdateRejectedError(f"round {round_} is closed")
            if round_ > self.round:
                raise UpdateRejectedError(f"round {round_} has not started; the current round is {self.round}")
        else:
            raise UpdateRejectedError(f"kind {kind} is not an update")

    # -- internals: effects ----------------------------------------------------------------------

    def _publish_global(
        self, round_: int, weights: Sequence[npt.NDArray[Any]], num_samples: int, *, final: bool
    ) -> bool:
        blob = encode_weights(
            weights,
            kind="global",
            job=self.name,
            round_=round_,
            sender=self.node,
            num_samples=num_samples,
            names=self._names,
        )
        try:
            self._port.publish_global(self.name, round_, blob, uid=self.uid, num_samples=num_samples, final=final)
        except AggregatorError as exc:
            self._fail("PublishFailed", f"cannot publish the global model of round {round_}: {exc}")
            return False
        self._global_digest = weights_digest(weights)
        self._safely(self._port.clear_globals, self.name, round_)
        self._log.info("global model published", global_round=round_, final=final, bytes=len(blob))
        return True

    def _save_model(self, round_: int) -> None:
        assert self._global is not None and self.strategy is not None
        meta = {
            "job": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "round": round_,
            "aggregation": self.strategy.name,
            "participants": self.participants,
            "digest": self._global_digest,
            "tensors": [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in self._layout],
            "savedAt": now().isoformat(),
        }
        try:
            path = self._port.write_model(self.name, self.model, self._global, self._names, meta)
        except AggregatorError as exc:
            self._event("Warning", "ModelNotSaved", f"cannot write the final model under the Model url: {exc}")
            return
        self.status.model_path = path
        self._event("Normal", "ModelSaved", f"final model written to {path}")

    def _signal(self, signal: ScriptSignal) -> None:
        if self._signalled is not None:
            return
        self._signalled = signal
        self._safely(self._port.signal_script, self.name, self.uid, signal)

    def _ack(self, node: str, manifest: TransferManifest, accepted: bool, reason: str) -> None:
        ack = UpdateAck(
            job=self.name,
            uid=manifest.uid,
            round=manifest.round,
            node=node,
            transfer=manifest.transfer,
            accepted=accepted,
            reason=reason,
        )
        self._safely(self._port.send_ack, ack)

    def _reject(self, node: str, manifest: TransferManifest, exc: UpdateRejectedError) -> None:
        self._ack(node, manifest, False, exc.reason)
        quiet = manifest.uid != self.uid or self.finished
        if quiet:
            # Leftovers of an earlier run, or traffic after the end: not news for the job's users.
            self._log.info("transfer rejected", worker=node, transfer_round=manifest.round, reason=exc.reason)
            return
        self._log.warning("transfer rejected", worker=node, transfer_round=manifest.round, reason=exc.reason)
        self._event(
            "Warning",
            "UpdateRejected",
            f"{manifest.kind} from {node} for round {manifest.round} rejected: {exc.reason}",
            node=node,
            round_=manifest.round,
        )

    def _duplicate(self, node: str, manifest: TransferManifest) -> None:
        self._ack(node, manifest, True, f"already counted in round {self.round}")
        self._log.info("duplicate update ignored", worker=node, transfer=manifest.transfer)

    def _safely(self, call: Callable[..., object], *args: Any) -> None:
        try:
            call(*args)
        except AggregatorError as exc:
            self._log.warning("side effect failed", effect=getattr(call, "__name__", "?"), error=str(exc))

    # -- internals: status -----------------------------------------------------------------------

    @property
    def status(self) -> JobStatus:
        """The job's status document (owned by this engine; published on every change)."""
        return self._book.status

    def _set_agg_worker(self, state: WorkerState, message: str) -> None:
        self._book.set_worker(self.node, state, message, role="aggregation", round_=self.round)

    def _event(
        self,
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        *,
        node: str | None = None,
        round_: int | None = None,
    ) -> None:
        self._book.event(type_, reason, message, round_=self.round if round_ is None else round_, node=node)
        log = self._log.warning if type_ == "Warning" else self._log.info
        log(reason, message=message, worker=node)

    def _publish(self) -> None:
        self._safely(self._port.publish_status, Kind.JOB, self.name, self._book.snapshot())

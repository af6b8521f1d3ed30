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

Fault tolerance (docs/dev/fault-tolerance-plan.md, "Aggregator"):

- **Intake.** The engine assembles update transfers itself (`on_update_manifest`, `on_update_chunk`,
  one `broker.Assembler` per job). A manifest for a transfer already stored gets
  ``UpdateAck(accepted=true, reason="already stored")``; a manifest that arrives again for an
  incomplete transfer, or an incomplete transfer without progress for `resume_after` seconds (a timer
  run by `tick`, backing off to `MAX_RESUME_INTERVAL`), gets ``UpdateAck(accepted=false, missing=[...])``.
- **Durability.** An accepted update is stored (`Port.store_update`) before it is folded and before
  its accepted ack. Each closed round (round 0 included) is committed: checkpoint (global blob, then
  checkpoint.json), publish, spool dropped. A job created with ``resume=True`` (the controller saw
  its retained Running status with the same uid and spec hash) restarts from its checkpoint: the round
  after it is open, its spooled updates are folded again, the latest global model is republished.
- **Deadlines and quorum.** aggregationWorker parameters ``round_deadline`` (seconds; 0 or absent: none)
  and ``min_participants`` (default: every training worker). When the deadline passes with a quorum
  the round closes with who is there (`RoundRecord.missing`, Warning event); below quorum it waits
  (``JobStatus.waiting_for`` and the message name whom) and closes as soon as the quorum is in.
- **Completion.** After the final round the job succeeds once every worker whose update was in the
  final round has reported Completed; the others are named in an event and turn Completed later.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog
from structlog.typing import FilteringBoundLogger

from broker import Assembler, TransferError
from cloud_aggregator._checkpoint import Checkpoint
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
    WireError,
    WorkerFrame,
    WorkerState,
    WorkerStatus,
    decode_weights,
    encode_weights,
    now,
    weights_digest,
)

__all__ = ["Job", "Stage"]

DEFAULT_AGGREGATION = "FedAvg"
TAIL_CHARS = 1500
DEFAULT_RESUME_AFTER = 3.0
MAX_RESUME_INTERVAL = 60.0

Arrays = list[npt.NDArray[Any]]


class Stage(StrEnum):
    STARTING = "starting"
    INIT = "init"
    TRAINING = "training"
    FINAL = "final"
    DONE = "done"


@dataclass
class _Incoming:
    """An update transfer whose manifest is known and whose chunks are not all in yet."""

    node: str
    round: int
    manifest: TransferManifest
    due: float  # when to ask for the missing chunks if nothing arrives before
    interval: float


def _transfer_key(round_: int, node: str, transfer: str) -> str:
    return f"{round_}/{node}/{transfer}"


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
        resume_after: float = DEFAULT_RESUME_AFTER,
        resume: bool = False,
        previous_status: JobStatus | None = None,
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
        self.round_deadline, self.min_participants = self._round_rules()
        self._resume_after = resume_after
        self._resume = resume
        self._previous = previous_status
        self._checkpoint: tuple[Checkpoint, bytes] | None = None
        self._clock = 0.0  # the latest time any call brought (for timers armed inside handlers)

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
        self._counted_transfers: dict[str, str] = {}
        # (round, node, transfer) of every update stored and counted, and of inits acknowledged as accepted
        self._stored: set[tuple[int, str, str]] = set()
        self._refused: dict[tuple[int, str, str], str] = {}  # rejected for good: the same answer again
        self._folded: dict[int, list[tuple[str, str]]] = {}  # closed round -> (node, transfer) folded
        self._final_participants: list[str] = []
        self._assembler: Assembler[str] = Assembler(log=self._log)
        self._incoming: dict[str, _Incoming] = {}
        self._retries: dict[str, int] = {}
        self._round_opened = 0.0
        self._deadline_passed = False
        self._offline_from: dict[str, WorkerStatus] = {}
        self._early_statuses: dict[str, tuple[WorkerStatus, bool]] = {}
        self._early_manifests: dict[tuple[int, str, str], TransferManifest] = {}
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

    def _round_rules(self) -> tuple[float | None, int]:
        """round_deadline (None: no deadline) and min_participants (clamped to 1..participants) from the spec."""
        params = self._agg_worker.parameters
        deadline: float | None = None
        raw = params.get("round_deadline")
        if raw not in (None, ""):
            try:
                value = float(str(raw))
            except ValueError:
                value = 0.0
            deadline = value if value > 0 else None
        quorum = len(self.participants)
        raw = params.get("min_participants")
        if raw not in (None, ""):
            with contextlib.suppress(ValueError):
                quorum = max(1, min(int(str(raw)), len(self.participants)))
        return deadline, quorum

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
        if self.stage is Stage.DONE or (self.stage is Stage.STARTING and not self._resume):
            return False
        return round_ == 0 or self.stage is Stage.STARTING or (self.stage is Stage.TRAINING and round_ == self.round)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, now_s: float) -> None:
        """Start the aggregation script; the job waits for its `config` frame until `config_timeout`."""
        self._clock = now_s
        self._config_deadline = now_s + self._config_timeout
        worker = self._agg_worker
        if self._resume:
            self._load_checkpoint()
        else:
            self._safely(self._port.clear_state, self.name)
        self._event("Normal", "Starting", f"starting aggregation script {worker.script_dir}/{worker.script_boot_file}")
        try:
            if not self._resume:
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
        """Timers: the config deadline, resume requests for stalled transfers, the round deadline."""
        self._clock = max(self._clock, now_s)
        if self.stage is Stage.STARTING and self._config_deadline is not None and now_s >= self._config_deadline:
            self._set_agg_worker(WorkerState.FAILED, "sent no config")
            self._fail(
                "AggregationWorkerFailed",
                f"the aggregation script sent no config within {self._config_timeout:g} s "
                "(does it call AggregationServer(...).start()?)",
            )
            self._publish()
            return
        for key, incoming in list(self._incoming.items()):
            if now_s >= incoming.due:
                self._request_missing(key, now_s)
        if (
            self.stage is Stage.TRAINING
            and self.round_deadline is not None
            and not self._deadline_passed
            and now_s >= self._round_opened + self.round_deadline
        ):
            self._deadline_passed = True
            if len(self._counted) >= self.min_participants:
                self._close_round()
            else:
                self._event(
                    "Warning",
                    "BelowQuorum",
                    f"round {self.round}: the deadline of {self.round_deadline:g} s passed with "
                    f"{len(self._counted)}/{len(self.participants)} updates, quorum {self.min_participants}; "
                    f"waiting for {', '.join(self._waiting_for())}",
                )
            self._publish()

    def delete(self) -> None:
        """The job's spec was deleted: stop everything and clear the job's retained plan, status and globals."""
        if not self.finished:
            self.stage = Stage.DONE
        self._signal("stop")
        self._discard_incoming()
        self._safely(self._port.clear_state, self.name)
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

    def on_update_manifest(self, node: str, round_: int, manifest: TransferManifest, now_s: float) -> None:
        """An update or init manifest: answered at once when already stored or refused, else assembled.

        A manifest that arrives again while its transfer is incomplete is a resume request: the ack
        names the missing chunks. A first manifest of an incomplete transfer arms the resume timer.
        """
        self._clock = max(self._clock, now_s)
        ident = (round_, node, manifest.transfer)
        key = self._key(*ident)
        if self._answer_known(node, round_, manifest):
            return
        if self.stage is Stage.STARTING and self._resume and manifest.uid == self.uid:
            # A resumed run before its script is back: answered once the round state is restored.
            self._early_manifests[(round_, node, manifest.transfer)] = manifest
            return
        try:
            self._check_manifest(node, round_, manifest)
        except UpdateRejectedError as exc:
            self._forget(key)
            self._reject(node, manifest, exc)
            self._publish()
            return
        if manifest.kind == "update" and node in self._counted:
            self._duplicate(node, manifest)
            return
        self._take_manifest(node, round_, manifest, now_s)

    def on_malformed_manifest(self, node: str, round_: int, transfer: str, reason: str) -> None:
        """A manifest on this job's update topic that is not a valid manifest: refused, and said so."""
        if self.finished:
            self._log.info("malformed manifest after the end ignored", worker=node, reason=reason)
            return
        ack = UpdateAck(
            job=self.name, uid=self.uid, round=round_, node=node, transfer=transfer, accepted=False, reason=reason
        )
        self._safely(self._port.send_ack, ack)
        self._event(
            "Warning",
            "UpdateRejected",
            f"update from {node} for round {round_} rejected: malformed manifest: {reason}",
            node=node,
            round_=round_,
        )
        self._publish()

    def _take_manifest(self, node: str, round_: int, manifest: TransferManifest, now_s: float) -> None:
        ident = (round_, node, manifest.transfer)
        key = self._key(*ident)
        if key in self._incoming and self._assembler.missing(key) is not None:
            self._request_missing(key, now_s)
            return
        try:
            done = self._assembler.add_manifest(key, manifest)
        except TransferError as exc:
            self._forget(key)
            self.reject_transfer(node, manifest, str(exc))
            return
        if done is not None:
            self._incoming.pop(key, None)
            self._complete(node, round_, done.manifest, done.blob)
            return
        if self._assembler.missing(key) is None:
            # Completed before but neither stored nor refused (it could not be stored): take it again,
            # under a fresh assembler key (the assembler takes the old key's chunks for duplicates).
            base = _transfer_key(*ident)
            self._retries[base] = self._retries.get(base, 0) + 1
            key = self._key(*ident)
            self._log.info("manifest of a transfer completed before; asking for it again", worker=node)
            self._assembler.add_manifest(key, manifest)
            self._incoming[key] = _Incoming(node, round_, manifest, now_s, self._resume_after)
            self._request_missing(key, now_s)
            return
        if key not in self._incoming:
            self._incoming[key] = _Incoming(node, round_, manifest, now_s + self._resume_after, self._resume_after)

    def _answer_known(self, node: str, round_: int, manifest: TransferManifest) -> bool:
        """Answer a manifest of a transfer already stored (accepted) or refused (the same reason)."""
        if manifest.uid != self.uid or manifest.sender != node or manifest.round != round_:
            return False
        ident = (round_, node, manifest.transfer)
        if ident in self._stored:
            self._ack(node, manifest, True, "already stored")
            self._log.info("manifest of a stored transfer: acknowledged again", worker=node, transfer_round=round_)
            return True
        refused = self._refused.get(ident)
        if refused is not None:
            self._ack(node, manifest, False, refused)
            return True
        return False

    def on_update_chunk(self, node: str, round_: int, transfer: str, index: int, data: bytes, *, now_s: float) -> None:
        """One chunk of an update transfer; the transfer is handled when its last chunk arrives."""
        self._clock = max(self._clock, now_s)
        if node not in self.participants or not self.wants_transfer(round_):
            return
        key = self._key(round_, node, transfer)
        if (round_, node, transfer) in self._stored:
            return
        try:
            done = self._assembler.add_chunk(key, index, data)
        except TransferError as exc:  # every chunk matched, the whole blob did not: a bad manifest
            self._forget(key)
            self._log.warning("transfer failed its final check", worker=node, transfer=transfer, error=str(exc))
            return
        incoming = self._incoming.get(key)
        if done is not None:
            self._incoming.pop(key, None)
            self._complete(node, round_, done.manifest, done.blob)
        elif incoming is not None:
            incoming.due = now_s + self._resume_after
            incoming.interval = self._resume_after

    def reject_transfer(self, node: str, manifest: TransferManifest, reason: str) -> None:
        """The medium could not take this transfer (e.g. larger than the receiver's limit): reject it."""
        self._reject(node, manifest, UpdateRejectedError(reason))
        self._publish()

    def _complete(self, node: str, round_: int, manifest: TransferManifest, blob: bytes) -> None:
        if manifest.kind == "init":
            self.on_init_transfer(node, round_, manifest, blob)
        else:
            self.on_update(node, round_, manifest, blob)

    def _request_missing(self, key: str, now_s: float) -> None:
        """Ask the sender for the chunks of `key` that are not in (an UpdateAck with `missing`)."""
        incoming = self._incoming.get(key)
        if incoming is None:
            return
        manifest = incoming.manifest
        missing = self._assembler.missing(key)
        if missing is None:  # evicted to bound memory: everything again
            with contextlib.suppress(TransferError):
                self._assembler.add_manifest(key, manifest)
            missing = list(range(manifest.chunks))
        if not missing:
            return
        self._ack(
            incoming.node,
            manifest,
            False,
            f"incomplete: {len(missing)} of {manifest.chunks} chunks missing",
            missing=missing,
        )
        self._log.info(
            "asked for missing chunks", worker=incoming.node, transfer=manifest.transfer, missing=len(missing)
        )
        incoming.due = now_s + incoming.interval
        incoming.interval = min(incoming.interval * 2, MAX_RESUME_INTERVAL)

    def _key(self, round_: int, node: str, transfer: str) -> str:
        base = _transfer_key(round_, node, transfer)
        retry = self._retries.get(base)
        return base if retry is None else f"{base}#{retry}"

    def _forget(self, key: str) -> None:
        self._incoming.pop(key, None)
        self._assembler.discard(key)

    def _discard_incoming(self, round_: int | None = None) -> None:
        """Drop incomplete transfers (of `round_`, or all)."""
        for key, incoming in list(self._incoming.items()):
            if round_ is None or incoming.round == round_:
                self._forget(key)
        if round_ is None:
            for key in self._assembler.pending:
                self._assembler.discard(key)

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
            self._folded[0] = [(node, manifest.transfer)]
            params = sum(int(np.prod(shape)) for _, _, shape in layout)
            self._event(
                "Normal",
                "InitialModel",
                f"the round-0 model comes from {node} ({len(layout)} tensors, {params} parameters)",
                node=node,
            )
            # The checkpoint of round 0 is the durable store of this init: acknowledged after it.
            if self._commit_round(0, self._global, manifest.num_samples, final=False):
                self._stored.add((0, node, manifest.transfer))
                self._ack(node, manifest, True, "round-0 model")
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
                self._stored.add((0, node, manifest.transfer))
                self._ack(node, manifest, True, f"a round-0 model was already chosen (from {self._global_from})")
                self._log.info("init transfer ignored: the round-0 model is already chosen", worker=node)
        self._publish()

    def on_update(
        self, node: str, round_: int, manifest: TransferManifest, blob: bytes, *, spooled: bool = False
    ) -> None:
        """A complete `update` transfer: checked, stored, counted once per worker and round, folded on arrival.

        `spooled`: the update comes from the spool (a restart refolds it): it is stored already.
        """
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
                self.strategy.check(self._acc, arrays, manifest.num_samples)
            except StrategyError as exc:
                raise UpdateRejectedError(str(exc)) from exc
        except UpdateRejectedError as exc:
            self._reject(node, manifest, exc)
            self._publish()
            return
        if not spooled:
            try:
                self._port.store_update(self.name, round_, node, manifest.transfer, blob)
            except AggregatorError as exc:
                # Not acknowledged: the edge keeps its copy and sends the manifest again later.
                self._event(
                    "Warning",
                    "UpdateNotStored",
                    f"update from {node} for round {round_} could not be stored (not acknowledged): {exc}",
                    node=node,
                )
                self._publish()
                return
        try:
            self._acc = self.strategy.fold(self._acc, arrays, manifest.num_samples)
        except StrategyError as exc:  # check() passed: a bug in the strategy
            self._fail("AggregationFailed", f"round {round_}: folding the update of {node} failed: {exc}")
            self._publish()
            return
        self._counted[node] = manifest.num_samples
        self._counted_transfers[node] = manifest.transfer
        self._stored.add((round_, node, manifest.transfer))
        self._ack(node, manifest, True, "stored")
        self._event(
            "Normal",
            "UpdateAccepted",
            f"update from {node} for round {self.round} ({manifest.num_samples} samples)"
            + (", from the spool" if spooled else "")
            + f"; {len(self._counted)}/{len(self.participants)} in",
            node=node,
        )
        if all(p in self._counted for p in self.participants) or (
            self._deadline_passed and len(self._counted) >= self.min_participants
        ):
            self._close_round()
        self._publish()

    # -- workers and nodes -----------------------------------------------------------------------

    def on_worker_status(self, node: str, worker: WorkerStatus, *, retained: bool) -> None:
        """A training worker's own status: folded into the job status; Failed fails the job."""
        if node not in self.participants or worker.node != node or worker.job != self.name:
            self._log.info("worker status ignored: not a training worker of this job", worker=node)
            return
        if self.stage is Stage.STARTING:
            if self._resume and worker.uid == self.uid:
                self._early_statuses[node] = (worker, retained)  # replayed once the resumed job runs
            else:
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
        self._offline_from.pop(node, None)
        self._book.replace_worker(worker.model_copy(update={"role": "training"}))
        if previous is None or previous.state is not worker.state:
            self._log.info("worker state", worker=node, state=worker.state.value, worker_round=worker.round)
        if not self.finished:
            self._worker_changed(node, worker, previous)
        elif worker.state is WorkerState.COMPLETED and (previous is None or previous.state is not worker.state):
            self._event("Normal", "WorkerCompleted", f"worker {node} completed (after the job)", node=node)
        self._publish()

    def _worker_changed(self, node: str, worker: WorkerStatus, previous: WorkerStatus | None) -> None:
        if worker.state is WorkerState.FAILED:
            self._event("Warning", "WorkerFailed", f"worker {node} failed: {worker.message}", node=node)
            if self.stage is Stage.FINAL and node not in self._final_participants:
                # Left out of the final round: the final model is out; its failure does not undo that.
                self._check_complete()
            else:
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

    def on_node_status(self, node: str, state: NodeState) -> None:
        """A participant's node went offline (its last will) or came back."""
        if node not in self.participants or self.finished:
            return
        worker = self._book.worker(node)
        if worker is None or worker.state.terminal:
            return
        if state is NodeState.OFFLINE and worker.state is not WorkerState.OFFLINE:
            self._offline_from[node] = worker
            self._book.set_worker(node, WorkerState.OFFLINE, "node offline (its last will)")
            self._event("Warning", "NodeOffline", f"node {node} went offline", node=node)
        elif state is NodeState.ONLINE and worker.state is WorkerState.OFFLINE:
            before = self._offline_from.pop(node, None)
            if before is not None:
                self._book.replace_worker(
                    before.model_copy(update={"message": "node back online", "updated_at": now()})
                )
            else:
                self._book.set_worker(node, WorkerState.PENDING, "node back online")
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
        checkpoint = self._checkpoint[0] if self._checkpoint else None
        if checkpoint is not None and checkpoint.exit_round != self.exit_round:
            self._event(
                "Warning",
                "ExitRoundChanged",
                f"the aggregation script says exit_round={self.exit_round}, the checkpoint's run has "
                f"{checkpoint.exit_round}; the run keeps {checkpoint.exit_round}",
            )
            self.exit_round = checkpoint.exit_round
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
        if self._checkpoint is not None:
            self._restore(*self._checkpoint)
        else:
            status = self.status
            status.phase = Phase.RUNNING
            if status.start_time is None:
                status.start_time = now()
            status.exit_round = self.exit_round
            status.message = f"round 0: waiting for an initial model from {', '.join(self.participants)}"
            self._book.condition(ConditionType.TRAINING, "DoTraining", "waiting for the round-0 model")
            self._set_agg_worker(WorkerState.READY, f"{self.strategy.name}, {self.exit_round} rounds")
            self._event(
                "Normal",
                "Started" if not self._resume else "Resumed",
                f"plan published: {self.strategy.name}, {self.exit_round} rounds, participants "
                f"{', '.join(self.participants)}"
                + (" (resumed without a checkpoint: round 0)" if self._resume else ""),
            )
        for node, (worker, retained) in list(self._early_statuses.items()):
            if not self.finished:
                self.on_worker_status(node, worker, retained=retained)
        self._early_statuses.clear()
        early, self._early_manifests = self._early_manifests, {}
        for (round_, node, _), manifest in early.items():
            if not self.finished:
                self.on_update_manifest(node, round_, manifest, self._clock)

    def _load_checkpoint(self) -> None:
        """Read the job's checkpoint for a resumed run; one of another run or spec is ignored."""
        try:
            loaded = self._port.load_checkpoint(self.name)
        except AggregatorError as exc:
            self._event("Warning", "CheckpointUnreadable", f"the checkpoint cannot be read; resuming at round 0: {exc}")
            return
        if loaded is None:
            return
        checkpoint, blob = loaded
        if checkpoint.uid != self.uid or checkpoint.spec_hash != self.spec.spec_hash():
            self._log.info("checkpoint of another run ignored", checkpoint_uid=checkpoint.uid)
            self._safely(self._port.clear_state, self.name)
            return
        self._checkpoint = (checkpoint, blob)

    def _restore(self, checkpoint: Checkpoint, blob: bytes) -> None:
        """Resume after the checkpoint's round: status, global model, what was folded, the spool of the open round."""
        assert self.strategy is not None
        try:
            header, arrays = decode_weights(blob)
        except WireError as exc:
            self._fail("CheckpointUnreadable", f"the checkpoint's global model cannot be read: {exc}")
            return
        closed = checkpoint.closed_round
        restored = checkpoint.status.model_copy(deep=True)
        previous = self._previous
        if previous is not None and previous.uid == self.uid:
            # The retained status is at least as new as the checkpoint for the workers' own states.
            for worker in previous.workers:
                if worker.role == "training" and worker.node in self.participants:
                    restored.workers = [
                        w for w in restored.workers if not (w.node == worker.node and w.role == "training")
                    ]
                    restored.workers.append(worker)
        self._book.status = restored
        status = self.status
        status.phase = Phase.RUNNING
        status.exit_round = self.exit_round
        status.current_round = closed
        self._global = [np.array(a) for a in arrays]
        self._layout = header.layout()
        self._names = [t.name for t in header.tensors]
        self._global_from = checkpoint.folded.get("0", [("?", "")])[0][0]
        self._folded = {int(r): [(n, t) for n, t in pairs] for r, pairs in checkpoint.folded.items()}
        self._stored = {(r, n, t) for r, pairs in self._folded.items() for n, t in pairs}
        final = closed >= self.exit_round
        self._set_agg_worker(WorkerState.READY, f"{self.strategy.name}, {self.exit_round} rounds (resumed)")
        self._event(
            "Normal",
            "Resumed",
            f"resumed from the checkpoint of round {closed}" + ("" if final else f"; round {closed + 1} is open"),
        )
        if not self._publish_global(closed, self._global, header.num_samples, final=final, blob=blob):
            return
        if final:
            self._final_participants = [n for n, _ in self._folded.get(closed, [])]
            self.stage = Stage.FINAL
            self.status.message = f"final model published (round {closed}); waiting for every worker to save it"
            self._check_complete()
            return
        self._begin_round(closed + 1)
        self._refold_spool(closed + 1)

    def _refold_spool(self, round_: int) -> None:
        """Fold the updates stored for `round_` before a restart, each (node, round) once."""
        try:
            spooled = self._port.spooled_updates(self.name, round_)
        except AggregatorError as exc:
            self._event("Warning", "SpoolUnreadable", f"round {round_}: the spooled updates cannot be read: {exc}")
            return
        for entry in spooled:
            if self.stage is not Stage.TRAINING or self.round != round_:
                break
            if entry.node in self._counted or entry.node not in self.participants:
                continue
            try:
                header, _ = decode_weights(entry.blob)
            except WireError as exc:
                self._log.warning("unreadable spooled update skipped", worker=entry.node, error=str(exc))
                continue
            manifest = TransferManifest(
                transfer=entry.transfer,
                kind="update",
                job=self.name,
                uid=self.uid,
                round=round_,
                sender=entry.node,
                total_bytes=len(entry.blob),
                chunk_size=max(1, len(entry.blob)),
                chunks=1,
                sha256=hashlib.sha256(entry.blob).hexdigest(),
                chunk_sha256=[hashlib.sha256(entry.blob).hexdigest()],
                num_samples=header.num_samples,
            )
            self.on_update(entry.node, round_, manifest, entry.blob, spooled=True)

    def _begin_round(self, round_: int) -> None:
        assert self.strategy is not None and self._global is not None
        self.stage = Stage.TRAINING
        self.round = round_
        self._counted = {}
        self._counted_transfers = {}
        self._acc = self.strategy.begin(self._layout, self._global)
        self._round_opened = self._clock
        self._deadline_passed = False
        self._log = self._log.bind(round=round_)

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
        missing = [p for p in self.participants if p not in self._counted]
        stamp = now()
        self._folded[r] = [(n, self._counted_transfers.get(n, "")) for n in self._counted]
        self._book.record_round(
            RoundRecord(
                round=r, participants=list(self._counted), total_samples=total, closed_at=stamp, missing=missing
            )
        )
        self._book.condition(ConditionType.TRAINING, "DoTraining", f"Round {r} reaches at {stamp.isoformat()}")
        self.status.current_round = r
        if missing:
            waited = self._clock - self._round_opened
            self._event(
                "Warning",
                "RoundClosedWithout",
                f"round {r} closed without {', '.join(missing)} after {waited:.0f} s "
                f"({len(self._counted)}/{len(self.participants)} updates, quorum {self.min_participants})",
            )
        self._event(
            "Normal",
            "RoundClosed",
            f"round {r}: {self.strategy.name} of {len(self._counted)} updates, {total} samples"
            + (" (final)" if final else ""),
        )
        if final:
            self.stage = Stage.FINAL
            self._final_participants = list(self._counted)
            self.status.message = f"final model published (round {r}); waiting for every worker to save it"
        if not self._commit_round(r, weights, total, final=final):
            return
        self._global = weights
        self._discard_incoming(r)
        if not final:
            self._begin_round(r + 1)
            return
        self._acc = None
        self._save_model(r)
        left_out = [p for p in self.participants if p not in self._final_participants]
        if left_out:
            self._event(
                "Warning",
                "LeftOutOfFinalRound",
                f"{', '.join(left_out)} did not take part in the final round {r}; the job completes without "
                "waiting for them (they catch up from the retained final model)",
            )
        self._check_complete()

    def _check_complete(self) -> None:
        if self.stage is not Stage.FINAL:
            return
        if self._book.all_training(self._final_participants, WorkerState.COMPLETED):
            self.stage = Stage.DONE
            status = self.status
            status.phase = Phase.SUCCEEDED
            status.completion_time = now()
            left_out = [p for p in self.participants if p not in self._final_participants]
            status.message = (
                f"completed {self.exit_round} rounds; every worker of the final round saved the final model"
            )
            if left_out:
                status.message += f" (not in the final round: {', '.join(left_out)})"
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
        self._discard_incoming()
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

    def _commit_round(self, round_: int, weights: Sequence[npt.NDArray[Any]], num_samples: int, *, final: bool) -> bool:
        """A closed round (0: the chosen init): checkpoint, publish the global model, drop the round's spool."""
        assert self.strategy is not None
        blob = self._global_blob(round_, weights, num_samples)
        checkpoint = Checkpoint(
            job=self.name,
            uid=self.uid,
            spec_hash=self.spec.spec_hash(),
            closed_round=round_,
            exit_round=self.exit_round,
            participants=list(self.participants),
            strategy=self.strategy.name,
            folded={str(r): list(pairs) for r, pairs in sorted(self._folded.items())},
            status=self._book.snapshot().model_copy(deep=True),
        )
        try:
            self._port.save_checkpoint(checkpoint, blob)
        except AggregatorError as exc:
            self._event("Warning", "CheckpointFailed", f"round {round_}: the checkpoint could not be written: {exc}")
        if not self._publish_global(round_, weights, num_samples, final=final, blob=blob):
            return False
        self._safely(self._port.drop_spool, self.name, round_)
        return True

    def _global_blob(self, round_: int, weights: Sequence[npt.NDArray[Any]], num_samples: int) -> bytes:
        return encode_weights(
            weights,
            kind="global",
            job=self.name,
            round_=round_,
            sender=self.node,
            num_samples=num_samples,
            names=self._names,
        )

    def _publish_global(
        self,
        round_: int,
        weights: Sequence[npt.NDArray[Any]],
        num_samples: int,
        *,
        final: bool,
        blob: bytes | None = None,
    ) -> bool:
        blob = (
            blob
            if blob is not None
            else encode_weights(
                weights,
                kind="global",
                job=self.name,
                round_=round_,
                sender=self.node,
                num_samples=num_samples,
                names=self._names,
            )
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

    def _ack(
        self, node: str, manifest: TransferManifest, accepted: bool, reason: str, *, missing: list[int] | None = None
    ) -> None:
        ack = UpdateAck(
            job=self.name,
            uid=manifest.uid,
            round=manifest.round,
            node=node,
            transfer=manifest.transfer,
            accepted=accepted,
            reason=reason,
            missing=missing or [],
        )
        self._safely(self._port.send_ack, ack)

    def _reject(self, node: str, manifest: TransferManifest, exc: UpdateRejectedError) -> None:
        self._ack(node, manifest, False, exc.reason)
        if manifest.uid == self.uid and manifest.sender == node:
            self._refused[(manifest.round, node, manifest.transfer)] = exc.reason
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

    def _waiting_for(self) -> list[str]:
        if self.stage is Stage.INIT:
            return list(self.participants)
        if self.stage is Stage.TRAINING:
            return [p for p in self.participants if p not in self._counted]
        return []

    def _publish(self) -> None:
        status = self.status
        status.waiting_for = self._waiting_for()
        if self.stage is Stage.TRAINING:
            who = ", ".join(status.waiting_for)
            n, total = len(self._counted), len(self.participants)
            if self._deadline_passed:
                status.message = (
                    f"round {self.round}: waiting for {who} ({n}/{total} updates, quorum {self.min_participants})"
                )
            else:
                status.message = (
                    f"round {self.round}/{self.exit_round}: waiting for updates from {who} ({n}/{total} in)"
                )
                if self.round_deadline is not None:
                    status.message += f", deadline {self.round_deadline:g} s, quorum {self.min_participants}"
        self._safely(self._port.publish_status, Kind.JOB, self.name, self._book.snapshot())

"""The state of one job on one edge and the effects every handler of `EdgeJob` uses.

`JobCore` holds what the job knows (state, rounds, the script's reports) and does what every event
handler needs: set a state and publish the worker status, fail, check a frame's weights, upload through
the outbox. `EdgeJob` (`_job`) decides, per event, which of these to do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy.typing as npt
from structlog.typing import FilteringBoundLogger

from edge_trainer.engine._launch import LaunchSpec, installed_tensorflow_version
from edge_trainer.engine._ports import Compression, JobPorts, Launcher, UploadRequest, WorkerHandle
from edge_trainer.engine._secagg import PartyLinks, SecAggParty, is_secure_aggregation
from edge_trainer.engine._secagg_files import SecAggFiles
from runtime import get_logger
from schemas import (
    Evaluation,
    JobPlan,
    NodeRoot,
    TransferManifest,
    WeightsHeader,
    WeightsKind,
    WireError,
    WorkerState,
    WorkerStatus,
    read_header,
    update_compression,
)

__all__ = ["JobCore"]


class JobCore:
    """This node's part of one job run (`plan.job`, `plan.uid`): its state and the effects on it."""

    def __init__(
        self,
        plan: JobPlan,
        *,
        node: str,
        root: NodeRoot,
        ports: JobPorts,
        launcher: Launcher,
        tf_version: Callable[[], str | None] = installed_tensorflow_version,
        stop_grace: float = 10.0,
        pending_rounds: Callable[[], set[int]] | None = None,
        delivered_round: Callable[[], int] | None = None,
        log: FilteringBoundLogger | None = None,
        site: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`site`: the node's own site (node.yaml `site:`), checked against a hierarchical plan's. `pending_rounds`: rounds whose update of this run (round 0: the init) is in the node's outbox,
        not confirmed by the aggregator yet (None: an outbox that is always empty). `delivered_round`: the
        newest round of this run whose update (0: the init) the aggregator confirmed, as the node recorded
        it durably; -1 for none (None: nothing recorded, ever). `clock`: the service's, for the init wait's
        deadline (`EdgeJob.next_deadline`, `EdgeJob.tick`)."""
        self.plan = plan
        self.node = node
        self.site = site
        self.run_id = uuid.uuid4().hex
        self.state = WorkerState.PENDING
        self.round = 0
        self.used_global = -1  # newest global round handed to the script
        self.trained_round = 0  # newest round the script was asked to train
        self.num_samples: int | None = None
        self.metrics: dict[str, float] = {}  # the local fit's training metrics of round `metrics_round`
        self.metrics_round: int | None = None
        # The newest global model the script scored on its held-out data; published with the next status
        # (the next round's upload, or Completed), so an evaluation adds no status message of its own.
        self.evaluation: Evaluation | None = None
        self.message = ""
        self.model_path: str | None = None
        self.model_digest: str | None = None
        self.launch: LaunchSpec | None = None
        self._root = root
        self._ports = ports
        self._launcher = launcher
        self._tf_version = tf_version
        self._stop_grace = stop_grace
        self._pending_rounds = pending_rounds or set
        self._delivered_round = delivered_round or (lambda: -1)
        self._log = (log or get_logger()).bind(job=plan.job, uid=plan.uid)
        self._worker: WorkerHandle | None = None
        self._hello = False
        self._busy = False  # the script is training or saving: it reads no frame until it answers
        self._pending: tuple[TransferManifest, bytes] | None = None
        self._notice = ""  # warnings shown in every non-failure status (framework version)
        self._error: str | None = None  # what the script reported before exiting
        self._data_error = False  # ... and it is a data error: its one line is the whole message
        self.skipped: int | None = None  # label lines the script's data loader skipped (its hello)
        self.skipped_lines: list[str] | None = None
        self._retired = False  # deleted or shut down: events of the old run are ignored
        self._clock = clock
        # The plan asks another worker for the initial weights: this node's init (its hello's body) is kept
        # until the round-0 model comes, or uploaded as a fallback at the deadline (a `clock` time).
        self._init_wait: tuple[float, bytes] | None = None
        planned = plan.worker(node)
        # The update encoding (training-worker parameter ``compression``) and, while the script trains a
        # round, the global model it trains from: the base the update's delta is taken from.
        self._codec, self._fraction = update_compression(planned.parameters if planned is not None else {})
        self._base: tuple[int, list[npt.NDArray[Any]]] | None = None
        # Secure aggregation (the plan gives every training worker ``secure_aggregation: "true"``): the
        # update is held for the masking step instead of uploaded; the protocol is `SecAggParty`'s.
        self.secagg: SecAggParty | None = None
        if planned is not None and is_secure_aggregation(planned.parameters):
            links = PartyLinks(
                publish=lambda step, round_, payload: ports.publish_secagg(step, plan.job, round_, payload),
                upload=self._upload_masked,
                say=self._say_held,
                num_samples=lambda: self.num_samples if self._hello else None,
                newest_global=lambda: self.newest_global,
            )
            files = SecAggFiles(root.path / "state")
            self.secagg = SecAggParty(job=plan.job, uid=plan.uid, node=node, files=files, links=links, log=self._log)

    # -- properties --------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state.terminal

    @property
    def active(self) -> bool:
        """True while events for this run should be handled."""
        return not self._retired and not self.state.terminal

    @property
    def worker(self) -> WorkerHandle | None:
        return self._worker

    @property
    def newest_global(self) -> int:
        """The newest global round this job holds (handed to the script or kept for it); -1 for none."""
        return max(self.used_global, self._pending[0].round if self._pending is not None else -1)

    def _check_body(self, body: bytes | None, kind: str, round_: int, what: str) -> WeightsHeader | None:
        if not body:
            self._protocol_error(f"the {what} frame carries no weights")
            return None
        try:
            header, _ = read_header(body)
        except WireError as exc:
            self._protocol_error(f"the {what} frame's weights are malformed: {exc}")
            return None
        if header.kind != kind or header.round != round_ or header.job != self.plan.job:
            self._protocol_error(
                f"the {what} frame's weights say {header.kind} of job {header.job} round {header.round}, "
                f"expected {kind} of job {self.plan.job} round {round_}"
            )
            return None
        return header

    def _upload(self, kind: WeightsKind, round_: int, blob: bytes, *, masked: bool = False) -> None:
        compression = None
        if (
            kind == "update"
            and not masked
            and self._codec is not None
            and self._base is not None
            and self._base[0] == round_
        ):
            compression = Compression(self._codec, self._fraction, self._base[1])
        request = UploadRequest(
            compression=compression,
            kind=kind,
            job=self.plan.job,
            uid=self.plan.uid,
            round=round_,
            sender=self.node,
            num_samples=self.num_samples or 0,
            run_id=self.run_id,
            blob=blob,
            chunk_size=self.plan.chunk_size,
        )
        self._ports.upload(request)

    def _upload_masked(self, round_: int, blob: bytes) -> None:
        """The masked update of `round_` (`SecAggParty`): stored and sent as it is, never re-encoded."""
        if not self.active:
            return
        self._set(WorkerState.UPLOADING, round_, f"uploading the masked update of round {round_}")
        self._upload("update", round_, blob, masked=True)

    def _say_held(self, round_: int, message: str) -> None:
        """A word about the update of `round_` held for secure aggregation (while the job is at that round)."""
        if self.active and not self._busy and self.round == round_:
            self._set(WorkerState.WAITING, round_, message)

    def _outbox_rounds(self) -> set[int]:
        return self._pending_rounds()

    @staticmethod
    def _delivered_message(round_: int) -> str:
        return (
            f"update of round {round_} stored by the aggregator before a restart; "
            f"waiting for the global model of round {round_}"
        )

    def _protocol_error(self, reason: str) -> None:
        self._log.error("worker protocol error", reason=reason)
        self._fail(reason)
        if self._worker is not None:
            self._worker.stop(self._stop_grace)

    def _fail(self, message: str) -> None:
        self._busy = False
        self._pending = None
        self.state = WorkerState.FAILED
        self.message = message
        self._publish()
        if self.secagg is not None:
            self.secagg.close()

    def _set(self, state: WorkerState, round_: int, message: str) -> None:
        self.state = state
        self.round = round_
        # The notice (e.g. a frameworkVersion mismatch) is said when the script starts and when the job
        # ends, not repeated on every state in between.
        noted = state in (WorkerState.STARTING, WorkerState.COMPLETED) and self._notice
        self.message = f"{message} ({self._notice})" if noted else message
        self._publish()
        if state.terminal and self.secagg is not None:
            self.secagg.close()  # the job ended: its round files mean nothing now

    def _publish(self) -> None:
        self._ports.publish_status(
            WorkerStatus(
                job=self.plan.job,
                uid=self.plan.uid,
                node=self.node,
                state=self.state,
                round=self.round,
                num_samples=self.num_samples,
                skipped=self.skipped,
                skipped_lines=self.skipped_lines,
                message=self.message,
                model_path=self.model_path,
                model_digest=self.model_digest,
                metrics=self.metrics,
                metrics_round=self.metrics_round,
                evaluation=self.evaluation,
            )
        )

"""One job on one edge: a plain state machine, driven by events, testable without a broker.

The service feeds it four kinds of events and gives it two ports (`JobPorts`: publish a worker
status, upload a weights blob) and a launcher that starts the script (`WorkerHandle`):

    start()                     check the plan locally; start the script      -> Starting | Failed
    on_frame(hello)             script ready; upload its initial weights      -> Uploading (round 0)
                                (the plan names another init source: wait     -> Ready (round 0))
    tick(now)                   no global model within the plan's init_wait:
                                upload the initial weights after all (fallback) -> Uploading (round 0)
    on_uploaded(init)                                                         -> Ready
    on_global(round r)          train round r+1 from the global model         -> Training (r+1)
    on_frame(evaluated)         the script scored global model r (kept; said with the next status)
    on_frame(update)            upload the trained weights for round r+1      -> Uploading
    on_uploaded(update)         the broker has it                             -> Waiting
    on_acked / on_refused       the aggregator stored it / refused it for good   (message)
    on_global(final)            save the final model                          -> Saving
    on_frame(saved)                                                           -> Completed
    on_frame(error) / on_exit(non-zero) / a failed upload                     -> Failed (+ log tail)

Uploads go through the service's outbox (`JobPorts.upload`): an update stays on disk until the
aggregator confirms it, and is sent again after a restart. So the job asks the outbox
(the `pending_rounds` callable) before producing an update: the init upload is skipped when a global
model is already known or an update is pending, and a global model of round r whose round-r+1 update
is still in the outbox does not train round r+1 again (the outbox resends it instead).
A confirmed update leaves the outbox, so the job also asks the node's delivery record (the
`delivered_round` callable: the newest round of this run the aggregator confirmed, -1 for none): after a
restart (e.g. killed while the aggregator was down, issue 7), a global model older than a delivered
round trains nothing and the init is not uploaded again; the job waits for that round's global model.
A job this node already completed (`resume_completed`) starts no script at all.
A plan whose `init_source` names another worker (issue 12) keeps this node's init instead of uploading it:
one edge gives the round-0 model, the others wait for it; with none in `plan.init_wait` seconds (the
service calls `tick` at `next_deadline`) the init goes out as a fallback. The job keeps no timer of its
own and never sleeps: it reads the service's clock and is told when time passed.
With ``secure_aggregation`` (docs/dev/secagg.md) the script's update is not uploaded when it comes: it
is held by `SecAggParty` (`secagg`), which masks it and uploads it once the round's phase allows it
(`on_secagg_state`, `on_secagg_bundle`), or drops it when this node sits the round out.
With a ``compression`` parameter the job keeps the global model it hands the script for training and
passes it with the round's update (`UploadRequest.compression`): the uploader encodes the update's delta
from it before the outbox stores it.

Global models: older than the newest one handed to the script are ignored (duplicates, retained
rounds of the past); while the script is busy (training, saving) or not ready yet (no hello) only
the newest one is kept and used as soon as it is free, so an edge that fell behind jumps to the
newest round (catch-up) instead of replaying every round it missed.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np

from edge_trainer._errors import PlanRejectedError
from edge_trainer.engine._job_core import JobCore
from edge_trainer.engine._launch import prepare_launch
from edge_trainer.engine._ports import UploadDone
from runtime import MODEL_VERSIONS_FOLDER, SERVICE_GONE_EXIT
from schemas import (
    SecAggState,
    ShareBundle,
    TransferManifest,
    WeightsKind,
    WireError,
    WorkerFrame,
    WorkerState,
    WorkerStatus,
    decode_weights,
)

__all__ = ["EdgeJob"]


class EdgeJob(JobCore):
    """This node's part of one job run (`plan.job`, `plan.uid`). All methods run on the service's logic thread."""

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> bool:
        """Check the plan locally and start the script; publish Starting, or Failed saying why not."""
        try:
            self.launch = prepare_launch(
                self.plan, self.node, self._root, tf_version=self._tf_version(), site=self.site
            )
        except PlanRejectedError as exc:
            self._log.warning("plan refused", reason=exc.reason)
            self._fail(exc.reason)
            return False
        for warning in self.launch.warnings:
            self._log.warning("plan accepted with a warning", warning=warning)
        self._notice = "; ".join(self.launch.warnings)
        self._set(WorkerState.STARTING, 0, f"starting {self.launch.script.name}")
        try:
            self._worker = self._launcher(self.launch, self.run_id)
        except OSError as exc:
            self._fail(f"cannot start the training script {self.launch.script}: {exc}")
            return False
        return True

    def resume_completed(self, status: WorkerStatus) -> None:
        """This node already completed this job run (its retained status says so and the model it saved is
        there): take that state over without starting the script or publishing anything."""
        self.state = WorkerState.COMPLETED
        self.round = status.round
        self.num_samples = status.num_samples
        self.message = status.message
        self.model_path = status.model_path
        self.model_digest = status.model_digest
        self.metrics = dict(status.metrics)
        self.metrics_round = status.metrics_round
        self.evaluation = status.evaluation
        self._log.info("job already completed on this node; not run again", model_path=status.model_path)

    def delete(self) -> None:
        """The job is gone (empty plan, or replaced by a new uid): stop the script, publish nothing more."""
        self._retired = True
        if self.secagg is not None:
            self.secagg.close()
        if self._worker is not None:
            self._worker.stop(self._stop_grace)

    def shutdown(self) -> None:
        """The node service stops: stop the script; an unfinished worker goes Offline."""
        if not self._retired and not self.state.terminal and self.state is not WorkerState.PENDING:
            self._set(WorkerState.OFFLINE, self.round, "the node service stopped")
        self._retired = True
        if self._worker is not None:
            self._worker.stop(self._stop_grace)

    # -- events ------------------------------------------------------------------------------------

    def on_frame(self, frame: WorkerFrame, body: bytes | None) -> None:
        """A frame from the script."""
        if not self.active:
            self._log.debug("frame after the job ended ignored", type=frame.type)
            return
        if frame.type == "hello":
            self._on_hello(frame, body)
        elif frame.type == "update":
            self._on_update(frame, body)
        elif frame.type == "evaluated":
            self._on_evaluated(frame)
        elif frame.type == "saved":
            self._on_saved(frame)
        elif frame.type == "error":
            # Failed is published at exit, when the log holds the traceback; make sure the exit comes.
            self._error = frame.message or "the training script reported an error"
            self._data_error = frame.error_kind == "data"
            self._log.warning("training script reported an error", message=self._error)
            if self._worker is not None:
                self._worker.stop(self._stop_grace)
        else:
            self._protocol_error(f"unexpected {frame.type!r} frame from the training script")

    def on_exit(self, returncode: int) -> None:
        """The script exited."""
        if not self.active:
            return
        if self._error is not None:
            reason = self._error
        elif returncode < 0:
            reason = f"the training script was killed by signal {-returncode}"
        elif returncode == SERVICE_GONE_EXIT:
            # The script found its worker channel closed without a stop while this service still runs:
            # a fault on this side (e.g. the channel's reader gave up), said as such.
            reason = f"the training script lost its worker channel to this service and exited (code {returncode})"
        elif returncode > 0:
            reason = f"the training script exited with code {returncode}"
        else:
            reason = (
                "the training script exited before the job finished (does it call FederatedLearning(...).train(...)?)"
            )
        if self._error is not None and self._data_error:
            # A data error reads as one: "1.txt line 3: image x.jpg not found under /data". The traceback
            # stays in worker.log, where the operator who needs it looks anyway.
            self._fail(self._error)
            return
        tail = self._worker.log_tail() if self._worker is not None else ""
        where = self.launch.log_path if self.launch is not None else "worker.log"
        self._fail(f"{reason}\nlast lines of {where}:\n{tail}" if tail else reason)

    def on_global(self, manifest: TransferManifest, blob: bytes) -> None:
        """A complete global model transfer of this job (already checked against its manifest's hashes)."""
        if not self.active:
            return
        if manifest.job != self.plan.job or manifest.uid != self.plan.uid or manifest.kind != "global":
            self._log.info(
                "global model of another job run ignored", uid=manifest.uid, kind=manifest.kind, round=manifest.round
            )
            return
        if manifest.round <= self.newest_global:
            self._log.debug("global model ignored: not newer than what the script has", round=manifest.round)
            return
        try:
            header, arrays = decode_weights(blob)
        except WireError as exc:
            self._log.error("global model ignored: bad weights blob", round=manifest.round, error=str(exc))
            return
        # The header's job is checked too, and the values must be finite (found in test review, property
        # tests): a blob naming another job, or carrying NaN/inf, went to the training script.
        if header.kind != "global" or header.round != manifest.round or header.job != self.plan.job:
            problem = "header does not match its manifest"
        elif not all(bool(np.isfinite(a).all()) for a in arrays if a.dtype.kind in "fc"):
            problem = "non-finite values (NaN or inf)"
        else:
            problem = None
        if problem is not None:
            self._log.error(f"global model ignored: {problem}", round=manifest.round)
            return
        if self._init_wait is not None:
            self._init_wait = None  # the round-0 model (or a later one) is here: our init is not needed
            self._log.info("global model came; this node's initial weights are not uploaded", round=manifest.round)
        if self.secagg is not None:
            self.secagg.on_global(manifest.round)
        if not self._hello or self._busy:
            self._pending = (manifest, blob)
            return
        self._use_global(manifest, blob)

    def next_deadline(self) -> float | None:
        """When `tick` has something to do (a `clock` time): the end of the wait for the round-0 model."""
        return self._init_wait[0] if self._init_wait is not None and self.active else None

    def tick(self, now: float) -> None:
        """Timers: no round-0 model within the plan's `init_wait` seconds: upload this node's init after all
        (the designated worker may be down; any valid init becomes the round-0 model)."""
        if self._init_wait is None or not self.active or now < self._init_wait[0]:
            return
        _, body = self._init_wait
        self._init_wait = None
        waited = self.plan.init_wait
        self._log.warning(
            "no round-0 model in time; uploading this node's initial weights (fallback)",
            init_source=self.plan.init_source,
            waited=waited,
        )
        self._set(
            WorkerState.UPLOADING,
            0,
            f"uploading the initial weights (no round-0 model from {self.plan.init_source} within {waited:g} s)",
        )
        self._upload("init", 0, body)

    def on_uploaded(self, done: UploadDone) -> None:
        """An upload this job asked for finished."""
        if not self.active:
            return
        if done.error is not None:
            self._fail(f"uploading the {done.kind} weights of round {done.round} failed: {done.error}")
            if self._worker is not None:
                self._worker.stop(self._stop_grace)
            return
        if self.state is WorkerState.UPLOADING and self.round == done.round:
            if done.pending:
                self._set(WorkerState.UPLOADING, done.round, _not_through(done.kind, done.round))
            elif done.kind == "init":
                self._set(WorkerState.READY, 0, "waiting for the first global model")
            elif self.message == _not_through(done.kind, done.round):
                # Through after a "not through yet" notice: say so. Otherwise the update stays Uploading,
                # unpublished, until the aggregator's ack says it is stored (milliseconds later as a rule):
                # a status for the moment in between was a fifth of the edge's control bytes per round.
                self._set(
                    WorkerState.UPLOADING,
                    done.round,
                    f"update of round {done.round} sent; waiting for the aggregator to store it",
                )

    def on_acked(self, kind: WeightsKind, round_: int) -> None:
        """The aggregator confirmed it stored this node's `kind` weights of `round_`."""
        if not self.active or self.round != round_:
            return
        if kind == "init" and self.state is WorkerState.UPLOADING:
            self._set(WorkerState.READY, 0, "waiting for the first global model")
        elif kind == "update" and self.state in (WorkerState.UPLOADING, WorkerState.WAITING):
            self._set(
                WorkerState.WAITING,
                round_,
                f"update of round {round_} stored by the aggregator; waiting for the round to close",
            )

    def on_unconfirmed(self, kind: WeightsKind, round_: int, waited: float) -> None:
        """The update of `round_` went out but the aggregator has not confirmed it for `waited` seconds (it
        may be down; the service asks again): say so, since Uploading would suggest a stuck link."""
        if not self.active or self.round != round_ or kind != "update" or self.state is not WorkerState.UPLOADING:
            return
        self._set(
            WorkerState.WAITING,
            round_,
            f"update of round {round_} sent; the aggregator has not confirmed it for {waited:g} s "
            "(down or busy?); asking again",
        )

    def on_refused(self, kind: WeightsKind, round_: int, reason: str) -> None:
        """The aggregator refused this node's `kind` weights of `round_` for good (e.g. the round closed):
        say so; the job goes on with the next global model (catch-up)."""
        if not self.active or self.round != round_:
            return
        if self.state in (WorkerState.UPLOADING, WorkerState.WAITING, WorkerState.READY):
            state = WorkerState.READY if kind == "init" else WorkerState.WAITING
            self._set(
                state,
                round_,
                f"the aggregator refused the {kind} of round {round_}: {reason}; waiting for the next global model",
            )

    def on_secagg_state(self, state: SecAggState) -> None:
        """The aggregator's secure aggregation state of a round of this job (ignored by other jobs)."""
        if self.active and self.secagg is not None:
            self.secagg.on_state(state)

    def on_secagg_bundle(self, bundle: ShareBundle) -> None:
        """An edge's share bundle of a round of this job."""
        if self.active and self.secagg is not None:
            self.secagg.on_bundle(bundle)

    # -- frames ------------------------------------------------------------------------------------

    def _on_hello(self, frame: WorkerFrame, body: bytes | None) -> None:
        if self._hello:
            self._protocol_error("the training script said hello twice")
            return
        header = self._check_body(body, "init", 0, "hello")
        if header is None or body is None:
            return
        self._hello = True
        self.num_samples = frame.num_samples if frame.num_samples is not None else header.num_samples
        self.skipped, self.skipped_lines = frame.skipped, frame.skipped_lines
        if frame.skipped:
            self._log.warning("label lines skipped: not samples", skipped=frame.skipped, first=frame.skipped_lines)
        delivered = self._delivered_round()
        if delivered >= 1 and delivered > self.newest_global:
            # A restart after the aggregator confirmed our update of round `delivered`: nothing to upload
            # or train until that round's global model comes (said now, before any older global model).
            self._set(WorkerState.WAITING, delivered, self._delivered_message(delivered))
        elif self.newest_global >= 0 or self._outbox_rounds() or delivered >= 0:
            # A restart: the round-0 model exists already (or an update or the init of ours is pending or
            # was confirmed, which implies it), so the initial weights are not needed.
            self._set(WorkerState.READY, 0, "waiting for the newest global model")
        elif self.plan.waits_for_init(self.node):
            # Another worker gives the round-0 model (issue 12: one init, not one per edge); ours is kept
            # for the fallback in case that worker never sends its own.
            self._init_wait = (self._clock() + self.plan.init_wait, body)
            self._set(WorkerState.READY, 0, f"waiting for the round-0 model from {self.plan.init_source}")
        else:
            self._set(WorkerState.UPLOADING, 0, "uploading the initial weights")
            self._upload("init", 0, body)
        if self.secagg is not None:
            self.secagg.resume()  # a round's keys phase may have waited for the sample count
        self._use_pending()

    def _on_update(self, frame: WorkerFrame, body: bytes | None) -> None:
        if not self._busy or self.state is not WorkerState.TRAINING or frame.round != self.trained_round:
            self._protocol_error(f"unexpected update for round {frame.round} (training round {self.trained_round})")
            return
        if self._check_body(body, "update", frame.round, "update") is None or body is None:
            return
        self._busy = False
        if frame.num_samples is not None:
            self.num_samples = frame.num_samples
        self.metrics = dict(frame.metrics)
        self.metrics_round = frame.round
        if self.secagg is not None:
            # Held, not uploaded: it leaves this node only masked, once the round's phase allows it.
            base = self._base[1] if self._base is not None and self._base[0] == frame.round else []
            self.secagg.hold(frame.round, body, base)
        else:
            self._set(WorkerState.UPLOADING, frame.round, f"uploading the update of round {frame.round}")
            self._upload("update", frame.round, body)
        self._use_pending()

    def _on_evaluated(self, frame: WorkerFrame) -> None:
        if not self._busy or frame.evaluation is None or frame.evaluation.round != frame.round:
            self._protocol_error(f"unexpected evaluation of round {frame.round} (the script is not busy with it)")
            return
        if frame.round > self.used_global:
            self._protocol_error(f"evaluation of round {frame.round}, whose global model this node never sent")
            return
        self.evaluation = frame.evaluation

    def _on_saved(self, frame: WorkerFrame) -> None:
        if self.state is not WorkerState.SAVING:
            self._protocol_error("the training script reported a saved model it was not asked to save")
            return
        self._busy = False
        self.model_path = self._root.to_url(frame.model_path) if frame.model_path else None
        self.model_digest = frame.model_digest
        message = f"final model saved at {self.model_path}"
        if self.model_path and PurePosixPath(self.model_path).parent.parent.name == MODEL_VERSIONS_FOLDER:
            # The version's own path; the url holds it as its latest until another version is saved there.
            message += f" (the latest version at {self.plan.model.url})"
        self._set(WorkerState.COMPLETED, self.round, message)

    # -- helpers -----------------------------------------------------------------------------------

    def _use_pending(self) -> None:
        if self._pending is not None and not self._busy:
            manifest, blob = self._pending
            self._pending = None
            self._use_global(manifest, blob)

    def _use_global(self, manifest: TransferManifest, blob: bytes) -> None:
        if self._worker is None:  # cannot happen: the hello came from it
            return
        r = manifest.round
        if self.used_global >= 0 and r > self.used_global + 1:
            self._log.info("catching up: newer global model than expected", expected=self.used_global + 1, got=r)
        self.used_global = r
        if manifest.final:
            self._busy = True
            self._worker.send(WorkerFrame(type="finish", round=r, has_body=True), blob)
            self._set(WorkerState.SAVING, r, f"saving the final model of round {r}")
            return
        if self.trained_round >= r + 1:
            return
        if r + 1 in self._outbox_rounds():
            # Trained before a restart and still in the outbox: resend that, do not train it again.
            self.trained_round = r + 1
            self._set(
                WorkerState.WAITING,
                r + 1,
                f"update of round {r + 1} is in the outbox; waiting for the aggregator to confirm it",
            )
            return
        delivered = self._delivered_round()
        if delivered >= r + 1:
            # Trained and confirmed before a restart: the aggregator holds it (its spool, refolded if it
            # restarted too). Training again would upload a second update of that round, refused once the
            # round closed. (The retained worker status is no such evidence: Waiting is published when the
            # broker has the update, before the aggregator stored it.)
            self.trained_round = delivered
            self._set(WorkerState.WAITING, delivered, self._delivered_message(delivered))
            return
        self.trained_round = r + 1
        self._busy = True
        if self._codec is not None or self.secagg is not None:
            # The update's delta is taken from exactly what the script gets (checked in on_global).
            self._base = (r + 1, decode_weights(blob)[1])
        self._worker.send(WorkerFrame(type="train", round=r + 1, has_body=True), blob)
        self._set(WorkerState.TRAINING, r + 1, f"training round {r + 1}")


def _not_through(kind: WeightsKind, round_: int) -> str:
    """The status message of an upload the broker has not fully acknowledged."""
    return f"the {kind} of round {round_} is not through yet (link down?); it is kept in the outbox and sent again"

"""What the training workers and their nodes report, folded into the job's status.

A worker's own status replaces its entry (Failed fails the job, as in Sedna; Completed may complete
it); a node's last will marks its worker Offline until the node or the worker speaks again (and, with a
round deadline and a quorum, lets an open round close without it once the offline grace ran out). Statuses
of this run that arrive while a resumed job waits for its script are kept in `Starting` and replayed.
"""

from __future__ import annotations

from cloud_aggregator.engine._context import JobContext
from cloud_aggregator.engine._rounds import RoundEngine
from cloud_aggregator.engine._stages import Final, Starting
from schemas import NodeState, WorkerState, WorkerStatus, now

__all__ = ["Workers"]


class Workers:
    """The training workers' side of one job's status."""

    def __init__(self, ctx: JobContext, rounds: RoundEngine) -> None:
        self._ctx = ctx
        self._rounds = rounds
        self._offline_from: dict[str, WorkerStatus] = {}  # the entry a last will replaced

    def on_worker_status(self, node: str, worker: WorkerStatus, *, retained: bool) -> None:
        """A training worker's own status: folded into the job status; Failed fails the job."""
        ctx, facts = self._ctx, self._ctx.facts
        if node not in facts.participants or worker.node != node or worker.job != facts.name:
            ctx.log.info("worker status ignored: not a training worker of this job", worker=node)
            return
        state = ctx.state
        if isinstance(state, Starting):
            if facts.resume and worker.uid == facts.uid:
                state.early_statuses[node] = (worker, retained)  # replayed once the resumed job runs
            else:
                ctx.log.info("worker status ignored: the job has not started yet", worker=node)
            return
        if worker.uid is not None and worker.uid != facts.uid:
            ctx.log.info("worker status of another run of this job ignored", worker=node, uid=worker.uid)
            return
        started = ctx.status.start_time
        if retained and started is not None and worker.updated_at < started:
            ctx.log.info("stale retained worker status ignored", worker=node, state=worker.state.value)
            return
        previous = ctx.book.worker(node)
        self._offline_from.pop(node, None)
        ctx.offline_since.pop(node, None)  # it speaks: its node is back
        ctx.book.replace_worker(worker.model_copy(update={"role": "training"}))
        changed = previous is None or previous.state is not worker.state
        if changed:
            # Debug: at 100 edges that is 400 lines a round, a quarter of a worker status's cost on the
            # logic thread (issue 12); users read the same change as WorkerStateChanged on the event stream.
            ctx.log.debug("worker state", worker=node, state=worker.state.value, worker_round=worker.round)
        if worker.skipped and (previous is None or previous.skipped != worker.skipped):
            # Said once per count: the lines stay in the worker's entry, the event makes them visible.
            first = "; ".join(worker.skipped_lines or [])
            ctx.event(
                "Warning",
                "SamplesSkipped",
                f"worker {node} skipped {worker.skipped} label line(s) that are not samples: {first}",
                node=node,
            )
        ctx.note_worker(worker)  # before a Completed completes the job: its final evaluation counts
        if not ctx.finished:
            self._worker_changed(node, worker, changed=changed)
        elif worker.state is WorkerState.COMPLETED and changed:
            ctx.event("Normal", "WorkerCompleted", f"worker {node} completed (after the job)", node=node)
        ctx.publish()

    def _worker_changed(self, node: str, worker: WorkerStatus, *, changed: bool) -> None:
        ctx = self._ctx
        state = ctx.state
        if worker.state is WorkerState.FAILED:
            ctx.event("Warning", "WorkerFailed", f"worker {node} failed: {worker.message}", node=node)
            if isinstance(state, Final) and node not in state.participants:
                # Left out of the final round: the final model is out; its failure does not undo that.
                self._rounds.check_complete()
            else:
                self._rounds.fail("WorkerFailed", f"worker {node} failed: {worker.message or 'no reason given'}")
        elif worker.state is WorkerState.COMPLETED and changed:
            ctx.event("Normal", "WorkerCompleted", f"worker {node} completed", node=node)
            if isinstance(state, Final) and worker.model_digest and worker.model_digest != state.model.digest:
                ctx.event(
                    "Warning",
                    "DigestMismatch",
                    f"worker {node} saved weights with digest {worker.model_digest[:16]}..., "
                    f"the final global model's is {state.model.digest[:16]}...",
                    node=node,
                )
            self._rounds.check_complete()

    def on_node_status(self, node: str, state: NodeState, now_s: float) -> None:
        """A participant's node went offline (its last will) or came back. An open round stops waiting for
        an offline participant after the job's offline_grace (`RoundEngine.on_presence`)."""
        ctx = self._ctx
        if node not in ctx.facts.participants or ctx.finished:
            return
        ctx.advance(now_s)
        starting = ctx.state
        if isinstance(starting, Starting):
            # A resumed run's status is restored at its config: the newest presence is replayed after it.
            if state is NodeState.OFFLINE:
                starting.offline.add(node)
                starting.online.discard(node)
            else:
                starting.offline.discard(node)
                starting.online.add(node)
            return
        worker = ctx.book.worker(node)
        if worker is None or worker.state.terminal:
            return
        if state is NodeState.OFFLINE and worker.state is WorkerState.OFFLINE:
            # Restored Offline by a resumed run: its offline grace counts from this will (`RoundEngine.absent`).
            ctx.offline_since.setdefault(node, (ctx.clock, worker.updated_at))
            return
        if state is NodeState.OFFLINE:
            self._offline_from[node] = worker
            ctx.offline_since[node] = (ctx.clock, now())
            ctx.book.set_worker(node, WorkerState.OFFLINE, "node offline (its last will)")
            ctx.event("Warning", "NodeOffline", f"node {node} went offline", node=node)
            self._rounds.on_presence()
        elif state is NodeState.ONLINE and worker.state is WorkerState.OFFLINE:
            ctx.offline_since.pop(node, None)
            before = self._offline_from.pop(node, None)
            if before is not None:
                ctx.book.replace_worker(before.model_copy(update={"message": "node back online", "updated_at": now()}))
            else:
                ctx.book.set_worker(node, WorkerState.PENDING, "node back online")
            ctx.event("Normal", "NodeOnline", f"node {node} is back online", node=node)
        else:
            return
        ctx.publish()

"""What the parts of one job share: its facts, its stage, its status, and the effects they all need.

Every effect of the engine goes through `port`. The helpers here are the ones several parts use:
an event (status and log), an `UpdateAck`, a signal to the script (at most one), the status
publication, and `safely` for effects whose failure is worth a log line and nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import structlog
from structlog.typing import FilteringBoundLogger

from cloud_aggregator._errors import AggregatorError
from cloud_aggregator.engine._facts import JobFacts
from cloud_aggregator.engine._ledger import RoundLedger
from cloud_aggregator.engine._port import Port, ScriptSignal
from cloud_aggregator.engine._stages import Done, JobState, Starting
from cloud_aggregator.engine._status import StatusBook, initial_status, show_state
from schemas import JobStatus, Kind, RoundRecord, TransferManifest, UpdateAck, WorkerState, WorkerStatus

__all__ = ["EventType", "JobContext"]

EventType = Literal["Normal", "Warning"]

# The wait before a status change that is not urgent doubles up to this many times (8 x the interval).
_MAX_DOUBLINGS = 3


class JobContext:
    """One job's shared state: `facts` (fixed), `state` (its stage), `book` (its status), `clock`."""

    def __init__(self, facts: JobFacts, port: Port) -> None:
        self.facts = facts
        self.port = port
        self.log: FilteringBoundLogger = structlog.get_logger("cloud_aggregator.job").bind(
            job=facts.name, uid=facts.uid
        )
        self.book = StatusBook(initial_status(facts))
        self.ledger = RoundLedger()
        self.state: JobState = Starting(config_deadline=math.inf)  # due from `AggregationScript.start` on
        self.clock = 0.0  # the latest time any call brought (for timers armed inside handlers)
        self._published_at: float | None = None  # `clock` of the last status publication
        self._published_shape: tuple[object, ...] | None = None  # what makes a change urgent (`_shape`)
        self._deferred = False  # a change not published yet (`status_interval`)
        self._calm = 1  # 1 + publications since the last urgent one: each doubles the wait (`_wait`)
        self._rounds_stale = False  # workers' figures the round summaries do not show yet (`note_worker`)
        self._signalled: ScriptSignal | None = None
        # node -> (`clock`, wall time) of its last will, while its worker shows Offline (`Workers` keeps it;
        # `RoundEngine` stops waiting for it after the job's offline_grace)
        self.offline_since: dict[str, tuple[float, datetime]] = {}

    @property
    def status(self) -> JobStatus:
        return self.book.status

    @property
    def finished(self) -> bool:
        return isinstance(self.state, Done)

    @property
    def signalled(self) -> ScriptSignal | None:
        """The signal sent to the aggregation script, if any (its exit code reads differently then)."""
        return self._signalled

    def advance(self, now_s: float) -> None:
        self.clock = max(self.clock, now_s)

    # -- status ----------------------------------------------------------------------------------

    def event(
        self, type_: EventType, reason: str, message: str, *, node: str | None = None, round_: int | None = None
    ) -> None:
        """An event in the job's status (of the current round unless `round_`), logged too."""
        self.book.event(type_, reason, message, round_=self.state.round if round_ is None else round_, node=node)
        log = self.log.warning if type_ == "Warning" else self.log.info
        log(reason, message=message, worker=node)

    def set_agg_worker(self, state: WorkerState, message: str) -> None:
        self.book.set_worker(self.facts.node, state, message, role="aggregation", round_=self.state.round)

    def close_round(self, record: RoundRecord) -> None:
        """A closed round's record: kept by the ledger, summarised in the status, published with the status."""
        self.ledger.close(record)
        self.book.show_rounds(self.ledger.recent())
        self._rounds_stale = False

    def note_worker(self, worker: WorkerStatus) -> None:
        """The training metrics and evaluation a worker's status carries, into the rounds they belong to. The
        round summaries follow at the next publication (`_publish_now`): every edge reports its figures each
        round, and summing them all again on each report cost the square of the edges."""
        if self.ledger.note(worker):
            self._rounds_stale = True

    def restore_rounds(self) -> None:
        """A resumed run: the ledger starts from the round summaries of the restored status."""
        self.ledger = RoundLedger(self.status.rounds)

    def publish(self) -> None:
        """Publish the status (retained), with whom the job waits for and the open round's message, and the
        full records of the rounds that are due on their own topics. A change of phase, round or condition
        (or of a finished job) goes out at once; any other change waits until `_wait` has passed since the
        last publication (`flush_due`), so a round publishes its status a few times however many workers
        report in it. Every change still goes on the event stream at once (`Port.status_changed`)."""
        self.status.current_round = self.state.round  # the rest of `show_state` only for a publication
        urgent = self.finished or self._published_shape != self._shape()
        if urgent or self._published_at is None or self.clock - self._published_at >= self._wait():
            self._publish_now(urgent=urgent)
        else:
            self._deferred = True
            self.safely(self.port.status_changed, self.facts.name, self.book.snapshot(counts=False))

    def flush_due(self, now_s: float) -> None:
        """Publish a deferred status change once `_wait` has passed (the service's timer)."""
        self.advance(now_s)
        if self._deferred and (self._published_at is None or now_s - self._published_at >= self._wait()):
            self._publish_now(urgent=False)

    def _wait(self) -> float:
        """How long a change that is not urgent waits after the last publication: `status_interval` times 2,
        4, then 8 (`_MAX_DOUBLINGS`), doubling with each publication since the last urgent one. Right after
        a round opens every edge reports its new state within moments, so the first wait of two intervals
        takes them all in one publication; a round then publishes its status about log2(length / interval)
        times besides its close (2 for a 3 s round, 4 for a 30 s one), however many edges report in it, and
        nothing waits more than 8 intervals. 0 publishes every change."""
        interval = self.facts.settings.status_interval
        return interval * (1 << min(self._calm, _MAX_DOUBLINGS))

    def _publish_now(self, *, urgent: bool) -> None:
        show_state(self.status, self.state, self.facts)
        if self._rounds_stale:
            self.book.show_rounds(self.ledger.recent())
            self._rounds_stale = False
        for record in self.ledger.to_publish(finished=self.finished):
            self.safely(self.port.publish_round_record, self.facts.name, record.round, record)
        self.safely(self.port.publish_status, Kind.JOB, self.facts.name, self.book.snapshot())
        self._published_at, self._published_shape, self._deferred = self.clock, self._shape(), False
        self._calm = 1 if urgent else self._calm + 1

    def _shape(self) -> tuple[object, ...]:
        status = self.status
        conditions = tuple((c.type, c.status, c.reason) for c in status.conditions)
        return (status.phase, status.current_round, self.state.stage, conditions)

    # -- other effects ---------------------------------------------------------------------------

    def ack(
        self,
        node: str,
        *,
        uid: str,
        round_: int,
        transfer: str,
        accepted: bool,
        reason: str,
        missing: list[int] | None = None,
    ) -> None:
        """Tell `node` what became of its transfer (`missing`: the chunks to send again)."""
        ack = UpdateAck(
            job=self.facts.name,
            uid=uid,
            round=round_,
            node=node,
            transfer=transfer,
            accepted=accepted,
            reason=reason,
            missing=missing or [],
        )
        self.safely(self.port.send_ack, ack)

    def answer(
        self, node: str, manifest: TransferManifest, accepted: bool, reason: str, *, missing: list[int] | None = None
    ) -> None:
        """`ack` for the transfer `manifest` describes (the run and round it claims)."""
        self.ack(
            node,
            uid=manifest.uid,
            round_=manifest.round,
            transfer=manifest.transfer,
            accepted=accepted,
            reason=reason,
            missing=missing,
        )

    def signal(self, signal: ScriptSignal) -> None:
        """Send `finish` or `stop` to the aggregation script; only the first signal counts."""
        if self._signalled is not None:
            return
        self._signalled = signal
        self.safely(self.port.signal_script, self.facts.name, self.facts.uid, signal)

    def safely(self, call: Callable[..., object], *args: Any) -> None:
        """Run an effect whose failure changes nothing for the job (logged)."""
        try:
            call(*args)
        except AggregatorError as exc:
            self.log.warning("side effect failed", effect=getattr(call, "__name__", "?"), error=str(exc))

"""The job event stream: what changed in each job status published, as `schemas.JobEvent` lines.

`StreamingPort` is the port the controller hands to everything it drives (registry, gate, foreign
reports, job engines): it passes every call through, and after each job status it publishes compares that
status with the last one published for the job (in this process; after a restart the kept copy, which is
what this node published before) and sends what changed through `Port.publish_event`:

- every new `Event` of the status, in order, Normal or Warning (``RoundClosed`` carries its round's
  `RoundRecord` in ``data``, with ``durationSeconds`` when the record has no duration of its own);
- a round record that no such event announced: a ``RoundClosed`` line of its own;
- a round's record that gets its evaluation (the global model scored on the edges' held-out data, which
  comes after the round closed): ``RoundEvaluated`` (``data``: the evaluation);
- every worker whose state or round changed: ``WorkerStateChanged`` (``data``: role, from, to);
- the round in progress moved on: ``RoundOpened`` (``data``: exitRound);
- a job status cleared (the job was deleted): ``Deleted``.

Deriving the stream from the published statuses, rather than from each decision, puts every event the
status gets on the stream without a second call at each of the places that emit one (the engine, the
gate, the foreign reports, the controller's invalid specs), and says nothing the status does not say. A
publication that coalesces several changes gives their net effect. An event that cannot be published is
logged and changes nothing: the retained status stays the source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from itertools import compress
from operator import is_not
from typing import Any

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from cloud_aggregator._errors import AggregatorError
from cloud_aggregator.engine._checkpoint import Checkpoint, SpooledUpdate
from cloud_aggregator.engine._kept import KeptState
from cloud_aggregator.engine._port import FinalModel, Port, ScriptRequest, ScriptSignal
from cloud_aggregator.engine._spill import SpillFile
from schemas import (
    MAX_EVENTS,
    Event,
    JobEvent,
    JobPlan,
    JobStatus,
    Kind,
    Phase,
    ResourceStatus,
    RoundRecord,
    SecAggState,
    ShareBundle,
    UpdateAck,
    WorkerStatus,
)

__all__ = ["Seen", "StreamingPort", "job_events"]

_EventKey = tuple[datetime, str, str]
# Event keys remembered per job: more than a status holds (MAX_EVENTS), because a resumed run's status
# first starts afresh and then takes the checkpoint's older events back, which were said already.
_REMEMBERED = 2 * MAX_EVENTS


def _key(event: Event) -> _EventKey:
    return (event.time, event.reason, event.message)


@dataclass
class Seen:
    """What the stream already said about one job: enough of its last published status to diff against."""

    uid: str | None = None
    events: set[_EventKey] = field(default_factory=set)
    workers: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)  # (node, role) -> (state, round)
    rounds: set[tuple[int, datetime]] = field(default_factory=set)  # (round, closedAt) of every record said
    evaluated: set[tuple[int, datetime]] = field(default_factory=set)  # ... and of those whose evaluation was
    current_round: int = 0
    opened: dict[int, datetime] = field(default_factory=dict)  # when RoundOpened was said, for durations
    # The worker entries (objects, in order) `workers` was read from. The engine replaces an entry in place
    # when it changes, so only the entries that are not these same objects need a look: found by identity
    # at C speed (`_replaced`), not by comparing every worker on every report in Python, which cost the
    # square of the edges per round.
    held: list[WorkerStatus] = field(default_factory=list)

    @classmethod
    def of(cls, status: JobStatus, *, evaluated: bool = True, workers: bool = True) -> Seen:
        """What `status` says; `evaluated=False` leaves out which records have an evaluation (the caller
        works that out only for the records it has not seen evaluated), `workers=False` the workers (the
        caller takes them over from what it saw before)."""
        return cls(
            uid=status.uid,
            events={_key(e) for e in status.events},
            workers={(w.node, w.role): (w.state.value, w.round) for w in status.workers} if workers else {},
            rounds={(r.round, r.closed_at) for r in status.rounds},
            evaluated={(r.round, r.closed_at) for r in status.rounds if evaluated and _evaluation(r)},
            current_round=status.current_round,
        )


def _evaluation(record: RoundRecord) -> dict[str, Any]:
    """The evaluation of the round's global model on the edges' held-out data, if the record has one yet:
    an ``eval``/``evaluation`` group, or the ``eval_``/``val_`` keys of its metrics. The edges evaluate a
    round's global model after it closed, so a record may get it later than it first appeared."""
    data: dict[str, Any] = record.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name in ("eval", "evaluation"):
        if isinstance(data.get(name), dict) and data[name]:
            return dict(data[name])
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        return {}
    return {k.split("_", 1)[1]: v for k, v in metrics.items() if k.startswith(("eval_", "val_"))}


def _evaluated_message(round_: int, evaluation: dict[str, Any]) -> str:
    figures = [
        f"{label} {evaluation[key]:.3f}"
        for key, label in (("accuracy", "accuracy"), ("balancedAccuracy", "balanced accuracy"), ("loss", "loss"))
        if isinstance(evaluation.get(key), int | float)
    ]
    samples = evaluation.get("numSamples")
    said = ", ".join(figures) or "evaluated"
    return f"round {round_} global model: {said}" + (f" on {samples} held-out samples" if samples else "")


def _duration(record: RoundRecord, status: JobStatus, opened: dict[int, datetime]) -> float | None:
    """How long round `record.round` was open: from when the stream saw it open, else from the close of
    the round before it (the next round opens when one closes)."""
    start = opened.get(record.round)
    if start is None:
        start = next((r.closed_at for r in status.rounds if r.round == record.round - 1), None)
    return None if start is None else round((record.closed_at - start).total_seconds(), 3)


def _record_data(record: RoundRecord, status: JobStatus, opened: dict[int, datetime]) -> dict[str, Any]:
    data: dict[str, Any] = record.model_dump(mode="json", by_alias=True, exclude_none=True)
    if not any(key.startswith("duration") for key in data):
        seconds = _duration(record, status, opened)
        if seconds is not None:
            data["durationSeconds"] = seconds
    return data


def _replaced(workers: list[WorkerStatus], held: list[WorkerStatus], seen: Seen) -> list[WorkerStatus]:
    """The entries of `workers` that are not the object `held` had at their place, and the ones added after
    (in order); `seen` holds these. A list replaced whole (a restored status) is all new: its values tell."""
    seen.held = list(workers)
    return list(compress(workers, map(is_not, workers, held))) + workers[len(held) :]


def job_events(before: Seen | None, status: JobStatus) -> tuple[list[JobEvent], Seen]:
    """The lines that say how `status` differs from what `before` recorded, and the new record."""
    seen = Seen.of(status, evaluated=False, workers=False)
    old = before or Seen()
    seen.workers = dict(old.workers)
    seen.opened = dict(old.opened)
    seen.events = set(sorted(seen.events | old.events)[-_REMEMBERED:])
    common: dict[str, Any] = {"job": status.name, "uid": status.uid}
    lines: list[JobEvent] = []
    new_records = [r for r in status.rounds if (r.round, r.closed_at) not in old.rounds]
    told: set[int] = set()
    for event in status.events:
        if _key(event) in old.events:
            continue
        data = None
        record = next((r for r in new_records if r.round == event.round), None)
        if event.reason == "RoundClosed" and record is not None:
            data = _record_data(record, status, seen.opened)
            told.add(record.round)
        lines.append(
            JobEvent(
                time=event.time,
                type=event.type,
                reason=event.reason,
                message=event.message,
                round=event.round,
                node=event.node,
                data=data,
                **common,
            )
        )
    stamp = status.updated_at
    for record in new_records:
        if record.round not in told:
            told.add(record.round)
            lines.append(
                JobEvent(
                    time=stamp,
                    reason="RoundClosed",
                    message=f"round {record.round}: {len(record.participants)} updates, {record.total_samples} samples",
                    round=record.round,
                    data=_record_data(record, status, seen.opened),
                    **common,
                )
            )
    seen.evaluated = {k for k in old.evaluated if k in seen.rounds}
    for record in status.rounds:
        key = (record.round, record.closed_at)
        if key in seen.evaluated:
            continue  # only records without an evaluation yet are looked at (dumped) again
        evaluation = _evaluation(record)
        if not evaluation:
            continue
        seen.evaluated.add(key)
        if record.round in told:
            continue  # its RoundClosed line of this publication carries the evaluation already
        lines.append(
            JobEvent(
                time=stamp,
                reason="RoundEvaluated",
                message=_evaluated_message(record.round, evaluation),
                round=record.round,
                data=evaluation,
                **common,
            )
        )
    for worker in _replaced(status.workers, old.held, seen):
        entry = (worker.node, worker.role)
        was = old.workers.get(entry)
        now_is = (worker.state.value, worker.round)
        seen.workers[entry] = now_is
        if was == now_is or (was is None and worker.state.value == "Pending"):
            continue  # a worker listed before it did anything is not news
        who = "worker" if worker.role == "training" else "aggregation worker"
        where = f" (round {worker.round})" if worker.round else ""
        lines.append(
            JobEvent(
                time=stamp,
                reason="WorkerStateChanged",
                message=f"{who} {worker.node}: {was[0] + ' -> ' if was else ''}{worker.state.value}{where}",
                round=worker.round,
                node=worker.node,
                data={"role": worker.role, "from": was[0] if was else None, "to": worker.state.value},
                **common,
            )
        )
    opened = status.current_round
    if (
        status.phase is Phase.RUNNING
        and opened > old.current_round
        and opened >= 1
        and all(r.round != opened for r in status.rounds)
    ):
        seen.opened[opened] = stamp
        total = "?" if status.exit_round is None else str(status.exit_round)
        lines.append(
            JobEvent(
                time=stamp,
                reason="RoundOpened",
                message=f"round {opened}/{total} opened",
                round=opened,
                data={"exitRound": status.exit_round},
                **common,
            )
        )
    # Keep only the open times that still matter (the open round's), so the record stays small.
    seen.opened = {r: t for r, t in seen.opened.items() if r >= opened}
    return lines, seen


class StreamingPort:
    """A `Port` that publishes each job's event stream after the job's statuses (see the module doc)."""

    def __init__(self, inner: Port, log: FilteringBoundLogger) -> None:
        self._inner = inner
        self._log = log
        self._seen: dict[str, Seen] = {}

    # -- the stream --------------------------------------------------------------------------------

    def _before(self, name: str) -> Seen | None:
        """What was said last: in this process, else what this node published before it (the kept copy)."""
        seen = self._seen.get(name)
        if seen is not None:
            return seen
        payload = self._inner.kept().statuses.get((Kind.JOB, name))
        if not payload:
            return None
        try:
            return Seen.of(JobStatus.model_validate_json(payload))
        except ValidationError:
            return None

    def publish_status(self, kind: Kind, name: str, status: JobStatus | ResourceStatus | None) -> None:
        if kind is not Kind.JOB:
            self._inner.publish_status(kind, name, status)
            return
        before = self._before(name)
        self._inner.publish_status(kind, name, status)
        if status is None:
            self._seen.pop(name, None)
            if before is not None:
                self._send(JobEvent(job=name, uid=before.uid, reason="Deleted", message="job deleted"))
            return
        assert isinstance(status, JobStatus)
        self._stream(name, before, status)

    def status_changed(self, name: str, status: JobStatus) -> None:
        """A change held back from the status topic still goes on the stream: it reads like a log."""
        self._stream(name, self._before(name), status)

    def _stream(self, name: str, before: Seen | None, status: JobStatus) -> None:
        lines, self._seen[name] = job_events(before, status)
        for line in lines:
            self._send(line)

    def _send(self, event: JobEvent) -> None:
        try:
            self._inner.publish_event(event)
        except AggregatorError as exc:
            self._log.warning("cannot publish a job event", job=event.job, reason=event.reason, error=str(exc))

    def publish_event(self, event: JobEvent) -> None:
        self._send(event)

    # -- everything else passes through -------------------------------------------------------------

    def publish_plan(self, job: str, plan: JobPlan | None) -> None:
        self._inner.publish_plan(job, plan)

    def restore_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        self._inner.restore_spec(kind, name, payload)

    def publish_round_record(self, job: str, round_: int, record: RoundRecord | None) -> None:
        self._inner.publish_round_record(job, round_, record)

    def publish_global(self, job: str, round_: int, blob: bytes, *, uid: str, num_samples: int, final: bool) -> None:
        self._inner.publish_global(job, round_, blob, uid=uid, num_samples=num_samples, final=final)

    def clear_globals(self, job: str, keep: int | None = None) -> None:
        self._inner.clear_globals(job, keep)

    def send_ack(self, ack: UpdateAck) -> None:
        self._inner.send_ack(ack)

    def publish_secagg_state(self, job: str, round_: int, state: SecAggState | None) -> None:
        self._inner.publish_secagg_state(job, round_, state)

    def restore_secagg_bundle(self, job: str, bundle: ShareBundle) -> None:
        self._inner.restore_secagg_bundle(job, bundle)

    def clear_secagg_step(self, job: str, round_: int, step: str, node: str) -> None:
        self._inner.clear_secagg_step(job, round_, step, node)

    def start_script(self, request: ScriptRequest) -> None:
        self._inner.start_script(request)

    def signal_script(self, job: str, uid: str, signal: ScriptSignal) -> None:
        self._inner.signal_script(job, uid, signal)

    def write_model(self, final: FinalModel) -> str:
        return self._inner.write_model(final)

    def keep_spec(self, kind: Kind, name: str, payload: bytes) -> None:
        self._inner.keep_spec(kind, name, payload)

    def forget_spec(self, kind: Kind, name: str, *, deleted: bool) -> None:
        self._inner.forget_spec(kind, name, deleted=deleted)

    def kept(self) -> KeptState:
        return self._inner.kept()

    def store_update(self, job: str, round_: int, node: str, transfer: str, blob: bytes | memoryview) -> None:
        self._inner.store_update(job, round_, node, transfer, blob)

    def spooled_updates(self, job: str, round_: int) -> list[SpooledUpdate]:
        return self._inner.spooled_updates(job, round_)

    def open_spill(self, job: str) -> SpillFile:
        return self._inner.open_spill(job)

    def read_spooled_update(self, job: str, round_: int, node: str, transfer: str) -> memoryview:
        return self._inner.read_spooled_update(job, round_, node, transfer)

    def drop_spool(self, job: str, upto: int) -> None:
        self._inner.drop_spool(job, upto)

    def save_secagg(self, job: str, round_: int, data: bytes) -> None:
        self._inner.save_secagg(job, round_, data)

    def load_secagg(self, job: str, round_: int) -> bytes | None:
        return self._inner.load_secagg(job, round_)

    def save_checkpoint(
        self, checkpoint: Checkpoint, global_blob: bytes, server_state: bytes | None = None, *, keep_globals: int = 1
    ) -> None:
        self._inner.save_checkpoint(checkpoint, global_blob, server_state, keep_globals=keep_globals)

    def load_global(self, job: str, round_: int) -> bytes | None:
        return self._inner.load_global(job, round_)

    def load_server_state(self, job: str, round_: int) -> bytes | None:
        return self._inner.load_server_state(job, round_)

    def load_checkpoint(self, job: str) -> tuple[Checkpoint, bytes] | None:
        return self._inner.load_checkpoint(job)

    def clear_state(self, job: str) -> None:
        self._inner.clear_state(job)

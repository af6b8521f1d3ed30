"""What the metrics say about one job, read from the `JobStatus` documents the controller publishes.

The job status is the contract between the engine and everything that watches it, so the metrics are
derived from it alone (never from the engine's private state): the phase, the workers' states and local
metrics, the closed rounds (`RoundRecord`) and, from those, when the round in progress opened.

Label values are bounded: a job, a worker, or a metric name (at most `MAX_METRIC_NAMES` per worker or
round, names that are valid Prometheus label values of a sane length); anything else is left out.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from schemas import JobStatus, Phase, RoundRecord

__all__ = [
    "MAX_METRIC_NAMES",
    "JobView",
    "RoundTracker",
    "eval_accuracy",
    "job_view",
    "recent_figures",
    "rejection_reason",
    "round_duration",
    "round_figures",
    "round_opened",
]

MAX_METRIC_NAMES = 16
_METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$")

# The engine's refusal texts (cloud_aggregator.engine: _transfers, _rounds, _intake) as a bounded reason
# label; first match wins, anything new is "other" (tests/unit/test_metrics.py pins the current texts).
_REASONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (label, re.compile(pattern))
    for label, pattern in (
        ("round_closed", r"^round \d+ is closed"),
        ("round_not_open", r"^round \d+ has not started|^the job is not running"),
        ("wrong_round", r"^an init transfer belongs to round 0|^manifest round \d+ does not match"),
        ("wrong_kind", r"^kind \S+ is not an update|^expected an? \w+ transfer"),
        ("wrong_run", r"^transfer for job uid|^transfer names job"),
        ("wrong_sender", r"^sender .* does not match|is not a training worker of this job$"),
        ("layout", r"^layout differs"),
        ("non_finite", r"non-finite values"),
        ("num_samples", r"num_samples"),
        ("unreadable", r"^unreadable weights|^weights header says|^malformed manifest|^not a valid TransferManifest"),
        ("too_large", r"larger than|too large|exceeds"),
    )
)


def rejection_reason(text: str) -> str:
    """The bounded `reason` label of a refused transfer, from the engine's refusal text."""
    for label, pattern in _REASONS:
        if pattern.search(text):
            return label
    return "other"


def _numbers(metrics: dict[str, float]) -> dict[str, float]:
    """At most MAX_METRIC_NAMES metrics with sane names (a script chooses them: bound what it can add)."""
    kept = {k: float(v) for k, v in sorted(metrics.items()) if _METRIC_NAME.match(k)}
    return dict(list(kept.items())[:MAX_METRIC_NAMES])


def round_figures(record: RoundRecord) -> dict[str, float]:
    """A closed round's figures by name: its training metrics as ``train_<name>`` (the sample-weighted mean
    of the participants' local metrics), its federated evaluation as ``eval_accuracy``,
    ``eval_balanced_accuracy`` and ``eval_loss``, and the names of the legacy flat ``metrics`` dict (records
    written before ``train``/``eval`` existed) as they are."""
    figures: dict[str, float] = dict(record.metrics or {})
    figures.update({f"train_{k}": v for k, v in record.train.items()})
    evaluation = record.eval
    if evaluation is not None:
        figures["eval_accuracy"] = evaluation.accuracy
        figures["eval_balanced_accuracy"] = evaluation.balanced_accuracy
        if evaluation.loss is not None:
            figures["eval_loss"] = evaluation.loss
    return figures


def recent_figures(status: JobStatus) -> dict[str, float]:
    """Each figure from the newest closed round that has it: a round's evaluation arrives after it closed
    (the edges score its global model as they start the next round), its training metrics at once."""
    figures: dict[str, float] = {}
    for record in status.rounds:
        figures.update(round_figures(record))
    return _numbers(figures)


def eval_accuracy(status: JobStatus) -> tuple[int, float] | None:
    """(round, accuracy) of the newest closed round with a federated evaluation, or None."""
    for record in reversed(status.rounds):
        value = round_figures(record).get("eval_accuracy")
        if value is not None:
            return record.round, value
    return None


def _init_time(status: JobStatus) -> datetime | None:
    """When round 1 opened: the round-0 model was chosen (the engine's InitialModel event), or, once that
    event has left the status's recent events, the job's start (earlier by the time the inits took)."""
    chosen = next((e.time for e in reversed(status.events) if e.reason == "InitialModel"), None)
    return chosen or status.start_time


def round_opened(status: JobStatus) -> tuple[int, datetime] | None:
    """(round, when it opened) of the round in progress, or None when no round is open (not Running, or
    past the final round). Round r > 1 opens when r-1 closes."""
    if status.phase is not Phase.RUNNING or status.exit_round is None:
        return None
    if status.rounds:
        last = status.rounds[-1]
        if last.round >= status.exit_round:
            return None
        return last.round + 1, last.closed_at
    opened = _init_time(status)
    return None if opened is None else (1, opened)


def round_duration(status: JobStatus, record: RoundRecord) -> float | None:
    """Seconds from the opening of the round `record` closes to its close: the record's own figure, else
    from the previous round's close (or round 1's opening)."""
    if record.duration_seconds is not None:
        return record.duration_seconds
    before = [r for r in status.rounds if r.round == record.round - 1]
    started = record.opened_at or (
        before[-1].closed_at if before else (_init_time(status) if record.round == 1 else None)
    )
    return None if started is None else max(0.0, (record.closed_at - started).total_seconds())


@dataclass(frozen=True)
class JobView:
    """One job as the metrics show it (immutable: the scrape thread reads it while the logic thread
    replaces it)."""

    phase: Phase
    exit_round: int | None
    closed_round: int
    workers: dict[str, int]  # worker state -> count (training and aggregation workers)
    round_opened: tuple[int, float] | None  # (round, unix time)
    round_deadline: float | None
    eval_accuracy: tuple[int, float] | None  # (round, accuracy)
    round_metrics: dict[str, float]
    worker_metrics: dict[tuple[str, str], float]  # (worker, name) -> value


def job_view(status: JobStatus, round_deadline: float | None) -> JobView:
    """The metrics' view of a published status (`round_deadline`: the job's, None without one)."""
    newest = status.rounds[-1] if status.rounds else None
    opened = round_opened(status)
    worker_metrics = {
        (w.node, name): value
        for w in status.workers
        if w.role == "training"
        for name, value in _numbers(w.metrics).items()
    }
    return JobView(
        phase=status.phase,
        exit_round=status.exit_round,
        closed_round=newest.round if newest is not None else 0,
        workers=dict(Counter(w.state.value for w in status.workers)),
        round_opened=None if opened is None else (opened[0], opened[1].timestamp()),
        round_deadline=round_deadline,
        eval_accuracy=eval_accuracy(status),
        round_metrics=recent_figures(status),
        worker_metrics=worker_metrics,
    )


@dataclass
class RoundTracker:
    """Which closed rounds of a job's run were counted already, so each counts once per process.

    The first status of a run seen by this process sets the baseline: rounds it already lists were
    closed before (a restarted aggregator resumes with them) and are not counted again."""

    uid: str | None = None
    counted: int = 0
    seen: bool = field(default=False)

    def new_records(self, status: JobStatus) -> list[RoundRecord]:
        """The round records of `status` not counted yet (oldest first)."""
        newest = max((r.round for r in status.rounds), default=0)
        if not self.seen or status.uid != self.uid:
            fresh = self.seen and status.uid != self.uid  # a new run of the job: every record is new
            self.uid, self.seen = status.uid, True
            self.counted = 0 if fresh else newest
            if not fresh:
                return []
        records = [r for r in status.rounds if r.round > self.counted]
        self.counted = max(self.counted, newest)
        return records

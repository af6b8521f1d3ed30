"""The per-round history of one job: each closed round's full `RoundRecord`, filled in as figures arrive.

A round's record is made when the round closes (participants, samples, duration, bytes, each worker's
upload), but two kinds of figures may come later, in the workers' statuses:

- **training metrics** (the local fit of round r, `WorkerStatus.metrics` with `metricsRound` r): published
  by the edge before its upload, so normally in before the close, late only when the status is;
- **evaluations** (`WorkerStatus.evaluation`): the edges score the global model of round r when they start
  round r+1, and the final one before they report Completed, so always after the close.

The ledger keeps what the workers said per (node, round) for the rounds still in its window, fills the
records in, and says which records changed. The job status keeps the newest `MAX_STATUS_ROUNDS`
summaries (`RoundRecord.summary`: no per-worker figures); the full record goes to the round's retained
record topic when the round closes and again once its figures are complete (every participant's
evaluation in) or the job ends, so a round is published at most a few times however many edges report.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas import MAX_STATUS_ROUNDS, Evaluation, RoundRecord, WorkerStatus

__all__ = ["RoundLedger", "weighted_train"]

# Rounds whose figures are still taken: the newest few (an evaluation comes one round late; a worker that
# catches up may be later still). Older reports are dropped.
_WINDOW = MAX_STATUS_ROUNDS


def weighted_train(parts: Iterable[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Sample-weighted mean of each training metric over the workers that reported it."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for samples, metrics in parts:
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value * samples
            weights[key] = weights.get(key, 0) + samples
    return {key: round(sums[key] / weights[key], 6) for key in sorted(sums) if weights[key] > 0}


class RoundLedger:
    """One job's recent round records and the per-worker figures that fill them in."""

    def __init__(self, restored: Iterable[RoundRecord] = ()) -> None:
        """`restored`: the records a resumed job's status kept (summaries: figures that come later fill
        their aggregates, not per-worker entries)."""
        self.records: dict[int, RoundRecord] = {r.round: r for r in restored}
        self._train: dict[tuple[str, int], dict[str, float]] = {}
        self._evals: dict[tuple[str, int], Evaluation] = {}
        self._complete: set[int] = set()  # rounds published with every participant's evaluation
        self._unpublished: set[int] = set()  # changed since the record topic last got them
        self._dirty: set[int] = set()  # rounds with figures noted but not filled in yet

    def note(self, worker: WorkerStatus) -> list[int]:
        """Take the figures of a worker's status; return the rounds it brought new figures for (their records
        are filled in when next read)."""
        changed: list[int] = []
        newest = max(self.records, default=0)
        if worker.metrics and worker.metrics_round is not None and worker.metrics_round > newest - _WINDOW:
            key = (worker.node, worker.metrics_round)
            if self._train.get(key) != worker.metrics:
                self._train[key] = dict(worker.metrics)
                changed.append(worker.metrics_round)
        evaluation = worker.evaluation
        if evaluation is not None and evaluation.round > newest - _WINDOW:
            key = (worker.node, evaluation.round)
            if self._evals.get(key) != evaluation:
                self._evals[key] = evaluation
                changed.append(evaluation.round)
        # Filled in when read (`recent`, `to_publish`): each of N edges reports each round, and refreshing a
        # record (N workers) on every report made a round cost N squared.
        noted = [r for r in dict.fromkeys(changed) if r in self.records]
        self._dirty.update(noted)
        return noted

    def _refresh_dirty(self) -> None:
        for r in sorted(self._dirty):
            if r in self.records and self._refresh(r):
                self._unpublished.add(r)
        self._dirty.clear()

    def close(self, record: RoundRecord) -> RoundRecord:
        """A round closed: its record, with what the workers already said, kept from now on."""
        self.records[record.round] = record
        self._refresh_dirty()
        self._refresh(record.round)
        for old in [r for r in self.records if r <= record.round - _WINDOW]:
            del self.records[old]
        for store in (self._train, self._evals):
            for key in [k for k in store if k[1] <= record.round - _WINDOW]:
                del store[key]
        self._unpublished.add(record.round)
        return self.records[record.round]

    def recent(self) -> list[RoundRecord]:
        """The newest `MAX_STATUS_ROUNDS` records as the job status keeps them, oldest first."""
        self._refresh_dirty()
        return [self.records[r].summary() for r in sorted(self.records)[-MAX_STATUS_ROUNDS:]]

    def to_publish(self, *, finished: bool) -> list[RoundRecord]:
        """Records the round topics should get now: a closed round at once, then again once every
        participant's evaluation is in, or when the job has `finished` (whatever came)."""
        self._refresh_dirty()
        due: list[RoundRecord] = []
        for r in sorted(self._unpublished):
            record = self.records.get(r)
            if record is None:
                continue
            complete = record.eval is not None and set(record.participants) <= set(record.eval.workers or [])
            first = r not in self._complete and record.eval is None
            if finished or complete or first:
                due.append(record)
                if complete:
                    self._complete.add(r)
        self._unpublished -= {record.round for record in due}
        return due

    def _refresh(self, round_: int) -> bool:
        """Fill the record of `round_` in from the workers' figures; whether it changed."""
        record = self.records[round_]
        update: dict[str, object] = {}
        if record.workers is not None:
            workers = [
                w.model_copy(
                    update={
                        "train": self._train.get((w.node, round_), w.train),
                        "eval": self._evals.get((w.node, round_), w.eval),
                    }
                )
                for w in record.workers
            ]
            update["workers"] = workers
            update["train"] = weighted_train((w.num_samples, w.train) for w in workers) or record.train
        evaluation = Evaluation.combine((node, e) for (node, r), e in self._evals.items() if r == round_)
        if evaluation is not None:
            update["eval"] = evaluation
        new = record.model_copy(update=update)
        if new == record:
            return False
        self.records[round_] = new
        return True

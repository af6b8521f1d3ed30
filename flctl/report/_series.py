"""A job's closed rounds as the report's columns: one value per round (None where a round has none).

Pure: no matplotlib here. The training and evaluation figures and the duration are read through
`flctl.printers.RoundRow`, so the report names and finds them exactly as `flctl top` does (also in
records written before `train`/`eval` existed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flctl.printers import RoundRow, named_figures, round_rows
from schemas import Evaluation, RoundRecord


@dataclass(frozen=True)
class WorkerSeries:
    """One participant across the rounds; None in a round it did not take part in (or whose record has
    no per-worker figures: the job status's summaries have none)."""

    node: str
    samples: tuple[int | None, ...]
    share: tuple[float | None, ...]  # its samples / the round's aggregate: its weight in a sample-weighted mean
    upload_bytes: tuple[int | None, ...]
    upload_seconds: tuple[float | None, ...]
    train_accuracy: tuple[float | None, ...]  # its local fit, before aggregation
    eval_accuracy: tuple[float | None, ...]  # the round's global model on its held-out data


@dataclass(frozen=True)
class RoundSeries:
    """The records of a job's closed rounds (one per round, by round number) as per-round columns."""

    records: tuple[RoundRecord, ...]
    rows: tuple[RoundRow, ...]
    workers: tuple[WorkerSeries, ...]

    @classmethod
    def of(cls, records: Sequence[RoundRecord]) -> RoundSeries:
        """A round given twice: the last record of it counts (as in `flctl top`)."""
        by_round = {r.round: r for r in records}
        ordered = tuple(by_round[n] for n in sorted(by_round))
        nodes = sorted({w.node for r in ordered for w in r.workers or ()})
        return cls(ordered, tuple(round_rows(ordered)), tuple(_worker(node, ordered) for node in nodes))

    @property
    def rounds(self) -> tuple[int, ...]:
        return tuple(r.round for r in self.records)

    def metric(self, group: str, name: str) -> tuple[float | None, ...]:
        """A training (`group` ``train``) or evaluation (``eval``) figure per round, e.g. ("eval", "accuracy")."""
        return tuple(getattr(row, group).get(name) for row in self.rows)

    def has(self, group: str, name: str) -> bool:
        return any(v is not None for v in self.metric(group, name))

    @property
    def durations(self) -> tuple[float | None, ...]:
        return tuple(row.duration for row in self.rows)

    @property
    def bytes_in(self) -> tuple[int | None, ...]:
        return tuple(r.bytes_in for r in self.records)

    @property
    def bytes_out(self) -> tuple[int | None, ...]:
        return tuple(r.bytes_out for r in self.records)

    @property
    def final_evaluation(self) -> Evaluation | None:
        """The evaluation of the newest round that has one (the final model's, once a job Succeeded)."""
        return next((r.eval for r in reversed(self.records) if r.eval is not None), None)


def _worker(node: str, records: Sequence[RoundRecord]) -> WorkerSeries:
    samples: list[int | None] = []
    share: list[float | None] = []
    upload_bytes: list[int | None] = []
    upload_seconds: list[float | None] = []
    train_accuracy: list[float | None] = []
    eval_accuracy: list[float | None] = []
    for record in records:
        figures = next((w for w in record.workers or () if w.node == node), None)
        if figures is None:
            for column in (samples, share, upload_bytes, upload_seconds, train_accuracy, eval_accuracy):
                column.append(None)
            continue
        samples.append(figures.num_samples)
        share.append(figures.num_samples / record.total_samples if record.total_samples > 0 else None)
        upload_bytes.append(figures.upload_bytes)
        upload_seconds.append(figures.upload_seconds)
        train_accuracy.append(named_figures(figures.train).get("accuracy"))
        eval_accuracy.append(figures.eval.accuracy if figures.eval is not None else None)
    return WorkerSeries(
        node,
        tuple(samples),
        tuple(share),
        tuple(upload_bytes),
        tuple(upload_seconds),
        tuple(train_accuracy),
        tuple(eval_accuracy),
    )

"""A job's rounds as `flctl top fl NAME` and the jobs table show them: pure functions of `RoundRecord`s.

A record's figures are read by name from its JSON form, so a record that carries more (per-worker
figures, bytes) or names its metrics differently still shows what it has: training metrics from ``train``
(or ``training``/``trainMetrics``), evaluation metrics of the global model from ``eval`` (or
``evaluation``/``evalMetrics``), and from a flat ``metrics`` map the keys prefixed ``eval_``/``val_``
(evaluation) or ``train_`` (training; unprefixed keys are the local training's, as Keras names them).
A column that no round has is left out of the table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flctl.printers._text import human_duration, table
from schemas import JobStatus, RoundRecord

NO_VALUE = "-"

_TRAIN_GROUPS = ("train", "training", "train_metrics", "training_metrics")
_EVAL_GROUPS = ("eval", "evaluation", "eval_metrics", "evaluation_metrics")
_EVAL_PREFIXES = ("eval_", "evaluation_", "val_")
_TRAIN_PREFIXES = ("train_", "training_")
# The names one figure goes by, and the name it is shown under. Keras names accuracy after the labels'
# encoding (the Sedna example's one-hot labels give categorical_accuracy); it is the accuracy all the same.
_KERAS_ACCURACY = ("categorical_accuracy", "sparse_categorical_accuracy", "binary_accuracy")
_ALIASES = {
    "acc": "accuracy",
    "bacc": "balanced_accuracy",
    "balanced_acc": "balanced_accuracy",
    **{name: "accuracy" for name in _KERAS_ACCURACY},
    # A local fit's own validation (Keras' val_*, before aggregation): kept apart from the federated
    # evaluation of the global model, under one name whatever the encoding.
    **{f"val_{name}": "val_accuracy" for name in _KERAS_ACCURACY},
}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")

#: (column header, group, metric) of the metric columns, in table order.
METRIC_COLUMNS = (
    ("TRAIN LOSS", "train", "loss"),
    ("TRAIN ACC", "train", "accuracy"),
    ("EVAL LOSS", "eval", "loss"),
    ("EVAL ACC", "eval", "accuracy"),
    ("EVAL BACC", "eval", "balanced_accuracy"),
)


def _snake(name: str) -> str:
    key = _CAMEL.sub("_", name).lower()
    return _ALIASES.get(key, key)


def named_figures(group: Any) -> dict[str, float]:
    """The numeric figures of one metrics map under the names the tables show them by (``accuracy`` for
    ``acc`` or Keras' ``categorical_accuracy``, snake_case); nested lists, such as a confusion matrix, are
    not figures."""
    if not isinstance(group, Mapping):
        return {}
    return {
        _snake(str(k)): float(v) for k, v in group.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


@dataclass(frozen=True)
class RoundRow:
    """One closed round as the tables show it."""

    round: int
    participants: int
    samples: int
    missing: tuple[str, ...] = ()
    duration: float | None = None  # seconds
    excluded: int | None = None  # updates a robust rule left out (None: not a robust rule)
    stale: int | None = None  # updates trained from an older model version (None: a synchronous round)
    train: Mapping[str, float] = field(default_factory=dict)
    eval: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, record: RoundRecord, previous: RoundRecord | None = None) -> RoundRow:
        """`previous`: the record of the round before, whose close is when this one opened (for records
        that do not say how long they took)."""
        data: dict[str, Any] = record.model_dump(mode="json")
        train: dict[str, float] = {}
        evaluation: dict[str, float] = {}
        for key, value in named_figures(data.get("metrics")).items():
            if key.startswith(_EVAL_PREFIXES):
                evaluation[_snake(key.split("_", 1)[1])] = value
            else:
                train[_snake(key.split("_", 1)[1]) if key.startswith(_TRAIN_PREFIXES) else key] = value
        for name in _TRAIN_GROUPS:
            train.update(named_figures(data.get(name)))
        for name in _EVAL_GROUPS:
            evaluation.update(named_figures(data.get(name)))
        duration = next(
            (float(v) for k, v in data.items() if k.startswith("duration") and isinstance(v, int | float)), None
        )
        if duration is None and previous is not None and previous.round == record.round - 1:
            duration = (record.closed_at - previous.closed_at).total_seconds()
        return cls(
            round=record.round,
            participants=len(record.participants),
            samples=record.total_samples,
            missing=tuple(record.missing),
            duration=duration,
            excluded=record.excluded,
            stale=record.stale,
            train=train,
            eval=evaluation,
        )


def round_rows(records: Sequence[RoundRecord]) -> list[RoundRow]:
    """One row per round, by round number (a round given twice: the last record of it counts)."""
    by_round = {r.round: r for r in records}
    ordered = [by_round[n] for n in sorted(by_round)]
    return [RoundRow.of(r, by_round.get(r.round - 1)) for r in ordered]


def seconds(value: float | None) -> str:
    """A round's duration: ``4.2s`` under ten seconds, then kubectl's ages (``45s``, ``3m10s``)."""
    if value is None:
        return NO_VALUE
    if value < 10:
        return f"{value:.1f}s"
    return human_duration(timedelta(seconds=value))


def figure(value: float | None) -> str:
    return NO_VALUE if value is None else f"{value:.3f}"


def rounds_table(rows: Sequence[RoundRow]) -> str:
    """ROUND WORKERS SAMPLES DURATION, the metric columns some round has, EXCLUDED (robust rules) and STALE
    (asynchronous rounds) when a round says them, and LEFT OUT when a round had any."""
    metrics = [(h, g, m) for h, g, m in METRIC_COLUMNS if any(m in getattr(r, g) for r in rows)]
    counts = [
        (h, name)
        for h, name in (("EXCLUDED", "excluded"), ("STALE", "stale"))
        if any(getattr(r, name) is not None for r in rows)
    ]
    left_out = any(r.missing for r in rows)
    headers = ["ROUND", "WORKERS", "SAMPLES", "DURATION", *(h for h, _, _ in metrics), *(h for h, _ in counts)]
    if left_out:
        headers.append("LEFT OUT")
    lines = []
    for row in rows:
        cells = [str(row.round), str(row.participants), str(row.samples), seconds(row.duration)]
        cells += [figure(getattr(row, g).get(m)) for _, g, m in metrics]
        cells += [NO_VALUE if getattr(row, name) is None else str(getattr(row, name)) for _, name in counts]
        if left_out:
            cells.append(",".join(row.missing) or NO_VALUE)
        lines.append(cells)
    return table(headers, lines)


# -- the jobs table's columns ----------------------------------------------------------------------


def eval_accuracy_column(status: JobStatus | None) -> str:
    """The evaluation accuracy of the newest round that has one (``0.812``), else ``-``."""
    if status is None:
        return NO_VALUE
    for row in reversed(round_rows(status.rounds)):
        if "accuracy" in row.eval:
            return figure(row.eval["accuracy"])
    return NO_VALUE


def round_time_column(status: JobStatus | None) -> str:
    """How long the last closed round took (``4.2s``), else ``-``."""
    if status is None or not status.rounds:
        return NO_VALUE
    return seconds(round_rows(status.rounds)[-1].duration)

"""The per-round printers (`flctl top`, the jobs table's EVAL ACC and ROUND TIME) and the row primitives a
watch prints with: pure functions of records, no broker."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field

from flctl.printers import (
    RoundRow,
    column_widths,
    eval_accuracy_column,
    round_rows,
    round_time_column,
    rounds_table,
    row_line,
    table,
)
from schemas import JobStatus, Phase, RoundRecord

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)


def record(round_: int, at: float, **fields: object) -> RoundRecord:
    values: dict[str, object] = {
        "round": round_,
        "participants": ["edge1", "edge2"],
        "total_samples": 40,
        "closed_at": T0 + timedelta(seconds=at),
    }
    values.update(fields)
    return RoundRecord.model_validate(values)


class RicherRecord(RoundRecord):
    """A round record with grouped metrics and its own duration, as issue 9's per-round history has them."""

    train: dict[str, float] = Field(default_factory=dict)
    eval: dict[str, Any] | None = None
    duration_seconds: float | None = None


def cells(line: str) -> list[str]:
    return re.split(r" {3,}", line)


def test_a_round_without_metrics_shows_workers_samples_and_the_time_since_the_round_before() -> None:
    rows = round_rows([record(2, 14.5), record(1, 10.0)])  # any order in, by round out

    assert rows == [
        RoundRow(round=1, participants=2, samples=40, duration=None),
        RoundRow(round=2, participants=2, samples=40, duration=4.5),
    ]
    assert [cells(line) for line in rounds_table(rows).splitlines()] == [
        ["ROUND", "WORKERS", "SAMPLES", "DURATION"],
        ["1", "2", "40", "-"],
        ["2", "2", "40", "4.5s"],
    ]


def test_metrics_are_split_into_training_and_evaluation_by_their_names() -> None:
    """Flat `metrics` keys: eval_/val_ are the global model's evaluation, train_ and bare names the local fit."""
    flat = record(1, 1.0, metrics={"loss": 0.61, "accuracy": 0.7, "val_loss": 0.55, "eval_accuracy": 0.8125})

    (row,) = round_rows([flat])

    assert row.train == {"loss": 0.61, "accuracy": 0.7}
    assert row.eval == {"loss": 0.55, "accuracy": 0.8125}


def test_keras_accuracy_names_are_the_training_accuracy_and_its_validation_stays_local() -> None:
    """Keras names accuracy after the label encoding (the Sedna example: categorical_accuracy); its val_*
    figures are the local fit's own validation, not the federated evaluation of the global model."""
    keras = record(
        1,
        1.0,
        train={"loss": 0.66, "categorical_accuracy": 0.5, "val_loss": 0.58, "val_categorical_accuracy": 0.88},
        eval={"round": 1, "num_samples": 20, "accuracy": 0.8, "balanced_accuracy": 0.75, "confusion": [[8, 2], [2, 8]]},
    )

    (row,) = round_rows([keras])

    assert row.train == {"loss": 0.66, "accuracy": 0.5, "val_loss": 0.58, "val_accuracy": 0.88}
    assert cells(rounds_table([row]).splitlines()[0])[4:] == ["TRAIN LOSS", "TRAIN ACC", "EVAL ACC", "EVAL BACC"]


def test_grouped_metrics_and_a_recorded_duration_win() -> None:
    """A record with `train`/`eval` groups and its own duration (what a richer RoundRecord carries) is read
    by name: camelCase and short aliases are understood, a confusion matrix is not a figure."""
    richer = RicherRecord(
        round=3,
        participants=["edge1", "edge2"],
        total_samples=40,
        closed_at=T0,
        missing=["edge3"],
        train={"loss": 0.4, "acc": 0.83},
        eval={"loss": 0.38, "accuracy": 0.85, "balancedAccuracy": 0.8, "confusion": [[10, 2], [1, 7]]},
        duration_seconds=61.0,
    )

    (row,) = round_rows([richer])
    text = rounds_table([row]).splitlines()

    assert row.duration == 61.0 and row.missing == ("edge3",)
    assert row.train == {"loss": 0.4, "accuracy": 0.83}
    assert row.eval == {"loss": 0.38, "accuracy": 0.85, "balanced_accuracy": 0.8}
    assert cells(text[0]) == [
        "ROUND", "WORKERS", "SAMPLES", "DURATION", "TRAIN LOSS", "TRAIN ACC", "EVAL LOSS", "EVAL ACC", "EVAL BACC",
        "LEFT OUT",
    ]  # fmt: skip
    assert cells(text[1]) == ["3", "2", "40", "61s", "0.400", "0.830", "0.380", "0.850", "0.800", "edge3"]


def test_only_the_metric_columns_some_round_has_are_shown() -> None:
    rows = round_rows([record(1, 1.0, metrics={"loss": 0.5}), record(2, 3.0)])

    lines = rounds_table(rows).splitlines()

    assert cells(lines[0]) == ["ROUND", "WORKERS", "SAMPLES", "DURATION", "TRAIN LOSS"]
    assert cells(lines[2]) == ["2", "2", "40", "2.0s", "-"]


def test_robust_and_asynchronous_rounds_show_what_was_excluded_and_how_many_were_stale() -> None:
    robust = round_rows([record(1, 1.0, excluded=1), record(2, 3.0, excluded=0)])
    lines = rounds_table(robust).splitlines()
    assert cells(lines[0]) == ["ROUND", "WORKERS", "SAMPLES", "DURATION", "EXCLUDED"]
    assert [cells(line)[-1] for line in lines[1:]] == ["1", "0"]

    buffers = round_rows([record(1, 1.0, stale=0), record(2, 3.0, stale=1)])
    lines = rounds_table(buffers).splitlines()
    assert cells(lines[0])[-1] == "STALE" and [cells(line)[-1] for line in lines[1:]] == ["0", "1"]
    assert "STALE" not in rounds_table(round_rows([record(1, 1.0)]))  # a synchronous job: no such column


def test_jobs_table_columns_read_the_newest_evaluation_and_the_last_round() -> None:
    status = JobStatus(
        name="job",
        phase=Phase.RUNNING,
        current_round=3,
        exit_round=3,
        rounds=[record(1, 10.0, metrics={"eval_accuracy": 0.75}), record(2, 22.0)],
    )

    assert eval_accuracy_column(status) == "0.750"  # round 2 has no evaluation yet: round 1's is the newest
    assert round_time_column(status) == "12s"
    empty = JobStatus(name="job")
    assert (eval_accuracy_column(empty), round_time_column(empty)) == ("-", "-")
    assert (eval_accuracy_column(None), round_time_column(None)) == ("-", "-")


def test_a_row_printed_later_keeps_the_widths_of_the_first_table() -> None:
    """What a watch does: the header and first rows set the widths, a later row is padded to them, and a
    longer cell pushes its line right instead of re-aligning what was printed."""
    headers, first = ["NAME", "PHASE", "AGE"], [["job-a", "Pending", "1s"]]
    widths = column_widths(headers, first)

    assert row_line(["job-a", "Running", "5s"], widths) == "job-a   Running   5s"
    assert row_line(["job-a", "Succeeded", "9s"], widths) == "job-a   Succeeded   9s"
    assert "\n".join(row_line(r, widths) for r in (headers, *first)) == table(headers, first)

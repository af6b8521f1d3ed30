"""benchmarks/flower.py's shared parts, without Flower: the summary (medians, ratio, mean accuracies) and
where our side's time went, read from the job's round records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from benchmarks._flower_common import Run, median_phases, summarize
from benchmarks._flower_project import phases
from schemas import JobStatus, Phase, RoundRecord


def test_summary_takes_medians_of_wall_times_and_means_of_accuracies() -> None:
    runs = [
        Run("project", 30.0, 0.90, 0.88),
        Run("flower-deployment", 50.0, 0.92, 0.90),
        Run("project", 10.0, 0.94, 0.92),
        Run("flower-deployment", 40.0, 0.90, 0.86),
        Run("project", 20.0, 0.92, 0.90),
        Run("flower-deployment", 45.0, 0.94, 0.94),
    ]
    summary = summarize(runs, "flower-deployment")
    assert (summary.project_median_s, summary.flower_median_s) == (20.0, 45.0)
    assert summary.ratio == pytest.approx(20.0 / 45.0)
    assert summary.project_accuracy == pytest.approx(0.92)
    assert summary.flower_accuracy == pytest.approx(0.92)
    assert summary.project_balanced == pytest.approx(0.90)
    assert summary.flower_balanced == pytest.approx(0.90)
    assert summary.accuracy_gap_points == pytest.approx(0.0, abs=1e-9)


def test_summary_needs_both_sides() -> None:
    with pytest.raises(ValueError, match="flower-legacy"):
        summarize([Run("project", 1.0, 0.9, 0.9), Run("flower-deployment", 1.0, 0.9, 0.9)], "flower-legacy")


def test_median_phases_per_side_over_the_runs_that_recorded_them() -> None:
    runs = [
        Run("project", 1.0, 0.9, 0.9, {"startup_s": 3.0, "round1_s": 5.0}),
        Run("project", 1.0, 0.9, 0.9, {"startup_s": 1.0}),
        Run("project", 1.0, 0.9, 0.9, {"startup_s": 2.0, "round1_s": 7.0}),
        Run("flower-deployment", 1.0, 0.9, 0.9, {"startup_s": 100.0}),
    ]
    assert median_phases(runs, "project") == {"startup_s": 2.0, "round1_s": 6.0}


def test_project_phases_split_the_wall_time_at_the_round_records() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    submitted = t.timestamp()
    rounds = [
        RoundRecord(
            round=r,
            participants=["edge1", "edge2"],
            total_samples=10,
            opened_at=t + timedelta(seconds=4 + 6 * (r - 1)),
            closed_at=t + timedelta(seconds=4 + 6 * r - 1),
            duration_seconds=5.0,
        )
        for r in (1, 2, 3)
    ]
    status = JobStatus(name="j", phase=Phase.SUCCEEDED, rounds=rounds)
    got = phases(status, submitted, submitted + 25.0)
    # Start-up to round 1's opening, each round's own duration, then from the last close to Succeeded.
    assert got == {"startup_s": 4.0, "round1_s": 5.0, "round2_s": 5.0, "round3_s": 5.0, "finish_s": 4.0}

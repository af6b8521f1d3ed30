"""benchmarks/flower.py's shared parts, without Flower: the summary (medians, ratio, mean accuracies) and
where our side's time went, read from the job's round records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from benchmarks._flower_common import Run, median_phases, summarize
from benchmarks._flower_flwr import phases as flower_phases
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


def test_flower_phases_read_the_serverapp_marks_and_the_clientapp_timings(tmp_path: Path) -> None:
    # The files the Flower app writes; the runner module itself imports nothing of Flower's.
    out = tmp_path / "out"
    out.mkdir()
    marks = [
        {"round": 1, "phase": "train_sent", "t": 110.0},
        {"round": 1, "phase": "train_replies", "t": 118.0},
        {"round": 1, "phase": "evaluate_replies", "t": 121.0},
    ]
    timings = {"main_start": 104.0, "initial_ready": 108.0, "marks": marks, "end": 122.0}
    (out / "server-timings.json").write_text(json.dumps(timings))
    node = tmp_path / "edge1-timings.jsonl"
    lines = [
        {"process_start": 110.0, "handler_start": 112.0, "tf_import_s": 4.0},
        {"process_start": 118.0, "handler_start": 121.0, "tf_import_s": 5.0},
        {"process_start": 130.0, "handler_start": 131.0, "tf_import_s": 6.0},
    ]
    node.write_text("".join(json.dumps(line) + "\n" for line in lines))
    got = flower_phases(out, [node, tmp_path / "missing.jsonl"], submitted=100.0, ended=123.5)
    assert got == {
        "submit_to_serverapp_s": 4.0,
        "serverapp_model_s": 4.0,
        "round1_train_s": 8.0,
        "round1_eval_s": 3.0,
        "finish_s": 1.5,
        "clientapp_spawn_to_handler_s": 2.0,
        "clientapp_tf_import_s": 5.0,
        "clientapp_messages": 3,
    }

"""flctl's printers: kubectl-style tables and ages, the job columns, describe text (pure functions)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from flctl.printers import (
    CREATED_AT,
    JobView,
    Retained,
    age,
    decode_spec,
    describe_job,
    document,
    human_duration,
    jobs_table,
    round_column,
    table,
    worker_states,
    workers_column,
)
from schemas import (
    MAX_STATUS_ROUNDS,
    Condition,
    ConditionType,
    Event,
    JobStatus,
    Kind,
    Phase,
    PrivacyStatus,
    RoundRecord,
    Topics,
    WorkerState,
    WorkerStatus,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
JOB = "surface-defect-detection"
JOB_YAML = b"""\
apiVersion: sedna.io/v1alpha1
kind: FederatedLearningJob
metadata:
  name: surface-defect-detection
spec:
  aggregationWorker:
    model: {name: surface-defect-detection-model}
    nodeName: cloud0
    workerSpec: {scriptDir: /code, scriptBootFile: aggregate.py, parameters: [{key: exit_round, value: "3"}]}
  trainingWorkers:
    - nodeName: edge1
      dataset: {name: edge1-surface-defect-detection-dataset}
      workerSpec: {scriptDir: /code, scriptBootFile: train.py, parameters: [{key: batch_size, value: "32"}]}
    - nodeName: edge2
      dataset: {name: edge2-surface-defect-detection-dataset}
      workerSpec: {scriptDir: /code, scriptBootFile: train.py}
"""


def worker(node: str, state: WorkerState, role: str = "training", round_: int = 2) -> WorkerStatus:
    return WorkerStatus(job=JOB, node=node, role=role, state=state, round=round_, num_samples=120)


def running_status(*workers: WorkerStatus) -> JobStatus:
    return JobStatus(
        name=JOB,
        phase=Phase.RUNNING,
        current_round=2,
        exit_round=3,
        start_time=NOW - timedelta(minutes=3),
        aggregation_node="cloud0",
        workers=list(workers),
    )


def job_view(status: JobStatus | None, created: datetime | None = None) -> JobView:
    topic = Topics().spec(Kind.JOB, JOB)
    props = {CREATED_AT: created.isoformat()} if created else {}
    return JobView(JOB, decode_spec(topic, Kind.JOB, JOB, Retained(JOB_YAML, props)), status)


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(seconds=0), "0s"),
        (timedelta(seconds=45), "45s"),
        (timedelta(seconds=119), "119s"),
        (timedelta(minutes=3), "3m"),
        (timedelta(minutes=3, seconds=10), "3m10s"),
        (timedelta(minutes=12, seconds=30), "12m"),
        (timedelta(hours=2, minutes=5), "125m"),
        (timedelta(hours=3), "3h"),
        (timedelta(hours=3, minutes=5), "3h5m"),
        (timedelta(hours=30), "30h"),
        (timedelta(days=4), "4d"),
        (timedelta(days=4, hours=3), "4d3h"),
        (timedelta(days=30, hours=3), "30d"),
        (timedelta(days=800), "2y70d"),
        (timedelta(days=4000), "10y"),
        (timedelta(seconds=-0.5), "0s"),
        (timedelta(seconds=-5), "<invalid>"),
    ],
)
def test_human_duration_matches_kubectl(delta: timedelta, expected: str) -> None:
    """Ages use kubectl's bands: seconds below 2m, then m(s) below 10m, m below 3h, h(m), h, d(h), d, y(d)."""
    assert human_duration(delta) == expected


def test_age_of_nothing_is_unknown() -> None:
    """A resource without any timestamp shows <unknown>, as kubectl does."""
    assert age(None, NOW) == "<unknown>"
    assert age(NOW - timedelta(seconds=45), NOW) == "45s"


def test_table_aligns_columns_three_spaces_apart() -> None:
    """Every column is as wide as its widest cell plus three spaces; the last column is not padded."""
    text = table(["NAME", "PHASE", "AGE"], [["a", "Running", "3m"], ["longer-name", "Pending", "<unknown>"]])
    assert text.splitlines() == [
        "NAME          PHASE     AGE",
        "a             Running   3m",
        "longer-name   Pending   <unknown>",
    ]


def test_table_with_no_rows_is_the_header() -> None:
    """An empty table still prints its header line."""
    assert table(["NAME", "AGE"], []) == "NAME   AGE"


def test_table_refuses_a_ragged_row() -> None:
    """A row with the wrong number of cells is a bug, reported at once."""
    with pytest.raises(ValueError, match="2 cells, expected 3"):
        table(["A", "B", "C"], [["1", "2"]])


def test_round_column_is_current_of_exit_round() -> None:
    """ROUND shows current/exit, ? before the exit round is known, - without a status."""
    assert round_column(running_status()) == "2/3"
    assert round_column(JobStatus(name=JOB)) == "0/?"
    assert round_column(None) == "-"


def test_workers_column_counts_training_workers_not_failed_or_offline() -> None:
    """WORKERS counts healthy training workers out of all participants; the aggregator is not counted."""
    healthy = running_status(
        worker("edge1", WorkerState.TRAINING),
        worker("edge2", WorkerState.WAITING),
        worker("cloud0", WorkerState.READY, role="aggregation"),
    )
    assert workers_column(healthy, 2) == "2/2"
    failed = running_status(worker("edge1", WorkerState.FAILED), worker("edge2", WorkerState.WAITING))
    assert workers_column(failed, 2) == "1/2"
    offline = running_status(worker("edge1", WorkerState.OFFLINE), worker("edge2", WorkerState.OFFLINE))
    assert workers_column(offline, 2) == "0/2"


def test_workers_column_uses_the_spec_when_workers_have_not_reported() -> None:
    """Participants come from the spec, so a worker not heard from yet still counts in the total."""
    assert workers_column(running_status(worker("edge1", WorkerState.TRAINING)), 2) == "1/2"
    assert workers_column(None, 2) == "0/2"
    assert workers_column(None, None) == "-"


def test_worker_states_lists_every_worker() -> None:
    """The wide STATE column names each worker's state, aggregator included."""
    status = running_status(worker("edge1", WorkerState.TRAINING), worker("cloud0", WorkerState.READY, "aggregation"))
    assert worker_states(status) == "edge1=Training,cloud0=Ready"
    assert worker_states(None) == "<none>"


def test_jobs_table_renders_a_running_job() -> None:
    """A job with a status shows its phase, round, healthy workers, no evaluation or closed round yet (-),
    and age since startTime."""
    view = job_view(running_status(worker("edge1", WorkerState.TRAINING), worker("edge2", WorkerState.WAITING)))
    assert jobs_table([view], NOW).splitlines() == [
        "NAME                       PHASE     ROUND   WORKERS   EVAL ACC   ROUND TIME   AGE",
        "surface-defect-detection   Running   2/3     2/2       -          -            3m",
    ]


def test_jobs_table_shows_a_job_without_status_as_pending() -> None:
    """A spec the controller has not answered yet is Pending, aged from its creation, with a message in -o wide."""
    view = job_view(None, created=NOW - timedelta(seconds=45))
    lines = jobs_table([view], NOW, wide=True).splitlines()
    assert re.split(r" {3,}", lines[0]) == [
        "NAME", "PHASE", "ROUND", "WORKERS", "EVAL ACC", "ROUND TIME", "AGE", "AGGREGATOR", "STATE", "MESSAGE"
    ]  # fmt: skip
    assert re.split(r" {3,}", lines[1]) == [
        "surface-defect-detection",
        "Pending",
        "-",
        "0/2",
        "-",
        "-",
        "45s",
        "cloud0",
        "<none>",
        "no status from the controller yet",
    ]


def test_describe_job_has_every_section() -> None:
    """describe shows phase, round, conditions, workers, rounds, the spec summary and events."""
    status = running_status(worker("edge1", WorkerState.TRAINING), worker("edge2", WorkerState.WAITING))
    status.conditions.append(Condition(type=ConditionType.TRAINING, reason="DoTraining", message="round 2 started"))
    status.rounds.append(RoundRecord(round=1, participants=["edge1", "edge2"], total_samples=240, closed_at=NOW))
    status.add_event(
        Event(time=NOW - timedelta(minutes=1), reason="RoundClosed", message="round 1 aggregated", round=1)
    )
    text = describe_job(job_view(status), NOW)
    for expected in (
        "Name:              surface-defect-detection",
        "Phase:             Running",
        "Round:             2/3",
        "Aggregation Node:  cloud0",
        "Conditions:",
        "  TYPE       STATUS   REASON       MESSAGE           LAST-TRANSITION",
        "Workers:",
        "  edge1   training   Training   2       120       <none>",
        "Rounds:",
        "  1       edge1,edge2    240       0s",
        "    Parameters:  exit_round=3",
        "    edge1   edge1-surface-defect-detection-dataset   /code/train.py (tensorflow)   batch_size=32",
        "  Normal   RoundClosed   60s   controller   round 1 aggregated",
    ):
        assert expected in text.splitlines(), expected
    assert text.index("Rounds:") < text.index("Spec:") < text.index("Events:")


def test_describe_job_points_to_flctl_top_when_the_status_holds_only_the_newest_rounds() -> None:
    """The status keeps the newest MAX_STATUS_ROUNDS summaries; describe says where every round is."""
    status = running_status(worker("edge1", WorkerState.TRAINING), worker("edge2", WorkerState.TRAINING))
    status.rounds = [
        RoundRecord(round=r, participants=["edge1", "edge2"], total_samples=240, closed_at=NOW)
        for r in range(8 - MAX_STATUS_ROUNDS, 8)
    ]
    lines = describe_job(job_view(status), NOW).splitlines()
    hint = f"  (the newest {MAX_STATUS_ROUNDS}; every round: flctl top fl surface-defect-detection)"
    assert hint in lines and lines.index(hint) > lines.index("Rounds:")
    status.rounds = [status.rounds[0].model_copy(update={"round": 1})]
    assert not any("every round: flctl top" in line for line in describe_job(job_view(status), NOW).splitlines())


def test_describe_job_says_the_privacy_spent_and_each_rounds_epsilon() -> None:
    status = running_status(worker("edge1", WorkerState.COMPLETED), worker("edge2", WorkerState.COMPLETED))
    for r, eps in ((1, 1.5), (2, 2.25)):
        status.rounds.append(
            RoundRecord(round=r, participants=["edge1"], total_samples=120, closed_at=NOW, epsilon=eps)
        )
    status.privacy = PrivacyStatus(
        mode="distributed", clip_norm=0.5, noise_multiplier=1.1, delta=1e-5, target_epsilon=3, rounds=2, epsilon=2.25,
        budget_spent=True,
    )  # fmt: skip
    lines = describe_job(job_view(status), NOW).splitlines()
    assert (
        "Privacy:           distributed DP: epsilon 2.25 of 3 spent at delta 1e-05 after 2 rounds "
        "(clip 0.5, noise multiplier 1.1); budget spent"
    ) in lines
    assert "  ROUND   PARTICIPANTS   SAMPLES   CLOSED   EPSILON" in lines
    assert "  2       edge1          120       0s       2.25" in lines


def alias_bomb(levels: int = 9, width: int = 10) -> bytes:
    """A job whose spec is a few hundred bytes and, with its aliases expanded, width**levels nodes."""
    lines = [f"  l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    header = f"apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\nmetadata:\n  name: {JOB}\nspec:\n"
    return (header + "\n".join(lines) + "\n").encode()


@pytest.mark.timeout(30)
def test_a_retained_alias_bomb_is_unreadable_with_the_reason() -> None:
    """A retained spec that expands past the YAML node limit keeps no data and every printer says why."""
    topic = Topics().spec(Kind.JOB, JOB)
    spec = decode_spec(topic, Kind.JOB, JOB, Retained(alias_bomb()))
    view = JobView(JOB, spec, None)

    assert spec.data is None and spec.resource is None
    assert spec.error is not None and "alias bomb" in spec.error
    assert f"Spec:  invalid: topic {topic}: expands to more than" in describe_job(view, NOW)
    doc = document(view)
    assert doc["metadata"] == {"name": JOB} and doc["x-flctl"]["specError"] == spec.error


def test_a_retained_spec_over_the_size_limit_is_unreadable_with_the_reason() -> None:
    """A retained spec over the document byte limit is not parsed; the job still lists, as Pending."""
    topic = Topics().spec(Kind.JOB, JOB)
    payload = JOB_YAML + b"#" * (1 << 20)
    spec = decode_spec(topic, Kind.JOB, JOB, Retained(payload))
    view = JobView(JOB, spec, None)

    assert spec.data is None and spec.resource is None
    assert spec.error == f"topic {topic}: {len(payload)} bytes is over the {1 << 20}-byte limit"
    assert jobs_table([view], NOW).splitlines()[1].split()[:2] == [JOB, "Pending"]

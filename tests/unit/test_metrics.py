"""The aggregator's Prometheus metrics (`AggregatorMetrics`), fed the documents the engine publishes.

No broker here: the statuses, acks and node statuses are the real schema objects; the endpoint is the
real HTTP server, read with prometheus_client's own parser. tests/monitoring/ scrapes a running job
with a real Prometheus server.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import MqttSettings
from cloud_aggregator import cli
from cloud_aggregator.engine import JobSettings
from cloud_aggregator.service import AggregatorMetrics, AggregatorService
from schemas import (
    Event,
    JobStatus,
    NodeState,
    NodeStatus,
    Phase,
    RoundRecord,
    UpdateAck,
    WorkerState,
    WorkerStatus,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def metrics() -> Iterator[AggregatorMetrics]:
    m = AggregatorMetrics("cloud0", deadline_of=lambda job: 30.0 if job == "j" else None)
    yield m
    m.close()


def status(rounds: int, *, uid: str = "u1", phase: Phase = Phase.RUNNING, exit_round: int = 3) -> JobStatus:
    """A job status with `rounds` closed rounds, 10 s apart, round 1 opened at T0."""
    return JobStatus(
        name="j",
        uid=uid,
        phase=phase,
        exit_round=exit_round,
        current_round=rounds,
        workers=[
            WorkerStatus(job="j", node="edge1", state=WorkerState.WAITING, metrics={"loss": 0.5, "accuracy": 0.75}),
            WorkerStatus(job="j", node="edge2", state=WorkerState.TRAINING, metrics={"bad name!": 1.0}),
            WorkerStatus(job="j", node="cloud0", role="aggregation", state=WorkerState.READY),
        ],
        rounds=[
            RoundRecord(
                round=r,
                participants=["edge1", "edge2"],
                total_samples=40,
                closed_at=T0 + timedelta(seconds=10 * r),
                metrics={"eval_accuracy": 0.5 + r / 10, "eval_loss": 1.0 / r},
            )
            for r in range(1, rounds + 1)
        ],
        events=[Event(time=T0, reason="InitialModel", message="the round-0 model comes from edge1")],
    )


def value(m: AggregatorMetrics, metric: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(metric, labels)


def test_a_job_s_rounds_phase_workers_and_accuracy(metrics: AggregatorMetrics) -> None:
    metrics.observe_job("j", status(0))
    metrics.observe_job("j", status(1))
    metrics.observe_job("j", status(1))  # the same round again: counted once
    metrics.observe_job("j", status(2))

    assert value(metrics, "fl_rounds_closed_total", job_name="j") == 2
    assert value(metrics, "fl_round_duration_seconds_count", job_name="j") == 2
    assert value(metrics, "fl_round_duration_seconds_sum", job_name="j") == 20.0
    assert value(metrics, "fl_round_duration_seconds_bucket", job_name="j", le="10.0") == 2
    assert value(metrics, "fl_job_phase", job_name="j", phase="Running") == 1
    assert value(metrics, "fl_job_phase", job_name="j", phase="Failed") == 0
    assert value(metrics, "fl_jobs", phase="Running") == 1
    assert value(metrics, "fl_job_rounds_closed", job_name="j") == 2
    assert value(metrics, "fl_job_round", job_name="j") == 3
    assert (
        value(metrics, "fl_job_round_opened_timestamp_seconds", job_name="j")
        == (T0 + timedelta(seconds=20)).timestamp()
    )
    assert value(metrics, "fl_job_round_deadline_seconds", job_name="j") == 30.0
    assert value(metrics, "fl_job_eval_accuracy", job_name="j") == pytest.approx(0.7)
    assert value(metrics, "fl_job_eval_round", job_name="j") == 2
    assert value(metrics, "fl_job_round_metric", job_name="j", name="eval_loss") == 0.5
    assert value(metrics, "fl_job_workers", job_name="j", state="Waiting") == 1
    assert value(metrics, "fl_job_workers", job_name="j", state="Failed") == 0
    assert value(metrics, "fl_worker_metric", job_name="j", worker="edge1", name="accuracy") == 0.75
    # A name a script chose that is no label value: left out.
    assert value(metrics, "fl_worker_metric", job_name="j", worker="edge2", name="bad name!") is None


def test_round_one_opens_with_the_round_zero_model_and_no_round_is_open_after_the_last(
    metrics: AggregatorMetrics,
) -> None:
    metrics.observe_job("j", status(0))
    assert value(metrics, "fl_job_round_opened_timestamp_seconds", job_name="j") == T0.timestamp()
    metrics.observe_job("j", status(3, phase=Phase.SUCCEEDED))

    assert value(metrics, "fl_job_round", job_name="j") == 0
    assert value(metrics, "fl_job_round_opened_timestamp_seconds", job_name="j") is None
    assert value(metrics, "fl_jobs", phase="Succeeded") == 1
    assert value(metrics, "fl_rounds_closed_total", job_name="j") == 3


def test_an_evaluation_that_arrives_after_its_round_closed_still_counts(metrics: AggregatorMetrics) -> None:
    """The edges score round r's global model as they start round r+1: the newest record may have none yet."""
    late = status(3)
    late.rounds[-1].metrics = {"train_loss": 0.25}
    metrics.observe_job("j", late)

    assert value(metrics, "fl_job_eval_accuracy", job_name="j") == pytest.approx(0.7)
    assert value(metrics, "fl_job_eval_round", job_name="j") == 2
    # Each figure from the newest round that has it.
    assert value(metrics, "fl_job_round_metric", job_name="j", name="train_loss") == 0.25
    assert value(metrics, "fl_job_round_metric", job_name="j", name="eval_loss") == 0.5


def test_a_restarted_aggregator_does_not_count_the_rounds_it_resumes_with() -> None:
    restarted = AggregatorMetrics("cloud0")
    restarted.observe_job("j", status(2))
    restarted.observe_job("j", status(3))
    assert value(restarted, "fl_rounds_closed_total", job_name="j") == 1
    # A new run of the job (another uid): its rounds are all new.
    restarted.observe_job("j", status(1, uid="u2"))
    assert value(restarted, "fl_rounds_closed_total", job_name="j") == 2


def test_a_deleted_job_takes_its_series_with_it(metrics: AggregatorMetrics) -> None:
    metrics.observe_job("j", status(1))
    metrics.observe_ack(
        UpdateAck(job="j", uid="u1", round=1, node="edge1", transfer="ab12cd34", accepted=True, reason="stored")
    )
    metrics.observe_job("j", None)

    for name in ("fl_rounds_closed_total", "fl_updates_accepted_total", "fl_job_round", "fl_job_eval_accuracy"):
        assert value(metrics, name, job_name="j") is None, name
    assert value(metrics, "fl_jobs", phase="Running") == 0


# The engine's refusal texts (cloud_aggregator/engine/_transfers.py, _rounds.py, _intake.py) and their label.
REFUSALS = {
    "round 2 is closed": "round_closed",
    "round 3 has not started; the current round is 2": "round_not_open",
    "round 1 has not started: no round-0 model yet": "round_not_open",
    "the job is not running (stage final)": "round_not_open",
    "an init transfer belongs to round 0, not round 2": "wrong_round",
    "manifest round 2 does not match the topic's round 3": "wrong_round",
    "kind global is not an update": "wrong_kind",
    "expected an update transfer, got kind init": "wrong_kind",
    "transfer for job uid abc, the running job's uid is def": "wrong_run",
    "transfer names job 'other'": "wrong_run",
    "sender 'edge2' does not match the topic's node 'edge1'": "wrong_sender",
    "edge9 is not a training worker of this job": "wrong_sender",
    "layout differs from the global model: tensor 0 shape (3,) != (4,)": "layout",
    "tensor 1 (dense/bias) has non-finite values (NaN or inf)": "non_finite",
    "num_samples must be > 0": "num_samples",
    "unreadable weights: bad magic": "unreadable",
    "weights header says round=2, expected 3": "unreadable",
    "malformed manifest: field required": "unreadable",
    "not a valid TransferManifest: transfer: Field required": "unreadable",
    "something nobody wrote yet": "other",
}


def test_refused_updates_count_by_a_bounded_reason(metrics: AggregatorMetrics) -> None:
    metrics.observe_job("j", status(1))
    for i, text in enumerate(REFUSALS):
        metrics.observe_ack(
            UpdateAck(job="j", uid="u1", round=2, node="edge1", transfer=f"{i:08x}", accepted=False, reason=text)
        )
    ack = {"job": "j", "uid": "u1", "round": 2, "node": "edge1", "transfer": "0000ffff"}
    metrics.observe_ack(UpdateAck(**ack, accepted=True, reason="stored"))
    metrics.observe_ack(UpdateAck(**ack, accepted=True, reason="already stored"))
    metrics.observe_ack(UpdateAck(**ack, accepted=False, reason="incomplete", missing=[1, 2]))
    # A job this node never published a status of gets no series (a label only for known jobs).
    metrics.observe_ack(UpdateAck(**{**ack, "job": "nope"}, accepted=False, reason="round 2 is closed"))

    expected: dict[str, int] = {}
    for label in REFUSALS.values():
        expected[label] = expected.get(label, 0) + 1
    for label, count in expected.items():
        assert value(metrics, "fl_updates_rejected_total", job_name="j", reason=label) == count, label
    assert value(metrics, "fl_updates_accepted_total", job_name="j") == 1
    assert value(metrics, "fl_updates_duplicate_total", job_name="j") == 1
    assert value(metrics, "fl_update_resume_requests_total", job_name="j") == 1
    assert value(metrics, "fl_updates_rejected_total", job_name="nope", reason="round_closed") is None


def test_nodes_bytes_and_the_broker_s_sys_counters(metrics: AggregatorMetrics) -> None:
    metrics.observe_node("edge1", NodeStatus(node="edge1", role="edge", state=NodeState.ONLINE).to_json())
    metrics.observe_node("edge2", NodeStatus(node="edge2", role="edge", state=NodeState.OFFLINE).to_json())
    metrics.observe_node("edge3", b"not json")
    metrics.observe_sys("$SYS/broker/publish/messages/dropped", b"3")
    metrics.observe_sys("$SYS/broker/uptime", b"17 seconds")
    metrics.observe_sys("$SYS/broker/heap/current", b"garbage")
    metrics.observe_sys("$SYS/broker/load/bytes/sent/1min", b"3.5")  # not one we export
    metrics.observe_received("update-chunk", 1000)
    metrics.observe_sent("global-chunk", 2000)

    assert value(metrics, "fl_node_online", node="edge1", role="edge") == 1
    assert value(metrics, "fl_node_online", node="edge2", role="edge") == 0
    assert value(metrics, "fl_nodes_online") == 1
    assert value(metrics, "fl_broker_publish_messages_dropped_total") == 3
    assert value(metrics, "fl_broker_uptime_seconds") == 17
    assert value(metrics, "fl_broker_heap_bytes") is None
    assert value(metrics, "fl_mqtt_received_bytes_total", channel="update-chunk") == 1000
    assert value(metrics, "fl_mqtt_sent_bytes_total", channel="global-chunk") == 2000
    metrics.observe_node("edge2", b"")  # the retained status was cleared: the node is gone
    assert value(metrics, "fl_node_online", node="edge2", role="edge") is None


def test_two_services_in_one_process_serve_their_own_metrics_over_http() -> None:
    first, second = AggregatorMetrics("cloud0"), AggregatorMetrics("cloud1")
    try:
        first.observe_job("j", status(0))
        first.observe_job("j", status(1))
        ports = [m.serve("127.0.0.1", 0) for m in (first, second)]
        texts = []
        for port in ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                assert reply.status == 200
                texts.append(reply.read().decode())
    finally:
        first.close()
        second.close()
    families = [{f.name: f for f in text_string_to_metric_families(t)} for t in texts]
    assert [s.value for s in families[0]["fl_rounds_closed"].samples if s.name == "fl_rounds_closed_total"] == [1.0]
    assert not [s for s in families[1]["fl_rounds_closed"].samples if s.name == "fl_rounds_closed_total"]
    assert first.serving is False


# -- the command line and the service ----------------------------------------------------------------


def test_the_metrics_port_comes_from_the_flag_or_the_environment_and_a_bad_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in os.environ if n.startswith("FL_")]:
        monkeypatch.delenv(name)
    base = ["--node", "cloud0", "--root", str(tmp_path), "--port", "1"]
    with pytest.raises(SystemExit) as exc:
        cli.main([*base, "--metrics-port", "99999"])
    assert exc.value.code == 2
    assert "--metrics-port" in capsys.readouterr().err

    monkeypatch.setenv("FL_METRICS_PORT", "nine")
    assert cli.main(base) == 2
    assert "FL_METRICS_PORT='nine': expected a port number" in capsys.readouterr().err


def test_a_service_whose_metrics_port_is_taken_exits_1_before_it_connects(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = AggregatorService(
            node="cloud0",
            root=tmp_path,
            settings=MqttSettings(client_id="cloud0", port=1),
            job_settings=JobSettings(),
            metrics_port=port,
        )
        assert service.run() == 1
    assert service.metrics_address is None and not service.metrics.serving

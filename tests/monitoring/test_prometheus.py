"""A real Prometheus server scrapes a running aggregator during a small real job (issue 9).

Secured deployment as `flctl broker init` writes it (TLS, passwords, the real ACL: the aggregator reads
`$SYS` only because the ACL lets it), a real broker, the aggregator with `--metrics-port`, two edges with
the fault tests' tiny numpy workers held before round 2, and Debian's `prometheus` scraping every second
with the project's alert rules (deploy/prometheus/alerts.yml) loaded. While the job waits in round 2 the
job, round, update, byte, node and broker series must be in Prometheus; after the job, the final ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Session
from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import Phase
from tests.faults.conftest import JOB, job_yaml, samples_of
from tests.helpers.mqtt import free_port
from tests.helpers.nodes import lay_out_nodes
from tests.helpers.prometheus import PrometheusServer, prometheus_binary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
EDGES = ["edge1", "edge2"]
DEADLINE = "600"
WAIT = 60.0


def lay_out(tmp: Path) -> Path:
    """Label files and the numpy worker for each edge, the aggregation script, the job (held before round 2)."""
    lay_out_nodes(
        tmp,
        {edge: [f"sample-{edge}-{i},{i % 2}" for i in range(samples_of(index))] for index, edge in enumerate(EDGES)},
    )
    spec = tmp / "job.yaml"
    # validation_split: the workers score each global model on their last quarter (federated evaluation).
    params = {"features": "8", "hidden": "16", "hold_rounds": "2", "validation_split": "0.25"}
    spec.write_text(
        job_yaml(
            EDGES,
            exit_round=3,
            script="train_numpy.py",
            agg_params={"round_deadline": DEADLINE},
            worker_params={e: params for e in EDGES},
        )
    )
    return spec


@pytest.mark.skipif(
    prometheus_binary() is None,
    reason="the prometheus binary is not installed (Debian package prometheus; `make test` and .ci/run install it)",
)
def test_a_real_prometheus_scrapes_the_aggregator_during_a_job(tmp_path: Path) -> None:
    spec = lay_out(tmp_path)
    metrics_port = free_port()
    # edge3 takes no part in the job: its identity sends a broken upload the aggregator must refuse.
    nodes = ["cloud0", *EDGES, "edge3"]
    with LocalCluster(tmp_path, secure=True, nodes=nodes, broker_config={"sys_interval": 1}) as cluster:
        cluster.start_broker()
        cluster.start_node("cloud0", "aggregator", extra_args=["--metrics-port", str(metrics_port)])
        for edge in EDGES:
            cluster.start_node(edge, "edge")
        with PrometheusServer(
            tmp_path / "prometheus", targets=[f"127.0.0.1:{metrics_port}"], rule_files=[ALERTS]
        ) as prom:
            prom.wait_value('up{job="fl-cloud-aggregator"}', lambda v: v == 1, WAIT, "the aggregator scraped")
            assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) == 0

            # -- during the job: both edges wait before training round 2 ---------------------------------
            job = f'job_name="{JOB}"'
            prom.wait_value(f"fl_rounds_closed_total{{{job}}}", lambda v: v == 1, WAIT, "round 1 closed")
            prom.wait_value(f"fl_job_round{{{job}}}", lambda v: v == 2, WAIT, "round 2 in progress")
            during = {
                f'fl_job_phase{{{job},phase="Running"}}': 1.0,
                'fl_jobs{phase="Running"}': 1.0,
                f"fl_job_exit_round{{{job}}}": 3.0,
                f"fl_job_round_deadline_seconds{{{job}}}": float(DEADLINE),
                f"fl_round_duration_seconds_count{{{job}}}": 1.0,
                # edge1 and edge2's round-1 updates and the round-0 model (the init source's; a fallback init
                # from the other edge would be a duplicate, not counted)
                f"fl_updates_accepted_total{{{job}}}": 3.0,
                f'fl_job_workers{{{job},state="Training"}}': 2.0,
                'fl_node_online{node="edge1"}': 1.0,
                'fl_node_online{node="cloud0"}': 1.0,
                "fl_broker_connected": 1.0,
                # $SYS through the real ACL: nothing dropped, and the counter is there to say so
                "fl_broker_publish_messages_dropped_total": 0.0,
            }
            for expr, expected in during.items():
                prom.wait_value(expr, lambda v, e=expected: v == e, WAIT, expr)
            for expr in (
                f"fl_job_round_opened_timestamp_seconds{{{job}}}",
                'fl_mqtt_received_bytes_total{channel="update-chunk"}',
                'fl_mqtt_sent_bytes_total{channel="global-chunk"}',
                f'fl_worker_metric{{{job},worker="edge1",name="loss"}}',
                "fl_broker_clients_connected",
                "fl_broker_store_messages_bytes",
                "fl_broker_heap_bytes",
            ):
                prom.wait_value(expr, lambda v: v > 0, WAIT, expr)
            prom.wait_value("fl_nodes_online", lambda v: v >= 3, WAIT, "nodes online")

            # A broken manifest on edge3's own update topic: refused, counted under a bounded reason.
            session = Session(cluster.settings("edge3"), inbox=_Discard(), topics=cluster.topics)
            session.start()
            try:
                assert session.wait_connected(20)
                topic = f"{cluster.topics.prefix}/federatedlearningjobs/{JOB}/rounds/2/updates/edge3/0000abcd/manifest"
                session.publish(topic, b"{}").wait(20)
            finally:
                session.stop(timeout=5)
            prom.wait_value(
                f'fl_updates_rejected_total{{{job},reason="unreadable"}}', lambda v: v == 1, WAIT, "refused upload"
            )

            # -- the job goes on and ends -------------------------------------------------------------------
            for edge in EDGES:
                (tmp_path / edge / "gates").mkdir(exist_ok=True)
                (tmp_path / edge / "gates" / "round-2").touch()
            status = cluster.wait_for_job(JOB, timeout=120)
            assert status.phase is Phase.SUCCEEDED, status.message
            prom.wait_value(f'fl_job_phase{{{job},phase="Succeeded"}}', lambda v: v == 1, WAIT, "Succeeded")
            prom.wait_value(f"fl_rounds_closed_total{{{job}}}", lambda v: v == 3, WAIT, "3 rounds closed")
            prom.wait_value(f"fl_round_duration_seconds_count{{{job}}}", lambda v: v == 3, WAIT, "3 durations")
            prom.wait_value(f"fl_job_eval_accuracy{{{job}}}", lambda v: 0.0 <= v <= 1.0, WAIT, "evaluation accuracy")
            assert prom.query(f"fl_job_round_opened_timestamp_seconds{{{job}}}") == {}, "no round open after the job"
            assert prom.wait_value(f"fl_job_round{{{job}}}", lambda v: v == 0, WAIT) == 0

            # The alert rules evaluate on the real server, and none fires for this healthy job.
            groups = prom.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            assert rules and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
            firing = [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]
            assert firing == [], firing


class _Discard:
    """An inbox for a session that only publishes."""

    def put_nowait(self, _item: object, /) -> None:
        return None

"""deploy/prometheus/ checked with Prometheus' own tool and against the aggregator: the scrape config and
the alert rules are valid (`promtool check config`), every alert fires when it should and only then
(`promtool test rules alerts.test.yml`), every metric the rules use is one the aggregator exports, and
the port Prometheus scrapes is the one every deploy file gives `--metrics-port`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_aggregator.cli import build_parser
from cloud_aggregator.service import AggregatorMetrics
from schemas import JobStatus, NodeState, NodeStatus, Phase, RoundRecord, UpdateAck

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package prometheus: `make prometheus` installs it)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_accepts_the_scrape_config_and_its_rule_files() -> None:
    done = promtool("check", "config", "prometheus.yml")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout


@needs_promtool
def test_the_alerts_fire_when_they_should_and_only_then() -> None:
    """alerts.test.yml: dropped messages, a round past its deadline (not one without a deadline), a node
    offline for 2 minutes, a Failed job, refused updates; nothing before it happens."""
    done = promtool("test", "rules", "alerts.test.yml")

    assert done.returncode == 0, done.stdout + done.stderr
    tested = {
        t["alertname"]
        for case in yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
        for t in case["alert_rule_test"]
    }
    assert tested == set(alert_exprs())


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for group in rules["groups"] for r in group["rules"]}


def exported_names() -> set[str]:
    """Every sample name an aggregator exports once it saw a job, an ack, a node and the broker's $SYS."""
    metrics = AggregatorMetrics("cloud0", deadline_of=lambda _job: 60.0)
    metrics.observe_job("j", JobStatus(name="j", uid="u", phase=Phase.RUNNING, exit_round=3))
    metrics.observe_job(
        "j",
        JobStatus(
            name="j",
            uid="u",
            phase=Phase.RUNNING,
            exit_round=3,
            rounds=[RoundRecord(round=1, participants=["e"], total_samples=1, metrics={"eval_accuracy": 0.5})],
        ),
    )
    metrics.observe_ack(UpdateAck(job="j", uid="u", round=2, node="e", transfer="0000abcd", accepted=False, reason="x"))
    metrics.observe_node("e", NodeStatus(node="e", role="edge", state=NodeState.ONLINE).to_json())
    for topic in metrics.sys_topics():
        metrics.observe_sys(topic, b"1")
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def test_every_metric_the_rules_use_is_one_the_aggregator_exports() -> None:
    exported = exported_names()
    for alert, expr in alert_exprs().items():
        used = set(re.findall(r"\b(fl_[a-z_]+)", expr))
        assert used or expr.startswith('up{job="fl-cloud-aggregator"}'), f"{alert}: uses no metric of the aggregator"
        assert used <= exported, f"{alert}: {sorted(used - exported)} are not exported"


def metrics_port_of(argv: list[str], where: str) -> int:
    ns = build_parser().parse_args(argv[1:])
    assert ns.metrics_port is not None, f"{where}: no --metrics-port"
    return int(ns.metrics_port)


def test_prometheus_scrapes_the_port_every_deploy_file_serves_metrics_on() -> None:
    (target,) = [
        t
        for job in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    host, port = target.rsplit(":", 1)
    assert host == "127.0.0.1"

    unit = (REPO / "deploy" / "systemd" / "fl-cloud-aggregator.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    assert metrics_port_of(argv, "systemd") == int(port)
    assert build_parser().parse_args(argv[1:]).metrics_bind is None, "systemd: the default loopback bind"

    compose: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    cloud0 = compose["services"]["cloud0"]
    assert metrics_port_of(cloud0["command"], "compose") == int(port)
    assert cloud0["ports"] == [f"127.0.0.1:{port}:{port}"], "published on the host's loopback only"

    deployment = yaml.safe_load((REPO / "deploy" / "kubernetes" / "aggregator.yaml").read_text())
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert metrics_port_of(container["command"], "kubernetes") == int(port)
    assert [p["containerPort"] for p in container["ports"]] == [int(port)]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == port

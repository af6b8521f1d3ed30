"""The seed job end to end on a secured deployment: every service with its node.yaml (password, TLS with
the generated CA, ACLs on), flctl as the admin; the job succeeds and no edge could see another's update."""

from __future__ import annotations

from pathlib import Path

import pytest

from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import Phase
from tests.e2e.test_seed_job import EDGES, EXAMPLE, JOB, lay_out_nodes

pytestmark = [pytest.mark.security, pytest.mark.e2e, pytest.mark.timeout(600)]


def test_seed_job_runs_authenticated_over_tls(tmp_path: Path) -> None:
    lay_out_nodes(tmp_path)
    with LocalCluster(tmp_path, secure=True, nodes=["cloud0", *EDGES]) as cluster:
        cluster.start_broker()
        conf = (tmp_path / "secrets" / "broker" / "mosquitto.conf").read_text()
        assert "allow_anonymous false" in conf and "use_username_as_clientid true" in conf
        cluster.start_node("cloud0", "aggregator")
        for edge in EDGES:
            cluster.start_node(edge, "edge")
        code = flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(EXAMPLE / "surface-defect-detection.yaml")])
        assert code == 0
        status = cluster.wait_for_job(JOB, timeout=420)

        assert status.phase is Phase.SUCCEEDED, status.message
        assert [r.round for r in status.rounds] == [1, 2, 3]
        for record in status.rounds:
            assert sorted(record.participants) == ["edge1", "edge2"]
        for edge in EDGES:
            assert (tmp_path / edge / "model" / "model.ckpt.index").is_file()
            log = (tmp_path / edge / "service.log").read_text()
            assert "Not authorized" not in log and "refused" not in log.lower(), log[-2000:]
        # every node used only what the ACL grants it: the broker denied nothing, and each node connected
        # as itself (the broker's client id is the username)
        assert cluster.broker is not None
        broker_log = cluster.broker.log_text()
        assert "Denied" not in broker_log, [line for line in broker_log.splitlines() if "Denied" in line][:5]
        for node in ("cloud0", *EDGES):
            assert f" as {node} " in broker_log
        assert flctl_cli.main([*cluster.flctl_args(), "get", "fl"]) == 0

"""`fl-edge-trainer --warm-worker` end to end: a real Mosquitto, the real aggregator and two edge services
as processes; the fault tests' tiny Keras script runs in each edge's warm worker (TensorFlow preloaded)
and the job Succeeds. The job log's header and the service log say the run started warm.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import Phase, Topics
from tests.helpers.mqtt import wait_until
from tests.helpers.nodes import job_documents, lay_out_nodes
from tests.helpers.status import JobWatcher

pytestmark = pytest.mark.timeout(240)

JOB = "warm-job"
EDGES = ("edge1", "edge2")
WAIT = 120.0


def job_yaml() -> str:
    return job_documents(
        [JOB],
        EDGES,
        model="warm-model",
        script="train_keras.py",
        edge_parameters={"features": 4, "hidden": 3},
        aggregator_parameters={"exit_round": 2, "participants_count": 2},
    )


def test_a_job_runs_in_the_edges_warm_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay_out_nodes(tmp_path, {e: [f"w-{e}-{i},{i % 2:d}" for i in range(8)] for e in EDGES}, script="train_keras.py")
    (tmp_path / "job.yaml").write_text(job_yaml())

    with LocalCluster(tmp_path) as cluster:
        cluster.start_broker()
        with JobWatcher(cluster.settings("watch-warm"), Topics(), JOB) as watcher:
            cluster.start_node("cloud0", "aggregator")
            for edge in EDGES:
                cluster.start_node(edge, "edge", extra_args=["--warm-worker"])
            for edge in EDGES:
                service_log = tmp_path / edge / "service.log"
                wait_until(lambda log=service_log: "warm worker ready" in log.read_text(), 90, f"{edge}'s warm worker")
            assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(tmp_path / "job.yaml")]) == 0
            status = watcher.wait_finished(WAIT)
        capsys.readouterr()
    assert status.phase is Phase.SUCCEEDED, watcher.describe()
    for edge in EDGES:
        job_log = (tmp_path / edge / "logs" / JOB / "worker.log").read_text()
        assert "train_keras.py (warm start) ===" in job_log
        assert '"start": "warm"' in (tmp_path / edge / "service.log").read_text()

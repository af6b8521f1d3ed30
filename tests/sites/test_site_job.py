"""A real job across two factory sites: edge1 behind site-a's broker, edge2 behind site-b's, the aggregator
on the cloud broker; every message between them crosses a bridge over TLS (issue 13, "Provisioning for
sites"). The job succeeds, both edges end with the aggregator's model, no broker drops or denies anything,
and no edge ever connects to the cloud broker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flctl import cli as flctl_cli
from schemas import Phase
from tests.faults.conftest import SERVICE_FLAGS, checkpoint_tensors
from tests.helpers.nodes import job_documents, lay_out_nodes
from tests.helpers.sites import CLOUD, SiteBed
from tests.helpers.status import wait_no_processes_under

pytestmark = [pytest.mark.sites, pytest.mark.timeout(240)]

JOB = "sites-job"
EDGES = ("edge1", "edge2")
EXIT_ROUND = 2


def test_job_across_two_sites_completes_with_equal_models(tmp_path: Path, site_bed: SiteBed) -> None:
    lay_out_nodes(
        tmp_path,
        {e: [f"sample-{e}-{i},{i % 2}" for i in range(20 + 4 * n)] for n, e in enumerate(EDGES)},
        script="train_keras.py",
    )
    spec = tmp_path / "job.yaml"
    spec.write_text(
        job_documents(
            [JOB],
            EDGES,
            model="site-model",
            script="train_keras.py",
            edge_parameters={"features": 8, "hidden": 16},
            aggregator_parameters={"exit_round": EXIT_ROUND},
        )
    )
    cluster = site_bed.cluster
    cluster.start_node("cloud0", "aggregator", extra_args=SERVICE_FLAGS["aggregator"])
    for edge in EDGES:
        cluster.start_node(edge, "edge", extra_args=SERVICE_FLAGS["edge"])
    assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) == 0
    status = cluster.wait_for_job(JOB, timeout=180)

    assert status.phase is Phase.SUCCEEDED, status.message
    assert [r.round for r in status.rounds] == list(range(1, EXIT_ROUND + 1))
    for record in status.rounds:
        assert sorted(record.participants) == list(EDGES), record
    # Both edges hold the same final model, and it is the aggregator's.
    digests = {w.node: w.model_digest for w in status.workers if w.role == "training"}
    assert digests["edge1"] and digests["edge1"] == digests["edge2"], digests
    assert status.model_path is not None
    saved = json.loads(Path(status.model_path).with_suffix(".json").read_text())
    assert saved["digest"] == digests["edge1"], (saved, digests)
    first = checkpoint_tensors(tmp_path / "edge1" / "model")
    second = checkpoint_tensors(tmp_path / "edge2" / "model")
    assert first.keys() == second.keys() and len(first) >= 4
    for key, value in first.items():
        np.testing.assert_array_equal(value, second[key], err_msg=key)

    # Each edge talked to its own site broker only; nothing was denied or dropped anywhere.
    logs = site_bed.broker_logs()
    assert " as edge1 " in logs["site-a"] and " as edge2 " in logs["site-b"]
    assert " as edge1 " not in logs[CLOUD] and " as edge2 " not in logs[CLOUD]
    assert " as edge2 " not in logs["site-a"] and " as edge1 " not in logs["site-b"]
    for where, log in logs.items():
        assert "Denied" not in log, (where, [line for line in log.splitlines() if "Denied" in line][:5])
    site_bed.assert_nothing_dropped()

    cluster.stop()
    for node in cluster.nodes.values():
        assert node.proc.returncode == 0, f"{node.name} exited with {node.proc.returncode}:\n{node.log_tail()}"
    wait_no_processes_under(tmp_path, timeout=20.0)

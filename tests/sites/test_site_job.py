"""A real job across two factory sites: edge1 behind site-a's broker, edge2 behind site-b's, the aggregator
on the cloud broker; every message between them crosses a bridge over TLS (issue 13, "Provisioning for
sites"). The job succeeds, both edges end with the aggregator's model, no broker drops or denies anything,
and no edge ever connects to the cloud broker. Secure aggregation's messages cross the bridges too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flctl import cli as flctl_cli
from schemas import JobStatus, Phase
from tests.faults.conftest import SERVICE_FLAGS, checkpoint_tensors
from tests.helpers.nodes import job_documents, lay_out_nodes
from tests.helpers.sites import SiteBed
from tests.helpers.status import wait_no_processes_under
from tests.sites.conftest import SiteBedFactory

pytestmark = [pytest.mark.sites, pytest.mark.timeout(240)]

JOB = "sites-job"
EDGES = ("edge1", "edge2")
EXIT_ROUND = 2


def _run_job(
    tmp_path: Path,
    bed: SiteBed,
    edges: tuple[str, ...],
    *,
    script: str,
    edge_parameters: dict[str, object],
    aggregator_parameters: dict[str, object],
) -> JobStatus:
    """Lay out the nodes, start the aggregator on the cloud and each edge on its site, create the job and
    wait for it; the job's status once finished."""
    lay_out_nodes(
        tmp_path,
        {e: [f"sample-{e}-{i},{i % 2}" for i in range(20 + 4 * n)] for n, e in enumerate(edges)},
        script=script,
    )
    spec = tmp_path / "job.yaml"
    spec.write_text(
        job_documents(
            [JOB],
            edges,
            model="site-model",
            script=script,
            edge_parameters=edge_parameters,
            aggregator_parameters={"exit_round": EXIT_ROUND, **aggregator_parameters},
        )
    )
    cluster = bed.cluster
    cluster.start_node("cloud0", "aggregator", extra_args=SERVICE_FLAGS["aggregator"])
    for edge in edges:
        cluster.start_node(edge, "edge", extra_args=SERVICE_FLAGS["edge"])
    assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) == 0
    status = cluster.wait_for_job(JOB, timeout=180)
    assert status.phase is Phase.SUCCEEDED, status.message
    assert [r.round for r in status.rounds] == list(range(1, EXIT_ROUND + 1))
    for record in status.rounds:
        assert sorted(record.participants) == sorted(edges), record
    return status


def _assert_clean_end(tmp_path: Path, bed: SiteBed) -> None:
    """Each edge talked to its own site broker only; nothing was denied or dropped anywhere; every service
    exits 0 and leaves no process behind."""
    logs = bed.broker_logs()
    for site, edges in bed.sites.items():
        for edge in edges:
            assert f" as {edge} " in logs[site], (site, edge)
            assert all(f" as {edge} " not in log for where, log in logs.items() if where != site), edge
    for where, log in logs.items():
        assert "Denied" not in log, (where, [line for line in log.splitlines() if "Denied" in line][:5])
    bed.assert_nothing_dropped()
    bed.cluster.stop()
    for node in bed.cluster.nodes.values():
        assert node.proc.returncode == 0, f"{node.name} exited with {node.proc.returncode}:\n{node.log_tail()}"
    wait_no_processes_under(tmp_path, timeout=20.0)


def test_job_across_two_sites_completes_with_equal_models(tmp_path: Path, site_bed: SiteBed) -> None:
    status = _run_job(
        tmp_path,
        site_bed,
        EDGES,
        script="train_keras.py",
        edge_parameters={"features": 8, "hidden": 16},
        aggregator_parameters={},
    )
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
    _assert_clean_end(tmp_path, site_bed)


def test_secure_aggregation_across_sites(tmp_path: Path, site_bed_factory: SiteBedFactory) -> None:
    """Secure aggregation's keys, bundles, states and unmask answers cross the bridges (two edges behind
    site-a, one behind site-b: bundles go from one site to the other through the cloud)."""
    bed = site_bed_factory({"site-a": ["edge1", "edge2"], "site-b": ["edge3"]})
    status = _run_job(
        tmp_path,
        bed,
        ("edge1", "edge2", "edge3"),
        script="train_numpy.py",
        edge_parameters={"features": 8, "hidden": 4},
        aggregator_parameters={"secure_aggregation": "true"},
    )
    digests = {w.node: w.model_digest for w in status.workers if w.role == "training"}
    assert len(set(digests.values())) == 1 and None not in digests.values(), digests
    _assert_clean_end(tmp_path, bed)

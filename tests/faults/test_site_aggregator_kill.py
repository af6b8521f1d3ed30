"""A site aggregator killed (SIGKILL) mid-round loses nothing and counts nothing twice.

The hierarchical job of tests/integration/test_hierarchical_job.py, its edge2 held before round 2: agg-a
has stored and acknowledged edge1's round-2 update (its spool), edge2's is not trained yet. agg-a is
killed -9 and started again on the same root; then edge2 trains. The restarted agg-a folds edge1's update
from its spool (edge1 sends nothing again: its outbox was confirmed), forwards one partial per round, and
the job ends with the flat job's model; each round's record counts every edge's samples once.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import Phase, Topics
from tests.helpers.nodes import lay_out_nodes
from tests.integration.test_hierarchical_job import AGGS, EXIT_ROUND, SAMPLES, WAIT, job_yaml

pytestmark = pytest.mark.timeout(300)


def test_a_site_aggregator_killed_mid_round_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    lay_out_nodes(tmp_path, {e: [f"sample-{e}-{i},{i % 2}" for i in range(n)] for e, n in SAMPLES.items()})
    (tmp_path / "job.yaml").write_text(job_yaml(hold={"edge2": "2"}))
    with LocalCluster(tmp_path) as cluster:
        cluster.start_broker()
        local = Topics(cluster.prefix).site_local("site-a")
        cluster.start_node("cloud0", "aggregator")
        for site, agg in AGGS.items():
            cluster.start_node(agg, "aggregator", extra_args=["--site", site])
        for edge in SAMPLES:
            cluster.start_node(edge, "edge")
        with cluster.watch("kill-watch", local.ack("hier", 2, "edge1")) as acks:
            assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(tmp_path / "job.yaml")]) == 0
            ack = acks.get(timeout=WAIT)  # edge1's round-2 update is in agg-a's spool
        assert b'"accepted":true' in ack.payload
        spool = tmp_path / "agg-a" / "state" / "hier" / "spool" / "2"
        assert [p.name.split("-")[0] for p in spool.iterdir() if p.suffix == ".blob"] == ["edge1"]

        assert cluster.kill_node("agg-a") == -9
        cluster.start_node("agg-a", "aggregator", extra_args=["--site", "site-a"])
        refolded = '"worker": "edge1", "round": 2, "event": "update refolded from the spool"'
        log = tmp_path / "agg-a" / "service.log"
        deadline = time.monotonic() + 60
        while refolded not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)  # a log line has no event to await
        (tmp_path / "edge2" / "gates").mkdir()
        (tmp_path / "edge2" / "gates" / "round-2").touch()

        flat = cluster.wait_for_job("flat", timeout=WAIT)
        hier = cluster.wait_for_job("hier", timeout=WAIT)

    assert flat.phase is Phase.SUCCEEDED and hier.phase is Phase.SUCCEEDED, hier.message
    assert [r.round for r in hier.rounds] == list(range(1, EXIT_ROUND + 1))
    for record in hier.rounds:
        assert sorted(record.participants) == sorted(SAMPLES)
        assert record.total_samples == sum(SAMPLES.values()), record.round
    # edge1's round-2 update was folded once before the kill and once from the spool after it (edge1 sent
    # nothing again), and agg-a forwarded one partial per round.
    site_log = (tmp_path / "agg-a" / "service.log").read_text()
    assert site_log.count('"worker": "edge1", "round": 2, "samples": 9') == 1
    assert site_log.count(refolded) == 1
    assert site_log.count('"event": "partial aggregate sent"') == EXIT_ROUND
    with (
        np.load(tmp_path / "cloud0" / "model-flat" / "flat-model.npz") as want,
        np.load(tmp_path / "cloud0" / "model-hier" / "hier-model.npz") as got,
    ):
        for name in want.files:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)

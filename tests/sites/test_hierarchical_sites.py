"""Hierarchical rounds across bridged sites: site-a's broker (edge1, edge2 and its site aggregator agg-a) and
site-b's (edge3, agg-b) bridged over their WAN links to the cloud broker (cloud0), TLS and per-node ACLs as
`flctl site add` writes them. The same job runs flat, then hierarchical: both end with the same model; site-a's
WAN link carries about one model per round instead of two; the cloud took one partial per site per round;
no broker denied or dropped anything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from flctl import cli as flctl_cli
from schemas import JobStatus, Kind, Phase
from tests.faults.conftest import SERVICE_FLAGS
from tests.helpers.nodes import lay_out_nodes
from tests.helpers.sites import CLOUD
from tests.integration.test_hierarchical_job import AGGS, EXIT_ROUND, SAMPLES, SITES, job_yaml
from tests.sites.conftest import SiteBedFactory

pytestmark = [pytest.mark.sites, pytest.mark.timeout(300)]

FEATURES, HIDDEN = 96, 64  # a 24 KiB float32 model: the models, not the statuses, are most of the WAN traffic
MODEL_BYTES = (FEATURES * HIDDEN + HIDDEN) * 4
WAIT = 150.0


def test_hierarchical_job_across_bridged_sites(tmp_path: Path, site_bed_factory: SiteBedFactory) -> None:
    lay_out_nodes(tmp_path, {e: [f"sample-{e}-{i},{i % 2}" for i in range(n)] for e, n in SAMPLES.items()})
    bed = site_bed_factory(
        sites={site: list(edges) for site, edges in SITES.items()},
        site_aggregators={site: [agg] for site, agg in AGGS.items()},
    )
    cluster = bed.cluster
    cluster.start_node("cloud0", "aggregator", extra_args=SERVICE_FLAGS["aggregator"])
    for agg in AGGS.values():  # its node.yaml says `site:` and role aggregator: a site aggregator
        cluster.start_node(agg, "aggregator", extra_args=SERVICE_FLAGS["aggregator"])
    for edge in SAMPLES:
        cluster.start_node(edge, "edge", extra_args=SERVICE_FLAGS["edge"])

    wan_bytes: dict[str, int] = {}
    statuses = {}
    for job in ("flat", "hier"):
        before = bed.wan["site-a"].upstream_bytes
        spec = tmp_path / f"{job}.yaml"
        spec.write_text(job_yaml(jobs=(job,), features=FEATURES, hidden=HIDDEN))
        assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) == 0
        statuses[job] = cluster.wait_for_job(job, timeout=WAIT)
        assert statuses[job].phase is Phase.SUCCEEDED, statuses[job].message
        wan_bytes[job] = bed.wan["site-a"].upstream_bytes - before

    with (
        np.load(tmp_path / "cloud0" / "model-flat" / "flat-model.npz") as want,
        np.load(tmp_path / "cloud0" / "model-hier" / "hier-model.npz") as got,
    ):
        for name in want.files:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)

    hier = statuses["hier"]
    accepted = [e.message for e in hier.events if e.reason == "PartialAccepted"]
    for r in range(1, EXIT_ROUND + 1):
        assert sum(f"for round {r} " in m for m in accepted) == len(AGGS), accepted
    for record in hier.rounds:
        assert sorted(record.participants) == sorted(SAMPLES) and record.total_samples == sum(SAMPLES.values())

    # Site-a's WAN link (site -> cloud): flat, two edges' updates a round; hierarchical, one partial a round.
    # Both also carry round 0's init if the plan's init source is at site-a (one, or two with a fallback init
    # from the other edge), and the same statuses. So hierarchical saves one model a round, give or take one init.
    saved = (wan_bytes["flat"] - wan_bytes["hier"]) / MODEL_BYTES
    print(f"site-a WAN bytes up: flat {wan_bytes['flat']}, hierarchical {wan_bytes['hier']}, model {MODEL_BYTES}")
    assert EXIT_ROUND - 1.3 <= saved <= EXIT_ROUND + 1.3, (saved, wan_bytes)

    logs = bed.broker_logs()
    for where, log in logs.items():
        assert "Denied" not in log, (where, [line for line in log.splitlines() if "Denied" in line][:5])
    assert " as agg-a " in logs["site-a"] and " as agg-a " not in logs[CLOUD]
    bed.assert_nothing_dropped()


def test_a_partial_waits_out_a_wan_cut_on_the_site_and_counts_once(
    tmp_path: Path, site_bed_factory: SiteBedFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Site-a's WAN link is cut while its round-2 partial is being sent: the partial waits in the site
    broker's bridge queue (and agg-a's outbox), the cloud's round 2 waits for the site, and once the link
    is back the round closes with the partial counted once; no broker drops anything."""
    lay_out_nodes(tmp_path, {e: [f"sample-{e}-{i},{i % 2}" for i in range(n)] for e, n in SAMPLES.items()})
    bed = site_bed_factory(
        sites={site: list(edges) for site, edges in SITES.items()},
        site_aggregators={site: [agg] for site, agg in AGGS.items()},
    )
    cluster = bed.cluster
    cluster.start_node("cloud0", "aggregator", extra_args=SERVICE_FLAGS["aggregator"])
    for agg in AGGS.values():
        cluster.start_node(agg, "aggregator", extra_args=SERVICE_FLAGS["aggregator"])
    for edge in SAMPLES:
        cluster.start_node(edge, "edge", extra_args=SERVICE_FLAGS["edge"])
    spec = tmp_path / "hier.yaml"
    spec.write_text(job_yaml(hold={"edge2": "2"}, jobs=("hier",)))
    status_topic = cluster.topics.status(Kind.JOB, "hier")
    with cluster.watch("cut-watch", status_topic) as inbox:
        assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) == 0
        deadline = time.monotonic() + WAIT
        while True:  # until round 1 closed: edge2 now waits at its gate before round 2
            msg = inbox.get(timeout=max(0.1, deadline - time.monotonic()))
            # (the `monitor` identity's session may hold other subscriptions: only the job's status counts)
            if msg.topic == status_topic and msg.payload and JobStatus.model_validate_json(msg.payload).rounds:
                break
    bed.wan["site-a"].cut()
    bed.wait_bridge("site-a", up=False)
    (tmp_path / "edge2" / "gates").mkdir()
    (tmp_path / "edge2" / "gates" / "round-2").touch()
    sent = '"round": 2, "samples": 30, "edges": ["edge1", "edge2"], "event": "partial aggregate sent"'
    log = tmp_path / "agg-a" / "service.log"
    deadline = time.monotonic() + 60
    while sent not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)  # a log line has no event to await
    # The partial is on the site side of the cut: the cloud's round 2 still waits for site-a's edges.
    capsys.readouterr()
    assert flctl_cli.main([*cluster.flctl_args(), "--timeout", "5", "get", "fl", "hier", "-o", "json"]) == 0
    out = capsys.readouterr().out
    held, _ = json.JSONDecoder().raw_decode(out[out.find("{\n") :])
    assert len(held["status"]["rounds"]) == 1, held["status"]
    assert {"edge1", "edge2"} <= set(held["status"]["waitingFor"]), held["status"]

    bed.wan["site-a"].restore()
    bed.wait_bridge("site-a", up=True)
    status = cluster.wait_for_job("hier", timeout=WAIT)

    assert status.phase is Phase.SUCCEEDED, status.message
    # Counted once: every round's record has every edge and exactly their samples (a partial counted twice
    # would add its site's samples again). The status keeps only the newest events (schemas.MAX_EVENTS, and
    # the site's unreachable/reachable events are among them), so they can show no more than one partial
    # per site and round, and both of the last round's.
    for record in status.rounds:
        assert record.total_samples == sum(SAMPLES.values()) and record.missing == [], record
        assert sorted(record.participants) == sorted(SAMPLES), record
    accepted = [e.message for e in status.events if e.reason == "PartialAccepted"]
    for r in range(1, EXIT_ROUND + 1):
        for site in AGGS:
            count = sum(m.startswith(f"partial aggregate of site {site} ") and f"for round {r} " in m for m in accepted)
            assert count <= 1 and (count == 1 or r < EXIT_ROUND), accepted
    bed.assert_nothing_dropped()

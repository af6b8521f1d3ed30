"""Hierarchical rounds on one real Mosquitto: the cloud aggregator, two site aggregators
(`fl-cloud-aggregator --site`) and three edges (two at site-a, one at site-b) run a hierarchical job and,
beside it on the same edges and data, the same job flat. The two final models are equal to float tolerance;
the hierarchical job's update topics (what a site bridge carries to the cloud) hold one partial per site
per round, its edges' updates stay on the sites' own topics, and the round records list every edge.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import Channel, Phase, TopicError, Topics, TransferManifest
from tests.helpers.capture import Capture
from tests.helpers.nodes import lay_out_nodes

SITES = {"site-a": ("edge1", "edge2"), "site-b": ("edge3",)}
AGGS = {"site-a": "agg-a", "site-b": "agg-b"}
SAMPLES = {"edge1": 9, "edge2": 21, "edge3": 14}  # unequal: a mean of site means would differ
EXIT_ROUND = 3
WAIT = 150.0

pytestmark = pytest.mark.timeout(300)


def job_yaml(
    hold: dict[str, str] | None = None, *, jobs: tuple[str, ...] = ("flat", "hier"), features: int = 6, hidden: int = 3
) -> str:
    """Datasets, a Model per job, the flat job and the hierarchical one (`hold`: edge -> the rounds its
    hierarchical job's script waits for a gate file before training, tests/faults/scripts/_common.py;
    `features` x `hidden`: the model's size)."""

    def listed(pairs: dict[str, object]) -> str:
        return "[" + ", ".join(f"{{key: {k}, value: '{v}'}}" for k, v in pairs.items()) + "]"

    edges = [(site, edge) for site, members in SITES.items() for edge in members]
    docs = [
        "apiVersion: sedna.io/v1alpha1\nkind: Dataset\n"
        f"metadata: {{name: {edge}-data}}\nspec: {{url: /data/train.txt, format: txt, nodeName: {edge}}}\n"
        for _, edge in edges
    ]
    for job in jobs:
        docs.append(
            f"apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {{name: {job}-model}}\n"
            f"spec: {{url: /model-{job}, format: ckpt}}\n"
        )
        aggregator: dict[str, object] = {"exit_round": EXIT_ROUND}
        if job == "hier":
            aggregator |= {"hierarchical": "true", "site_aggregators": ",".join(f"{s}={a}" for s, a in AGGS.items())}
        workers = "".join(
            f"    - nodeName: {edge}\n      dataset: {{name: {edge}-data}}\n"
            "      workerSpec: {scriptDir: /code, scriptBootFile: train_numpy.py, parameters: "
            + listed(
                {"features": features, "hidden": hidden, **(_hier_worker(site, edge, hold) if job == "hier" else {})}
            )
            + "}\n"
            for site, edge in edges
        )
        docs.append(
            f"apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\nmetadata: {{name: {job}}}\nspec:\n"
            f"  aggregationWorker:\n    model: {{name: {job}-model}}\n    nodeName: cloud0\n"
            f"    workerSpec: {{scriptDir: /code, scriptBootFile: aggregate.py, parameters: {listed(aggregator)}}}\n"
            f"  trainingWorkers:\n{workers}"
        )
    return "---\n".join(docs)


def _hier_worker(site: str, edge: str, hold: dict[str, str] | None) -> dict[str, object]:
    return {"site": site, **({"hold_rounds": hold[edge]} if hold and edge in hold else {})}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    lay_out_nodes(tmp_path, {e: [f"sample-{e}-{i},{i % 2}" for i in range(n)] for e, n in SAMPLES.items()})
    (tmp_path / "job.yaml").write_text(job_yaml())
    with LocalCluster(tmp_path) as running:
        running.start_broker()
        yield running


def update_senders(messages: list[tuple[str, bytes]], topics: Topics, job: str) -> dict[int, list[tuple[str, int]]]:
    """(sender, blob bytes) of each update manifest of `job` on the prefix's own update topics, per round."""
    out: dict[int, list[tuple[str, int]]] = {}
    for topic, payload in messages:
        try:
            parsed = topics.parse(topic)
        except TopicError:
            continue
        if parsed.channel is Channel.UPDATE_MANIFEST and parsed.job == job and payload and parsed.round:
            manifest = TransferManifest.model_validate_json(payload)
            if (manifest.sender, manifest.total_bytes) not in out.get(parsed.round, []):
                out.setdefault(parsed.round, []).append((manifest.sender, manifest.total_bytes))
    return out


def test_a_hierarchical_job_ends_with_the_flat_jobs_model_and_one_partial_per_site_per_round(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    topics = Topics(cluster.prefix)
    with Capture(cluster.settings("capture"), topics.everything()) as capture:
        cluster.start_node("cloud0", "aggregator")
        for site, agg in AGGS.items():
            cluster.start_node(agg, "aggregator", extra_args=["--site", site])
        for edge in SAMPLES:
            cluster.start_node(edge, "edge")
        assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(tmp_path / "job.yaml")]) == 0
        flat = cluster.wait_for_job("flat", timeout=WAIT)
        hier = cluster.wait_for_job("hier", timeout=WAIT)

    assert flat.phase is Phase.SUCCEEDED, flat.message
    assert hier.phase is Phase.SUCCEEDED, hier.message
    with (
        np.load(tmp_path / "cloud0" / "model-flat" / "flat-model.npz") as want,
        np.load(tmp_path / "cloud0" / "model-hier" / "hier-model.npz") as got,
    ):
        assert sorted(got.files) == sorted(want.files)
        for name in want.files:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
        assert not np.allclose(got[want.files[0]], 0)  # trained, not a blank model

    flat_updates = update_senders(capture.messages, topics, "flat")
    hier_updates = update_senders(capture.messages, topics, "hier")
    for r in range(1, EXIT_ROUND + 1):
        assert sorted(s for s, _ in flat_updates[r]) == sorted(SAMPLES)  # one model per edge per round
        assert sorted(s for s, _ in hier_updates[r]) == sorted(AGGS.values())  # one model per site per round
        # What crosses to the cloud: 2 models a round instead of 3, each about one update's size.
        assert sum(b for _, b in hier_updates[r]) < sum(b for _, b in flat_updates[r])
    local = [t for t, _ in capture.messages if t.startswith(f"{cluster.prefix}/sites/")]
    assert any("/federatedlearningjobs/hier/rounds/1/updates/edge3/" in t for t in local)
    assert any("/federatedlearningjobs/hier/rounds/1/acks/edge1" in t for t in local)

    cluster.stop()  # a site aggregator stops cleanly on SIGTERM, as the other services do
    for agg in AGGS.values():
        node = cluster.nodes[agg]
        assert node.proc.returncode == 0, f"{agg} exited with {node.proc.returncode}:\n{node.log_tail()}"

    record = hier.rounds[-1]
    assert sorted(record.participants) == sorted(SAMPLES) and record.total_samples == sum(SAMPLES.values())
    assert any(e.reason == "PartialAccepted" and "site-b" in e.message for e in hier.events)

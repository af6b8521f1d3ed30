"""Model versions across real processes (issue 9): a real Mosquitto, a real aggregator and two real edges.

The same job is run three times (create, finish, delete, create again), with the numpy training script (no
TensorFlow: this is about the model writers). Every run is a version on every node; the url reads as the
latest; the nodes report what they hold on their retained node status; `flctl get models -o wide` shows
it; and with ``FL_MODEL_KEEP_VERSIONS=2`` in the services' environment the third run prunes the first.
"""

from __future__ import annotations

import json
import queue
import re
import time
from pathlib import Path

import pytest

from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import JobStatus, NodeStatus, Phase, Topics
from tests.helpers.nodes import job_documents, lay_out_nodes
from tests.helpers.status import JobWatcher, wait_no_processes_under

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
EDGES = ("edge1", "edge2")
NODES = ("cloud0", *EDGES)
JOB = "versions-job"
MODEL = "versioned-model"
WAIT = 60.0


def spec() -> str:
    return job_documents(
        [JOB], EDGES, model=MODEL, edge_parameters={"features": 8}, aggregator_parameters={"exit_round": 1}
    )


def prepare(tmp_path: Path) -> None:
    lay_out_nodes(tmp_path, {e: [f"s-{e}-{i},{i % 2}" for i in range(8)] for e in EDGES})
    (tmp_path / "jobs.yaml").write_text(spec())


def flctl(cluster: LocalCluster, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    code = flctl_cli.main([*cluster.flctl_args(), *argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def run_once(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], watcher: JobWatcher, before: set[str]
) -> JobStatus:
    """Create the job, wait until a run other than the ones in `before` has finished, delete it."""
    flctl(cluster, capsys, "create", "-f", str(cluster.workdir / "jobs.yaml"))
    watcher.wait(
        lambda w: w.status is not None and w.status.uid not in before and w.status.phase.finished,
        WAIT,
        "a new run finished",
    )
    status = watcher.status
    assert status is not None and status.uid is not None
    assert status.phase is Phase.SUCCEEDED, watcher.describe()
    flctl(cluster, capsys, "delete", "fl", JOB)
    flctl(cluster, capsys, "wait", "fl", JOB, "--for=delete", "--timeout=30s")
    return status


def wait_node_versions(cluster: LocalCluster, versions: list[str]) -> dict[str, NodeStatus]:
    """The node statuses once every node reports exactly `versions` (newest first) under /model."""
    seen: dict[str, NodeStatus] = {}

    def listed(status: NodeStatus) -> list[str]:
        held = [m for m in status.models or () if m.url == "/model"]
        return [v.version for v in held[0].versions] if held else []

    deadline = time.monotonic() + WAIT
    with cluster.watch("versions-watch", cluster.topics.all_node_statuses()) as inbox:
        while not all(n in seen and listed(seen[n]) == versions for n in NODES):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"nodes do not report {versions}: {[(n, listed(s)) for n, s in seen.items()]}"
            try:
                msg = inbox.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if msg.payload:
                status = NodeStatus.model_validate_json(msg.payload)
                seen[status.node] = status
    return seen


def test_each_run_is_a_version_the_url_is_the_latest_and_nodes_report_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare(tmp_path)
    topics = Topics()
    with LocalCluster(tmp_path, env={"FL_MODEL_KEEP_VERSIONS": "2"}) as cluster:
        cluster.start_broker()
        with JobWatcher(cluster.settings("watch-versions"), topics, JOB) as watcher:
            cluster.start_node("cloud0", "aggregator")
            for e in EDGES:
                cluster.start_node(e, "edge")
            first = run_once(cluster, capsys, watcher, set())
            second = run_once(cluster, capsys, watcher, {str(first.uid)})
            v1, v2 = (f"{JOB}-{str(s.uid)[:8]}-r1" for s in (first, second))

            # Two runs, two versions on every node; the url and its latest pointer are the second.
            for e in EDGES:
                model = tmp_path / e / "model"
                assert sorted(p.name for p in (model / "versions").iterdir()) == sorted([v1, v2]), e
                assert json.loads((model / "model.json").read_text())["uid"] == second.uid
                assert (model / "latest").resolve() == model / "versions" / v2
                [worker] = [w for w in second.workers if w.node == e and w.role == "training"]
                assert worker.model_path == f"/model/versions/{v2}/model.ckpt.npz"
                meta = json.loads((model / "versions" / v1 / "model.json").read_text())
                assert (meta["job"], meta["uid"], meta["round"]) == (JOB, first.uid, 1)
                assert isinstance(meta["metrics"], dict) and meta["digest"]
            cloud = tmp_path / "cloud0" / "model"
            assert second.model_path == str(cloud / "versions" / v2 / f"{MODEL}.npz")
            assert json.loads((cloud / f"{MODEL}.json").read_text())["version"] == v2

            statuses = wait_node_versions(cluster, [v2, v1])
            for node, status in statuses.items():
                [held] = [m for m in status.models or () if m.url == "/model"]
                assert (held.latest, held.count) == (v2, 2), node
                assert [v.uid for v in held.versions] == [second.uid, first.uid]

            wide = flctl(cluster, capsys, "get", "models", "-o", "wide")
            rows = [re.split(r" {3,}", line) for line in wide.splitlines()]
            assert rows[0] == ["NAME", "URL", "FORMAT", "VALID", "AGE", "VERSIONS", "LATEST", "MESSAGE"]
            assert rows[1][:4] == [MODEL, "/model", "ckpt", "True"] and rows[1][5:7] == ["2", v2]
            assert rows[3] == ["MODEL", "VERSION", "JOB", "UID", "ROUND", "DIGEST", "NODES"]
            assert [r[:5] + r[6:] for r in rows[4:]] == [
                [MODEL, v2, JOB, str(second.uid)[:8], "1", "cloud0*,edge1*,edge2*"],
                [MODEL, v1, JOB, str(first.uid)[:8], "1", "cloud0,edge1,edge2"],
            ]

            # A third run: FL_MODEL_KEEP_VERSIONS=2 keeps the two newest on every node.
            third = run_once(cluster, capsys, watcher, {str(first.uid), str(second.uid)})
            v3 = f"{JOB}-{str(third.uid)[:8]}-r1"
            wait_node_versions(cluster, [v3, v2])
            for node in NODES:
                assert sorted(p.name for p in (tmp_path / node / "model" / "versions").iterdir()) == sorted([v2, v3])
    wait_no_processes_under(tmp_path, timeout=20.0)

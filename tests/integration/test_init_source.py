"""Issue 12 end to end: one designated edge uploads the initial weights. A real Mosquitto, the real
`fl-cloud-aggregator` and `fl-edge-trainer` processes (LocalCluster) running the numpy training script.

- every edge running: the plan names edge1 (the first training worker, online); only edge1 uploads an init
  (counted in the edges' own ledgers and in the aggregator's acks), and the InitialModel event names it;
- edge1's node is known online (its retained presence) but never runs: edge2 waits the job's small
  ``init_wait``, uploads its own init as the fallback, and the job still succeeds from it.

Nothing sleeps: every wait is on the job's status, the workers' statuses or the event stream, bounded.
"""

from __future__ import annotations

import json
import queue
from pathlib import Path

import pytest

from broker import Session
from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import LEDGER_FILE, NodeState, NodeStatus, Phase, Topics
from tests.helpers.nodes import job_documents, lay_out_nodes
from tests.helpers.status import JobWatcher

pytestmark = pytest.mark.timeout(240)

JOB = "one-init"
EDGES = ("edge1", "edge2")
SAMPLES = {"edge1": 12, "edge2": 16}
WAIT = 90.0
TOPICS = Topics()


def job_yaml(**aggregator: object) -> str:
    return job_documents(
        [JOB],
        EDGES,
        model="one-init-model",
        edge_parameters={"features": 4, "hidden": 3},
        aggregator_parameters={"participants_count": 2, **aggregator},
    )


def lay_out(root: Path, **aggregator: object) -> None:
    lay_out_nodes(root, {edge: [f"s-{edge}-{i},{i % 2}" for i in range(SAMPLES[edge])] for edge in EDGES})
    (root / "job.yaml").write_text(job_yaml(**aggregator))


def inits_sent(root: Path, edge: str) -> set[str]:
    """The init transfers `edge` published for the job (its ledger's round-0 update manifests)."""
    path = root / edge / "state" / JOB / LEDGER_FILE
    if not path.exists():
        return set()
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        line["transfer"]
        for line in lines
        if line["dir"] == "out" and line["class"] == "update-manifest" and line["round"] == 0
    }


def test_only_the_init_source_uploads_its_initial_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay_out(tmp_path, exit_round=2)
    with LocalCluster(tmp_path) as cluster:
        cluster.start_broker()
        with JobWatcher(cluster.settings("watch-init"), TOPICS, JOB) as watcher:
            cluster.start_node("cloud0", "aggregator")
            for edge in EDGES:
                cluster.start_node(edge, "edge")
            for edge in EDGES:  # both known online before the job starts: the plan names the first
                watcher.wait_presence(edge, NodeState.ONLINE, WAIT)
            assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(tmp_path / "job.yaml")]) == 0
            status = watcher.wait_finished(WAIT)
            waiting = [w.message for w in watcher.worker_history if w.node == "edge2" and w.round == 0]
            init_acks = {(a.node, a.transfer) for a in watcher.acks if a.round == 0 and a.accepted}
            events = list(watcher.events)
        capsys.readouterr()
    assert status.phase is Phase.SUCCEEDED, watcher.describe()
    [initial] = [e for e in events if e.reason == "InitialModel"]
    assert initial.node == "edge1" and "the round-0 model comes from edge1" in initial.message
    # Waiting for edge1's round-0 model, or (a script slower to start) holding it already; never uploading.
    assert {"waiting for the round-0 model from edge1", "waiting for the newest global model"} & set(waiting), waiting
    assert not any("uploading the initial weights" in m for m in waiting), waiting
    assert len(inits_sent(tmp_path, "edge1")) == 1
    assert inits_sent(tmp_path, "edge2") == set()  # edge2 sent no init at all
    assert [node for node, _ in init_acks] == ["edge1"]
    assert [sorted(r.participants) for r in status.rounds] == [list(EDGES)] * 2


def test_the_job_succeeds_from_a_fallback_init_when_the_init_source_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """edge1's presence says online (a node that stopped before the broker noticed), so the plan names it,
    but its service never runs: edge2 uploads its init after init_wait; the rounds close at their deadline
    with edge2 alone (min_participants 1)."""
    lay_out(tmp_path, exit_round=2, init_wait=1.5, round_deadline=3, min_participants=1)
    with LocalCluster(tmp_path) as cluster:
        cluster.start_broker()
        ghost = Session(cluster.settings("ghost"), inbox=queue.Queue())
        ghost.start()
        try:
            assert ghost.wait_connected(10.0)
            online = NodeStatus(node="edge1", role="edge", state=NodeState.ONLINE).to_json()
            ghost.publish(TOPICS.node_status("edge1"), online, qos=1, retain=True).wait(10.0)
            with JobWatcher(cluster.settings("watch-init"), TOPICS, JOB) as watcher:
                watcher.wait_presence("edge1", NodeState.ONLINE, WAIT)
                cluster.start_node("cloud0", "aggregator")
                cluster.start_node("edge2", "edge")
                watcher.wait_presence("edge2", NodeState.ONLINE, WAIT)
                assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(tmp_path / "job.yaml")]) == 0
                status = watcher.wait_finished(WAIT)
                messages = [w.message for w in watcher.worker_history if w.node == "edge2" and w.round == 0]
                events = list(watcher.events)
        finally:
            ghost.stop(timeout=2.0)
        capsys.readouterr()
    assert status.phase is Phase.SUCCEEDED, watcher.describe()
    assert "waiting for the round-0 model from edge1" in messages, messages
    assert any("no round-0 model from edge1 within 1.5 s" in m for m in messages), messages
    [initial] = [e for e in events if e.reason == "InitialModel"]
    assert initial.node == "edge2"
    assert len(inits_sent(tmp_path, "edge2")) == 1
    assert [r.participants for r in status.rounds] == [["edge2"]] * 2

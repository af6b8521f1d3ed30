"""`flctl logs` and `flctl audit` across a provisioned broker (TLS, passwords, ACLs), on a small real job.

Real Mosquitto from `flctl broker init`, real service processes, the fault tests' numpy scripts (fast),
flctl in process as the admin. A capture identity of the aggregator role (it may read the whole tree)
records, broker side, everything published on each edge's topics: the edges' own ledgers must account
for exactly that. Then a publication on edge1's update topic that edge1 never made is injected, and the
audit must flag it."""

from __future__ import annotations

import hashlib
import queue
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from broker import Inbound, MqttSettings, PublishError, Session, load_node_config
from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import LEDGER_FILE, Channel, LedgerEntry, NodeReply, NodeRequest, Phase, Topics
from tests.faults.conftest import job_yaml, samples_of
from tests.helpers.capture import Capture
from tests.helpers.mqtt import take, take_all, wait_until
from tests.helpers.nodes import lay_out_nodes
from tests.helpers.status import JobWatcher

pytestmark = [pytest.mark.security, pytest.mark.e2e, pytest.mark.timeout(300)]

JOB = "faults"  # the name tests.faults.conftest.job_yaml gives the job
EDGES = ["edge1", "edge2"]
CAPTURE = "cloud-capture"  # provisioned with the aggregator role (names starting with "cloud")


def _lay_out(tmp: Path, edge_params: dict[str, dict[str, str]] | None = None) -> Path:
    lay_out_nodes(
        tmp,
        {edge: [f"sample-{edge}-{i},{i % 2}" for i in range(samples_of(index))] for index, edge in enumerate(EDGES)},
    )
    spec = tmp / "job.yaml"
    params = {edge: {"features": "8", "hidden": "16", **(edge_params or {}).get(edge, {})} for edge in EDGES}
    spec.write_text(job_yaml(EDGES, exit_round=2, script="train_numpy.py", agg_params={}, worker_params=params))
    return spec


def _flctl(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], *argv: str, as_: str = "admin"
) -> tuple[int, str, str]:
    args = cluster.flctl_args()
    if as_ != "admin":
        args[args.index("--config") + 1] = str(cluster.node_config(as_))
    code = flctl_cli.main([*args, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _edge_topics(topics: Topics, topic: str, edge: str, payload: bytes) -> bool:
    """What `edge` published for the job: its statuses and updates, and its answers about the job."""
    parsed = topics.parse(topic)
    if parsed.channel is Channel.NODE_REPLY:
        return parsed.node == edge and NodeReply.model_validate_json(payload).job == JOB
    mine = (Channel.WORKER_STATUS, Channel.UPDATE_MANIFEST, Channel.UPDATE_CHUNK)
    return parsed.channel in mine and parsed.node == edge


def _writable_by(topics: Topics, topic: str, edge: str) -> bool:
    parsed = topics.parse(topic)
    return parsed.node == edge or (parsed.channel is Channel.SYNC and parsed.name == edge)


def _node_ledger(tmp: Path, node: str) -> list[LedgerEntry]:
    path = tmp / node / "state" / LEDGER_FILE
    return [LedgerEntry.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def _account(audit_output: str) -> list[str]:
    """The audit's verdicts and per-round rows (not the count of replies, which grows with every request)."""
    keep = ("edge", "  0", "  1", "  2", "  total", "  the aggregator received")
    return [line for line in audit_output.splitlines() if line.startswith(keep)]


def _ledger(tmp: Path, node: str) -> list[LedgerEntry]:
    path = tmp / node / "state" / JOB / LEDGER_FILE
    return [LedgerEntry.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def test_logs_and_audit_over_a_provisioned_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _lay_out(tmp_path)
    topics = Topics()
    with LocalCluster(tmp_path, secure=True, nodes=["cloud0", *EDGES, CAPTURE], viewers=["viewer"]) as cluster:
        cluster.start_broker()
        # Every topic the ACL lets an edge write (its updates, worker and node status, replies, sync topic).
        writable = [
            flt
            for edge in EDGES
            for flt in (
                topics.updates_of(edge),
                topics.worker_statuses_of(edge),
                topics.node_status(edge),
                topics.replies_of(edge),
                topics.client_tree(edge),
            )
        ]
        capture = Capture(cluster.settings(CAPTURE), *writable)
        with capture:
            cluster.start_node("cloud0", "aggregator")
            for edge in EDGES:
                cluster.start_node(edge, "edge")
            assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) == 0
            status = cluster.wait_for_job(JOB, timeout=180)
            assert status.phase is Phase.SUCCEEDED, status.message
            capsys.readouterr()

            # logs: the tail of each worker's script log and of the aggregation script's, across the broker
            code, out, err = _flctl(cluster, capsys, "logs", "fl", JOB, "--worker", "edge1", "--tail", "5")
            assert code == 0, err
            worker_log = (tmp_path / "edge1" / "logs" / JOB / "worker.log").read_text()
            assert out.splitlines() == worker_log.splitlines()[-5:]
            assert out.strip(), "the worker log is empty"
            code, out, err = _flctl(cluster, capsys, "logs", "fl", JOB, "--aggregator", "--tail", "3")
            assert code == 0, err
            agg_log = (tmp_path / "cloud0" / "logs" / JOB / "aggregation.log").read_text()
            assert out.splitlines() == agg_log.splitlines()[-3:]
            code, out, err = _flctl(cluster, capsys, "logs", "fl", JOB, "-f", "--interval", "0.2")
            assert code == 0, err  # a finished job: -f prints everything and ends
            assert {line.split("] ", 1)[0] + "]" for line in out.splitlines()} == {"[edge1]", "[edge2]"}
            # a viewer may not ask (decision in docs/security.md): the broker refuses the request
            code, out, err = _flctl(cluster, capsys, "logs", "fl", JOB, "--worker", "edge1", as_="viewer")
            assert code == 1 and "not authorized" in err.lower(), err

            # a node answers only for jobs it runs, and only to the asker the request's topic names
            with _session(cluster, "admin", subscribe=(topics.replies_to("admin"),)) as (admin, replies):
                ask = NodeRequest(kind="logs", job="another-job", tail=5).to_json()
                admin.publish(
                    topics.node_request("edge2", "admin"),
                    ask,
                    response_topic=topics.node_reply("edge2", "admin"),
                    correlation_data=b"c1",
                ).wait(10)
                (answer,) = take(replies, 1)
                assert answer.correlation_data == b"c1" and answer.topic == topics.node_reply("edge2", "admin")
                reply = NodeReply.model_validate_json(answer.payload)
                assert (reply.ok, reply.error) == (False, "node edge2 runs no part of job another-job")
                steered = topics.node_reply("edge2", "viewer")
                admin.publish(topics.node_request("edge2", "admin"), ask, response_topic=steered).wait(10)
                wait_until(
                    lambda: "its response topic is not the asker's" in cluster.nodes["edge2"].log_tail(50),
                    20,
                    "edge2 refused the steered request",
                )
            capsys.readouterr()

            # the audit of the finished job: clean, every edge accounted for
            code, out, err = _flctl(cluster, capsys, "audit", "fl", JOB)
            assert code == 0, out + err
            for edge in EDGES:
                assert f"{edge}: only control JSON and weight blobs of the job's layout left {edge}" in out, out
        # Broker side: everything published on each edge's topics is exactly what its ledgers recorded (the
        # job's, and the node-wide one: presence, sync messages, refusals about other jobs).
        for edge in EDGES:
            captured = Counter(
                (topic, hashlib.sha256(payload).hexdigest())
                for topic, payload in capture.messages
                if _writable_by(topics, topic, edge)
            )
            ledgers = [*_ledger(tmp_path, edge), *_node_ledger(tmp_path, edge)]
            ledger = Counter((e.topic, e.sha256) for e in ledgers if e.dir == "out")
            assert captured == ledger, (edge, captured - ledger, ledger - captured)
            assert any(e.cls == "node-status" for e in _node_ledger(tmp_path, edge))
            up = sum(
                len(p)
                for t, p in capture.messages
                if _edge_topics(topics, t, edge, p) and topics.parse(t).channel is not Channel.NODE_REPLY
            )
            total = next(line for line in out.split(f"\n{edge}:")[1].splitlines() if line.strip().startswith("total"))
            assert f"{up:,}" in total, (up, total)
            kinds = {e.cls for e in _ledger(tmp_path, edge) if e.dir == "out"}
            assert kinds <= {"worker-status", "update-manifest", "update-chunk", "reply"}, kinds

        # The aggregator restarts: it still answers for the job it aggregated, from the ledger on its disk.
        service_log = tmp_path / "cloud0" / "service.log"
        readies = service_log.read_text().count('"event": "ready"')
        cluster.restart_node("cloud0", hard=False)
        wait_until(
            lambda: service_log.read_text().count('"event": "ready"') > readies, 60, "the restarted aggregator ready"
        )
        code, again, err = _flctl(cluster, capsys, "audit", "fl", JOB)
        assert code == 0, again + err
        assert _account(again) == _account(out), (out, again)  # the same rounds, messages and bytes

        # A foreign publication on edge1's update topic (an identity that may write there, not edge1's
        # service): the aggregator receives it, edge1's ledger has no such line, the audit says so.
        foreign = topics.update_chunk(JOB, 2, "edge1", "deadbeefdeadbeef", 0)
        with _session(cluster, CAPTURE) as (injector, _):
            injector.publish(foreign, (tmp_path / "edge1" / "data" / "train.txt").read_bytes()).wait(10)
        wait_until(lambda: any(e.topic == foreign for e in _ledger(tmp_path, "cloud0")), 20, "the aggregator noted it")
        code, out, err = _flctl(cluster, capsys, "audit", "fl", JOB)
        assert code == 1, out
        assert "foreign publication" in out and foreign in out, out
        assert "edge2: only control JSON" in out

        # An edge's identity cannot ask another edge, nor read another's answers (edge1's service is
        # stopped first: the broker gives one connection per identity).
        cluster.kill_node("edge1", hard=False)
        with _session(cluster, "edge1", subscribe=(topics.replies_to("admin"), "fl/nodes/+/replies/#")) as (
            edge1,
            inbox,
        ):
            request = NodeRequest(kind="logs", job=JOB, tail=5).to_json()
            with pytest.raises(PublishError) as refused:
                edge1.publish(topics.node_request("edge2", "edge1"), request).wait(10)
            assert refused.value.reason_code == 0x87
            code, out, err = _flctl(cluster, capsys, "logs", "fl", JOB, "--worker", "edge2", "--tail", "2")
            assert code == 0 and out.strip(), err
            edge1.barrier(10)  # the admin's answer from edge2 went out before: edge1 was not given it
            replies = [m.topic for m in take_all(inbox) if topics.parse(m.topic).channel is Channel.NODE_REPLY]
            assert replies == []


def test_logs_follow_a_running_worker(tmp_path: Path) -> None:
    """`flctl logs -f`, run as a user runs it (the console script, as the admin), prints what the worker's
    log gains while the job runs and ends once the job has finished."""
    spec = _lay_out(tmp_path, {"edge1": {"hold_rounds": "2"}})
    topics = Topics()
    with LocalCluster(tmp_path, secure=True, nodes=["cloud0", *EDGES, CAPTURE]) as cluster:
        cluster.start_broker()
        with JobWatcher(cluster.settings(CAPTURE), topics, JOB) as watch:
            cluster.start_node("cloud0", "aggregator")
            for edge in EDGES:
                cluster.start_node(edge, "edge")
            assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) == 0
            watch.wait_worker("edge1", "Training", 2, timeout=90)  # held before its round-2 training
            log = tmp_path / "edge1" / "logs" / JOB / "worker.log"
            out = tmp_path / "follow.out"
            flctl = Path(sys.executable).parent / "flctl"
            argv = [
                str(flctl),
                *cluster.flctl_args(),
                "logs",
                "fl",
                JOB,
                "--worker",
                "edge1",
                "-f",
                "--interval",
                "0.2",
            ]
            with out.open("wb") as sink:
                proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE)
                try:
                    wait_until(lambda: "=== " in out.read_text(), 30, "the log's start printed")
                    with log.open("a") as f:  # what the script would print while it trains
                        f.write("marker: written while flctl follows\n")
                    wait_until(lambda: "marker: written while flctl follows" in out.read_text(), 30, "the new line")
                    (tmp_path / "edge1" / "gates").mkdir(exist_ok=True)
                    (tmp_path / "edge1" / "gates" / "round-2").touch()
                    assert watch.wait_finished(120).phase is Phase.SUCCEEDED
                    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(10)
                    if proc.stderr is not None:
                        proc.stderr.close()
            followed = out.read_text()
            assert log.read_text().startswith(followed), (followed, log.read_text())
            assert followed.count("marker: written while flctl follows") == 1


@contextmanager
def _session(
    cluster: LocalCluster, identity: str, subscribe: tuple[str, ...] = ()
) -> Iterator[tuple[Session, queue.Queue[Inbound]]]:
    """A clean, short session as a provisioned identity (the broker keeps nothing of it afterwards)."""
    values = load_node_config(cluster.node_config(identity)).mqtt_values()
    values.update(host="127.0.0.1", port=cluster.port, client_id=identity, clean_start=True, session_expiry=0)
    inbox: queue.Queue[Inbound] = queue.Queue()
    session = Session(MqttSettings(**values), inbox=inbox)
    for flt in subscribe:
        session.subscribe(flt)
    session.start()
    try:
        assert session.wait_connected(10), session.connect_error
        yield session, inbox
    finally:
        session.stop(timeout=2.0)

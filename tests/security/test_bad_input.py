"""Bad input against real processes (issue 4): a LocalCluster (real Mosquitto, real service processes) and
the fault rig's tiny numpy training scripts (tests/faults/scripts), so each job takes seconds.

a. a training worker whose scriptDir is outside the edge's code root: the job fails with the clear
   message, no round runs;
b. a rogue client publishing malformed update transfers on edge1's update topic while edge1's round 1 is
   held open: each is rejected (a Warning event naming edge1, the round and a reason; an UpdateAck with
   accepted=false) and the job still succeeds with exactly exit_round rounds of the honest updates. The
   broker is plain: in secure mode the ACL and use_username_as_clientid already stop any client but
   edge1 from publishing there (tests/security/test_broker.py), and this test is about what the
   aggregator does with what does get through;
c. bad specs published raw for other jobs while a job runs: they get their own clear Failed status and
   the running job still succeeds. Among them (issue 8) a parameter named LD_PRELOAD, a pod template's
   env entry named PYTHONPATH and an exit_round of 10^20: each status names the field path and why.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import queue
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from broker import Session
from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import JobStatus, Kind, Phase, Topics, TransferManifest, decode_weights, encode_weights
from tests.faults.conftest import job_yaml, reassemble, samples_of
from tests.helpers.capture import Capture
from tests.helpers.nodes import lay_out_nodes
from tests.helpers.status import JobWatcher

pytestmark = [pytest.mark.security, pytest.mark.timeout(300)]

JOB = "faults"  # the fault rig's job name (job_yaml)
EDGES = ["edge1", "edge2"]
FLAGS = {"aggregator": ["--keepalive", "2", "--resume-after", "1"], "edge": ["--keepalive", "2", "--ack-timeout", "5"]}
CODE_ROOT_REASON = "is outside the code root /code"


@dataclass
class Deployment:
    tmp: Path
    cluster: LocalCluster
    watcher: JobWatcher
    capture: Capture
    topics: Topics

    def open_gate(self, edge: str, round_: int) -> None:
        gates = self.tmp / edge / "gates"
        gates.mkdir(parents=True, exist_ok=True)
        (gates / f"round-{round_}").touch()

    def session(self, client_id: str) -> Session:
        session = Session(self.cluster.settings(client_id), inbox=queue.Queue())
        session.start()
        assert session.wait_connected(10.0)
        return session


def spec_text(*, exit_round: int, hold: dict[str, str] | None = None, script_dirs: dict[str, str] | None = None) -> str:
    params = {
        e: {"features": "8", "hidden": "16", **({"hold_rounds": hold[e]} if hold and e in hold else {})} for e in EDGES
    }
    text = job_yaml(EDGES, exit_round=exit_round, script="train_numpy.py", agg_params={}, worker_params=params)
    for edge, script_dir in (script_dirs or {}).items():
        head, tail = text.split(f"- nodeName: {edge}\n", 1)
        text = head + f"- nodeName: {edge}\n" + tail.replace("scriptDir: /code,", f"scriptDir: '{script_dir}',", 1)
    return text


def _hostile(job_text: str, name: str, change: Callable[[dict[str, Any]], None]) -> bytes:
    """`job_text` (the job published as "outside") renamed to `name`, its scriptDir fixed, then `change`d."""
    job = yaml.safe_load(job_text)
    job["metadata"]["name"] = name
    job["spec"]["trainingWorkers"][0]["workerSpec"]["scriptDir"] = "/code"
    change(job)
    return yaml.safe_dump(job, sort_keys=False).encode()


def _param(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    return lambda job: job["spec"]["trainingWorkers"][0]["workerSpec"]["parameters"].append(
        {"key": key, "value": value}
    )


def _template_env(name: str, value: str) -> Callable[[dict[str, Any]], None]:
    """Write edge1's worker the CRD's way (a pod template), its parameters plus name=value in the env."""

    def change(job: dict[str, Any]) -> None:
        worker = job["spec"]["trainingWorkers"][0]
        spec = worker.pop("workerSpec")
        env = [{"name": p["key"], "value": p["value"]} for p in spec["parameters"]] + [{"name": name, "value": value}]
        script = f"{spec['scriptDir']}/{spec['scriptBootFile']}"
        worker["template"] = {
            "spec": {
                "nodeName": worker.pop("nodeName"),
                "containers": [{"name": "train", "command": ["python", script], "env": env}],
            }
        }

    return change


def _rounds(value: str) -> Callable[[dict[str, Any]], None]:
    def change(job: dict[str, Any]) -> None:
        params = job["spec"]["aggregationWorker"]["workerSpec"]["parameters"]
        next(p for p in params if p["key"] == "exit_round")["value"] = value

    return change


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[[str], Deployment]]:
    made: list[Deployment] = []

    def make(spec: str) -> Deployment:
        labels = {
            edge: [f"sample-{edge}-{i},{i % 2}" for i in range(samples_of(index))] for index, edge in enumerate(EDGES)
        }
        lay_out_nodes(tmp_path, labels)
        (tmp_path / "job.yaml").write_text(spec)
        cluster = LocalCluster(tmp_path, broker_config={"autosave_interval": 1})
        cluster.start_broker()
        topics = Topics()
        watcher = JobWatcher(cluster.settings("bad-input-watcher"), topics, JOB).__enter__()
        capture = Capture(cluster.settings("bad-input-capture"), f"fl/federatedlearningjobs/{JOB}/rounds/+/global/#")
        capture.__enter__()
        d = Deployment(tmp_path, cluster, watcher, capture, topics)
        made.append(d)
        cluster.start_node("cloud0", "aggregator", extra_args=FLAGS["aggregator"])
        for edge in EDGES:
            cluster.start_node(edge, "edge", extra_args=FLAGS["edge"])
        assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(tmp_path / "job.yaml")]) == 0
        return d

    yield make
    for d in made:
        with contextlib.suppress(Exception):
            d.capture.__exit__(None, None, None)
        d.watcher.__exit__(None, None, None)
        d.cluster.stop()


def assert_succeeded(d: Deployment, status: JobStatus, exit_round: int) -> None:
    assert status.phase is Phase.SUCCEEDED, d.watcher.describe()
    assert [r.round for r in status.rounds] == list(range(1, exit_round + 1))
    for record in status.rounds:
        assert sorted(record.participants) == EDGES, record
        assert record.total_samples == samples_of(0) + samples_of(1), record
    digests = {w.node: w.model_digest for w in status.workers if w.role == "training"}
    assert digests["edge1"] and digests["edge1"] == digests["edge2"], digests


# -- a. scripts outside the code root ---------------------------------------------------------------


@pytest.mark.parametrize("script_dir", ["/data", "/code/../../etc"])
def test_script_dir_outside_the_code_root_fails_the_job(deploy: Callable[[str], Deployment], script_dir: str) -> None:
    d = deploy(spec_text(exit_round=2, script_dirs={"edge1": script_dir}))
    status = d.watcher.wait_finished(60)
    assert status.phase is Phase.FAILED, d.watcher.describe()
    field = "spec.trainingWorkers[0].workerSpec.scriptDir"
    expected = f"job {JOB}: {field} '{script_dir}' {CODE_ROOT_REASON} ({(d.tmp / 'edge1' / 'code').resolve()})"
    assert expected in status.message, status.message
    worker = {w.node: w for w in status.workers}["edge1"]
    assert worker.state.value == "Failed" and expected in worker.message, worker
    assert status.rounds == []
    assert not (d.tmp / "edge1" / "logs" / JOB / "worker.log").exists(), "edge1 started a script"
    assert not (d.tmp / "etc").exists()


# -- b. malformed updates ---------------------------------------------------------------------------


@dataclass
class Rogue:
    """Publishes hand-made transfers on edge1's update topics of round 1."""

    d: Deployment
    session: Session
    uid: str
    names: list[str]
    arrays: list[np.ndarray]

    def blob(self, arrays: list[np.ndarray] | None = None, *, names: list[str] | None = None, n: int = 24) -> bytes:
        return encode_weights(
            arrays if arrays is not None else self.arrays,
            kind="update",
            job=JOB,
            round_=1,
            sender="edge1",
            num_samples=n,
            names=names or self.names,
        )

    def send(
        self,
        blob: bytes,
        *,
        num_samples: int = 24,
        total_bytes: int | None = None,
        sha256: str | None = None,
        chunk_override: dict[int, bytes] | None = None,
        raw_manifest: bytes | None = None,
    ) -> str:
        transfer = secrets.token_hex(8)
        chunk_size = 256
        chunks = [blob[i : i + chunk_size] for i in range(0, len(blob), chunk_size)]
        total = total_bytes if total_bytes is not None else len(blob)
        count = math.ceil(total / chunk_size)
        hashes = [hashlib.sha256(c).hexdigest() for c in chunks] + ["0" * 64] * (count - len(chunks))
        topics = self.d.topics
        if total_bytes is None:
            for index, chunk in enumerate(chunks):
                payload = (chunk_override or {}).get(index, chunk)
                self.session.publish(topics.update_chunk(JOB, 1, "edge1", transfer, index), payload, qos=1).wait(10)
        manifest = TransferManifest(
            transfer=transfer,
            kind="update",
            job=JOB,
            uid=self.uid,
            round=1,
            sender="edge1",
            total_bytes=total,
            chunk_size=chunk_size if total_bytes is None else total,
            chunks=count if total_bytes is None else 1,
            sha256=sha256 or hashlib.sha256(blob).hexdigest(),
            chunk_sha256=hashes if total_bytes is None else ["0" * 64],
            num_samples=max(num_samples, 0),
        )
        payload = manifest.to_json()
        if raw_manifest is not None:
            payload = payload.replace(b'"numSamples":0', raw_manifest)
        self.session.publish(topics.update_manifest(JOB, 1, "edge1", transfer), payload, qos=1).wait(10)
        return transfer


def malformed(rogue: Rogue) -> dict[str, Callable[[], str]]:
    w, b = rogue.arrays
    nan = w.copy()
    nan[0, 0] = np.nan
    inf = b.copy()
    inf[3] = np.inf
    good = rogue.blob()
    return {
        "wrong tensor names": lambda: rogue.send(rogue.blob(names=[f"evil{i}" for i in range(len(rogue.arrays))])),
        "wrong shape": lambda: rogue.send(rogue.blob([w[:, :-1], b])),
        "wrong dtype": lambda: rogue.send(rogue.blob([w.astype(np.float64), b])),
        "NaN": lambda: rogue.send(rogue.blob([nan, b])),
        "Inf": lambda: rogue.send(rogue.blob([w, inf])),
        "num_samples 0": lambda: rogue.send(rogue.blob(n=0), num_samples=0),
        "size over the limit": lambda: rogue.send(good, total_bytes=600 * 1024 * 1024),
        "bad magic": lambda: rogue.send(b"EVIL" + good[4:]),
        "bad checksum": lambda: rogue.send(good, sha256="ab" * 32),
        "num_samples negative": lambda: rogue.send(rogue.blob(n=1), num_samples=0, raw_manifest=b'"numSamples":-5'),
        "num_samples absurd": lambda: rogue.send(
            rogue.blob(n=1), num_samples=0, raw_manifest=b'"numSamples":1000000000000'
        ),
    }


def start_rogue(d: Deployment) -> Rogue:
    """Once round 1 is open (edge1 held at its gate): the uid and the round-0 model's tensors."""
    d.watcher.wait(
        lambda w: w.status is not None and w.status.current_round == 1 and "edge1" in w.status.waiting_for,
        60,
        "round 1 open",
    )
    assert d.watcher.status is not None and d.watcher.status.uid is not None
    blobs: dict[tuple[str, int, str], list[bytes]] = {}
    for _ in range(100):
        blobs = reassemble(list(d.capture.messages), d.topics)
        if ("global", 0, "") in blobs:
            break
        time.sleep(0.1)
    header, arrays = decode_weights(blobs[("global", 0, "")][-1])
    names = [t.name for t in header.tensors]
    return Rogue(d, d.session("rogue-edge1"), d.watcher.status.uid, names, [np.asarray(a) for a in arrays])


def rejection(d: Deployment, transfer: str) -> tuple[str, str] | None:
    """(ack reason, Warning event message) once both exist for `transfer`."""
    ack = next((a for a in d.watcher.acks if a.transfer == transfer and not a.accepted and not a.missing), None)
    if ack is None:
        return None
    for event in d.watcher.events:  # the stream: the status publishes a few times a round
        if (
            event.type == "Warning"
            and event.node == "edge1"
            and event.round == 1
            and "edge1" in event.message
            and "round 1" in event.message
            and ack.reason in event.message
        ):
            return ack.reason, event.message
    return None


def test_malformed_updates_are_rejected_and_the_job_succeeds(deploy: Callable[[str], Deployment]) -> None:
    d = deploy(spec_text(exit_round=2, hold={"edge1": "1"}))
    rogue = start_rogue(d)
    reasons = {}
    for kind, send in malformed(rogue).items():
        transfer = send()
        d.watcher.wait(lambda w, t=transfer: rejection(d, t) is not None, 20, f"rejection of {kind}")  # type: ignore[misc]
        found = rejection(d, transfer)
        assert found is not None and found[0], kind
        reasons[kind] = found[0]
    assert "non-finite" in reasons["NaN"] and "non-finite" in reasons["Inf"]
    assert "layout differs" in reasons["wrong tensor names"] and "evil0" in reasons["wrong tensor names"]
    assert "layout differs" in reasons["wrong shape"] and "layout differs" in reasons["wrong dtype"]
    assert "num_samples" in reasons["num_samples 0"]
    assert "limit" in reasons["size over the limit"]
    assert "unreadable" in reasons["bad magic"]
    assert "SHA-256" in reasons["bad checksum"]
    # A chunk whose bytes do not match the manifest's chunk hash is dropped as corrupt and asked for again
    # (UpdateAck accepted=false, missing=[0]); the transfer is never used. No Warning event (a corrupt
    # chunk looks like a lost one), see the report.
    transfer = rogue.send(rogue.blob(), chunk_override={0: b"x" * 256})
    d.watcher.wait(
        lambda w: any(a.transfer == transfer and not a.accepted and a.missing == [0] for a in w.acks),
        20,
        "a resend request for the corrupt chunk",
    )
    rogue.session.stop(timeout=2.0)
    d.open_gate("edge1", 1)
    status = d.watcher.wait_finished(90)
    assert_succeeded(d, status, 2)


# -- c. bad specs for other jobs while one runs -----------------------------------------------------


def test_bad_specs_of_other_jobs_do_not_disturb_a_running_job(deploy: Callable[[str], Deployment]) -> None:
    d = deploy(spec_text(exit_round=2, hold={"edge1": "1"}))
    # Round 1 is open (not the initial models or a job waiting for its nodes, which also wait for edge1).
    d.watcher.wait(
        lambda w: w.status is not None and w.status.current_round == 1 and "edge1" in w.status.waiting_for,
        60,
        "round 1 open",
    )
    admin = d.session("bad-spec-publisher")
    outside = spec_text(exit_round=2, script_dirs={"edge1": "/data"}).replace(f"name: {JOB}}}", "name: outside}")
    outside_job = outside.split("---\n")[-1]
    bad = {
        "outside": outside_job.encode(),
        "broken-yaml": b"apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\nmetadata: {name: broken-yaml}\nspec: [",
        "zero-rounds": outside_job.replace("name: outside", "name: zero-rounds")
        .replace("scriptDir: '/data'", "scriptDir: /code")
        .replace("exit_round, value: '2'", "exit_round, value: '0'")
        .encode(),
        # issue 8: a parameter that would change how the edge's process is loaded, either way of writing a
        # worker, and a number past its bound
        "ld-preload": _hostile(outside_job, "ld-preload", _param("LD_PRELOAD", "/data/evil.so")),
        "template-pythonpath": _hostile(outside_job, "template-pythonpath", _template_env("PYTHONPATH", "/data")),
        "huge-rounds": _hostile(outside_job, "huge-rounds", _rounds("1" + "0" * 20)),
    }
    watchers = {}
    try:
        for name, payload in bad.items():
            watchers[name] = JobWatcher(d.cluster.settings(f"watch-{name}"), d.topics, name).__enter__()
            admin.publish(d.topics.spec(Kind.JOB, name), payload, qos=1, retain=True).wait(10)
        for name, watcher in watchers.items():
            status = watcher.wait_finished(60)
            assert status.phase is Phase.FAILED, (name, watcher.describe())
            assert status.message, name
        assert CODE_ROOT_REASON in watchers["outside"].status.message  # type: ignore[union-attr]
        assert "spec.trainingWorkers[0].workerSpec.scriptDir '/data'" in watchers["outside"].status.message  # type: ignore[union-attr]
        assert "exit_round" in watchers["zero-rounds"].status.message  # type: ignore[union-attr]
        for name, expected in {
            "ld-preload": "spec.trainingWorkers[0].workerSpec.parameters[2].key: 'LD_PRELOAD' is refused",
            "template-pythonpath": "spec.trainingWorkers[0].template.spec.containers[0].env[2].name: "
            "'PYTHONPATH' is refused",
            "huge-rounds": "spec.aggregationWorker.workerSpec.parameters[0].value: exit_round='1000000000"
            "00000000000': expected a whole number in [1, 10000]",
        }.items():
            assert expected in watchers[name].status.message, watchers[name].describe()  # type: ignore[union-attr]
        assert d.watcher.status is not None and d.watcher.status.phase is Phase.RUNNING
    finally:
        for watcher in watchers.values():
            watcher.__exit__(None, None, None)
        admin.stop(timeout=2.0)
    d.open_gate("edge1", 1)
    status = d.watcher.wait_finished(90)
    assert_succeeded(d, status, 2)
    assert not any(e.type == "Warning" for e in status.events), [e.message for e in status.events]

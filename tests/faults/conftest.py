"""The fault tests' rig: a LocalCluster (real Mosquitto, real service processes), one FlakyProxy per edge,
a tiny job, a watcher on its status and a capture of its rounds' traffic, and the checks every scenario
ends with (issue 3): phase Succeeded, exactly exit_round aggregations, each participant's update used
exactly once per aggregation (also checked in the math: every global model is the sample-weighted mean
of exactly one captured update per participant), identical final weights on the edges, and nothing left
behind (services exit 0, no process of the test's folder survives).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import Channel, JobStatus, Phase, Topics, TransferManifest, decode_weights
from tests.helpers.capture import Capture
from tests.helpers.nodes import lay_out_nodes
from tests.helpers.proxy import FlakyProxy
from tests.helpers.status import JobWatcher, wait_no_processes_under

JOB = "faults"
# Short keepalive so a silent link is noticed within seconds (scenario 2); resumes and resends fast.
KEEPALIVE = 2
SERVICE_FLAGS: dict[str, list[str]] = {
    "aggregator": ["--keepalive", str(KEEPALIVE), "--resume-after", "1"],
    "edge": ["--keepalive", str(KEEPALIVE), "--ack-timeout", "5"],
}


def samples_of(index: int) -> int:
    """Sample count of the index-th edge: different per edge, so FedAvg's weighting shows."""
    return 24 + 4 * index


@dataclass
class Rig:
    """One scenario's deployment and job."""

    tmp: Path
    cluster: LocalCluster
    edges: list[str]
    exit_round: int
    keras: bool
    proxies: dict[str, FlakyProxy] = field(default_factory=dict)
    watcher: JobWatcher | None = None
    capture: Capture | None = None
    topics: Topics = field(default_factory=Topics)
    gone: set[str] = field(default_factory=set)  # nodes a scenario took down for good
    finished: bool = False

    @property
    def watch(self) -> JobWatcher:
        assert self.watcher is not None
        return self.watcher

    def samples(self, edge: str) -> int:
        return samples_of(self.edges.index(edge))

    def open_gate(self, edge: str, round_: int) -> None:
        """Let `edge`'s script train round `round_` (see scripts/_common.py)."""
        gates = self.tmp / edge / "gates"
        gates.mkdir(parents=True, exist_ok=True)
        (gates / f"round-{round_}").touch()

    def wait_round_two_delivered_by_edge1(self) -> None:
        """With edge2 held in its round-2 training (`hold_rounds: "2"`): until the aggregator acknowledged
        edge1's round-2 update, so round 2 is open with exactly one update stored."""
        self.watch.wait_worker("edge2", "Training", 2, timeout=90)
        self.watch.wait(
            lambda x: any(a.node == "edge1" and a.round == 2 and a.accepted for a in x.acks),
            timeout=60,
            what="edge1's round-2 update acknowledged",
        )

    def kill_aggregator_mid_round_two(self) -> str | None:
        """With edge2 held in round 2: SIGKILL the aggregator once edge1's round-2 update is stored (round 1
        closed, round 2 half in), restart it and let edge2 go on; the uid of the run the kill interrupted."""
        self.wait_round_two_delivered_by_edge1()
        uid = self.watch.status.uid if self.watch.status else None
        assert self.cluster.kill_node("cloud0") == -9
        self.cluster.restart_node("cloud0")
        self.open_gate("edge2", 2)
        return uid

    def updates_by_round(
        self, blobs: dict[tuple[str, int, str], list[bytes]], rounds: Sequence[int]
    ) -> dict[int, list[bytes]]:
        """The captured update of each edge (in `edges` order) for each of `rounds`; exactly one per edge and round."""
        updates = {}
        for round_ in rounds:
            per_edge = [blobs.get(("update", round_, edge), []) for edge in self.edges]
            assert [len(found) for found in per_edge] == [1] * len(self.edges), (
                f"round {round_}: one update per edge expected"
            )
            updates[round_] = [found[0] for found in per_edge]
        return updates

    def kill_broker(self, *, restore: Path | None = None) -> None:
        """kill -9 the broker; start it again from an empty data directory (what a kill before the autosave
        loses, made deterministic), or from the database `restore`. Returns once the traffic capture is
        subscribed again (a broker that lost its sessions has none)."""
        assert self.capture is not None and self.cluster.broker is not None
        since = self.capture.connection
        data = Path(self.cluster.broker.cfg.data_dir)
        self.cluster.stop_broker(hard=True)
        shutil.rmtree(data)
        data.mkdir()
        if restore is not None:
            shutil.copy2(restore, data / restore.name)
        self.cluster.start_broker()
        self.capture.wait_subscribed_again(since, timeout=20)

    def wait_job(self, timeout: float) -> JobStatus:
        return self.watch.wait_finished(timeout)

    # -- the checks every scenario ends with ---------------------------------------------------------

    def assert_outcome(
        self,
        status: JobStatus,
        *,
        participants: dict[int, Sequence[str]] | None = None,
        missing: dict[int, Sequence[str]] | None = None,
    ) -> None:
        """Succeeded; rounds 1..exit_round, each worker counted once; totals match; final weights equal."""
        assert status.phase is Phase.SUCCEEDED, self.watch.describe()
        assert status.exit_round == self.exit_round
        assert [r.round for r in status.rounds] == list(range(1, self.exit_round + 1)), status.rounds
        everyone = sorted(e for e in self.edges)
        for record in status.rounds:
            assert len(record.participants) == len(set(record.participants)), f"round {record.round}: {record}"
            expected = sorted((participants or {}).get(record.round, everyone))
            assert sorted(record.participants) == expected, f"round {record.round}: {record}"
            assert record.total_samples == sum(self.samples(e) for e in expected), f"round {record.round}: {record}"
            assert sorted(record.missing) == sorted((missing or {}).get(record.round, [])), f"round {record.round}"
        final_participants = sorted((participants or {}).get(self.exit_round, everyone))
        digests = {w.node: w.model_digest for w in status.workers if w.role == "training"}
        for edge in final_participants:
            assert digests.get(edge), f"{edge} reported no model digest: {status.workers}"
        assert len({digests[e] for e in final_participants}) == 1, digests
        if self.keras:
            tensors = {edge: checkpoint_tensors(self.tmp / edge / "model") for edge in final_participants}
            first = tensors[final_participants[0]]
            assert len(first) >= 4
            for edge in final_participants[1:]:
                assert tensors[edge].keys() == first.keys()
                for key, value in first.items():
                    np.testing.assert_array_equal(value, tensors[edge][key], err_msg=f"{edge} {key}")
        self.assert_globals_are_fedavg(status)

    def assert_globals_are_fedavg(self, status: JobStatus) -> None:
        """Every global model of rounds 1..exit_round is the FedAvg of exactly one captured update of each
        of the round's participants (a duplicate folded twice or an update of another round would not be)."""
        assert self.capture is not None
        blobs = reassemble(self.capture.messages, self.topics)
        for record in status.rounds:
            globals_ = [
                b for (kind, r, _node), found in blobs.items() if kind == "global" and r == record.round for b in found
            ]
            assert globals_, f"no global model of round {record.round} captured"
            header, target = decode_weights(globals_[-1])
            # A compressed update holds deltas from the global model it was trained from (round - 1).
            previous = blobs.get(("global", record.round - 1, ""), [])
            base = decode_weights(previous[-1])[1] if previous else None
            options = []
            for node in record.participants:
                found = blobs.get(("update", record.round, node), [])
                assert found, f"no update of {node} for round {record.round} captured"
                decoded = [decode_weights(b, base=base) for b in found]
                options.append([(h.num_samples, arrays) for h, arrays in decoded])
            matched = False
            for combo in itertools.islice(itertools.product(*options), 64):
                total = sum(n for n, _ in combo)
                mean = [
                    np.asarray(sum(np.asarray(arrays[i], dtype=np.float64) * n for n, arrays in combo) / total)
                    for i in range(len(target))
                ]
                if header.encoded:  # a float16 global model: the mean as the edges decode it
                    mean = [m.astype(np.float32).astype(np.float16).astype(np.float64) for m in mean]
                if all(np.allclose(m, t, rtol=1e-5, atol=1e-6) for m, t in zip(mean, target, strict=True)):
                    matched = True
                    break
            assert matched, f"the global model of round {record.round} is not the FedAvg of one update per participant"

    def finish(self) -> None:
        """Stop everything; every running service must exit 0 and no process of this test may remain."""
        if self.finished:
            return
        self.finished = True
        try:
            if self.capture is not None and self.cluster.broker is not None and self.cluster.broker.running:
                self.capture.__exit__(None, None, None)
        finally:
            if self.watcher is not None:
                self.watcher.__exit__(None, None, None)
            self.cluster.stop()
            for proxy in self.proxies.values():
                proxy.close()
        for node in self.cluster.nodes.values():
            assert node.proc.returncode == 0, f"{node.name} exited with {node.proc.returncode}:\n{node.log_tail()}"
        wait_no_processes_under(self.tmp, timeout=20.0)

    def logs(self, lines: int = 40) -> str:
        parts = []
        for node in [*self.cluster.retired, *self.cluster.nodes.values()]:
            parts.append(f"--- {node.name} ({node.log_path}):\n{node.log_tail(lines)}")
        return "\n".join(parts)


def reassemble(messages: list[tuple[str, bytes]], topics: Topics) -> dict[tuple[str, int, str], list[bytes]]:
    """Complete weights blobs in the captured traffic: (kind, round, node or "") -> blobs (one per transfer)."""
    manifests: dict[tuple[str, ...], TransferManifest] = {}
    chunks: dict[tuple[str, ...], dict[int, bytes]] = {}
    for topic, payload in messages:
        if not payload:
            continue
        parsed = topics.parse(topic)
        if parsed.channel in (Channel.GLOBAL_MANIFEST, Channel.GLOBAL_CHUNK):
            key: tuple[str, ...] = ("global", str(parsed.round), "")
        elif parsed.channel in (Channel.UPDATE_MANIFEST, Channel.UPDATE_CHUNK):
            key = ("update", str(parsed.round), str(parsed.node), str(parsed.transfer))
        else:
            continue
        if parsed.channel in (Channel.GLOBAL_MANIFEST, Channel.UPDATE_MANIFEST):
            manifests[key] = TransferManifest.model_validate_json(payload)
        else:
            assert parsed.chunk is not None
            chunks.setdefault(key, {})[parsed.chunk] = payload
    out: dict[tuple[str, int, str], list[bytes]] = {}
    for key, manifest in manifests.items():
        parts = chunks.get(key, {})
        if len(parts) < manifest.chunks:
            continue  # a transfer broken by a fault; its resend is another transfer (or the same, completed)
        blob = b"".join(parts[i] for i in range(manifest.chunks))
        if manifest.kind == "init":
            continue
        kind = "global" if key[0] == "global" else "update"
        found = out.setdefault((kind, manifest.round, key[2]), [])
        if blob not in found:
            found.append(blob)
    return out


@functools.cache
def _tf() -> Any:
    import tensorflow as tf

    return tf


def checkpoint_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every variable of the TensorFlow checkpoint an edge wrote, by its checkpoint key."""
    reader = _tf().train.load_checkpoint(str(model_dir / "model.ckpt"))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


def job_yaml(
    edges: list[str],
    *,
    exit_round: int,
    script: str,
    agg_params: dict[str, str],
    worker_params: dict[str, dict[str, str]],
) -> str:
    docs = []
    for edge in edges:
        docs.append(
            "apiVersion: sedna.io/v1alpha1\nkind: Dataset\n"
            f"metadata: {{name: {edge}-data}}\nspec: {{url: /data/train.txt, format: txt, nodeName: {edge}}}\n"
        )
    docs.append(
        "apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {name: fault-model}\nspec: {url: /model, format: ckpt}\n"
    )

    def params(values: dict[str, str]) -> str:
        return "[" + ", ".join(f"{{key: {k}, value: '{v}'}}" for k, v in values.items()) + "]"

    agg = {"exit_round": str(exit_round), "participants_count": str(len(edges)), **agg_params}
    workers = "".join(
        f"    - nodeName: {edge}\n      dataset: {{name: {edge}-data}}\n"
        f"      workerSpec: {{scriptDir: /code, scriptBootFile: {script}, frameworkType: tensorflow, "
        f"parameters: {params(worker_params.get(edge, {}))}}}\n"
        for edge in edges
    )
    docs.append(
        "apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\n"
        f"metadata: {{name: {JOB}}}\nspec:\n  aggregationWorker:\n    model: {{name: fault-model}}\n"
        "    nodeName: cloud0\n"
        f"    workerSpec: {{scriptDir: /code, scriptBootFile: aggregate.py, frameworkType: tensorflow, parameters: {params(agg)}}}\n"
        f"  trainingWorkers:\n{workers}"
    )
    return "---\n".join(docs)


RigFactory = Callable[..., Rig]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[RigFactory]:
    """``rig(edges=2, ...)`` lays out the nodes, starts broker, proxies, services, watcher and capture,
    and creates the job; everything is stopped at teardown (scenarios call `Rig.finish` to check it)."""
    made: list[Rig] = []

    def make(
        edges: int = 2,
        *,
        exit_round: int = 3,
        keras: bool = True,
        hidden: int = 16,
        agg_params: dict[str, str] | None = None,
        agg_args: Sequence[str] = (),
        common_params: dict[str, str] | None = None,
        edge_params: dict[str, dict[str, str]] | None = None,
        broker_config: dict[str, object] | None = None,
        proxies: bool = True,
        start: Sequence[str] | None = None,
    ) -> Rig:
        names = [f"edge{i}" for i in range(1, edges + 1)]
        script = "train_keras.py" if keras else "train_numpy.py"
        labels = {
            edge: [f"sample-{edge}-{i},{i % 2}" for i in range(samples_of(index))] for index, edge in enumerate(names)
        }
        lay_out_nodes(tmp_path, labels, script=script)
        params = {
            edge: {"features": "8", "hidden": str(hidden), **(common_params or {}), **(edge_params or {}).get(edge, {})}
            for edge in names
        }
        spec = tmp_path / "job.yaml"
        spec.write_text(
            job_yaml(names, exit_round=exit_round, script=script, agg_params=agg_params or {}, worker_params=params)
        )

        cluster = LocalCluster(
            tmp_path,
            broker_config={"autosave_interval": 1, **(broker_config or {})},
            env={"FL_MQTT_KEEPALIVE": str(KEEPALIVE)},  # for services that read it (scenario 2)
        )
        r = Rig(tmp_path, cluster, names, exit_round, keras)
        made.append(r)
        cluster.start_broker()
        r.watcher = JobWatcher(cluster.settings("fault-watcher"), r.topics, JOB).__enter__()
        r.capture = Capture(
            cluster.settings("fault-capture"), f"{r.topics.prefix}/federatedlearningjobs/{JOB}/rounds/#"
        )
        r.capture.__enter__()
        cluster.start_node("cloud0", "aggregator", extra_args=[*SERVICE_FLAGS["aggregator"], *agg_args])
        for edge in start if start is not None else names:
            port = None
            if proxies:
                r.proxies[edge] = FlakyProxy(cluster.port)
                port = r.proxies[edge].port
            cluster.start_node(edge, "edge", extra_args=SERVICE_FLAGS["edge"], port=port)
        assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(spec)]) == 0
        return r

    yield make
    for r in made:
        if not r.finished:
            r.finished = True
            if r.capture is not None:
                with contextlib.suppress(Exception):  # a failed scenario may have left the broker down
                    r.capture.__exit__(None, None, None)
            if r.watcher is not None:
                r.watcher.__exit__(None, None, None)
            r.cluster.stop()
            for proxy in r.proxies.values():
                proxy.close()

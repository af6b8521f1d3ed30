"""A small real job with FedAdam: a real Mosquitto, the real `fl-cloud-aggregator` and two `fl-edge-trainer`
processes (LocalCluster) running the fault tests' numpy training script (fast; the point is the server's
optimiser, not the model).

The job picks FedAdam as a user does: the aggregation worker's ``aggregation_algorithm`` parameter (read
by the aggregation script, as Sedna's example does) and its hyper-parameters beside it. A subscriber
records every message; afterwards the test rebuilds each update the edges sent from its chunks and
computes FedAdam by hand from them (sample-weighted mean, pseudo-gradient, moments, step), round by
round, and checks every published global model and the final model written under the Model url.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from schemas import Channel, Phase, Topics, TransferManifest, decode_weights
from tests.helpers.capture import Capture
from tests.helpers.nodes import lay_out_nodes

JOB = "adam"
EDGES = ("edge1", "edge2")
SAMPLES = {"edge1": 12, "edge2": 36}  # unequal, so the mean is visibly sample-weighted
EXIT_ROUND = 3
ETA, BETA_1, BETA_2, TAU = 0.05, 0.8, 0.95, 0.01
WAIT = 120.0

pytestmark = pytest.mark.timeout(300)

Arrays = list[npt.NDArray[Any]]


def job_yaml() -> str:
    docs = [
        "apiVersion: sedna.io/v1alpha1\nkind: Dataset\n"
        f"metadata: {{name: {edge}-data}}\nspec: {{url: /data/train.txt, format: txt, nodeName: {edge}}}\n"
        for edge in EDGES
    ]
    docs.append(
        "apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {name: adam-model}\nspec: {url: /model, format: ckpt}\n"
    )
    workers = "".join(
        f"    - nodeName: {edge}\n      dataset: {{name: {edge}-data}}\n"
        "      workerSpec: {scriptDir: /code, scriptBootFile: train_numpy.py, "
        "parameters: [{key: features, value: '6'}, {key: hidden, value: '3'}]}\n"
        for edge in EDGES
    )
    parameters = {
        "exit_round": EXIT_ROUND,
        "participants_count": 2,
        "aggregation_algorithm": "FedAdam",
        "server_learning_rate": ETA,
        "beta_1": BETA_1,
        "beta_2": BETA_2,
        "tau": TAU,
    }
    listed = ", ".join(f"{{key: {k}, value: '{v}'}}" for k, v in parameters.items())
    docs.append(
        "apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\n"
        f"metadata: {{name: {JOB}}}\nspec:\n  aggregationWorker:\n    model: {{name: adam-model}}\n"
        "    nodeName: cloud0\n    workerSpec: {scriptDir: /code, scriptBootFile: aggregate.py, "
        f"parameters: [{listed}]}}\n"
        f"  trainingWorkers:\n{workers}"
    )
    return "---\n".join(docs)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    lay_out_nodes(tmp_path, {edge: [f"sample-{edge}-{i},{i % 2}" for i in range(SAMPLES[edge])] for edge in EDGES})
    (tmp_path / "job.yaml").write_text(job_yaml())
    with LocalCluster(tmp_path) as running:
        running.start_broker()
        yield running


def blobs(messages: list[tuple[str, bytes]], topics: Topics) -> tuple[dict[int, bytes], dict[int, list[bytes]]]:
    """The global model blob of each round and the update blobs of each round, rebuilt from their chunks."""
    chunks: dict[tuple[str, int, str | None, str | None], dict[int, bytes]] = {}
    manifests: dict[tuple[str, int, str | None, str | None], TransferManifest] = {}
    for topic, payload in messages:
        parsed = topics.parse(topic)
        if not payload or parsed.round is None:
            continue  # a retained message cleared
        if parsed.channel in (Channel.GLOBAL_CHUNK, Channel.UPDATE_CHUNK) and parsed.chunk is not None:
            kind = "global" if parsed.channel is Channel.GLOBAL_CHUNK else "update"
            chunks.setdefault((kind, parsed.round, parsed.node, parsed.transfer), {})[parsed.chunk] = payload
        elif parsed.channel is Channel.GLOBAL_MANIFEST:
            manifests[("global", parsed.round, None, None)] = TransferManifest.model_validate_json(payload)
        elif parsed.channel is Channel.UPDATE_MANIFEST:
            manifests[("update", parsed.round, parsed.node, parsed.transfer)] = TransferManifest.model_validate_json(
                payload
            )
    globals_: dict[int, bytes] = {}
    updates: dict[int, list[bytes]] = {}
    for key, manifest in manifests.items():
        parts = chunks.get(key, {})
        assert sorted(parts) == list(range(manifest.chunks)), f"chunks of {key} missing"
        blob = b"".join(parts[i] for i in range(manifest.chunks))
        if key[0] == "global":
            globals_[key[1]] = blob
        else:
            updates.setdefault(key[1], []).append(blob)
    return globals_, updates


def fedadam_by_hand(
    x0: Arrays,
    updates: dict[int, list[bytes]],
    *,
    rounds: int = EXIT_ROUND,
    eta: float = ETA,
    beta_1: float = BETA_1,
    beta_2: float = BETA_2,
    tau: float = TAU,
) -> dict[int, Arrays]:
    """Reddi et al.'s FedAdam without bias correction, m and v from zero, every step in float64; each
    round's model is the float32 the edges receive (and the next round steps from)."""
    x = [np.asarray(a, np.float64) for a in x0]
    m = [np.zeros_like(a) for a in x]
    v = [np.zeros_like(a) for a in x]
    out: dict[int, Arrays] = {}
    for r in range(1, rounds + 1):
        decoded = [decode_weights(blob) for blob in updates[r]]
        total = sum(header.num_samples for header, _ in decoded)
        for i in range(len(x)):
            mean = sum(header.num_samples * np.asarray(arrays[i], np.float64) for header, arrays in decoded) / total
            delta = mean - x[i]
            m[i] = beta_1 * m[i] + (1 - beta_1) * delta
            v[i] = beta_2 * v[i] + (1 - beta_2) * delta**2
            x[i] = (x[i] + eta * m[i] / (np.sqrt(v[i]) + tau)).astype(np.float32).astype(np.float64)
        out[r] = [a.astype(np.float32) for a in x]
    return out


def test_a_fedadam_job_publishes_what_fedadam_computes_from_the_edges_updates(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    topics = Topics(cluster.prefix)
    with Capture(cluster.settings("capture"), topics.everything()) as capture:
        cluster.start_node("cloud0", "aggregator")
        for edge in EDGES:
            cluster.start_node(edge, "edge")
        assert flctl_cli.main([*cluster.flctl_args(), "create", "-f", str(tmp_path / "job.yaml")]) == 0
        status = cluster.wait_for_job(JOB, timeout=WAIT)

    assert status.phase is Phase.SUCCEEDED, status.message
    chosen = f"FedAdam (server_learning_rate={ETA:g}, beta_1={BETA_1:g}, beta_2={BETA_2:g}, tau={TAU:g})"
    closed = [e.message for e in status.events if e.reason == "RoundClosed"]
    assert closed and all(chosen in message for message in closed), closed

    globals_, updates = blobs(capture.messages, topics)
    assert sorted(globals_) == [0, 1, 2, 3]
    for r in (1, 2, 3):
        assert sorted(decode_weights(b)[0].sender for b in updates[r]) == list(EDGES), r
        assert sorted(decode_weights(b)[0].num_samples for b in updates[r]) == [12, 36]
    want = fedadam_by_hand(decode_weights(globals_[0])[1], updates)
    for r in (1, 2, 3):
        got = decode_weights(globals_[r])[1]
        for i, (g, w) in enumerate(zip(got, want[r], strict=True)):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7, err_msg=f"round {r}, tensor {i}")
    # Not FedAvg: the plain mean of round 1's updates is another model.
    decoded = [decode_weights(b) for b in updates[1]]
    plain = sum(h.num_samples * np.asarray(a[0], np.float64) for h, a in decoded) / sum(
        h.num_samples for h, _ in decoded
    )
    assert not np.allclose(decode_weights(globals_[1])[1][0], plain, rtol=1e-4)

    # The final model under the Model url is round 3's.
    names = [t.name for t in decode_weights(globals_[3])[0].tensors]
    with np.load(tmp_path / "cloud0" / "model" / "adam-model.npz", allow_pickle=False) as final:
        assert sorted(final.files) == sorted(names)
        for name, w in zip(names, want[3], strict=True):
            np.testing.assert_allclose(final[name], w, rtol=2e-6, atol=1e-7, err_msg=name)

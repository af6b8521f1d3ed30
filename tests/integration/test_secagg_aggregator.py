"""The real `fl-cloud-aggregator` runs a secure aggregation round over a real Mosquitto: two edges played by
this test over one MQTT session with runtime's party functions (the edge service is built elsewhere). The
aggregator's retained states walk keys -> shares -> masked -> unmask -> closed, the round's global model is
the weighted FedAvg of the two updates, and the round's retained secagg topics are cleared afterwards.

Nothing sleeps: each step waits, bounded, for the aggregator's next retained state."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from broker import BlobSender, Inbound, Session
from flctl.cluster import LocalCluster
from runtime import FixedPoint, RoundContext, RoundSecrets, mask_update, share_bundle, unmask_answer
from schemas import (
    JobPlan,
    Kind,
    NodeState,
    NodeStatus,
    SecAggState,
    ShareBundle,
    Topics,
    TransferManifest,
    TransferOrigin,
    UnmaskAnswer,
    b64decode,
    b64encode,
    decode_weights,
    encode_weights,
    masked_blob,
)
from tests.helpers.nodes import lay_out_nodes

JOB = "secure"
EDGES = ("edge1", "edge2")
SAMPLES = {"edge1": 12, "edge2": 36}
WAIT = 60.0
INIT = [np.array([0.5, -1.0, 0.25], np.float32), np.array([[1.0, 2.0]], np.float32)]
UPDATES = {
    "edge1": [np.array([0.75, -1.0, 0.0], np.float32), np.array([[1.5, 2.0]], np.float32)],
    "edge2": [np.array([0.25, -0.5, 0.25], np.float32), np.array([[1.0, 1.0]], np.float32)],
}

pytestmark = pytest.mark.timeout(180)


def job_yaml() -> str:
    docs = [
        "apiVersion: sedna.io/v1alpha1\nkind: Dataset\n"
        f"metadata: {{name: {edge}-data}}\nspec: {{url: /data/train.txt, format: txt, nodeName: {edge}}}\n"
        for edge in EDGES
    ]
    docs.append("apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {url: /model, format: ckpt}\n")
    workers = "".join(
        f"    - nodeName: {edge}\n      dataset: {{name: {edge}-data}}\n"
        "      workerSpec: {scriptDir: /code, scriptBootFile: train_numpy.py, frameworkType: tensorflow}\n"
        for edge in EDGES
    )
    docs.append(
        "apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\n"
        f"metadata: {{name: {JOB}}}\nspec:\n  aggregationWorker:\n    model: {{name: m}}\n"
        "    nodeName: cloud0\n    workerSpec: {scriptDir: /code, scriptBootFile: aggregate.py, "
        "frameworkType: tensorflow, parameters: [{key: exit_round, value: '1'}, "
        "{key: secure_aggregation, value: 'true'}]}\n"
        f"  trainingWorkers:\n{workers}"
    )
    return "---\n".join(docs)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    lay_out_nodes(tmp_path, {edge: ["sample-0,0"] for edge in EDGES})
    with LocalCluster(tmp_path) as running:
        running.start_broker()
        running.start_node("cloud0", "aggregator")
        yield running


class Edges:
    """Both edges over one session (the test broker has no ACL), reading what the aggregator publishes."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.topics = cluster.topics
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self.session = Session(cluster.settings("edges"), inbox=self.inbox, topics=self.topics)
        self.session.subscribe(self.topics.plan(JOB))
        self.session.subscribe(self.topics.secagg_of(JOB))
        self.session.subscribe(self.topics.job_globals(JOB))
        self.session.start()
        assert self.session.wait_connected(10.0)
        self.states: list[SecAggState | None] = []
        self.retained: dict[str, bytes] = {}  # what the broker holds of the job's secagg and global topics

    def publish(self, topic: str, payload: bytes) -> None:
        self.session.publish(topic, payload, qos=1, retain=True)

    def wait(self, until: str | None) -> SecAggState | None:
        """Read messages until the aggregator's state of round 1 says phase `until` (None: until it is cleared)."""
        while True:
            msg = self.inbox.get(timeout=WAIT)
            self.retained[msg.topic] = msg.payload
            if msg.topic == self.topics.secagg_state(JOB, 1):
                state = SecAggState.model_validate_json(msg.payload) if msg.payload else None
                self.states.append(state)
                if (state.phase if state is not None else None) == until:
                    return state

    def phase(self, until: str) -> SecAggState:
        state = self.wait(until)
        assert state is not None
        return state

    def until(self, topic: str) -> bytes:
        """Read messages until one arrived on `topic`; its payload."""
        while topic not in self.retained:
            msg = self.inbox.get(timeout=WAIT)
            self.retained[msg.topic] = msg.payload
        return self.retained[topic]

    def send(self, round_: int, node: str, kind: str, blob: bytes) -> TransferManifest:
        origin = TransferOrigin(kind, JOB, self.uid, round_, node, SAMPLES[node])  # type: ignore[arg-type]
        return BlobSender(self.session, chunk_size=128).send(
            self.topics.update_manifest(JOB, round_, node, "0" * 7 + node[-1]),
            lambda i: self.topics.update_chunk(JOB, round_, node, "0" * 7 + node[-1], i),
            blob,
            origin,
            transfer="0" * 7 + node[-1],
            timeout=WAIT,
        )

    @property
    def uid(self) -> str:
        return JobPlan.model_validate_json(self.until(self.topics.plan(JOB))).uid


@dataclass
class Played:
    """The round as the played edges know it."""

    uid: str
    state: SecAggState
    secrets: dict[str, RoundSecrets]
    bundles: dict[str, dict[str, bytes]]

    @property
    def context(self) -> RoundContext:
        return RoundContext(f"{JOB}/{self.uid}", 1)


def run_to_unmask(edges: Edges, topics: Topics) -> Played:
    """The job created, round 0's model sent, keys and shares exchanged, both masked updates uploaded."""
    for edge in EDGES:  # present, so the job is not held back for nodes never seen
        online = NodeStatus(node=edge, role="edge", state=NodeState.ONLINE)
        edges.publish(topics.node_status(edge), online.to_json())
    for doc in job_yaml().split("---\n"):
        kind = Kind.JOB if "FederatedLearningJob" in doc else Kind.MODEL if "kind: Model" in doc else Kind.DATASET
        name = doc.split("metadata: {name: ")[1].split("}")[0]
        edges.publish(topics.spec(kind, name), doc.encode())
    uid = edges.uid
    context = RoundContext(f"{JOB}/{uid}", 1)
    edges.send(0, "edge1", "init", encode_weights(INIT, kind="init", job=JOB, round_=0, sender="edge1", num_samples=12))

    edges.phase("keys")
    secrets = {edge: RoundSecrets.fresh() for edge in EDGES}
    for edge in EDGES:
        advert = secrets[edge].key_advert(job=JOB, uid=uid, round_=1, node=edge, num_samples=SAMPLES[edge])
        edges.publish(topics.secagg_step(JOB, 1, "keys", edge), advert.to_json())
    state = edges.phase("shares")
    roster = {m.node: (m.x, b64decode(m.c_public, "c")) for m in state.u1}
    bundles = {}
    for edge in EDGES:
        sealed, secrets[edge] = share_bundle(secrets[edge], context, own=edge, roster=roster, threshold=2)
        bundles[edge] = sealed
        wire = ShareBundle(job=JOB, uid=uid, round=1, node=edge, sealed={k: b64encode(v) for k, v in sealed.items()})
        edges.publish(topics.secagg_step(JOB, 1, "shares", edge), wire.to_json())
    state = edges.phase("masked")
    for edge in EDGES:
        delta = np.concatenate([(u.astype(np.float64) - i).ravel() for u, i in zip(UPDATES[edge], INIT, strict=True)])
        masked = mask_update(
            secrets[edge],
            context,
            own=edge,
            delta=delta,
            weight=SAMPLES[edge],
            max_weight=state.max_weight,
            fixed=FixedPoint(state.clip, len(state.u1)),
            peers={m.node: b64decode(m.s_public, "s") for m in state.u1},
        )
        edges.send(1, edge, "update", masked_blob(masked, job=JOB, round_=1, sender=edge, num_samples=SAMPLES[edge]))
    state = edges.phase("unmask")
    assert state.u3 == list(EDGES)
    return Played(uid, state, secrets, bundles)


def answer(edges: Edges, topics: Topics, played: Played, edge: str) -> None:
    state = played.state
    b, s = unmask_answer(
        played.secrets[edge],
        played.context,
        own=edge,
        c_publics={m.node: b64decode(m.c_public, "c") for m in state.u1},
        sealed_for_me={v: played.bundles[v][edge] for v in EDGES if v != edge},
        u2=state.u2,
        u3=state.u3,
    )
    wire = UnmaskAnswer(
        job=JOB,
        uid=played.uid,
        round=1,
        node=edge,
        u3=state.u3,
        b_shares={k: b64encode(v) for k, v in b.items()},
        s_shares={k: b64encode(v) for k, v in s.items()},
    )
    edges.publish(topics.secagg_step(JOB, 1, "unmask", edge), wire.to_json())


def assert_closed_as_fedavg(edges: Edges, topics: Topics) -> None:
    """The state says closed, then is cleared with every edge's messages; the global model is FedAvg."""
    edges.phase("closed")
    edges.wait(None)
    steps = [topics.secagg_step(JOB, 1, step, edge) for step in ("keys", "shares", "unmask") for edge in EDGES]
    while any(edges.retained.get(topic) for topic in steps):
        msg = edges.inbox.get(timeout=WAIT)
        edges.retained[msg.topic] = msg.payload
    manifest = TransferManifest.model_validate_json(edges.until(topics.global_manifest(JOB, 1)))
    blob = b"".join(edges.until(topics.global_chunk(JOB, 1, i)) for i in range(manifest.chunks))
    _, arrays = decode_weights(blob)
    for i, got in enumerate(arrays):
        want = np.average([UPDATES[e][i] for e in EDGES], axis=0, weights=[SAMPLES[e] for e in EDGES])
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_aggregator_runs_a_secure_round_over_mqtt(cluster: LocalCluster) -> None:
    edges = Edges(cluster)
    played = run_to_unmask(edges, cluster.topics)
    for edge in EDGES:
        answer(edges, cluster.topics, played, edge)
    assert_closed_as_fedavg(edges, cluster.topics)
    phases = [s.phase if s else None for s in edges.states]
    assert phases == ["keys", "shares", "masked", "unmask", "closed", None]
    edges.session.stop()


def test_an_aggregator_killed_before_the_answers_restarts_where_the_round_was(cluster: LocalCluster) -> None:
    """kill -9 once the state says unmask (saved before it was published); both edges answer while it is down
    (retained). The restarted aggregator reloads the round's record, refolds the spooled masked updates,
    republishes the state, takes the retained answers and closes the round with the same model."""
    edges = Edges(cluster)
    played = run_to_unmask(edges, cluster.topics)
    cluster.kill_node("cloud0")
    for edge in EDGES:
        answer(edges, cluster.topics, played, edge)

    cluster.start_node("cloud0", "aggregator")

    again = edges.phase("unmask")  # the restart republishes the saved state
    assert again == played.state
    assert_closed_as_fedavg(edges, cluster.topics)
    edges.session.stop()

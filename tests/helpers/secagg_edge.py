"""An edge job of a secure aggregation plan (`EdgeJob` with in-memory ports and worker) and the other
parties of its round, computed with runtime's party functions as tests/unit/test_secagg_round.py does:
the aggregator's states and the peers' bundles, masked vectors and answers are made here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_trainer.engine import EdgeJob, LaunchSpec, UploadRequest
from edge_trainer.testing import RecordingPorts, ScriptedWorker, global_transfer
from runtime import RoundContext, RoundSecrets, share_bundle
from schemas import (
    DatasetRef,
    JobPlan,
    KeyAdvert,
    ModelRef,
    NodeRoot,
    PlannedWorker,
    ScriptRef,
    SecAggMember,
    SecAggPhase,
    SecAggState,
    ShareBundle,
    WorkerFrame,
    b64decode,
    b64encode,
    encode_weights,
)
from tests.helpers.nodes import edge_node_root

JOB, UID, NODE = "sdd", "uid-1", "edge1"
PEERS = {"edge2": 20, "edge3": 12}  # the other parties and their sample counts
SAMPLES = 8  # this edge's (its hello)
CLIP = 1.0
CONTEXT = RoundContext(f"{JOB}/{UID}", 1)
GLOBAL0 = [np.full((2, 3), 0.5, dtype=np.float32), np.array([1.0, -1.0, 0.25], dtype=np.float32)]
UPDATE1 = [np.full((2, 3), 0.55, dtype=np.float32), np.array([0.9, -0.95, 0.2], dtype=np.float32)]


@dataclass
class FileCheckingPorts(RecordingPorts):
    """RecordingPorts that also notes, at each secure aggregation publish, what the round file then held."""

    root: Path = Path()
    files_at_publish: list[dict[str, object] | None] = field(default_factory=list)

    def publish_secagg(self, step: str, job: str, round_: int, payload: bytes) -> None:
        path = self.root / "state" / job / "secagg" / f"r{round_}.json"
        self.files_at_publish.append(json.loads(path.read_bytes()) if path.exists() else None)
        super().publish_secagg(step, job, round_, payload)

    def sent(self, step: str) -> list[bytes]:
        return [payload for s, _, payload in self.secagg if s == step]


@dataclass
class Edge:
    job: EdgeJob
    ports: FileCheckingPorts
    worker: ScriptedWorker


@dataclass
class Peer:
    """Another party of the round, computed as the real edge would."""

    name: str
    samples: int
    delta: np.ndarray
    secrets: RoundSecrets = field(default_factory=RoundSecrets.fresh)


def node_root(tmp_path: Path) -> Path:
    """The node's root: its label file and its (never run) training script."""
    return edge_node_root(tmp_path, NODE)


def plan() -> JobPlan:
    return JobPlan(
        job=JOB,
        uid=UID,
        aggregation_node="cloud0",
        aggregation="FedAvg",
        exit_round=3,
        participants=[NODE, *PEERS],
        model=ModelRef(name="m", url="/model", format="ckpt"),
        workers=[
            PlannedWorker(
                node=NODE,
                dataset=DatasetRef(name="d1", url="/data/1.txt", format="txt", node_name=NODE),
                script=ScriptRef(dir="/code", boot_file="train.py", framework_type="tensorflow"),
                parameters={"epochs": "1", "SECURE_AGGREGATION": "True"},
            )
        ],
        chunk_size=64 * 1024,
    )


def edge(root: Path, *, outbox: set[int] | None = None) -> Edge:
    """A started job (hello said) that holds global model 0 and trains round 1."""
    ports, worker = FileCheckingPorts(root=root, outbox=outbox or set()), ScriptedWorker()

    def launcher(spec: LaunchSpec, run_id: str) -> ScriptedWorker:
        return worker

    job = EdgeJob(
        plan(),
        node=NODE,
        root=NodeRoot(root),
        ports=ports,
        launcher=launcher,
        tf_version=lambda: "2.21.0",
        pending_rounds=lambda: set(ports.outbox),
        delivered_round=lambda: ports.delivered,
    )
    assert job.start()
    init = encode_weights(GLOBAL0, kind="init", job=JOB, round_=0, sender=NODE, num_samples=SAMPLES)
    job.on_frame(WorkerFrame(type="hello", num_samples=SAMPLES, has_body=True), init)
    job.on_global(*global_transfer(GLOBAL0, job=JOB, uid=UID, round_=0))
    return Edge(job, ports, worker)


def train(e: Edge, round_: int = 1) -> None:
    """The script answers round `round_` with UPDATE1."""
    body = encode_weights(UPDATE1, kind="update", job=JOB, round_=round_, sender=NODE, num_samples=SAMPLES)
    e.job.on_frame(WorkerFrame(type="update", round=round_, num_samples=SAMPLES, has_body=True), body)


def updates(e: Edge) -> list[UploadRequest]:
    """The update uploads the job asked for (the initial weights left out)."""
    return [u for u in e.ports.uploads if u.kind == "update"]


def own_delta() -> np.ndarray:
    return np.concatenate(
        [(u.astype(np.float64) - g.astype(np.float64)).ravel() for u, g in zip(UPDATE1, GLOBAL0, strict=True)]
    )


def peers() -> dict[str, Peer]:
    rng = np.random.default_rng(7)
    return {n: Peer(n, s, rng.normal(0, 0.05, own_delta().size)) for n, s in PEERS.items()}


def state(phase: SecAggPhase, *, u1: list[SecAggMember] | None = None, **fixed: object) -> SecAggState:
    members = u1 or []
    return SecAggState.model_validate(
        {
            "job": JOB,
            "uid": UID,
            "round": 1,
            "phase": phase,
            "threshold": 2,
            "clip": CLIP,
            "max_weight": max((m.num_samples for m in members), default=1),
            "u1": [m.model_dump() for m in members],
            **fixed,
        }
    )


def roster(advert: KeyAdvert, others: dict[str, Peer]) -> list[SecAggMember]:
    """U1 as the aggregator fixes it: the advertisers sorted by name, x = position + 1."""
    keys = {advert.node: (advert.c_public, advert.s_public, advert.num_samples)}
    keys.update(
        {p.name: (b64encode(p.secrets.c_public), b64encode(p.secrets.s_public), p.samples) for p in others.values()}
    )
    return [
        SecAggMember(node=n, x=i + 1, c_public=c, s_public=s, num_samples=k)
        for i, (n, (c, s, k)) in enumerate(sorted(keys.items()))
    ]


def peer_bundles(others: dict[str, Peer], u1: list[SecAggMember]) -> dict[str, ShareBundle]:
    table = {m.node: (m.x, b64decode(m.c_public, "c")) for m in u1}
    bundles = {}
    for p in others.values():
        sealed, p.secrets = share_bundle(p.secrets, CONTEXT, own=p.name, roster=table, threshold=2)
        bundles[p.name] = ShareBundle(
            job=JOB, uid=UID, round=1, node=p.name, sealed={k: b64encode(v) for k, v in sealed.items()}
        )
    return bundles


def through_shares(e: Edge, others: dict[str, Peer]) -> tuple[list[SecAggMember], dict[str, ShareBundle]]:
    """keys -> shares with every party in U1; the peers' bundles are delivered to the edge."""
    e.job.on_secagg_state(state("keys"))
    u1 = roster(KeyAdvert.model_validate_json(e.ports.sent("keys")[-1]), others)
    e.job.on_secagg_state(state("shares", u1=u1))
    bundles = peer_bundles(others, u1)
    for bundle in bundles.values():
        e.job.on_secagg_bundle(bundle)
    return u1, bundles


def record(root: Path, round_: int = 1) -> dict[str, object]:
    data: dict[str, object] = json.loads((root / "state" / JOB / "secagg" / f"r{round_}.json").read_bytes())
    return data

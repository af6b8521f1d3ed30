"""An edge's part of secure aggregation (`EdgeJob` + `SecAggParty`), without a broker: the aggregator's states
and the other parties' bundles, masked vectors and answers are made here with runtime's party functions
(as tests/unit/test_secagg_round.py does), so the edge's messages are checked against the real arithmetic."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_trainer.engine import EdgeJob, LaunchSpec, UploadRequest
from edge_trainer.testing import RecordingPorts, ScriptedWorker, global_transfer
from runtime import (
    FixedPoint,
    RoundContext,
    RoundSecrets,
    Share,
    mask_update,
    open_share,
    share_bundle,
    sum_masked,
    unmask_answer,
    unmask_total,
)
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
    UnmaskAnswer,
    WorkerFrame,
    WorkerState,
    b64decode,
    b64encode,
    encode_weights,
    read_masked,
)

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


@pytest.fixture
def root(tmp_path: Path) -> Path:
    node = tmp_path / NODE
    (node / "data").mkdir(parents=True)
    (node / "data" / "1.txt").write_text("a.jpg,0\n")
    (node / "code").mkdir()
    (node / "code" / "train.py").write_text("print('hi')\n")
    return node


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


def test_key_advert_is_published_after_its_round_file(root: Path) -> None:
    """On phase keys the edge draws its round's secrets, writes them (0600, in a 0700 folder) and only then
    publishes the KeyAdvert carrying their public keys and its sample count."""
    e = edge(root)
    e.job.on_secagg_state(state("keys"))
    assert [(s, r) for s, r, _ in e.ports.secagg] == [("keys", 1)]
    advert = KeyAdvert.model_validate_json(e.ports.sent("keys")[0])
    on_disk = e.ports.files_at_publish[0]
    assert on_disk is not None and on_disk["uid"] == UID and on_disk["bundle"] is None
    secrets = RoundSecrets.from_json(on_disk["secrets"])  # type: ignore[arg-type]
    assert (advert.node, advert.num_samples) == (NODE, SAMPLES)
    assert b64decode(advert.c_public, "c") == secrets.c_public and b64decode(advert.s_public, "s") == secrets.s_public
    path = root / "state" / JOB / "secagg" / "r1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    e.job.on_secagg_state(state("keys"))  # the retained state again: no new secrets, no second advert
    assert len(e.ports.sent("keys")) == 1 and record(root)["secrets"] == on_disk["secrets"]


def test_no_keys_for_a_round_whose_global_model_it_holds_nor_before_hello(root: Path) -> None:
    """A keys state of a round already over (its global model held) draws nothing; before the script's hello
    the edge waits, and advertises once the hello gives its sample count."""
    e = edge(root)
    e.job.on_global(*global_transfer(GLOBAL0, job=JOB, uid=UID, round_=1))
    e.job.on_secagg_state(state("keys"))
    assert e.ports.secagg == [] and not (root / "state" / JOB / "secagg" / "r1.json").exists()

    ports, worker = FileCheckingPorts(root=root), ScriptedWorker()
    job = EdgeJob(plan(), node=NODE, root=NodeRoot(root), ports=ports, launcher=lambda spec, run: worker)
    assert job.start()
    job.on_secagg_state(state("keys"))
    assert ports.secagg == []
    init = encode_weights(GLOBAL0, kind="init", job=JOB, round_=0, sender=NODE, num_samples=SAMPLES)
    job.on_frame(WorkerFrame(type="hello", num_samples=SAMPLES, has_body=True), init)
    assert [s for s, _, _ in ports.secagg] == ["keys"]


def test_a_whole_round_unmasks_to_the_weighted_mean(root: Path) -> None:
    """keys -> shares -> masked -> unmask, edge3 dropping after its bundle: the edge's bundle opens for its
    receivers, its upload is a masked blob held until phase masked, and with edge2's masked vector and answer
    `unmask_total` decodes to the weighted mean of the edge's and edge2's deltas."""
    e, others = edge(root), peers()
    u1, bundles = through_shares(e, others)
    mine = ShareBundle.model_validate_json(e.ports.sent("shares")[0])
    assert sorted(mine.sealed) == sorted(PEERS)
    assert e.ports.files_at_publish[-1] is not None and e.ports.files_at_publish[-1]["bundle"] == mine.sealed
    c_publics = {m.node: b64decode(m.c_public, "c") for m in u1}
    xs = {m.node: m.x for m in u1}
    for receiver, peer in others.items():  # each entry opens for its receiver: shares at its x, threshold 2
        c_key = X25519PrivateKey.from_private_bytes(peer.secrets.c_private)
        key = CONTEXT.derive_key(c_key, c_publics[NODE], purpose="share", own=receiver, peer=NODE)
        sealed = b64decode(mine.sealed[receiver], "sealed")
        pair = open_share(key, sealed, context=CONTEXT, sender=NODE, receiver=receiver)
        b_share, s_share = Share.from_bytes(pair[: len(pair) // 2]), Share.from_bytes(pair[len(pair) // 2 :])
        assert (b_share.x, s_share.x, b_share.threshold) == (xs[receiver], xs[receiver], 2)

    train(e)  # held, not uploaded
    assert updates(e) == [] and e.ports.state() is WorkerState.WAITING
    assert "held for secure aggregation (phase shares)" in e.ports.last.message

    u2 = [NODE, *PEERS]
    e.job.on_secagg_state(state("masked", u1=u1, u2=u2))
    [upload] = updates(e)
    assert isinstance(upload, UploadRequest) and upload.compression is None and upload.round == 1
    assert e.ports.state() is WorkerState.UPLOADING and record(root)["masked"] is True
    read = read_masked(upload.blob)
    assert read is not None and read[0].sender == NODE and read[1].size == own_delta().size + 1

    max_weight = max(PEERS["edge2"], SAMPLES, PEERS["edge3"])
    fixed = FixedPoint(CLIP, max_parties=3)
    s_publics = {m.node: b64decode(m.s_public, "s") for m in u1}
    edge2 = others["edge2"]
    vector2 = mask_update(
        edge2.secrets,
        CONTEXT,
        own="edge2",
        delta=edge2.delta,
        weight=edge2.samples,
        max_weight=max_weight,
        fixed=fixed,
        peers=s_publics,
    )
    u3 = [NODE, "edge2"]  # edge3 never uploaded
    e.job.on_secagg_state(state("unmask", u1=u1, u2=u2, u3=u3))
    answer = UnmaskAnswer.model_validate_json(e.ports.sent("unmask")[0])
    assert answer.u3 == u3 and record(root)["u3"] == u3
    assert sorted(answer.b_shares) == sorted(u3) and sorted(answer.s_shares) == ["edge3"]
    assert not set(answer.b_shares) & set(answer.s_shares)  # never both secrets of one member
    b2, s2 = unmask_answer(
        edge2.secrets,
        CONTEXT,
        own="edge2",
        c_publics=c_publics,
        sealed_for_me={
            v: b64decode(b.sealed["edge2"], "sealed") for v, b in {**bundles, NODE: mine}.items() if v != "edge2"
        },
        u2=u2,
        u3=u3,
    )
    answers = [
        (
            {k: b64decode(v, "b") for k, v in answer.b_shares.items()},
            {k: b64decode(v, "s") for k, v in answer.s_shares.items()},
        ),
        (b2, s2),
    ]
    total = unmask_total(
        sum_masked([read[1], vector2]), CONTEXT, s_publics=s_publics, u2=u2, u3=u3, answers=answers, threshold=2
    )
    mean = fixed.decode_weighted_mean(total)
    expected = np.average([own_delta(), edge2.delta], axis=0, weights=[SAMPLES, edge2.samples])
    np.testing.assert_allclose(mean, expected, atol=1e-6)

    e.job.on_secagg_state(state("closed", u1=u1, u2=u2, u3=u3))
    assert not (root / "state" / JOB / "secagg" / "r1.json").exists()


def test_unmask_waits_for_every_bundle_of_u2(root: Path) -> None:
    """Phase unmask before edge3's bundle arrived: nothing is answered until it comes."""
    e, others = edge(root), peers()
    e.job.on_secagg_state(state("keys"))
    u1 = roster(KeyAdvert.model_validate_json(e.ports.sent("keys")[-1]), others)
    e.job.on_secagg_state(state("shares", u1=u1))
    bundles = peer_bundles(others, u1)
    e.job.on_secagg_bundle(bundles["edge2"])
    train(e)
    u2 = [NODE, *PEERS]
    e.job.on_secagg_state(state("masked", u1=u1, u2=u2))
    e.job.on_secagg_state(state("unmask", u1=u1, u2=u2, u3=u2))
    assert e.ports.sent("unmask") == []
    e.job.on_secagg_bundle(bundles["edge3"])
    answer = UnmaskAnswer.model_validate_json(e.ports.sent("unmask")[0])
    assert sorted(answer.b_shares) == sorted(u2) and answer.s_shares == {}


def test_an_edge_outside_u2_sits_the_round_out(root: Path) -> None:
    """Not in U2: the held update is dropped with a status saying so, nothing is uploaded, and the next
    global model is trained as usual."""
    e, others = edge(root), peers()
    u1, _ = through_shares(e, others)
    train(e)
    e.job.on_secagg_state(state("masked", u1=u1, u2=list(PEERS)))
    assert updates(e) == [] and e.ports.state() is WorkerState.WAITING
    assert e.ports.last.message.startswith("left out of round 1's secure aggregation: this node is not in U2")
    e.job.on_global(*global_transfer(GLOBAL0, job=JOB, uid=UID, round_=1))
    assert e.worker.types()[-1] == ("train", 2)
    assert not (root / "state" / JOB / "secagg" / "r1.json").exists()


def test_an_edge_outside_u1_drops_its_update_when_it_comes(root: Path) -> None:
    """U1 fixed without this edge while it trains: its update, when it comes, is dropped with a status."""
    e, others = edge(root), peers()
    e.job.on_secagg_state(state("keys"))
    advert = KeyAdvert(
        job=JOB,
        uid=UID,
        round=1,
        node="edge2",
        c_public=b64encode(others["edge2"].secrets.c_public),
        s_public=b64encode(others["edge2"].secrets.s_public),
        num_samples=20,
    )
    u1 = [m for m in roster(advert, others) if m.node != NODE]
    e.job.on_secagg_state(state("shares", u1=u1))
    assert e.ports.sent("shares") == []
    train(e)
    assert updates(e) == [] and "not in its roster U1" in e.ports.last.message


def test_restart_republishes_the_same_messages_and_refuses_another_u3(root: Path) -> None:
    """A restarted edge reads its round file: the same keys and bundle again; in phase unmask the same answer
    for the stored U3, none for another U3. With the file saying masked and the outbox empty, the update
    trained again is not sent."""
    first, others = edge(root), peers()
    u1, bundles = through_shares(first, others)
    train(first)
    u2 = [NODE, *PEERS]
    first.job.on_secagg_state(state("masked", u1=u1, u2=u2))
    first.job.on_secagg_state(state("unmask", u1=u1, u2=u2, u3=u2))
    [keys], [shares], [answer] = first.ports.sent("keys"), first.ports.sent("shares"), first.ports.sent("unmask")
    first.job.shutdown()

    again = edge(root)  # the outbox lost the masked update
    again.job.on_secagg_state(state("keys"))
    again.job.on_secagg_state(state("shares", u1=u1))
    assert again.ports.sent("keys") == [keys] and again.ports.sent("shares") == [shares]
    for bundle in bundles.values():
        again.job.on_secagg_bundle(bundle)
    train(again)
    again.job.on_secagg_state(state("masked", u1=u1, u2=u2))
    assert updates(again) == [] and "not sent" in again.ports.last.message
    again.job.on_secagg_state(state("unmask", u1=u1, u2=u2, u3=u2))
    assert again.ports.sent("unmask") == [answer]
    again.job.shutdown()

    third = edge(root, outbox={1})
    for bundle in bundles.values():
        third.job.on_secagg_bundle(bundle)
    third.job.on_secagg_state(state("unmask", u1=u1, u2=u2, u3=[NODE, "edge2"]))
    assert third.ports.sent("unmask") == [] and record(root)["u3"] == u2


def test_without_its_round_file_past_keys_the_edge_sits_out(root: Path) -> None:
    """Restarted without its round file in phase shares: no bundle, and its update is dropped."""
    first, others = edge(root), peers()
    first.job.on_secagg_state(state("keys"))
    u1 = roster(KeyAdvert.model_validate_json(first.ports.sent("keys")[0]), others)
    first.job.shutdown()
    (root / "state" / JOB / "secagg" / "r1.json").unlink()
    again = edge(root)
    again.job.on_secagg_state(state("shares", u1=u1))
    assert again.ports.secagg == []
    train(again)
    assert updates(again) == [] and "no round file" in again.ports.last.message


def test_an_aborted_round_drops_the_update_and_its_files(root: Path) -> None:
    """Phase aborted: the held update is dropped saying why; the round's file is deleted."""
    e, others = edge(root), peers()
    through_shares(e, others)
    train(e)
    e.job.on_secagg_state(state("aborted", reason="2 of 3 shared keys, threshold 3"))
    assert "aborted (2 of 3 shared keys, threshold 3)" in e.ports.last.message
    assert not (root / "state" / JOB / "secagg").joinpath("r1.json").exists()


def test_messages_of_another_run_are_ignored(root: Path) -> None:
    """A state of another uid (a deleted and recreated job's) draws nothing."""
    e = edge(root)
    e.job.on_secagg_state(state("keys").model_copy(update={"uid": "other"}))
    assert e.ports.secagg == []

"""An edge's part of secure aggregation (`EdgeJob` + `SecAggParty`), without a broker: a whole round checked
against the real arithmetic (the other parties from tests/helpers/secagg_edge.py), the keys phase, the
unmask wait, aborted rounds, round files."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_trainer.engine import EdgeJob, UploadRequest
from edge_trainer.testing import ScriptedWorker, global_transfer
from runtime import FixedPoint, RoundSecrets, Share, mask_update, open_share, sum_masked, unmask_answer, unmask_total
from schemas import (
    KeyAdvert,
    NodeRoot,
    ShareBundle,
    UnmaskAnswer,
    WorkerFrame,
    WorkerState,
    b64decode,
    encode_weights,
    read_masked,
)
from tests.helpers.secagg_edge import (
    CLIP,
    CONTEXT,
    GLOBAL0,
    JOB,
    NODE,
    PEERS,
    SAMPLES,
    UID,
    FileCheckingPorts,
    edge,
    node_root,
    own_delta,
    peer_bundles,
    peers,
    plan,
    record,
    roster,
    state,
    through_shares,
    train,
    updates,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return node_root(tmp_path)


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
    # The same state again (a republish after a reconnect): no new secrets; the same advert once more.
    e.job.on_secagg_state(state("keys"))
    assert e.ports.sent("keys") == [e.ports.sent("keys")[0]] * 2 and record(root)["secrets"] == on_disk["secrets"]


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


@pytest.mark.parametrize("weighted", [True, False])
def test_a_whole_round_unmasks_to_the_weighted_mean(root: Path, weighted: bool) -> None:
    """keys -> shares -> masked -> unmask, edge3 dropping after its bundle: the edge's bundle opens for its
    receivers, its upload is a masked blob held until phase masked, and with edge2's masked vector and answer
    `unmask_total` decodes to the weighted mean of the edge's and edge2's deltas (`weighted: false`, as under
    differential privacy: their plain mean)."""
    e, others = edge(root), peers()
    dp: dict[str, object] = {} if weighted else {"weighted": False, "max_weight": 1}
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
    e.job.on_secagg_state(state("masked", u1=u1, u2=u2, **dp))
    [upload] = updates(e)
    assert isinstance(upload, UploadRequest) and upload.compression is None and upload.round == 1
    assert e.ports.state() is WorkerState.UPLOADING and record(root)["masked"] is True
    read = read_masked(upload.blob)
    assert read is not None and read[0].sender == NODE and read[1].size == own_delta().size + 1

    max_weight = max(PEERS["edge2"], SAMPLES, PEERS["edge3"]) if weighted else 1
    fixed = FixedPoint(CLIP, max_parties=3)
    s_publics = {m.node: b64decode(m.s_public, "s") for m in u1}
    edge2 = others["edge2"]
    vector2 = mask_update(
        edge2.secrets,
        CONTEXT,
        own="edge2",
        delta=edge2.delta,
        weight=edge2.samples if weighted else 1,
        max_weight=max_weight,
        fixed=fixed,
        peers=s_publics,
    )
    u3 = [NODE, "edge2"]  # edge3 never uploaded
    e.job.on_secagg_state(state("unmask", u1=u1, u2=u2, u3=u3, **dp))
    answer = UnmaskAnswer.model_validate_json(e.ports.sent("unmask")[0])
    written = e.ports.files_at_publish[-1]
    assert answer.u3 == u3 and written is not None and written["u3"] == u3  # stored before it was published
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
    weights = [SAMPLES, edge2.samples] if weighted else [1, 1]
    expected = np.average([own_delta(), edge2.delta], axis=0, weights=weights)
    np.testing.assert_allclose(mean, expected, atol=1e-6)

    e.job.on_secagg_state(state("closed", u1=u1, u2=u2, u3=u3))
    assert not (root / "state" / JOB / "secagg" / "r1.json").exists()


def test_unmask_waits_for_every_bundle_of_u2_and_answers_again_on_a_republished_state(root: Path) -> None:
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

    # The bundle again (retained) changes nothing; the same state again (the aggregator republishes it after
    # a reconnect: the broker may have lost its retained messages) sends the same answer once more.
    e.job.on_secagg_bundle(bundles["edge3"])
    assert len(e.ports.sent("unmask")) == 1
    e.job.on_secagg_state(state("unmask", u1=u1, u2=u2, u3=u2))
    assert e.ports.sent("unmask") == [e.ports.sent("unmask")[0]] * 2


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


def test_round_files_go_with_the_job(root: Path) -> None:
    """A deleted job (or one that ends) leaves no round file behind; a newer global model removes the older
    rounds' files."""
    e = edge(root)
    e.job.on_secagg_state(state("keys"))
    e.job.on_secagg_state(state("keys").model_copy(update={"round": 2}))
    assert sorted(p.name for p in (root / "state" / JOB / "secagg").iterdir()) == ["r1.json", "r2.json"]
    e.job.on_global(*global_transfer(GLOBAL0, job=JOB, uid=UID, round_=1))
    assert sorted(p.name for p in (root / "state" / JOB / "secagg").iterdir()) == ["r2.json"]
    e.job.delete()
    assert not (root / "state" / JOB / "secagg").exists()

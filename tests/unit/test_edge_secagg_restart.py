"""An edge that sits a secure aggregation round out (outside U1 or U2, its round file lost) and one that
restarts mid-round (the same keys, bundle and answer again; never a second masked input; one U3 a round)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_trainer.testing import global_transfer
from schemas import (
    KeyAdvert,
    WorkerState,
)
from tests.helpers.secagg_edge import (
    GLOBAL0,
    JOB,
    NODE,
    PEERS,
    UID,
    edge,
    node_root,
    peers,
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
    advert = others["edge2"].secrets.key_advert(job=JOB, uid=UID, round_=1, node="edge2", num_samples=20)
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

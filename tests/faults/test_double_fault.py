"""Issue 7: a double fault. The aggregator dies while updates arrive; then an edge that had already delivered
its update of the open round dies while the aggregator is down; both come back. The restarted edge must not
train (and upload) that round again: its update is in the aggregator's spool, which the restarted aggregator
folds again."""

from __future__ import annotations

from collections import defaultdict

import pytest

from schemas import Channel, JobEvent, TransferManifest, WorkerState
from tests.faults.conftest import Rig, RigFactory
from tests.helpers.status import JobWatcher

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


def _transfers(r: Rig) -> dict[tuple[str, str, int], set[str]]:
    """(kind, node, round) -> the transfer ids of every update or init manifest the edges published."""
    assert r.capture is not None
    found: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for topic, payload in list(r.capture.messages):
        if payload and r.topics.parse(topic).channel is Channel.UPDATE_MANIFEST:
            manifest = TransferManifest.model_validate_json(payload)
            found[(manifest.kind, manifest.sender, manifest.round)].add(manifest.transfer)
    return found


def _rejections(events: list[JobEvent]) -> list[str]:
    return sorted({e.message for e in events if e.reason == "UpdateRejected"})


def test_edge_killed_while_the_aggregator_is_down_does_not_train_its_delivered_round_again(rig: RigFactory) -> None:
    """edge1's round-2 update is stored and acknowledged; the aggregator is killed -9; edge2's round-2 update is
    published while it is down; edge1 is killed -9 and restarted while it is still down (so the retained global
    model is round 1's); then the aggregator is restarted. edge1 waits for round 2 to close instead of training
    it again: one update transfer per (edge, round), at most one init per edge, no UpdateRejected event, and the job
    ends with every global model the FedAvg of exactly one update per participant."""
    r = rig(2, edge_params={"edge2": {"hold_rounds": "2"}})
    w = r.watch
    r.wait_round_two_delivered_by_edge1()
    uid = w.status.uid if w.status else None

    assert r.cluster.kill_node("cloud0") == -9
    r.open_gate("edge2", 2)  # edge2's round-2 update goes into the dead aggregator's session queue
    w.wait_worker("edge2", "Waiting", 2, timeout=60)

    mark = len(w.worker_history)
    assert r.cluster.kill_node("edge1") == -9
    r.cluster.restart_node("edge1")

    def edge1_settled_after_restart(x: JobWatcher) -> bool:
        # The new service starts over (Starting) and then waits for round 2 to close: after training it
        # again (the fault) or without training (the fix). Either way edge1's last word is Waiting 2.
        mine = [s for s in x.worker_history[mark:] if s.node == "edge1"]
        restarted = any(s.state is WorkerState.STARTING for s in mine)
        return restarted and mine[-1].state is WorkerState.WAITING and mine[-1].round == 2

    w.wait(edge1_settled_after_restart, timeout=90, what="edge1 restarted and waiting for round 2")
    r.cluster.restart_node("cloud0")
    status = r.wait_job(150)

    assert status.uid == uid, "the restarted aggregator started the job over instead of resuming it"
    r.assert_outcome(status)
    transfers = _transfers(r)
    for edge in r.edges:
        # An edge whose script says hello after the round-0 model exists uploads no init at all.
        assert len(transfers[("init", edge, 0)]) <= 1, f"{edge} uploaded its initial weights again: {transfers}"
        for round_ in range(1, r.exit_round + 1):
            assert len(transfers[("update", edge, round_)]) == 1, (
                f"{edge} published {len(transfers[('update', edge, round_)])} updates for round {round_}"
            )
    assert _rejections(w.events) == [], _rejections(w.events)
    r.finish()

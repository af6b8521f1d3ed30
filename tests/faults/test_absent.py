"""Issue 10: rounds do not wait for the known-absent. An edge killed -9 (the broker publishes its last will)
no longer costs the round deadline once the others delivered; restarted, it rejoins at the next round."""

from __future__ import annotations

import pytest

from schemas import NodeState
from tests.faults.conftest import RigFactory
from tests.helpers.status import JobWatcher

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

# Long, so that a round closed at its deadline cannot pass for one closed early.
DEADLINE = 60


def _acked(node: str, round_: int) -> object:
    def ok(w: JobWatcher) -> bool:
        return any(a.node == node and a.round == round_ and a.accepted for a in w.acks)

    return ok


def test_offline_edge_does_not_hold_rounds_and_rejoins(rig: RigFactory) -> None:
    """edge3 dies (-9) while training round 2: round 2 closes with edge1 and edge2 about a second (the offline
    grace) after they delivered, not after the 60 s deadline. edge1 is held in round 3 while edge3 restarts:
    edge3 picks up the retained round-2 global model, trains round 3 and round 3 waits for edge1 (online)
    and closes with all three; round 4 too; the job succeeds."""
    r = rig(
        3,
        exit_round=4,
        keras=False,
        agg_params={"round_deadline": str(DEADLINE), "min_participants": "2", "offline_grace": "1"},
        edge_params={"edge1": {"hold_rounds": "3"}, "edge3": {"hold_rounds": "2"}},
    )
    w = r.watch
    w.wait_worker("edge3", "Training", 2, timeout=90)
    assert r.cluster.kill_node("edge3") == -9
    w.wait_presence("edge3", NodeState.OFFLINE, timeout=15)  # its last will

    w.wait_rounds(2, timeout=DEADLINE / 2)

    assert w.status is not None
    second = w.status.rounds[1]
    assert second.round == 2 and second.missing == ["edge3"], second
    assert second.duration_seconds < DEADLINE / 4, second

    def closed_without(x: JobWatcher) -> list[str]:
        return [e.message for e in x.events if e.reason == "RoundClosedWithout" and e.round == 2]

    w.wait(lambda x: bool(closed_without(x)), 15, "the RoundClosedWithout event of round 2")  # its own topic
    closed = closed_without(w)
    assert len(closed) == 1 and "before its deadline (edge3 offline since" in closed[0], closed

    # The restarted edge3's train calls count from 1 again: its 2nd (round 4) must not wait for a gate.
    r.open_gate("edge3", 2)
    r.cluster.restart_node("edge3")
    w.wait(_acked("edge3", 3), timeout=60, what="edge3's round-3 update acknowledged")  # type: ignore[arg-type]
    assert w.status is not None and len(w.status.rounds) == 2, "round 3 closed without waiting for edge1"
    r.open_gate("edge1", 3)

    status = r.wait_job(60)
    r.assert_outcome(status, participants={2: ["edge1", "edge2"]}, missing={2: ["edge3"]})
    r.finish()

"""The spool is written in groups off the aggregator's logic thread, and an ack still means "stored": the
aggregator is killed -9 the moment edge1's round-2 ack is seen, and the restarted aggregator refolds that
update from its spool (edge1, acknowledged, does not send it again)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.faults.conftest import RigFactory
from tests.helpers.status import JobWatcher

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def _acked(w: JobWatcher) -> bool:
    return any(a.node == "edge1" and a.round == 2 and a.accepted for a in w.acks)


def test_an_acked_update_survives_a_sigkill_right_after_its_ack(rig: RigFactory) -> None:
    r = rig(2, edge_params={"edge2": {"hold_rounds": "2"}})
    w = r.watch
    w.wait_worker("edge2", "Training", 2, timeout=90)
    w.wait(_acked, timeout=60, what="edge1's round-2 update acknowledged")
    assert r.cluster.kill_node("cloud0") == -9
    # The stream line of the acceptance before the kill may reach the watcher after it: lines are told
    # apart by the aggregator's own time stamp, not by when they arrived.
    killed_at = datetime.now(UTC)
    uid = w.status.uid if w.status else None
    r.cluster.restart_node("cloud0")
    r.open_gate("edge2", 2)
    status = r.wait_job(120)
    assert status.uid == uid, "the restarted aggregator started the job over instead of resuming it"
    r.assert_outcome(status)  # every global model the mean of exactly one update per participant
    refolded = [
        e.message
        for e in w.events
        if e.time >= killed_at and e.reason == "UpdateAccepted" and "from edge1 for round 2" in e.message
    ]
    assert refolded and all("from the spool" in m for m in refolded), refolded
    r.finish()

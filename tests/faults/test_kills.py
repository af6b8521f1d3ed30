"""Scenarios 3, 4 and 5 of issue 3: an edge, the aggregator or the broker dies in the middle of a round."""

from __future__ import annotations

import pytest

from tests.faults.conftest import RigFactory
from tests.helpers.status import JobWatcher

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

HIDDEN = 1024
BLOB_BYTES = (8 * HIDDEN + HIDDEN + HIDDEN * 2 + 2) * 4


def _acked(node: str, round_: int) -> object:
    def ok(w: JobWatcher) -> bool:
        return any(a.node == node and a.round == round_ and a.accepted for a in w.acks)

    return ok


def test_edge_sigkill_mid_upload_and_restart(rig: RigFactory) -> None:
    """edge1's service is killed -9 halfway through its round-2 upload and started again on the same root:
    it rejoins the job (same run), its round-2 update is counted once, the job finishes."""
    r = rig(2, hidden=HIDDEN, agg_args=["--chunk-size", "2048"], edge_params={"edge1": {"hold_rounds": "2"}})
    w = r.watch
    w.wait_worker("edge1", "Training", 2, timeout=90)
    uid = w.status.uid if w.status else None
    frozen = r.proxies["edge1"].arm(BLOB_BYTES // 2, "blackhole")
    r.open_gate("edge1", 2)
    assert frozen.wait(30), "edge1's round-2 upload never got halfway"
    assert r.cluster.kill_node("edge1") == -9
    r.proxies["edge1"].restore()
    r.cluster.restart_node("edge1")
    status = r.wait_job(120)
    assert status.uid == uid
    r.assert_outcome(status)
    r.finish()


def test_aggregator_sigkill_mid_round_and_restart(rig: RigFactory) -> None:
    """The aggregator is killed -9 after it acknowledged edge1's round-2 update and before edge2's arrived;
    restarted on the same root it resumes round 2 of the same run without losing or double counting edge1's."""
    r = rig(2, edge_params={"edge2": {"hold_rounds": "2"}})
    w = r.watch
    w.wait_worker("edge2", "Training", 2, timeout=90)
    w.wait(_acked("edge1", 2), timeout=60, what="edge1's round-2 update acknowledged")  # type: ignore[arg-type]
    uid = w.status.uid if w.status else None
    r.cluster.restart_node("cloud0")
    r.open_gate("edge2", 2)
    status = r.wait_job(120)
    assert status.uid == uid, "the restarted aggregator started the job over instead of resuming it"
    r.assert_outcome(status)
    r.finish()


def test_broker_stopped_mid_job_and_restarted(rig: RigFactory) -> None:
    """The broker stops (persistence on) while round 2 is half in; edge2 finishes training and publishes while
    it is down; the broker comes back on the same port and every party resumes: nothing lost or doubled."""
    r = rig(2, edge_params={"edge2": {"hold_rounds": "2"}})
    w = r.watch
    w.wait_worker("edge2", "Training", 2, timeout=90)
    w.wait(_acked("edge1", 2), timeout=60, what="edge1's round-2 update acknowledged")  # type: ignore[arg-type]
    r.cluster.stop_broker()
    r.open_gate("edge2", 2)  # edge2 trains, and publishes into a dead link if it is quick enough
    r.cluster.start_broker()
    status = r.wait_job(150)
    r.assert_outcome(status)
    r.finish()

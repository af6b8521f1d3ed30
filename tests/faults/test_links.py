"""Scenarios 1 and 2 of issue 3: an edge's link breaks in the middle of a round, then comes back."""

from __future__ import annotations

import time

import pytest

from schemas import NodeState, WorkerState
from tests.faults.conftest import KEEPALIVE, SERVICE_FLAGS, RigFactory

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]

# Scenario 1's model: 8 -> 1024 -> 2 float32 weights, about 45 kB, in 2 KiB chunks: ~22 chunks.
HIDDEN = 1024
BLOB_BYTES = (8 * HIDDEN + HIDDEN + HIDDEN * 2 + 2) * 4
OUTAGE = 3.0  # how long a cut link stays down: reconnect attempts during it are refused


def test_link_cut_mid_upload_then_restored(rig: RigFactory) -> None:
    """edge1's link is reset halfway through its round-2 upload and comes back 3 s later: nothing is lost,
    nothing is counted twice."""
    r = rig(2, hidden=HIDDEN, agg_args=["--chunk-size", "2048"], edge_params={"edge1": {"hold_rounds": "2"}})
    w = r.watch
    w.wait_worker("edge1", "Training", 2, timeout=90)
    tripped = r.proxies["edge1"].arm(BLOB_BYTES // 2, "cut")
    r.open_gate("edge1", 2)
    assert tripped.wait(30), "edge1's round-2 upload never got halfway"
    assert not any(a.node == "edge1" and a.round == 2 and a.accepted for a in w.acks), "the cut came after the upload"
    w.wait_presence("edge1", NodeState.OFFLINE, timeout=10)
    time.sleep(OUTAGE)  # the outage itself (there is nothing to wait for: the link is down on purpose)
    r.proxies["edge1"].restore()
    status = r.wait_job(120)
    r.assert_outcome(status)
    r.finish()


def test_link_blackholed_longer_than_keepalive_then_restored(rig: RigFactory) -> None:
    """edge1's link goes silent (no RST) while it uploads round 2, for longer than the keepalive: the broker
    notices (last will: edge1 Offline in the job status); restored, edge1 comes back and the job finishes."""
    r = rig(2, edge_params={"edge1": {"hold_rounds": "2"}})
    w = r.watch
    w.wait_worker("edge1", "Training", 2, timeout=90)
    r.proxies["edge1"].blackhole()
    r.open_gate("edge1", 2)  # edge1 trains and uploads into the silent link
    # The broker drops a client silent for 1.5 keepalives and publishes its will.
    w.wait_presence("edge1", NodeState.OFFLINE, timeout=KEEPALIVE * 3 + 10)

    def offline_in_status(watch: object) -> bool:
        s = r.watch.status
        ws = s.worker("edge1") if s is not None else None
        return ws is not None and ws.state is WorkerState.OFFLINE

    w.wait(offline_in_status, timeout=15, what="edge1 Offline in the job status")
    r.proxies["edge1"].restore()
    w.wait_presence("edge1", NodeState.ONLINE, timeout=60)
    status = r.wait_job(120)
    r.assert_outcome(status)
    r.finish()


def test_edge_that_boots_while_the_broker_is_unreachable_joins_when_it_appears(rig: RigFactory) -> None:
    """edge2's service starts while its broker cannot be reached; it keeps retrying, joins once the broker
    appears, and the job (waiting for it meanwhile, and saying so) completes."""
    from tests.helpers.proxy import FlakyProxy

    r = rig(2, start=["edge1"])
    proxy = FlakyProxy(r.cluster.port)
    r.proxies["edge2"] = proxy
    proxy.cut()  # nothing answers on edge2's broker address
    r.cluster.start_node("edge2", "edge", extra_args=SERVICE_FLAGS["edge"], port=proxy.port)
    w = r.watch
    w.wait(
        lambda watch: (
            watch.status is not None and watch.status.current_round >= 0 and "edge2" in watch.status.waiting_for
        ),
        timeout=90,
        what="the job says it waits for edge2",
    )
    assert r.cluster.nodes["edge2"].alive(), "the edge service gave up while the broker was unreachable"
    proxy.restore()
    w.wait_presence("edge2", NodeState.ONLINE, timeout=60)
    status = r.wait_job(120)
    r.assert_outcome(status)
    r.finish()

"""Scenario 9 of issue 3: twenty edges upload many-chunk updates at once; the broker drops nothing."""

from __future__ import annotations

import queue
import time

import pytest

from broker import Inbound, Session
from tests.faults.conftest import RigFactory

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

EDGES = 20
CHUNK = 16 * 1024
# numpy model (see scripts/train_numpy.py for why not Keras here): 64 x 1024 + 1024 float32, ~266 kB,
# 17 chunks of 16 KiB per transfer; every round 20 updates in and 20 copies of the global model out.
FEATURES, HIDDEN = 64, 1024
DROPPED = "$SYS/broker/publish/messages/dropped"
# Mosquitto 2.0 publishes a $SYS counter only when it changed (its first value is retained); the uptime
# changes every sys_interval, so an uptime message after the job proves a $SYS cycle ran after it: had
# anything been dropped by then, a new dropped value would have been published before it.
UPTIME = "$SYS/broker/uptime"


def test_twenty_edges_many_chunks_nothing_dropped(rig: RigFactory) -> None:
    # No proxies: nothing breaks links here, and 20 proxies would only add forwarding load on 2 cores.
    r = rig(
        EDGES,
        exit_round=2,
        keras=False,
        agg_args=["--chunk-size", str(CHUNK)],
        common_params={"features": str(FEATURES), "hidden": str(HIDDEN)},
        broker_config={"sys_interval": 1},
        proxies=False,
    )
    inbox: queue.Queue[Inbound] = queue.Queue()
    sys_session = Session(r.cluster.settings("sys-watch"), inbox=inbox, topics=r.topics)
    sys_session.subscribe(DROPPED)
    sys_session.subscribe(UPTIME)
    sys_session.start()
    seen: list[tuple[float, str]] = []  # dropped counter values
    ticks: list[float] = []  # arrival times of uptime messages

    def drain(until: float) -> None:
        while time.monotonic() < until:
            try:
                msg = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if msg.topic == DROPPED:
                seen.append((time.monotonic(), msg.payload.decode()))
            else:
                ticks.append(time.monotonic())
            sys_session.ack(msg)
            if r.watch.status is not None and r.watch.status.phase.finished:
                return

    try:
        assert sys_session.wait_connected(10)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (r.watch.status and r.watch.status.phase.finished):
            drain(min(deadline, time.monotonic() + 1.0))
        status = r.wait_job(5)
        finished_at = time.monotonic()
        # A $SYS cycle after the job ended (sys_interval is 1 s): the dropped counter covers the whole job.
        while not any(t > finished_at + 1.0 for t in ticks) and time.monotonic() < finished_at + 15:
            drain(time.monotonic() + 0.5)
    finally:
        sys_session.stop(timeout=2)
    assert any(t > finished_at + 1.0 for t in ticks), "no $SYS cycle after the job ended"
    assert seen, "no $SYS dropped counter received"
    assert {value for _, value in seen} == {"0"}, f"the broker dropped messages: {seen}"
    broker_log = r.cluster.broker.log_text() if r.cluster.broker else ""
    assert "being dropped" not in broker_log, broker_log[-2000:]
    r.assert_outcome(status)
    assert r.capture is not None
    assert sum(1 for t, p in r.capture.messages if p and "/updates/" in t and "/chunks/" in t) >= EDGES * 2 * 17
    r.finish()

"""A site broker killed (kill -9) and restarted mid-round, with persistence on (issue 13): while site-a's WAN is
down, edge1's round-2 update waits in the bridge's queue on site-a's broker; the broker is killed after its
autosave wrote that queue to disk and started again from it. Its bridge session and the queued update survive:
when the WAN returns the update reaches the aggregator without edge1 publishing it again (its ack timeout is
longer than the test), the job completes with every update counted once, and no broker dropped a message."""

from __future__ import annotations

import time
from pathlib import Path

from tests.helpers.mqtt import wait_until
from tests.helpers.site_jobs import start_site_job
from tests.helpers.sites import SiteBed
from tests.sites.conftest import SiteBedFactory

# Longer than the scenario: a manifest published twice would be the edge's resend, not the broker's queue.
ACK_TIMEOUT = 300.0


def saved_after(db: Path, moment: float) -> bool:
    try:
        return db.stat().st_mtime > moment
    except OSError:
        return False


def test_a_site_broker_restart_keeps_its_queue(site_bed_factory: SiteBedFactory) -> None:
    bed: SiteBed = site_bed_factory()
    job = start_site_job(bed, exit_round=3, hold_round=2, ack_timeout=ACK_TIMEOUT)
    watch = job.watch
    try:
        watch.wait(lambda w: w.status is not None and w.status.current_round == 2, 90, "round 2 open")
        # A silent WAN (see test_wan_cut): the bridge's reconnects, the restarted broker's too, hang until it returns.
        bed.wan["site-a"].blackhole()
        bed.wait_bridge("site-a", up=False, timeout=30)
        job.open_gate("edge1", 2)
        job.open_gate("edge2", 2)
        wait_until(lambda: job.published_update("edge1", 2), 60, "edge1 published its round-2 update")
        watch.wait(lambda w: w.status is not None and w.status.waiting_for == ["edge1"], 60, "edge2's update in")

        # Two autosaves (1 s apart in the bed) after the publish: the second began after it, so the queue is on disk.
        db = Path(bed.cluster.site_brokers["site-a"].cfg.data_dir) / "mosquitto.db"
        published = time.time()
        wait_until(lambda: saved_after(db, published), 10, "site-a's broker saved its database")
        first = db.stat().st_mtime
        wait_until(lambda: saved_after(db, first), 10, "site-a's broker saved its database again")
        bed.cluster.stop_site_broker("site-a", hard=True)
        bed.cluster.start_site_broker("site-a")

        bed.wan["site-a"].restore()
        bed.wait_bridge("site-a", up=True, timeout=30)
        final = watch.wait_finished(120)

        job.assert_rounds(final)
        job.assert_fedavg(final)
        assert job.manifests_published("edge1", 2) == 1, "edge1 published its round-2 update again"
        bed.assert_nothing_dropped()  # every broker, the restarted one's counts too
    finally:
        watch.__exit__(None, None, None)

"""Store and forward through a site broker (issue 13): the WAN link between site-a and the cloud goes silent in
the middle of round 2, long enough for both brokers to notice (the bridge's keepalive, 5 s in the bed), while
edge1 (behind site-a) publishes its round-2 update to its own broker. Meanwhile the job status and its event
stream show site-a and edge1 unreachable and the round waits; when the link returns, the bridge delivers the
queued update, the round closes with both edges, each counted once, the job completes with the FedAvg of
what was sent, and no broker dropped a message. (A cut of minutes: benchmarks/site_outage.py.)"""

from __future__ import annotations

from schemas import ConditionType, JobStatus
from tests.helpers.mqtt import wait_until
from tests.helpers.site_jobs import start_site_job
from tests.helpers.sites import SiteBed
from tests.sites.conftest import SiteBedFactory


def site_a(status: JobStatus | None) -> bool | None:
    """Whether the job status shows site-a reachable (None: it does not list site-a)."""
    sites = status.sites if status is not None and status.sites else []
    return next((s.reachable for s in sites if s.name == "site-a"), None)


def test_a_wan_cut_mid_round_loses_nothing_and_counts_nothing_twice(site_bed_factory: SiteBedFactory) -> None:
    bed: SiteBed = site_bed_factory()
    job = start_site_job(bed, exit_round=3, hold_round=2)
    watch = job.watch
    try:
        watch.wait(lambda w: w.status is not None and w.status.current_round == 2, 90, "round 2 open")
        assert watch.status is not None and site_a(watch.status) is True

        # A silent WAN (packets vanish, sockets stay open): the cloud broker notices the bridge's keepalive and
        # publishes its last will "0"; the bridge's reconnects hang until the link returns. (Not `cut()`: a link
        # that accepts and resets wedges Mosquitto 2.0.11's TLS bridge after a few retries; docs/operations.md.)
        bed.wan["site-a"].blackhole()
        bed.wait_bridge("site-a", up=False, timeout=30)
        watch.wait(lambda w: site_a(w.status) is False, 20, "site-a shown unreachable")

        # edge1 trains round 2 and publishes its update: it can only go as far as site-a's broker.
        job.open_gate("edge1", 2)
        wait_until(lambda: job.published_update("edge1", 2), 60, "edge1 published its round-2 update")
        job.open_gate("edge2", 2)
        watch.wait(
            lambda w: w.status is not None and w.status.waiting_for == ["edge1"], 60, "edge2's round-2 update in"
        )
        status = watch.status
        assert status is not None and status.current_round == 2
        [row] = [c for c in status.conditions if c.type is ConditionType.SITES_REACHABLE]
        assert row.status == "False" and row.reason == "SiteUnreachable"
        assert row.message.startswith("site site-a unreachable since ") and row.message.endswith(" (edge1)")
        assert "; site site-a unreachable since " in status.message
        worker = status.worker("edge1")
        assert worker is not None and worker.state.value != "Offline"  # its last state, not a last will
        unreachable = [e for e in watch.events if e.reason == "SiteUnreachable"]
        assert len(unreachable) == 1 and unreachable[0].type == "Warning"
        assert unreachable[0].message.startswith("site site-a unreachable since ")

        bed.wan["site-a"].restore()
        bed.wait_bridge("site-a", up=True, timeout=30)
        watch.wait(lambda w: site_a(w.status) is True, 30, "site-a shown reachable again")
        final = watch.wait_finished(120)

        job.assert_rounds(final)
        job.assert_fedavg(final)
        reasons = [e.reason for e in watch.events if e.reason.startswith("Site")]
        assert reasons == ["SiteUnreachable", "SiteReachable"], reasons
        [row] = [c for c in final.conditions if c.type is ConditionType.SITES_REACHABLE]
        assert row.status == "True"
        bed.assert_nothing_dropped()
    finally:
        watch.__exit__(None, None, None)

"""What the site bridges carry and what they refuse, on the real three-broker bed (tests/helpers/sites.py):

- a plan and a global model published on the cloud while a site is away (its WAN cut, or its broker
  stopped) reach an edge of that site once it is back, and stay retained on the site broker;
- an edge cannot write another edge's topics through its site broker, and a site's bridge identity cannot
  write the topics of edges that are not its site's on the cloud broker (a compromised site broker);
- the site's bridge announces itself on the site broker too.
"""

from __future__ import annotations

import dataclasses
import queue
import re

import pytest

from broker import Inbound, Session
from flctl.provision import SiteProvisioned
from schemas import NodeState, NodeStatus
from tests.helpers.mqtt import take
from tests.helpers.sites import CLOUD, SiteBed

pytestmark = [pytest.mark.sites, pytest.mark.timeout(120)]

JOB = "early"
TRANSFER = "0123abcd"


def _bridge_password(site: SiteProvisioned) -> str:
    """The bridge's password on the cloud broker, as the site's mosquitto.conf holds it (0600)."""
    found = re.search(r"^remote_password (\S+)$", site.conf_path.read_text(), re.MULTILINE)
    assert found, "no remote_password in the site's mosquitto.conf"
    return found[1]


def _fresh(bed: SiteBed, where: str, identity: str, *filters: str) -> tuple[Session, queue.Queue[Inbound]]:
    """A clean-start session: a new subscription, so the broker sends what it retains."""
    inbox: queue.Queue[Inbound] = queue.Queue()
    settings = dataclasses.replace(bed.settings(where, identity), clean_start=True, session_expiry=0)
    session = Session(settings, inbox=inbox)
    for flt in filters:
        session.subscribe(flt)
    session.start()
    assert session.wait_connected(10.0), f"{identity} did not connect to {where}"
    return session, inbox


def test_retained_plan_and_global_reach_edges_of_sites_that_were_away(site_bed: SiteBed) -> None:
    bed, t = site_bed, site_bed.topics
    bed.wan["site-a"].cut()
    bed.wait_bridge("site-a", up=False)
    bed.cluster.stop_site_broker("site-b")
    bed.wait_bridge("site-b", up=False)  # the bridge's last will on the cloud

    published = {
        t.plan(JOB): b'{"plan": "published while both sites were away"}',
        t.global_manifest(JOB, 0): b'{"manifest": "round 0"}',
        t.global_chunk(JOB, 0, 0): b"\x00\x01 the first chunk",
    }
    aggregator, _ = bed.session(CLOUD, "cloud0")
    try:
        for topic, payload in published.items():
            aggregator.publish(topic, payload, qos=1, retain=True).wait(5.0)
    finally:
        aggregator.stop(timeout=2.0)

    bed.wan["site-a"].restore()
    bed.cluster.start_site_broker("site-b")
    for site, edge in (("site-a", "edge1"), ("site-b", "edge2")):
        bed.wait_bridge(site, up=True)
        # The edge connects once the bridge is up: what the cloud retained arrives over the bridge...
        session, inbox = bed.session(site, edge, t.all_plans(), t.job_globals(JOB))
        try:
            got = {m.topic: m.payload for m in take(inbox, len(published), timeout=15.0)}
        finally:
            session.stop(timeout=2.0)
        assert got == published, site
        # ...and stays retained on the site broker: a new subscription gets it as retained.
        session, inbox = _fresh(bed, site, edge, t.all_plans(), t.job_globals(JOB))
        try:
            again = take(inbox, len(published), timeout=10.0)
        finally:
            session.stop(timeout=2.0)
        assert {m.topic: m.payload for m in again} == published and all(m.retain for m in again), site
    bed.assert_nothing_dropped()


def _forged(bed: SiteBed, victim: str) -> list[tuple[str, bytes]]:
    """Messages in `victim`'s name, and a plan (which only the aggregator writes)."""
    t = bed.topics
    forged_status = NodeStatus(node=victim, role="edge", state=NodeState.OFFLINE).to_json()
    return [
        (t.update_manifest(JOB, 1, victim, TRANSFER), b'{"forged": true}'),
        (t.worker_status(JOB, victim), b'{"forged": true}'),
        (t.node_status(victim), forged_status),
        (t.plan(JOB), b'{"forged": true}'),
    ]


def _only_own_arrives(bed: SiteBed, publisher: Session, own: str) -> None:
    """Publish the forged messages, then one of `own` (edge1's): on the cloud, the aggregator sees edge1's
    (so the path works) and, before it on the same bridge, none of the forged ones."""
    t = bed.topics
    watcher, inbox = bed.session(CLOUD, "cloud0", t.everything())
    try:
        for topic, payload in _forged(bed, "edge2"):
            publisher.publish(topic, payload, qos=1)
        publisher.publish(t.update_manifest(JOB, 1, own, TRANSFER), b'{"own": true}', qos=1).wait(5.0)
        seen: list[str] = []
        while t.update_manifest(JOB, 1, own, TRANSFER) not in seen:
            msg = take(inbox, 1, timeout=15.0)[0]
            watcher.ack(msg)
            if not msg.retain:
                seen.append(msg.topic)
    finally:
        watcher.stop(timeout=2.0)
    forged_topics = {topic for topic, _ in _forged(bed, "edge2")}
    assert not forged_topics & set(seen), seen


def test_an_edge_cannot_write_another_edges_topics_through_its_site(site_bed: SiteBed) -> None:
    # edge1 reads plans on its own broker: a forged plan the site broker accepted would come back to it.
    edge1, inbox = site_bed.session("site-a", "edge1", site_bed.topics.all_plans())
    try:
        _only_own_arrives(site_bed, edge1, "edge1")
        plans = [m.topic for m in _drain(inbox)]
    finally:
        edge1.stop(timeout=2.0)
    assert plans == [], f"the site broker accepted a plan from an edge: {plans}"
    site_bed.assert_nothing_dropped()


def _drain(inbox: queue.Queue[Inbound]) -> list[Inbound]:
    got = []
    while not inbox.empty():
        got.append(inbox.get_nowait())
    return got


def test_a_sites_bridge_identity_writes_only_its_own_edges_topics_on_the_cloud(site_bed: SiteBed) -> None:
    """As if site-a's broker were compromised: its bridge identity, used directly on the cloud broker."""
    bed = site_bed
    site = bed.cluster.site_provisioned["site-a"]
    bed.wan["site-a"].cut()  # the real bridge stays away meanwhile (same client id)
    bed.wait_bridge("site-a", up=False)
    settings = dataclasses.replace(
        bed.settings(CLOUD, "monitor"),
        client_id=site.bridge_user,
        username=site.bridge_user,
        password=_bridge_password(site),
        clean_start=True,
        session_expiry=0,
    )
    rogue = Session(settings, inbox=queue.Queue())
    rogue.start()
    try:
        assert rogue.wait_connected(10.0), "the bridge identity could not log in to the cloud broker"
        _only_own_arrives(bed, rogue, "edge1")
    finally:
        rogue.stop(timeout=2.0)
    bed.wan["site-a"].restore()
    bed.wait_bridge("site-a", up=True)


def test_the_bridge_announces_itself_on_the_site_broker(site_bed: SiteBed) -> None:
    for site in site_bed.sites:
        site_bed.wait_bridge(site, up=True, where=site, timeout=10.0)

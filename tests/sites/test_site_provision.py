"""`flctl site add`: what it writes for the site and the cloud, what it refuses, and that a site written by it
and started as a user starts it (`mosquitto -c DIR/broker/mosquitto.conf`) bridges to a running cloud broker
that the command reloaded; `flctl site sync` after an edge was added to a site."""

from __future__ import annotations

import queue
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from broker import Inbound, Session
from broker.mosquitto import find_mosquitto
from flctl import cli as flctl_cli
from flctl.cluster import LocalCluster
from flctl.provision import QueueLimits, bridge_topics
from schemas import Topics
from tests.helpers.mqtt import free_port, take
from tests.helpers.sites import CLOUD, SiteBed

pytestmark = [pytest.mark.sites, pytest.mark.timeout(60)]


def _init_cloud(tmp_path: Path) -> Path:
    cloud = tmp_path / "cloud"
    args = ["broker", "init", "--nodes", "cloud0", "--hostname", "cloud.example.com", "--out", str(cloud)]
    assert flctl_cli.main(args) == 0
    return cloud


def _site_add(tmp_path: Path, site: str, nodes: str, *extra: str) -> int:
    where = ["--cloud-dir", str(tmp_path / "cloud"), "--out", str(tmp_path / site), "--hostname", f"{site}-gw"]
    return flctl_cli.main(["site", "add", site, "--nodes", nodes, *where, *extra])


def test_site_add_writes_the_site_and_registers_its_bridge_on_the_cloud(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud = _init_cloud(tmp_path)
    capsys.readouterr()
    assert (
        _site_add(tmp_path, "site-a", "edge3,edge4", "--max-outage", "240", "--message-rate", "50", "--no-reload") == 0
    )
    printed = capsys.readouterr().out
    site = tmp_path / "site-a"
    conf = (site / "broker" / "mosquitto.conf").read_text()
    password = re.search(r"^remote_password (\S+)$", conf, re.MULTILINE)
    assert password and password[1] not in printed
    # The bridge: TLS to the cloud with the cloud's CA, its own identity, a durable session, the contract's
    # notification topic, one direction per line, and the queue sized for 240 min x 50 msg/min x 1.5.
    for line in (
        "connection cloud",
        "address cloud.example.com:8883",
        "remote_username site-site-a",
        "cleansession false",
        f"notification_topic {Topics().site_bridge('site-a')}",
        f"bridge_cafile {site / 'broker' / 'cloud-ca.crt'}",
        "max_queued_messages 18000",
        f"max_queued_bytes {18000 * 512 * 1024}",
        "allow_anonymous false",
    ):
        assert line in conf.splitlines(), line
    assert not re.search(r"^topic \S+ both", conf, re.MULTILINE)
    assert (site / "broker" / "cloud-ca.crt").read_bytes() == (cloud / "broker" / "ca.crt").read_bytes()
    assert (site / "broker" / "ca.crt").read_bytes() != (cloud / "broker" / "ca.crt").read_bytes()
    for secret in ("broker/mosquitto.conf", "broker/passwd", "broker/acl", "broker/server.key", "ca/ca.key"):
        assert stat.S_IMODE((site / secret).stat().st_mode) == 0o600, secret
    assert stat.S_IMODE(site.stat().st_mode) == 0o700
    # Each edge: the site broker's address, `site:`, its own password on the site broker only.
    passwd = (site / "broker" / "passwd").read_text()
    for edge in ("edge3", "edge4"):
        node = yaml.safe_load((site / "nodes" / edge / "node.yaml").read_text())
        assert (node["node"], node["role"], node["site"], node["broker"]) == (
            edge,
            "edge",
            "site-a",
            {"host": "site-a-gw", "port": 8883},
        )
        assert passwd.count(f"{edge}:$7$") == 1
        assert f"{edge}:" not in (cloud / "broker" / "passwd").read_text()
    # The same per-node patterns as the cloud's ACL, so an edge sees no difference.
    cloud_acl = (cloud / "broker" / "acl").read_text()
    patterns = [line for line in cloud_acl.splitlines() if line.startswith("pattern ")]
    assert patterns and all(line in (site / "broker" / "acl").read_text().splitlines() for line in patterns)
    # The cloud: one passwd line for the bridge, one block naming exactly edge3 and edge4.
    assert (cloud / "broker" / "passwd").read_text().count("site-site-a:$7$") == 1
    block = cloud_acl.split("user site-site-a\n", 1)[1].split("\n\n", 1)[0].splitlines()
    named = {name for line in block for name in re.findall(r"edge\d+", line)}
    assert named == {"edge3", "edge4"}, block
    assert "topic write fl/sites/site-a/bridge" in block
    assert not any(line.startswith("topic") and line.endswith(" fl/#") for line in block)


def test_site_add_refuses_names_taken_and_replaces_its_own_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud = _init_cloud(tmp_path)
    assert _site_add(tmp_path, "site-a", "edge3", "--no-reload") == 0
    capsys.readouterr()
    assert _site_add(tmp_path, "site-b", "edge3", "--no-reload") == 1
    assert "edge3: already an edge of site site-a" in capsys.readouterr().err
    assert _site_add(tmp_path, "site-b", "cloud0", "--no-reload") == 1
    assert "cloud0: already an identity of the cloud broker" in capsys.readouterr().err
    assert not (tmp_path / "site-b").exists(), "a refused site wrote files"
    assert _site_add(tmp_path, "site-a", "edge3", "--no-reload") == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert _site_add(tmp_path, "Site_A", "edge9", "--no-reload") == 2
    assert "not a valid name" in capsys.readouterr().err
    # Again with --force and one more edge: still one bridge user and one block, now naming both.
    assert _site_add(tmp_path, "site-a", "edge3,edge5", "--force", "--no-reload") == 0
    acl = (cloud / "broker" / "acl").read_text()
    assert acl.count("user site-site-a\n") == 1 and "edges: edge3,edge5" in acl
    assert (cloud / "broker" / "passwd").read_text().count("site-site-a:") == 1


def test_queue_limits_follow_the_documented_arithmetic() -> None:
    assert QueueLimits.for_outage(240, 50, 512) == QueueLimits(18000, 18000 * 512 * 1024)
    # never below the cloud broker's defaults (10000 messages, 1 GiB)
    assert QueueLimits.for_outage(1, 1, 1) == QueueLimits(10000, 1024**3)


def test_bridge_topics_never_go_both_ways_except_the_bundles() -> None:
    t = Topics()
    lines = bridge_topics(t, ["edge3", "edge4"])
    outs = {b.pattern for b in lines if b.direction == "out"}
    ins = {b.pattern for b in lines if b.direction == "in"}
    assert not outs & ins
    assert t.all_plans() in ins and t.all_globals() in ins and t.acks_for("edge3") in ins
    assert t.updates_of("edge4") in outs and t.node_status("edge3") in outs and t.all_updates() not in outs


@pytest.mark.skipif(find_mosquitto() is None, reason="needs the mosquitto binary")
def test_a_site_added_to_a_running_cloud_broker_bridges_to_it(tmp_path: Path) -> None:
    """The cloud broker runs; `flctl site add` writes the site and reloads the cloud broker (its pid file);
    `mosquitto -c site-a/broker/mosquitto.conf` then logs in as the new bridge user and says "1"."""
    with LocalCluster(tmp_path, secure=True, nodes=["cloud0"]) as cluster:
        cluster.start_broker()
        inbox: queue.Queue[Inbound] = queue.Queue()
        watcher = Session(cluster.settings("monitor"), inbox=inbox)
        watcher.subscribe(Topics().all_site_bridges())
        watcher.start()
        site_out = tmp_path / "site-a"
        args = ["--cloud-address", f"127.0.0.1:{cluster.port}", "--port", str(free_port())]
        args += ["--plain-port", str(free_port()), "--bind", "127.0.0.1", "--restart-timeout", "1,2"]
        code = flctl_cli.main(
            [
                "site",
                "add",
                "site-a",
                "--nodes",
                "edge3",
                "--cloud-dir",
                str(tmp_path / "secrets"),
                "--out",
                str(site_out),
                *args,
            ]
        )
        assert code == 0  # reloaded through the cloud broker's pid file
        log = (tmp_path / "site-a.log").open("wb")
        site = subprocess.Popen(
            [find_mosquitto() or "mosquitto", "-c", str(site_out / "broker" / "mosquitto.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            assert watcher.wait_connected(10.0)
            state = take(inbox, 1, timeout=15.0)[0]
            assert (state.topic, state.payload) == ("fl/sites/site-a/bridge", b"1"), (
                tmp_path / "site-a.log"
            ).read_text()
        finally:
            site.terminate()
            site.wait(10)
            log.close()
            watcher.stop(timeout=2.0)
        assert cluster.broker is not None
        assert " as site-site-a " in cluster.broker.log_text()


def test_an_edge_added_to_a_site_reaches_the_cloud_after_site_sync(site_bed: SiteBed, tmp_path: Path) -> None:
    """`flctl node add edge4 --role edge --site site-a -d SITE_DIR` (the site broker reloads its passwd), then
    `flctl site sync` (the bridge's topics and the cloud block name edge4; the cloud reloads its ACL), then the
    site broker restarts from its file: edge4's update reaches the aggregator's identity on the cloud."""
    bed, t = site_bed, site_bed.topics
    site_dir = bed.cluster.site_provisioned["site-a"].out
    cloud_dir = tmp_path / "secrets"
    assert flctl_cli.main(["node", "add", "edge4", "--role", "edge", "--site", "site-a", "-d", str(site_dir)]) == 0
    assert "edges: edge1,edge4" not in (cloud_dir / "broker" / "acl").read_text()
    args = ["site", "sync", "site-a", "--site-dir", str(site_dir), "--cloud-dir", str(cloud_dir)]
    assert flctl_cli.main(args) == 0
    assert "edges: edge1,edge4" in (cloud_dir / "broker" / "acl").read_text()
    conf = (site_dir / "broker" / "mosquitto.conf").read_text()
    assert f"topic {t.updates_of('edge4')} out 1" in conf and f"topic {t.acks_for('edge4')} in 1" in conf

    bed.cluster.stop_site_broker("site-a")  # bridges are not reloaded on SIGHUP: restart from the file
    bed.wait_bridge("site-a", up=False)
    log = (tmp_path / "site-a-restarted.log").open("wb")
    site = subprocess.Popen(
        [find_mosquitto() or "mosquitto", "-c", str(site_dir / "broker" / "mosquitto.conf")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        bed.wait_bridge("site-a", up=True)
        watcher, inbox = bed.session(CLOUD, "cloud0", t.updates_of("edge4"))
        edge4, _ = bed.session("site-a", "edge4")
        try:
            topic = t.update_manifest("sync-job", 1, "edge4", "0123abcd")
            edge4.publish(topic, b'{"edge4": "added"}', qos=1).wait(5.0)
            got = take(inbox, 1, timeout=15.0)[0]
            assert (got.topic, got.payload) == (topic, b'{"edge4": "added"}')
        finally:
            edge4.stop(timeout=2.0)
            watcher.stop(timeout=2.0)
    finally:
        site.terminate()
        site.wait(10)
        log.close()

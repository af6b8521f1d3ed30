"""The bridged test bed: a cloud broker and site brokers, real Mosquitto processes, provisioned the way
`flctl broker init` + `flctl site add` do (TLS everywhere, per-node passwords and ACLs), each site's bridge
reaching the cloud broker through its own `FlakyProxy` (the site's WAN link: cut it, blackhole it, restore it).

    bed = SiteBed(tmp_path, {"site-a": ["edge1"], "site-b": ["edge2"]})   # cloud node: cloud0
    bed.start()                         # provisions, starts the three brokers, waits until both bridges are up
    bed.cluster.start_node("cloud0", "aggregator")        # on the cloud broker
    bed.cluster.start_node("edge1", "edge")               # on site-a's broker (its node.yaml says so)
    bed.wan["site-a"].cut(); bed.wait_bridge("site-a", up=False)
    bed.assert_nothing_dropped()        # $SYS/broker/publish/messages/dropped is 0 on every broker
    bed.stop()

The bed: `settings(where, identity)` / `session(where, identity, *filters)` for any identity on any broker
(`where` is CLOUD or a site; cloud identities: cloud0, admin, monitor; a site's: its edges and monitor;
the bed's own checks hold `bed-watch` on every broker),
`wait_bridge(site, up=, where=)` (the bridge's notification topic), `dropped(where)`, `dropped_counts()`,
`assert_nothing_dropped()`, `broker_logs()`, `wan[site]` (the `FlakyProxy`: `cut`, `blackhole`, `restore`).
`bed.cluster` is a secure `flctl.cluster.LocalCluster` with sites: `start_node` (an edge of a site connects
to its site broker), `flctl_args()` (the cloud admin), `wait_for_job`, `start_site_broker(site)` /
`stop_site_broker(site, hard=)`, `site_of(node)`, `site_brokers[site]` (its `LocalBroker`) and
`site_provisioned[site]` (`out`, `configs`, `broker_config`, `bridge_user`, `tls_port`). Bridges use a 5 s
keepalive and a 1-2 s reconnect backoff; every broker publishes $SYS every second. Every wait is bounded.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from broker import Inbound, MqttSettings, Session, load_node_config
from flctl.cluster import LocalCluster
from schemas import Topics
from tests.helpers.proxy import FlakyProxy

DROPPED = "$SYS/broker/publish/messages/dropped"
# Mosquitto 2.0 publishes a $SYS counter only when it changes (the last value stays retained) but the
# uptime every sys_interval: an uptime message that is not a retained copy proves a $SYS cycle ran
# after the subscription, so the dropped value seen by then is current.
UPTIME = "$SYS/broker/uptime"
CLOUD = "cloud"
# The bed's own monitor identity on every broker (its checks keep one session each for the bed's life); the
# cluster's `monitor` stays free for `cluster.watch` and `wait_for_job`, which connect and go.
WATCHER = "bed-watch"
# Test timings: a dead WAN is noticed within seconds (keepalive 5 s, Mosquitto's minimum) and the
# bridge retries every 1-2 s; $SYS every second.
BRIDGE_OPTIONS: dict[str, object] = {"keepalive": 5, "restart_timeout": (1, 2)}
BROKER_OPTIONS: dict[str, object] = {"sys_interval": 1, "autosave_interval": 1}


class SiteBed:
    """A cloud broker (nodes `cloud`, admin, monitor) and one bridged site broker per entry of `sites`."""

    def __init__(
        self,
        root: Path,
        sites: Mapping[str, Sequence[str]],
        *,
        cloud: Sequence[str] = ("cloud0",),
        env: Mapping[str, str] | None = None,
        site_options: Mapping[str, object] | None = None,
        site_aggregators: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.root = root
        self.sites = {site: list(edges) for site, edges in sites.items()}
        self.topics = Topics()
        self.wan: dict[str, FlakyProxy] = {}
        self._watches: dict[str, _BrokerWatch] = {}
        self.cluster = LocalCluster(
            root,
            secure=True,
            nodes=list(cloud),
            sites=self.sites,
            wan=self._wan_link,
            site_options={**BRIDGE_OPTIONS, **(site_options or {})},
            site_aggregators=site_aggregators,
            broker_config=dict(BROKER_OPTIONS),
            monitors=[WATCHER],
            env=dict(env or {}),
        )

    def _wan_link(self, site: str, cloud_port: int) -> int:
        self.wan[site] = FlakyProxy(cloud_port)
        return self.wan[site].port

    # -- life cycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> SiteBed:
        """Provision, start the cloud broker and the site brokers ($SYS and autosave every second), and wait until every bridge says "1" on the cloud broker."""
        self.cluster.start_broker()
        for where in [CLOUD, *self.sites]:
            self._watches[where] = _BrokerWatch(self.settings(where, WATCHER), where, self.topics)
        for site in self.sites:
            self.wait_bridge(site, up=True, timeout=timeout)
        return self

    def stop(self) -> None:
        """Stop every service and broker, then close the WAN links."""
        for watch in self._watches.values():
            watch.stop()
        self._watches.clear()
        try:
            self.cluster.stop()
        finally:
            for proxy in self.wan.values():
                proxy.close()

    def __enter__(self) -> SiteBed:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- sessions ----------------------------------------------------------------------------------

    def settings(self, where: str, identity: str, client_id: str | None = None) -> MqttSettings:
        """Settings for `identity` (a node, `admin` or `monitor`) on broker `where`: CLOUD or a site's name."""
        if where == CLOUD:
            return self.cluster.settings(identity)
        done = self.cluster.site_provisioned[where]
        # An edge added later (`flctl node add ... --site`) has its node.yaml beside the provisioned ones.
        config = done.configs.get(identity, done.out / "nodes" / identity / "node.yaml")
        values = load_node_config(config).mqtt_values()
        values.update(host="127.0.0.1", port=done.tls_port)
        return MqttSettings(client_id=client_id or identity, **values)

    def session(self, where: str, identity: str, *filters: str) -> tuple[Session, queue.Queue[Inbound]]:
        """A started, connected session as `identity` on `where`, subscribed to `filters` (stop it yourself)."""
        inbox: queue.Queue[Inbound] = queue.Queue()
        session = Session(self.settings(where, identity), inbox=inbox)
        for flt in filters:
            session.subscribe(flt)
        session.start()
        if not session.wait_connected(10.0):
            session.stop(timeout=2.0)
            raise AssertionError(f"{identity} could not connect to the {where} broker within 10 s")
        return session, inbox

    # -- observations ------------------------------------------------------------------------------

    def wait_bridge(self, site: str, *, up: bool, timeout: float = 30.0, where: str = CLOUD) -> None:
        """Until site `site`'s bridge notification on `where` (the cloud by default) says "1" (`up`) or "0"."""
        self._watch(where).wait_bridge(site, b"1" if up else b"0", timeout)

    def dropped(self, where: str, timeout: float = 10.0) -> int:
        """The highest `$SYS/broker/publish/messages/dropped` broker `where` (CLOUD or a site) published since
        the bed started (a restarted broker counts from 0 again), as of a $SYS cycle after this call began."""
        return self._watch(where).dropped(timeout)

    def dropped_counts(self) -> dict[str, int]:
        """The dropped counter of every broker: {"cloud": n, "<site>": n, ...}."""
        return {where: self.dropped(where) for where in [CLOUD, *self.sites]}

    def assert_nothing_dropped(self) -> None:
        counts = self.dropped_counts()
        assert set(counts.values()) == {0}, f"a broker dropped messages: {counts}"
        for where, log in self.broker_logs().items():
            assert "being dropped" not in log, f"{where}: {log[-2000:]}"

    def _watch(self, where: str) -> _BrokerWatch:
        watch = self._watches.get(where)
        if watch is None:
            raise AssertionError(f"no broker {where!r} in the bed (cloud, {', '.join(self.sites)}); start() it first")
        return watch

    def broker_logs(self) -> dict[str, str]:
        logs = {CLOUD: self.cluster.broker.log_text() if self.cluster.broker else ""}
        logs.update({site: broker.log_text() for site, broker in self.cluster.site_brokers.items()})
        return logs


class _BrokerWatch:
    """The bed's one monitor session on one broker, for the bed's whole life (one identity is one client id, so
    the bed's checks share it): the bridges' notifications and the $SYS dropped counter as they are published.

    Why for the whole life: Mosquitto 2.0 publishes a $SYS counter only when it changes, retained, and its $SYS
    messages expire after a minute, so a subscriber that comes later than that gets no value at all. Watching
    from the start sees every value, a restarted broker's too (the session reconnects and subscribes again)."""

    def __init__(self, settings: MqttSettings, where: str, topics: Topics) -> None:
        self.where = where
        self._inbox: queue.Queue[Inbound] = queue.Queue()
        self._session = Session(settings, inbox=self._inbox)
        self._changed = threading.Condition()
        self._bridges: dict[str, bytes] = {}
        self._highest: int | None = None
        self._cycles = 0  # uptime messages that were not retained copies: $SYS cycles seen running
        self._stopping = threading.Event()
        for flt in (DROPPED, UPTIME, topics.all_site_bridges()):
            self._session.subscribe(flt)
        self._topics = topics
        self._thread = threading.Thread(target=self._run, name=f"bed-watch-{where}", daemon=True)
        self._session.start()
        self._thread.start()
        if not self._session.wait_connected(10.0):
            self.stop()
            raise AssertionError(f"the monitor could not connect to the {where} broker within 10 s")

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                msg = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._changed:
                if msg.topic == DROPPED:
                    value = int(msg.payload)
                    self._highest = value if self._highest is None else max(self._highest, value)
                elif msg.topic == UPTIME:
                    self._cycles += 0 if msg.retain else 1
                else:
                    self._bridges[str(self._topics.parse(msg.topic).name)] = msg.payload
                self._changed.notify_all()
            self._session.ack(msg)

    def wait_bridge(self, site: str, want: bytes, timeout: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self._bridges.get(site) == want, timeout):
                raise AssertionError(
                    f"site {site}'s bridge not {'up' if want == b'1' else 'down'} on {self.where} within {timeout} s "
                    f"(last: {self._bridges.get(site)!r})"
                )

    def dropped(self, timeout: float) -> int:
        """The highest value seen, once two more $SYS cycles ran (whatever order a cycle publishes in, one whole
        cycle then began after this call)."""
        with self._changed:
            target = self._cycles + 2
            if not self._changed.wait_for(lambda: self._cycles >= target, timeout):
                raise AssertionError(f"no fresh $SYS cycle from the {self.where} broker within {timeout} s")
            if self._highest is None:
                raise AssertionError(f"the {self.where} broker published no dropped counter since the bed started")
            return self._highest

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5.0)
        self._session.stop(timeout=2.0)

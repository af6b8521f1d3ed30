"""`flctl site add`: a factory site's broker, bridged to the cloud broker of an existing deployment.

    DIR/broker/mosquitto.conf   the site broker: TLS for the site's edges, a loopback plain listener, the
                                same per-node ACL patterns as the cloud, queue limits sized for the longest
                                outage, and a `connection` section (the bridge) to the cloud broker
    DIR/broker/passwd, acl      the site's edges and monitor
    DIR/broker/ca.crt, server.crt, server.key    the site's own CA (DIR/ca/ca.key: keep it offline)
    DIR/broker/cloud-ca.crt     the cloud deployment's CA: the bridge checks the cloud broker with it
    DIR/nodes/<edge>/node.yaml  each edge's config: the site broker's address, `site: SITE`
    DIR/monitor/<name>/         the site broker's monitoring identity

and on the cloud side (CLOUD/broker/passwd and acl, rewritten in place, 0600): the bridge user
`site-<SITE>` with its password hash, and an ACL block naming exactly this site's edges. The cloud broker
reads both on SIGHUP.

The site gets its own CA rather than the cloud's: provisioning a site never needs the cloud CA's key
(which stays offline), and a site's CA can only vouch for that site's broker.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from broker import BrokerAddress, NodeConfig, NodeTls, load_node_config
from broker.mosquitto import Bridge, BridgeTopic, BrokerConfig, render_config
from flctl._errors import InputError, UsageError
from flctl.provision._acl import render_acl
from flctl.provision._cloud_site import bridge_user, install_site_on_cloud, site_acl_block
from flctl.provision._deployment import (
    DEFAULT_PLAIN_PORT,
    DEFAULT_TLS_PORT,
    BrokerFolder,
    _names,
    _write_mosquitto_sub_options,
    secured_broker,
)
from flctl.provision._files import PUBLIC, SECRET, mkdir, write, write_passwd
from flctl.provision._pki import CertificateAuthority
from schemas import AclPattern, Topics, check_name

# Sizing the bridge queue (docs/operations.md, "Per-site brokers"): what the site sends during the longest
# outage, with headroom, never below the cloud broker's own defaults.
DEFAULT_MAX_OUTAGE_MIN = 60
DEFAULT_MESSAGE_RATE = 20  # messages a minute from the whole site to the cloud (chunks, manifests, statuses)
DEFAULT_MESSAGE_KIB = 512  # a queued message is at most one chunk (the services' default chunk size)
QUEUE_HEADROOM = 1.5  # resends after an outage and statuses come on top of the steady rate
MIN_QUEUE_MESSAGES = 10000  # the cloud broker's default max_queued_messages
MIN_QUEUE_BYTES = 1024 * 1024 * 1024  # and its default max_queued_bytes
_LAYOUT = ("broker", "ca", "nodes", "monitor")


@dataclass(frozen=True)
class QueueLimits:
    """The site broker's max_queued_messages / max_queued_bytes (they bound the bridge's queue too)."""

    messages: int
    bytes: int

    @classmethod
    def for_outage(
        cls, minutes: float, rate: float = DEFAULT_MESSAGE_RATE, message_kib: int = DEFAULT_MESSAGE_KIB
    ) -> QueueLimits:
        """Enough for `minutes` of the site's traffic at `rate` messages a minute of up to `message_kib` KiB:
        messages = ceil(minutes x rate x 1.5), bytes = messages x message_kib KiB, at least the cloud's defaults."""
        if minutes <= 0 or rate <= 0 or message_kib <= 0:
            raise UsageError("--max-outage, --message-rate and --message-kib must be > 0")
        expected = math.ceil(minutes * rate * QUEUE_HEADROOM)
        return cls(max(MIN_QUEUE_MESSAGES, expected), max(MIN_QUEUE_BYTES, expected * message_kib * 1024))


@dataclass(frozen=True)
class SiteProvisioned(BrokerFolder):
    """What `provision_site` wrote (no secrets)."""

    out: Path
    site: str
    broker_config: BrokerConfig
    edges: list[str]
    configs: dict[str, Path] = field(default_factory=dict)  # edge or monitor -> its node.yaml
    cloud_passwd: Path | None = None
    cloud_acl: Path | None = None
    aggregators: list[str] = field(default_factory=list)  # the site aggregators (hierarchical jobs)

    @property
    def bridge_user(self) -> str:
        return bridge_user(self.site)


def bridge_topics(topics: Topics, edges: Sequence[str]) -> tuple[BridgeTopic, ...]:
    """What the bridge carries: `out` what the site's edges publish (each named, so a site forwards only its
    own edges' topics), `in` what they read. Secure aggregation's bundles are the one filter in both lists
    (`shares/+` in, `shares/<edge>` out): a 3.1.1 bridge with try_private never gets its own message back.
    Not bridged: node requests/replies (their MQTT 5 properties do not cross) and the clients' sync topics
    (each process's barrier checks the broker it talks to)."""
    out: list[BridgeTopic] = []
    inbound = [
        BridgeTopic(topics.all_plans(), "in"),
        BridgeTopic(topics.all_globals(), "in"),
        BridgeTopic(topics.all_secagg_states(), "in"),
        BridgeTopic(topics.all_secagg_shares(), "in"),
    ]
    for edge in edges:
        out += [
            BridgeTopic(topics.updates_of(edge), "out"),
            BridgeTopic(topics.worker_statuses_of(edge), "out"),
            BridgeTopic(topics.node_status(edge), "out"),
            *(BridgeTopic(topics.secagg_writes(step, edge), "out") for step in ("keys", "shares", "unmask")),
        ]
        inbound.append(BridgeTopic(topics.acks_for(edge), "in"))
    return (*out, *inbound)


def _cloud_address(cloud_dir: Path, address: str | None) -> tuple[str, int]:
    """The cloud broker as the site reaches it: `address` (HOST[:PORT]) or the admin config's broker."""
    if address is not None:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", str(DEFAULT_TLS_PORT))
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise UsageError(f"--cloud-address {address!r}: expected HOST[:PORT] with PORT in 1..65535")
        return host, int(port)
    admin = cloud_dir / "admin" / "flctl.yaml"
    try:
        cfg = load_node_config(admin)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"--cloud-dir {cloud_dir}: cannot read the cloud broker's address from {admin}: {exc}"
        ) from exc
    return cfg.broker.host, cfg.broker.port


def _check_out(out: Path, *, force: bool) -> None:
    """InputError when `out` is a file, or holds something and `force` is not given."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out.absolute()} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise InputError(
            f"--out {out.absolute()} already exists and is not empty: refusing to overwrite it (use --force)"
        )


def _prepare_out(out: Path) -> Path:
    """`out`, absolute, without the layout's folders (anything else in it stays)."""
    out = mkdir(out.absolute())
    for part in _LAYOUT:
        target = out / part
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
    return out


def provision_site(
    out: Path,
    site: str,
    nodes: Sequence[str],
    *,
    cloud_dir: Path,
    cloud_address: str | None = None,
    hostnames: Sequence[str] = (),
    port: int = DEFAULT_TLS_PORT,
    plain_port: int = DEFAULT_PLAIN_PORT,
    bind: str | None = None,
    monitors: Sequence[str] = ("monitor",),
    queue: QueueLimits | None = None,
    keepalive: int = 60,
    restart_timeout: tuple[int, int] = (5, 60),
    broker_dir: Path | None = None,
    prefix: str = "fl",
    run_as_root: bool | None = None,
    force: bool = False,
    aggregators: Sequence[str] = (),
) -> SiteProvisioned:
    """Write site `site`'s broker folder under `out` for edges `nodes`, bridged to the deployment in
    `cloud_dir` (its CA, passwd and acl; see the module docstring), and register the bridge user there.

    UsageError for bad arguments, InputError when `out` is not empty (without `force`) or `cloud_dir` is
    not a deployment folder or names one of the edges already. `aggregators`: the site's aggregator nodes
    (`fl-cloud-aggregator --site`, hierarchical jobs): bridged like the edges (their partials out, their
    acks in), on the site broker they read the edges' site-local updates and write their acks."""
    try:
        check_name(site, "site")
        t = Topics(prefix)
    except ValueError as exc:
        raise UsageError(f"site {site!r} / --prefix {prefix!r}: {exc}") from exc
    edges, people, aggs = _identities(nodes, monitors, aggregators)
    if port == plain_port:
        raise UsageError(f"--port and --plain-port are both {port}")
    cloud_dir = cloud_dir.absolute()
    cloud_ca = cloud_dir / "broker" / "ca.crt"
    if not cloud_ca.is_file():
        raise InputError(f"--cloud-dir {cloud_dir}: no broker/ca.crt (expected a `flctl broker init` folder)")
    host, cloud_port = _cloud_address(cloud_dir, cloud_address)
    queue = queue or QueueLimits.for_outage(DEFAULT_MAX_OUTAGE_MIN)

    _check_out(out, force=force)
    bridge_password = secrets.token_urlsafe(24)
    # The cloud side first: it refuses edges another site or the cloud already has, before a file is written.
    nodes = [*edges, *aggs]  # what crosses the bridge is the same for both: their own topics, by name
    cloud_passwd, cloud_acl = install_site_on_cloud(
        cloud_dir, site, nodes, bridge_password, site_acl_block(t, site, nodes)
    )
    out = _prepare_out(out)
    broker_out = mkdir(out / "broker")
    mkdir(broker_out / "data")
    installed = (broker_dir or broker_out).absolute()

    ca = CertificateAuthority(f"site {site}")
    write(mkdir(out / "ca") / "ca.key", ca.key_pem, SECRET)
    write(out / "ca" / "ca.crt", ca.cert_pem, PUBLIC)
    server_names = list(dict.fromkeys([*hostnames, "localhost", "127.0.0.1"]))
    server = ca.issue(server_names[0], server_names=server_names)
    write(broker_out / "ca.crt", ca.cert_pem, PUBLIC)
    write(broker_out / "server.crt", server.cert_pem, PUBLIC)
    write(broker_out / "server.key", server.key_pem, SECRET)
    write(broker_out / "cloud-ca.crt", cloud_ca.read_bytes(), PUBLIC)

    passwords = {name: secrets.token_urlsafe(24) for name in [*nodes, *people]}
    write_passwd(broker_out / "passwd", passwords)
    # The same ACL as the cloud's, without aggregators or admins: from an edge's point of view nothing changes;
    # plus the site's own topics of hierarchical jobs (`site_local_acl`).
    acl = render_acl([], [], prefix, monitors=people) + site_local_acl(t, site, aggs)
    write(broker_out / "acl", acl, SECRET)

    bridge = Bridge(
        "cloud",
        host,
        cloud_port,
        username=bridge_user(site),
        password=bridge_password,
        topics=bridge_topics(t, nodes),
        notification_topic=t.site_bridge(site),
        cafile=installed / "cloud-ca.crt",
        keepalive=keepalive,
        restart_timeout=restart_timeout,
    )
    cfg = dataclasses.replace(
        secured_broker(installed, plain_port, port, bind=bind, run_as_root=run_as_root),
        max_queued_messages=queue.messages,
        max_queued_bytes=queue.bytes,
        bridge=bridge,
    )
    write(broker_out / "mosquitto.conf", render_config(cfg), SECRET)

    address = BrokerAddress(host=hostnames[0] if hostnames else "localhost", port=port)
    configs = _write_identities(
        out, site, nodes, people, passwords=passwords, ca=ca, address=address, plain_port=plain_port, aggs=aggs
    )
    return SiteProvisioned(out, site, cfg, edges, configs, cloud_passwd, cloud_acl, aggs)


def _identities(
    nodes: Sequence[str], monitors: Sequence[str], aggregators: Sequence[str]
) -> tuple[list[str], list[str], list[str]]:
    """The site's edges, monitors and site aggregators, checked (UsageError): names, at least one edge, distinct."""
    edges = _names(nodes, "node")
    if not edges:
        raise UsageError("--nodes needs at least one edge name")
    people = _names(monitors, "monitor")
    aggs = _names(aggregators, "aggregator") if aggregators else []
    clash = sorted((set(edges) | set(aggs)) & set(people))
    if clash:
        raise UsageError(f"--monitor {', '.join(clash)}: already an edge name; identities must be distinct")
    both = sorted(set(edges) & set(aggs))
    if both:
        raise UsageError(f"aggregators {', '.join(both)}: already an edge name; identities must be distinct")
    return edges, people, aggs


def site_local_acl(t: Topics, site: str, aggregators: Sequence[str]) -> str:
    """The site broker's lines for hierarchical jobs' site-local topics (`Topics.site_local`): every node
    writes its own updates and reads its own acks there; each site aggregator reads every update and writes
    the acks. None of it is bridged."""
    local = t.site_local(site)
    lines = [
        "# Hierarchical jobs: an edge's updates to its site aggregator and their acks, on the site's own topics.",
        f"pattern write {local.updates_of(AclPattern.USERNAME)}",
        f"pattern read {local.acks_for(AclPattern.USERNAME)}",
        "",
    ]
    for agg in aggregators:
        lines += [
            f"# {agg}: the site aggregator of {site}: takes the edges' updates, answers them.",
            f"user {agg}",
            f"topic read {local.all_updates()}",
            f"topic write {local.all_acks()}",
            "",
        ]
    return "\n".join(lines)


def _write_identities(
    out: Path,
    site: str,
    edges: list[str],
    monitors: list[str],
    *,
    passwords: dict[str, str],
    ca: CertificateAuthority,
    address: BrokerAddress,
    plain_port: int,
    aggs: Sequence[str] = (),
) -> dict[str, Path]:
    """Each edge's DIR/nodes/<edge>/node.yaml and each monitor's DIR/monitor/<name>/, with the site's CA."""
    configs: dict[str, Path] = {}
    for name in [*edges, *monitors]:
        role: Literal["edge", "aggregator", "monitor"] = (
            "aggregator" if name in aggs else "edge" if name in edges else "monitor"
        )
        folder = mkdir(out / "nodes" / name) if role != "monitor" else mkdir(out / "monitor" / name)
        write(folder / "ca.crt", ca.cert_pem, PUBLIC)
        node_cfg = NodeConfig(
            node=name,
            role=role,
            broker=address,
            username=name,
            password=passwords[name],
            tls=NodeTls(ca="ca.crt"),
            site=site,
        )
        header = f"# {name} ({role}) at site {site}: written by `flctl site add`. Secret: keep it 0600.\n"
        file = folder / ("node.yaml" if role == "edge" else f"{name}.yaml")
        configs[name] = write(file, header + node_cfg.to_yaml(), SECRET)
        if role == "monitor":
            _write_mosquitto_sub_options(folder, name, passwords[name], plain_port)
    return configs

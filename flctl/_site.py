"""`flctl site add` and `flctl site sync`: a factory site's broker bridged to the cloud broker (the work is
`flctl.provision.provision_site` and `sync_site`).

A verb of its own rather than `flctl broker init --site`: init creates a new deployment (a new CA and
secrets for everyone), while a site joins an existing one, reading and changing the cloud deployment's
folder (its CA certificate, passwd and acl) and then reloading the cloud broker the way `flctl node` does.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from broker import port_number
from flctl._context import Context
from flctl._errors import UsageError
from flctl._node import _reload
from flctl.provision import (
    DEFAULT_PLAIN_PORT,
    DEFAULT_TLS_PORT,
    QueueLimits,
    deployment_lock,
    open_deployment,
    provision_site,
    sync_site,
)
from flctl.provision._site import DEFAULT_MAX_OUTAGE_MIN, DEFAULT_MESSAGE_KIB, DEFAULT_MESSAGE_RATE

__all__ = ["add_site_command", "run_site"]


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value

    return parse


def _backoff(text: str) -> tuple[int, int]:
    base, _, cap = text.partition(",")
    if not (base.isdigit() and cap.isdigit()) or not 1 <= int(base) <= int(cap):
        raise argparse.ArgumentTypeError(f"{text!r}: expected BASE,CAP in seconds with 1 <= BASE <= CAP, e.g. 5,60")
    return int(base), int(cap)


def add_site_command(p: argparse.ArgumentParser, handler: Callable[[Context, argparse.Namespace], int]) -> None:
    """`flctl site add` and its options (docs/operations.md, "Per-site brokers")."""
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    s = verbs.add_parser(
        "add",
        help="write a site broker bridged to the cloud broker, its edges' configs; register the bridge on the cloud",
        description="Write DIR/broker (mosquitto.conf with a bridge to the cloud broker, passwd, acl, the site's CA "
        "and server certificate, the cloud CA), DIR/nodes/<edge>/node.yaml (the site broker's address, site: SITE) "
        "and DIR/monitor/<name>/; add the bridge user site-SITE and an ACL block naming exactly these edges to "
        "CLOUD/broker/passwd and acl, and reload the cloud broker. Secrets are 0600 and never printed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  flctl site add site-a --nodes edge3,edge4 --cloud-dir ./fl-secrets "
        "--hostname site-a-gw --max-outage 240 --out ./site-a",
    )
    s.set_defaults(handler=handler)
    s.add_argument("site", metavar="SITE", help="the site's name (RFC 1123)")
    s.add_argument("--nodes", required=True, action="append", metavar="E1,E2", help="the site's edges")
    s.add_argument(
        "--cloud-dir", required=True, type=Path, metavar="DIR", help="the cloud deployment (`broker init --out`)"
    )
    s.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder to write (must not exist, or be empty)"
    )
    s.add_argument(
        "--cloud-address",
        metavar="HOST[:PORT]",
        help="where the site broker reaches the cloud broker's TLS listener (default: the cloud admin config's)",
    )
    s.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="HOST",
        help="the site broker's name or address as its edges reach it (repeatable; the first goes into node.yaml)",
    )
    s.add_argument("--port", dest="tls_port", type=port_number, default=DEFAULT_TLS_PORT, help="TLS listener port")
    s.add_argument("--plain-port", type=port_number, default=DEFAULT_PLAIN_PORT, help="loopback plain listener port")
    s.add_argument("--bind", metavar="ADDR", help="address of the TLS listener (default: every interface)")
    s.add_argument("--monitor", action="append", metavar="NAME", help="the site broker's monitoring identities")
    s.add_argument(
        "--max-outage",
        type=_positive(float),
        default=DEFAULT_MAX_OUTAGE_MIN,
        metavar="MIN",
        help=f"longest WAN outage to queue through, in minutes (default {DEFAULT_MAX_OUTAGE_MIN})",
    )
    s.add_argument(
        "--message-rate",
        type=_positive(float),
        default=DEFAULT_MESSAGE_RATE,
        metavar="N",
        help=f"messages per minute the whole site sends to the cloud (default {DEFAULT_MESSAGE_RATE})",
    )
    s.add_argument(
        "--message-kib",
        type=_positive(int),
        default=DEFAULT_MESSAGE_KIB,
        metavar="KIB",
        help=f"largest message, in KiB: the chunk size (default {DEFAULT_MESSAGE_KIB})",
    )
    s.add_argument("--queue-messages", type=_positive(int), metavar="N", help="max_queued_messages, instead of sizing")
    s.add_argument("--queue-bytes", type=_positive(int), metavar="B", help="max_queued_bytes, instead of sizing")
    s.add_argument("--keepalive", type=_positive(int), default=60, metavar="S", help="bridge keepalive (default 60)")
    s.add_argument(
        "--restart-timeout", type=_backoff, default=(5, 60), metavar="BASE,CAP", help="bridge backoff (default 5,60)"
    )
    s.add_argument("--broker-dir", type=Path, metavar="PATH", help="where DIR/broker will live on the site host")
    s.add_argument("--run-as-root", action=argparse.BooleanOptionalAction, help="write `user root` into mosquitto.conf")
    s.add_argument("--force", action="store_true", help="replace the layout in an existing DIR (new CA and secrets)")
    _reload_options(s)
    y = verbs.add_parser(
        "sync",
        help="after `flctl node add/remove` at a site: its bridge's topics and its cloud ACL block name its edges again",
        description="Read the site's edges from SITE_DIR/nodes/*/node.yaml, rewrite the bridge's topic lines in "
        "SITE_DIR/broker/mosquitto.conf and the site's block in CLOUD/broker/acl, and reload the cloud broker. "
        "Restart the site broker afterwards: Mosquitto does not reload bridges on SIGHUP.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  flctl node add edge5 --role edge --site site-a -d ./site-a\n"
        "  flctl site sync site-a --site-dir ./site-a --cloud-dir ./fl-secrets\n"
        "  systemctl restart mosquitto  # on site-a's gateway",
    )
    y.set_defaults(handler=handler)
    y.add_argument("site", metavar="SITE", help="the site's name")
    y.add_argument("--site-dir", required=True, type=Path, metavar="DIR", help="the site's folder (`site add --out`)")
    y.add_argument(
        "--cloud-dir", required=True, type=Path, metavar="DIR", help="the cloud deployment (`broker init --out`)"
    )
    _reload_options(y)


def _reload_options(s: argparse.ArgumentParser) -> None:
    """How the cloud broker is told to re-read its passwd and acl (as `flctl node` does)."""
    reload = s.add_mutually_exclusive_group()
    reload.add_argument("--broker-pid", type=int, metavar="PID", help="send SIGHUP to this cloud broker process")
    reload.add_argument("--reload-command", metavar="CMD", help="reload the cloud broker with CMD (no shell)")
    reload.add_argument(
        "--no-reload", action="store_true", help="write the files only; reload the cloud broker yourself"
    )


def _queue(args: argparse.Namespace) -> QueueLimits:
    sized = QueueLimits.for_outage(args.max_outage, args.message_rate, args.message_kib)
    return QueueLimits(args.queue_messages or sized.messages, args.queue_bytes or sized.bytes)


def run_site(ctx: Context, args: argparse.Namespace) -> int:
    if args.broker_pid is not None and args.broker_pid <= 0:
        raise UsageError(f"--broker-pid {args.broker_pid}: expected a process id (a positive number)")
    if not args.cloud_dir.is_dir():
        raise UsageError(
            f"--cloud-dir {args.cloud_dir}: not a folder (give the folder `flctl broker init --out` wrote)"
        )
    if args.verb == "sync":
        return _run_sync(ctx, args)
    queue = _queue(args)
    with deployment_lock(args.cloud_dir):
        cloud = open_deployment(args.cloud_dir, ctx.options.prefix)
        done = provision_site(
            args.out,
            args.site,
            args.nodes,
            cloud_dir=args.cloud_dir,
            cloud_address=args.cloud_address,
            hostnames=args.hostname,
            port=args.tls_port,
            plain_port=args.plain_port,
            bind=args.bind,
            monitors=args.monitor or ["monitor"],
            queue=queue,
            keepalive=args.keepalive,
            restart_timeout=args.restart_timeout,
            broker_dir=args.broker_dir,
            prefix=ctx.options.prefix,
            run_as_root=args.run_as_root,
            force=args.force,
        )
        bridge = done.broker_config.bridge
        assert bridge is not None
        ctx.say(f"wrote site {done.site}'s broker to {done.out} (secrets are 0600; none is printed):")
        ctx.say(f"  broker:  {done.conf_path}  (mosquitto -c {done.conf_path})")
        ctx.say(f"           TLS on port {done.tls_port}, plain on 127.0.0.1:{done.plain_port}, anonymous refused")
        ctx.say(
            f"  bridge:  to {bridge.host}:{bridge.port} over TLS as {done.bridge_user}; state on {bridge.notification_topic}"
        )
        ctx.say(f"  queue:   {queue.messages} messages / {queue.bytes} bytes per client (the bridge's outage queue)")
        for name, path in done.configs.items():
            ctx.say(f"  {'edge' if name in done.edges else 'monitor':<8} {name}: {path}")
        ctx.say(f"  cloud:   {done.bridge_user} added to {done.cloud_passwd} and {done.cloud_acl}")
        return _reload(ctx, cloud, args)


def _run_sync(ctx: Context, args: argparse.Namespace) -> int:
    with deployment_lock(args.cloud_dir):
        cloud = open_deployment(args.cloud_dir, ctx.options.prefix)
        done = sync_site(args.site_dir, args.site, cloud_dir=args.cloud_dir, prefix=ctx.options.prefix)
        ctx.say(f"site {done.site}: the bridge and the cloud ACL block now name {', '.join(done.edges)}")
        ctx.say(f"  bridge:  {done.conf_path}  (restart the site broker: bridges are not reloaded on SIGHUP)")
        ctx.say(f"  cloud:   {done.cloud_acl}")
        return _reload(ctx, cloud, args)

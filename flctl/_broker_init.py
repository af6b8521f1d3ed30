"""`flctl broker init`: its options and its report (the work is `flctl.provision.provision`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from broker import port_number
from flctl._context import Context
from flctl.provision import DEFAULT_PLAIN_PORT, DEFAULT_TLS_PORT, provision

__all__ = ["add_broker_init", "run_broker_init"]


def add_broker_init(p: argparse.ArgumentParser, handler: Callable[[Context, argparse.Namespace], int]) -> None:
    """`flctl broker init` and its options (docs/security.md)."""
    tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    s = tools.add_parser(
        "init",
        help="write the broker config, CA and certificates, passwords, ACL and one config per node",
        description="Write everything a secured deployment needs under --out (docs/security.md): "
        "DIR/broker/ (mosquitto.conf, passwd, acl, ca.crt, server.crt, server.key), DIR/ca/ca.key (keep it "
        "offline), DIR/nodes/<node>/ (node.yaml, ca.crt), DIR/admin/flctl.yaml, DIR/viewer/<name>.yaml, "
        "DIR/monitor/<name>/ (<name>.yaml, mosquitto_sub options). Secrets are 0600 and never printed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  flctl broker init --nodes cloud0,edge1,edge2 --hostname broker.example.com --out ./fl-secrets",
    )
    s.set_defaults(handler=handler)
    # Not the global options: --port here is the broker's TLS port, not where flctl connects.
    s.add_argument("--prefix", default=argparse.SUPPRESS, help="topic prefix the ACL is written for (default fl)")
    s.add_argument("--nodes", required=True, action="append", metavar="N1,N2", help="node names (comma-separated)")
    s.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder to write (must not exist, or be empty)"
    )
    s.add_argument(
        "--aggregators",
        action="append",
        metavar="N1,..",
        help="nodes with the aggregator role (default: the nodes whose name starts with 'cloud')",
    )
    s.add_argument(
        "--admin",
        action="append",
        metavar="NAME",
        help="the job publisher's identity (default admin; writes specs); more names (comma-separated) get "
        "DIR/admin/<name>.yaml",
    )
    s.add_argument(
        "--viewer",
        action="append",
        metavar="NAME",
        help="read-only flctl identities (get, describe, -w; comma-separated): DIR/viewer/<name>.yaml",
    )
    s.add_argument(
        "--monitor",
        action="append",
        metavar="NAME",
        help="monitoring identities that read $SYS and statuses only (default monitor): DIR/monitor/<name>/",
    )
    s.add_argument(
        "--hostname",
        action="append",
        default=[],
        metavar="HOST",
        help="the broker's name or address as nodes reach it (repeatable; the first goes into every node.yaml; "
        "the server certificate also names localhost and 127.0.0.1)",
    )
    s.add_argument(
        "--port",
        dest="tls_port",
        type=port_number,
        default=DEFAULT_TLS_PORT,
        help=f"TLS listener port (default {DEFAULT_TLS_PORT})",
    )
    s.add_argument(
        "--plain-port",
        type=port_number,
        default=DEFAULT_PLAIN_PORT,
        help=f"plain listener on 127.0.0.1, for local tools (default {DEFAULT_PLAIN_PORT})",
    )
    s.add_argument("--bind", metavar="ADDR", help="address of the TLS listener (default: every interface)")
    s.add_argument(
        "--client-certs",
        action="store_true",
        help="mutual TLS: issue each node a certificate (CN = node); the broker requires it on the TLS listener",
    )
    s.add_argument(
        "--broker-dir",
        type=Path,
        metavar="PATH",
        help="where DIR/broker will live on the broker host; mosquitto.conf names its files there "
        "(default: DIR/broker as written)",
    )
    s.add_argument(
        "--run-as-root",
        action=argparse.BooleanOptionalAction,  # None when not given: decided when the files are written
        help="write `user root` into mosquitto.conf (default: exactly when this command runs as root)",
    )
    s.add_argument(
        "--warm-worker",
        action="store_true",
        help="write `warm_worker: true` into the edges' node.yaml (their service keeps a worker with "
        "TensorFlow imported, so each round's script starts without the import)",
    )
    s.add_argument("--force", action="store_true", help="replace the layout in an existing DIR (new CA and secrets)")


def run_broker_init(ctx: Context, args: argparse.Namespace) -> int:
    done = provision(
        args.out,
        args.nodes,
        aggregators=args.aggregators,
        admins=args.admin or ["admin"],
        viewers=args.viewer or [],
        monitors=args.monitor or ["monitor"],
        hostnames=args.hostname,
        port=args.tls_port,
        plain_port=args.plain_port,
        bind=args.bind,
        client_certs=args.client_certs,
        broker_dir=args.broker_dir,
        prefix=ctx.options.prefix,
        run_as_root=args.run_as_root,
        force=args.force,
        warm_worker=args.warm_worker,
    )
    ctx.say(f"wrote a secured deployment to {done.out} (secrets are 0600; none is printed):")
    ctx.say(f"  broker:   {done.conf_path}  (mosquitto -c {done.conf_path})")
    ctx.say(f"            TLS on port {done.tls_port}, plain on 127.0.0.1:{done.plain_port}, anonymous refused")
    for name, path in done.configs.items():
        ctx.say(f"  {done.roles[name]:<9} {name}: {path}")
    ctx.say(f"  CA key:   {done.out / 'ca' / 'ca.key'}  (keep it offline; needed only to issue certificates)")
    return 0

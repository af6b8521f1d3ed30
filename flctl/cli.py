"""The `flctl` command line: kubectl's verbs for Sedna's resources, over MQTT.

`main(argv)` parses, runs one command and returns the exit code (0 ok, 1 input/not found/refused or
a watched or awaited job Failed, 2 usage, 3 broker unreachable, 4 a wait or watch timed out); it never
calls `sys.exit` itself, so tests and the demo call it in process. Global options may come before or
after the command, as with kubectl.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from broker import (
    FLCTL_ENV_PREFIX,
    ConnectionSettings,
    add_connection_options,
    connection_flags,
    node_config_from,
)
from flctl import _audit, _logs, _report
from flctl._broker_init import add_broker_init, run_broker_init
from flctl._client import BrokerOptions, default_client_id
from flctl._context import Context, session_logger
from flctl._create import create
from flctl._dataset import split, synth
from flctl._delete import delete
from flctl._errors import EXIT_USAGE, FlctlError, InputError, UsageError
from flctl._get import GetRequest, describe, get
from flctl._node import add_node_command, run_node
from flctl._site import add_site_command, run_site
from flctl._top import add_arguments as add_top_arguments
from flctl._top import top
from flctl._version import __version__
from flctl._wait import WaitRequest, wait
from flctl._wait import add_arguments as add_wait_arguments
from flctl.printers import OUTPUTS
from schemas import API_VERSION, TopicError, Topics

# Where flctl finds a node config when --config is not given: its own variable first, then the services'.
# Only flctl's own variable: a node host sets FL_NODE_CONFIG for its service, and flctl reading it would
# log in as that node and take the service's session over.
CONFIG_ENVS = (f"{FLCTL_ENV_PREFIX}CONFIG",)
# The roles whose config belongs to a service (the broker forces the client id to the username).
SERVICE_ROLES = ("edge", "aggregator")
DEFAULT_TIMEOUT = 10.0
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_TYPES_HELP = "federatedlearningjobs (fl), datasets (ds), models, nodes"

Handler = Callable[[Context, argparse.Namespace], int]

__all__ = ["broker_options", "build_parser", "main"]


# -- option types ----------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _size_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI in pixels (e.g. 40,64), got {text!r}") from None
    return lo, hi


# -- parser ----------------------------------------------------------------------------------------


def _global_options(*, with_defaults: bool, broker_timeout: bool = True) -> argparse.ArgumentParser:
    """The connection options, accepted before and after the command (defaults only at the top level).
    `wait` has kubectl's --timeout (how long to wait), so after it the broker's bound is not offered."""
    parser = argparse.ArgumentParser(add_help=False)
    d: Any = None if with_defaults else argparse.SUPPRESS
    g = parser.add_argument_group("global options (before or after the command)")
    add_connection_options(
        g,
        env_prefix=FLCTL_ENV_PREFIX,
        config_envs=CONFIG_ENVS,
        default=d,
        keepalive=False,
        credentials=True,
    )
    g.add_argument("--prefix", default=d, help="topic prefix (env FLCTL_PREFIX, default fl)")
    if broker_timeout:
        g.add_argument(
            "--timeout",
            type=_positive_float,
            default=d,
            metavar="SECONDS",
            help=f"bound on every broker wait: connect, retained read, publish ack (default {DEFAULT_TIMEOUT:g})",
        )
    g.add_argument(
        "--client-id",
        default=d,
        help="MQTT client id (default: the username when there is one, as brokers from `flctl broker init` "
        "require; else flctl-<user>-<pid>)",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if with_defaults else argparse.SUPPRESS,
        help="log the MQTT session to stderr",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(with_defaults=False)
    parser = argparse.ArgumentParser(
        prog="flctl",
        description="Manage Sedna FederatedLearningJobs, Datasets and Models over MQTT, the kubectl way.",
        parents=[_global_options(with_defaults=True)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  flctl create -f surface-defect-detection.yaml\n"
            "  flctl get fl -o wide\n"
            "  flctl get fl surface-defect-detection --watch\n"
            "  flctl top fl surface-defect-detection\n"
            "  flctl report fl surface-defect-detection -o report.html\n"
            "  flctl wait fl surface-defect-detection --for=condition=Succeeded --timeout=30m\n"
            "  flctl describe fl surface-defect-detection\n"
            "  flctl delete fl surface-defect-detection\n"
            "  flctl --host broker.example get nodes"
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, help_: str, handler: Handler, epilog: str = "", *, parent: argparse.ArgumentParser = common
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_,
            description=help_,
            parents=[parent],
            epilog=epilog or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    p = command(
        "create",
        "Validate documents and publish each, retained, on its spec topic.",
        _run_create,
        "examples:\n  flctl create -f job.yaml\n  flctl create -f jobs/ --dry-run\n  cat job.yaml | flctl create -f -",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML/JSON file, directory, or - for stdin (repeatable)",
    )
    p.add_argument(
        "--dry-run",
        nargs="?",
        const="client",
        default="none",
        choices=("none", "client", "server"),
        help="client (or no value): validate every document and print what would be created, without "
        "connecting to the broker (exit 1 when a document is invalid); server is not supported",
    )

    p = command(
        "get",
        "Show resources as a table (or JSON/YAML).",
        _run_get,
        f"types: {_TYPES_HELP}\n\nexamples:\n  flctl get fl\n  flctl get fl surface-defect-detection -o yaml\n  flctl get fl surface-defect-detection -w",
    )
    p.add_argument("type", nargs="?", metavar="TYPE", help=_TYPES_HELP)
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-o", "--output", choices=OUTPUTS, help="wide, json, yaml or name")
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="then print a row for every change, the header once (named jobs: until they finish; exit 1 if one "
        "Failed); on a terminal each watched job also gets a live line",
    )
    p.add_argument(
        "--watch-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="stop watching after this long (named jobs not finished by then: exit 4)",
    )
    p.add_argument(
        "--output-watch-events",
        action="store_true",
        help="with --watch: say ADDED, MODIFIED or DELETED in front of each row (or around each document)",
    )
    p.add_argument(
        "--metrics",
        action="store_true",
        help="one job's rounds, one row each (the same as `flctl top fl NAME`)",
    )

    p = command(
        "top",
        "Show a job's rounds: workers, samples, duration, training and evaluation metrics per round.",
        _run_top,
        "examples:\n  flctl top fl surface-defect-detection\n  flctl get fl surface-defect-detection --metrics",
    )
    add_top_arguments(p)

    p = command(
        "wait",
        "Wait until jobs reach a condition (kubectl wait): exit 0 when it holds, 1 when it no longer can, "
        "4 on timeout.",
        _run_wait,
        "examples:\n  flctl wait fl surface-defect-detection --for=condition=Succeeded --timeout=30m\n"
        "  flctl wait fl --all --for=condition=Succeeded\n  flctl wait fl surface-defect-detection --for=delete",
        parent=_global_options(with_defaults=False, broker_timeout=False),
    )
    add_wait_arguments(p)

    p = command(
        "describe", "Show everything known about resources: status, workers, rounds, events, spec.", _run_describe
    )
    p.add_argument("type", nargs="?", metavar="TYPE", help=_TYPES_HELP)
    p.add_argument("names", nargs="*", metavar="NAME")

    p = command(
        "delete",
        "Delete resources (clear their retained spec).",
        _run_delete,
        "examples:\n  flctl delete fl surface-defect-detection\n  flctl delete -f job.yaml",
    )
    p.add_argument("type", nargs="?", metavar="TYPE", help="federatedlearningjobs (fl), datasets (ds), models")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument(
        "-f", "--filename", action="append", default=[], metavar="FILE", help="delete every resource of this file"
    )

    p = command(
        "logs",
        "Print a worker's script log, fetched from its node over MQTT (admins only).",
        _logs.logs,
        "examples:\n  flctl logs fl surface-defect-detection --worker edge1 --tail 20\n"
        "  flctl logs fl surface-defect-detection -f\n  flctl logs fl surface-defect-detection --aggregator",
    )
    _logs.add_arguments(p)
    p = command(
        "audit",
        "Check that only control JSON and weights of the job's tensor layout left each edge (admins only).",
        _audit.audit,
        "exit 0: nothing found; 1: a finding, or a node's ledger could not be read\n\n"
        "example:\n  flctl audit fl surface-defect-detection",
    )
    _audit.add_arguments(p)
    p = command(
        "report",
        "Plot a job's rounds into one self-contained HTML page (and PNGs): accuracy, loss, workers, bytes.",
        _report.report,
        "examples:\n  flctl report fl surface-defect-detection -o report.html\n"
        "  flctl report fl surface-defect-detection --png-dir plots/",
    )
    _report.add_arguments(p)

    p = command("dataset", "Synthetic magnetic-tile data and per-edge shares.", _run_missing_subcommand)
    tools = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    s = tools.add_parser("synth", help="write a synthetic dataset with 1.txt, 2.txt and test.txt", parents=[common])
    s.set_defaults(handler=_run_synth)
    s.add_argument("--out", required=True, type=Path, metavar="DIR")
    s.add_argument("--scale", type=_positive_float, default=1.0, help="size relative to the real dataset (default 1.0)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--size-range", type=_size_range, metavar="LO,HI", help="draw image sides from [LO, HI] pixels (small = fast)"
    )
    s = tools.add_parser("split", help="copy one label file and exactly the images it lists", parents=[common])
    s.set_defaults(handler=_run_split)
    s.add_argument(
        "--dataset-root", required=True, type=Path, metavar="ROOT", help="folder the label file's paths are relative to"
    )
    s.add_argument("--labels", required=True, type=Path, metavar="FILE", help="e.g. ROOT/1.txt")
    s.add_argument("--dest", required=True, type=Path, metavar="DIR")

    _add_deployment_commands(command)

    command("version", "Print the client version.", _run_version)
    return parser


def _add_deployment_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """`flctl broker init` (flctl._broker_init), `flctl node add|rotate|remove` (flctl._node), `flctl site add`
    (flctl._site)."""
    p = command("broker", "Set up a secured broker deployment.", _run_missing_subcommand)
    add_broker_init(p, _run_broker_init)
    p = command(
        "node",
        "Add, rotate or remove one identity of a deployment (no re-provisioning); reload the broker.",
        _run_missing_subcommand,
        "examples:\n  flctl node add edge3 --role edge -d ./fl-secrets\n  flctl node rotate edge3 -d ./fl-secrets\n"
        "  flctl node remove edge3 -d ./fl-secrets --reload-command 'systemctl reload mosquitto'",
    )
    add_node_command(p, run_node)
    p = command(
        "site",
        "Add a factory site: its own broker, bridged to the cloud broker, and its edges' configs.",
        _run_missing_subcommand,
        "example:\n  flctl site add site-a --nodes edge3,edge4 --cloud-dir ./fl-secrets --hostname site-a-gw --out ./site-a",
    )
    add_site_command(p, run_site)


# -- handlers --------------------------------------------------------------------------------------


def _run_create(ctx: Context, args: argparse.Namespace) -> int:
    if args.dry_run == "server":
        # There is no API server to ask: the controller validates only what is published.
        raise UsageError("--dry-run=server is not supported (no server validates without publishing); use --dry-run")
    return create(ctx, args.filename, dry_run=args.dry_run == "client")


def _require_type(args: argparse.Namespace) -> str:
    if args.type is None:
        raise UsageError(f"you must specify the type of resource to {args.command}: {_TYPES_HELP}")
    return str(args.type)


def _run_get(ctx: Context, args: argparse.Namespace) -> int:
    type_word = _require_type(args)
    if args.watch_timeout is not None and not args.watch:
        raise UsageError("--watch-timeout needs --watch")
    if args.output_watch_events and not args.watch:
        raise UsageError("--output-watch-events needs --watch")
    if args.metrics:
        if args.watch or args.output is not None:
            raise UsageError("--metrics prints a table: it takes neither --watch nor -o")
        return top(ctx, type_word, args.names)
    request = GetRequest(type_word, tuple(args.names), args.output, args.watch, args.watch_timeout)
    return get(ctx, replace(request, watch_events=args.output_watch_events))


def _run_top(ctx: Context, args: argparse.Namespace) -> int:
    return top(ctx, _require_type(args), args.names)


def _run_wait(ctx: Context, args: argparse.Namespace) -> int:
    return wait(ctx, WaitRequest(args.type, tuple(args.names), args.every, args.wait_for, args.wait_timeout))


def _run_describe(ctx: Context, args: argparse.Namespace) -> int:
    return describe(ctx, _require_type(args), args.names)


def _run_delete(ctx: Context, args: argparse.Namespace) -> int:
    return delete(ctx, args.type, args.names, args.filename)


def _run_synth(ctx: Context, args: argparse.Namespace) -> int:
    return synth(ctx, args.out, scale=args.scale, seed=args.seed, size_range=args.size_range)


def _run_split(ctx: Context, args: argparse.Namespace) -> int:
    return split(ctx, args.dataset_root, args.labels, args.dest)


def _run_broker_init(ctx: Context, args: argparse.Namespace) -> int:
    return run_broker_init(ctx, args)


def _run_version(ctx: Context, args: argparse.Namespace) -> int:
    ctx.say(f"Client Version: {__version__}\nAPI Version: {API_VERSION}")
    return 0


def _run_missing_subcommand(ctx: Context, args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires one
    raise UsageError("missing a subcommand")


# -- settings --------------------------------------------------------------------------------------


def broker_options(args: argparse.Namespace) -> BrokerOptions:
    """Where and how to connect: `broker.ConnectionSettings` (flags > FLCTL_* > the node config > defaults)
    plus flctl's own options; UsageError for values that cannot work, InputError for an unreadable config."""
    try:
        config = node_config_from(args.config, CONFIG_ENVS)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if config is not None and config.role in SERVICE_ROLES:
        raise UsageError(
            f"the config of node {config.node} (role {config.role}) is its service's identity: flctl would log in "
            f"as {config.node} and take the service's broker session over. Use an admin or viewer config "
            "(flctl broker init writes DIR/admin/flctl.yaml and DIR/viewer/<name>.yaml)"
        )
    try:
        flags = connection_flags(args)  # reads --password-file
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    try:
        conn = ConnectionSettings.load(flags, env_prefix=FLCTL_ENV_PREFIX, node_config=config)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    prefix = args.prefix or os.environ.get(f"{FLCTL_ENV_PREFIX}PREFIX") or "fl"
    try:
        Topics(prefix)
    except TopicError as exc:
        raise UsageError(f"--prefix {prefix!r}: {exc.reason}") from exc
    # A broker from `flctl broker init` replaces the client id by the username and lets a user use only
    # its own sync topic (fl/clients/<username>/...): so the username is the default id.
    client_id = args.client_id or conn.username or default_client_id()
    if not _CLIENT_ID_RE.match(client_id):
        raise UsageError(f"--client-id {client_id!r}: expected 1-128 of A-Z a-z 0-9 _ . : -")
    if (conn.tls_cert is None) != (conn.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    for name in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(conn, name)
        if path is not None and not os.path.isfile(path):
            raise InputError(f'--{name.replace("_", "-")}: the path "{path}" does not exist')
    timeout = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
    return BrokerOptions(conn, prefix=prefix, timeout=timeout, client_id=client_id)


def main(argv: Sequence[str] | None = None) -> int:
    """Run flctl with `argv` (default: the process arguments); return the exit code."""
    out, err, stdin = sys.stdout, sys.stderr, sys.stdin
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        ctx = Context(broker_options(args), out, err, stdin, log=session_logger(args.verbose, err))
        handler: Handler = args.handler
        return handler(ctx, args)
    except FlctlError as exc:
        err.write(exc.render() + "\n")
        err.flush()
        return exc.exit_code
    except KeyboardInterrupt:
        return 130

"""`fl-cloud-aggregator --node cloud0 --root DIR [--host --port --prefix --log-level ...]`.

MQTT credentials and TLS files come from the node config (`--config node.yaml` or FL_NODE_CONFIG,
written by `flctl broker init`; it also gives the node name) and the environment (FL_MQTT_USERNAME,
FL_MQTT_PASSWORD, FL_MQTT_TLS_CA, ..., which override the file); --host and --port override both. `--code-root /code` (or FL_CODE_ROOT): the folder under the root that
aggregation scripts must be in. `--metrics-port PORT` (or FL_METRICS_PORT) serves Prometheus metrics on
http://127.0.0.1:PORT/metrics; `--metrics-bind ADDRESS` (or FL_METRICS_BIND) listens elsewhere. SIGTERM
and SIGINT stop the service cleanly (exit code 0).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from broker import add_mqtt_arguments, mqtt_settings_from_args, node_config_from_args, node_from_args, port_number
from runtime import NodeRootLockedError, configure_logging, lock_node_root
from schemas import CODE_ROOT_ENV, DEFAULT_CODE_ROOT, NodeRoot, PathEscapeError, Topics, check_name

__all__ = ["build_parser", "main"]

METRICS_PORT_ENV = "FL_METRICS_PORT"
METRICS_BIND_ENV = "FL_METRICS_BIND"


def _node(value: str) -> str:
    try:
        return check_name(value, "node name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _site(value: str) -> str:
    try:
        return check_name(value, "site name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-cloud-aggregator",
        description="The controller and aggregator of federated-learning jobs over MQTT (Sedna's FederatedLearningJob).",
    )
    parser.add_argument(
        "--node", type=_node, help="this node's name (also the MQTT client id; default: the --config file's node)"
    )
    parser.add_argument("--root", required=True, type=Path, help="the node's root folder: spec paths resolve under it")
    parser.add_argument(
        "--code-root",
        default=os.environ.get(CODE_ROOT_ENV) or DEFAULT_CODE_ROOT,
        help="the folder, under the node root like spec paths, that aggregation scripts must be in: a job whose "
        "aggregationWorker scriptDir or scriptBootFile resolves elsewhere fails "
        "(default: $FL_CODE_ROOT or /code, i.e. ROOT/code)",
    )
    parser.add_argument("--prefix", default="fl", help="topic prefix (default: fl)")
    parser.add_argument(
        "--site",
        type=_site,
        help="run as the site aggregator of this factory site (hierarchical jobs: connect to the site's broker; "
        "default: the --config file's site:, else the cloud's controller and aggregator)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    parser.add_argument(
        "--reference-grace",
        type=_positive,
        default=5.0,
        help="seconds a job waits for a missing Dataset or Model before it fails (default: 5)",
    )
    parser.add_argument(
        "--node-grace",
        type=_positive,
        default=60.0,
        help="seconds a job waits for a node that has never been seen (no node status) before it fails; "
        "it still starts when the node appears later (default: 60)",
    )
    parser.add_argument(
        "--config-timeout",
        type=_positive,
        default=120.0,
        help="seconds the aggregation script has to call AggregationServer(...).start() (default: 120)",
    )
    parser.add_argument(
        "--resume-after",
        type=_positive,
        default=3.0,
        help="seconds without progress before the aggregator asks an edge for the missing chunks of an "
        "incomplete update (default: 3)",
    )
    parser.add_argument(
        "--status-interval",
        type=_non_negative,
        default=1.0,
        help="how long other changes of a job's status wait after its last publication: 2, 4, then 8 times this "
        "since the last change of phase, round or condition (those are published at once), so a round "
        "publishes the status a few times however many edges report (0: every change; default: 1)",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=512 * 1024, help="bytes per chunk of a weights transfer (default: 524288)"
    )
    metrics = parser.add_argument_group("Prometheus metrics (flags > environment > off)")
    metrics.add_argument(
        "--metrics-port",
        type=_metrics_port,
        metavar="PORT",
        help=f"serve OpenMetrics/Prometheus text on http://BIND:PORT/metrics (0: a free port, logged); "
        f"default ${METRICS_PORT_ENV}, else no endpoint",
    )
    metrics.add_argument(
        "--metrics-bind",
        metavar="ADDRESS",
        help=f"the address the metrics endpoint listens on (default ${METRICS_BIND_ENV} or 127.0.0.1: the "
        "endpoint has no authentication; give 0.0.0.0 only where a firewall or network policy limits who "
        "reaches it)",
    )
    add_mqtt_arguments(parser)
    return parser


def _metrics_port(text: str) -> int:
    return 0 if text.strip() == "0" else port_number(text)


def _metrics_endpoint(args: argparse.Namespace) -> tuple[str, int | None]:
    """(bind address, port or None) from the flags, then FL_METRICS_BIND / FL_METRICS_PORT, then
    127.0.0.1 and no endpoint. Raises ValueError naming the variable."""
    port: int | None = args.metrics_port
    if port is None and os.environ.get(METRICS_PORT_ENV):
        raw = os.environ[METRICS_PORT_ENV]
        try:
            port = _metrics_port(raw)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"{METRICS_PORT_ENV}={raw!r}: {exc}") from None
    bind: str = args.metrics_bind or os.environ.get(METRICS_BIND_ENV) or "127.0.0.1"
    return bind, port


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service until SIGTERM or SIGINT; return the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        Topics(args.prefix)
        config = node_config_from_args(args)
        node = node_from_args(args, config, roles=("aggregator",))
        settings = mqtt_settings_from_args(args, node, config)
        NodeRoot(args.root, args.code_root).code_dir()
        metrics_bind, metrics_port = _metrics_endpoint(args)
    except (ValueError, TypeError, PathEscapeError) as exc:
        print(f"fl-cloud-aggregator: {exc}", file=sys.stderr)
        return 2
    try:
        # Before the engine is loaded, so a second service on this root answers at once. Held (by
        # `root_lock`, alive until main returns) for the process lifetime.
        root_lock = lock_node_root(args.root, service="fl-cloud-aggregator", node=node)
    except (NodeRootLockedError, OSError) as exc:
        print(f"fl-cloud-aggregator: {exc}", file=sys.stderr)
        return 2
    configure_logging(node=node, role="aggregator", level=args.log_level)

    # Imported here so that `--help` and bad arguments answer before paho and the engine are loaded.
    from cloud_aggregator.engine import JobSettings
    from cloud_aggregator.service import AggregatorService, SiteAggregatorService

    # An aggregator node provisioned for a site (node.yaml `site:`) is that site's aggregator.
    site = args.site if args.site is not None else (config.site if config is not None else None)
    if site is not None:
        site_service = SiteAggregatorService(
            node=node, site=site, root=args.root, settings=settings, prefix=args.prefix
        )
        signal.signal(signal.SIGTERM, lambda _s, _f: site_service.stop())
        signal.signal(signal.SIGINT, lambda _s, _f: site_service.stop())
        try:
            return site_service.run()
        finally:
            root_lock.release()

    jobs = JobSettings(
        chunk_size=max(1024, args.chunk_size),
        reference_grace=args.reference_grace,
        node_grace=args.node_grace,
        config_timeout=args.config_timeout,
        resume_after=args.resume_after,
        status_interval=args.status_interval,
    )
    service = AggregatorService(
        node=node,
        root=args.root,
        settings=settings,
        job_settings=jobs,
        prefix=args.prefix,
        code_root=args.code_root,
        metrics_port=metrics_port,
        metrics_bind=metrics_bind,
    )

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        return service.run()
    finally:
        root_lock.release()

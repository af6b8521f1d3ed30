"""``fl-edge-trainer --node edge1 --root DIR``: the edge node service (also ``python -m edge_trainer``).

``fl-edge-trainer --config /etc/fl/node.yaml --root /`` takes the node name, broker, credentials and TLS
files from the node.yaml that `flctl broker init` wrote (FL_MQTT_* variables and flags override it).
``--code-root /code`` (or FL_CODE_ROOT) is the folder under the root that training scripts must be in.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from broker import (
    BrokerError,
    NodeConfig,
    add_mqtt_arguments,
    mqtt_settings_from_args,
    node_config_from_args,
    node_from_args,
)
from edge_trainer.service import EdgeService
from runtime import NodeRootLockedError, configure_logging, get_logger, lock_node_root
from schemas import CODE_ROOT_ENV, DEFAULT_CODE_ROOT, NodeRoot, PathEscapeError, TopicError, Topics, check_name

__all__ = ["build_parser", "main", "warm_worker_from"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-edge-trainer",
        description="Edge node service: runs this node's training worker of every federated learning job that names it.",
    )
    parser.add_argument(
        "--node", help="this node's name (also its MQTT client id), e.g. edge1 (default: the --config file's node)"
    )
    parser.add_argument(
        "--root", required=True, type=Path, help="the node's root folder: plan paths such as /data/1.txt live under it"
    )
    parser.add_argument(
        "--code-root",
        default=os.environ.get(CODE_ROOT_ENV) or DEFAULT_CODE_ROOT,
        help="the folder, under the node root like plan paths, that training scripts must be in: a plan whose "
        "scriptDir or scriptBootFile resolves elsewhere is refused (default: $FL_CODE_ROOT or /code, i.e. ROOT/code)",
    )
    parser.add_argument("--prefix", default="fl", help="topic prefix (default: fl)")
    parser.add_argument(
        "--ack-timeout",
        default=30.0,
        type=float,
        help="seconds to wait for the aggregator's receipt of an update before its manifest is republished "
        "(default: 30)",
    )
    parser.add_argument(
        "--warm-worker",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep a warm worker: a spawned interpreter with TensorFlow already imported that runs the next "
        "job's script, so round 1 does not wait for the import; holds ~300-500 MB while idle "
        "(default: the --config file's warm_worker, else off)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], type=str.upper
    )
    add_mqtt_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service until SIGTERM or SIGINT; exit status 0 after a clean stop, 2 on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = node_config_from_args(args)
        node = check_name(node_from_args(args, config, roles=("edge",)), "node name")
        topics = Topics(args.prefix)
        settings = mqtt_settings_from_args(args, node, config)
        if args.ack_timeout <= 0:
            raise ValueError(f"--ack-timeout must be > 0, not {args.ack_timeout}")
        NodeRoot(args.root, args.code_root).code_dir()
    except (ValueError, TopicError, PathEscapeError) as exc:
        parser.error(str(exc))
    try:
        root_lock = lock_node_root(args.root, service="fl-edge-trainer", node=node)  # held until main returns
    except (NodeRootLockedError, OSError) as exc:
        print(f"fl-edge-trainer: {exc}", file=sys.stderr)
        return 2
    configure_logging(node=node, role="edge", level=args.log_level)
    log = get_logger()
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()  # only sets a flag: safe in a signal handler; the logic thread looks at it often

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        service = EdgeService(
            node,
            args.root,
            settings,
            topics=topics,
            ack_timeout=args.ack_timeout,
            log=log,
            code_root=args.code_root,
            warm_worker=warm_worker_from(args, config),
            site=config.site if config is not None else None,
        )
        service.run(stop)
    except (BrokerError, OSError) as exc:
        log.error("edge trainer failed", error=str(exc))
        return 1
    finally:
        root_lock.release()
    return 0


def warm_worker_from(args: argparse.Namespace, config: NodeConfig | None) -> bool:
    """--warm-worker / --no-warm-worker, else node.yaml's warm_worker, else off."""
    if args.warm_worker is not None:
        return bool(args.warm_worker)
    return bool(config is not None and config.warm_worker)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

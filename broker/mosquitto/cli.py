"""`fl-broker`: render the Mosquitto configuration, or run a broker with it in the foreground.

    fl-broker config --port 1883 --data-dir /var/lib/fl-broker        # print mosquitto.conf
    fl-broker run --port 1883 --bind 127.0.0.1 --data-dir DIR [--conf-out FILE]

`run` writes the config (to --conf-out, default DIR/mosquitto.conf) and replaces this process with
mosquitto, so SIGINT/SIGTERM reach the broker directly (it saves its database and exits) and its log
goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from broker.mosquitto._config import BrokerConfig, render_config
from broker.mosquitto._launcher import find_mosquitto

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-broker", description="Mosquitto for the federated-learning system.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("config", "print the rendered mosquitto.conf"),
        ("run", "run mosquitto in the foreground"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--port", type=int, default=1883, help="listener port (default 1883)")
        p.add_argument("--bind", default="127.0.0.1", help="listener address (default 127.0.0.1)")
        p.add_argument(
            "--data-dir",
            type=Path,
            required=(name == "run"),
            default=Path("/var/lib/fl-broker"),
            help="persistence directory",
        )
        p.add_argument("--max-packet-size", type=int, default=4 * 1024 * 1024, help="bytes (default 4 MiB)")
        p.add_argument("--max-queued-messages", type=int, default=10000)
        p.add_argument("--max-queued-bytes", type=int, default=1024**3)
        p.add_argument("--autosave-interval", type=int, default=30, help="seconds between database snapshots")
        p.add_argument("--password-file", type=Path, help="mosquitto_passwd file; implies no anonymous access")
        p.add_argument("--acl-file", type=Path, help="ACL file")
        _add_yes_no(p, "--allow-anonymous", "default: only without a password file")
        p.add_argument("--no-persistence", action="store_true", help="keep sessions in memory only")
        _add_yes_no(
            p,
            "--run-as-root",
            "write `user root` (default: exactly when running as root; --no-run-as-root drops to user mosquitto)",
        )
        if name == "run":
            p.add_argument("--conf-out", type=Path, help="where to write the config (default DATA_DIR/mosquitto.conf)")
    return parser


def _add_yes_no(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
    # --x / --no-x; given neither way it stays None, and the default follows from the other settings.
    parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)


def _config(args: argparse.Namespace) -> BrokerConfig:
    allow_anonymous = args.allow_anonymous if args.allow_anonymous is not None else args.password_file is None
    return BrokerConfig(
        args.port,
        bind=args.bind,
        data_dir=args.data_dir.absolute(),
        persistence=not args.no_persistence,
        max_packet_size=args.max_packet_size,
        max_queued_messages=args.max_queued_messages,
        max_queued_bytes=args.max_queued_bytes,
        autosave_interval=args.autosave_interval,
        allow_anonymous=allow_anonymous,
        password_file=args.password_file.absolute() if args.password_file else None,
        acl_file=args.acl_file.absolute() if args.acl_file else None,
        run_as_root=args.run_as_root,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `fl-broker`; returns the exit code (`run` does not return: it becomes mosquitto)."""
    args = _parser().parse_args(argv)
    try:
        cfg = _config(args)
    except ValueError as exc:
        print(f"fl-broker: {exc}", file=sys.stderr)
        return 2
    text = render_config(cfg)
    if args.command == "config":
        sys.stdout.write(text)
        return 0
    binary = find_mosquitto()
    if binary is None:
        print(
            "fl-broker: no mosquitto binary; install it (apt-get install mosquitto) or set MOSQUITTO_BIN",
            file=sys.stderr,
        )
        return 1
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    conf = args.conf_out or cfg.data_dir / "mosquitto.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text)
    print(f"fl-broker: {binary} -c {conf} (listening on {cfg.bind}:{cfg.port})", file=sys.stderr, flush=True)
    os.execv(binary, [binary, "-c", str(conf)])
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())

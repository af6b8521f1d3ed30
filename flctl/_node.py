"""`flctl node add|rotate|remove`: one identity's credentials without re-provisioning, then a broker reload.

The files are edited by `flctl.provision` under the deployment's lock; then the broker is told to read
its password file, ACL (and CRL) again. Mosquitto 2.0 does that on SIGHUP, and at that reload it checks
every connected client again: one whose user is gone or whose password changed is disconnected, the
others keep their sessions. How flctl reaches the broker, first that applies:

    --reload-command CMD   run CMD (split like a shell, no shell): e.g. "systemctl reload mosquitto"
    --broker-pid PID       send SIGHUP to PID
    (default)              the `pid_file` that `flctl broker init` writes into mosquitto.conf
    --no-reload            none: the files are written, the command says what to run

When it cannot reload, the files stay written and the command exits 1 saying what to run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from broker import load_node_config
from flctl._context import Context
from flctl._errors import FlctlError, UsageError
from flctl._takeover import take_session_over
from flctl.provision import (
    Deployment,
    FleetChange,
    add_node,
    deployment_lock,
    open_deployment,
    prepare_removal,
    remove_node,
    rotate_node,
)
from schemas import Topics

__all__ = ["add_node_command", "run_node"]

ROLE_CHOICES = ("edge", "aggregator", "admin", "viewer", "monitor")
RELOAD_COMMAND_TIMEOUT = 60.0
TAKEOVER_TIMEOUT = 10.0


class ReloadError(FlctlError):
    """The files were written but the broker could not be told to reload them."""


def add_node_command(p: argparse.ArgumentParser, handler: Callable[[Context, argparse.Namespace], int]) -> None:
    """`flctl node add|rotate|remove` and their options (docs/operations.md, "Adding, rotating and removing a node")."""
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--deployment",
        "-d",
        required=True,
        type=Path,
        metavar="DIR",
        help="the folder `flctl broker init --out DIR` wrote",
    )
    reload = common.add_mutually_exclusive_group()
    reload.add_argument("--broker-pid", type=int, metavar="PID", help="send SIGHUP to this broker process")
    reload.add_argument(
        "--reload-command",
        metavar="CMD",
        help='reload the broker with CMD, e.g. "systemctl reload mosquitto" (run without a shell)',
    )
    reload.add_argument("--no-reload", action="store_true", help="write the files only; reload the broker yourself")

    s = verbs.add_parser(
        "add",
        parents=[common],
        help="a new identity: credentials, its config folder, the broker's passwd and ACL; reload",
        description="Write a new identity's credentials and config (DIR/nodes/NAME/ for edges and aggregators), "
        "add it to the broker's password file and ACL, and reload the broker. No other identity's files change.",
    )
    s.set_defaults(handler=handler)
    s.add_argument("name", metavar="NAME")
    s.add_argument("--role", required=True, choices=ROLE_CHOICES)
    s.add_argument("--site", metavar="S", help="the factory site whose broker the node connects to (edge, aggregator)")
    s.add_argument("--warm-worker", action="store_true", help="write `warm_worker: true` into the edge's node.yaml")

    s = verbs.add_parser(
        "rotate",
        parents=[common],
        help="a new password (and certificate) for one identity; its old one is refused after the reload",
        description="Give NAME a new password (with client certificates also a new certificate, the old one "
        "revoked), rewrite its config, and reload the broker: NAME's live session is disconnected until its "
        "service runs with the new config.",
    )
    s.set_defaults(handler=handler)
    s.add_argument("name", metavar="NAME")
    s.add_argument("--role", choices=ROLE_CHOICES, help="refuse unless NAME has this role")

    s = verbs.add_parser(
        "remove",
        parents=[common],
        help="delete one identity: passwd line, ACL block, config folder; reload (its session is disconnected)",
        description="Remove NAME from the broker's password file and ACL (revoke its certificate), delete its "
        "config files, and reload the broker, which disconnects NAME's live session and refuses it from then on.",
    )
    s.set_defaults(handler=handler)
    s.add_argument("name", metavar="NAME")
    s.add_argument("--role", choices=ROLE_CHOICES, help="refuse unless NAME has this role")
    s.add_argument(
        "--force",
        action="store_true",
        help="also remove the last aggregator, the last admin, or the admin of the flctl config in use",
    )


def _flctl_config(args: argparse.Namespace) -> Path | None:
    given = getattr(args, "config", None) or os.environ.get("FLCTL_CONFIG")
    return Path(given) if given else None


def run_node(ctx: Context, args: argparse.Namespace) -> int:
    if args.broker_pid is not None and args.broker_pid <= 0:
        raise UsageError(f"--broker-pid {args.broker_pid}: expected a process id (a positive number)")
    # Checked before the lock, whose file would otherwise be left in any folder given by mistake.
    open_deployment(_checked_folder(args.deployment), ctx.options.prefix)
    with deployment_lock(args.deployment):
        dep = open_deployment(args.deployment, ctx.options.prefix)
        pending: ReloadError | None = None
        if args.verb == "remove" and not args.no_reload:
            pending = _before_removal(ctx, dep, args)
        change = _apply(ctx, args)
        _report(ctx, change)
        code = _reload(ctx, change.deployment, args)
        if dep.client_certs and args.verb == "rotate" and not args.no_reload:
            assert change.config is not None
            password = load_node_config(change.config).resolved_password()
            pending = _take_over(ctx, dep, args.name, password, keep_session=True, required=True)
        if pending is not None:
            raise pending
        return code


def _before_removal(ctx: Context, dep: Deployment, args: argparse.Namespace) -> ReloadError | None:
    """Revoke the certificate and give the node a one-time password, reload (its own connections are
    refused from then on; a password login is disconnected), then log in as it with that password: the
    takeover closes a certificate login the reload leaves open, and its retained presence and claim are
    deleted (its will, sent when it was cut, is among them). What cannot be done is returned, to be
    raised once the removal itself is done."""
    prepared = prepare_removal(
        args.deployment,
        args.name,
        role=args.role,
        prefix=ctx.options.prefix,
        force=args.force,
        using=_flctl_config(args),
    )
    try:
        _reload(ctx, dep, args)
    except ReloadError as exc:
        return exc  # the removal goes on; its own reload fails the same way and says what to run
    topics = Topics(ctx.options.prefix)
    clear = (topics.node_status(args.name), topics.sync(args.name)) if prepared.role in ("edge", "aggregator") else ()
    return _take_over(
        ctx, dep, args.name, prepared.password, keep_session=False, required=dep.client_certs, clear=clear
    )


def _take_over(
    ctx: Context,
    dep: Deployment,
    name: str,
    password: str | None,
    *,
    keep_session: bool,
    required: bool,
    clear: tuple[str, ...] = (),
) -> ReloadError | None:
    """Close `name`'s live session by a takeover on the loopback listener (and clear `clear`). When that
    fails: a ReloadError to raise if `required` (a certificate login stays open), else a warning."""
    why = (
        take_session_over(
            "127.0.0.1",
            dep.plain_port,
            name,
            password,
            keep_session=keep_session,
            timeout=TAKEOVER_TIMEOUT,
            clear=clear,
        )
        if password is not None
        else "its config has no password to log in with"
    )
    if why is None:
        ctx.say(f"  session: closed {name}'s live connection, if it had one (takeover on 127.0.0.1:{dep.plain_port})")
        if clear:
            ctx.say(f"  cleared: {name}'s retained presence (flctl get nodes no longer lists it)")
        return None
    if required:
        return ReloadError(
            f"the broker refuses {name}'s revoked certificate from now on, but its live session (if any) could "
            f"not be closed ({why}): Mosquitto 2.0 does not re-check connected certificates at a reload; "
            "restart the broker to close it"
        )
    ctx.warn(f"could not log in as {name} on 127.0.0.1:{dep.plain_port} ({why}): its retained presence stays")
    return None


def _checked_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise UsageError(f"--deployment {folder}: not a folder (give the folder `flctl broker init --out` wrote)")
    return folder


def _apply(ctx: Context, args: argparse.Namespace) -> FleetChange:
    prefix = ctx.options.prefix
    if args.verb == "add":
        return add_node(
            args.deployment, args.name, args.role, site=args.site, warm_worker=args.warm_worker, prefix=prefix
        )
    if args.verb == "rotate":
        return rotate_node(args.deployment, args.name, role=args.role, prefix=prefix)
    return remove_node(
        args.deployment, args.name, role=args.role, prefix=prefix, force=args.force, using=_flctl_config(args)
    )


def _report(ctx: Context, change: FleetChange) -> None:
    dep = change.deployment
    done = {"add": "added", "rotate": "rotated the credentials of", "remove": "removed"}[change.action]
    ctx.say(f"{done} {change.role} {change.name} in {dep.out} (secrets are 0600; none is printed)")
    if change.config is not None:
        ctx.say(f"  config:  {change.config}  (install it on the node; its service reads it at start)")
    changed = ["passwd"] + (["acl"] if change.action != "rotate" and change.role != "edge" else [])
    if change.revoked:
        changed.append(dep.crl.name)
    ctx.say(f"  broker:  {', '.join(str(dep.broker / name) for name in changed)}")
    if change.revoked:
        ctx.say(f"  revoked: certificate serial {', '.join(f'{s:x}' for s in change.revoked)}")
    if "connection" in dep.conf and change.role == "edge" and change.action in ("add", "remove"):
        # A site broker (`flctl site add`): its bridge's topic lines and the cloud's ACL block for the site
        # name each edge, and a bridge is not reloaded by SIGHUP.
        ctx.warn(
            f"{dep.broker / 'mosquitto.conf'} bridges this broker to the cloud, and the bridge's topics and the "
            f"cloud's ACL block name the site's edges: {change.name} is not in them yet (run `flctl site sync "
            f"SITE --site-dir {dep.out} --cloud-dir CLOUD_DIR`, then restart this broker)"
        )


def _broker_pid(dep: Deployment) -> int:
    """The pid in the deployment's pid file; ReloadError saying what to do when there is none."""
    pid_file = dep.pid_file
    if pid_file is None:
        raise ReloadError(
            f"{dep.broker / 'mosquitto.conf'} names no pid_file, so flctl cannot find the broker; the files "
            "are written: reload the broker on its host (`kill -HUP <pid>`, or `systemctl reload mosquitto`), "
            "or give --broker-pid or --reload-command"
        )
    try:
        text = pid_file.read_text().strip()
    except OSError as exc:
        raise ReloadError(
            f"cannot read the broker's pid file {pid_file} ({exc.strerror}): is the broker running on this "
            "host? The files are written: reload it where it runs (`kill -HUP <pid>` or `systemctl reload "
            "mosquitto`), or give --broker-pid or --reload-command"
        ) from None
    if not text.isdigit() or int(text) <= 0:
        raise ReloadError(f"the broker's pid file {pid_file} holds {text[:20]!r}, not a process id")
    return int(text)


def _check_is_mosquitto(pid: int) -> None:
    """Refuse to signal a process that is not a mosquitto (a stale pid file may name anything)."""
    comm = Path(f"/proc/{pid}/comm")
    if not Path("/proc/self").exists():
        return  # no procfs to ask: trust the pid
    try:
        name = comm.read_text().strip()
    except OSError:
        raise ReloadError(f"no process {pid} is running (stale pid file?): start the broker, then reload it") from None
    if name != "mosquitto":
        raise ReloadError(f"process {pid} is {name!r}, not mosquitto (stale pid file?): not signalling it")


def _reload(ctx: Context, dep: Deployment, args: argparse.Namespace) -> int:
    if args.no_reload:
        ctx.say(
            "  reload:  not done (--no-reload): reload the broker to apply (`kill -HUP <pid>` or "
            "`systemctl reload mosquitto`)"
        )
        return 0
    if args.reload_command:
        argv = shlex.split(args.reload_command)
        if not argv:
            raise UsageError("--reload-command is empty")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=RELOAD_COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ReloadError(f"--reload-command {args.reload_command!r} failed: {exc}; the files are written") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-500:]
            raise ReloadError(
                f"--reload-command {args.reload_command!r} exited with {done.returncode}: {tail}; the files are written"
            )
        ctx.say(f"  reload:  ran {args.reload_command}")
        return 0
    installed = dep.conf.get("password_file")
    if installed and Path(installed) != dep.passwd:
        # The broker reads copies elsewhere (`broker init --broker-dir`): a reload now would re-read stale files.
        changed = " ".join(
            str(dep.broker / name) for name in ("passwd", "acl", "crl.pem") if (dep.broker / name).exists()
        )
        raise ReloadError(
            f"the broker reads {installed}, not {dep.passwd}: copy {changed} to {Path(installed).parent} "
            "(keeping owner and modes), then reload it (`kill -HUP <pid>` or `systemctl reload mosquitto`); "
            "or give --reload-command that does both"
        )
    pid = args.broker_pid if args.broker_pid is not None else _broker_pid(dep)
    _check_is_mosquitto(pid)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadError(f"no process {pid} is running: start the broker (it reads the new files at start)") from None
    except PermissionError:
        raise ReloadError(
            f"not allowed to signal the broker (pid {pid}): run as its user or root, or give --reload-command "
            '"systemctl reload mosquitto"; the files are written'
        ) from None
    ctx.say(f"  reload:  sent SIGHUP to the broker (pid {pid})")
    return 0

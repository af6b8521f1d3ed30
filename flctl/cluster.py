"""A whole deployment on one machine: a Mosquitto broker and the node services as real processes.

The demo and the end-to-end tests both run through this, so what the tests check is what a user runs.
Every node gets its own root folder under the work directory (``.demo/edge1`` ...), the same layout
a real host has under ``/``.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from pydantic import ValidationError

from broker import Inbound, MqttSettings, Session, load_node_config
from broker.mosquitto import BrokerConfig, LocalBroker
from flctl._errors import FlctlError
from flctl.provision import Provisioned, SiteProvisioned, provision, provision_site
from schemas import JobStatus, Kind, Topics

__all__ = ["ADMIN", "MONITOR", "LocalCluster", "NodeProcess", "free_port"]

# Identities a secure cluster provisions besides its nodes: flctl's (admin), and the one its own watchers
# use (monitor, the read-only monitoring identity `flctl broker init` writes by default).
ADMIN = "admin"
MONITOR = "monitor"

# role -> (console script, module): the commands the README documents for real hosts.
_SERVICES = {
    "aggregator": ("fl-cloud-aggregator", "cloud_aggregator"),
    "edge": ("fl-edge-trainer", "edge_trainer"),
}


@dataclass
class NodeProcess:
    """One node service running as a child process, its output in `log_path`."""

    name: str
    role: str
    root: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    _log: IO[bytes] = field(repr=False)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, *, hard: bool = False, timeout: float = 20.0) -> int | None:
        """SIGTERM (or SIGKILL) the service and wait; a service that ignores SIGTERM is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalCluster:
    """A broker plus node services under one work directory; stops everything on exit."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        prefix: str = "fl",
        broker_config: dict[str, object] | None = None,
        service_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        secure: bool = False,
        nodes: Sequence[str] = (),
        admins: Sequence[str] = (),
        viewers: Sequence[str] = (),
        monitors: Sequence[str] = (),
        sites: Mapping[str, Sequence[str]] | None = None,
        wan: Callable[[str, int], int] | None = None,
        site_options: Mapping[str, object] | None = None,
        site_aggregators: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """`secure=True` provisions the deployment the way `flctl broker init` does (into workdir/secrets,
        for `nodes`, the admin `admin` and any `admins`, the read-only `viewers`, the monitor `monitor` and any
        `monitors`, on the cloud broker and every site broker: one identity is one client id, so an observer
        that stays connected needs its own):
        the broker refuses anonymous clients and applies the ACL, every service connects over TLS with its
        own node.yaml (`--config`), flctl with the admin's config, and this object's own sessions (`watch`,
        `settings`) as `monitor` (it reads statuses) unless they name an identity.

        `sites` (site -> its edges; needs `secure`) adds a site broker per site, provisioned the way `flctl
        site add` does into workdir/sites/<site> and bridged to the cloud broker; those edges connect to their
        site's broker. `wan(site, cloud_port)` returns the port the site's bridge dials instead of the cloud's
        TLS port (tests put a link they can cut there); `site_options` go to `provision_site`.
        """
        if sites and not secure:
            raise ValueError("sites need secure=True: a bridge logs in to the cloud broker with its own identity")
        if secure and not nodes:
            raise ValueError("secure=True needs the node names (nodes=[...]): provisioning issues their credentials")
        self.workdir = workdir.resolve()
        self.secure = secure
        self._node_names = list(nodes)
        self._admins = [ADMIN, *(a for a in admins if a != ADMIN)]
        self._viewers = list(viewers)
        self._monitors = [MONITOR, *(m for m in monitors if m != MONITOR)]
        self.provisioned: Provisioned | None = None
        self.prefix = prefix
        self.topics = Topics(prefix)
        self._port = port
        self._broker_config = broker_config or {}
        self._service_args = service_args or []
        self._env = env or {}
        self.broker: LocalBroker | None = None
        self.nodes: dict[str, NodeProcess] = {}
        # Processes of nodes that were killed or restarted (fault tests): stopped, kept for their exit codes.
        self.retired: list[NodeProcess] = []
        # name -> (role, extra_args, port): how each node was started, so it can be started again alike.
        self._launches: dict[str, tuple[str, list[str], int | None]] = {}
        self._sites = {site: list(edges) for site, edges in (sites or {}).items()}
        self._wan = wan
        self._site_options = dict(site_options or {})
        # site -> its site aggregators (hierarchical jobs): provisioned at the site, role aggregator.
        self._site_aggregators = {site: list(aggs) for site, aggs in (site_aggregators or {}).items()}
        self.site_provisioned: dict[str, SiteProvisioned] = {}
        self.site_brokers: dict[str, LocalBroker] = {}

    # -- broker ------------------------------------------------------------------------------

    def start_broker(self) -> LocalBroker:
        """Start the broker; once started and then stopped (`stop_broker`), start it again on the same port
        with the same data (persistence keeps sessions, queued and retained messages)."""
        if self.broker is not None:
            if not self.broker.running:
                self.broker.start()
            return self.broker
        if self.secure:
            self.provisioned = self._provision()
            self._provision_sites(self.provisioned)
            cfg = self.provisioned.broker_config
            if self._broker_config:
                cfg = dataclasses.replace(cfg, **self._broker_config)  # type: ignore[arg-type]
            broker_dir = self.provisioned.out / "broker"
        else:
            # Not "broker": a folder of that name in a process's working directory would shadow the package.
            broker_dir = self.workdir / "mosquitto"
            broker_dir.mkdir(parents=True, exist_ok=True)
            cfg = BrokerConfig(port=self._port or free_port(), data_dir=broker_dir / "data", **self._broker_config)  # type: ignore[arg-type]
        self.broker = LocalBroker(cfg, broker_dir)
        self.broker.start()
        for site in self._sites:
            self.start_site_broker(site)
        return self.broker

    def start_site_broker(self, site: str) -> LocalBroker:
        """Start site `site`'s broker (the first time: provisioned then); again after `stop_site_broker`,
        on the same ports with the same data."""
        broker = self.site_brokers.get(site)
        if broker is None:
            raise FlctlError(f"no site {site!r} (sites: {', '.join(self._sites) or 'none'})")
        return broker if broker.running else broker.start()

    def stop_site_broker(self, site: str, *, hard: bool = False) -> None:
        """Stop site `site`'s broker (SIGTERM saves its persistence, with its bridge's queue; `hard`: SIGKILL)."""
        self.site_brokers[site].stop(hard=hard)

    def site_of(self, node: str) -> str | None:
        """The site whose broker `node` connects to; None for a node of the cloud broker."""
        return next(
            (
                site
                for site, edges in self._sites.items()
                if node in edges or node in self._site_aggregators.get(site, ())
            ),
            None,
        )

    def _provision_sites(self, cloud: Provisioned) -> None:
        """`flctl site add` for every site, against the cloud deployment just written (before its broker
        starts, so it reads the sites' bridge users and ACL blocks at once)."""
        for site, edges in self._sites.items():
            port = self._wan(site, cloud.tls_port) if self._wan is not None else cloud.tls_port
            done = provision_site(
                self.workdir / "sites" / site,
                site,
                edges,
                cloud_dir=cloud.out,
                cloud_address=f"127.0.0.1:{port}",
                port=free_port(),
                plain_port=free_port(),
                bind="127.0.0.1",
                prefix=self.prefix,
                force=True,
                aggregators=self._site_aggregators.get(site, ()),
                monitors=self._monitors,
                **self._site_options,  # type: ignore[arg-type]
            )
            self.site_provisioned[site] = done
            cfg = done.broker_config
            if self._broker_config:  # the same overrides as the cloud broker's (tests: $SYS, autosave timings)
                cfg = dataclasses.replace(cfg, **self._broker_config)  # type: ignore[arg-type]
            self.site_brokers[site] = LocalBroker(cfg, done.out / "broker")

    def stop_broker(self, *, hard: bool = False) -> None:
        """Stop the broker (SIGTERM saves its persistence database; `hard` is SIGKILL); `start_broker` brings it back."""
        if self.broker is None:
            raise FlctlError("the broker is not started")
        self.broker.stop(hard=hard)

    def restart_broker(self, *, hard: bool = False) -> None:
        """Stop the broker and start it again on the same port with the same data."""
        self.stop_broker(hard=hard)
        self.start_broker()

    def _provision(self) -> Provisioned:
        """`flctl broker init --nodes ... --admin admin --out workdir/secrets` on free loopback ports."""
        site_edges = {edge for edges in self._sites.values() for edge in edges}
        site_edges |= {agg for aggs in self._site_aggregators.values() for agg in aggs}
        return provision(
            self.workdir / "secrets",
            [n for n in self._node_names if n not in site_edges],
            admins=self._admins,
            viewers=self._viewers,
            monitors=self._monitors,
            port=self._port or free_port(),
            plain_port=free_port(),
            bind="127.0.0.1",
            prefix=self.prefix,
            force=True,
        )

    @property
    def port(self) -> int:
        """Where the nodes connect: the broker's TLS port when secure, else its only port."""
        if self.broker is None:
            raise FlctlError("the broker is not started")
        if self.provisioned is not None:
            return self.provisioned.tls_port
        return self.broker.port

    def node_config(self, identity: str) -> Path:
        """The node.yaml (or admin config) of a provisioned identity (secure clusters only)."""
        if self.provisioned is None:
            raise FlctlError("the cluster is not secure (or its broker is not started)")
        site = self.site_of(identity)
        try:
            if site is not None:
                return self.site_provisioned[site].configs[identity]
            return self.provisioned.configs[identity]
        except KeyError:
            raise FlctlError(f"no provisioned identity {identity!r}") from None

    def settings(self, client_id: str) -> MqttSettings:
        """Settings for a session of this process. Secure: the identity `client_id` if it was provisioned,
        else `monitor` (the broker replaces the client id by the username anyway)."""
        if self.provisioned is None:
            return MqttSettings(host="127.0.0.1", port=self.port, client_id=client_id)
        identity = client_id if client_id in self.provisioned.configs else MONITOR
        values = load_node_config(self.node_config(identity)).mqtt_values()
        values.update(host="127.0.0.1", port=self.port)
        return MqttSettings(client_id=identity, **values)

    def flctl_args(self) -> list[str]:
        """Global flctl options that point at this cluster's broker (secure: as the admin, over TLS)."""
        args = ["--host", "127.0.0.1", "--port", str(self.port), "--prefix", self.prefix]
        if self.provisioned is not None:
            args = ["--config", str(self.node_config(ADMIN)), *args]
        return args

    # -- node services -----------------------------------------------------------------------

    def start_node(
        self, name: str, role: str, *, extra_args: list[str] | None = None, port: int | None = None
    ) -> NodeProcess:
        """Start `fl-cloud-aggregator` or `fl-edge-trainer` for node `name` with root workdir/name.

        `port` (default: the broker's, or its site broker's TLS port) lets a node connect somewhere else on
        127.0.0.1, e.g. through a fault-injecting proxy in front of the broker.
        """
        site = self.site_of(name)
        if port is None and site is not None:
            port = self.site_provisioned[site].tls_port
        if name in self.nodes and self.nodes[name].alive():
            raise FlctlError(f"node {name} is already running")
        script, module = _SERVICES[role]
        root = self.workdir / name
        root.mkdir(parents=True, exist_ok=True)
        log_path = root / "service.log"
        log = log_path.open("ab")
        installed = Path(sys.executable).parent / script
        # `python -P -m` keeps the working directory off the import path, like the console script does.
        command = [str(installed)] if installed.exists() else [sys.executable, "-P", "-m", module]
        argv = [
            *command,
            "--node",
            name,
            "--root",
            str(root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port if port is not None else self.port),
            "--prefix",
            self.prefix,
            *(["--config", str(self.node_config(name))] if self.provisioned is not None else []),
            *self._service_args,
            *(extra_args or []),
        ]
        env = {**os.environ, **self._env}
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        node = NodeProcess(name, role, root, log_path, proc, log)
        previous = self.nodes.get(name)
        if previous is not None:
            self.retired.append(previous)
        self.nodes[name] = node
        self._launches[name] = (role, list(extra_args or []), port)
        return node

    def kill_node(self, name: str, *, hard: bool = True) -> int | None:
        """Stop node `name` (SIGKILL by default: no clean shutdown, no final status) and forget it.

        The process moves to `retired`; `start_node` or `restart_node` can start the node again later with
        the same root. Returns the exit code (-9 after SIGKILL).
        """
        node = self.nodes.pop(name)
        code = node.stop(hard=hard)
        self.retired.append(node)
        return code

    def restart_node(self, name: str, *, hard: bool = True) -> NodeProcess:
        """Kill node `name` (SIGKILL unless `hard` is False) and start it again with the same root and arguments."""
        role, extra_args, port = self._launches[name]
        if name in self.nodes:
            self.kill_node(name, hard=hard)
        return self.start_node(name, role, extra_args=extra_args, port=port)

    def stop(self) -> None:
        """Stop every node service, then the broker."""
        for node in list(self.nodes.values()):
            node.stop()
        for broker in self.site_brokers.values():
            broker.stop()
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.stop()

    # -- following a job ---------------------------------------------------------------------

    @contextmanager
    def watch(self, client_id: str, *filters: str) -> Iterator[queue.Queue[Inbound]]:
        """A session subscribed to `filters`; yields its inbox (messages are acknowledged on receipt)."""
        inbox: queue.Queue[Inbound] = queue.Queue()
        session = Session(self.settings(client_id), inbox=inbox, topics=self.topics)
        for flt in filters:
            session.subscribe(flt)
        session.start()
        if not session.wait_connected(10.0):
            session.stop()
            raise FlctlError(f"cannot reach the broker on port {self.port}")
        try:
            yield inbox
        finally:
            session.stop()

    def wait_for_job(
        self,
        job: str,
        *,
        timeout: float,
        on_change: Callable[[JobStatus], None] | None = None,
        check_alive: bool = True,
    ) -> JobStatus:
        """Follow a job's status topic until it is Succeeded or Failed; raise FlctlError on timeout.

        A node service that dies while the job runs ends the wait with its log tail: waiting out the
        timeout would only hide the reason.
        """
        topic = self.topics.status(Kind.JOB, job)
        deadline = time.monotonic() + timeout
        last: JobStatus | None = None
        with self.watch(f"watch-{job}-{os.getpid()}", topic) as inbox:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    phase = last.phase.value if last else "no status"
                    raise FlctlError(f"job {job!r} did not finish within {timeout:.0f} s (last phase: {phase})")
                if check_alive:
                    self._raise_if_dead()
                try:
                    msg = inbox.get(timeout=min(remaining, 1.0))
                except queue.Empty:
                    continue
                if not msg.payload:
                    continue
                try:
                    status = JobStatus.model_validate_json(msg.payload)
                except ValidationError:
                    continue
                if status.name != job:
                    # Secure clusters watch as `monitor` (the broker's client id is the username), whose
                    # persistent session may still hold an earlier wait's subscription and messages.
                    continue
                last = status
                if on_change is not None:
                    on_change(status)
                if status.phase.finished:
                    return status

    def _raise_if_dead(self) -> None:
        for node in self.nodes.values():
            if not node.alive():
                raise FlctlError(
                    f"the {node.role} service of node {node.name} exited with code {node.proc.returncode}; "
                    f"last lines of {node.log_path}:\n{node.log_tail()}"
                )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (Mosquitto cannot bind port 0 itself)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

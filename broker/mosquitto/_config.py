"""Mosquitto 2.0 configuration, rendered from one dataclass: the single source of the broker's settings.

Every size and queue limit is written out explicitly, because the defaults differ between versions
(2.1 changed `max_packet_size` from unlimited to 2,000,000 bytes) and some overflow silently.
`fl-broker config` prints the rendered file.
"""

from __future__ import annotations

import os
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from broker._settings import check_port
from broker.mosquitto._bridge import Bridge, render_bridge

__all__ = ["BrokerConfig", "TlsListener", "render_config"]

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class TlsListener:
    """A second, TLS listener (the nodes' door). `bind` None or "" listens on every interface.

    `require_certificate` makes clients present a certificate signed by `cafile` (mutual TLS);
    `use_identity_as_username` then takes the username from the certificate's CN (the password file
    is not consulted on this listener).
    """

    port: int
    _: KW_ONLY
    cafile: Path
    certfile: Path
    keyfile: Path
    bind: str | None = None
    tls_version: str = "tlsv1.2"
    require_certificate: bool = False
    use_identity_as_username: bool = False
    # A certificate revocation list (PEM) signed by `cafile`'s CA: `flctl node rotate/remove` revoke a
    # node's certificate there. Mosquitto 2.0 reads it again on SIGHUP for new connections.
    crlfile: Path | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_port(self.port, problems, "TLS port")
        if self.tls_version not in ("tlsv1.2", "tlsv1.3"):
            problems.append(f"tls_version {self.tls_version!r} must be tlsv1.2 or tlsv1.3")
        if self.use_identity_as_username and not self.require_certificate:
            problems.append("use_identity_as_username needs require_certificate")
        if self.crlfile is not None and not self.require_certificate:
            problems.append("crlfile needs require_certificate (it revokes client certificates)")
        for name in ("cafile", "certfile", "keyfile", "bind", "crlfile"):
            value = getattr(self, name)
            if value is not None and any(ch.isspace() for ch in str(value)):
                problems.append(f"{name} {str(value)!r} contains whitespace, which mosquitto.conf cannot express")
        if problems:
            raise ValueError("invalid TLS listener: " + "; ".join(problems))


@dataclass(frozen=True)
class BrokerConfig:
    """Settings of one Mosquitto broker. `data_dir` holds the persistence database (mosquitto.db)."""

    port: int
    _: KW_ONLY
    data_dir: Path
    bind: str = "127.0.0.1"
    persistence: bool = True
    max_packet_size: int = 4 * MiB
    max_queued_messages: int = 10000
    max_queued_bytes: int = 1 * GiB
    max_inflight_messages: int = 20
    autosave_interval: int = 30
    persistent_client_expiration: str = "14d"
    sys_interval: int = 10
    allow_anonymous: bool = True
    password_file: Path | None = None
    acl_file: Path | None = None
    # Replace every client's id by its username, so no one can take over another node's id (and session).
    use_username_as_clientid: bool = False
    # A second listener with TLS; `port`/`bind` stay the plain one (loopback for local tools, when secured).
    tls: TlsListener | None = None
    run_as_root: bool | None = None  # None: `user root` exactly when running as root
    # Where the broker writes its process id at start: `flctl node add/rotate/remove` signal it (SIGHUP) to
    # reload the password file and ACL. None: no pid file (what `fl-broker config` writes).
    pid_file: Path | None = None
    extra: str = ""
    # A site broker's bridge to the cloud broker (`flctl site add`), rendered last: it is a section.
    bridge: Bridge | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_port(self.port, problems)
        if self.max_packet_size < 1024:
            problems.append(f"max_packet_size {self.max_packet_size} is below 1024 bytes")
        for name in (
            "max_queued_messages",
            "max_queued_bytes",
            "max_inflight_messages",
            "autosave_interval",
            "sys_interval",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if not 0 < self.max_inflight_messages <= 65535:
            problems.append("max_inflight_messages must be in 1..65535 (it is advertised as ReceiveMaximum)")
        for name in ("data_dir", "password_file", "acl_file", "bind", "persistent_client_expiration", "pid_file"):
            value = getattr(self, name)
            if value is not None and any(ch.isspace() for ch in str(value)):
                problems.append(f"{name} {str(value)!r} contains whitespace, which mosquitto.conf cannot express")
        if self.tls is not None and self.tls.port == self.port and self.tls.bind in (None, "", self.bind):
            problems.append(f"the TLS listener and the plain listener both use port {self.port}")
        if problems:
            raise ValueError("invalid broker config: " + "; ".join(problems))


_CLIENTID_LINES = [
    "# The client id is replaced by the username: no one can take over another node's id or session.",
    "use_username_as_clientid true",
]


def render_config(cfg: BrokerConfig) -> str:
    """The mosquitto.conf text for `cfg`, every limit explicit and explained."""
    as_root = cfg.run_as_root if cfg.run_as_root is not None else (hasattr(os, "geteuid") and os.geteuid() == 0)
    data_dir = str(Path(cfg.data_dir).absolute()).rstrip("/") + "/"
    lines = [
        "# mosquitto.conf for the federated-learning broker (rendered by `fl-broker config`; Mosquitto 2.0).",
        "# Every limit is explicit: defaults differ between 2.0 and 2.1, and some overflow silently.",
        "",
        "# One authentication and ACL set for every listener.",
        "per_listener_settings false",
    ]
    if as_root:
        lines += [
            "# Running as root: stay root instead of switching to user 'mosquitto', which could not read",
            "# a 0600 password file nor write the persistence database in a root-owned directory.",
            "user root",
        ]
    if cfg.pid_file is not None:
        lines += [
            "# The process id, for `flctl node add/rotate/remove` (they send SIGHUP to reload passwd and acl).",
            f"pid_file {cfg.pid_file}",
        ]
    lines += [
        "",
        "# -- listeners ----------------------------------------------------------------------------------",
        f"listener {cfg.port} {cfg.bind}",
    ]
    if cfg.use_username_as_clientid:
        lines += _CLIENTID_LINES
    if cfg.tls is not None:
        tls = cfg.tls
        lines += [
            "# TLS listener for the nodes: the broker proves itself with server.crt, signed by the deployment's CA.",
            f"listener {tls.port}" + (f" {tls.bind}" if tls.bind else ""),
            f"cafile {tls.cafile}",
            f"certfile {tls.certfile}",
            f"keyfile {tls.keyfile}",
            "# The minimum TLS version (Mosquitto 2.0).",
            f"tls_version {tls.tls_version}",
        ]
        if tls.require_certificate:
            lines += ["# Mutual TLS: every client presents a certificate issued by the CA.", "require_certificate true"]
        if tls.use_identity_as_username:
            lines += ["# The certificate's CN is the username the ACL keys on.", "use_identity_as_username true"]
        if tls.crlfile is not None:
            lines += [
                "# Revoked client certificates (flctl node rotate/remove); re-read on SIGHUP.",
                f"crlfile {tls.crlfile}",
            ]
        if cfg.use_username_as_clientid:
            lines += _CLIENTID_LINES
    lines += [
        "",
        "# -- authentication (every listener) -------------------------------------------------------------",
        "# Anonymous clients are " + ("allowed (development)." if cfg.allow_anonymous else "refused."),
        f"allow_anonymous {'true' if cfg.allow_anonymous else 'false'}",
    ]
    if cfg.password_file is not None:
        lines += [
            "# Users and password hashes (mosquitto_passwd); re-read on SIGHUP.",
            f"password_file {cfg.password_file}",
        ]
    if cfg.acl_file is not None:
        lines += ["# Topic access per user (pattern lines key on %u); re-read on SIGHUP.", f"acl_file {cfg.acl_file}"]
    lines += [
        "",
        "# -- persistence: sessions, queued and retained messages survive a restart ----------------------",
        f"persistence {'true' if cfg.persistence else 'false'}",
        f"persistence_location {data_dir}",
        "# Seconds between snapshots of the in-memory database; a kill -9 loses up to this much.",
        f"autosave_interval {cfg.autosave_interval}",
        "# Drop sessions of clients that stayed away this long (backstop for abandoned client ids).",
        f"persistent_client_expiration {cfg.persistent_client_expiration}",
        "",
        "# -- sizes and queues ----------------------------------------------------------------------------",
        "# Largest MQTT packet accepted, advertised to v5 clients in CONNACK. A client sending a bigger one",
        "# is disconnected; clients size their chunks from it. (message_size_limit is not used: Mosquitto",
        "# 2.0 answers it with a PUBACK that paho 2.2 treats as malformed, which loops.)",
        f"max_packet_size {cfg.max_packet_size}",
        "# QoS 1/2 messages in flight per client, advertised as ReceiveMaximum; also the window towards",
        "# clients that send no ReceiveMaximum of their own (the project's sessions send 65535).",
        f"max_inflight_messages {cfg.max_inflight_messages}",
        "# No byte limit on messages in flight (max_inflight_messages bounds them).",
        "max_inflight_bytes 0",
        "# Messages queued per client beyond those in flight (offline persistent sessions queue everything).",
        "# Overflow is dropped silently (logged once, counted in $SYS/broker/publish/messages/dropped).",
        f"max_queued_messages {cfg.max_queued_messages}",
        "# Bytes queued per client; the first of the two queue limits reached applies.",
        f"max_queued_bytes {cfg.max_queued_bytes}",
        "# QoS 0 messages are never queued for offline clients.",
        "queue_qos0_messages false",
        "# No broker-wide memory cap: the queue limits above bound per-client memory.",
        "memory_limit 0",
        "retain_available true",
        "# Control messages (acks, barriers, manifests) are small: send them at once instead of letting",
        "# Nagle's algorithm hold each for tens of milliseconds.",
        "set_tcp_nodelay true",
        "",
        "# -- logging and monitoring ----------------------------------------------------------------------",
        "# stderr is line-buffered (stdout to a file or pipe is block-buffered).",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
        "# $SYS statistics every N seconds (clients, dropped messages, store size).",
        f"sys_interval {cfg.sys_interval}",
    ]
    if cfg.extra.strip():
        lines += [
            "",
            "# -- extra settings ------------------------------------------------------------------------------",
            cfg.extra.strip(),
        ]
    if cfg.bridge is not None:
        lines += ["", *render_bridge(cfg.bridge)]
    return "\n".join(lines) + "\n"

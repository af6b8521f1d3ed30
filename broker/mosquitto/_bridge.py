"""A Mosquitto 2.0 bridge (`connection` section): a site broker's link to the cloud broker (docs/operations.md).

The bridge speaks MQTT 3.1.1 on purpose: Mosquitto 2.0 sends an MQTT 5 bridge's CONNECT without a
Session-Expiry property, so the cloud broker would drop the bridge's session at every disconnect and lose
what it queued for the site (acks) while the WAN was down. With 3.1.1, `cleansession false` keeps that
session, and `try_private` (on by default) tells the cloud broker it is a bridge: retained flags cross
unchanged and nothing the bridge publishes is sent back to it (no echo). The price: MQTT 5 properties
(correlation data, user properties) do not cross, so node requests (`flctl logs`) are not bridged.

Each topic line is one direction, `in` (cloud -> site) or `out` (site -> cloud); there is no `both`: with a
single direction per topic nothing a bridge forwards can come back to it.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Literal

from broker._settings import check_port

__all__ = ["Bridge", "BridgeTopic", "render_bridge", "render_bridge_topics"]

Direction = Literal["in", "out"]


@dataclass(frozen=True)
class BridgeTopic:
    """One `topic` line: a filter, forwarded `in` (remote -> local) or `out` (local -> remote) at `qos`."""

    pattern: str
    direction: Direction
    qos: int = 1

    def __post_init__(self) -> None:
        if not self.pattern or any(ch.isspace() for ch in self.pattern):
            raise ValueError(f"bridge topic {self.pattern!r} must be a non-empty filter without whitespace")
        if self.direction not in ("in", "out"):
            raise ValueError(f"bridge topic {self.pattern}: direction {self.direction!r} must be in or out")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"bridge topic {self.pattern}: qos {self.qos} must be 0, 1 or 2")


@dataclass(frozen=True)
class Bridge:
    """A bridge from this broker to `host`:`port`, logging in as `username` (also its client id there).

    `cafile` set: TLS to the remote, which must present a certificate for `host` signed by it.
    `notification_topic`: where the bridge publishes "1"/"0" (retained) on both brokers; on the remote
    "0" is its last will. `restart_timeout` is (base, cap) of the reconnect backoff in seconds (two values:
    2.0.11 mishandles one).
    """

    name: str
    host: str
    port: int
    _: KW_ONLY
    username: str
    password: str = field(repr=False)
    topics: tuple[BridgeTopic, ...]
    notification_topic: str
    cafile: Path | None = None
    keepalive: int = 60
    restart_timeout: tuple[int, int] = (5, 60)
    max_packet_size: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_port(self.port, problems, "bridge port")
        for what in ("name", "host", "username", "password", "notification_topic", "cafile"):
            value = getattr(self, what)
            if value is not None and (not str(value) or any(ch.isspace() for ch in str(value))):
                shown = "<secret>" if what == "password" else repr(str(value))
                problems.append(f"bridge {what} {shown} must be non-empty without whitespace")
        if not self.topics:
            problems.append("a bridge needs at least one topic")
        lines = [(t.pattern, t.direction) for t in self.topics]
        if len(set(lines)) != len(lines):
            problems.append("a bridge topic is listed twice")
        if self.keepalive < 5:
            problems.append(f"bridge keepalive {self.keepalive} must be >= 5 s (Mosquitto's minimum)")
        base, cap = self.restart_timeout
        if not 1 <= base <= cap:
            problems.append(f"bridge restart_timeout {self.restart_timeout} must be (base, cap) with 1 <= base <= cap")
        if self.max_packet_size < 0:
            problems.append("bridge max_packet_size must be >= 0")
        if problems:
            raise ValueError("invalid bridge: " + "; ".join(problems))


def render_bridge(bridge: Bridge) -> list[str]:
    """The `connection` section's lines (the last section of mosquitto.conf: every line after it belongs to it)."""
    lines = [
        "# -- bridge to the cloud broker (`flctl site add`; bridges are not reloaded by SIGHUP: restart) -------",
        f"connection {bridge.name}",
        f"address {bridge.host}:{bridge.port}",
        "# MQTT 3.1.1: Mosquitto 2.0 sends an MQTT 5 bridge no session expiry, so its cloud session would",
        "# die at each disconnect; 3.1.1 with try_private keeps it, keeps retained flags and never echoes.",
        "bridge_protocol_version mqttv311",
        "try_private true",
        f"remote_clientid {bridge.username}",
        f"remote_username {bridge.username}",
        f"remote_password {bridge.password}",
        "# Keep the session on both sides: what the cloud sends while the WAN is down is queued for this",
        "# site there, what the edges send is queued here (max_queued_messages/bytes above).",
        "cleansession false",
        "local_cleansession false",
        "# Reconnect backoff (base, cap) in seconds, and how fast a dead WAN link is noticed.",
        f"restart_timeout {bridge.restart_timeout[0]} {bridge.restart_timeout[1]}",
        f"keepalive_interval {bridge.keepalive}",
        "start_type automatic",
        "# '1' up / '0' down, retained, on both brokers; on the cloud '0' is the bridge's last will.",
        "notifications true",
        f"notification_topic {bridge.notification_topic}",
        f"bridge_max_packet_size {bridge.max_packet_size}",
    ]
    if bridge.cafile is not None:
        lines += [
            "# TLS to the cloud: its server certificate must be signed by this CA.",
            f"bridge_cafile {bridge.cafile}",
        ]
    return [*lines, *render_bridge_topics(bridge.topics)]


def render_bridge_topics(topics: tuple[BridgeTopic, ...]) -> list[str]:
    """The section's `topic` lines, `out` first, then `in` (`flctl site sync` rewrites only these)."""
    lines = ["# site -> cloud: what this site's edges publish (one direction per topic: nothing loops)"]
    lines += [f"topic {t.pattern} out {t.qos}" for t in topics if t.direction == "out"]
    lines.append("# cloud -> site: what the edges read")
    lines += [f"topic {t.pattern} in {t.qos}" for t in topics if t.direction == "in"]
    return lines

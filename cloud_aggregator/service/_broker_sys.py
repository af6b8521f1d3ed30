"""The broker's `$SYS` counters the aggregator exports: which topics, under which metric names.

Mosquitto publishes its statistics every `sys_interval` seconds on `$SYS/broker/...` (retained; a value
is published again only when it changed). The aggregator identity may read `$SYS/#` (the ACL of
`flctl broker init`), so the aggregator relays the few that matter for this system, above all
`publish/messages/dropped`: a message dropped from a full per-client queue is lost without any error.
Only these topics are subscribed (QoS 0, so nothing is queued for the aggregator while it is away):
`$SYS/#` would also bring some thirty load averages every interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["SYS_METRICS", "SysMetric", "parse_sys_value"]


@dataclass(frozen=True)
class SysMetric:
    """One `$SYS` topic as a Prometheus metric. Counters reset when the broker restarts (Prometheus'
    `increase()` and `rate()` handle that)."""

    topic: str
    name: str  # without the _total suffix of a counter
    type: Literal["counter", "gauge"]
    help: str


_P = "$SYS/broker/"

SYS_METRICS: tuple[SysMetric, ...] = (
    SysMetric(
        _P + "publish/messages/dropped",
        "fl_broker_publish_messages_dropped",
        "counter",
        "Messages the broker dropped since it started (full per-client queues): must stay 0",
    ),
    SysMetric(_P + "publish/messages/received", "fl_broker_publish_messages_received", "counter", "PUBLISH received"),
    SysMetric(_P + "publish/messages/sent", "fl_broker_publish_messages_sent", "counter", "PUBLISH sent"),
    SysMetric(_P + "bytes/received", "fl_broker_received_bytes", "counter", "Bytes the broker received"),
    SysMetric(_P + "bytes/sent", "fl_broker_sent_bytes", "counter", "Bytes the broker sent"),
    SysMetric(_P + "clients/connected", "fl_broker_clients_connected", "gauge", "Clients connected now"),
    SysMetric(
        _P + "clients/disconnected",
        "fl_broker_clients_disconnected",
        "gauge",
        "Persistent sessions whose client is away (their queues grow)",
    ),
    SysMetric(_P + "store/messages/count", "fl_broker_store_messages", "gauge", "Messages held (retained and queued)"),
    SysMetric(
        _P + "store/messages/bytes", "fl_broker_store_messages_bytes", "gauge", "Payload bytes held (retained, queued)"
    ),
    SysMetric(_P + "retained messages/count", "fl_broker_retained_messages", "gauge", "Retained messages"),
    SysMetric(_P + "subscriptions/count", "fl_broker_subscriptions", "gauge", "Subscriptions"),
    SysMetric(_P + "heap/current", "fl_broker_heap_bytes", "gauge", "Broker heap in use"),
    SysMetric(_P + "heap/maximum", "fl_broker_heap_max_bytes", "gauge", "Largest broker heap since it started"),
    SysMetric(_P + "uptime", "fl_broker_uptime_seconds", "gauge", "Seconds since the broker started"),
)


def parse_sys_value(payload: bytes) -> float | None:
    """The number a `$SYS` payload starts with ("42", "0.00", "17 seconds"); None if there is none."""
    try:
        first = payload.decode("ascii").split(maxsplit=1)[0]
        return float(first)
    except (UnicodeDecodeError, IndexError, ValueError):
        return None

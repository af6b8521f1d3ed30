"""What a session hands out: received messages (`Inbound`), where it puts them (`Inbox`), publish outcomes.

Also the size of an MQTT v5 PUBLISH packet (`publish_packet_size`), which the session measures before
sending: paho ignores the broker's CONNACK MaximumPacketSize, and an oversized packet makes the broker
drop the connection, after which paho resends it forever.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from paho.mqtt.properties import Properties

from broker._errors import BrokerError

__all__ = [
    "PACKET_HEADROOM",
    "Inbound",
    "Inbox",
    "PublishObserver",
    "PublishResult",
    "new_properties",
    "publish_packet_size",
]

# Room left in every packet for the fixed header, topic, packet id and properties: `max_payload`
# is the packet limit minus this. Topics of the layout are < 300 bytes; properties a few dozen.
PACKET_HEADROOM = 1024


@dataclass(frozen=True)
class Inbound:
    """A message delivered to the inbox. Hand it back to `Session.ack` once it is handled."""

    topic: str
    payload: bytes
    retain: bool
    dup: bool
    qos: int
    mid: int
    user_properties: dict[str, str] = field(default_factory=dict)
    # MQTT v5 request/response: where the sender wants the answer, and what to echo back with it.
    response_topic: str | None = None
    correlation_data: bytes | None = None
    # Which connection delivered it: a mid is only meaningful on the connection that assigned it.
    connection: int = field(default=0, compare=False, repr=False)


class Inbox(Protocol):
    """Where a session delivers messages: a `queue.Queue[Inbound]`, or a service's event loop.

    ``put_nowait`` runs on paho's network thread, so it must never block; `queue.Full` means the
    message is dropped unacknowledged (the broker redelivers it on the next connection).
    """

    def put_nowait(self, item: Inbound, /) -> None: ...


class PublishObserver(Protocol):
    """Told of every message a session hands to paho (topic, payload, retain), on the publishing thread.

    The edge's residency ledger is one: it sees every byte the node publishes, whoever in the service
    published it. It must be quick and must not call back into the session."""

    def __call__(self, topic: str, payload: bytes, retain: bool, /) -> None: ...


class PublishResult:
    """The outcome of one publish: completes when the broker acknowledged it (QoS 1) or refused it."""

    __slots__ = ("_done", "_error", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._done = threading.Event()
        self._error: BrokerError | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def error(self) -> BrokerError | None:
        """The failure, once done; None while pending or after success."""
        return self._error

    def wait(self, timeout: float | None) -> None:
        """Wait for the broker's answer; raise PublishError if refused, TimeoutError if none in time."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"publish to {self.topic!r} not acknowledged within {timeout} s")
        if self._error is not None:
            raise self._error

    def resolve(self, error: BrokerError | None = None) -> None:
        """Complete the result: acknowledged (None) or failed with `error`. For the publisher that made it
        (`Session`'s reconciler; a client of one's own, as the load generator's)."""
        self._error = error
        self._done.set()

    def __repr__(self) -> str:
        state = "pending" if not self.done else ("failed" if self._error else "acknowledged")
        return f"PublishResult({self.topic!r}, {state})"


def new_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves __init__ unannotated


def _varint_len(value: int) -> int:
    n = 1
    while value >= 128:
        value >>= 7
        n += 1
    return n


def publish_packet_size(topic: str, payload_len: int, properties: Properties | None, qos: int) -> int:
    """Size in bytes of an MQTT v5 PUBLISH packet: fixed header, topic, packet id, properties, payload."""
    props_len = len(properties.pack()) if properties is not None else 1  # type: ignore[no-untyped-call]
    remaining = 2 + len(topic.encode()) + (2 if qos > 0 else 0) + props_len + payload_len
    return 1 + _varint_len(remaining) + remaining

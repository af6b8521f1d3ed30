"""Exceptions raised by the broker package (the medium).

    BrokerError                 root: everything `broker` raises on purpose
    ├── ConnectError            the session cannot be set up or the broker refused it (TLS, credentials)
    ├── PublishError            the broker refused a publish (v5 PUBACK reason code >= 0x80); `.topic`,
    │   │                       `.reason_code`
    │   └── PayloadTooLarge     the packet would exceed the connection's packet limit; raised before
    │                           anything is sent; `.topic`, `.size`, `.limit`
    └── TransferError           a chunked transfer failed (timeout, inconsistent manifest, bad blob)

Third-party errors (OSError, ssl.SSLError, paho reason codes) are translated into these at one
boundary, the session module (`broker._session`), with ``raise ... from exc``. Timeouts are the
builtin `TimeoutError`, as documented on each waiting call. Contract errors (`schemas.WireError`,
`schemas.TopicError`) pass through unchanged where the input itself is malformed.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConnectError",
    "PayloadTooLarge",
    "PublishError",
    "TransferError",
]


class BrokerError(Exception):
    """Root of every error the broker package raises deliberately."""


class ConnectError(BrokerError):
    """The session cannot be set up (TLS files, settings) or the broker refused the connection.

    `reason_code` is the CONNACK reason code when the broker refused, else None.
    """

    def __init__(self, message: str, *, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class PublishError(BrokerError):
    """A publish failed: the broker refused it (`reason_code` from the v5 PUBACK) or paho did not take it."""

    def __init__(self, topic: str, reason_code: int, message: str) -> None:
        super().__init__(f"publish to {topic!r} failed: {message} (reason code {reason_code:#04x})")
        self.topic = topic
        self.reason_code = reason_code


class PayloadTooLarge(PublishError):  # noqa: N818 - name fixed by docs/dev/internal-apis.md
    """A publish would exceed the connection's packet limit; nothing was sent.

    `size` is the estimated packet size in bytes (payload, topic, properties and headers), `limit` the
    largest packet allowed on this connection (min of our own ceiling and the broker's CONNACK
    MaximumPacketSize).
    """

    # MQTT v5 reason code "Packet too large"; used so callers can treat it like other refusals.
    REASON_CODE = 0x95

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(
            topic,
            self.REASON_CODE,
            f"packet of {size} bytes exceeds the connection's limit of {limit} bytes; chunk the payload",
        )
        self.size = size
        self.limit = limit


class TransferError(BrokerError):
    """A chunked transfer failed: not acknowledged in time, an inconsistent manifest, a blob that fails its hash."""

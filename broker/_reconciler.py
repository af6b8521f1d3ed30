"""The session's bookkeeping thread: every piece of state paho's callbacks must not touch.

paho's network thread only puts events here (`Reconciler.put`); this thread matches ``on_publish`` acks
to the `PublishResult` of each ``publish()`` (the ack may arrive before ``publish()`` has returned its
mid; mids are reused, so a matched mid is forgotten at once), resolves barriers, acknowledges the
session's own sync messages and keeps the connection state (`connected`, `connect_error`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from structlog.typing import FilteringBoundLogger

from broker._errors import BrokerError, ConnectError, PublishError
from broker._messages import PublishResult

__all__ = ["RC_UNSPECIFIED", "Reconciler"]

# MQTT v5 reason code "Unspecified error": used for failures that are not the broker's answer.
RC_UNSPECIFIED = 0x80


@dataclass(frozen=True)
class _Sent:
    mid: int
    result: PublishResult


@dataclass(frozen=True)
class _Acked:
    mid: int
    reason_code: int
    reason: str


@dataclass(frozen=True)
class _Connected:
    session_present: bool
    packet_limit: int
    broker_limit: int | None
    connection: int


@dataclass(frozen=True)
class _Refused:
    reason_code: int
    reason: str


@dataclass(frozen=True)
class _Disconnected:
    reason: str


@dataclass(frozen=True)
class _ConnectFailed:
    pass


@dataclass(frozen=True)
class _SyncMessage:
    payload: bytes
    mid: int
    qos: int
    connection: int


@dataclass
class _Books:
    """The reconciler's state; only its thread touches it."""

    sent: dict[int, PublishResult] = field(default_factory=dict)
    acked: dict[int, _Acked] = field(default_factory=dict)
    barriers: dict[bytes, _Waiter] = field(default_factory=dict)
    was_connected: bool = False


class _Waiter:
    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: BrokerError | None = None


@dataclass(frozen=True)
class _BarrierRegister:
    nonce: bytes
    waiter: _Waiter


@dataclass(frozen=True)
class _BarrierCancel:
    nonce: bytes


@dataclass(frozen=True)
class _Stop:
    reason: str


_Event = (
    _Sent
    | _Acked
    | _Connected
    | _Refused
    | _Disconnected
    | _ConnectFailed
    | _SyncMessage
    | _BarrierRegister
    | _BarrierCancel
    | _Stop
)


class Reconciler:
    """The thread that owns a session's books; see the module docstring."""

    def __init__(
        self,
        *,
        client_id: str,
        ack: Callable[[int, int], object],
        connection: Callable[[], int],
        stopped: threading.Event,
        log: FilteringBoundLogger,
    ) -> None:
        """`ack(mid, qos)` acknowledges a received message; `connection()` is the current connection's number."""
        self._client_id = client_id
        self._ack = ack
        self._connection = connection
        self._stopped = stopped
        self._log = log
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self.connected = threading.Event()
        self.connect_error: ConnectError | None = None
        self._thread = threading.Thread(target=self._run, name=f"mqtt-reconciler-{client_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, event: _Event) -> None:
        """Hand an event to the thread (any thread; never blocks)."""
        self._events.put(event)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        books = _Books()
        handlers: dict[type[Any], Callable[[Any, _Books], None]] = {
            _Sent: self._ev_sent,
            _Acked: self._ev_acked,
            _SyncMessage: self._ev_sync,
            _BarrierRegister: self._ev_barrier_register,
            _BarrierCancel: self._ev_barrier_cancel,
            _Connected: self._ev_connected,
            _Refused: self._ev_refused,
            _Disconnected: self._ev_disconnected,
            _ConnectFailed: self._ev_connect_failed,
        }
        while True:
            event = self._events.get()
            if isinstance(event, _Stop):
                self._ev_stop(event, books)
                return
            try:
                handlers[type(event)](event, books)
            except Exception as exc:  # keep reconciling whatever one event did
                self._log.exception("reconciler failed on an event", event_type=type(event).__name__, error=str(exc))

    def _ev_sent(self, event: _Sent, books: _Books) -> None:
        ack = books.acked.pop(event.mid, None)
        if ack is None:
            books.sent[event.mid] = event.result
        else:
            self._resolve(event.result, ack)

    def _ev_acked(self, event: _Acked, books: _Books) -> None:
        result = books.sent.pop(event.mid, None)  # a matched mid is forgotten: paho reuses mids
        if result is None:
            books.acked[event.mid] = event  # publish() has not reported this mid yet
        else:
            self._resolve(result, event)

    def _ev_sync(self, event: _SyncMessage, books: _Books) -> None:
        if event.qos > 0 and event.connection == self._connection():
            self._ack(event.mid, event.qos)
        waiter = books.barriers.pop(event.payload, None)
        if waiter is not None:
            waiter.event.set()
        # else: the nonce of an earlier barrier or process (persistent session), or a duplicate copy

    def _ev_barrier_register(self, event: _BarrierRegister, books: _Books) -> None:
        books.barriers[event.nonce] = event.waiter

    def _ev_barrier_cancel(self, event: _BarrierCancel, books: _Books) -> None:
        books.barriers.pop(event.nonce, None)

    def _ev_connected(self, event: _Connected, books: _Books) -> None:
        self.connect_error = None
        self.connected.set()
        books.was_connected = True
        self._log.info(
            "mqtt connected",
            session_present=event.session_present,
            packet_limit=event.packet_limit,
            broker_packet_limit=event.broker_limit,
            connection=event.connection,
        )

    def _ev_refused(self, event: _Refused, _books: _Books) -> None:
        self.connect_error = ConnectError(
            f"broker refused {self._client_id!r}: {event.reason}", reason_code=event.reason_code
        )
        self._log.error("mqtt connection refused", reason=event.reason, reason_code=event.reason_code)

    def _ev_disconnected(self, event: _Disconnected, books: _Books) -> None:
        self.connected.clear()
        if not books.was_connected:  # paho may report one loss twice (#870)
            return
        books.was_connected = False
        if self._stopped.is_set():
            self._log.debug("mqtt disconnected", reason=event.reason)
        else:
            self._log.warning("mqtt disconnected", reason=event.reason)

    def _ev_connect_failed(self, _event: _ConnectFailed, _books: _Books) -> None:
        self._log.debug("broker unreachable; retrying")

    def _ev_stop(self, event: _Stop, books: _Books) -> None:
        for result in books.sent.values():
            result._resolve(PublishError(result.topic, RC_UNSPECIFIED, event.reason))
        for waiter in books.barriers.values():
            waiter.error = BrokerError(f"barrier: {event.reason}")
            waiter.event.set()

    def _resolve(self, result: PublishResult, ack: _Acked) -> None:
        if ack.reason_code >= 0x80:
            self._log.warning("publish refused by the broker", topic=result.topic, reason=ack.reason)
            result._resolve(PublishError(result.topic, ack.reason_code, ack.reason))
        else:
            result._resolve()  # 0x00 Success, 0x10 No matching subscribers

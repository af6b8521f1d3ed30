"""The session's bookkeeping thread: every piece of state paho's callbacks must not touch.

paho's network thread and `Session`'s callers only call the "any thread" methods of `Reconciler`
(``on_sent``, ``on_acked``, ...): each queues one step and returns at once. This thread runs the steps
in order: it matches ``on_publish`` acks to the `PublishResult` of each ``publish()`` (the ack may arrive
before ``publish()`` has returned its mid; mids are reused, so a matched mid is forgotten at once),
resolves barriers, acknowledges the session's own sync messages and keeps the connection state
(`connected`, `connect_error`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger

from broker._errors import BrokerError, ConnectError, PublishError
from broker._messages import PublishResult

__all__ = ["RC_UNSPECIFIED", "Reconciler"]

# MQTT v5 reason code "Unspecified error": used for failures that are not the broker's answer.
RC_UNSPECIFIED = 0x80
# MQTT v5 DISCONNECT reason code "Session taken over": a newer broker sends it to the connection that
# another CONNECT with the same client id replaced. Mosquitto 2.0.11 closes that socket without it, so
# sessions also leave a retained claim on their sync topic (see `Session`): a reconnect that finds
# another connection's claim there was taken over too.
RC_SESSION_TAKEN_OVER = 0x8E
CLAIM_PREFIX = b"claim:"
TAKEOVER_WARNING = (
    "session taken over by another connection with client id {client_id}: "
    "is a second process running with this node's identity?"
)


class _Waiter:
    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: BrokerError | None = None


@dataclass
class _Books:
    """The reconciler's state; only its thread touches it."""

    sent: dict[int, PublishResult] = field(default_factory=dict)
    acked: dict[int, tuple[int, str]] = field(default_factory=dict)  # mid -> (reason code, reason)
    barriers: dict[bytes, _Waiter] = field(default_factory=dict)
    was_connected: bool = False
    ended: bool = False  # the stop step ran: the thread takes no more steps
    claim_echoed: int = 0  # the connection on which this session's own claim came back
    failed_attempts: int = 0  # connection attempts that failed since the last success
    warned_at: float | None = None  # when the last "broker unreachable" warning was logged


_Step = Callable[[_Books], None]


@dataclass(eq=False, kw_only=True)
class Reconciler:
    """The thread that owns a session's books; see the module docstring."""

    client_id: str
    ack: Callable[[int, int], object]  # ack(mid, qos): acknowledge a received message
    connection: Callable[[], int]  # the current connection's number
    stopped: threading.Event  # set when the session stops: a disconnect is expected then
    log: FilteringBoundLogger
    address: str = ""  # host:port, for the log lines about reaching the broker
    claim: bytes | None = None  # this session's retained claim on its sync topic (persistent sessions)
    # A node that cannot reach its broker says so at WARNING at once, then at most this often (with the
    # number of attempts), so that its log neither looks idle nor fills with one line per retry.
    warn_every: float = 30.0
    # The connection state, for any thread to read.
    connected: threading.Event = field(default_factory=threading.Event, init=False)
    connect_error: ConnectError | None = field(default=None, init=False)
    _steps: queue.SimpleQueue[_Step] = field(default_factory=queue.SimpleQueue, init=False, repr=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mqtt-reconciler-{self.client_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        books = _Books()
        while not books.ended:
            step = self._steps.get()
            try:
                step(books)
            except Exception as exc:  # keep reconciling whatever one event did
                self.log.exception("reconciler failed on an event", event_type=step.__qualname__, error=str(exc))

    # -- any thread: each method queues the step that handles its event, and never blocks ----------

    def on_sent(self, mid: int, result: PublishResult) -> None:
        """``publish()`` handed message `mid` to paho; `result` completes with the broker's ack."""

        def step(books: _Books) -> None:
            ack = books.acked.pop(mid, None)
            if ack is None:
                books.sent[mid] = result
            else:
                self._resolve(result, *ack)

        self._steps.put(step)

    def on_acked(self, mid: int, reason_code: int, reason: str) -> None:
        """The broker answered message `mid` (``on_publish``)."""

        def step(books: _Books) -> None:
            result = books.sent.pop(mid, None)  # a matched mid is forgotten: paho reuses mids
            if result is None:
                books.acked[mid] = (reason_code, reason)  # publish() has not reported this mid yet
            else:
                self._resolve(result, reason_code, reason)

        self._steps.put(step)

    def on_sync_message(self, payload: bytes, mid: int, qos: int, connection: int, *, retain: bool = False) -> None:
        """A message on the session's sync topic (a barrier's nonce, or a connection's claim) arrived on
        connection `connection`."""

        def step(books: _Books) -> None:
            if qos > 0 and connection == self.connection():
                self.ack(mid, qos)
            if payload.startswith(CLAIM_PREFIX):
                self._claimed(books, payload, connection, retain=retain)
                return
            waiter = books.barriers.pop(payload, None)
            if waiter is not None:
                waiter.event.set()
            # else: the nonce of an earlier barrier or process (persistent session), or a duplicate copy

        self._steps.put(step)

    def register_barrier(self, nonce: bytes) -> _Waiter:
        """A barrier waits for `nonce` to come back on the sync topic: the returned waiter is set then."""
        waiter = _Waiter()

        def step(books: _Books) -> None:
            books.barriers[nonce] = waiter

        self._steps.put(step)
        return waiter

    def cancel_barrier(self, nonce: bytes) -> None:
        def step(books: _Books) -> None:
            books.barriers.pop(nonce, None)

        self._steps.put(step)

    def on_connected(self, session_present: bool, packet_limit: int, broker_limit: int | None, connection: int) -> None:
        def step(books: _Books) -> None:
            self.connect_error = None
            self.connected.set()
            books.was_connected = True
            if books.failed_attempts:
                self.log.info(
                    "broker reachable again",
                    broker=self.address,
                    failed_attempts=books.failed_attempts,
                    message=f"connected to {self.address} again after {books.failed_attempts} failed attempts",
                )
            books.failed_attempts, books.warned_at = 0, None
            self.log.info(
                "mqtt connected",
                session_present=session_present,
                packet_limit=packet_limit,
                broker_packet_limit=broker_limit,
                connection=connection,
            )

        self._steps.put(step)

    def on_refused(self, reason_code: int, reason: str) -> None:
        def step(_books: _Books) -> None:
            self.connect_error = ConnectError(f"broker refused {self.client_id!r}: {reason}", reason_code=reason_code)
            self.log.error("mqtt connection refused", reason=reason, reason_code=reason_code)

        self._steps.put(step)

    def on_disconnected(self, reason: str, reason_code: int | None = None) -> None:
        """The connection ended; `reason_code` is the broker's DISCONNECT reason code when it sent one."""

        def step(books: _Books) -> None:
            self.connected.clear()
            if not books.was_connected:  # paho may report one loss twice (#870)
                return
            books.was_connected = False
            if reason_code == RC_SESSION_TAKEN_OVER and not self.stopped.is_set():
                self.log.warning(TAKEOVER_WARNING.format(client_id=self.client_id), reason=reason)
            elif self.stopped.is_set():
                self.log.debug("mqtt disconnected", reason=reason)
            else:
                self.log.warning("mqtt disconnected", reason=reason)

        self._steps.put(step)

    def on_connect_failed(self, reason: str) -> None:
        """A connection attempt failed before the broker answered (refused port, DNS, TLS, timeout)."""
        now = time.monotonic()  # when it failed, not when this thread gets to it

        def step(books: _Books) -> None:
            books.failed_attempts += 1
            if books.warned_at is None or now - books.warned_at >= self.warn_every:
                books.warned_at = now
                self.log.warning(
                    "broker unreachable; retrying",
                    broker=self.address,
                    reason=reason,
                    failed_attempts=books.failed_attempts,
                    next_warning_in=self.warn_every,
                )
            else:
                self.log.debug(
                    "broker unreachable; retrying",
                    broker=self.address,
                    reason=reason,
                    failed_attempts=books.failed_attempts,
                )

        self._steps.put(step)

    def stop(self, reason: str) -> None:
        """Fail every pending publish result and barrier with `reason`; the thread ends after this step."""

        def step(books: _Books) -> None:
            books.ended = True
            for result in books.sent.values():
                result.resolve(PublishError(result.topic, RC_UNSPECIFIED, reason))
            for waiter in books.barriers.values():
                waiter.error = BrokerError(f"barrier: {reason}")
                waiter.event.set()

        self._steps.put(step)

    # -- the reconciler's thread -------------------------------------------------------------------

    def _claimed(self, books: _Books, payload: bytes, connection: int, *, retain: bool) -> None:
        """A claim on the sync topic. Ours: the broker has it. Another's, retained, found on a reconnect
        before ours came back: some connection used this client id while this one was away (on the
        first connection it is simply the previous process's)."""
        if payload == self.claim:
            books.claim_echoed = connection
            return
        other = payload[len(CLAIM_PREFIX) :].decode("utf-8", "replace")
        if retain and connection > 1 and books.claim_echoed != connection:
            self.log.warning(TAKEOVER_WARNING.format(client_id=self.client_id), other_connection=other)
        else:
            self.log.debug("previous connection with this client id", other_connection=other)

    def _resolve(self, result: PublishResult, reason_code: int, reason: str) -> None:
        if reason_code >= 0x80:
            self.log.warning("publish refused by the broker", topic=result.topic, reason=reason)
            result.resolve(PublishError(result.topic, reason_code, reason))
        else:
            result.resolve()  # 0x00 Success, 0x10 No matching subscribers

"""The MQTT session: one paho-mqtt 2.x client (MQTT v5) per process role, safe to use from many threads.

This module is the only place that touches paho, sockets and TLS: it translates their errors into
`broker._errors` with ``raise ... from exc``.

Threads and ownership:

- paho's network thread (``loop_start``) runs the callbacks. They never block and never take a lock
  that another thread holds while calling paho (paho calls ``on_publish`` while holding its own
  ``_out_message_mutex``, which ``publish()`` also takes: issue #226). Each callback either puts an
  `Inbound` into the caller's inbox or puts an event onto ``_events``; ``on_connect`` also renews the
  subscriptions and records the broker's packet limit (plain attribute writes).
- the reconciler thread owns every piece of bookkeeping: it matches ``on_publish`` acks to the
  `PublishResult` of each ``publish()`` (the ack may arrive before ``publish()`` has returned its mid;
  mids are reused, so a matched mid is forgotten at once), resolves barriers, acknowledges the
  session's own sync messages and keeps the connection state.
- any thread may call `Session.publish`, `subscribe`, `ack`, `barrier`.

Delivery semantics (paho 2.2 + Mosquitto 2.0): QoS 1, ``clean_start=False`` plus a
``SessionExpiryInterval`` so the broker keeps subscriptions and queued messages across disconnects
and process restarts; ``manual_ack=True`` so a message is acknowledged only after it was handled.
A publish made while offline is queued by paho and its `PublishResult` completes when the PUBACK
arrives after the reconnect. paho ignores the broker's CONNACK MaximumPacketSize, and an oversized
packet makes the broker drop the connection, after which paho resends it forever; so every publish is
measured first and refused with `PayloadTooLarge` before anything is sent.
"""

from __future__ import annotations

import os
import queue
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from structlog.typing import FilteringBoundLogger

from broker._errors import BrokerError, ConnectError, PayloadTooLarge, PublishError
from runtime import get_logger
from schemas import TopicError, Topics

__all__ = ["Inbound", "Inbox", "MqttSettings", "PublishResult", "Session"]

# Room left in every packet for the fixed header, topic, packet id and properties: `max_payload`
# is the packet limit minus this. Topics of the layout are < 300 bytes; properties a few dozen.
PACKET_HEADROOM = 1024
# paho resends queued QoS>0 messages on reconnect without honouring this (PR #698); keep it at or
# below Mosquitto's advertised ReceiveMaximum (its max_inflight_messages, 20 by default).
MAX_INFLIGHT = 20
# MQTT v5 reason code "Unspecified error": used for failures that are not the broker's answer.
# Un-acked QoS>0 messages the broker may have in flight *to* us. Without it Mosquitto applies its own
# max_inflight_messages (20): with manual acks, a caller holding 20 un-acked messages (say, retained
# ones it has not handled yet) would stall delivery and every barrier behind them. 65535 is the
# protocol maximum; the inbox is the buffer, and the broker's queue limits bound it.
RECEIVE_MAXIMUM = 65535
_RC_UNSPECIFIED = 0x80
_RC_TOPIC_INVALID = 0x90
_MAX_EXPIRY = 2**32 - 1


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """How one node connects to the broker. `client_id` is stable: the node name."""

    client_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive: int = 30
    session_expiry: int = 7 * 24 * 3600
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    max_packet_size: int = 4 * 1024 * 1024
    clean_start: bool = False

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.port <= 65535:
            problems.append(f"port {self.port} is not in 1..65535")
        if self.keepalive < 1:
            problems.append(f"keepalive {self.keepalive} must be >= 1 second")
        if not 0 <= self.session_expiry <= _MAX_EXPIRY:
            problems.append(f"session_expiry {self.session_expiry} must be in 0..{_MAX_EXPIRY} seconds")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            problems.append(
                f"reconnect delays must satisfy 0 < min ({self.reconnect_min}) <= max ({self.reconnect_max})"
            )
        if self.max_packet_size < 2 * PACKET_HEADROOM:
            problems.append(f"max_packet_size {self.max_packet_size} must be >= {2 * PACKET_HEADROOM} bytes")
        try:
            Topics().sync(self.client_id)
        except TopicError as exc:
            problems.append(f"client_id {self.client_id!r}: {exc.reason}")
        if problems:
            raise ValueError("invalid MQTT settings: " + "; ".join(problems))

    @staticmethod
    def env_values(prefix: str = "FL_MQTT_", environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The settings the environment gives (``{prefix}HOST``, ``_PORT``, ...), by field name; ValueError
        for a port or keepalive that is not a number."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in ("host", "username", "password", "tls_ca", "tls_cert", "tls_key"):
            raw = env.get(prefix + name.upper())
            if raw:
                values[name] = raw
        for name, what in (("port", "a port number"), ("keepalive", "a whole number of seconds")):
            raw = env.get(prefix + name.upper())
            if raw:
                try:
                    values[name] = int(raw)
                except ValueError as exc:
                    raise ValueError(f"{prefix}{name.upper()}={raw!r} is not {what}") from exc
        return values

    @classmethod
    def from_env(
        cls, prefix: str = "FL_MQTT_", environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> MqttSettings:
        """Settings from ``{prefix}HOST``, ``_PORT``, ``_KEEPALIVE``, ``_USERNAME``, ``_PASSWORD``, ``_TLS_CA``,
        ``_TLS_CERT``, ``_TLS_KEY``; keyword `overrides` win (pass ``client_id=`` there)."""
        values = cls.env_values(prefix, environ)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown MqttSettings fields: {', '.join(unknown)}")
        values.update(overrides)
        return cls(**values)


# -- messages and results ------------------------------------------------------------------------


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
    # Which connection delivered it: a mid is only meaningful on the connection that assigned it.
    connection: int = field(default=0, compare=False, repr=False)


class Inbox(Protocol):
    """Where a session delivers messages: a `queue.Queue[Inbound]`, or a service's event loop.

    ``put_nowait`` runs on paho's network thread, so it must never block; `queue.Full` means the
    message is dropped unacknowledged (the broker redelivers it on the next connection).
    """

    def put_nowait(self, item: Inbound, /) -> None: ...


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

    def _resolve(self, error: BrokerError | None = None) -> None:
        self._error = error
        self._done.set()

    def __repr__(self) -> str:
        state = "pending" if not self.done else ("failed" if self._error else "acknowledged")
        return f"PublishResult({self.topic!r}, {state})"


# -- reconciler events (all handled on the reconciler thread) -------------------------------------


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


def _properties(packet_type: int) -> Properties:
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


# -- the session ---------------------------------------------------------------------------------


class Session:
    """One MQTT connection of one node: publish, subscribe, barrier, manual acks. See the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        inbox: Inbox,
        will: tuple[str, bytes] | None = None,
        log: FilteringBoundLogger | None = None,
        topics: Topics | None = None,
    ) -> None:
        self.settings = settings
        self.inbox = inbox
        ident = {"component": "mqtt", "client_id": settings.client_id}
        self._log = log.bind(**ident) if log is not None else get_logger(**ident)
        self._sync_topic = (topics or Topics()).sync(settings.client_id)
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        # Written by paho's thread in on_connect, read anywhere (atomic attribute access).
        self._packet_limit = settings.max_packet_size
        self._connection = 0
        self._connect_error: ConnectError | None = None
        # Subscriptions: an immutable snapshot replaced under a leaf lock, read by on_connect without it.
        self._subs_lock = threading.Lock()
        self._subs: tuple[tuple[str, int], ...] = ()
        self._reconciler = threading.Thread(
            target=self._reconcile, name=f"mqtt-reconciler-{settings.client_id}", daemon=True
        )
        self._client = self._make_client(settings, will)

    # -- construction (the translation boundary for TLS and settings errors) ---------------------

    def _make_client(self, settings: MqttSettings, will: tuple[str, bytes] | None) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.suppress_exceptions = True  # our callbacks catch everything; never kill the network thread
        # paho annotates the delays as int but computes with any number.
        client.reconnect_delay_set(cast(int, settings.reconnect_min), cast(int, settings.reconnect_max))
        client.max_inflight_messages_set(MAX_INFLIGHT)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls_ca or settings.tls_cert or settings.tls_key:
            try:
                client.tls_set(
                    ca_certs=settings.tls_ca,
                    certfile=settings.tls_cert,
                    keyfile=settings.tls_key,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ConnectError(f"TLS setup for {settings.client_id!r} failed: {exc}") from exc
        if will is not None:
            topic, payload = will
            try:
                client.will_set(topic, payload, qos=1, retain=True)
            except ValueError as exc:
                raise ConnectError(f"invalid last will on {topic!r}: {exc}") from exc
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (connect_async + loop_start); never raises because the broker is down."""
        with self._start_lock:
            if self._started:
                return
            if self._stopped.is_set():
                raise BrokerError("session was stopped; create a new Session")
            self._started = True
        s = self.settings
        props = _properties(PacketTypes.CONNECT)
        if s.session_expiry > 0:
            props.SessionExpiryInterval = s.session_expiry
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        if not s.clean_start and s.session_expiry == 0:
            self._log.warning("session_expiry is 0: the broker drops this session at every disconnect")
        self._reconciler.start()
        try:
            self._client.connect_async(
                s.host, s.port, keepalive=s.keepalive, clean_start=s.clean_start, properties=props
            )
        except (OSError, ValueError) as exc:
            raise ConnectError(f"cannot connect to {s.host}:{s.port}: {exc}") from exc
        self._client.loop_start()
        self._log.info("mqtt session starting", host=s.host, port=s.port, tls=bool(s.tls_ca or s.tls_cert))

    def wait_connected(self, timeout: float) -> bool:
        """True once connected (CONNACK success), False if not within `timeout` seconds."""
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def connect_error(self) -> ConnectError | None:
        """The broker's last refusal (e.g. bad credentials: reason code 0x87), cleared on success."""
        return self._connect_error

    @property
    def max_payload(self) -> int:
        """Largest payload that may be published on this connection (packet limit minus headroom)."""
        return self._packet_limit - PACKET_HEADROOM

    @property
    def sync_topic(self) -> str:
        return self._sync_topic

    def stop(self, timeout: float = 5.0, final: tuple[str, bytes] | None = None) -> None:
        """Publish `final` (retained, QoS 1; e.g. the offline status) and wait for its ack within
        `timeout`, then disconnect cleanly (no last will) and stop the threads. Idempotent."""
        if self._stopped.is_set():
            return
        deadline = time.monotonic() + timeout
        if final is not None and self._started:
            topic, payload = final
            try:
                self.publish(topic, payload, qos=1, retain=True).wait(max(0.0, deadline - time.monotonic()))
            except (BrokerError, TimeoutError) as exc:
                self._log.warning("final message not acknowledged before disconnect", topic=topic, error=str(exc))
        self._stopped.set()
        self._client.disconnect()
        if self._started:
            self._client.loop_stop()
            self._events.put(_Stop("session stopped before the broker answered"))
            self._reconciler.join(max(0.1, deadline - time.monotonic()))
        self._connected.clear()
        self._log.info("mqtt session stopped")

    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- subscriptions -----------------------------------------------------------------------------

    def subscribe(self, filter: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and on every reconnect. Subscribing again with the same QoS is a no-op."""
        with self._subs_lock:
            current = dict(self._subs)
            if current.get(filter) == qos:
                return
            current[filter] = qos
            self._subs = tuple(current.items())
        self._paho_subscribe([(filter, qos)])

    def unsubscribe(self, filter: str) -> None:
        """Forget a subscription and unsubscribe from the broker (also from the persistent session)."""
        with self._subs_lock:
            current = dict(self._subs)
            current.pop(filter, None)
            self._subs = tuple(current.items())
        try:
            self._client.unsubscribe(filter)
        except ValueError as exc:
            raise BrokerError(f"cannot unsubscribe {filter!r}: {exc}") from exc

    def _paho_subscribe(self, filters: list[tuple[str, int]]) -> None:
        try:
            rc, _mid = self._client.subscribe(filters)
        except ValueError as exc:
            raise BrokerError(f"cannot subscribe {filters!r}: {exc}") from exc
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._log.warning("subscribe not sent; renewed on the next connect", filters=filters, rc=rc)

    # -- publishing --------------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: Mapping[str, str] | None = None,
    ) -> PublishResult:
        """Publish; never blocks on the network. Raises PayloadTooLarge before sending an oversized packet.

        While offline the message is queued (QoS 1) and the result completes after the reconnect.
        """
        if self._stopped.is_set():
            raise PublishError(topic, _RC_UNSPECIFIED, "session is stopped")
        props: Properties | None = None
        if user_properties:
            props = _properties(PacketTypes.PUBLISH)
            props.UserProperty = [(str(k), str(v)) for k, v in user_properties.items()]
        limit = self._packet_limit
        size = publish_packet_size(topic, len(payload), props, qos)
        if size > limit or len(payload) > limit - PACKET_HEADROOM:
            raise PayloadTooLarge(topic, size, limit)
        result = PublishResult(topic)
        try:
            info = self._client.publish(topic, bytes(payload), qos=qos, retain=retain, properties=props)
        except ValueError as exc:
            raise PublishError(topic, _RC_TOPIC_INVALID, str(exc)) from exc
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0):
            self._events.put(_Sent(info.mid, result))
        elif info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            result._resolve(PublishError(topic, _RC_UNSPECIFIED, "not connected; QoS 0 messages are not queued"))
        else:
            raise PublishError(topic, _RC_UNSPECIFIED, f"paho did not accept the message: {mqtt.error_string(info.rc)}")
        return result

    # -- receiving ---------------------------------------------------------------------------------

    def ack(self, inbound: Inbound) -> None:
        """Acknowledge a handled message (manual ack). A message from an earlier connection is not
        acked: the broker redelivers it (dup=True) on the new one, where it must be handled again."""
        if inbound.qos == 0:
            return
        if inbound.connection != self._connection:
            self._log.debug("not acking a message of an earlier connection", topic=inbound.topic, mid=inbound.mid)
            return
        self._client.ack(inbound.mid, inbound.qos)

    def barrier(self, timeout: float) -> None:
        """Return once every retained message of the current subscriptions is in the inbox.

        Publishes a nonce to this client's sync topic and waits until it comes back: Mosquitto delivers
        to one client in order, so whatever the earlier subscriptions matched is already delivered.
        Raises TimeoutError if the nonce does not come back within `timeout` seconds.
        """
        if not self._started or self._stopped.is_set():
            raise BrokerError("barrier needs a started session")
        deadline = time.monotonic() + timeout
        nonce = secrets.token_hex(16).encode()
        waiter = _Waiter()
        self._events.put(_BarrierRegister(nonce, waiter))
        try:
            self.publish(self._sync_topic, nonce, qos=1)
            if not waiter.event.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"barrier: sync message did not come back within {timeout} s")
        finally:
            if not waiter.event.is_set():
                self._events.put(_BarrierCancel(nonce))
        if waiter.error is not None:
            raise waiter.error

    # -- paho callbacks (network thread: never block, no shared locks) ------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self._events.put(_Refused(reason_code.value, str(reason_code)))
                return
            broker_limit = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
            limit = (
                self.settings.max_packet_size
                if broker_limit is None
                else min(self.settings.max_packet_size, broker_limit)
            )
            self._packet_limit = limit
            self._connection += 1
            subs = [(self._sync_topic, 1), *self._subs]
            client.subscribe(subs)
            self._events.put(_Connected(flags.session_present, limit, broker_limit, self._connection))
        except Exception as exc:  # a bug here must not kill paho's thread
            self._log.exception("on_connect failed", error=str(exc))

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._events.put(_ConnectFailed())

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self._events.put(_Disconnected(str(reason_code)))

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason_code: ReasonCode, _props: Properties | None
    ) -> None:
        self._events.put(_Acked(mid, reason_code.value, str(reason_code)))

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
            if topic == self._sync_topic:
                self._events.put(_SyncMessage(bytes(msg.payload), msg.mid, msg.qos, self._connection))
                return
            props = getattr(msg, "properties", None)
            user_props = dict(getattr(props, "UserProperty", []) or [])
            inbound = Inbound(
                topic=topic,
                payload=bytes(msg.payload),
                retain=bool(msg.retain),
                dup=bool(msg.dup),
                qos=msg.qos,
                mid=msg.mid,
                user_properties=user_props,
                connection=self._connection,
            )
            try:
                self.inbox.put_nowait(inbound)
            except queue.Full:
                # Not acked: the broker redelivers it on the next connection. Use an unbounded inbox.
                self._log.error("inbox full: message dropped until the broker redelivers it", topic=topic)
        except Exception as exc:  # a bug here must not kill paho's thread
            self._log.exception("on_message failed", error=str(exc))

    # -- the reconciler ----------------------------------------------------------------------------

    def _reconcile(self) -> None:
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
        if event.qos > 0 and event.connection == self._connection:
            self._client.ack(event.mid, event.qos)
        waiter = books.barriers.pop(event.payload, None)
        if waiter is not None:
            waiter.event.set()
        # else: the nonce of an earlier barrier or process (persistent session), or a duplicate copy

    def _ev_barrier_register(self, event: _BarrierRegister, books: _Books) -> None:
        books.barriers[event.nonce] = event.waiter

    def _ev_barrier_cancel(self, event: _BarrierCancel, books: _Books) -> None:
        books.barriers.pop(event.nonce, None)

    def _ev_connected(self, event: _Connected, books: _Books) -> None:
        self._connect_error = None
        self._connected.set()
        books.was_connected = True
        self._log.info(
            "mqtt connected",
            session_present=event.session_present,
            packet_limit=event.packet_limit,
            broker_packet_limit=event.broker_limit,
            connection=event.connection,
        )

    def _ev_refused(self, event: _Refused, _books: _Books) -> None:
        self._connect_error = ConnectError(
            f"broker refused {self.settings.client_id!r}: {event.reason}", reason_code=event.reason_code
        )
        self._log.error("mqtt connection refused", reason=event.reason, reason_code=event.reason_code)

    def _ev_disconnected(self, event: _Disconnected, books: _Books) -> None:
        self._connected.clear()
        if not books.was_connected:  # paho may report one loss twice (#870)
            return
        books.was_connected = False
        if self._stopped.is_set():
            self._log.debug("mqtt disconnected", reason=event.reason)
        else:
            self._log.warning("mqtt disconnected", reason=event.reason)

    def _ev_connect_failed(self, _event: _ConnectFailed, _books: _Books) -> None:
        self._log.debug("broker unreachable; retrying", host=self.settings.host, port=self.settings.port)

    def _ev_stop(self, event: _Stop, books: _Books) -> None:
        for result in books.sent.values():
            result._resolve(PublishError(result.topic, _RC_UNSPECIFIED, event.reason))
        for waiter in books.barriers.values():
            waiter.error = BrokerError(f"barrier: {event.reason}")
            waiter.event.set()

    def _resolve(self, result: PublishResult, ack: _Acked) -> None:
        if ack.reason_code >= 0x80:
            self._log.warning("publish refused by the broker", topic=result.topic, reason=ack.reason)
            result._resolve(PublishError(result.topic, ack.reason_code, ack.reason))
        else:
            result._resolve()  # 0x00 Success, 0x10 No matching subscribers

"""The MQTT session: one paho-mqtt 2.x client (MQTT v5) per process role, safe to use from many threads.

This module (with `broker._paho_client`, which builds the paho client from the settings) is the only place
that touches paho, sockets and TLS: it translates their errors into `broker._errors` with ``raise ... from exc``.

Threads and ownership:

- paho's network thread (``loop_start``) runs the callbacks. They never block and never take a lock
  that another thread holds while calling paho (paho calls ``on_publish`` while holding its own
  ``_out_message_mutex``, which ``publish()`` also takes: issue #226). Each callback either puts an
  `Inbound` into the caller's inbox or hands an event to the reconciler; ``on_connect`` also renews the
  subscriptions and records the broker's packet limit (plain attribute writes).
- the reconciler thread (`broker._reconciler`) owns every piece of bookkeeping: publish results,
  barriers, the session's own sync messages, the connection state.
- any thread may call `Session.publish`, `subscribe`, `ack`, `barrier`.

Delivery semantics (paho 2.2 + Mosquitto 2.0): QoS 1, ``clean_start=False`` plus a
``SessionExpiryInterval`` so the broker keeps subscriptions and queued messages across disconnects
and process restarts; ``manual_ack=True`` so a message is acknowledged only after it was handled.
A publish made while offline is queued by paho and its `PublishResult` completes when the PUBACK
arrives after the reconnect. paho ignores the broker's CONNACK MaximumPacketSize, and an oversized
packet makes the broker drop the connection, after which paho resends it forever; so every publish is
measured first and refused with `PayloadTooLarge` before anything is sent.

What the log says about the connection: a broker that cannot be reached is a WARNING with host:port and
the reason (the first failed attempt, then at most every `MqttSettings.unreachable_warn_every` seconds
with the count), "reachable again" at INFO. A persistent session claims its client id at every connect
(a retained message on its sync topic naming host and pid); finding another connection's claim there
on a reconnect, or the MQTT v5 reason code "Session taken over", is a WARNING that another process
uses this identity.
"""

from __future__ import annotations

import os
import queue
import secrets
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from structlog.typing import FilteringBoundLogger

from broker import _paho_decode
from broker._errors import BrokerError, ConnectError, PayloadTooLarge, PublishError
from broker._messages import (
    PACKET_HEADROOM,
    Inbound,
    Inbox,
    PublishObserver,
    PublishResult,
    new_properties,
    publish_packet_size,
)
from broker._paho_client import connect_properties, paho_client
from broker._reconciler import CLAIM_PREFIX, RC_UNSPECIFIED, Reconciler
from broker._settings import MqttSettings
from runtime import get_logger
from schemas import Topics

__all__ = ["Session"]

_RC_TOPIC_INVALID = 0x90
# paho's PUBLISH decoder copies a chunk a dozen times; ours copies its payload once (broker._paho_decode).
_FAST_DECODE = _paho_decode.install()


# -- the session ---------------------------------------------------------------------------------


def _publish_properties(
    user_properties: Mapping[str, str] | None, response_topic: str | None, correlation_data: bytes | None
) -> Properties | None:
    if not user_properties and response_topic is None and correlation_data is None:
        return None
    props = new_properties(PacketTypes.PUBLISH)
    if user_properties:
        props.UserProperty = [(str(k), str(v)) for k, v in user_properties.items()]
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation_data is not None:
        props.CorrelationData = bytes(correlation_data)
    return props


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
        observer: PublishObserver | None = None,
    ) -> None:
        self.settings = settings
        self.inbox = inbox
        self._observer = observer
        ident = {"component": "mqtt", "client_id": settings.client_id}
        self._log = log.bind(**ident) if log is not None else get_logger(**ident)
        self._sync_topic = (topics or Topics()).sync(settings.client_id)
        self._stopped = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        # Written by paho's thread in on_connect, read anywhere (atomic attribute access).
        self._packet_limit = settings.max_packet_size
        self._connection = 0
        # Subscriptions: an immutable snapshot replaced under a leaf lock, read by on_connect without it.
        self._subs_lock = threading.Lock()
        self._subs: tuple[tuple[str, int], ...] = ()
        self._client = self._make_client(settings, will)
        # A persistent session (a node service) claims its client id at every connect with a retained
        # message on its own sync topic, so a connection that finds another's claim there on reconnect
        # knows it was taken over (Mosquitto 2.0 does not send "Session taken over"). Throwaway
        # sessions (flctl: clean start, no expiry) leave nothing behind.
        self._claim: bytes | None = None
        if not settings.clean_start and settings.session_expiry > 0:
            who = f"{socket.gethostname()} pid {os.getpid()} ({secrets.token_hex(4)})"
            self._claim = CLAIM_PREFIX + who.encode()
        self._reconciler = Reconciler(
            client_id=settings.client_id,
            ack=self._client.ack,
            connection=lambda: self._connection,
            stopped=self._stopped,
            log=self._log,
            address=f"{settings.host}:{settings.port}",
            claim=self._claim,
            warn_every=settings.unreachable_warn_every,
        )

    # -- construction (the translation boundary for TLS and settings errors) ---------------------

    def _make_client(self, settings: MqttSettings, will: tuple[str, bytes] | None) -> mqtt.Client:
        client = paho_client(settings, will)
        client.suppress_exceptions = True  # our callbacks catch everything; never kill the network thread
        # paho annotates the delays as int but computes with any number.
        client.reconnect_delay_set(cast(int, settings.reconnect_min), cast(int, settings.reconnect_max))
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
        props = connect_properties(s)
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
        self._log.info(
            "mqtt session starting",
            host=s.host,
            port=s.port,
            tls=bool(s.tls_ca or s.tls_cert),
            fast_decode=_FAST_DECODE,
        )

    def wait_connected(self, timeout: float) -> bool:
        """True once connected (CONNACK success), False if not within `timeout` seconds."""
        return self._reconciler.connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._reconciler.connected.is_set()

    @property
    def connect_error(self) -> ConnectError | None:
        """The broker's last refusal (e.g. bad credentials: reason code 0x87), cleared on success."""
        return self._reconciler.connect_error

    @property
    def max_payload(self) -> int:
        """Largest payload that may be published on this connection (packet limit minus headroom)."""
        return self._packet_limit - PACKET_HEADROOM

    @property
    def sync_topic(self) -> str:
        return self._sync_topic

    @property
    def connection(self) -> int:
        """The number of the current (or last) connection: 0 before the first CONNACK, +1 on every reconnect.

        Every `Inbound` carries the number it arrived on. A caller that must know what the broker holds
        after a reconnect (a restarted broker may have lost its retained messages) compares them.
        """
        return self._connection

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
            self._reconciler.stop("session stopped before the broker answered")
            self._reconciler.join(max(0.1, deadline - time.monotonic()))
        self._reconciler.connected.clear()
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
        payload: bytes | memoryview,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: Mapping[str, str] | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> PublishResult:
        """Publish; never blocks on the network. Raises PayloadTooLarge before sending an oversized packet.

        A memoryview (a chunk of a larger blob) is copied once into the bytes paho insists on.

        While offline the message is queued (QoS 1) and the result completes after the reconnect.
        `response_topic` and `correlation_data` are MQTT v5's request/response properties.
        """
        if self._stopped.is_set():
            raise PublishError(topic, RC_UNSPECIFIED, "session is stopped")
        props = _publish_properties(user_properties, response_topic, correlation_data)
        limit = self._packet_limit
        size = publish_packet_size(topic, len(payload), props, qos)
        if size > limit or len(payload) > limit - PACKET_HEADROOM:
            raise PayloadTooLarge(topic, size, limit)
        result = PublishResult(topic)
        data = payload if isinstance(payload, bytes) else payload.tobytes()
        try:
            info = self._client.publish(topic, data, qos=qos, retain=retain, properties=props)
        except ValueError as exc:
            raise PublishError(topic, _RC_TOPIC_INVALID, str(exc)) from exc
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0):
            self._reconciler.on_sent(info.mid, result)
            if self._observer is not None:
                self._observer(topic, data, retain)
        elif info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            result.resolve(PublishError(topic, RC_UNSPECIFIED, "not connected; QoS 0 messages are not queued"))
        else:
            raise PublishError(topic, RC_UNSPECIFIED, f"paho did not accept the message: {mqtt.error_string(info.rc)}")
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
        waiter = self._reconciler.register_barrier(nonce)
        try:
            self.publish(self._sync_topic, nonce, qos=1)
            if not waiter.event.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"barrier: sync message did not come back within {timeout} s")
        finally:
            if not waiter.event.is_set():
                self._reconciler.cancel_barrier(nonce)
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
                self._reconciler.on_refused(reason_code.value, str(reason_code))
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
            self._reconciler.on_connected(flags.session_present, limit, broker_limit, self._connection)
            if self._claim is not None and not self._stopped.is_set():  # after the subscribe: ours comes back last
                self.publish(self._sync_topic, self._claim, qos=1, retain=True)
        except Exception as exc:  # a bug here must not kill paho's thread
            self._log.exception("on_connect failed", error=str(exc))

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this inside its `except OSError:` around the connect and passes no reason: the
        # exception being handled is the reason (ConnectionRefusedError, a DNS or TLS error, a timeout).
        exc = sys.exc_info()[1]
        reason = (str(exc) or type(exc).__name__) if exc is not None else "connection failed"
        self._reconciler.on_connect_failed(reason)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _props: Properties | None,
    ) -> None:
        from_broker = flags.is_disconnect_packet_from_server
        self._reconciler.on_disconnected(str(reason_code), reason_code.value if from_broker else None)

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason_code: ReasonCode, _props: Properties | None
    ) -> None:
        self._reconciler.on_acked(mid, reason_code.value, str(reason_code))

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
            if topic == self._sync_topic:
                self._reconciler.on_sync_message(
                    bytes(msg.payload), msg.mid, msg.qos, self._connection, retain=bool(msg.retain)
                )
                return
            props = getattr(msg, "properties", None)
            user_props = dict(getattr(props, "UserProperty", []) or [])
            response_topic = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
            inbound = Inbound(
                topic=topic,
                payload=bytes(msg.payload),
                retain=bool(msg.retain),
                dup=bool(msg.dup),
                qos=msg.qos,
                mid=msg.mid,
                user_properties=user_props,
                response_topic=str(response_topic) if response_topic is not None else None,
                correlation_data=bytes(correlation) if correlation is not None else None,
                connection=self._connection,
            )
            try:
                self.inbox.put_nowait(inbound)
            except queue.Full:
                # Not acked: the broker redelivers it on the next connection. Use an unbounded inbox.
                self._log.error("inbox full: message dropped until the broker redelivers it", topic=topic)
        except Exception as exc:  # a bug here must not kill paho's thread
            self._log.exception("on_message failed", error=str(exc))

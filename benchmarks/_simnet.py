"""One network thread for all the simulated edges of a load-generator process (benchmarks/loadgen.py).

`broker.Session` gives each edge two threads (paho's network loop and the reconciler), as a real edge
service has. A real edge runs them on its own machine; 50 edges in one generator process run 100 threads on
the two cores the aggregator and the broker use, and every message wakes a few of them (measured: the
generator's thread wake-ups were 5 % of the whole machine during a 100-edge round). `SimNet` drives the
sockets of every paho client of the process from one thread, with paho's external-loop API
(``on_socket_open``/``register_write``, ``loop_read``/``loop_write``/``loop_misc``); `SimSession` is the part
of `Session` the simulated edges and `broker.BlobSender` use, over it.

What stays as the real edge's session has it on the wire: one MQTT v5 client per edge with its node name as
client id, its credentials and TLS (``--secure``), its retained offline will, a persistent session with the
same receive maximum and session expiry, manual acknowledgements, QoS 1 for everything it publishes, and
paho's in-flight limit. What is left out: reconnecting (a lost connection is an error of the run, as no
fault is injected) and the session claim on the sync topic (a connect-time message, before the job).

Every paho call runs on the network thread: another thread's `publish` or `ack` is a closure queued for it
(and a byte on a socket pair that wakes its `select`).
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from broker import (
    PACKET_HEADROOM,
    BrokerError,
    Inbound,
    Inbox,
    MqttSettings,
    PublishResult,
    connect_properties,
    paho_client,
)

_MISC_EVERY = 1.0  # seconds between paho's keepalive checks (loop_misc) of every client


class SimNet:
    """The network thread of many paho clients: a selector over their sockets and a queue of calls."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._clients: list[mqtt.Client] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simnet", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the network thread, soon (in the order of the calls)."""
        self._calls.put(fn)
        with contextlib.suppress(BlockingIOError):  # a wake-up byte is pending already
            self._wake_w.send(b"\0")

    def add(self, client: mqtt.Client) -> None:
        """Called on the network thread before `client` connects: its socket callbacks go to the selector."""
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed_socket
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write
        self._clients.append(client)

    def close(self, timeout: float = 5.0) -> None:
        self._closed.set()
        self.call(lambda: None)
        self._thread.join(timeout)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- paho's socket callbacks (on the network thread) ----------------------------------------------

    def _opened(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self._sel.register(sock, selectors.EVENT_READ, client)

    def _closed_socket(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)

    def _want_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _no_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.modify(sock, selectors.EVENT_READ, client)

    # -- the loop ------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_misc = time.monotonic() + _MISC_EVERY
        while not self._closed.is_set():
            for key, mask in self._sel.select(timeout=_MISC_EVERY):
                client = key.data
                if client is None:
                    with contextlib.suppress(BlockingIOError):
                        while self._wake_r.recv(4096):
                            pass
                    continue
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                    sock = client.socket()
                    # TLS: records already decrypted into the SSL object do not wake the selector again.
                    while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock:
                        client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
            while True:
                try:
                    fn = self._calls.get_nowait()
                except queue.Empty:
                    break
                fn()
            now = time.monotonic()
            if now >= next_misc:
                for client in self._clients:
                    client.loop_misc()
                next_misc = now + _MISC_EVERY


class SimSession:
    """What the simulated edges and `BlobSender` use of `broker.Session`, over a shared `SimNet`."""

    def __init__(self, net: SimNet, settings: MqttSettings, *, inbox: Inbox, will: tuple[str, bytes]) -> None:
        self.settings = settings
        self.inbox = inbox
        self._net = net
        self._subs: list[tuple[str, int]] = []
        self._connected = threading.Event()
        self._stopping = False
        self._packet_limit = settings.max_packet_size
        self._pending: dict[int, PublishResult] = {}  # mid -> result (network thread only)
        self.lost: str | None = None  # why the connection ended, if not by `stop`
        client = paho_client(settings, will)  # as `broker.Session` builds it: v5, manual acks, TLS, the will
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client

    @property
    def max_payload(self) -> int:
        return self._packet_limit - PACKET_HEADROOM

    def subscribe(self, filter: str, qos: int = 1) -> None:
        """Before `start`: subscribed at the connect."""
        self._subs.append((filter, qos))

    def start(self) -> None:
        s = self.settings
        props = connect_properties(s)

        def connect() -> None:
            self._net.add(self._client)
            try:
                self._client.connect(s.host, s.port, keepalive=s.keepalive, clean_start=s.clean_start, properties=props)
            except OSError as exc:
                self.lost = f"cannot connect to {s.host}:{s.port}: {exc}"

        self._net.call(connect)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(self, topic: str, payload: bytes | memoryview, *, qos: int = 1, retain: bool = False) -> PublishResult:
        """Queue a publish for the network thread; the result completes with the broker's PUBACK."""
        result = PublishResult(topic)
        if len(payload) > self.max_payload:
            raise BrokerError(f"payload of {len(payload)} bytes on {topic!r} exceeds {self.max_payload}")
        data = payload if isinstance(payload, bytes) else payload.tobytes()

        def send() -> None:
            info = self._client.publish(topic, data, qos=qos, retain=retain)
            if info.rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and not (
                info.rc == mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
            ):
                result.resolve(BrokerError(f"publish to {topic!r}: {mqtt.error_string(info.rc)}"))
            elif qos == 0:
                result.resolve()
            else:
                self._pending[info.mid] = result

        self._net.call(send)
        return result

    def ack(self, inbound: Inbound) -> None:
        if inbound.qos > 0:
            self._net.call(lambda: self._client.ack(inbound.mid, inbound.qos))

    def stop(self, timeout: float = 5.0, final: tuple[str, bytes] | None = None) -> None:
        """Publish `final` (retained) and wait for it, then disconnect."""
        if final is not None and self._connected.is_set():
            with contextlib.suppress(TimeoutError, BrokerError):
                self.publish(final[0], final[1], retain=True).wait(timeout)
        self._stopping = True
        done = threading.Event()

        def disconnect() -> None:
            self._client.disconnect()
            done.set()

        self._net.call(disconnect)
        done.wait(timeout)

    # -- paho's callbacks (on the network thread) ------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _flags: Any, reason_code: Any, properties: Properties | None
    ) -> None:
        if reason_code.is_failure:
            self.lost = f"connection refused: {reason_code}"
            return
        limit = getattr(properties, "MaximumPacketSize", None) if properties is not None else None
        if limit is not None:
            self._packet_limit = min(self.settings.max_packet_size, limit)
        if self._subs:
            client.subscribe(self._subs)
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason_code: Any, _p: Any) -> None:
        if not self._stopping:
            self.lost = f"disconnected: {reason_code}"
            for result in self._pending.values():
                result.resolve(BrokerError(f"{self.settings.client_id}: connection lost ({reason_code})"))
            self._pending.clear()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason_code: Any, _p: Any) -> None:
        result = self._pending.pop(mid, None)
        if result is not None:
            failed = reason_code.is_failure
            result.resolve(BrokerError(f"publish to {result.topic!r} refused: {reason_code}") if failed else None)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put_nowait(
            Inbound(
                topic=msg.topic,
                payload=bytes(msg.payload),
                retain=bool(msg.retain),
                dup=bool(msg.dup),
                qos=msg.qos,
                mid=msg.mid,
            )
        )

"""Records every message a subscription sees, as the broker delivered it (for "what crossed the wire")."""

from __future__ import annotations

import queue
import threading
from types import TracebackType

from broker import Inbound, MqttSettings, Session
from tests.helpers.mqtt import wait_until


class Capture:
    """A background subscriber that keeps (topic, payload) of every message until it is stopped."""

    def __init__(self, settings: MqttSettings, *filters: str) -> None:
        self._inbox: queue.Queue[Inbound] = queue.Queue()
        self._session = Session(settings, inbox=self._inbox)
        for flt in filters:
            self._session.subscribe(flt)
        self.messages: list[tuple[str, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="capture", daemon=True)

    def __enter__(self) -> Capture:
        self._session.start()
        if not self._session.wait_connected(10.0):
            raise TimeoutError("capture subscriber could not connect")
        self._session.barrier(10.0)
        self._thread.start()
        return self

    @property
    def connection(self) -> int:
        """The capture session's connection number (see `Session.connection`)."""
        return self._session.connection

    def wait_subscribed_again(self, since: int, timeout: float) -> None:
        """After a broker restart: until the session is on a connection newer than `since` and the broker has
        its renewed subscriptions (a barrier). A broker that lost its sessions delivers nothing before."""
        wait_until(
            lambda: self._session.connection > since and self._session.connected, timeout, "the capture reconnected"
        )
        self._session.barrier(timeout)

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self._session.barrier(10.0)
        self._stop.set()
        self._thread.join(10.0)
        self._session.stop()
        while not self._inbox.empty():
            self._record(self._inbox.get_nowait())

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            self._record(msg)

    def _record(self, msg: Inbound) -> None:
        self.messages.append((msg.topic, msg.payload))
        self._session.ack(msg)

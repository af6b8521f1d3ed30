"""What a session says about reaching its broker and keeping its identity (real Mosquitto):

- a broker that cannot be reached is a WARNING naming host:port and the reason, once and then at most
  every 30 s with the count of attempts, and "reachable again" at INFO when it connects;
- a session whose client id another connection took over says so at WARNING (Mosquitto 2.0 closes the
  old socket without the MQTT v5 "Session taken over" reason code, so the session finds the other
  connection's claim on its sync topic when it reconnects).
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from structlog.testing import CapturedCall, CapturingLogger
from structlog.typing import FilteringBoundLogger

from broker import Inbound, MqttSettings, Session
from broker.mosquitto import BrokerConfig, LocalBroker
from tests.helpers.mqtt import TEST_RECONNECT_MAX, TEST_RECONNECT_MIN, free_port, stopped, wait_until

pytestmark = pytest.mark.timeout(60)
TAKEOVER = "session taken over by another connection with client id {}: is a second process running"


def capturing() -> tuple[FilteringBoundLogger, CapturingLogger]:
    cap = CapturingLogger()
    log = structlog.wrap_logger(cap, wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG), processors=[])
    return cast(FilteringBoundLogger, log), cap


def events(cap: CapturingLogger, level: str, event: str) -> list[CapturedCall]:
    """Captured calls at `level` whose event starts with `event` (a copy: paho's threads keep logging)."""
    return [c for c in list(cap.calls) if c.method_name == level and str(c.kwargs["event"]).startswith(event)]


def test_unreachable_broker_is_a_warning_with_address_and_reason_not_one_per_retry(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here until the broker starts below
    log, cap = capturing()
    settings = MqttSettings(
        client_id="edge1",
        host="127.0.0.1",
        port=port,
        reconnect_min=TEST_RECONNECT_MIN,
        reconnect_max=TEST_RECONNECT_MAX,
    )
    with stopped(Session(settings, inbox=queue.Queue(), log=log)) as session:
        session.start()
        wait_until(lambda: len(events(cap, "debug", "broker unreachable")) >= 4, 20.0, "five failed attempts")

        (warning,) = events(cap, "warning", "broker unreachable")  # the first attempt, and no other
        assert warning.kwargs["broker"] == f"127.0.0.1:{port}"
        assert "refused" in warning.kwargs["reason"].lower()
        assert warning.kwargs["failed_attempts"] == 1

        broker = LocalBroker(BrokerConfig(port, data_dir=tmp_path / "data"), tmp_path).start(timeout=10.0)
        try:
            assert session.wait_connected(20.0)
            wait_until(lambda: bool(events(cap, "info", "broker reachable again")), 5.0, "reachable again")
        finally:
            broker.stop(hard=True)
    (again,) = events(cap, "info", "broker reachable again")
    assert again.kwargs["failed_attempts"] >= 5 and f"127.0.0.1:{port}" in again.kwargs["message"]


def test_unreachable_warning_repeats_at_most_every_interval_with_the_count() -> None:
    log, cap = capturing()
    settings = MqttSettings(
        client_id="edge1",
        host="127.0.0.1",
        port=free_port(),
        reconnect_min=TEST_RECONNECT_MIN,
        reconnect_max=TEST_RECONNECT_MIN,
        unreachable_warn_every=1.0,
    )
    with stopped(Session(settings, inbox=queue.Queue(), log=log)) as session:
        session.start()
        wait_until(lambda: len(events(cap, "warning", "broker unreachable")) >= 2, 20.0, "a second warning")
    first, second = events(cap, "warning", "broker unreachable")[:2]
    assert first.kwargs["failed_attempts"] == 1
    assert second.kwargs["failed_attempts"] > 2  # the attempts in between were DEBUG only
    assert len(events(cap, "debug", "broker unreachable")) >= second.kwargs["failed_attempts"] - 2


def test_session_taken_over_reason_code_is_a_warning() -> None:
    """A broker that sends DISCONNECT "Session taken over" (0x8E; Mosquitto 2.1 and others do, 2.0.11
    does not): here a minimal MQTT v5 server that accepts the CONNECT and then sends just that."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)  # CONNECT
            conn.sendall(bytes([0x20, 0x03, 0x00, 0x00, 0x00]))  # CONNACK: no session, success, no properties
            conn.sendall(bytes([0xE0, 0x02, 0x8E, 0x00]))  # DISCONNECT: Session taken over, no properties
            conn.recv(4096)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    log, cap = capturing()
    settings = MqttSettings(client_id="edge1", host="127.0.0.1", port=port, reconnect_min=5.0, reconnect_max=5.0)
    try:
        with stopped(Session(settings, inbox=queue.Queue(), log=log)) as session:
            session.start()
            wait_until(lambda: bool(events(cap, "warning", TAKEOVER.format("edge1"))), 10.0, "takeover logged")
    finally:
        server.close()
        thread.join(5.0)


def test_a_second_connection_with_the_same_client_id_is_logged_as_a_takeover(
    mqtt_settings_factory: Callable[..., MqttSettings],
) -> None:
    """Two sessions, one client id: each one that gets pushed off and comes back says it was taken over."""
    first_log, first_cap = capturing()
    second_log, second_cap = capturing()
    first = Session(mqtt_settings_factory("edge1"), inbox=queue.Queue[Inbound](), log=first_log)
    second = Session(mqtt_settings_factory("edge1"), inbox=queue.Queue[Inbound](), log=second_log)
    with stopped(first), stopped(second):
        first.start()
        assert first.wait_connected(10.0)
        first.barrier(10.0)  # its claim is on the broker
        second.start()
        assert second.wait_connected(10.0)
        for cap in (first_cap, second_cap):  # they push each other off until one stops
            wait_until(lambda c=cap: bool(events(c, "warning", TAKEOVER.format("edge1"))), 20.0, "takeover logged")  # type: ignore[misc]
    (warning,) = events(first_cap, "warning", TAKEOVER.format("edge1"))[:1]
    assert "pid" in warning.kwargs["other_connection"]


def test_a_restart_with_the_same_client_id_is_not_a_takeover(mqtt_settings_factory: Callable[..., Any]) -> None:
    """The previous process's claim, found on a new session's first connection, is a restart: no warning;
    nor is a reconnect after the broker went away and came back with the session's own claim."""
    with stopped(Session(mqtt_settings_factory("edge1"), inbox=queue.Queue())) as old:
        old.start()
        assert old.wait_connected(10.0)
        old.barrier(10.0)
    log, cap = capturing()
    with stopped(Session(mqtt_settings_factory("edge1"), inbox=queue.Queue(), log=log)) as new:
        new.start()
        assert new.wait_connected(10.0)
        new.barrier(10.0)  # the old claim (retained) came before the barrier's nonce
    assert events(cap, "debug", "previous connection with this client id")
    assert not events(cap, "warning", TAKEOVER.format("edge1"))

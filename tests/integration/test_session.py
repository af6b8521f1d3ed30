"""The MQTT session against a real Mosquitto: delivery, retained + barrier, persistence, limits, will."""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import ConnectError, ConnectionSettings, Inbound, MqttSettings, PayloadTooLarge, PublishError, Session
from schemas import Topics
from tests.helpers.mqtt import BrokerHandle, SessionFactory, start_local_broker, take, take_all, wait_until
from tests.helpers.proxy import FlakyProxy

T = Topics("fltest")


def test_publish_subscribe_round_trip(session_factory: SessionFactory) -> None:
    """A QoS 1 message with user properties reaches a subscriber and the publisher's result completes."""
    sub, inbox = session_factory("sub")
    sub.subscribe(T.all_node_statuses())
    sub.barrier(5.0)
    pub, _ = session_factory("pub")

    result = pub.publish(T.node_status("edge1"), b"online", user_properties={"job": "j1"})
    result.wait(5.0)

    (msg,) = take(inbox, 1)
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (T.node_status("edge1"), b"online", 1, False)
    assert msg.user_properties == {"job": "j1"}
    assert result.done and result.error is None
    sub.ack(msg)


def test_barrier_returns_after_all_retained_messages_are_in_the_inbox(session_factory: SessionFactory) -> None:
    """After barrier() every retained message of the subscriptions is already in the inbox, even un-acked ones beyond 20."""
    pub, _ = session_factory("pub")
    nodes = [f"edge{i}" for i in range(50)]  # more than Mosquitto's default 20 in flight
    for result in [pub.publish(T.node_status(n), n.encode(), retain=True) for n in nodes]:
        result.wait(5.0)
    late, inbox = session_factory("late")

    late.subscribe(T.all_node_statuses())
    late.barrier(5.0)

    got = take_all(inbox)
    assert sorted(m.payload.decode() for m in got) == sorted(nodes)
    assert all(m.retain for m in got)
    assert all(m.topic != late.sync_topic for m in got)


def test_persistent_session_gets_messages_published_while_it_was_offline(session_factory: SessionFactory) -> None:
    """A new Session with the same client id receives what was published while the old one was away."""
    first, _ = session_factory("aggregator")
    first.subscribe(T.all_node_statuses())
    first.barrier(5.0)
    first.stop()
    pub, _ = session_factory("edge1")
    for result in [pub.publish(T.node_status(f"edge{i}"), str(i).encode()) for i in range(5)]:
        result.wait(5.0)

    second, inbox = session_factory("aggregator")  # no subscribe(): the broker kept the session's

    got = take(inbox, 5)
    assert [m.payload for m in got] == [str(i).encode() for i in range(5)]
    assert not any(m.retain for m in got)
    for m in got:
        second.ack(m)


def test_publish_while_broker_is_down_completes_after_restart(
    broker: BrokerHandle, session_factory: SessionFactory
) -> None:
    """A QoS 1 publish made while the broker is down is queued and acknowledged after the broker is back."""
    sub, inbox = session_factory("aggregator")
    sub.subscribe(T.all_node_statuses())
    sub.barrier(5.0)
    pub, _ = session_factory("edge1")
    broker.stop()
    wait_until(lambda: not pub.connected and not sub.connected, 10.0, "disconnected")

    result = pub.publish(T.node_status("edge1"), b"queued")
    assert not result.done
    broker.start()

    result.wait(10.0)
    (msg,) = take(inbox, 1)
    assert msg.payload == b"queued"


@pytest.mark.parametrize("broker", [{"max_packet_size": 16384}], indirect=True)
def test_payload_too_large_is_refused_before_sending(broker: BrokerHandle, session_factory: SessionFactory) -> None:
    """A payload over the broker's max_packet_size raises PayloadTooLarge at once and the session stays connected."""
    pub, _ = session_factory("edge1")
    assert pub.max_payload < 16384

    with pytest.raises(PayloadTooLarge) as info:
        pub.publish(T.node_status("edge1"), b"x" * 20000)

    assert info.value.limit == 16384 and info.value.size > 20000
    assert info.value.topic == T.node_status("edge1")
    pub.publish(T.node_status("edge1"), b"x" * pub.max_payload).wait(5.0)
    assert pub.connected
    log = broker.log_text()
    assert log.count("as edge1 (") == 1, "the session reconnected"
    assert "oversize" not in log


def test_last_will_is_published_when_the_connection_is_killed(
    broker: BrokerHandle, session_factory: SessionFactory
) -> None:
    """When an edge's link is cut, the broker publishes its retained last will."""
    watcher, inbox = session_factory("controller")
    watcher.subscribe(T.all_node_statuses())
    watcher.barrier(5.0)
    with FlakyProxy(broker.port) as proxy:
        edge, _ = session_factory("edge1", port=proxy.port, will=(T.node_status("edge1"), b"offline"))
        edge.publish(T.node_status("edge1"), b"online", retain=True).wait(5.0)
        assert take(inbox, 1)[0].payload == b"online"

        proxy.cut()

        (will,) = take(inbox, 1)
        assert (will.topic, will.payload) == (T.node_status("edge1"), b"offline")
        edge.stop(timeout=0.5)


def test_proxy_cut_disconnects_and_restore_reconnects(broker: BrokerHandle, session_factory: SessionFactory) -> None:
    """FlakyProxy.cut() drops the session's link and refuses reconnects; restore() lets it reconnect and flush its queue."""
    sub, inbox = session_factory("aggregator")
    sub.subscribe(T.all_node_statuses())
    sub.barrier(5.0)
    with FlakyProxy(broker.port) as proxy:
        edge, _ = session_factory("edge1", port=proxy.port)

        proxy.cut()
        wait_until(lambda: not edge.connected, 5.0, "disconnected")
        result = edge.publish(T.node_status("edge1"), b"after-cut")
        assert not edge.wait_connected(0.5) and not result.done
        proxy.restore()

        assert edge.wait_connected(5.0)
        result.wait(5.0)
        assert take(inbox, 1)[0].payload == b"after-cut"


def test_barrier_ignores_stale_sync_messages_of_an_earlier_process(session_factory: SessionFactory) -> None:
    """Sync messages queued for an earlier Session with the same client id do not end a new barrier early, and are not in the inbox."""
    first, _ = session_factory("edge1")
    first.stop()
    other, _ = session_factory("other")
    other.publish(T.sync("edge1"), b"stale-nonce").wait(5.0)

    second, inbox = session_factory("edge1")
    second.subscribe(T.all_node_statuses())
    second.barrier(5.0)

    assert take_all(inbox) == []


def test_tls_files_that_do_not_exist_raise_connect_error(mqtt_settings_factory: Callable[..., MqttSettings]) -> None:
    """A missing CA file is reported as ConnectError (from the OSError) when the session is built."""
    settings = mqtt_settings_factory("edge1", tls_ca="/nonexistent/ca.crt")
    inbox: queue.Queue[Inbound] = queue.Queue()

    with pytest.raises(ConnectError) as info:
        Session(settings, inbox=inbox)

    assert isinstance(info.value.__cause__, OSError)


def test_publish_refused_by_the_broker_raises_publish_error(tmp_path: Path) -> None:
    """A publish the ACL denies completes with PublishError carrying the PUBACK reason code 0x87."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite fltest/nodes/#\n")  # lines before any `user` apply to anonymous clients
    local = start_local_broker(tmp_path / "m", acl_file=acl)
    inbox: queue.Queue[Inbound] = queue.Queue()
    session = Session(MqttSettings(client_id="edge1", port=local.port), inbox=inbox)
    try:
        session.start()
        assert session.wait_connected(5.0)
        session.publish(T.node_status("edge1"), b"allowed").wait(5.0)  # 0x10 "no matching subscribers" is success

        result = session.publish(T.plan("job"), b"denied")

        with pytest.raises(PublishError) as info:
            result.wait(5.0)
        assert info.value.reason_code == 0x87 and info.value.topic == T.plan("job")
        assert result.done and result.error is info.value
        assert session.connected
    finally:
        session.stop(timeout=1.0)
        local.stop()


def test_settings_from_env_reads_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """ConnectionSettings reads FL_MQTT_* and flags win over it; a bad port is a ValueError naming it."""
    env = {"FL_MQTT_HOST": "broker.local", "FL_MQTT_PORT": "8883", "FL_MQTT_USERNAME": "edge1", "FL_MQTT_TLS_CA": "/ca"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FL_MQTT_KEEPALIVE", "99")

    settings = ConnectionSettings.load({"keepalive": 10}).mqtt("edge1")

    assert (settings.host, settings.port, settings.username, settings.tls_ca) == ("broker.local", 8883, "edge1", "/ca")
    assert (settings.client_id, settings.keepalive, settings.clean_start) == ("edge1", 10, False)
    monkeypatch.setenv("FL_MQTT_PORT", "x")
    with pytest.raises(ValueError, match="FL_MQTT_PORT"):
        ConnectionSettings.load().mqtt("edge1")

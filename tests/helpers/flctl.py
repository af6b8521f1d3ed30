"""Running `flctl` in process against a test broker, and a raw paho client that checks what reached the
broker independently of flctl's own client."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from flctl.cli import main
from tests.helpers.mqtt import BrokerHandle

WAIT = 10.0


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


class FlctlRunner:
    """Runs `flctl` in process against the test broker and captures what it printed."""

    def __init__(self, broker: BrokerHandle, capsys: pytest.CaptureFixture[str]) -> None:
        self.broker = broker
        self.capsys = capsys

    def __call__(self, *argv: str) -> Run:
        self.capsys.readouterr()
        code = main(["--host", self.broker.host, "--port", str(self.broker.port), "--timeout", "5", *argv])
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err)


def _client(broker: BrokerHandle) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def retained(broker: BrokerHandle, topic_filter: str) -> dict[str, bytes]:
    """Every retained message under `topic_filter`, read with plain paho (subscribe, then a sync round trip)."""
    messages: dict[str, bytes] = {}
    sync = f"raw-sync/{uuid.uuid4().hex}"
    synced = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == sync:
            synced.set()
        elif msg.retain:
            messages[msg.topic] = bytes(msg.payload)

    client = _client(broker)
    client.on_message = on_message
    try:
        client.subscribe([(topic_filter, 1), (sync, 1)])
        client.publish(sync, b"x", qos=1).wait_for_publish(WAIT)
        assert synced.wait(WAIT), "sync message did not come back"
    finally:
        client.disconnect()
        client.loop_stop()
    return messages


def publish_retained(broker: BrokerHandle, topic: str, payload: bytes) -> None:
    client = _client(broker)
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(WAIT)
    finally:
        client.disconnect()
        client.loop_stop()

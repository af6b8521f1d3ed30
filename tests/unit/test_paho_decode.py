"""broker.decode_publish: the one-copy PUBLISH decoder gives paho's own result on the same packets, and refuses
what paho refuses, with paho's MalformedPacket."""

from __future__ import annotations

import random
import struct

import pytest
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker import decode_publish, paho_decode_publish

assert paho_decode_publish is not None
original = paho_decode_publish


def _packet(topic: bytes, payload: bytes, *, qos: int, mid: int, props: Properties | None) -> bytes:
    body = struct.pack("!H", len(topic)) + topic
    if qos > 0:
        body += struct.pack("!H", mid)
    if props is not None:
        body += props.pack()
    return body + payload


def _props(rng: random.Random) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if rng.random() < 0.7:
        props.UserProperty = [(f"k{i}", "v" * rng.randint(0, 300)) for i in range(rng.randint(1, 4))]
    if rng.random() < 0.5:
        props.ContentType = "application/json"
    if rng.random() < 0.5:
        props.MessageExpiryInterval = rng.randint(1, 10**6)
    if rng.random() < 0.3:
        props.CorrelationData = rng.randbytes(rng.randint(0, 40))
    return props


def _fields(p: object) -> tuple[object, ...]:
    dup, qos, retain, topic, mid, props, payload = p  # type: ignore[misc]
    return dup, qos, retain, topic, mid, None if props is None else props.json(), bytes(payload)


def test_the_same_fields_as_paho_on_random_packets() -> None:
    rng = random.Random(12)
    for case in range(400):
        qos = rng.randint(0, 2)
        header = 0x30 | (qos << 1) | rng.randint(0, 1) | (rng.randint(0, 1) << 3)
        v5 = case % 4 != 0
        topic = ("fl/jobs/" + "x" * rng.randint(0, 200)).encode()
        payload = rng.randbytes(rng.choice([0, 1, 100, 70_000, 600_000]))
        packet = _packet(topic, payload, qos=qos, mid=rng.randint(1, 65535), props=_props(rng) if v5 else None)
        protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
        for buffer in (packet, bytearray(packet)):
            ours = decode_publish(header, buffer, protocol)
            assert _fields(ours) == _fields(original(header, buffer, protocol)), case
            assert type(ours.payload) is bytes and type(ours.topic) is bytes


@pytest.mark.parametrize(
    ("packet", "protocol"),
    [
        (b"", MQTTProtocolVersion.MQTTv5),  # no topic length
        (b"\x00", MQTTProtocolVersion.MQTTv5),
        (b"\x00\x09abc", MQTTProtocolVersion.MQTTv5),  # the topic runs past the end
        (b"\x00\x00payload", MQTTProtocolVersion.MQTTv311),  # an empty topic before v5
        (b"\x00\x01t\x7f", MQTTProtocolVersion.MQTTv5),  # properties longer than the packet
        (b"\x00\x01t\xff\xff\xff\xff\x01", MQTTProtocolVersion.MQTTv5),  # a five-byte properties length
        (b"\x00\x01t\x02\x01", MQTTProtocolVersion.MQTTv5),  # a property cut short
    ],
)
def test_malformed_packets_refused_as_paho_refuses_them(packet: bytes, protocol: MQTTProtocolVersion) -> None:
    with pytest.raises(MalformedPacket):
        original(0x30, packet, protocol)
    with pytest.raises(MalformedPacket):
        decode_publish(0x30, packet, protocol)


def test_a_qos1_packet_without_its_packet_id_is_refused_by_both() -> None:
    for decode in (original, decode_publish):
        with pytest.raises(MalformedPacket):
            decode(0x32, b"\x00\x01t", MQTTProtocolVersion.MQTTv5)


def test_installed_for_every_session() -> None:
    """Importing `broker` (its Session) puts the decoder in paho's place for every client of the process."""
    assert paho_packet.decode_publish is decode_publish

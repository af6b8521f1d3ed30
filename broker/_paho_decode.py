"""A PUBLISH decoder for paho-mqtt that copies the payload once.

paho-mqtt 2.2's ``_packet.decode_publish`` peels a PUBLISH apart with ``struct.unpack`` and slicing, and
every step copies the rest of the packet: the topic length, the topic, the packet id, then
``Properties.unpack``, which slices its buffer again for each byte of each variable-length integer and
for each property. With the payload still attached, a 512 KiB chunk carrying a few MQTT v5 properties is
copied a dozen times before the callback sees it; at 100 edges that was the aggregator's largest single
cost after hashing (issue 12).

`decode_publish` reads the same fields from a memoryview: the properties are unpacked from a copy of their
own few bytes, and the payload is copied once. It returns paho's own ``PublishPacket``, raises paho's
``MalformedPacket`` for what paho's decoder refuses, and is checked field for field against paho's on the
same packets (tests/unit/test_paho_decode.py). `install` puts it in place of paho's, only when paho has the
function this replaces (a paho that changed its internals keeps its own decoder; nothing breaks).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

__all__ = ["decode_publish", "install", "paho_decode_publish"]

_U16 = struct.Struct("!H")
_VBI_MAX = 4  # a variable byte integer is at most four bytes (MQTT v5.0 1.5.5)

# paho's own decoder, kept before `install` replaces it (None if paho has none): for comparison in the tests.
paho_decode_publish: Callable[..., Any] | None = getattr(paho_packet, "decode_publish", None)


def _decode(header: int, packet: bytes | bytearray, protocol: MQTTProtocolVersion) -> Any:
    view = memoryview(packet)
    (topic_len,) = _U16.unpack_from(view, 0)
    pos = 2 + topic_len
    if pos > len(view):
        raise MalformedPacket("topic runs past the end of the packet")
    topic = bytes(view[2:pos])
    if protocol != MQTTProtocolVersion.MQTTv5 and not topic:
        raise MalformedPacket("topic can't be empty in MQTTv3")
    qos = (header & 0x06) >> 1
    mid = 0
    if qos > 0:
        (mid,) = _U16.unpack_from(view, pos)
        pos += 2
    properties = None
    if protocol == MQTTProtocolVersion.MQTTv5:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        length, length_bytes = VariableByteIntegers.decode(bytes(view[pos : pos + _VBI_MAX]))  # type: ignore[no-untyped-call]
        end = pos + length_bytes + length
        if end > len(view):
            raise MalformedPacket("properties run past the end of the packet")
        properties.unpack(bytes(view[pos:end]))  # type: ignore[no-untyped-call]
        pos = end
    return paho_packet.PublishPacket(
        dup=((header & 0x08) >> 3) != 0,
        qos=qos,
        retain=(header & 0x01) != 0,
        topic=topic,
        mid=mid,
        properties=properties,
        payload=bytes(view[pos:]),
    )


# paho's own wrapper turns struct, index and value errors into MalformedPacket, as for its decoder.
_convert: Callable[[Callable[..., Any]], Callable[..., Any]] = getattr(paho_packet, "convert_exception", lambda f: f)
decode_publish: Callable[[int, bytes | bytearray, MQTTProtocolVersion], Any] = _convert(_decode)


def install() -> bool:
    """Use `decode_publish` for every paho client of this process (paho's client looks the function up in
    its ``_packet`` module on each PUBLISH). False, and nothing changed, when paho has no such function or
    its ``PublishPacket`` has other fields than the ones this decoder fills."""
    fields = getattr(getattr(paho_packet, "PublishPacket", None), "_fields", None)
    if paho_decode_publish is None or fields != ("dup", "qos", "retain", "topic", "mid", "properties", "payload"):
        return False
    paho_packet.decode_publish = decode_publish  # type: ignore[assignment]
    return True

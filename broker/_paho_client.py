"""A paho-mqtt 2.x client as every MQTT session of this project connects, and its CONNECT properties.

The one place that turns `MqttSettings` into paho's settings: MQTT v5 with manual acknowledgements, paho's
in-flight window, the credentials, TLS and the retained last will; the CONNECT's receive maximum and session
expiry. `broker.Session` runs such a client on its own threads; whatever else must speak exactly as a node
does (the load generator's simulated edges, benchmarks/_simnet.py) builds the same client here.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker._errors import ConnectError
from broker._messages import new_properties
from broker._settings import MqttSettings

__all__ = ["MAX_INFLIGHT", "RECEIVE_MAXIMUM", "connect_properties", "paho_client"]

# paho resends queued QoS>0 messages on reconnect without honouring this (PR #698); keep it at or
# below Mosquitto's advertised ReceiveMaximum (its max_inflight_messages, 20 by default).
MAX_INFLIGHT = 20
# Un-acked QoS>0 messages the broker may have in flight *to* us. Without it Mosquitto applies its own
# max_inflight_messages (20): with manual acks, a caller holding 20 un-acked messages (say, retained
# ones it has not handled yet) would stall delivery and every barrier behind them. 65535 is the
# protocol maximum; the inbox is the buffer, and the broker's queue limits bound it.
RECEIVE_MAXIMUM = 65535


def paho_client(settings: MqttSettings, will: tuple[str, bytes] | None = None) -> mqtt.Client:
    """A paho client for `settings` (no callbacks set, not connected): MQTT v5, manual acks, paho's in-flight
    window, the credentials, TLS and `will` (topic, payload; retained, QoS 1). Raises ConnectError if the TLS
    files or the will are unusable."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
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
    return client


def connect_properties(settings: MqttSettings) -> Properties:
    """The CONNECT's properties: the session expiry (a persistent session) and `RECEIVE_MAXIMUM`."""
    props = new_properties(PacketTypes.CONNECT)
    if settings.session_expiry > 0:
        props.SessionExpiryInterval = settings.session_expiry
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return props

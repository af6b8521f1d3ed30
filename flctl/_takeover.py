"""Log in as a node on the broker's loopback listener: Mosquitto closes the node's other connection with
that client id (a session takeover), and the node's own rights let this connection clear what the node
left retained.

Why: at a reload (SIGHUP) Mosquitto 2.0.11 checks each connected client's password again, but a client
that logged in with a certificate (`use_identity_as_username`) is not checked against the new CRL
(`mosquitto_security_apply_default` only re-reads its CN). The revoked certificate is refused from the
next connection on; this closes the one that is open. Mosquitto has no other "disconnect client" request
without the dynamic-security plugin. And a removed node's retained presence would stay listed by
`flctl get nodes` forever: only the node (or an aggregator) may write it.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from broker import MqttSettings

__all__ = ["take_session_over"]

# A rotated node's session is kept for as long as a node service keeps its own, so the messages queued
# for it while it waits for its new certificate are still there when it comes back.
KEEP_SESSION = MqttSettings(client_id="x").session_expiry


def take_session_over(
    host: str,
    port: int,
    name: str,
    password: str,
    *,
    keep_session: bool,
    timeout: float,
    clear: Sequence[str] = (),
) -> str | None:
    """Connect as `name` (client id = username on these brokers), delete the retained messages of `clear`
    (an empty retained publish each, acknowledged), then leave; None on success, else why not.

    `keep_session` False ends the session with it (a removed node: its queued messages go too); True keeps
    it, and the messages the broker sends this connection are never acknowledged, so they stay in the
    session for the node's next connection."""
    answers: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    acked: queue.SimpleQueue[int] = queue.SimpleQueue()

    def on_connect(
        _c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, reason: ReasonCode, _p: Properties | None
    ) -> None:
        answers.put(None if not reason.is_failure else f"refused: {reason}")

    def on_publish(_c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: Properties | None) -> None:
        acked.put(mid if not reason.is_failure else -1)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5, manual_ack=True)
    client.username_pw_set(name, password)
    client.on_connect = on_connect
    client.on_publish = on_publish
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves __init__ unannotated
    props.SessionExpiryInterval = KEEP_SESSION if keep_session else 0
    try:
        client.connect(host, port, keepalive=10, clean_start=not keep_session, properties=props)
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"
    client.loop_start()
    try:
        try:
            refused = answers.get(timeout=timeout)
        except queue.Empty:
            return f"no answer from {host}:{port} within {timeout:g}s"
        if refused is not None:
            return refused
        for topic in clear:
            client.publish(topic, b"", qos=1, retain=True)
        for topic in clear:
            try:
                if acked.get(timeout=timeout) < 0:
                    return f"the broker refused to clear {topic}"
            except queue.Empty:
                return f"no acknowledgement for clearing {topic} within {timeout:g}s"
        return None
    finally:
        client.disconnect()
        client.loop_stop()

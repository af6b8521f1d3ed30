"""Command-line options for a service's MQTT connection, shared by every node service.

Credentials and TLS files come only from the environment (`MqttSettings.from_env`: FL_MQTT_USERNAME,
FL_MQTT_PASSWORD, FL_MQTT_TLS_CA, ...), never from flags, so they do not show in `ps`. Flags override
the environment's FL_MQTT_HOST, FL_MQTT_PORT and FL_MQTT_KEEPALIVE.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker._session import MqttSettings

__all__ = ["add_mqtt_arguments", "mqtt_settings_from_args"]


def add_mqtt_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --host, --port and --keepalive to a service's parser."""
    group = parser.add_argument_group("MQTT connection (credentials and TLS: FL_MQTT_* environment variables)")
    group.add_argument("--host", default=None, help="broker host (default: $FL_MQTT_HOST or 127.0.0.1)")
    group.add_argument("--port", type=int, default=None, help="broker port (default: $FL_MQTT_PORT or 1883)")
    group.add_argument(
        "--keepalive",
        type=int,
        default=None,
        help="seconds of silence before the link counts as dead; the broker notices after 1.5x this and "
        "publishes the node's last will (default: $FL_MQTT_KEEPALIVE or 30)",
    )


def mqtt_settings_from_args(args: argparse.Namespace, client_id: str) -> MqttSettings:
    """The session settings: environment first, then the flags that were given. Raises ValueError."""
    overrides: dict[str, Any] = {"client_id": client_id}
    for name in ("host", "port", "keepalive"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return MqttSettings.from_env(**overrides)

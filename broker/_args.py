"""Command-line options for a service's MQTT connection, shared by every node service.

Where each setting comes from, first match wins: the flags (--host, --port, --keepalive), the
environment (FL_MQTT_HOST, FL_MQTT_PORT, FL_MQTT_KEEPALIVE, FL_MQTT_USERNAME, FL_MQTT_PASSWORD,
FL_MQTT_TLS_CA, FL_MQTT_TLS_CERT, FL_MQTT_TLS_KEY), the node config (`--config FILE` or FL_NODE_CONFIG:
the node.yaml `flctl broker init` writes), the defaults. Credentials and TLS files never come from
flags, so they do not show in `ps`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from broker._nodeconfig import NODE_CONFIG_ENV, NodeConfig, load_node_config
from broker._session import MqttSettings

__all__ = ["add_mqtt_arguments", "mqtt_settings_from_args", "node_config_from_args", "node_from_args"]


def add_mqtt_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --config, --host, --port, --keepalive and the TLS file options to a service's parser.

    There is deliberately no --password: a secret on a command line shows in `ps` and shell history.
    """
    group = parser.add_argument_group(
        "MQTT connection (flags > FL_MQTT_* environment variables > --config file > defaults)"
    )
    group.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"the node's node.yaml from `flctl broker init`: node name, broker, credentials, TLS files "
        f"(default: ${NODE_CONFIG_ENV})",
    )
    group.add_argument("--host", default=None, help="broker host (default: $FL_MQTT_HOST, the config, or 127.0.0.1)")
    group.add_argument(
        "--port", type=int, default=None, help="broker port (default: $FL_MQTT_PORT, the config, or 1883)"
    )
    group.add_argument(
        "--keepalive",
        type=int,
        default=None,
        help="seconds of silence before the link counts as dead; the broker notices after 1.5x this and "
        "publishes the node's last will (default: $FL_MQTT_KEEPALIVE or 30)",
    )
    group.add_argument(
        "--tls-ca", default=None, metavar="FILE", help="CA certificate (default: $FL_MQTT_TLS_CA or the config)"
    )
    group.add_argument(
        "--tls-cert",
        default=None,
        metavar="FILE",
        help="client certificate for mutual TLS (default: $FL_MQTT_TLS_CERT or the config)",
    )
    group.add_argument(
        "--tls-key", default=None, metavar="FILE", help="its private key (default: $FL_MQTT_TLS_KEY or the config)"
    )


def node_config_from_args(args: argparse.Namespace) -> NodeConfig | None:
    """The node config named by --config or FL_NODE_CONFIG, loaded (ValueError if unreadable), or None."""
    path = getattr(args, "config", None) or os.environ.get(NODE_CONFIG_ENV) or None
    return load_node_config(path) if path else None


def node_from_args(args: argparse.Namespace, config: NodeConfig | None, *, roles: tuple[str, ...]) -> str:
    """The node name: --node, else the config's; ValueError when there is none, when they disagree, or when
    the config is for another role (an edge's credentials on the aggregator, say)."""
    node: str | None = getattr(args, "node", None)
    if config is not None:
        if config.role not in roles:
            raise ValueError(
                f"the node config is for a node of role {config.role!r}, this service needs {' or '.join(roles)}"
            )
        if node is not None and node != config.node:
            raise ValueError(f"--node {node} disagrees with the node config, which is for {config.node}")
        return config.node
    if node is None:
        raise ValueError(f"give --node, or --config FILE (or ${NODE_CONFIG_ENV}) with the node's node.yaml")
    return node


def mqtt_settings_from_args(args: argparse.Namespace, client_id: str, config: NodeConfig | None = None) -> MqttSettings:
    """The session settings: flags, then the environment, then `config` (default: the one --config or
    FL_NODE_CONFIG names), then defaults. Raises ValueError."""
    if config is None:
        config = node_config_from_args(args)
    values: dict[str, Any] = config.mqtt_values() if config is not None else {}
    values.update(MqttSettings.env_values())
    for name in ("host", "port", "keepalive", "tls_ca", "tls_cert", "tls_key"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    values["client_id"] = client_id
    return MqttSettings(**values)

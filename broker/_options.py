"""Command-line options for a broker connection, declared once for the node services and flctl.

`add_connection_options` declares ``--config``, ``--host``, ``--port``, ``--keepalive`` and the TLS
files (``--tls-ca``, ``--tls-cert``, ``--tls-key``); flctl adds ``--username`` and ``--password``. The
services never take a secret on a command line: it would show in `ps` and in shell history. What the
flags give goes to `ConnectionSettings.load`, which applies the one precedence (flags > environment >
node.yaml > defaults).
"""

from __future__ import annotations

import argparse
from typing import Any

from broker._nodeconfig import NodeConfig
from broker._settings import NODE_CONFIG_ENV, SERVICE_ENV_PREFIX, ConnectionSettings, MqttSettings, node_config_from

__all__ = [
    "CONNECTION_FLAGS",
    "add_connection_options",
    "add_mqtt_arguments",
    "connection_flags",
    "mqtt_settings_from_args",
    "node_config_from_args",
    "node_from_args",
    "port_number",
]

#: The connection settings a command line may give (argparse dests), in `ConnectionSettings` names.
CONNECTION_FLAGS = ("host", "port", "keepalive", "username", "password", "tls_ca", "tls_cert", "tls_key")


def port_number(text: str) -> int:
    """An argparse type: a TCP port number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 1-65535, got {value}")
    return value


def add_connection_options(
    group: argparse._ArgumentGroup | argparse.ArgumentParser,
    *,
    env_prefix: str,
    config_envs: tuple[str, ...] = (NODE_CONFIG_ENV,),
    default: Any = None,
    keepalive: bool = True,
    credentials: bool = False,
) -> None:
    """Declare the connection options on `group`. `default` is every option's default (None, or
    argparse.SUPPRESS for options repeated after a subcommand); `credentials` adds --username/--password."""
    envs = " or ".join(f"${name}" for name in config_envs)
    group.add_argument(
        "--config",
        default=default,
        metavar="FILE",
        help=f"the node config from `flctl broker init` (node.yaml): node name, broker, credentials, TLS files; "
        f"flags and {env_prefix}* variables override it (default: {envs})",
    )
    group.add_argument(
        "--host", default=default, help=f"broker host (default: ${env_prefix}HOST, the config, or 127.0.0.1)"
    )
    group.add_argument(
        "--port",
        type=port_number,
        default=default,
        help=f"broker port (default: ${env_prefix}PORT, the config, or 1883)",
    )
    if keepalive:
        group.add_argument(
            "--keepalive",
            type=int,
            default=default,
            help="seconds of silence before the link counts as dead; the broker notices after 1.5x this and "
            f"publishes the node's last will (default: ${env_prefix}KEEPALIVE or 30)",
        )
    if credentials:
        group.add_argument(
            "--username", default=default, help=f"MQTT username (default: ${env_prefix}USERNAME or the config)"
        )
        group.add_argument(
            "--password",
            default=default,
            help=f"MQTT password (default: ${env_prefix}PASSWORD or the config; prefer those: a flag shows in `ps`)",
        )
    for flag, variable, what in (
        ("--tls-ca", "TLS_CA", "CA certificate to verify the broker; enables TLS"),
        ("--tls-cert", "TLS_CERT", "client certificate for mutual TLS, with --tls-key"),
        ("--tls-key", "TLS_KEY", "its private key, with --tls-cert"),
    ):
        help_text = f"{what} (default: ${env_prefix}{variable} or the config)"
        group.add_argument(flag, default=default, metavar="FILE", help=help_text)


def connection_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The connection settings given on the command line (None: not given)."""
    return {name: getattr(args, name, None) for name in CONNECTION_FLAGS}


# -- the node services -------------------------------------------------------------------------------


def add_mqtt_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a service's connection options (no credentials: those come from the config or the environment)."""
    group = parser.add_argument_group(
        f"MQTT connection (flags > {SERVICE_ENV_PREFIX}* environment variables > --config file > defaults)"
    )
    add_connection_options(group, env_prefix=SERVICE_ENV_PREFIX)


def node_config_from_args(args: argparse.Namespace) -> NodeConfig | None:
    """The node config named by --config or FL_NODE_CONFIG, loaded (ValueError if unreadable), or None."""
    return node_config_from(getattr(args, "config", None))


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
    """The session settings of a service: flags, then FL_MQTT_*, then `config` (default: the one --config
    or FL_NODE_CONFIG names), then defaults. Raises ValueError."""
    if config is None:
        config = node_config_from_args(args)
    return ConnectionSettings.load(connection_flags(args), node_config=config).mqtt(client_id)

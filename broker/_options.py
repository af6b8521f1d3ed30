"""Command-line options for a broker connection, declared once for the node services and flctl.

`add_connection_options` declares ``--config``, ``--host``, ``--port``, ``--keepalive`` and the TLS
files (``--tls-ca``, ``--tls-cert``, ``--tls-key``); flctl adds ``--username`` and ``--password-file``.
No command takes a password on its command line: it would show in `ps` and in shell history. A
``--password`` is refused with the alternatives (the environment, a password file, the node config)
rather than left unknown: argparse would otherwise take it as an abbreviation of ``--password-file``
and read the password as a file name. What the flags give goes to `ConnectionSettings.load`, which
applies the one precedence (flags > environment > node.yaml > defaults).
"""

from __future__ import annotations

import argparse
from typing import Any

from broker._nodeconfig import NodeConfig, read_password_file
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


class _RefusedPassword(argparse.Action):
    """``--password [VALUE]``: a usage error that says where a password goes instead."""

    def __init__(self, option_strings: list[str], dest: str, *, alternatives: str = "", **kwargs: Any) -> None:
        self.alternatives = alternatives
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is not accepted: a password on a command line shows in `ps` and in shell history; "
            f"give it with {self.alternatives}"
        )


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
    argparse.SUPPRESS for options repeated after a subcommand); `credentials` adds --username and
    --password-file. --password is refused in every case (see the module docstring)."""
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
            "--password-file",
            default=default,
            metavar="FILE",
            help=f"read the MQTT password from FILE's first line (default: ${env_prefix}PASSWORD, the config, or a "
            "prompt when stdin is a terminal); there is no --password: it would show in `ps`",
        )
    alternatives = f"${env_prefix}PASSWORD or the node config's password/password_file"
    if credentials:
        alternatives = f"--password-file FILE, {alternatives}, or the prompt (a username and no password)"
    group.add_argument("--password", action=_RefusedPassword, alternatives=alternatives)
    for flag, variable, what in (
        ("--tls-ca", "TLS_CA", "CA certificate to verify the broker; enables TLS"),
        ("--tls-cert", "TLS_CERT", "client certificate for mutual TLS, with --tls-key"),
        ("--tls-key", "TLS_KEY", "its private key, with --tls-cert"),
    ):
        help_text = f"{what} (default: ${env_prefix}{variable} or the config)"
        group.add_argument(flag, default=default, metavar="FILE", help=help_text)


def connection_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The connection settings given on the command line (None: not given); the password is read from
    --password-file when given (ValueError naming the file if it cannot be read)."""
    flags = {name: getattr(args, name, None) for name in CONNECTION_FLAGS}
    password_file = getattr(args, "password_file", None)
    if password_file is not None:
        flags["password"] = read_password_file(password_file, what="--password-file")
    return flags


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

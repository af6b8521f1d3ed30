"""How one process reaches the broker: the session's settings and the ONE settings model that fills them.

`MqttSettings` is the value a `Session` is built from. `ConnectionSettings` is where its values come
from, for the node services and for flctl alike; first match wins:

1. command-line flags (``--host``, ``--port``, ``--keepalive``, ``--tls-ca``, ...; flctl also takes
   ``--username`` and ``--password-file``; no command takes a password itself on its command line);
2. the environment: ``FL_MQTT_HOST``, ``FL_MQTT_PORT``, ... for the services; ``FLCTL_HOST``, ... for
   flctl, so that a shell holding a node's credentials does not turn flctl into that node;
3. the node config (node.yaml from `flctl broker init`), named by ``--config`` or an environment
   variable (``FL_NODE_CONFIG``; flctl: ``FLCTL_CONFIG`` only, and it refuses a service's config);
4. the defaults.

pydantic-settings reads the environment; the node config is its lowest source.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker._messages import PACKET_HEADROOM
from broker._nodeconfig import NodeConfig, load_node_config
from schemas import TopicError, Topics

__all__ = [
    "FLCTL_ENV_PREFIX",
    "NODE_CONFIG_ENV",
    "SERVICE_ENV_PREFIX",
    "ConnectionSettings",
    "MqttSettings",
    "check_port",
    "node_config_from",
]

SERVICE_ENV_PREFIX = "FL_MQTT_"
FLCTL_ENV_PREFIX = "FLCTL_"
NODE_CONFIG_ENV = "FL_NODE_CONFIG"
_MAX_EXPIRY = 2**32 - 1


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """How one node connects to the broker. `client_id` is stable: the node name."""

    client_id: str
    # What `ConnectionSettings` fills, in its order; then the session's own settings.
    host: str = "127.0.0.1"
    port: int = 1883
    keepalive: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    session_expiry: int = 7 * 24 * 3600
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    max_packet_size: int = 4 * 1024 * 1024
    clean_start: bool = False
    # While the broker cannot be reached: a WARNING at the first failed attempt, then at most this often.
    unreachable_warn_every: float = 30.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        check_port(self.port, problems)
        if self.keepalive < 1:
            problems.append(f"keepalive {self.keepalive} must be >= 1 second")
        if not 0 <= self.session_expiry <= _MAX_EXPIRY:
            problems.append(f"session_expiry {self.session_expiry} must be in 0..{_MAX_EXPIRY} seconds")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            problems.append(
                f"reconnect delays must satisfy 0 < min ({self.reconnect_min}) <= max ({self.reconnect_max})"
            )
        if not self.unreachable_warn_every > 0:
            problems.append(f"unreachable_warn_every {self.unreachable_warn_every} must be > 0 seconds")
        if self.max_packet_size < 2 * PACKET_HEADROOM:
            problems.append(f"max_packet_size {self.max_packet_size} must be >= {2 * PACKET_HEADROOM} bytes")
        try:
            Topics().sync(self.client_id)
        except TopicError as exc:
            problems.append(f"client_id {self.client_id!r}: {exc.reason}")
        if problems:
            raise ValueError("invalid MQTT settings: " + "; ".join(problems))


def check_port(port: int, problems: list[str], what: str = "port") -> None:
    """Add to `problems` if `port` is not a TCP port (the settings dataclasses report every problem at once)."""
    if not 1 <= port <= 65535:
        problems.append(f"{what} {port} is not in 1..65535")


class ConnectionSettings(BaseSettings):
    """Where the broker is and who this process is to it (see the module docstring for the sources)."""

    model_config = SettingsConfigDict(env_prefix=SERVICE_ENV_PREFIX, env_ignore_empty=True, frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    keepalive: int = Field(default=30, ge=1)
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        env_prefix: str = SERVICE_ENV_PREFIX,
        node_config: NodeConfig | None = None,
    ) -> ConnectionSettings:
        """The settings from `flags` (None values: not given), then ``{env_prefix}*``, then `node_config`.

        Raises ValueError naming the variable or flag and what was expected."""
        given = {k: v for k, v in (flags or {}).items() if v is not None}
        try:
            merged = cls(_env_prefix=env_prefix, **given)
            # The node config fills only what neither the flags nor the environment set.
            from_file = node_config.mqtt_values() if node_config is not None else {}
            rest = {k: v for k, v in from_file.items() if k not in merged.model_fields_set}
            return cls(_env_prefix=env_prefix, **given, **rest) if rest else merged
        except ValidationError as exc:
            raise ValueError(_describe(exc, env_prefix, given)) from None

    def mqtt(self, client_id: str, **options: Any) -> MqttSettings:
        """The session settings of `client_id` with these values (`options`: the session's own, e.g. clean_start)."""
        return MqttSettings(client_id=client_id, **self.model_dump(), **options)


def _describe(exc: ValidationError, env_prefix: str, flags: Mapping[str, Any]) -> str:
    """One line per problem, naming where the value came from (a flag, a variable, the node config)."""
    problems = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        variable = f"{env_prefix}{name.upper()}"
        if name in flags:
            where = f"--{name.replace('_', '-')} {flags[name]!r}"
        elif os.environ.get(variable):
            where = f"{variable}={os.environ[variable]!r}"
        else:
            where = f"{name} (from the node config)"
        problems.append(f"{where}: {err['msg']}")
    return "invalid connection settings: " + "; ".join(problems)


def node_config_from(path: str | None, env_names: Sequence[str] = (NODE_CONFIG_ENV,)) -> NodeConfig | None:
    """The node config at `path` (a flag), else at the first of `env_names` that is set; None if none is given.

    Raises ValueError naming the file and the problem."""
    chosen = path or next((os.environ[n] for n in env_names if os.environ.get(n)), None)
    return load_node_config(chosen) if chosen else None

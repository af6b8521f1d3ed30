"""node.yaml: one node's connection settings (identity, broker, credentials, TLS files), as written by
`flctl broker init` and read by fl-cloud-aggregator, fl-edge-trainer and flctl (`--config FILE` or
FL_NODE_CONFIG).

    node: edge1            # also the MQTT username and client id
    role: edge             # edge | aggregator | admin | viewer | monitor
    broker: {host: broker.example.com, port: 8883}
    username: edge1
    password: "..."        # or password_file: /etc/fl/edge1.password
    tls: {ca: ca.crt, cert: edge1.crt, key: edge1.key}
    site: site-a           # optional: the factory site whose broker this node uses

Relative paths (password_file, tls.*) are relative to the file's folder. Flags and environment variables
override what the file says (`broker.ConnectionSettings`). The password is never part of a repr or a log line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from schemas import check_name

__all__ = ["BrokerAddress", "NodeConfig", "NodeTls", "load_node_config"]

# edge and aggregator run the services; admin (writes specs) and viewer (read-only) use flctl; monitor
# reads $SYS and statuses. The broker's ACL enforces what each may do; the role here says which tool
# the file is for (a service refuses another role's file).
Role = Literal["edge", "aggregator", "admin", "viewer", "monitor"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerAddress(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)


class NodeTls(_Strict):
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> NodeTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together")
        return self


class NodeConfig(_Strict):
    """One node's connection settings. Paths are absolute once loaded with `load_node_config`."""

    node: str
    role: Role
    broker: BrokerAddress
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    password_file: str | None = None
    tls: NodeTls | None = None
    # Edge only: `fl-edge-trainer --warm-worker` (scripts start with TensorFlow imported); None: not set
    # (the service's default, off), so configs that do not use it are written without it.
    warm_worker: StrictBool | None = None
    # The factory site whose broker this node connects to (`flctl site add`), None for a node of the cloud
    # broker. Edges announce it in their presence, so the aggregator can tell which edges sit behind
    # which site's bridge.
    site: str | None = None

    @model_validator(mode="after")
    def _check(self) -> NodeConfig:
        check_name(self.node, "node")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.username is not None and self.username != self.node:
            # The broker replaces the client id by the username and its ACLs key on it: they must agree.
            raise ValueError(f"username {self.username!r} must equal node {self.node!r}")
        if self.site is not None:
            check_name(self.site, "site")
        if self.warm_worker is not None and self.role != "edge":
            raise ValueError(f"warm_worker is a setting of edge nodes; this config is for role {self.role!r}")
        return self

    def with_base(self, base: Path) -> NodeConfig:
        """The same settings with relative paths made absolute under `base`."""

        def rel(value: str | None) -> str | None:
            if value is None:
                return None
            path = Path(value).expanduser()
            return str(path if path.is_absolute() else (base / path))

        tls = None
        if self.tls is not None:
            tls = NodeTls(ca=rel(self.tls.ca), cert=rel(self.tls.cert), key=rel(self.tls.key))
        return self.model_copy(update={"password_file": rel(self.password_file), "tls": tls})

    def resolved_password(self) -> str | None:
        """The password, read from `password_file` when that is how it is given (first line, stripped)."""
        if self.password_file is None:
            return self.password
        return read_password_file(self.password_file, what="password_file")

    def mqtt_values(self) -> dict[str, Any]:
        """Keyword arguments for `MqttSettings` (host, port, username, password, tls_*), without client_id."""
        values: dict[str, Any] = {"host": self.broker.host, "port": self.broker.port}
        if self.username is not None:
            values["username"] = self.username
        password = self.resolved_password()
        if password is not None:
            values["password"] = password
        if self.tls is not None:
            for name in ("ca", "cert", "key"):
                value = getattr(self.tls, name)
                if value is not None:
                    values[f"tls_{name}"] = value
        return values

    def to_yaml(self) -> str:
        """The file's text (what `flctl broker init` writes)."""
        data = self.model_dump(exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def read_password_file(path: str | os.PathLike[str], *, what: str = "password file") -> str:
    """The password a file holds: its first line, stripped (a trailing newline is not part of it).

    Raises ValueError naming `what` and the file, never echoing its content."""
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise ValueError(f"{what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path}: not UTF-8 text") from None
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a node.yaml; relative paths become absolute under its folder. Raises ValueError
    naming the file and the problem (never echoing a password)."""
    file = Path(path).expanduser()
    try:
        raw = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise ValueError(f"node config {file}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"node config {file}: not valid YAML ({exc.__class__.__name__})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"node config {file}: expected a mapping of settings")
    try:
        cfg = NodeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"node config {file}: {problems}") from None
    return cfg.with_base(file.absolute().parent)

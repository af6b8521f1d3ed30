"""`provision`: check the arguments, then write the whole deployment folder (PKI, passwd, ACL, configs)."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from broker import BrokerAddress, NodeConfig, NodeTls
from broker.mosquitto import BrokerConfig, TlsListener, render_config
from flctl._errors import InputError, UsageError
from flctl.provision._acl import render_acl
from flctl.provision._files import PUBLIC, SECRET, mkdir, write, write_passwd
from flctl.provision._pki import CertificateAuthority
from schemas import Topics, check_name

DEFAULT_TLS_PORT = 8883
DEFAULT_PLAIN_PORT = 1883
_LAYOUT = ("broker", "ca", "nodes", "admin", "viewer", "monitor")
# The broker's process id (flctl node signals it to reload), in DIR/broker/data: mosquitto writes it after
# dropping privileges, and the data folder is the one it may write (systemd's ReadWritePaths, Kubernetes'
# volume; the rest of DIR/broker is read-only there, and an unwritable pid file stops the broker at start).
PID_FILE = "data/mosquitto.pid"
# In DIR/broker, with client certificates: the CA's revocation list.
CRL_FILE = "crl.pem"
Role = Literal["edge", "aggregator", "admin", "viewer", "monitor"]


class BrokerFolder:
    """Where a provisioned broker's files are and its ports: the cloud deployment's and a site's."""

    out: Path
    broker_config: BrokerConfig

    @property
    def conf_path(self) -> Path:
        return self.out / "broker" / "mosquitto.conf"

    @property
    def tls_port(self) -> int:
        assert self.broker_config.tls is not None
        return self.broker_config.tls.port

    @property
    def plain_port(self) -> int:
        return self.broker_config.port


def secured_broker(
    installed: Path,
    plain_port: int,
    port: int,
    *,
    bind: str | None,
    run_as_root: bool | None,
    client_certs: bool = False,
) -> BrokerConfig:
    """The broker every provisioned folder runs, the cloud's and a site's: the plain listener on loopback
    only, TLS for the nodes, passwords and the ACL from `installed`, the username as client id, the pid file
    `flctl node` reloads it through; with `client_certs`, the certificate's name as username and the CRL."""
    return BrokerConfig(
        plain_port,
        bind="127.0.0.1",
        data_dir=installed / "data",
        allow_anonymous=False,
        password_file=installed / "passwd",
        acl_file=installed / "acl",
        use_username_as_clientid=True,
        run_as_root=run_as_root,
        pid_file=installed / PID_FILE,
        tls=TlsListener(
            port,
            bind=bind,
            cafile=installed / "ca.crt",
            certfile=installed / "server.crt",
            keyfile=installed / "server.key",
            require_certificate=client_certs,
            use_identity_as_username=client_certs,
            crlfile=installed / CRL_FILE if client_certs else None,
        ),
    )


@dataclass(frozen=True)
class Provisioned(BrokerFolder):
    """What `provision` wrote: where, for whom, and the broker's settings (no secrets)."""

    out: Path
    broker_config: BrokerConfig
    roles: Mapping[str, str]  # identity -> edge | aggregator | admin | viewer | monitor
    configs: dict[str, Path] = field(default_factory=dict)  # identity -> its node.yaml / flctl.yaml


# -- arguments -------------------------------------------------------------------------------------


def _names(values: Sequence[str], what: str) -> list[str]:
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip()
            if not name:
                continue
            try:
                check_name(name, what)
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
            if name in names:
                raise UsageError(f"{what} {name} is given twice")
            names.append(name)
    return names


@dataclass(frozen=True)
class _Identities:
    """The checked names of every identity, by role."""

    nodes: list[str]
    aggregators: list[str]
    admins: list[str]
    viewers: list[str]
    monitors: list[str]


def _check_arguments(
    nodes: Sequence[str],
    aggregators: Sequence[str] | None,
    people: Mapping[str, Sequence[str]],
    *,
    port: int,
    plain_port: int,
    prefix: str,
) -> _Identities:
    """Every identity's name, checked (`people`: admin, viewer and monitor names as given); UsageError
    for anything that cannot work."""
    node_names = _names(nodes, "node")
    if not node_names:
        raise UsageError("--nodes needs at least one node name")
    named = {role: _names(people.get(role, ()), role) for role in ("admin", "viewer", "monitor")}
    if not named["admin"]:
        raise UsageError("--admin needs a name")
    agg_names = (
        _names(aggregators, "aggregator")
        if aggregators is not None
        else [n for n in node_names if n.startswith("cloud")]
    )
    unknown = [a for a in agg_names if a not in node_names]
    if unknown:
        raise UsageError(f"--aggregators {', '.join(unknown)}: not in --nodes")
    # Each name is one MQTT user with one ACL block: a name in two roles would get both.
    taken = {n: "node" for n in node_names}  # name -> the role it has (as worded in messages)
    for role, names in named.items():
        for name in names:
            if name in taken:
                other = taken[name]
                article = "an" if other[0] in "aeiou" else "a"
                raise UsageError(
                    f"--{role} {name}: {name} is already the name of {article} {other}; identities must be distinct"
                )
            taken[name] = role
    if port == plain_port:
        raise UsageError(f"--port and --plain-port are both {port}")
    for value, flag in ((port, "--port"), (plain_port, "--plain-port")):
        if not 1 <= value <= 65535:
            raise UsageError(f"{flag} {value} is not in 1..65535")
    try:
        Topics(prefix)
    except ValueError as exc:
        raise UsageError(f"--prefix {prefix!r}: {exc}") from exc
    return _Identities(node_names, agg_names, named["admin"], named["viewer"], named["monitor"])


def _prepare_out(out: Path, *, force: bool) -> Path:
    """`out`, absolute; InputError when it holds something and `force` is not given (with it, the
    layout's folders are removed; anything else in `out` stays)."""
    out = out.absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise InputError(f"{out} already exists and is not empty: refusing to overwrite it (use --force)")
        for part in _LAYOUT:
            target = out / part
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    return out


# -- writing ---------------------------------------------------------------------------------------


def _write_identity(
    file: Path,
    name: str,
    role: Role,
    *,
    password: str,
    ca: CertificateAuthority,
    address: BrokerAddress,
    cert: bool,
    warm_worker: bool = False,
) -> Path:
    """One identity's config (and next to it the CA certificate, with `cert` its own key and certificate)."""
    folder = file.parent
    write(folder / "ca.crt", ca.cert_pem, PUBLIC)
    tls = NodeTls(ca="ca.crt")
    if cert:
        issued = ca.issue(name)
        write(folder / f"{name}.key", issued.key_pem, SECRET)
        write(folder / f"{name}.crt", issued.cert_pem, PUBLIC)
        tls = NodeTls(ca="ca.crt", cert=f"{name}.crt", key=f"{name}.key")
    node_cfg = NodeConfig(
        node=name,
        role=role,
        broker=address,
        username=name,
        password=password,
        tls=tls,
        warm_worker=True if warm_worker and role == "edge" else None,
    )
    header = f"# {name} ({role}): connection settings written by `flctl broker init`. Secret: keep it 0600.\n"
    return write(file, header + node_cfg.to_yaml(), SECRET)


def _write_mosquitto_sub_options(folder: Path, name: str, password: str, plain_port: int) -> Path:
    """`folder/mosquitto_sub`: the monitor's options for mosquitto_sub on the broker host's loopback
    listener. mosquitto_sub reads `$XDG_CONFIG_HOME/mosquitto_sub`, so `XDG_CONFIG_HOME=folder
    mosquitto_sub -t ...` logs in as the monitor with no password on the command line."""
    return write(folder / "mosquitto_sub", mosquitto_sub_options(name, password, plain_port), SECRET)


def mosquitto_sub_options(name: str, password: str, plain_port: int) -> str:
    """The text of a monitor's `mosquitto_sub` options file (see `_write_mosquitto_sub_options`)."""
    lines = [
        f"# {name} (monitor): mosquitto_sub options written by `flctl`. Secret: keep it 0600.",
        "# Use: XDG_CONFIG_HOME=<this folder> mosquitto_sub -v -t '$SYS/broker/clients/connected'",
        "-h 127.0.0.1",
        f"-p {plain_port}",
        f"-u {name}",
        f"-P {password}",
    ]
    return "\n".join(lines) + "\n"


def _config_file(out: Path, name: str, role: Role, first_admin: str) -> Path:
    """Where an identity's config goes: DIR/nodes/<node>/node.yaml, DIR/admin/flctl.yaml (the first
    admin) or DIR/admin/<name>.yaml, DIR/viewer/<name>.yaml, DIR/monitor/<name>/<name>.yaml (with the
    mosquitto_sub options beside it)."""
    if role == "admin":
        return mkdir(out / "admin") / ("flctl.yaml" if name == first_admin else f"{name}.yaml")
    if role == "viewer":
        return mkdir(out / "viewer") / f"{name}.yaml"
    if role == "monitor":
        return mkdir(mkdir(out / "monitor") / name) / f"{name}.yaml"
    return mkdir(out / "nodes" / name) / "node.yaml"


def provision(
    out: Path,
    nodes: Sequence[str],
    *,
    aggregators: Sequence[str] | None = None,
    admins: Sequence[str] = ("admin",),
    viewers: Sequence[str] = (),
    monitors: Sequence[str] = ("monitor",),
    hostnames: Sequence[str] = (),
    port: int = DEFAULT_TLS_PORT,
    plain_port: int = DEFAULT_PLAIN_PORT,
    bind: str | None = None,
    client_certs: bool = False,
    broker_dir: Path | None = None,
    prefix: str = "fl",
    run_as_root: bool | None = None,
    force: bool = False,
    warm_worker: bool = False,
) -> Provisioned:
    """Write the deployment's broker files, CA, certificates, passwords and configs under `out`: one per
    node, admin (writes specs), viewer (read-only flctl) and monitor ($SYS and statuses, read-only).

    `broker_dir` is where DIR/broker will be on the broker host (mosquitto.conf names its files there;
    default: where it is written). `warm_worker` writes `warm_worker: true` into the edges' node.yaml.
    Raises UsageError for bad arguments, InputError when `out` exists
    (without `force`).
    """
    ids = _check_arguments(
        nodes,
        aggregators,
        {"admin": admins, "viewer": viewers, "monitor": monitors},
        port=port,
        plain_port=plain_port,
        prefix=prefix,
    )
    out = _prepare_out(out, force=force)
    mkdir(out)
    broker_out = mkdir(out / "broker")
    mkdir(broker_out / "data")
    ca_dir = mkdir(out / "ca")
    mkdir(out / "nodes")
    mkdir(out / "admin")
    installed = (broker_dir or broker_out).absolute()

    roles: dict[str, Role] = {n: ("aggregator" if n in ids.aggregators else "edge") for n in ids.nodes}
    roles.update({a: "admin" for a in ids.admins})
    roles.update({v: "viewer" for v in ids.viewers})
    roles.update({m: "monitor" for m in ids.monitors})
    passwords = {name: secrets.token_urlsafe(24) for name in roles}

    # CA, server certificate
    ca = CertificateAuthority(out.name or "fl")
    write(ca_dir / "ca.key", ca.key_pem, SECRET)
    write(ca_dir / "ca.crt", ca.cert_pem, PUBLIC)
    server_names = list(dict.fromkeys([*hostnames, "localhost", "127.0.0.1"]))
    server = ca.issue(server_names[0], server_names=server_names)
    write(broker_out / "ca.crt", ca.cert_pem, PUBLIC)
    write(broker_out / "server.crt", server.cert_pem, PUBLIC)
    write(broker_out / "server.key", server.key_pem, SECRET)
    if client_certs:  # an empty CRL from the start: the broker reads the file named at start (no restart later)
        write(broker_out / CRL_FILE, ca.crl({}, 0), PUBLIC)

    # passwords and ACL
    write_passwd(broker_out / "passwd", passwords)
    acl = render_acl(ids.aggregators, ids.admins, prefix, viewers=ids.viewers, monitors=ids.monitors)
    write(broker_out / "acl", acl, SECRET)

    cfg = secured_broker(installed, plain_port, port, bind=bind, run_as_root=run_as_root, client_certs=client_certs)
    write(broker_out / "mosquitto.conf", render_config(cfg), SECRET)

    # one config per identity
    address = BrokerAddress(host=hostnames[0] if hostnames else "localhost", port=port)
    configs: dict[str, Path] = {}
    for name, role in roles.items():
        file = _config_file(out, name, role, ids.admins[0])
        configs[name] = _write_identity(
            file,
            name,
            role,
            password=passwords[name],
            ca=ca,
            address=address,
            cert=client_certs,
            warm_worker=warm_worker,
        )
        if role == "monitor":
            _write_mosquitto_sub_options(file.parent, name, passwords[name], plain_port)
    return Provisioned(out=out, broker_config=cfg, roles=roles, configs=configs)

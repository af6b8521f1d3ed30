"""`flctl node add/rotate/remove`: one identity's credentials in a deployment folder from `flctl broker init`.

Only the named identity's files, its password-file line and (for the roles that have one) its ACL
block change; every other identity's bytes stay as they were. Everything is checked before the first
write, so bad input writes nothing; the broker is reloaded by the caller (`flctl._node`).

With client certificates (mutual TLS, `--client-certs`) the node's certificate is issued by the
deployment's CA (DIR/ca/ca.key) and a rotated or removed node's old certificate is revoked in
DIR/broker/crl.pem, which the broker's TLS listener checks (`crlfile`).
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from cryptography import x509

from broker import BrokerAddress, NodeConfig, NodeTls, load_node_config
from flctl._errors import InputError, UsageError
from flctl.provision._acl import render_acl
from flctl.provision._deployment import CRL_FILE, Role, _config_file, mosquitto_sub_options
from flctl.provision._files import PUBLIC, SECRET
from flctl.provision._fleet_files import (
    acl_block,
    acl_insert,
    acl_remove,
    acl_users,
    passwd_remove,
    passwd_set,
    passwd_users,
    write_atomic,
)
from flctl.provision._passwd import hash_password
from flctl.provision._pki import CertificateAuthority, Issued
from schemas import AclPattern, Topics, check_name

ROLES: tuple[Role, ...] = ("edge", "aggregator", "admin", "viewer", "monitor")
SITE_ROLES = ("edge", "aggregator")  # the services that connect to a site's broker
Action = Literal["add", "rotate", "prepare", "remove"]


@dataclass(frozen=True)
class Identity:
    """One identity of the deployment as its config file says: name, role, site, where the file is."""

    name: str
    role: Role
    config: Path
    site: str | None

    @property
    def own_folder(self) -> bool:
        """Nodes and monitors have a folder of their own; admins and viewers share DIR/admin, DIR/viewer."""
        return self.role not in ("admin", "viewer")

    def files(self) -> list[Path]:
        """Every file that belongs to this identity alone (its folder's, or its config, key and certificate)."""
        if self.own_folder:
            return sorted(p for p in self.config.parent.rglob("*") if p.is_file())
        folder = self.config.parent
        return [p for p in (self.config, folder / f"{self.name}.crt", folder / f"{self.name}.key") if p.exists()]


@dataclass(frozen=True)
class Deployment:
    """A deployment folder written by `flctl broker init`, as read from its files."""

    out: Path
    prefix: str
    identities: Mapping[str, Identity]
    conf: Mapping[str, str]  # mosquitto.conf's settings (the last value of each key)
    client_certs: bool

    @property
    def broker(self) -> Path:
        return self.out / "broker"

    @property
    def passwd(self) -> Path:
        return self.broker / "passwd"

    @property
    def acl(self) -> Path:
        return self.broker / "acl"

    @property
    def crl(self) -> Path:
        return self.broker / CRL_FILE

    @property
    def pid_file(self) -> Path | None:
        """The broker's pid file as mosquitto.conf names it (a path on the broker host), if it names one."""
        value = self.conf.get("pid_file")
        return Path(value) if value else None

    @property
    def plain_port(self) -> int:
        """The loopback listener's port (the first `listener` line)."""
        return int(self.conf["listener"].split()[0])

    def of_role(self, role: Role) -> list[str]:
        return [name for name, ident in self.identities.items() if ident.role == role]

    def identity(self, name: str, role: Role | None) -> Identity:
        """The identity `name`; UsageError when there is none, or it has another role than `role`."""
        ident = self.identities.get(name)
        if ident is None:
            known = ", ".join(sorted(self.identities)) or "none"
            raise UsageError(f"no identity {name} in the deployment {self.out} (identities: {known})")
        if role is not None and ident.role != role:
            raise UsageError(f"{name} has role {ident.role} in {ident.config}, not {role}")
        return ident


def _conf_settings(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if parts and not parts[0].startswith("#"):
            settings.setdefault(parts[0], parts[1] if len(parts) > 1 else "")  # the first listener is the plain one
            if parts[0] != "listener":
                settings[parts[0]] = parts[1] if len(parts) > 1 else ""
    return settings


def _config_files(out: Path) -> list[Path]:
    return [
        *sorted(out.glob("nodes/*/node.yaml")),
        *sorted(out.glob("admin/*.yaml")),
        *sorted(out.glob("viewer/*.yaml")),
        *sorted(out.glob("monitor/*/*.yaml")),
    ]


def open_deployment(out: Path, prefix: str = "fl") -> Deployment:
    """Read the deployment at `out`; InputError naming what is missing or wrong when it is not one that
    `flctl broker init` wrote for topic prefix `prefix`."""
    out = out.absolute()
    need = ["broker/mosquitto.conf", "broker/passwd", "broker/acl", "ca/ca.crt", "nodes"]
    missing = [part for part in need if not (out / part).exists()]
    if missing:
        raise InputError(
            f"{out} is not a deployment written by `flctl broker init` (no {', '.join(missing)}); "
            "give --deployment the folder that was its --out"
        )
    conf = _conf_settings((out / "broker" / "mosquitto.conf").read_text())
    acl = (out / "broker" / "acl").read_text()
    own_status = f"pattern write {Topics(prefix).node_status(AclPattern.USERNAME)}"
    if own_status not in acl.splitlines():
        raise InputError(
            f"{out / 'broker' / 'acl'} is not an ACL for topic prefix {prefix!r} (it has no line "
            f"`{own_status}`); give --prefix the prefix the deployment was written for"
        )
    identities: dict[str, Identity] = {}
    for file in _config_files(out):
        try:
            cfg = load_node_config(file)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        if cfg.node in identities:
            raise InputError(f"{file}: identity {cfg.node} is also configured in {identities[cfg.node].config}")
        identities[cfg.node] = Identity(cfg.node, cfg.role, file, cfg.site)
    client_certs = conf.get("use_identity_as_username") == "true"
    return Deployment(out, prefix, identities, conf, client_certs)


# -- what changed ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetChange:
    """What one `flctl node` command wrote (no secret but `password`, see there): the caller reloads the
    broker and reports it."""

    action: Action
    name: str
    role: Role
    deployment: Deployment
    config: Path | None  # the identity's config (None once removed)
    revoked: list[int] = field(default_factory=list)  # certificate serial numbers revoked in the CRL
    # `prepare_removal` only: the one-time password that now logs in as the identity (never printed).
    password: str | None = field(default=None, repr=False)


def _load_ca(dep: Deployment) -> CertificateAuthority:
    key = dep.out / "ca" / "ca.key"
    if not key.exists():
        raise InputError(
            f"{key} is missing: this deployment uses client certificates and a new one must be signed by "
            "the CA key (bring it back from where it is kept offline for the duration of the command)"
        )
    try:
        return CertificateAuthority.load(key.read_bytes(), (dep.out / "ca" / "ca.crt").read_bytes())
    except ValueError as exc:
        raise InputError(f"{key}: {exc}") from exc


def _serial_of(ident: Identity) -> int | None:
    """The serial number of `ident`'s client certificate, None when it has none."""
    cfg = load_node_config(ident.config)
    if cfg.tls is None or cfg.tls.cert is None or not Path(cfg.tls.cert).exists():
        return None
    return x509.load_pem_x509_certificate(Path(cfg.tls.cert).read_bytes()).serial_number


def _revoke(dep: Deployment, ca: CertificateAuthority, serial: int | None) -> tuple[bytes | None, list[int]]:
    """The new CRL revoking `serial` (None: nothing to revoke); InputError when the broker checks no CRL."""
    if serial is None:
        return None, []
    if "crlfile" not in dep.conf:
        raise InputError(
            f"{dep.broker / 'mosquitto.conf'} names no crlfile, so the broker cannot be told that a client "
            "certificate is revoked; nothing was written. Re-provision with this version of `flctl broker init` "
            f"(it writes {CRL_FILE}), or add `crlfile {dep.crl}` to the TLS listener and restart the broker"
        )
    try:
        known = ca.revocations(dep.crl.read_bytes() if dep.crl.exists() else None)
    except ValueError as exc:
        raise InputError(f"{dep.crl}: {exc}") from exc
    revoked = {**known.revoked, serial: dt.datetime.now(dt.UTC)}
    return ca.crl(revoked, known.number + 1), [serial]


def _check_new_name(dep: Deployment, name: str) -> None:
    try:
        check_name(name, "node")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if name in dep.identities:
        ident = dep.identities[name]
        raise UsageError(f"{name} already exists (role {ident.role}, {ident.config}); rotate or remove it instead")
    if name in passwd_users(dep.passwd.read_text()) or name in acl_users(dep.acl.read_text()):
        raise UsageError(f"{name} is already a user of the broker ({dep.passwd} or {dep.acl}); pick another name")


def _address_for(dep: Deployment, site: str | None) -> BrokerAddress:
    """The broker address the new identity connects to: the one its site's (or the cloud's) nodes use."""
    same = [i for i in dep.identities.values() if i.site == site]
    same.sort(key=lambda i: (i.role not in SITE_ROLES, i.name))
    if not same:
        where = f"of site {site}" if site else "of the cloud broker"
        raise UsageError(
            f"no identity {where} in {dep.out} to take the broker address from"
            + ("; add the site first" if site else "")
        )
    return load_node_config(same[0].config).broker


def _header(name: str, role: str, action: str) -> str:
    return f"# {name} ({role}): connection settings written by `flctl node {action}`. Secret: keep it 0600.\n"


def _write_new_config(
    dep: Deployment, file: Path, cfg: NodeConfig, issued: Issued | None, *, monitor_password: str | None
) -> None:
    """A new identity's files: the CA certificate beside its config (unless the shared folder has it),
    its key and certificate, the config, and for a monitor its mosquitto_sub options."""
    folder = file.parent
    if not (folder / "ca.crt").exists():
        write_atomic(folder / "ca.crt", (dep.out / "ca" / "ca.crt").read_bytes(), PUBLIC)
    if issued is not None:
        write_atomic(folder / f"{cfg.node}.key", issued.key_pem, SECRET)
        write_atomic(folder / f"{cfg.node}.crt", issued.cert_pem, PUBLIC)
    write_atomic(file, _header(cfg.node, cfg.role, "add") + cfg.to_yaml(), SECRET)
    if monitor_password is not None:
        write_atomic(
            folder / "mosquitto_sub", mosquitto_sub_options(cfg.node, monitor_password, dep.plain_port), SECRET
        )


def add_node(
    out: Path, name: str, role: Role, *, site: str | None = None, warm_worker: bool = False, prefix: str = "fl"
) -> FleetChange:
    """A new identity `name` of `role` (at `site`): its password line, ACL block (roles other than edge:
    edges are covered by the ACL's pattern lines), config and, with client certificates, its certificate.
    Call under `deployment_lock`."""
    if role not in ROLES:
        raise UsageError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    dep = open_deployment(out, prefix)
    _check_new_name(dep, name)
    if site is not None:
        if role not in SITE_ROLES:
            raise UsageError(f"--site is for the nodes of a site (edge, aggregator), not role {role}")
        try:
            check_name(site, "site")
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if warm_worker and role != "edge":
        raise UsageError(f"--warm-worker is a setting of edge nodes, not role {role}")
    address = _address_for(dep, site)
    issued = _load_ca(dep).issue(name) if dep.client_certs else None
    password = secrets.token_urlsafe(24)
    passwd = passwd_set(dep.passwd.read_text(), name, hash_password(password))
    acl = dep.acl.read_text()
    if role != "edge":
        whole = render_acl(
            [name] if role == "aggregator" else [],
            [name] if role == "admin" else [],
            prefix,
            viewers=[name] if role == "viewer" else [],
            monitors=[name] if role == "monitor" else [],
        )
        acl = acl_insert(acl, acl_block(whole, name))
    tls = NodeTls(ca="ca.crt", cert=f"{name}.crt", key=f"{name}.key") if issued else NodeTls(ca="ca.crt")
    cfg = NodeConfig(
        node=name,
        role=role,
        broker=address,
        username=name,
        password=password,
        tls=tls,
        warm_worker=True if warm_worker else None,
        site=site,
    )
    first_admin = name if role == "admin" and not (dep.out / "admin" / "flctl.yaml").exists() else ""
    file = _config_file(dep.out, name, role, first_admin)
    _write_new_config(dep, file, cfg, issued, monitor_password=password if role == "monitor" else None)
    # The broker's files last: the identity exists for the broker only once its config is complete.
    write_atomic(dep.passwd, passwd, SECRET)
    write_atomic(dep.acl, acl, SECRET)
    return FleetChange("add", name, role, dep, file)


def rotate_node(out: Path, name: str, *, role: Role | None = None, prefix: str = "fl") -> FleetChange:
    """A new password (and certificate, the old one revoked) for `name` only; its config rewritten with
    every other setting kept. Call under `deployment_lock`."""
    dep = open_deployment(out, prefix)
    ident = dep.identity(name, role)
    raw = yaml.safe_load(ident.config.read_text())
    try:
        cfg = NodeConfig.model_validate(raw)
    except ValueError as exc:
        raise InputError(f"{ident.config}: {exc}") from exc
    folder = ident.config.parent
    issued: Issued | None = None
    crl: bytes | None = None
    revoked: list[int] = []
    if dep.client_certs:
        ca = _load_ca(dep)
        crl, revoked = _revoke(dep, ca, _serial_of(ident))
        issued = ca.issue(name)
    password = secrets.token_urlsafe(24)
    passwd = passwd_set(dep.passwd.read_text(), name, hash_password(password))
    # A hand-made `password_file` (a path on the node's host) is replaced by the password inline, as init writes it.
    cfg = cfg.model_copy(update={"password": password, "password_file": None})
    if issued is not None:
        tls = cfg.tls or NodeTls(ca="ca.crt")
        cert = folder / (tls.cert or f"{name}.crt")
        key = folder / (tls.key or f"{name}.key")
        write_atomic(key, issued.key_pem, SECRET)
        write_atomic(cert, issued.cert_pem, PUBLIC)
        cfg = cfg.model_copy(update={"tls": NodeTls(ca=tls.ca, cert=tls.cert or cert.name, key=tls.key or key.name)})
    write_atomic(ident.config, _header(name, ident.role, "rotate") + cfg.to_yaml(), SECRET)
    if ident.role == "monitor" and (folder / "mosquitto_sub").exists():
        write_atomic(folder / "mosquitto_sub", mosquitto_sub_options(name, password, dep.plain_port), SECRET)
    if crl is not None:
        write_atomic(dep.crl, crl, PUBLIC)
    write_atomic(dep.passwd, passwd, SECRET)
    return FleetChange("rotate", name, ident.role, dep, ident.config, revoked)


def check_removal(dep: Deployment, name: str, role: Role | None, *, force: bool, using: Path | None) -> Identity:
    """`name`'s identity, if removing it is allowed: unless `force`, not the last aggregator or admin,
    nor the admin whose config is `using` (flctl's own)."""
    ident = dep.identity(name, role)
    if not force:
        if ident.role in ("aggregator", "admin") and dep.of_role(ident.role) == [name]:
            raise UsageError(
                f"{name} is the deployment's last {ident.role}: without one no job "
                + ("runs" if ident.role == "aggregator" else "can be created")
                + " (add another first, or use --force)"
            )
        if using is not None and using.absolute() == ident.config:
            raise UsageError(f"{name} is the identity of the flctl config in use ({using}); use --force to remove it")
    return ident


def prepare_removal(
    out: Path,
    name: str,
    *,
    role: Role | None = None,
    prefix: str = "fl",
    force: bool = False,
    using: Path | None = None,
) -> FleetChange:
    """The first step of a removal with the broker at hand: check it is allowed (as `remove_node`), revoke
    `name`'s certificate (with client certificates) and replace its password by a one-time one, returned
    in `FleetChange.password`. After a reload `name`'s own connections are refused and only this
    password logs in as `name`: to close a certificate login the reload leaves open, and to delete what
    `name` left retained, before `remove_node` takes the line away. Call under `deployment_lock`."""
    dep = open_deployment(out, prefix)
    ident = check_removal(dep, name, role, force=force, using=using)
    crl, revoked = _revoke(dep, _load_ca(dep), _serial_of(ident)) if dep.client_certs else (None, [])
    password = secrets.token_urlsafe(24)
    passwd = passwd_set(dep.passwd.read_text(), name, hash_password(password))
    if crl is not None:
        write_atomic(dep.crl, crl, PUBLIC)
    write_atomic(dep.passwd, passwd, SECRET)
    return FleetChange("prepare", name, ident.role, dep, ident.config, revoked, password=password)


def remove_node(
    out: Path,
    name: str,
    *,
    role: Role | None = None,
    prefix: str = "fl",
    force: bool = False,
    using: Path | None = None,
) -> FleetChange:
    """`name`'s password line, ACL block and files gone (its certificate revoked). Refuses, unless
    `force`, to remove the last aggregator or admin, or the admin whose config is `using`. Call under
    `deployment_lock`."""
    dep = open_deployment(out, prefix)
    ident = check_removal(dep, name, role, force=force, using=using)
    crl: bytes | None = None
    revoked: list[int] = []
    if dep.client_certs:
        crl, revoked = _revoke(dep, _load_ca(dep), _serial_of(ident))
    passwd = passwd_remove(dep.passwd.read_text(), name)
    acl = acl_remove(dep.acl.read_text(), name)
    if crl is not None:
        write_atomic(dep.crl, crl, PUBLIC)
    write_atomic(dep.passwd, passwd, SECRET)
    write_atomic(dep.acl, acl, SECRET)
    # Deleted, not moved aside: they are credentials of an identity that no longer exists.
    if ident.own_folder:
        shutil.rmtree(ident.config.parent)
    else:
        for file in ident.files():
            file.unlink()
    return FleetChange("remove", name, ident.role, dep, None, revoked)

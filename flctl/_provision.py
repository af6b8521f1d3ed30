"""`flctl broker init`: everything a secured deployment needs, in one folder (docs/security.md).

    DIR/broker/mosquitto.conf   allow_anonymous false, password_file, acl_file, use_username_as_clientid,
                                a TLS listener on --port and a plain listener on 127.0.0.1:--plain-port
    DIR/broker/passwd           written by `mosquitto_passwd -b` (never hashed here)
    DIR/broker/acl              per role, keyed on the username
    DIR/broker/ca.crt, server.crt, server.key
    DIR/ca/ca.key               the CA key: keep it offline
    DIR/nodes/<node>/node.yaml, ca.crt [, <node>.crt, <node>.key with --client-certs]
    DIR/admin/flctl.yaml, ca.crt    the admin (job publisher); more admins: DIR/admin/<name>.yaml

Secrets (keys, passwd, node configs) are 0600, folders 0700. No secret is printed or logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker import BrokerAddress, NodeConfig, NodeTls
from broker.mosquitto import BrokerConfig, TlsListener, render_config
from flctl._errors import InputError, UsageError
from schemas import Topics, check_name

__all__ = ["Provisioned", "provision", "render_acl"]

DEFAULT_TLS_PORT = 8883
DEFAULT_PLAIN_PORT = 1883
CA_DAYS = 3650
LEAF_DAYS = 730
_LAYOUT = ("broker", "ca", "nodes", "admin")
Role = Literal["edge", "aggregator", "admin"]
_SECRET = 0o600
_PUBLIC = 0o644
_DIR = 0o700


@dataclass(frozen=True)
class Provisioned:
    """What `provision` wrote: where, for whom, and the broker's settings (no secrets)."""

    out: Path
    broker_config: BrokerConfig
    roles: Mapping[str, str]  # identity -> edge | aggregator | admin
    configs: dict[str, Path] = field(default_factory=dict)  # identity -> its node.yaml / flctl.yaml

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


# -- the ACL -------------------------------------------------------------------------------------


def render_acl(aggregators: Iterable[str], admins: Iterable[str], prefix: str = "fl") -> str:
    """The ACL file: admins write specs and read statuses, aggregators everything under the prefix, each
    node (any user: `pattern`) only its own updates, worker status, node status, acks and sync topic."""
    Topics(prefix)
    p = prefix
    jobs = f"{p}/federatedlearningjobs"
    lines = [
        "# ACL for the federated-learning broker (written by `flctl broker init`). Keyed on the username;",
        "# use_username_as_clientid is on, so the client id is the username too. Reloaded on SIGHUP.",
        "# No `topic` line comes before the first `user` line: anonymous clients get nothing.",
        "",
    ]
    for admin in admins:
        lines += [
            f"# {admin}: the job publisher (flctl): writes resource specs, reads statuses.",
            f"user {admin}",
            f"topic readwrite {p}/+/+/spec",
            f"topic read {p}/+/+/status",
            f"topic read {p}/nodes/+/status",
            "",
        ]
    for agg in aggregators:
        lines += [
            f"# {agg}: controller and aggregator: reads updates, writes plans, global models and statuses.",
            f"user {agg}",
            f"topic readwrite {p}/#",
            "topic read $SYS/#",
            "",
        ]
    lines += [
        "# Every user (edges, and harmlessly the users above): only its own topics.",
        f"pattern write {jobs}/+/rounds/+/updates/%u/#",
        f"pattern write {jobs}/+/workers/%u/status",
        f"pattern read {jobs}/+/workers/%u/status",
        f"pattern write {p}/nodes/%u/status",
        f"pattern read {p}/nodes/%u/status",
        f"pattern read {jobs}/+/plan",
        f"pattern read {jobs}/+/rounds/+/global/#",
        f"pattern read {jobs}/+/rounds/+/acks/%u",
        f"pattern readwrite {p}/clients/%u/#",
    ]
    return "\n".join(lines) + "\n"


# -- certificates ----------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqtt-fl-edge"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _make_ca(label: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    name = _name(f"mqtt-fl-edge CA {label}")
    cert = (
        _builder(name, name, key, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    *,
    server_names: Sequence[str] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    builder = (
        _builder(_name(cn), ca_cert.subject, key, LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# -- files ---------------------------------------------------------------------------------------


def _mkdir(path: Path) -> Path:
    path.mkdir(mode=_DIR, parents=True, exist_ok=True)
    os.chmod(path, _DIR)
    return path


def _write(path: Path, data: bytes | str, mode: int) -> Path:
    """Create `path` with `mode` from the start (no moment with wider permissions), then write it."""
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, raw)
    finally:
        os.close(fd)
    return path


def find_mosquitto_passwd() -> str | None:
    env = os.environ.get("MOSQUITTO_PASSWD_BIN")
    if env:
        return env
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    return "/usr/bin/mosquitto_passwd" if os.access("/usr/bin/mosquitto_passwd", os.X_OK) else None


def _write_passwd(path: Path, passwords: dict[str, str]) -> None:
    binary = find_mosquitto_passwd()
    if binary is None:
        raise InputError(
            "no mosquitto_passwd: install mosquitto (apt-get install mosquitto) or set MOSQUITTO_PASSWD_BIN"
        )
    _write(path, b"", _SECRET)  # 0600 before a hash is in it; mosquitto_passwd keeps the mode
    for user, password in passwords.items():
        # -b puts the password on mosquitto_passwd's command line for the moment it runs (the plan's
        # choice: the file format is mosquitto's own). Its output is discarded unseen.
        result = subprocess.run(
            [binary, "-b", str(path), user, password],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise InputError(f"mosquitto_passwd failed for user {user} (exit code {result.returncode})")
    os.chmod(path, _SECRET)


# -- provisioning --------------------------------------------------------------------------------


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


def _check_arguments(
    nodes: Sequence[str],
    aggregators: Sequence[str] | None,
    admins: Sequence[str],
    *,
    port: int,
    plain_port: int,
    prefix: str,
) -> tuple[list[str], list[str], list[str]]:
    """Node, aggregator and admin names, checked; UsageError for anything that cannot work."""
    node_names = _names(nodes, "node")
    if not node_names:
        raise UsageError("--nodes needs at least one node name")
    admin_names = _names(admins, "admin")
    if not admin_names:
        raise UsageError("--admin needs a name")
    agg_names = (
        _names(aggregators, "aggregator")
        if aggregators is not None
        else [n for n in node_names if n.startswith("cloud")]
    )
    unknown = [a for a in agg_names if a not in node_names]
    if unknown:
        raise UsageError(f"--aggregators {', '.join(unknown)}: not in --nodes")
    clash = [a for a in admin_names if a in node_names]
    if clash:
        raise UsageError(f"--admin {', '.join(clash)} is also a node name: identities must be distinct")
    if port == plain_port:
        raise UsageError(f"--port and --plain-port are both {port}")
    for value, flag in ((port, "--port"), (plain_port, "--plain-port")):
        if not 1 <= value <= 65535:
            raise UsageError(f"{flag} {value} is not in 1..65535")
    try:
        Topics(prefix)
    except ValueError as exc:
        raise UsageError(f"--prefix {prefix!r}: {exc}") from exc

    return node_names, agg_names, admin_names


def provision(
    out: Path,
    nodes: Sequence[str],
    *,
    aggregators: Sequence[str] | None = None,
    admins: Sequence[str] = ("admin",),
    hostnames: Sequence[str] = (),
    port: int = DEFAULT_TLS_PORT,
    plain_port: int = DEFAULT_PLAIN_PORT,
    bind: str | None = None,
    client_certs: bool = False,
    broker_dir: Path | None = None,
    prefix: str = "fl",
    run_as_root: bool | None = None,
    force: bool = False,
) -> Provisioned:
    """Write the deployment's broker files, CA, certificates, passwords and node configs under `out`.

    `broker_dir` is where DIR/broker will be on the broker host (mosquitto.conf names its files there;
    default: where it is written). Raises UsageError for bad arguments, InputError when `out` exists
    (without `force`) or mosquitto_passwd is missing.
    """
    node_names, agg_names, admin_names = _check_arguments(
        nodes, aggregators, admins, port=port, plain_port=plain_port, prefix=prefix
    )
    out = _prepare_out(out, force=force)
    _mkdir(out)
    broker_out = _mkdir(out / "broker")
    _mkdir(broker_out / "data")
    ca_dir = _mkdir(out / "ca")
    nodes_dir = _mkdir(out / "nodes")
    admin_dir = _mkdir(out / "admin")
    installed = (broker_dir or broker_out).absolute()

    roles: dict[str, Role] = {n: ("aggregator" if n in agg_names else "edge") for n in node_names}
    roles.update({a: "admin" for a in admin_names})
    passwords = {name: secrets.token_urlsafe(24) for name in roles}

    # CA, server certificate
    ca_key, ca_cert = _make_ca(out.name or "fl")
    ca_pem = _cert_pem(ca_cert)
    _write(ca_dir / "ca.key", _key_pem(ca_key), _SECRET)
    _write(ca_dir / "ca.crt", ca_pem, _PUBLIC)
    server_names = list(dict.fromkeys([*hostnames, "localhost", "127.0.0.1"]))
    server_key, server_cert = _make_leaf(ca_key, ca_cert, server_names[0], server_names=server_names)
    _write(broker_out / "ca.crt", ca_pem, _PUBLIC)
    _write(broker_out / "server.crt", _cert_pem(server_cert), _PUBLIC)
    _write(broker_out / "server.key", _key_pem(server_key), _SECRET)

    # passwords and ACL
    _write_passwd(broker_out / "passwd", passwords)
    _write(broker_out / "acl", render_acl(agg_names, admin_names, prefix), _SECRET)

    cfg = BrokerConfig(
        plain_port,
        bind="127.0.0.1",
        data_dir=installed / "data",
        allow_anonymous=False,
        password_file=installed / "passwd",
        acl_file=installed / "acl",
        use_username_as_clientid=True,
        run_as_root=run_as_root,
        tls=TlsListener(
            port,
            bind=bind,
            cafile=installed / "ca.crt",
            certfile=installed / "server.crt",
            keyfile=installed / "server.key",
            require_certificate=client_certs,
            use_identity_as_username=client_certs,
        ),
    )
    _write(broker_out / "mosquitto.conf", render_config(cfg), _SECRET)

    # one config per identity
    address = BrokerAddress(host=hostnames[0] if hostnames else "localhost", port=port)
    configs: dict[str, Path] = {}
    for name, role in roles.items():
        if role == "admin":
            folder = admin_dir
            file = folder / ("flctl.yaml" if name == admin_names[0] else f"{name}.yaml")
        else:
            folder = _mkdir(nodes_dir / name)
            file = folder / "node.yaml"
        _write(folder / "ca.crt", ca_pem, _PUBLIC)
        tls = NodeTls(ca="ca.crt")
        if client_certs:
            key, cert = _make_leaf(ca_key, ca_cert, name)
            _write(folder / f"{name}.key", _key_pem(key), _SECRET)
            _write(folder / f"{name}.crt", _cert_pem(cert), _PUBLIC)
            tls = NodeTls(ca="ca.crt", cert=f"{name}.crt", key=f"{name}.key")
        node_cfg = NodeConfig(
            node=name,
            role=role,
            broker=address,
            username=name,
            password=passwords[name],
            tls=tls,
        )
        header = f"# {name} ({role}): connection settings written by `flctl broker init`. Secret: keep it 0600.\n"
        configs[name] = _write(file, header + node_cfg.to_yaml(), _SECRET)
    return Provisioned(out=out, broker_config=cfg, roles=roles, configs=configs)

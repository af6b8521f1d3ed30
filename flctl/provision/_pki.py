"""The deployment's PKI: one CA (ECDSA P-256) and the server and client certificates it issues."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 730


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate, PEM-encoded (the key unencrypted: files are 0600)."""

    key_pem: bytes = field(repr=False)
    cert_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqtt-fl-edge"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs) only; a leaf signs and agrees keys (ECDHE) only."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
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


def _alt_names(server_names: Sequence[str]) -> x509.SubjectAlternativeName:
    alt: list[x509.GeneralName] = []
    for name in server_names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(alt)


class CertificateAuthority:
    """A new self-signed CA (`label` goes into its name) that issues the deployment's certificates."""

    def __init__(self, label: str) -> None:
        self._key = _key()
        name = _name(f"mqtt-fl-edge CA {label}")
        self._cert = (
            _builder(name, name, self._key, CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self._cert)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self._key)

    def issue(self, cn: str, *, server_names: Sequence[str] = ()) -> Issued:
        """A leaf for `cn`: a server certificate for `server_names` (DNS names or IP addresses) when given,
        else a client certificate (mutual TLS: the broker takes the CN as the username)."""
        key = _key()
        builder = (
            _builder(_name(cn), self._cert.subject, key, LEAF_DAYS)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .add_extension(_key_usage(ca=False), critical=True)
        )
        if server_names:
            builder = builder.add_extension(_alt_names(server_names), critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return Issued(_key_pem(key), _cert_pem(builder.sign(self._key, hashes.SHA256())))

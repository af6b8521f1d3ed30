"""The deployment's PKI: one CA (ECDSA P-256), the server and client certificates it issues, and its
certificate revocation list (`flctl node rotate/remove` revoke a node's client certificate there)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
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


@dataclass(frozen=True)
class Revocations:
    """What a CRL says: revoked serial numbers (with the time of revocation) and the CRL's own number."""

    revoked: Mapping[int, dt.datetime]
    number: int


class CertificateAuthority:
    """A new self-signed CA (`label` goes into its name) that issues the deployment's certificates;
    `load` reads an existing one (DIR/ca/ca.key and ca.crt) to issue more."""

    def __init__(self, label: str) -> None:
        self._key = _key()
        name = _name(f"mqtt-fl-edge CA {label}")
        self._cert = (
            _builder(name, name, self._key, CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    @classmethod
    def load(cls, key_pem: bytes, cert_pem: bytes) -> CertificateAuthority:
        """The CA whose key and certificate these are; ValueError when they are not a P-256 key and the
        self-signed CA certificate of that key."""
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC private key")
        cert = x509.load_pem_x509_certificate(cert_pem)
        public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
            raise ValueError("the CA certificate is not the certificate of the CA key")
        ca = cls.__new__(cls)
        ca._key = key
        ca._cert = cert
        return ca

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self._cert)

    def revocations(self, crl_pem: bytes | None) -> Revocations:
        """What the CRL `crl_pem` revokes (nothing for None); ValueError when this CA did not sign it."""
        if crl_pem is None:
            return Revocations({}, 0)
        crl = x509.load_pem_x509_crl(crl_pem)
        public = self._key.public_key()
        if crl.issuer != self._cert.subject or not crl.is_signature_valid(public):
            raise ValueError("the CRL is not signed by this deployment's CA")
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            number = 0
        return Revocations({entry.serial_number: entry.revocation_date_utc for entry in crl}, number)

    def crl(self, revoked: Mapping[int, dt.datetime], number: int) -> bytes:
        """A CRL (PEM) revoking these serial numbers. Its next update is the CA's own expiry: OpenSSL
        refuses every client once a CRL it checks has expired, and nothing here re-signs it on a timer."""
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(self._cert.not_valid_after_utc)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        for serial, when in sorted(revoked.items()):
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

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

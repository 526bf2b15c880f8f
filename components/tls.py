"""X.509 for pgha:tls with `cryptography`: the cluster CA, host and client certificates (pure).

Text in, text out: keys and certificates are PEM strings, times are passed in (``now``), nothing
touches a file or a host. Keys are ECDSA P-256, which etcd (Go), Patroni (Python's ssl),
PostgreSQL/libpq and HAProxy (OpenSSL) all accept, and which is fast to generate in a preview's
provider. Private keys are PKCS#8 PEM, unencrypted: they live only in Pulumi secrets and in 0600
files of the service that uses them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_E = TypeVar("_E", bound=x509.ExtensionType)
# A certificate starts to be valid a little before it was made: hosts' clocks differ.
BACKDATE = dt.timedelta(minutes=5)


class TlsError(ValueError):
    """A key or certificate that cannot be used (unreadable, wrong kind, not matching)."""


@dataclass(frozen=True)
class CertificateRequest:
    """What one certificate must say: its subject, names, usage and lifetime."""

    common_name: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    server: bool = False  # extendedKeyUsage serverAuth
    client: bool = False  # extendedKeyUsage clientAuth
    validity_days: int = 365


@dataclass(frozen=True)
class KeyAndCertificate:
    key_pem: str
    cert_pem: str


@dataclass(frozen=True)
class CertificateInfo:
    """What a certificate says, read back from its PEM."""

    common_name: str
    issuer: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    server: bool
    client: bool
    is_ca: bool
    fingerprint: str  # SHA-256, hex pairs joined by ':' (as `openssl x509 -fingerprint -sha256`)

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def load_key(key_pem: str) -> CertificateIssuerPrivateKeyTypes:
    """A private key that can sign (EC, RSA, Ed25519...; a user's CA need not be EC)."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as err:
        # Never the key's text in the message: it may end up in a preview's output.
        raise TlsError(f"not a readable unencrypted PEM private key ({type(err).__name__})") from None
    if not hasattr(key, "sign"):
        raise TlsError(f"a {type(key).__name__} cannot sign certificates")
    return key  # type: ignore[return-value]


def load_certificate(cert_pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as err:
        raise TlsError(f"not a PEM certificate: {err}") from None


def load_certificates(pem: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (a CA file may hold the old and the new CA)."""
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as err:
        raise TlsError(f"not a PEM certificate bundle: {err}") from None
    return certs


def _signing_hash(key: object) -> hashes.SHA256 | None:
    # Ed25519/Ed448 keys sign without a separate hash; everything else with SHA-256.
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _public_bytes(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def create_ca(common_name: str, validity_days: int, now: dt.datetime | None = None) -> KeyAndCertificate:
    """A new CA: its key and a self-signed certificate that may only sign end-entity certificates."""
    now = now or utcnow()
    key_pem = new_key_pem()
    key = load_key(key_pem)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, _signing_hash(key))
    )
    return KeyAndCertificate(key_pem, cert.public_bytes(serialization.Encoding.PEM).decode())


def issue(ca: KeyAndCertificate, request: CertificateRequest, now: dt.datetime | None = None,
          key_pem: str | None = None) -> KeyAndCertificate:
    """A certificate for `request`, signed by `ca`, with a new key (or `key_pem`).

    It never outlives the CA: its end is the CA's end when that comes first.
    """
    if not (request.server or request.client):
        raise TlsError(f"{request.common_name}: a certificate must be for a server, a client or both")
    now = now or utcnow()
    ca_key = load_key(ca.key_pem)
    ca_cert = load_certificate(ca.cert_pem)
    check_ca(ca.cert_pem, ca.key_pem)
    key_pem = key_pem or new_key_pem()
    key = load_key(key_pem)
    usages = [oid for oid, wanted in ((ExtendedKeyUsageOID.SERVER_AUTH, request.server),
                                      (ExtendedKeyUsageOID.CLIENT_AUTH, request.client)) if wanted]
    not_after = min(now + dt.timedelta(days=request.validity_days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, ca_cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in request.dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in request.ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    elif request.server:
        raise TlsError(f"{request.common_name}: a server certificate needs at least one name or address")
    cert = builder.sign(ca_key, _signing_hash(ca_key))
    return KeyAndCertificate(key_pem, cert.public_bytes(serialization.Encoding.PEM).decode())


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def inspect(cert_pem: str) -> CertificateInfo:
    cert = load_certificate(cert_pem)
    san = _extension(cert, x509.SubjectAlternativeName)
    eku = _extension(cert, x509.ExtendedKeyUsage)
    basic = _extension(cert, x509.BasicConstraints)
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateInfo(
        common_name=str(common[0].value) if common else "",
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:x}",
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=tuple(san.get_values_for_type(x509.DNSName)) if san else (),
        ip_addresses=tuple(str(a) for a in san.get_values_for_type(x509.IPAddress)) if san else (),
        server=eku is not None and ExtendedKeyUsageOID.SERVER_AUTH in eku,
        client=eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH in eku,
        is_ca=bool(basic is not None and basic.ca),
        fingerprint=fingerprint(cert_pem),
    )


def inspect_bundle(pem: str) -> list[CertificateInfo]:
    """What each certificate of a PEM bundle says, in order."""
    return [inspect(c.public_bytes(serialization.Encoding.PEM).decode()) for c in load_certificates(pem)]


def fingerprint(cert_pem: str) -> str:
    digest = load_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def issued_by(cert_pem: str, ca_pem: str) -> bool:
    """Whether `ca_pem`'s key signed `cert_pem` (names and signature, not dates)."""
    cert, ca = load_certificate(cert_pem), load_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def issued_by_any(cert_pem: str, bundle_pem: str) -> bool:
    """Whether one of the CAs of a bundle signed `cert_pem` (a CA file during a rotation)."""
    return any(issued_by(cert_pem, c.public_bytes(serialization.Encoding.PEM).decode())
               for c in load_certificates(bundle_pem))


def key_matches(cert_pem: str, key_pem: str) -> bool:
    return _public_bytes(load_key(key_pem)) == load_certificate(cert_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_ca(cert_pem: str, key_pem: str | None = None) -> None:
    """Raise TlsError unless `cert_pem` is a CA certificate that may sign (and `key_pem` its key)."""
    cert = load_certificate(cert_pem)
    basic = _extension(cert, x509.BasicConstraints)
    if basic is None or not basic.ca:
        raise TlsError(f"{cert.subject.rfc4514_string()} is not a CA certificate (basicConstraints CA:TRUE)")
    usage = _extension(cert, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise TlsError(f"{cert.subject.rfc4514_string()} may not sign certificates (keyUsage keyCertSign)")
    if key_pem is not None and not key_matches(cert_pem, key_pem):
        raise TlsError(f"the CA key is not the key of {cert.subject.rfc4514_string()}")


def verify(cert_pem: str, ca_bundle_pem: str, now: dt.datetime, *, server_name: str | None = None,
           client: bool = False) -> None:
    """Verify `cert_pem` against the CAs of `ca_bundle_pem` as a TLS peer would, at `now`: as a
    server for `server_name` (a host name or an IP address), or as a client. Raises TlsError."""
    from cryptography.x509 import verification as v

    store = v.Store(load_certificates(ca_bundle_pem))
    builder = v.PolicyBuilder().store(store).time(now)
    leaf = load_certificate(cert_pem)
    try:
        if server_name is not None:
            try:
                subject: v.Subject = v.IPAddress(ipaddress.ip_address(server_name))
            except ValueError:
                subject = v.DNSName(server_name)
            builder.build_server_verifier(subject).verify(leaf, [])
        if client:
            builder.build_client_verifier().verify(leaf, [])
    except v.VerificationError as err:
        raise TlsError(f"{inspect(cert_pem).common_name}: {err}") from None


def still_valid(bundle_pem: str, now: dt.datetime) -> str:
    """The certificates of a bundle that have not expired at `now`, as a bundle ('' when none)."""
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in load_certificates(bundle_pem)
                   if c.not_valid_after_utc > now)


def bundle(*pems: str) -> str:
    """CA certificates as one PEM bundle, each once, in order (the trust file during a CA rotation)."""
    seen: list[str] = []
    for pem in pems:
        for cert in load_certificates(pem):
            text = cert.public_bytes(serialization.Encoding.PEM).decode()
            if text not in seen:
                seen.append(text)
    return "".join(seen)

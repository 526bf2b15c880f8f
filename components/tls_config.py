"""The TLS part of the config model: ``pgha:tls`` and the secret ``pgha:tlsCaKey`` (pure).

TLS is on unless the stack says ``pgha:tls: {enabled: false}``. Where the certificates come from:

- ``source: generated`` (default): the stack makes a cluster CA (its key kept as a Pulumi secret)
  and issues every host certificate with it.
- ``source: ca``: your CA: ``caCertFile`` (a PEM file on the machine running pulumi) and its key
  as the secret ``pgha:tlsCaKey``; the stack issues the host certificates with it.
- ``source: certificates``: ready-made certificates per host (``certificates.<host>.certFile`` /
  ``keyFile``) signed by ``caCertFile``; the stack issues nothing and only checks them.

An existing plaintext stack is treated like a new one: without ``pgha:tls`` it gets TLS at its
next ``up`` (the migration the issue asks for), and its preview says so (see
``components/tls_plan.py: transition``). A stack that wants to move later sets
``enabled: false`` before upgrading pgha, and removes it when it is ready.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from components.validation import (
    ABS_PATH_RE,
    DNS_NAME_RE,
    Problems,
    as_bool,
    as_int,
    as_list,
    as_mapping,
    as_str,
    check_unknown_keys,
)

TLS_KEYS = ("enabled", "source", "caCertFile", "caGeneration", "certificates", "clientCertificate",
            "validityDays", "renewBeforeDays", "caValidityDays", "restApiVerifyClient", "replicationSslMode",
            "serverNames")
CA_KEY_SECRET = "tlsCaKey"
SOURCES = ("generated", "ca", "certificates")
VERIFY_CLIENT = ("optional", "required")
SSL_MODES = ("verify-full", "verify-ca")
# Browsers cap server certificates at 398 days; internal services are not bound by that, but a
# certificate that outlives its CA cannot be issued, so host certificates stay well below it.
MAX_VALIDITY_DAYS = 3650
MAX_CA_VALIDITY_DAYS = 36500
# PostgreSQL parameters pgha:tls sets on every node.
SSL_PARAMETERS = ("ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file")

if TYPE_CHECKING:
    from components.config import Host


@dataclass(frozen=True)
class HostCertificateFiles:
    """A ready-made certificate and its key, PEM files on the machine running pulumi."""

    cert_file: str
    key_file: str


@dataclass(frozen=True)
class TlsSettings:
    enabled: bool = True
    # Whether the stack set pgha:tls.enabled itself (False: the default applies).
    explicit: bool = False
    source: str = "generated"
    ca_cert_file: str | None = None
    # source "certificates": host name -> its files, and pgha's own client certificate (its
    # calls to etcd and Patroni from the machine running pulumi).
    certificates: dict[str, HostCertificateFiles] = field(default_factory=dict)
    client_certificate: HostCertificateFiles | None = None
    validity_days: int = 365
    renew_before_days: int = 30
    ca_validity_days: int = 3650
    # source generated: raising it rotates the CA now (its name carries the generation).
    ca_generation: int = 1
    # Patroni's restapi.verify_client: "optional" checks a client certificate on unsafe
    # requests (PUT/POST/PATCH/DELETE) only, so HAProxy's GET checks need none.
    restapi_verify_client: str = "optional"
    # libpq sslmode for replication and pg_rewind between members.
    replication_sslmode: str = "verify-full"
    # More names for PostgreSQL's certificates: a DNS name or virtual IP clients dial.
    server_names: tuple[str, ...] = ()

    @property
    def issues_certificates(self) -> bool:
        """Whether the stack issues host certificates (with its own CA or the user's)."""
        return self.enabled and self.source in ("generated", "ca")


def certificate_hosts(hosts: tuple[Host, ...], verify_client: str) -> tuple[Host, ...]:
    """The hosts that need a certificate of their own: etcd and Patroni hosts (servers), and the
    balancers and the repository host when Patroni requires a client certificate on every request
    (HAProxy's checks, the backup script's look for a healthy standby)."""
    roles = {"etcd", "patroni", *(("haproxy", "backup") if verify_client == "required" else ())}
    return tuple(h for h in hosts if roles & set(h.roles))


def load_tls(problems: Problems, raw: dict[str, Any], secret_keys: set[str],
             hosts: tuple[Host, ...]) -> TlsSettings:
    """``pgha:tls`` validated against the hosts."""
    if CA_KEY_SECRET in raw and CA_KEY_SECRET not in secret_keys:
        problems.add(CA_KEY_SECRET, f"must be a secret: pulumi config set --secret pgha:{CA_KEY_SECRET} "
                                    "< ca.key")
    value = raw.get("tls")
    if isinstance(value, bool):
        problems.add("tls", f"must be an object: write `pgha:tls: {{enabled: {str(value).lower()}}}`")
        value = None
    data = as_mapping(problems, "tls", value)
    check_unknown_keys(problems, "tls", data, TLS_KEYS)
    enabled = as_bool(problems, "tls.enabled", data.get("enabled"), True)
    source = as_str(problems, "tls.source", data.get("source"), "generated")
    if source not in SOURCES:
        problems.add("tls.source", f"{source!r} is not one of {', '.join(SOURCES)} (generated: the stack "
                     "makes a CA; ca: your CA's caCertFile and the secret pgha:tlsCaKey; certificates: "
                     "ready-made certificates per host)")

    ca_cert_file = data.get("caCertFile")
    if ca_cert_file is not None:
        ca_cert_file = as_str(problems, "tls.caCertFile", ca_cert_file, pattern=ABS_PATH_RE,
                              what="absolute path of a PEM file")
        if source == "generated":
            problems.add("tls.caCertFile", "is only for source ca or certificates; with source generated "
                         "the stack makes its own CA")
    elif source in ("ca", "certificates"):
        problems.add("tls.caCertFile", f"is required with source {source}: the CA certificate (PEM) "
                     "every host will trust")

    has_key = bool(raw.get(CA_KEY_SECRET))
    if source == "ca" and not has_key:
        problems.add(CA_KEY_SECRET, f"missing secret (your CA's private key, PEM): pulumi config set "
                     f"--secret pgha:{CA_KEY_SECRET} < ca.key")
    if source != "ca" and has_key:
        problems.add(CA_KEY_SECRET, f"is set but pgha:tls.source is {source}, not ca")

    verify_client = as_str(problems, "tls.restApiVerifyClient", data.get("restApiVerifyClient"), "optional")
    if verify_client not in VERIFY_CLIENT:
        problems.add("tls.restApiVerifyClient", f"{verify_client!r} is not one of {', '.join(VERIFY_CLIENT)} "
                     "(optional: a client certificate for unsafe requests; required: for every request)")
    certificates = _load_certificates(
        problems, data.get("certificates"), source, tuple(h.name for h in hosts),
        tuple(h.name for h in certificate_hosts(hosts, verify_client)))
    client = _load_client_certificate(problems, data.get("clientCertificate"), source)

    issued = source in ("generated", "ca")
    validity = as_int(problems, "tls.validityDays", data.get("validityDays"), 365, minimum=2,
                      maximum=MAX_VALIDITY_DAYS)
    if not issued and "validityDays" in data:
        problems.add("tls.validityDays", "has no meaning with source certificates: your certificates "
                     "carry their own validity")
    renew = as_int(problems, "tls.renewBeforeDays", data.get("renewBeforeDays"),
                   max(1, min(30, validity // 3)), minimum=1)
    if issued and renew >= validity:
        problems.add("tls.renewBeforeDays", f"must be less than tls.validityDays ({validity}), or every "
                     "certificate is due for renewal as soon as it is issued")
    ca_validity = as_int(problems, "tls.caValidityDays", data.get("caValidityDays"), 3650, minimum=2,
                         maximum=MAX_CA_VALIDITY_DAYS)
    if source != "generated" and "caValidityDays" in data:
        problems.add("tls.caValidityDays", "is only for source generated (the stack's own CA)")
    elif source == "generated" and ca_validity < 2 * validity:
        problems.add("tls.caValidityDays", f"must be at least twice tls.validityDays ({2 * validity}): a "
                     "host certificate cannot outlive its CA, and renewals need the CA to last")

    generation = as_int(problems, "tls.caGeneration", data.get("caGeneration"), 1, minimum=1)
    if source != "generated" and "caGeneration" in data:
        problems.add("tls.caGeneration", "is only for source generated: rotate your own CA by putting the "
                     "new one first in tls.caCertFile")

    sslmode = as_str(problems, "tls.replicationSslMode", data.get("replicationSslMode"), "verify-full")
    if sslmode not in SSL_MODES:
        problems.add("tls.replicationSslMode", f"{sslmode!r} is not one of {', '.join(SSL_MODES)} "
                     "(weaker modes do not check the server)")
    server_names = _load_server_names(problems, data.get("serverNames"), source)
    parameters = as_mapping(problems, "postgresql", raw.get("postgresql")).get("parameters")
    if enabled and isinstance(parameters, dict):
        for name in sorted(set(parameters) & set(SSL_PARAMETERS)):
            problems.add(f"postgresql.parameters.{name}", "is set by pgha:tls (the host certificate and the "
                         "cluster CA); remove it, or turn TLS off with pgha:tls.enabled: false")
    return TlsSettings(
        enabled=enabled, explicit="enabled" in data, source=source, ca_cert_file=ca_cert_file,
        certificates=certificates, client_certificate=client, validity_days=validity, renew_before_days=renew,
        ca_validity_days=ca_validity, ca_generation=generation, restapi_verify_client=verify_client,
        replication_sslmode=sslmode,
        server_names=server_names,
    )


def _load_server_names(problems: Problems, value: Any, source: str) -> tuple[str, ...]:
    names: list[str] = []
    for i, name in enumerate(as_list(problems, "tls.serverNames", value)):
        path = f"tls.serverNames[{i}]"
        text = name if isinstance(name, str) else ""
        try:
            ip = ipaddress.ip_address(text)
            names.append(str(ip))
            continue
        except ValueError:
            pass
        if not re.fullmatch(DNS_NAME_RE, text):
            problems.add(path, f"{name!r} is neither a DNS name nor an IP address")
        elif text.lower() not in names:
            names.append(text.lower())
    if names and source == "certificates":
        problems.add("tls.serverNames", "is for certificates the stack issues: with source certificates, "
                     "put the names in your certificates")
    return tuple(names)


def _files(problems: Problems, path: str, entry: Any) -> HostCertificateFiles:
    item = as_mapping(problems, path, entry)
    check_unknown_keys(problems, path, item, ("certFile", "keyFile"))
    return HostCertificateFiles(
        cert_file=as_str(problems, f"{path}.certFile", item.get("certFile"), pattern=ABS_PATH_RE,
                         what="absolute path of a PEM file"),
        key_file=as_str(problems, f"{path}.keyFile", item.get("keyFile"), pattern=ABS_PATH_RE,
                        what="absolute path of a PEM file"),
    )


def _load_client_certificate(problems: Problems, value: Any, source: str) -> HostCertificateFiles | None:
    if value is None:
        if source == "certificates":
            problems.add("tls.clientCertificate", "is required with source certificates: pgha's own "
                         "client certificate for etcd and Patroni ({certFile, keyFile}, clientAuth)")
        return None
    if source != "certificates":
        problems.add("tls.clientCertificate", f"is only for source certificates (source is {source}): "
                     "the stack issues pgha's client certificate itself")
        return None
    return _files(problems, "tls.clientCertificate", value)


def _load_certificates(problems: Problems, value: Any, source: str, host_names: tuple[str, ...],
                       tls_host_names: tuple[str, ...]) -> dict[str, HostCertificateFiles]:
    data = as_mapping(problems, "tls.certificates", value)
    if data and source != "certificates":
        problems.add("tls.certificates", f"is only for source certificates (source is {source}): the "
                     "stack issues the host certificates itself")
        return {}
    files: dict[str, HostCertificateFiles] = {}
    for name, entry in data.items():
        path = f"tls.certificates.{name}"
        if name not in host_names:
            problems.add(path, f"{name!r} is not a host in pgha:hosts ({', '.join(host_names) or 'none'})")
            continue
        files[name] = _files(problems, path, entry)
    if source == "certificates":
        missing = [n for n in tls_host_names if n not in data]
        if missing:
            problems.add("tls.certificates", f"no certificate for {', '.join(missing)}: with source "
                         "certificates every etcd and Patroni host needs "
                         "certificates.<host>: {certFile, keyFile}")
    return files

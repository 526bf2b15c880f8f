"""ClusterCertificates: pgha:tls's key material as stack resources (the CA and per-host certificates).

Three sources (components/tls_config.py):

- generated: a `TlsCertificateAuthority` and one `TlsCertificate` per planned certificate;
- ca: the user's CA certificate (pgha:tls.caCertFile, read on this machine) and key (the secret
  pgha:tlsCaKey) sign the `TlsCertificate`s; checked here, before any resource is registered;
- certificates: ready-made files per host, checked here (key, chain, names, usage, expiry);
  nothing is issued.

What the rest of the program uses: `trust_pem` (the CA bundle every host and client trusts),
`certificates[name]` (a certificate and its secret key, per components/tls_plan.py's names) and
`expiry` (certificate name -> not_after, a stack output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from components import specs, tls
from components.command_connection import FileReader, unknown_secret
from components.config import ClusterConfig, Host
from components.resources import TlsCertificate, TlsCertificateAuthority, TlsFiles, TlsTrust
from components.tls_config import CA_KEY_SECRET, HostCertificateFiles
from components.tls_plan import (
    CLIENT,
    TlsFileSet,
    ca_common_name,
    planned_certificates,
    supplied_certificate_problems,
    trust_targets,
)
from components.validation import ConfigError, key


@dataclass(frozen=True)
class IssuedCertificate:
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]  # secret
    not_after: pulumi.Output[str]


def _problem(path: str, message: str) -> pulumi.RunError:
    """A bad CA or certificate file: the preview fails naming the key, before any resource."""
    return pulumi.RunError(str(ConfigError([f"{key(path)}: {message}"])))


class ClusterCertificates(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: ClusterConfig, raw: dict[str, Any],
                 opts: pulumi.ResourceOptions | None = None, reader: FileReader | None = None) -> None:
        super().__init__("pgha:index:ClusterCertificates", name, None, opts)
        self.enabled = cfg.tls.enabled
        self.certificates: dict[str, IssuedCertificate] = {}
        self.trust_pem: pulumi.Output[str] | None = None
        self.authority: TlsCertificateAuthority | None = None
        self.trust: TlsTrust | None = None
        # Patroni's certificate files: a client certificate shown to Patroni waits for them.
        self.patroni_files: list[TlsFiles] = []
        self.expiry: dict[str, pulumi.Output[str]] = {}
        if not cfg.tls.enabled:
            self.register_outputs({})
            return
        reader = reader or FileReader(dry_run=pulumi.runtime.is_dry_run())
        child = pulumi.ResourceOptions(parent=self)
        source = cfg.tls.source
        unreadable: list[str] = []
        if source == "certificates":
            self._supplied(cfg, reader)
        else:
            if source == "generated":
                self.authority = TlsCertificateAuthority(f"{cfg.scope}-ca", {
                    "common_name": ca_common_name(cfg), "validity_days": cfg.tls.ca_validity_days,
                    "host_validity_days": cfg.tls.validity_days}, child)
                ca_cert, ca_key = self.authority.cert_pem, self.authority.key_pem
                self.trust_pem = self.authority.trust_pem
            else:
                ca_text = self._users_ca(cfg, raw, reader)
                if ca_text is None:
                    ca_cert, unreadable = unknown_secret(), ["ca_cert_pem", "ca_key_pem"]
                else:
                    ca_cert = pulumi.Output.from_input(ca_text)
                ca_key = pulumi.Output.secret(str(raw[CA_KEY_SECRET]))
                self.trust_pem = ca_cert
            for planned in planned_certificates(cfg).values():
                r = planned.request
                cert = TlsCertificate(f"{cfg.scope}-tls-{planned.name}", {
                    "name": planned.name, "common_name": r.common_name, "dns_names": list(r.dns_names),
                    "ip_addresses": list(r.ip_addresses), "server": r.server, "client": r.client,
                    "validity_days": r.validity_days, "renew_before_days": cfg.tls.renew_before_days,
                    "ca_cert_pem": ca_cert, "ca_key_pem": pulumi.Output.secret(ca_key),
                }, pulumi.ResourceOptions(parent=self, ignore_changes=unreadable))
                self.certificates[planned.name] = IssuedCertificate(cert.cert_pem, cert.key_pem,
                                                                    cert.not_after)
        self.expiry = {name: c.not_after for name, c in self.certificates.items()}
        if self.authority is not None:
            self.expiry = {"ca": self.authority.not_after, **self.expiry}
        self.register_outputs({"expiry": self.expiry})

    def certificate(self, host: str, purpose: str) -> IssuedCertificate:
        """`host`'s certificate for `purpose` (etcd, patroni, haproxy): its own per purpose when the
        stack issues them, the host's one ready-made certificate otherwise."""
        return self.certificates.get(f"{host}-{purpose}") or self.certificates[host]

    def client_tls(self) -> pulumi.Output[dict[str, str]]:
        """pgha's own TLS client identity, the `tls_client` input of every resource that calls
        etcd or Patroni (transport/tls_client.py): the trust bundle, pgha-client's certificate and
        its key; secret."""
        assert self.trust_pem is not None
        client = self.certificates[CLIENT]
        return pulumi.Output.secret(pulumi.Output.all(self.trust_pem, client.cert_pem, client.key_pem).apply(
            lambda v: {"ca_pem": v[0], "cert_pem": v[1], "key_pem": v[2]}))

    def distribute_trust(self, cfg: ClusterConfig, ssh_private_key: pulumi.Output[str] | None) -> TlsTrust:
        """The TlsTrust resource: a change of the trusted CAs reaches every host (etcd restarted
        one member at a time) before any certificate file is rewritten (components/providers/
        tls_trust.py). Every `deliver` depends on it."""
        assert self.trust_pem is not None
        hosts = {h.name: h for h in cfg.hosts}
        targets = [{"host": t.host, "service": t.service, "restart": t.restart,
                    "connection": specs.connection(hosts[t.host]), "path": t.file.path, "mode": t.file.mode,
                    "owner": t.file.owner, "group": t.file.group} for t in trust_targets(cfg)]
        props: dict[str, Any] = {
            "scope": cfg.scope, "source": cfg.tls.source, "trust_pem": self.trust_pem, "targets": targets,
            "etcd_members": dict(zip([h.name for h in cfg.with_role("etcd")], specs.etcd_client_urls(cfg),
                                     strict=True)),
            "tls_client": self.client_tls(),
        }
        if ssh_private_key is not None:
            props["ssh_private_key"] = ssh_private_key
        self.trust = TlsTrust(f"{cfg.scope}-tls-trust", props, pulumi.ResourceOptions(parent=self))
        return self.trust

    def client_certificate_after(self, files: TlsFileSet) -> list[pulumi.Resource]:
        """What a client certificate shown to Patroni (HAProxy's, the repository host's) waits
        for: every Patroni serving its current certificate, which is when it trusts a new CA's
        client certificates (providers/tls_files.py, `_wait_served`). [] for a CA file alone."""
        return list(self.patroni_files) if files.certificate else []

    def deliver(self, name: str, host: Host, files: TlsFileSet, connection: dict[str, Any],
                ssh_private_key: pulumi.Output[str] | None, opts: pulumi.ResourceOptions,
                extra: dict[str, Any] | None = None) -> TlsFiles:
        """A TlsFiles resource writing `files` on `host` (components/providers/tls_files.py)."""
        assert self.trust_pem is not None
        cert = self.certificate(host.name, files.service) if files.certificate else None

        def contents(v: list[str]) -> dict[str, str]:
            pem = {"ca": v[0], "cert": v[1], "key": v[2]}
            return {f.path: "".join(pem[part] or "" for part in f.content.split("+")) for f in files.files}

        parts = [self.trust_pem, cert.cert_pem if cert else "", cert.key_pem if cert else ""]
        props: dict[str, Any] = {
            "connection": connection, "service": files.service, "host_name": host.name,
            "directory": files.directory or "", "owner": files.owner,
            "layout": {f.path: f"{f.mode} {f.owner}:{f.group}" for f in files.files},
            # Public: a renewal reads as a new expiry date in the preview.
            "not_after": cert.not_after if cert else "",
            "contents": pulumi.Output.secret(pulumi.Output.all(*parts).apply(contents)),
            **(extra or {}),
        }
        if ssh_private_key is not None:
            props["ssh_private_key"] = ssh_private_key
        if self.trust is not None:
            # A change of the trusted CAs is on every host before a new certificate is served.
            opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[self.trust]))
        delivered = TlsFiles(name, props, opts)
        if files.service == "patroni":
            self.patroni_files.append(delivered)
        return delivered

    @staticmethod
    def _users_ca(cfg: ClusterConfig, raw: dict[str, Any], reader: FileReader) -> str | None:
        """The user's CA certificate, checked with its key; None in a preview on a machine
        without the file (a pull request's CI job): the certificates then show as unchanged."""
        path = cfg.tls.ca_cert_file or ""
        text = reader.read(path, "pgha:tls.caCertFile", "the CA and the certificates it signs")
        if text is None:
            return None
        try:
            tls.check_ca(text)
        except tls.TlsError as err:
            raise _problem("tls.caCertFile", str(err)) from None
        try:
            tls.check_ca(text, str(raw[CA_KEY_SECRET]))
        except tls.TlsError as err:
            raise _problem(CA_KEY_SECRET, str(err)) from None
        return text

    def _supplied(self, cfg: ClusterConfig, reader: FileReader) -> None:
        path = cfg.tls.ca_cert_file or ""
        ca_text = reader.read(path, "pgha:tls.caCertFile", "the CA certificate")
        if ca_text is None:
            raise _problem("tls.caCertFile", f"{path} is not readable here")
        self.trust_pem = pulumi.Output.from_input(ca_text)
        problems: list[str] = []
        now = tls.utcnow()
        wanted: list[tuple[Host | None, str, HostCertificateFiles | None, str]] = [
            (h, f"tls.certificates.{h.name}", cfg.tls.certificates.get(h.name), h.name) for h in cfg.hosts]
        wanted.append((None, "tls.clientCertificate", cfg.tls.client_certificate, CLIENT))
        for host, where, files, name in wanted:
            if files is None:
                continue
            cert = reader.read(files.cert_file, key(f"{where}.certFile"), "the certificate")
            key_text = reader.read(files.key_file, key(f"{where}.keyFile"), "the key")
            if cert is None or key_text is None:
                continue  # a preview without the files: unchanged
            errors, warnings = supplied_certificate_problems(host, cert, key_text, ca_text, now,
                                                             cfg.tls.renew_before_days)
            problems += [f"{key(where + '.certFile')}: {files.cert_file} {e}" for e in errors]
            for warning in warnings:
                pulumi.log.warn(f"{key(where + '.certFile')}: {files.cert_file} {warning}")
            if errors:
                continue
            info = tls.inspect(cert)
            self.certificates[name] = IssuedCertificate(
                pulumi.Output.from_input(cert), pulumi.Output.secret(key_text),
                pulumi.Output.from_input(info.not_after.isoformat()))
        if problems:
            raise pulumi.RunError(str(ConfigError(problems)))

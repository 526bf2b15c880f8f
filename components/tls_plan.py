"""Which certificates a cluster needs, when one is due for renewal, and what turning TLS on or off
means for a reviewer (pure: config model and certificate facts in, plans and words out).

Certificates per host (one key each, readable only by the service that uses it):

- ``<host>-etcd`` (etcd hosts, owned by etcd): etcd's client *and* peer listener; peers dial each
  other with it, so it is a client certificate too.
- ``<host>-patroni`` (Patroni hosts, owned by postgres): Patroni's REST API and PostgreSQL (server),
  Patroni's etcd3 client and patronictl's REST client (client). It also names the balancers and
  ``pgha:tls.serverNames``: clients reach PostgreSQL through HAProxy (TLS passed through).
- ``<host>-haproxy`` (balancers, only with ``restApiVerifyClient: required``): HAProxy's checks.
- ``pgha-client``: pgha's own calls to etcd and Patroni from the machine running pulumi.

Every certificate carries a subjectAltName (RFC 5280 verifiers, cryptography's included, want one
on client certificates too). Server certificates name the host as Patroni, etcd and libpq reach
it: its address and its name, and the loopback (127.0.0.1, localhost) for the local listeners and
patronictl on the node.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from components import tls
from components.config import BACKUP_USER, ClusterConfig, Host
from components.tls import CertificateInfo, CertificateRequest
from components.tls_config import TlsSettings, certificate_hosts

CLIENT = "pgha-client"
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1",)


@dataclass(frozen=True)
class PlannedCertificate:
    """A certificate the stack issues: its resource name, the host (None: pgha's client) and the
    service user that will own its key file on that host."""

    name: str
    host: str | None
    owner: str | None
    request: CertificateRequest


def ca_common_name(cfg: ClusterConfig) -> str:
    """The stack CA's name; a new pgha:tls.caGeneration is a new name, so the CA rotates."""
    generation = cfg.tls.ca_generation
    return f"pgha {cfg.scope} cluster CA" + (f" {generation}" if generation > 1 else "")


def _server(host: Host, tls: TlsSettings, also: tuple[str, ...] = ()) -> CertificateRequest:
    names = _split_names(also)
    return CertificateRequest(
        common_name=host.name,
        dns_names=(host.name, *names[0], *LOOPBACK_NAMES),
        ip_addresses=(host.address, *names[1], *LOOPBACK_ADDRESSES),
        server=True, client=True, validity_days=tls.validity_days,
    )


def _split_names(names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(DNS names, IP addresses), each once, in order."""
    import ipaddress

    dns: list[str] = []
    ips: list[str] = []
    for name in names:
        try:
            target, text = ips, str(ipaddress.ip_address(name))
        except ValueError:
            target, text = dns, name
        if text not in target:
            target.append(text)
    return tuple(dns), tuple(ips)


def client_endpoint_names(cfg: ClusterConfig) -> tuple[str, ...]:
    """The names a PostgreSQL client may dial to reach any node: HAProxy passes TLS through
    (mode tcp), so a client of the balancer sees the node's certificate and checks it against
    the balancer's address or name (sslmode=verify-full); pgha:tls.serverNames adds a DNS name or
    virtual IP in front of them."""
    names: list[str] = []
    for host in cfg.with_role("haproxy"):
        names += [host.name, host.address]
    return (*names, *cfg.tls.server_names)


def planned_certificates(cfg: ClusterConfig) -> dict[str, PlannedCertificate]:
    """Every certificate the stack issues, by resource name; none when it issues none."""
    tls = cfg.tls
    if not tls.issues_certificates:
        return {}
    plan: dict[str, PlannedCertificate] = {}
    client_endpoints = client_endpoint_names(cfg)
    for host in certificate_hosts(cfg.hosts, tls.restapi_verify_client):
        if "etcd" in host.roles:
            plan[f"{host.name}-etcd"] = PlannedCertificate(f"{host.name}-etcd", host.name, "etcd",
                                                           _server(host, tls))
        if "patroni" in host.roles:
            plan[f"{host.name}-patroni"] = PlannedCertificate(f"{host.name}-patroni", host.name, "postgres",
                                                              _server(host, tls, client_endpoints))
        if "haproxy" in host.roles and tls.restapi_verify_client == "required":
            plan[f"{host.name}-haproxy"] = PlannedCertificate(
                f"{host.name}-haproxy", host.name, "haproxy",
                CertificateRequest(common_name=f"{host.name}-haproxy", dns_names=(host.name,),
                                   ip_addresses=(host.address,), client=True,
                                   validity_days=tls.validity_days))
        if "backup" in host.roles and tls.restapi_verify_client == "required":
            plan[f"{host.name}-pgbackrest"] = PlannedCertificate(
                f"{host.name}-pgbackrest", host.name, BACKUP_USER,
                CertificateRequest(common_name=f"{host.name}-pgbackrest", dns_names=(host.name,),
                                   ip_addresses=(host.address,), client=True,
                                   validity_days=tls.validity_days))
    plan[CLIENT] = PlannedCertificate(CLIENT, None, None, CertificateRequest(
        common_name=f"pgha {cfg.scope}", dns_names=(CLIENT,), client=True,
        validity_days=tls.validity_days))
    return plan


def renewal_reasons(current: CertificateInfo, want: CertificateRequest, *, issuer_matches: bool,
                    now: dt.datetime, renew_before_days: int) -> list[str]:
    """Why the certificate in the state must be issued again, in a reviewer's words ([]: it stays).

    `issuer_matches`: whether the CA the stack signs with now signed it (tls.issued_by).
    A changed lifetime alone is no reason: it applies at the next renewal.
    """
    reasons: list[str] = []
    left = current.days_left(now)
    if left <= 0:
        reasons.append(f"expired on {current.not_after:%Y-%m-%d}")
    elif left <= renew_before_days:
        reasons.append(f"expires on {current.not_after:%Y-%m-%d}, within the {renew_before_days} days "
                       "of pgha:tls.renewBeforeDays")
    for what, have, wanted in (("names", current.dns_names, want.dns_names),
                               ("addresses", current.ip_addresses, want.ip_addresses)):
        added, removed = sorted(set(wanted) - set(have)), sorted(set(have) - set(wanted))
        if added or removed:
            change = ", ".join([*(f"+{n}" for n in added), *(f"-{n}" for n in removed)])
            reasons.append(f"{what} changed: {change}")
    if current.common_name != want.common_name:
        reasons.append(f"subject changed: {current.common_name} -> {want.common_name}")
    if (current.server, current.client) != (want.server, want.client):
        reasons.append(f"usage changed: {_usage(current.server, current.client)} -> "
                       f"{_usage(want.server, want.client)}")
    if not issuer_matches:
        reasons.append(f"issued by another CA ({current.issuer})")
    return reasons


def _usage(server: bool, client: bool) -> str:
    return "+".join(u for u, on in (("server", server), ("client", client)) if on) or "none"


def ca_renewal_reasons(ca: CertificateInfo, *, now: dt.datetime, host_validity_days: int) -> list[str]:
    """Why the stack's CA must be replaced: when it can no longer sign a host certificate for a
    full `host_validity_days`. Replacing it is a rotation (both CAs trusted for a while)."""
    left = ca.days_left(now)
    if left <= 0:
        return [f"the CA expired on {ca.not_after:%Y-%m-%d}"]
    if left < host_validity_days:
        return [f"the CA expires on {ca.not_after:%Y-%m-%d}, before a host certificate issued now "
                f"({host_validity_days} days) would"]
    return []


def transition(deployed: bool | None, tls: TlsSettings) -> str | None:
    """What the preview must say when TLS is turned on or off for a deployed cluster.

    `deployed`: whether the cluster in the state runs with TLS (None: a new stack, nothing to
    migrate; stacks deployed before pgha:tls existed store no TLS setting and count as False).
    """
    if deployed is None or deployed == tls.enabled:
        return None
    if tls.enabled:
        why = "pgha:tls.enabled" if tls.explicit else "the default (pgha:tls absent; set " \
              "pgha:tls.enabled: false to stay in plaintext)"
        return (f"TLS is being turned ON ({why}): etcd peers and clients, Patroni's REST API and "
                "PostgreSQL move to certificates "
                f"{'from the stack CA' if tls.source == 'generated' else 'from pgha:tls.caCertFile'}; "
                "up restarts each etcd member and Patroni node one at a time (one switchover) and "
                "pg_hba's remote lines become hostssl")
    return ("TLS is being turned OFF (pgha:tls.enabled: false): traffic between the hosts, and "
            "clients' connections, will be in plaintext again; up restarts each etcd member and "
            "Patroni node one at a time (one switchover)")


def supplied_certificate_problems(host: Host | None, cert_pem: str, key_pem: str, ca_pem: str,
                                  now: dt.datetime, renew_before_days: int) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a ready-made certificate (pgha:tls.source: certificates) for `host`,
    or pgha's own client certificate (`host` None). It must be this key's and chain to the CA; a
    host's must name the host's address and name, serve and be a client (Patroni and etcd peers
    use it both ways); pgha's must be a client. One that expires soon is a warning: the stack
    still deploys, and the user replaces the files."""
    problems: list[str] = []
    try:
        if not tls.key_matches(cert_pem, key_pem):
            problems.append("the key file holds another certificate's key")
        info = tls.inspect(cert_pem)
    except tls.TlsError as err:
        return [str(err)], []
    if not tls.issued_by_any(cert_pem, ca_pem):  # any CA of the file: it may hold the old and the new
        problems.append(f"is not signed by pgha:tls.caCertFile (its issuer is {info.issuer})")
    if host is not None:
        missing = [n for n in (host.address, host.name) if n not in (*info.ip_addresses, *info.dns_names)]
        if missing:
            problems.append(f"does not name {', '.join(missing)} in its subjectAltName "
                            f"(it names {', '.join((*info.dns_names, *info.ip_addresses)) or 'nothing'})")
        if not (info.server and info.client):
            problems.append("needs extendedKeyUsage serverAuth and clientAuth (etcd peers and Patroni use "
                            "it both ways)")
    elif not info.client:
        problems.append("needs extendedKeyUsage clientAuth (pgha's calls to etcd and Patroni)")
    left = info.days_left(now)
    if left <= 0:
        problems.append(f"expired on {info.not_after:%Y-%m-%d}")
    elif left <= renew_before_days:
        return problems, [f"expires on {info.not_after:%Y-%m-%d}, within pgha:tls.renewBeforeDays "
                          f"({renew_before_days}): replace the files"]
    return problems, []


# --- Where the files go on the hosts, and what the templates need (the `tls` of a spec) ---------

ETCD_TLS_DIR = "/etc/etcd/pgha-tls"  # 0700 etcd: ca.crt, server.crt, server.key (0600 etcd)
HAPROXY_CA_FILE = "/etc/haproxy/pgha-ca.crt"
BACKUP_TLS_DIR = "/etc/pgbackrest/pgha-tls"  # 0700 pgbackrest: ca.crt (+ client.crt, client.key)
HAPROXY_CLIENT_PEM = "/etc/haproxy/pgha-client.pem"  # certificate + key, 0600 haproxy


def etcd_tls(cfg: ClusterConfig) -> dict[str, str] | None:
    """etcd's client and peer TLS (one certificate serves both), or None with TLS off."""
    if not cfg.tls.enabled:
        return None
    return {"ca_file": f"{ETCD_TLS_DIR}/ca.crt", "cert_file": f"{ETCD_TLS_DIR}/server.crt",
            "key_file": f"{ETCD_TLS_DIR}/server.key"}


def patroni_tls(cfg: ClusterConfig) -> dict[str, str] | None:
    """Patroni's REST API, its etcd3 client, patronictl (`ctl`) and PostgreSQL's ssl: one
    certificate and key of the postgres user in <configDir>/tls, and the CA bundle beside them."""
    if not cfg.tls.enabled:
        return None
    base = f"{cfg.patroni.config_dir}/tls"
    return {"ca_file": f"{base}/ca.crt", "cert_file": f"{base}/node.crt", "key_file": f"{base}/node.key",
            "verify_client": cfg.tls.restapi_verify_client, "sslmode": cfg.tls.replication_sslmode}


def haproxy_tls(cfg: ClusterConfig) -> dict[str, str] | None:
    """HAProxy's checks over https, verifying Patroni against the CA (and the host's name); a
    client certificate only when Patroni requires one on every request."""
    if not cfg.tls.enabled:
        return None
    files = {"ca_file": HAPROXY_CA_FILE}
    if cfg.tls.restapi_verify_client == "required":
        files["crt"] = HAPROXY_CLIENT_PEM
    return files


def backup_host_tls(cfg: ClusterConfig) -> dict[str, str] | None:
    """The repository host's backup script asks each node's Patroni whether it is a healthy
    standby: over https, verifying the CA, and showing a certificate of the repository host
    when Patroni requires one on every request. None without TLS or without a repository host."""
    if not cfg.tls.enabled or cfg.backup is None or cfg.backup.on_nodes:
        return None
    files = {"ca_file": f"{BACKUP_TLS_DIR}/ca.crt"}
    if cfg.tls.restapi_verify_client == "required":
        files.update(cert_file=f"{BACKUP_TLS_DIR}/client.crt", key_file=f"{BACKUP_TLS_DIR}/client.key")
    return files


@dataclass(frozen=True)
class TlsFile:
    path: str
    content: str  # ca | cert | key | cert+key: which PEM goes in it
    mode: str
    owner: str
    group: str


@dataclass(frozen=True)
class TlsFileSet:
    """The certificate files one service reads on one host, written before the service starts."""

    service: str  # etcd | patroni | haproxy | pgbackrest
    certificate: str | None  # the planned certificate's name (None: the CA only)
    directory: str | None  # made 0700, owned by the service user (None: an existing directory)
    owner: str
    files: tuple[TlsFile, ...]


def _identity_files(paths: dict[str, str], owner: str) -> tuple[TlsFile, ...]:
    """The CA bundle, and a certificate with its key when `paths` names them: public files 0644,
    the key 0600, all owned by the service user `owner`."""
    wanted = (("ca_file", "ca", "0644"), ("cert_file", "cert", "0644"), ("key_file", "key", "0600"))
    return tuple(TlsFile(paths[key], content, mode, owner, owner)
                 for key, content, mode in wanted if key in paths)


def tls_file_sets(cfg: ClusterConfig, host: Host) -> list[TlsFileSet]:
    """Every certificate file set `host` needs ([] with TLS off). Keys are 0600 and owned by
    the service user; certificates and the CA bundle are public (0644)."""
    if not cfg.tls.enabled:
        return []
    sets: list[TlsFileSet] = []
    if "etcd" in host.roles:
        e = etcd_tls(cfg)
        assert e is not None
        sets.append(TlsFileSet("etcd", f"{host.name}-etcd", ETCD_TLS_DIR, "etcd", _identity_files(e, "etcd")))
    if "patroni" in host.roles:
        p = patroni_tls(cfg)
        assert p is not None
        base = f"{cfg.patroni.config_dir}/tls"
        sets.append(TlsFileSet("patroni", f"{host.name}-patroni", base, "postgres",
                               _identity_files(p, "postgres")))
    if "haproxy" in host.roles:
        h = haproxy_tls(cfg)
        assert h is not None
        files = [TlsFile(h["ca_file"], "ca", "0644", "root", "root")]
        if "crt" in h:
            files.append(TlsFile(h["crt"], "cert+key", "0600", "haproxy", "haproxy"))
        sets.append(TlsFileSet("haproxy", f"{host.name}-haproxy" if "crt" in h else None, None, "haproxy",
                               tuple(files)))
    b = backup_host_tls(cfg) if "backup" in host.roles else None
    if b is not None:
        sets.append(TlsFileSet("pgbackrest", f"{host.name}-pgbackrest" if "cert_file" in b else None,
                               BACKUP_TLS_DIR, BACKUP_USER, _identity_files(b, BACKUP_USER)))
    return sets


# --- A change of the trusted CAs goes everywhere first (a CA rotation's first phase) ------------

@dataclass(frozen=True)
class TrustTarget:
    """One CA bundle file on one host, and what makes its service read a new one."""

    host: str
    service: str  # etcd | patroni | haproxy | pgbackrest
    file: TlsFile
    restart: bool  # etcd: it loads its trusted CAs only when it starts


def trust_targets(cfg: ClusterConfig) -> list[TrustTarget]:
    """Every CA bundle file of the cluster, in the order a change of the trusted CAs is applied:
    the files read at each use or on a reload first (Patroni, HAProxy, the repository host), then
    the etcd members, one at a time, each restarted (etcd 3.4 reads its trusted CAs only at start,
    though it reads its own certificate at every handshake)."""
    others: list[TrustTarget] = []
    members: list[TrustTarget] = []
    for host in cfg.hosts:
        for file_set in tls_file_sets(cfg, host):
            for f in file_set.files:
                if f.content == "ca":
                    target = TrustTarget(host.name, file_set.service, f, restart=file_set.service == "etcd")
                    (members if target.restart else others).append(target)
    return others + members


def dropped_trust_problem(old_bundle: str, new_bundle: str, now: dt.datetime, source: str) -> str:
    """Why the trusted CAs cannot change from `old_bundle` to `new_bundle` in one `up` ('' when
    they can): a CA still valid that leaves the bundle may have signed certificates the hosts
    serve now, and the hosts restarted first would refuse the others. A new CA comes beside the
    old one first (the stack's own CA does so when it rotates; pgha:tls.caCertFile holds both,
    the new one first); the old one leaves once nothing it signed is in use."""
    new = {ca.fingerprint for ca in tls.inspect_bundle(new_bundle)}
    still_valid = [ca for ca in tls.inspect_bundle(old_bundle)
                   if ca.fingerprint not in new and ca.not_after > now]
    if not still_valid:
        return ""
    names = ", ".join(f"{ca.common_name} (valid until {ca.not_after:%Y-%m-%d})" for ca in still_valid)
    problem = (f"the trusted CAs would no longer include {names}, which signed the certificates the "
               "hosts use now: hosts would refuse each other while they move. ")
    if source == "generated":
        return ("pgha:tls: " + problem + "The stack's CA was replaced rather than rotated (pulumi up "
                "--replace?): rotate it instead by raising pgha:tls.caGeneration, which keeps the old CA "
                "trusted beside the new one")
    return ("pgha:tls.caCertFile: " + problem + "Put the new CA first and the old one after it in "
            "pgha:tls.caCertFile for this `up` (both are trusted while every certificate is issued "
            "again), and drop the old one in a later `up`")

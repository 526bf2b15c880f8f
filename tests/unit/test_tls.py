"""components/tls.py and components/tls_plan.py: certificates that really verify.

Each certificate is read back with `cryptography`, verified against its CA as a TLS peer would
(cryptography's X.509 verifier, and a real TLS handshake through Python's ssl, i.e. OpenSSL, the
library Patroni, libpq and HAProxy use), and the renewal planning is checked on real certificates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from components import tls
from components.config import ClusterConfig, Host, load_cluster_config
from components.tls import CertificateRequest, TlsError
from components.tls_plan import (
    CLIENT,
    ca_renewal_reasons,
    planned_certificates,
    renewal_reasons,
    supplied_certificate_problems,
    transition,
)
from tests.unit.configs import base_raw, base_secret_keys

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
SERVER = CertificateRequest("pg1", ("pg1", "localhost"), ("10.77.0.11", "127.0.0.1"), server=True,
                            client=True, validity_days=365)
CLIENT_REQUEST = CertificateRequest("pgha lab", ("pgha-client",), client=True, validity_days=2)


@pytest.fixture(scope="module")
def ca() -> tls.KeyAndCertificate:
    return tls.create_ca("pgha test CA", 3650, now=NOW)


@pytest.fixture(scope="module")
def server(ca: tls.KeyAndCertificate) -> tls.KeyAndCertificate:
    return tls.issue(ca, SERVER, now=NOW)


def test_ca_is_a_ca_that_may_only_sign_leaves(ca: tls.KeyAndCertificate) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)  # self-signed, with its own key
    assert tls.key_matches(ca.cert_pem, ca.key_pem)
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=3650)
    assert "BEGIN PRIVATE KEY" in ca.key_pem


def test_server_certificate_names_usage_and_chain(ca: tls.KeyAndCertificate,
                                                  server: tls.KeyAndCertificate) -> None:
    cert = x509.load_pem_x509_certificate(server.cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pg1", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.77.0.11", "127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert tls.issued_by(server.cert_pem, ca.cert_pem)
    assert tls.key_matches(server.cert_pem, server.key_pem)
    assert not tls.key_matches(server.cert_pem, ca.key_pem)
    for name in ("10.77.0.11", "127.0.0.1", "pg1", "localhost"):
        tls.verify(server.cert_pem, ca.cert_pem, NOW, server_name=name, client=True)


def test_info_reads_back_what_was_issued(server: tls.KeyAndCertificate) -> None:
    info = tls.inspect(server.cert_pem)
    assert (info.common_name, info.issuer) == ("pg1", "CN=pgha test CA")
    assert (info.dns_names, info.ip_addresses) == (SERVER.dns_names, SERVER.ip_addresses)
    assert (info.server, info.client, info.is_ca) == (True, True, False)
    assert info.not_after == NOW + dt.timedelta(days=365)
    assert info.not_before == NOW - tls.BACKDATE
    assert len(info.fingerprint.split(":")) == 32
    assert round(info.days_left(NOW)) == 365


@pytest.mark.parametrize(("name", "when", "fragment"), [
    ("10.77.0.12", NOW, "no matching subjectaltname"),  # another host's address
    ("pg2", NOW, "no matching subjectaltname"),
    ("10.77.0.11", NOW + dt.timedelta(days=366), "not valid at validation time"),  # expired
    ("10.77.0.11", NOW - dt.timedelta(hours=1), "not valid at validation time"),  # not yet
])
def test_verification_refuses(ca: tls.KeyAndCertificate, server: tls.KeyAndCertificate, name: str,
                              when: dt.datetime, fragment: str) -> None:
    with pytest.raises(TlsError) as err:
        tls.verify(server.cert_pem, ca.cert_pem, when, server_name=name)
    assert fragment in str(err.value).lower(), err.value


def test_another_ca_does_not_verify(ca: tls.KeyAndCertificate, server: tls.KeyAndCertificate) -> None:
    other = tls.create_ca("pgha test CA", 3650, now=NOW)  # same name, another key
    assert not tls.issued_by(server.cert_pem, other.cert_pem)
    with pytest.raises(TlsError):
        tls.verify(server.cert_pem, other.cert_pem, NOW, server_name="pg1")
    # A CA file during a rotation holds the new CA first and the old one after it.
    rotating = tls.bundle(other.cert_pem, ca.cert_pem)
    assert [c.fingerprint for c in tls.inspect_bundle(rotating)] == [tls.fingerprint(other.cert_pem),
                                                                     tls.fingerprint(ca.cert_pem)]
    assert tls.issued_by_any(server.cert_pem, rotating)
    assert not tls.issued_by_any(server.cert_pem, other.cert_pem)


def test_rotation_bundle_trusts_both_cas(ca: tls.KeyAndCertificate, server: tls.KeyAndCertificate) -> None:
    new_ca = tls.create_ca("pgha test CA 2", 3650, now=NOW)
    new_server = tls.issue(new_ca, SERVER, now=NOW)
    trust = tls.bundle(ca.cert_pem, new_ca.cert_pem, ca.cert_pem)
    assert trust.count("BEGIN CERTIFICATE") == 2
    for cert in (server.cert_pem, new_server.cert_pem):
        tls.verify(cert, trust, NOW, server_name="10.77.0.11", client=True)
    with pytest.raises(TlsError):
        tls.verify(new_server.cert_pem, ca.cert_pem, NOW, server_name="10.77.0.11")


def test_client_only_certificate_is_no_server(ca: tls.KeyAndCertificate) -> None:
    client = tls.issue(ca, CertificateRequest("pgha lab", ("pgha-client",), client=True), now=NOW)
    tls.verify(client.cert_pem, ca.cert_pem, NOW, client=True)
    info = tls.inspect(client.cert_pem)
    assert (info.server, info.client) == (False, True)
    assert (info.dns_names, info.ip_addresses) == (("pgha-client",), ())
    with pytest.raises(TlsError):
        tls.verify(client.cert_pem, ca.cert_pem, NOW, server_name="127.0.0.1")


def test_a_server_only_certificate_is_no_client(ca: tls.KeyAndCertificate) -> None:
    only = tls.issue(ca, CertificateRequest("pg1", ("pg1",), server=True), now=NOW)
    with pytest.raises(TlsError):
        tls.verify(only.cert_pem, ca.cert_pem, NOW, client=True)


def test_a_certificate_never_outlives_its_ca() -> None:
    short = tls.create_ca("short CA", 10, now=NOW)
    leaf = tls.issue(short, SERVER, now=NOW)
    assert tls.inspect(leaf.cert_pem).not_after == tls.inspect(short.cert_pem).not_after


def test_issue_refuses_bad_input(ca: tls.KeyAndCertificate, server: tls.KeyAndCertificate) -> None:
    with pytest.raises(TlsError, match="server, a client or both"):
        tls.issue(ca, CertificateRequest("x"), now=NOW)
    with pytest.raises(TlsError, match="at least one name"):
        tls.issue(ca, CertificateRequest("x", server=True), now=NOW)
    with pytest.raises(TlsError, match="not a CA certificate"):
        tls.issue(server, SERVER, now=NOW)  # a leaf cannot sign
    with pytest.raises(TlsError, match="CA key is not the key"):
        tls.issue(tls.KeyAndCertificate(server.key_pem, ca.cert_pem), SERVER, now=NOW)
    with pytest.raises(TlsError) as err:
        tls.load_key("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n")
    assert "c2VjcmV0" not in str(err.value), "an unreadable key must not be echoed"


def test_reissue_with_the_same_key(ca: tls.KeyAndCertificate, server: tls.KeyAndCertificate) -> None:
    again = tls.issue(ca, SERVER, now=NOW + dt.timedelta(days=300), key_pem=server.key_pem)
    assert again.key_pem == server.key_pem
    assert tls.inspect(again.cert_pem).serial != tls.inspect(server.cert_pem).serial


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def _handshake(tmp: Path, server: tls.KeyAndCertificate, client: tls.KeyAndCertificate | None,
               ca_pem: str, server_hostname: str) -> tuple[dict[str, object], dict[str, object]]:
    """One TLS connection on the loopback through Python's ssl (OpenSSL): the server requires a
    client certificate; returns (what the client saw of the server, what the server saw)."""
    ca_file = _write(tmp, "ca.crt", ca_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(_write(tmp, "srv.crt", server.cert_pem),
                               _write(tmp, "srv.key", server.key_pem))
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if client is not None:
        client_ctx.load_cert_chain(_write(tmp, "cli.crt", client.cert_pem),
                                   _write(tmp, "cli.key", client.key_pem))
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                seen.update(tls_conn.getpeercert() or {})
                tls_conn.sendall(b"ok")
        except (ssl.SSLError, OSError) as err:
            seen["error"] = err

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname()) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as conn:
            assert conn.recv(2) == b"ok"
            return dict(conn.getpeercert() or {}), seen
    finally:
        thread.join(5)
        listener.close()


def test_openssl_mutual_tls_handshake(tmp_path: Path) -> None:
    """etcd's --client-cert-auth / Patroni's verify_client on one side, libpq's verify-full on the
    other: both ends check each other with OpenSSL, on the real clock."""
    now = tls.utcnow()
    ca = tls.create_ca("pgha handshake CA", 30, now=now)
    srv = tls.issue(ca, SERVER, now=now)
    cli = tls.issue(ca, CLIENT_REQUEST, now=now)
    server_seen, client_seen = _handshake(tmp_path, srv, cli, ca.cert_pem, "127.0.0.1")
    assert server_seen["subject"] == ((("commonName", "pg1"),),)
    assert client_seen["subject"] == ((("commonName", "pgha lab"),),)


def test_openssl_refuses_a_wrong_address_and_a_missing_client_certificate(tmp_path: Path) -> None:
    now = tls.utcnow()
    ca = tls.create_ca("pgha handshake CA", 30, now=now)
    srv = tls.issue(ca, SERVER, now=now)
    cli = tls.issue(ca, CLIENT_REQUEST, now=now)
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        _handshake(tmp_path, srv, cli, ca.cert_pem, "10.77.0.12")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(tmp_path, srv, None, ca.cert_pem, "127.0.0.1")
    stranger = tls.create_ca("pgha handshake CA", 30, now=now)  # same name, another key
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path, srv, cli, stranger.cert_pem, "127.0.0.1")


# --- planning ---------------------------------------------------------------------------------------


def _cfg(**tls_settings: object) -> ClusterConfig:
    raw = base_raw()
    if tls_settings:
        raw["tls"] = tls_settings
    return load_cluster_config(raw, base_secret_keys())


def test_planned_certificates_per_host_and_purpose() -> None:
    plan = planned_certificates(_cfg())
    assert sorted(plan) == ["pg1-etcd", "pg1-patroni", "pg2-etcd", "pg2-patroni", "pg3-etcd", "pg3-patroni",
                            CLIENT]
    pg2 = plan["pg2-patroni"]
    assert (pg2.host, pg2.owner) == ("pg2", "postgres")
    # The node's own names, the balancer's (clients reach PostgreSQL through HAProxy's TCP
    # passthrough and check the balancer's name), and the loopback.
    assert pg2.request.dns_names == ("pg2", "pg4", "localhost")
    assert pg2.request.ip_addresses == ("10.77.0.12", "10.77.0.14", "127.0.0.1")
    assert plan["pg2-etcd"].request.dns_names == ("pg2", "localhost"), "etcd is not behind HAProxy"
    assert pg2.request.server and pg2.request.client
    assert plan["pg2-etcd"].owner == "etcd"
    client = plan[CLIENT]
    assert client.host is None and client.request.client and not client.request.server
    assert (client.request.common_name, client.request.dns_names) == ("pgha pgha-lab", ("pgha-client",))


def test_server_names_reach_postgresql_certificates() -> None:
    names = ["db.example.internal", "10.77.0.100", "DB.example.internal"]
    plan = planned_certificates(_cfg(serverNames=names))
    request = plan["pg1-patroni"].request
    assert request.dns_names == ("pg1", "pg4", "db.example.internal", "localhost")
    assert request.ip_addresses == ("10.77.0.11", "10.77.0.14", "10.77.0.100", "127.0.0.1")


def test_balancers_get_a_client_certificate_only_when_required() -> None:
    plan = planned_certificates(_cfg(restApiVerifyClient="required"))
    pg4 = plan["pg4-haproxy"]
    assert (pg4.owner, pg4.request.server, pg4.request.client) == ("haproxy", False, True)
    assert (pg4.request.dns_names, pg4.request.ip_addresses) == (("pg4",), ("10.77.0.14",))
    assert not planned_certificates(_cfg(enabled=False))


def test_ready_made_certificates_are_not_issued() -> None:
    files = {f"pg{i}": {"certFile": f"/c/pg{i}.crt", "keyFile": f"/c/pg{i}.key"} for i in (1, 2, 3)}
    client = {"certFile": "/c/pgha.crt", "keyFile": "/c/pgha.key"}
    assert planned_certificates(_cfg(source="certificates", caCertFile="/c/ca.crt", certificates=files,
                                     clientCertificate=client)) == {}


def test_renewal_reasons_on_real_certificates(ca: tls.KeyAndCertificate,
                                              server: tls.KeyAndCertificate) -> None:
    info = tls.inspect(server.cert_pem)
    ok = tls.issued_by(server.cert_pem, ca.cert_pem)
    assert renewal_reasons(info, SERVER, issuer_matches=ok, now=NOW, renew_before_days=30) == []
    assert renewal_reasons(info, SERVER, issuer_matches=ok, now=NOW + dt.timedelta(days=334),
                           renew_before_days=30) == []
    due = renewal_reasons(info, SERVER, issuer_matches=ok, now=NOW + dt.timedelta(days=336),
                          renew_before_days=30)
    assert due == ["expires on 2027-11-27, within the 30 days of pgha:tls.renewBeforeDays"]
    assert renewal_reasons(info, SERVER, issuer_matches=ok, now=NOW + dt.timedelta(days=400),
                           renew_before_days=30) == ["expired on 2027-11-27"]
    moved = CertificateRequest("pg1", ("pg1", "localhost"), ("10.77.0.21", "127.0.0.1"), True, True)
    assert renewal_reasons(info, moved, issuer_matches=ok, now=NOW, renew_before_days=30) == [
        "addresses changed: +10.77.0.21, -10.77.0.11"]
    other_ca = tls.create_ca("pgha other CA", 3650, now=NOW)
    assert renewal_reasons(info, SERVER, issuer_matches=tls.issued_by(server.cert_pem, other_ca.cert_pem),
                           now=NOW, renew_before_days=30) == ["issued by another CA (CN=pgha test CA)"]
    server_only = CertificateRequest("pg1", SERVER.dns_names, SERVER.ip_addresses, server=True)
    assert renewal_reasons(info, server_only, issuer_matches=ok, now=NOW, renew_before_days=30) == [
        "usage changed: server+client -> server"]
    shorter = dataclasses.replace(SERVER, validity_days=90)  # applies at the next renewal
    assert renewal_reasons(info, shorter, issuer_matches=ok, now=NOW, renew_before_days=30) == []


def test_ca_renewal(ca: tls.KeyAndCertificate) -> None:
    info = tls.inspect(ca.cert_pem)
    assert ca_renewal_reasons(info, now=NOW, host_validity_days=365) == []
    late = NOW + dt.timedelta(days=3650 - 100)
    assert ca_renewal_reasons(info, now=late, host_validity_days=365) == [
        "the CA expires on 2036-11-24, before a host certificate issued now (365 days) would"]
    assert ca_renewal_reasons(info, now=NOW + dt.timedelta(days=4000), host_validity_days=365)[0].startswith(
        "the CA expired")


def test_transition_says_when_tls_turns_on_or_off() -> None:
    default_on, explicit_off = _cfg().tls, _cfg(enabled=False).tls
    assert transition(None, default_on) is None  # a new stack: nothing to migrate
    assert transition(True, default_on) is None
    assert transition(False, explicit_off) is None
    on = transition(False, default_on)
    assert on is not None and on.startswith("TLS is being turned ON (the default")
    assert "pgha:tls.enabled: false to stay in plaintext" in on and "one switchover" in on
    explicit_on = transition(False, _cfg(enabled=True).tls)
    assert explicit_on is not None and explicit_on.startswith("TLS is being turned ON (pgha:tls.enabled)")
    off = transition(True, explicit_off)
    assert off is not None and off.startswith("TLS is being turned OFF")


# --- ready-made certificates (pgha:tls.source: certificates) ----------------------------------------


def _host() -> Host:
    return _cfg().hosts[0]  # pg1, 10.77.0.11: the names SERVER carries


def test_a_good_ready_made_certificate(ca: tls.KeyAndCertificate, server: tls.KeyAndCertificate) -> None:
    assert supplied_certificate_problems(_host(), server.cert_pem, server.key_pem, ca.cert_pem, NOW, 30) == (
        [], [])


def test_ready_made_certificate_problems(ca: tls.KeyAndCertificate, server: tls.KeyAndCertificate) -> None:
    pg2 = _cfg().hosts[1]
    errors, _ = supplied_certificate_problems(pg2, server.cert_pem, server.key_pem, ca.cert_pem, NOW, 30)
    assert errors == ["does not name 10.77.0.12, pg2 in its subjectAltName (it names pg1, localhost, "
                      "10.77.0.11, 127.0.0.1)"]
    other = tls.create_ca("someone else's CA", 3650, now=NOW)
    errors, _ = supplied_certificate_problems(_host(), server.cert_pem, other.key_pem, other.cert_pem,
                                              NOW, 30)
    assert errors == ["the key file holds another certificate's key",
                      "is not signed by pgha:tls.caCertFile (its issuer is CN=pgha test CA)"]
    server_only = tls.issue(ca, CertificateRequest("pg1", ("pg1",), ("10.77.0.11",), server=True), now=NOW)
    errors, _ = supplied_certificate_problems(_host(), server_only.cert_pem, server_only.key_pem, ca.cert_pem,
                                              NOW, 30)
    assert errors == ["needs extendedKeyUsage serverAuth and clientAuth (etcd peers and Patroni use it "
                      "both ways)"]
    late = NOW + dt.timedelta(days=350)
    assert supplied_certificate_problems(_host(), server.cert_pem, server.key_pem, ca.cert_pem, late, 30) == (
        [], ["expires on 2027-11-27, within pgha:tls.renewBeforeDays (30): replace the files"])
    errors, _ = supplied_certificate_problems(_host(), server.cert_pem, server.key_pem, ca.cert_pem,
                                              NOW + dt.timedelta(days=400), 30)
    assert errors == ["expired on 2027-11-27"]
    assert supplied_certificate_problems(_host(), "not a certificate", server.key_pem, ca.cert_pem, NOW,
                                         30)[0][0].startswith("not a PEM certificate")


def test_pghas_ready_made_client_certificate(ca: tls.KeyAndCertificate,
                                             server: tls.KeyAndCertificate) -> None:
    client = tls.issue(ca, CLIENT_REQUEST, now=NOW)
    assert supplied_certificate_problems(None, client.cert_pem, client.key_pem, ca.cert_pem, NOW,
                                         1) == ([], [])
    # A host's certificate (server and client) does for pgha too; a server-only one does not.
    assert supplied_certificate_problems(None, server.cert_pem, server.key_pem, ca.cert_pem, NOW, 30) == (
        [], [])
    only = tls.issue(ca, CertificateRequest("pg1", ("pg1",), server=True), now=NOW)
    assert supplied_certificate_problems(None, only.cert_pem, only.key_pem, ca.cert_pem, NOW, 30)[0] == [
        "needs extendedKeyUsage clientAuth (pgha's calls to etcd and Patroni)"]

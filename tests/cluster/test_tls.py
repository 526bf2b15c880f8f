"""pgha:tls on a new stack: 3 etcd+Patroni nodes and HAProxy deployed with TLS on.

After `up`: plaintext to etcd (:2379), Patroni's REST API (:8008) and PostgreSQL is refused;
TLS with the stack's CA (output tlsCa) works: etcd's /health with a client certificate, GET
/patroni, psql through HAProxy with sslmode=verify-full. patronictl works on every node, the
replication connections use SSL, the key files are 0600 of their service user, the state holds
no plaintext private key and a second preview shows no change.
"""

from __future__ import annotations

import copy
import hashlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from components.providers.haproxy_config import backend_status
from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import NODES, PRIMARY, ProjectCopy, wait_until
from tests.cluster.tls_checks import node_client_certificate, plaintext_refused
from tests.cluster.workload import WriteLoad

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


@dataclass
class TlsStack:
    lab: Lab
    project: ProjectCopy
    ca_file: Path
    client: tuple[str, str]  # a node's certificate and key, copied here for etcd's client auth
    password: str
    config: dict[str, Any]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[TlsStack]:
    lab = Lab.up(4)
    try:
        link_wheelhouse(lab)
        base = tmp_path_factory.mktemp("tls")
        project = ProjectCopy.with_stack(base, "tls")
        config = copy.deepcopy(project.base_config)
        config["tls"] = {"enabled": True}
        project.write_config(config)
        started = time.monotonic()
        project.run("up", "--yes", "--skip-preview")
        print(f"\npulumi up with TLS (3 nodes + HAProxy): {time.monotonic() - started:.1f}s")
        outputs = json.loads(project.run("stack", "output", "--json", "--show-secrets").stdout)
        ca_file = base / "ca.crt"
        ca_file.write_text(outputs["tlsCa"])
        client = node_client_certificate(lab, base)
        yield TlsStack(lab, project, ca_file, client, outputs["superuserPassword"], config)
        project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_outputs_name_the_ca_and_expiry(stack: TlsStack) -> None:
    outputs = json.loads(stack.project.run("stack", "output", "--json").stdout)
    assert "BEGIN CERTIFICATE" in stack.ca_file.read_text()
    expiry = outputs["certificateExpiry"]
    assert {"ca", "pg1-etcd", "pg1-patroni", "pgha-client"} <= set(expiry), expiry


def test_plaintext_is_refused(stack: TlsStack) -> None:
    for address in NODES.values():
        plaintext_refused(f"http://{address}:2379/health")
        plaintext_refused(f"http://{address}:8008/patroni")
    for host, port in [PRIMARY, *((a, 5432) for a in NODES.values())]:
        with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
            psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", password=stack.password,
                            sslmode="disable", connect_timeout=5)


def test_etcd_needs_the_ca_and_a_client_certificate(stack: TlsStack) -> None:
    for address in NODES.values():
        url = f"https://{address}:2379/health"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, timeout=5)  # the system's CAs do not know the cluster CA
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url, verify=str(stack.ca_file), timeout=5)  # no client certificate
        resp = requests.get(url, verify=str(stack.ca_file), cert=stack.client, timeout=5)
        assert resp.status_code == 200 and resp.json()["health"] in ("true", True), resp.text


def test_patroni_rest_api_over_https(stack: TlsStack) -> None:
    roles = {}
    for name, address in NODES.items():
        status = requests.get(f"https://{address}:8008/patroni", verify=str(stack.ca_file), timeout=5).json()
        assert status["state"] == "running", status
        roles[name] = status["role"]
    assert sorted(roles.values()).count("replica") == 2, roles


def test_psql_through_haproxy_verify_full(stack: TlsStack) -> None:
    host, port = PRIMARY
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", password=stack.password,
                         sslmode="verify-full", sslrootcert=str(stack.ca_file), connect_timeout=5) as conn:
        ssl, version = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert ssl is True and version.startswith("TLSv1."), (ssl, version)
        # Replication connections use SSL too (sslmode verify-full against the leader's name).
        walsenders = conn.execute(
            "SELECT r.application_name, s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"
        ).fetchall()
    assert len(walsenders) == 2 and all(ssl for _, ssl in walsenders), walsenders


def test_patronictl_list_on_every_node(stack: TlsStack) -> None:
    for name in NODES:
        out = stack.lab.ssh(name, "sudo -u postgres patronictl -c /etc/patroni/patroni.yml list").stdout
        assert out.count("streaming") == 2 and "Leader" in out, (name, out)


def test_key_files_are_0600_of_the_service_user(stack: TlsStack) -> None:
    for name in NODES:
        out = stack.lab.ssh(name, "sudo stat -c '%n %a %U:%G' /etc/etcd/pgha-tls "
                                  "/etc/etcd/pgha-tls/server.key /etc/patroni/tls "
                                  "/etc/patroni/tls/node.key").stdout.split("\n")
        assert out[:4] == ["/etc/etcd/pgha-tls 700 etcd:etcd", "/etc/etcd/pgha-tls/server.key 600 etcd:etcd",
                           "/etc/patroni/tls 700 postgres:postgres",
                           "/etc/patroni/tls/node.key 600 postgres:postgres"], (name, out)
    out = stack.lab.ssh("pg4", "sudo stat -c '%n %a %U:%G' /etc/haproxy/pgha-ca.crt").stdout.strip()
    assert out == "/etc/haproxy/pgha-ca.crt 644 root:root"


def test_no_plaintext_private_key_in_the_state(stack: TlsStack) -> None:
    exported = stack.project.run("stack", "export").stdout
    assert "TlsCertificate" in exported and "TlsFiles" in exported
    assert "PRIVATE KEY" not in exported


def test_second_preview_shows_no_change(stack: TlsStack) -> None:
    changes = stack.project.preview_changes()
    assert changes == {}, changes


def test_haproxy_checks_over_https(stack: TlsStack) -> None:
    text = stack.lab.ssh("pg4", "sudo cat /etc/haproxy/haproxy.cfg").stdout
    assert "check-ssl verify required ca-file /etc/haproxy/pgha-ca.crt" in text

    def servers_up() -> bool:
        status = backend_status("10.77.0.14", 7000)
        up = {proxy: [s for s, state in servers.items() if state == "UP"]
              for proxy, servers in status.items()}
        return len(up["pgha-lab_primary"]) == 1 and len(up["pgha-lab_replicas"]) == 2

    wait_until(servers_up, 30, "HAProxy's https checks: one primary and two replicas UP")


def _fingerprint(pem: str) -> str:
    return x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA256()).hex()


def _served(stack: TlsStack, address: str, port: int) -> str:
    """The SHA-256 fingerprint of the certificate a TLS port serves now."""
    if port == 5432:  # PostgreSQL's own TLS negotiation
        out = subprocess.run(["openssl", "s_client", "-starttls", "postgres", "-connect", f"{address}:{port}",
                              "-CAfile", str(stack.ca_file)], input="", capture_output=True, text=True,
                             timeout=20).stdout
        pem = out[out.index("-----BEGIN CERTIFICATE-----"):out.index("-----END CERTIFICATE-----") + 25]
        return _fingerprint(pem)
    ctx = ssl.create_default_context(cafile=str(stack.ca_file))
    ctx.load_cert_chain(*stack.client)
    with socket.create_connection((address, port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname=address) as conn:
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()


def _host_certs(stack: TlsStack) -> dict[tuple[str, int], str]:
    certs = {}
    for name, address in NODES.items():
        etcd = stack.lab.ssh(name, "sudo cat /etc/etcd/pgha-tls/server.crt").stdout
        node = stack.lab.ssh(name, "sudo cat /etc/patroni/tls/node.crt").stdout
        certs.update({(address, 2379): _fingerprint(etcd), (address, 8008): _fingerprint(node),
                      (address, 5432): _fingerprint(node)})
    return certs


def test_renewal_is_applied_host_by_host_without_a_restart(stack: TlsStack) -> None:
    """Certificates due for renewal (pgha:tls.renewBeforeDays now beyond what is left) are issued
    again, written on each host and read by the running services: etcd at its next handshake,
    Patroni's REST API and PostgreSQL on a reload; nothing restarts, the cluster stays whole."""
    before = _host_certs(stack)
    assert all(_served(stack, a, p) == fp for (a, p), fp in before.items())
    started = {n: requests.get(f"https://{a}:8008/patroni", verify=str(stack.ca_file), timeout=5).json()[
        "postmaster_start_time"] for n, a in NODES.items()}
    stack.config["tls"] = {"enabled": True, "validityDays": 400, "renewBeforeDays": 380}
    stack.project.write_config(stack.config)
    changes = stack.project.preview_changes()
    replaced = {**changes.get("create-replacement", {}), **changes.get("replace", {})}
    renewed = {"pgha-lab-tls-pg1-etcd", "pgha-lab-tls-pg2-patroni", "pgha-lab-tls-pgha-client"}
    assert renewed <= set(replaced), changes
    assert {"pgha-lab-patroni-tls-pg1", "pgha-lab-etcd-tls-pg3"} <= set(changes.get("update", {})), changes
    assert not any(n.startswith("pgha-lab-node-") for n in changes.get("update", {})), changes
    load = WriteLoad(*PRIMARY, stack.password)
    load.prepare("pgha_tls_renewal")
    load.start()
    try:
        load.assert_progressing()
        stack.project.run("up", "--yes", "--skip-preview")
        load.reset_counters()
        load.assert_progressing()
    finally:
        load.stop()
    assert load.missing() == [], "acknowledged writes lost"
    print(f"\nrenewal under writes: {len(load.acknowledged)} writes acknowledged, longest gap "
          f"{load.longest_window():.2f}s, {len(load.failures)} failed attempts")
    after = _host_certs(stack)
    assert all(after[k] != before[k] for k in before), "every host certificate renewed"
    served = {k: wait_until(lambda k=k: _served(stack, *k) == after[k] or None, 30, f"{k} serves the new one")
              for k in after}
    assert all(served.values())
    for name, address in NODES.items():
        status = requests.get(f"https://{address}:8008/patroni", verify=str(stack.ca_file), timeout=5).json()
        assert status["postmaster_start_time"] == started[name], (name, "PostgreSQL was restarted")
    out = stack.lab.ssh("pg1", "sudo -u postgres patronictl -c /etc/patroni/patroni.yml list").stdout
    assert out.count("streaming") == 2, out
    assert stack.project.preview_changes() == {}


def test_a_key_file_changed_on_a_host_is_drift_repaired_by_up(stack: TlsStack) -> None:
    """TlsFiles reads its files back on a refresh: a key left world-readable is drift, and the next
    `up` writes it again (0600 postgres) and reloads that node's Patroni only."""
    key = "/etc/patroni/tls/node.key"
    stack.lab.ssh("pg2", f"sudo chmod 0644 {key}")
    stack.project.run("refresh", "--run-program", "--yes")
    changes = stack.project.preview_changes()
    assert set(changes) == {"update"} and set(changes["update"]) == {"pgha-lab-patroni-tls-pg2"}, changes
    stack.project.run("up", "--yes", "--skip-preview")
    assert stack.lab.ssh("pg2", f"sudo stat -c '%a %U:%G' {key}").stdout.strip() == "600 postgres:postgres"
    assert stack.project.preview_changes() == {}
    out = stack.lab.ssh("pg2", "sudo -u postgres patronictl -c /etc/patroni/patroni.yml list").stdout
    assert out.count("streaming") == 2, out


def test_rest_api_client_certificates_required_on_a_running_cluster(stack: TlsStack) -> None:
    """pgha:tls.restApiVerifyClient `required`, applied by `up` to the running cluster: every call
    to Patroni's REST API, GET included, needs a certificate of the cluster's CA; HAProxy's checks
    show their own, pgha's calls and patronictl on the nodes theirs; PostgreSQL does not restart."""
    started = {n: requests.get(f"https://{a}:8008/patroni", verify=str(stack.ca_file), timeout=5).json()[
        "postmaster_start_time"] for n, a in NODES.items()}
    stack.config["tls"] = {**stack.config["tls"], "restApiVerifyClient": "required"}
    stack.project.write_config(stack.config)
    stack.project.run("up", "--yes", "--skip-preview")
    for name, address in NODES.items():
        url = f"https://{address}:8008/patroni"
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url, verify=str(stack.ca_file), timeout=5)  # no client certificate
        status = requests.get(url, verify=str(stack.ca_file), cert=stack.client, timeout=5).json()
        assert status["state"] == "running" and status["postmaster_start_time"] == started[name], status
    text = stack.lab.ssh("pg4", "sudo cat /etc/haproxy/haproxy.cfg").stdout
    assert "crt /etc/haproxy/pgha-client.pem" in text, text

    def servers_up() -> bool:
        status = backend_status("10.77.0.14", 7000)
        up = {proxy: [s for s, state in servers.items() if state == "UP"]
              for proxy, servers in status.items()}
        return len(up["pgha-lab_primary"]) == 1 and len(up["pgha-lab_replicas"]) == 2

    wait_until(servers_up, 30, "HAProxy's checks with its client certificate: one primary, two replicas UP")
    out = stack.lab.ssh("pg2", "sudo -u postgres patronictl -c /etc/patroni/patroni.yml list").stdout
    assert out.count("streaming") == 2, out
    assert stack.project.preview_changes() == {}


def _chains_to(stack: TlsStack, ca_file: Path, address: str, port: int) -> bool:
    """Whether the certificate a TLS port serves now verifies against `ca_file` alone."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.load_cert_chain(*stack.client)
    try:
        with socket.create_connection((address, port), timeout=5) as sock, \
                ctx.wrap_socket(sock, server_hostname=address):
            return True
    except ssl.SSLCertVerificationError:
        return False


def _every_port_serves(stack: TlsStack, ca_file: Path, what: str) -> None:
    """Every node's etcd and REST port serves a certificate that `ca_file` alone verifies."""
    for address in NODES.values():
        for port in (2379, 8008):
            assert wait_until(lambda a=address, p=port: _chains_to(stack, ca_file, a, p), 30,
                              f"{address}:{port} serving a certificate of {what}")


def _patronictl_works_on_every_node(stack: TlsStack) -> None:
    """Each node's patronictl shows its current certificate to etcd and to the other nodes' REST
    APIs: refused (or hanging) while a member trusts only another CA."""
    for name in NODES:
        out = stack.lab.ssh(name, "sudo -u postgres timeout 30 patronictl -c /etc/patroni/patroni.yml list",
                            check=False)
        assert out.returncode == 0 and out.stdout.count("streaming") == 2, (name, out.stdout, out.stderr)


def test_ca_rotation_under_write_load(stack: TlsStack) -> None:
    """The CA can no longer sign a full-term host certificate (tls.validityDays beyond what it has
    left): `up` rotates it in place under a write load. The new CA goes out beside the old one,
    every host certificate is issued again by the new CA and served after a reload; a client
    certificate of the old CA is still accepted; 0 acknowledged writes lost; no restart."""
    old_ca = x509.load_pem_x509_certificates(stack.ca_file.read_bytes())[0]
    started = {n: requests.get(f"https://{a}:8008/patroni", verify=str(stack.ca_file), cert=stack.client,
                               timeout=5).json()["postmaster_start_time"] for n, a in NODES.items()}
    load = WriteLoad(*PRIMARY, stack.password)
    load.prepare("pgha_tls_load")
    load.start()
    try:
        load.assert_progressing()
        stack.config["tls"] = {**stack.config["tls"], "validityDays": 3650, "caValidityDays": 7300}
        stack.project.write_config(stack.config)
        changes = stack.project.preview_changes()
        assert "pgha-lab-ca" in changes.get("update", {}), changes
        assert "pgha-lab-tls-trust" in changes.get("update", {}), changes
        review = stack.project.last_review
        assert "etcd restarts one member at a time (pg1, pg2, pg3; the raft leader last)" in review, review
        t0 = time.monotonic()
        up = stack.project.run("up", "--yes", "--skip-preview")
        took = time.monotonic() - t0
        load.reset_counters()
        load.assert_progressing()
    finally:
        load.stop()
    assert load.missing() == [], "acknowledged writes lost"
    # The first phase: the bundle everywhere, etcd restarted one member at a time, before any new
    # certificate.
    restarted = {address for line in up.stdout.splitlines() if "etcd restarted: it trusts the new CA" in line
                 for address in NODES.values() if f"{address}: etcd restarted" in line}
    assert restarted == set(NODES.values()), up.stdout[-3000:]
    print(f"\nCA rotation under writes: up {took:.1f}s, {len(load.acknowledged)} writes acknowledged, "
          f"longest gap {load.longest_window():.2f}s, {len(load.failures)} failed attempts")
    outputs = json.loads(stack.project.run("stack", "output", "--json", "--show-secrets").stdout)
    trusted = x509.load_pem_x509_certificates(outputs["tlsCa"].encode())
    assert len(trusted) == 2 and old_ca in trusted, "the old CA stays trusted beside the new one"
    new_ca = next(c for c in trusted if c != old_ca)
    bundle = stack.ca_file.with_name("trust.crt")
    bundle.write_text(outputs["tlsCa"])
    new_only = stack.ca_file.with_name("new-ca.crt")
    new_only.write_bytes(new_ca.public_bytes(Encoding.PEM))
    _every_port_serves(stack, new_only, "the new CA")
    # The old CA's client certificate (pg1's first one) is still accepted: etcd and the REST API.
    for name, address in NODES.items():
        resp = requests.get(f"https://{address}:2379/health", verify=str(bundle), cert=stack.client,
                            timeout=5)
        assert resp.status_code == 200, resp.text
        status = requests.get(f"https://{address}:8008/patroni", verify=str(bundle), cert=stack.client,
                              timeout=5).json()
        assert status["postmaster_start_time"] == started[name], (name, "PostgreSQL was restarted")
    host, port = PRIMARY
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", password=stack.password,
                         sslmode="verify-full", sslrootcert=str(bundle), connect_timeout=5) as conn:
        walsenders = conn.execute(
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)").fetchall()
    assert len(walsenders) == 2 and all(ssl_on for (ssl_on,) in walsenders), walsenders
    _patronictl_works_on_every_node(stack)
    # HAProxy's checks show its new client certificate (restApiVerifyClient: required).
    test_haproxy_checks_over_https(stack)
    assert stack.project.preview_changes() == {}


def test_ca_rotation_on_demand_keeps_every_valid_ca_trusted(stack: TlsStack) -> None:
    """pgha:tls.caGeneration raised: a second rotation while both earlier CAs are valid. The
    trusted CAs become three (none that may have signed a certificate in use is dropped); every
    port serves a certificate of the newest CA; patronictl works on every node."""
    before = json.loads(stack.project.run("stack", "output", "--json", "--show-secrets").stdout)["tlsCa"]
    stack.config["tls"] = {**stack.config["tls"], "caGeneration": 2}
    stack.project.write_config(stack.config)
    changes = stack.project.preview_changes()
    assert "pgha-lab-ca" in changes.get("update", {}) and "pgha-lab-tls-trust" in changes.get("update", {})
    stack.project.run("up", "--yes", "--skip-preview")
    outputs = json.loads(stack.project.run("stack", "output", "--json", "--show-secrets").stdout)
    trusted = x509.load_pem_x509_certificates(outputs["tlsCa"].encode())
    assert len(trusted) == 3 and all(c in trusted for c in x509.load_pem_x509_certificates(before.encode()))
    newest = trusted[0]
    assert newest.subject.rfc4514_string() == "CN=pgha pgha-lab cluster CA 2"
    only = stack.ca_file.with_name("gen2-ca.crt")
    only.write_bytes(newest.public_bytes(Encoding.PEM))
    _every_port_serves(stack, only, "the CA of generation 2")
    _patronictl_works_on_every_node(stack)
    assert stack.project.preview_changes() == {}


def test_destroy_removes_the_certificate_files(stack: TlsStack) -> None:
    """Last: destroy succeeds with TLS (pgha's calls with its client certificate from the state)
    and removes the files after the services that read them."""
    stack.project.run("destroy", "--yes", "--skip-preview")
    for name in NODES:
        out = stack.lab.ssh(name, "sudo ls -d /etc/etcd/pgha-tls /etc/patroni/tls 2>&1 || true").stdout
        assert out.count("No such file or directory") == 2, (name, out)
    out = stack.lab.ssh("pg4", "sudo ls /etc/haproxy/").stdout.split()
    assert "pgha-ca.crt" not in out and "haproxy.cfg" in out, out

"""etcd (the lab image's binary) with pgha:tls's /etc/default/etcd: https for clients and peers
with client certificates required; pgha's transport (EtcdGateway, the peer member list) through
its tls_client identity; plaintext and a client without a certificate refused; a certificate
replaced in place is served at the next handshake (what a renewal relies on: TlsFiles does not
restart etcd).

Runs one throwaway member on 127.0.0.2 (no lab hosts): needs an etcd binary, PGHA_ETCD_BIN or
the lab image's."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding

from components import render, tls
from components.providers.etcd_member import env_settings, served_members
from components.tls import CertificateRequest
from components.transport.rest import EtcdGateway
from components.transport.tls_client import client_tls

pytestmark = pytest.mark.local
ADDRESS = "127.0.0.2"


def _etcd_bin() -> str | None:
    found = [os.environ.get("PGHA_ETCD_BIN", ""), shutil.which("etcd") or "",
             *sorted(glob.glob("/var/cache/pgha-lab/image-*/rootfs/usr/bin/etcd"))]
    return next((f for f in found if f and os.access(f, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return int(s.getsockname()[1])


def _served(port: int, ca: str, cert: tuple[str, str]) -> str:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(*cert)
    with socket.create_connection((ADDRESS, port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname=ADDRESS) as conn:
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()


class Member:
    def __init__(self, work: Path, ca: tls.KeyAndCertificate, client: tls.KeyAndCertificate,
                 client_port: int, peer_port: int) -> None:
        self.work, self.client_port, self.peer_port = work, client_port, peer_port
        self.material = {"ca_pem": ca.cert_pem, "cert_pem": client.cert_pem, "key_pem": client.key_pem}
        self.ca_file = str(work / "ca.crt")
        self.client_files = (str(work / "client.crt"), str(work / "client.key"))


def _server_cert(ca: tls.KeyAndCertificate) -> tls.KeyAndCertificate:
    return tls.issue(ca, CertificateRequest(common_name="pg1", dns_names=("pg1", "localhost"),
                                            ip_addresses=(ADDRESS, "127.0.0.1"), server=True, client=True,
                                            validity_days=30))


@pytest.fixture()
def member() -> Iterator[Member]:
    binary = _etcd_bin()
    if binary is None:
        pytest.skip("needs an etcd binary (PGHA_ETCD_BIN, PATH or the lab image)")
    work = Path(tempfile.mkdtemp(prefix="pgha-tls-etcd-"))
    ca = tls.create_ca("pgha local CA", 30)
    server = _server_cert(ca)
    client = tls.issue(ca, CertificateRequest(common_name="pgha local", dns_names=("pgha-client",),
                                              client=True, validity_days=30))
    for name, text in (("ca.crt", ca.cert_pem), ("server.crt", server.cert_pem),
                       ("server.key", server.key_pem), ("client.crt", client.cert_pem),
                       ("client.key", client.key_pem)):
        (work / name).write_text(text)
        (work / name).chmod(0o600)
    client_port, peer_port = _free_port(), _free_port()
    spec = {"name": "pg1", "address": ADDRESS, "client_port": client_port, "peer_port": peer_port,
            "data_dir": str(work / "data"), "cluster_token": "pgha-local",
            "tls": {"ca_file": str(work / "ca.crt"), "cert_file": str(work / "server.crt"),
                    "key_file": str(work / "server.key")}}
    text = render.etcd_env(spec, f"pg1=https://{ADDRESS}:{peer_port}", "new")
    env = {**os.environ, **env_settings(text)}
    # The template also listens on the loopback's client port (127.0.0.1:2379 on a host): here a
    # free one, so that a local etcd on 2379 does not collide.
    env["ETCD_LISTEN_CLIENT_URLS"] = f"https://{ADDRESS}:{client_port}"
    log = (work / "etcd.log").open("w")
    proc = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    m = Member(work, ca, client, client_port, peer_port)
    m.ca_key = ca  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + 30
        with client_tls(m.material):
            while not EtcdGateway(f"https://{ADDRESS}:{client_port}").healthy():
                assert proc.poll() is None, (work / "etcd.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "etcd did not become healthy within 30 s"
                time.sleep(0.3)
        yield m
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


def test_etcd_env_serves_https_with_client_certificates(member: Member) -> None:
    url = f"https://{ADDRESS}:{member.client_port}"
    with client_tls(member.material):
        gateway = EtcdGateway(url)
        assert gateway.healthy()
        gateway.put("/service/pgha-local/x", "1")
        assert gateway.get("/service/pgha-local/x") == "1"
        # pgha reads the member list from the client port with TLS (the peer port admits only
        # certificates naming the caller's address: etcd's peers).
        peer = f"https://{ADDRESS}:{member.peer_port}"
        served = served_members({"tls": {"ca_file": member.ca_file}, "client_port": member.client_port}, peer)
        assert served and served[0]["peerURLs"] == [peer] and served[0]["clientURLs"] == [url], served
    # A peer's certificate (it names the address it connects from) is admitted on the peer port.
    resp = requests.get(f"{peer}/members", verify=member.ca_file,
                        cert=(str(member.work / "server.crt"), str(member.work / "server.key")), timeout=5)
    assert resp.status_code == 200 and resp.json()[0]["peerURLs"] == [peer]
    # Plaintext: etcd 3.4 closes the connection; without pgha's identity no gateway call succeeds.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{ADDRESS}:{member.client_port}/health", timeout=5)
    assert not EtcdGateway(url).healthy()
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{url}/health", verify=member.ca_file, timeout=5)  # no client certificate


def test_a_certificate_replaced_in_place_is_served_at_the_next_handshake(member: Member) -> None:
    before = _served(member.client_port, member.ca_file, member.client_files)
    renewed = _server_cert(member.ca_key)  # type: ignore[attr-defined]
    (member.work / "server.crt").write_text(renewed.cert_pem)
    (member.work / "server.key").write_text(renewed.key_pem)
    want = hashlib.sha256(tls.load_certificate(renewed.cert_pem).public_bytes(Encoding.DER)).hexdigest()
    assert want != before
    for port in (member.client_port, member.peer_port):
        assert _served(port, member.ca_file, member.client_files) == want, port

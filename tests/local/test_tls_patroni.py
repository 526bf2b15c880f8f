"""Patroni (the lab's wheelhouse) with pgha:tls's patroni.yml, against etcd with TLS (the lab
image's binary) and this machine's PostgreSQL 15: etcd3 over https with the node's certificate,
the REST API over https (unsafe requests need a client certificate of the CA), patronictl with
the `ctl` section, PostgreSQL with ssl on; a certificate replaced in place is served by the
REST API after a SIGHUP (what TlsFiles' reload does on a renewal), without a PostgreSQL restart.

One throwaway node on 127.0.0.3 (root, no lab hosts)."""

from __future__ import annotations

import os
import shutil
import signal
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

from components import render, specs, tls
from components.config import load_cluster_config
from components.tls import CertificateRequest
from components.transport.rest import PatroniApi
from components.transport.tls_client import client_tls
from tests.local.test_tls_etcd import ADDRESS as ETCD_ADDRESS
from tests.local.test_tls_etcd import Member, member  # noqa: F401 - the etcd fixture
from tests.unit.configs import lab_raw

pytestmark = pytest.mark.local
ADDRESS = "127.0.0.3"
BIN = Path("/usr/lib/postgresql/15/bin")
WHEELHOUSE = Path("/var/cache/pgha-lab/wheelhouse")
VENV = Path("/tmp/pgha-tls-local-patroni-venv")
SECRETS = {"superuser": "su-Pw_1", "replication": "repl-Pw_1", "rewind": "rw-Pw_1", "restapi": "api-Pw_1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return int(s.getsockname()[1])


def _venv() -> Path:
    if not (VENV / "bin" / "patroni").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True)  # not /root's pyenv
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--no-index", "--find-links",
                        str(WHEELHOUSE), "patroni[etcd3]", "psycopg2-binary"], check=True)
    return VENV


def _node_cert(ca: tls.KeyAndCertificate) -> tls.KeyAndCertificate:
    return tls.issue(ca, CertificateRequest(common_name="pg1", dns_names=("pg1", "localhost"),
                                            ip_addresses=(ADDRESS, "127.0.0.1"), server=True, client=True,
                                            validity_days=30))


class Node:
    def __init__(self, work: Path, url: str, ca: tls.KeyAndCertificate, config: Path, runuser: int) -> None:
        self.work, self.url, self.ca, self.config, self.runuser = work, url, ca, config, runuser
        self.ca_file = str(work / "tls" / "ca.crt")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)
    shutil.chown(path, "postgres", "postgres")


@pytest.fixture()
def node(member: Member) -> Iterator[Node]:  # noqa: F811 - the imported fixture
    if os.geteuid() != 0 or not (BIN / "initdb").exists() or not WHEELHOUSE.is_dir():
        pytest.skip("needs root, PostgreSQL 15 binaries and the lab's wheelhouse")
    venv = _venv()
    ca: tls.KeyAndCertificate = member.ca_key  # type: ignore[attr-defined]
    work = Path(tempfile.mkdtemp(prefix="pgha-tls-patroni-", dir="/tmp"))
    shutil.chown(work, "postgres", "postgres")
    (work / "tls").mkdir(mode=0o700)
    shutil.chown(work / "tls", "postgres", "postgres")
    cert = _node_cert(ca)
    _write(work / "tls" / "ca.crt", ca.cert_pem)
    _write(work / "tls" / "node.crt", cert.cert_pem)
    _write(work / "tls" / "node.key", cert.key_pem, 0o600)
    raw = lab_raw()
    raw["tls"] = {"enabled": True}
    cfg = load_cluster_config(raw, set())
    host = cfg.with_role("patroni")[0]
    rest_port, pg_port = _free_port(), _free_port()
    spec = specs.patroni_node_spec(cfg, host)
    spec.update(address=ADDRESS, restapi_port=rest_port, pg_port=pg_port,
                etcd_hosts=[f"{ETCD_ADDRESS}:{member.client_port}"], data_dir=str(work / "data"),
                bin_dir=str(BIN), pgpass=str(work / "pgpass"), socket_dir=str(work),
                scope="pgha-local", tls={**spec["tls"], "ca_file": str(work / "tls" / "ca.crt"),
                                         "cert_file": str(work / "tls" / "node.crt"),
                                         "key_file": str(work / "tls" / "node.key")})
    spec["bootstrap"]["dcs"]["parameters"].pop("shared_preload_libraries", None)
    config = work / "patroni.yml"
    _write(config, render.patroni_yml(spec, SECRETS), 0o600)
    log = (work / "patroni.log").open("w")
    proc = subprocess.Popen(["runuser", "-u", "postgres", "--", str(venv / "bin" / "patroni"), str(config)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    n = Node(work, f"https://{ADDRESS}:{rest_port}", ca, config, proc.pid)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (work / "patroni.log").read_text()[-3000:]
            try:
                status = requests.get(f"{n.url}/patroni", verify=n.ca_file, timeout=3).json()
                if status.get("role") == "primary" and status.get("state") == "running":
                    break
            except (requests.RequestException, ValueError):
                pass
            assert time.monotonic() < deadline, (work / "patroni.log").read_text()[-3000:]
            time.sleep(1)
        yield n
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


def _served(url: str, ca_file: str) -> str:
    host, port = url.removeprefix("https://").split(":")
    ctx = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection((host, int(port)), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname=host) as conn:
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        return der.hex()


def test_patroni_with_tls_settings(node: Node, member: Member) -> None:  # noqa: F811
    # Plaintext to the REST API fails; https with the CA answers.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(node.url.replace("https://", "http://") + "/patroni", timeout=5)
    assert requests.get(f"{node.url}/patroni", verify=node.ca_file, timeout=5).json()["role"] == "primary"
    # verify_client optional: an unsafe request needs a client certificate of the CA.
    api = PatroniApi(node.url, auth=("patroni", SECRETS["restapi"]))
    refused = requests.post(f"{node.url}/reload", verify=node.ca_file, auth=api.auth, timeout=5)
    assert refused.status_code == 403, (refused.status_code, refused.text)
    with client_tls(member.material):
        assert api.reload().status_code in (200, 202)
    # patronictl on the node: the DCS over https and the ctl section.
    out = subprocess.run(["runuser", "-u", "postgres", "--", str(VENV / "bin" / "patronictl"), "-c",
                          str(node.config), "list"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "pg1" in out.stdout and "Leader" in out.stdout, out.stdout + out.stderr
    ssl_on = subprocess.run(["runuser", "-u", "postgres", "--", str(BIN / "psql"), "-XAt",
                             "-h", str(node.work), "-p", str(_port_of(node)), "-d", "postgres",
                             "-c", "SHOW ssl"],
                            capture_output=True, text=True, timeout=30)
    assert ssl_on.stdout.strip() == "on", ssl_on.stdout + ssl_on.stderr


def _port_of(node: Node) -> int:
    import yaml

    listen = yaml.safe_load(node.config.read_text())["postgresql"]["connect_address"]
    return int(listen.rsplit(":", 1)[1])


def test_a_renewed_certificate_is_served_after_a_sighup(node: Node) -> None:
    status = requests.get(f"{node.url}/patroni", verify=node.ca_file, timeout=5).json()
    started = status["postmaster_start_time"]
    renewed = _node_cert(node.ca)
    _write(node.work / "tls" / "node.crt", renewed.cert_pem)
    _write(node.work / "tls" / "node.key", renewed.key_pem, 0o600)
    want = tls.load_certificate(renewed.cert_pem).public_bytes(Encoding.DER).hex()
    assert _served(node.url, node.ca_file) != want
    # Patroni is runuser's child (systemctl reload patroni: SIGHUP to the main process).
    pids = subprocess.run(["pgrep", "-P", str(node.runuser)], capture_output=True, text=True).stdout.split()
    assert len(pids) == 1, pids
    os.kill(int(pids[0]), signal.SIGHUP)
    deadline = time.monotonic() + 60

    def served() -> str:
        # Patroni swaps its REST server's socket to apply new certificates: a handshake in that
        # moment may be reset (seen once in CI). The old certificate keeps being served meanwhile.
        try:
            return _served(node.url, node.ca_file)
        except (ConnectionError, ssl.SSLError) as err:
            return f"no handshake: {err}"

    while (got := served()) != want:
        assert time.monotonic() < deadline, ("the REST API still serves the old certificate", got,
                                             (node.work / "patroni.log").read_text()[-2000:])
        time.sleep(0.5)
    status = requests.get(f"{node.url}/patroni", verify=node.ca_file, timeout=5).json()
    assert status["postmaster_start_time"] == started and status["state"] == "running"

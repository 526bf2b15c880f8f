"""PostgreSQL 15 of this machine with pgha:tls's settings: the certificate and key the stack
issues, `ssl` and the file parameters patroni.yml carries, pg_hba's hostssl lines; libpq
(psycopg) connects with sslmode=verify-full against the cluster CA, and refuses a wrong name.

Runs a throwaway server as the postgres user on a loopback port (root, no lab hosts)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from components import render, specs, tls
from components.config import load_cluster_config
from components.tls_plan import planned_certificates
from tests.unit.configs import base_raw

pytestmark = pytest.mark.local
BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "local-Pw_1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                          check=False, timeout=120)


@pytest.fixture()
def server() -> Iterator[tuple[int, str]]:
    if os.geteuid() != 0 or not (BIN / "initdb").exists():
        pytest.skip("needs root and PostgreSQL 15 binaries (/usr/lib/postgresql/15/bin)")
    raw = base_raw()
    raw["clientCidrs"] = ["127.0.0.0/8"]
    cfg = load_cluster_config(raw, {"superuserPassword", "replicationPassword", "rewindPassword",
                                    "restApiPassword", "rolePasswords"})
    work = Path(tempfile.mkdtemp(prefix="pgha-tls-pg-", dir="/tmp"))
    shutil.chown(work, "postgres", "postgres")
    try:
        ca = tls.create_ca("pgha local CA", 30)
        # pg1's Patroni certificate, but naming the loopback this server listens on (it does).
        node = tls.issue(ca, planned_certificates(cfg)["pg1-patroni"].request)
        for name, text in (("ca.crt", ca.cert_pem), ("node.crt", node.cert_pem), ("node.key", node.key_pem)):
            (work / name).write_text(text)
            (work / name).chmod(0o600)
            shutil.chown(work / name, "postgres", "postgres")
        (work / "pw").write_text(PASSWORD)
        shutil.chown(work / "pw", "postgres", "postgres")
        data = work / "data"
        init = _as_postgres(str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                            f"--pwfile={work / 'pw'}")
        assert init.returncode == 0, init.stderr
        # The parameters and pg_hba exactly as patroni.yml would carry them, minus the loopback
        # `host` lines (so a loopback client meets the hostssl line for clientCidrs).
        spec = {**specs.patroni_node_spec(cfg, cfg.hosts[0]), "pg_hba": specs.pg_hba(cfg, ssl=True),
                "tls": {"ca_file": str(work / "ca.crt"), "cert_file": str(work / "node.crt"),
                        "key_file": str(work / "node.key"), "verify_client": "optional",
                        "sslmode": "verify-full"}}
        doc = yaml.safe_load(render.patroni_yml(spec, {k: "x" for k in
                                                      ("superuser", "replication", "rewind", "restapi")}))
        params = {k: v for k, v in doc["postgresql"]["parameters"].items() if k.startswith("ssl")}
        hba = [line for line in doc["postgresql"]["pg_hba"]
               if "127.0.0.1/32" not in line and "::1" not in line]
        (data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        port = _free_port()
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
                       f"unix_socket_directories = '{work}'\n")
            for key, value in params.items():
                conf.write(f"{key} = '{value}'\n")
        start = _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(work / "log"), "-w", "start")
        assert start.returncode == 0, start.stderr + (work / "log").read_text()
        try:
            yield port, str(work / "ca.crt")
        finally:
            _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
    finally:
        time.sleep(0.1)
        shutil.rmtree(work, ignore_errors=True)


def _connect(port: int, **params: str) -> psycopg.Connection:
    return psycopg.connect(host=params.pop("host", "127.0.0.1"), port=port, user="postgres",
                           dbname="postgres", password=PASSWORD, connect_timeout=5, **params)


def test_verify_full_over_hostssl(server: tuple[int, str]) -> None:
    port, ca_file = server
    for host in ("127.0.0.1", "localhost"):
        with _connect(port, host=host, sslmode="verify-full", sslrootcert=ca_file) as conn:
            row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
            assert row is not None and row[0] is True and row[1].startswith("TLSv1."), row


def test_a_client_of_the_balancer_verifies_its_name(server: tuple[int, str]) -> None:
    """Through HAProxy (TCP passthrough) a client dials the balancer (pg4, 10.77.0.14) and gets the
    node's certificate: it names the balancer too. libpq checks `host` while connecting to
    `hostaddr`, which stands in for the balancer here."""
    port, ca_file = server
    with _connect(port, host="pg4", hostaddr="127.0.0.1", sslmode="verify-full", sslrootcert=ca_file) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _connect(port, host="pg2", hostaddr="127.0.0.1", sslmode="verify-full", sslrootcert=ca_file)


def test_plaintext_is_refused_by_hostssl(server: tuple[int, str]) -> None:
    port, _ = server
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        _connect(port, sslmode="disable")


def test_a_client_trusting_another_ca_refuses_the_server(server: tuple[int, str], tmp_path: Path) -> None:
    port, _ = server
    other = tmp_path / "other-ca.crt"
    other.write_text(tls.create_ca("pgha local CA", 30).cert_pem)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _connect(port, sslmode="verify-full", sslrootcert=str(other))

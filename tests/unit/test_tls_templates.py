"""The host files with pgha:tls: etcd on https with client certificates, Patroni's REST API,
etcd3 client, patronictl and PostgreSQL with the cluster CA, pg_hba's remote lines hostssl,
HAProxy's checks over https. With TLS off, the files are those of a plaintext cluster."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import render, specs
from components.config import ClusterConfig, load_cluster_config
from components.tls_plan import etcd_tls, haproxy_tls, patroni_tls
from tests.unit.configs import lab_raw

SECRETS = {"superuser": "su", "replication": "repl", "rewind": "rw", "restapi": "api"}


def _lab(**tls: Any) -> ClusterConfig:
    raw = lab_raw()
    raw["tls"] = {"enabled": True, **tls}  # the lab stack turns it off
    return load_cluster_config(raw, set())


def _patroni(cfg: ClusterConfig, index: int = 0) -> dict[str, Any]:
    host = cfg.with_role("patroni")[index]
    spec = {**specs.patroni_node_spec(cfg, host), "tls": patroni_tls(cfg),
            "pg_hba": specs.pg_hba(cfg, ssl=cfg.tls.enabled)}
    return yaml.safe_load(render.patroni_yml(spec, SECRETS))


def _env(text: str) -> dict[str, str]:
    return dict(re.fullmatch(r'([A-Z0-9_]+)="(.*)"', line).groups()  # type: ignore[union-attr]
                for line in text.splitlines() if line and not line.startswith("#"))


def test_patroni_yml_with_tls() -> None:
    doc = _patroni(_lab())
    files = {"cafile": "/etc/patroni/tls/ca.crt", "certfile": "/etc/patroni/tls/node.crt",
             "keyfile": "/etc/patroni/tls/node.key"}
    restapi = doc["restapi"]
    assert {k: restapi[k] for k in files} == files
    assert restapi["verify_client"] == "optional"
    assert restapi["authentication"] == {"username": "patroni", "password": "api"}
    assert doc["ctl"] == {"insecure": False, "cacert": files["cafile"], "certfile": files["certfile"],
                          "keyfile": files["keyfile"]}
    etcd3 = doc["etcd3"]
    assert (etcd3["protocol"], etcd3["cacert"], etcd3["cert"], etcd3["key"]) == (
        "https", files["cafile"], files["certfile"], files["keyfile"])
    assert etcd3["hosts"] == ["10.77.0.11:2379", "10.77.0.12:2379", "10.77.0.13:2379"]
    params = doc["postgresql"]["parameters"]
    assert params["ssl"] == "on"
    assert (params["ssl_cert_file"], params["ssl_key_file"], params["ssl_ca_file"]) == (
        files["certfile"], files["keyfile"], files["cafile"])
    auth = doc["postgresql"]["authentication"]
    for user in ("replication", "rewind"):
        assert (auth[user]["sslmode"], auth[user]["sslrootcert"]) == ("verify-full", files["cafile"])
    assert "sslmode" not in auth["superuser"], "the superuser connects locally (unix socket)"


def test_patroni_yml_settings_follow_the_config() -> None:
    doc = _patroni(_lab(restApiVerifyClient="required", replicationSslMode="verify-ca"))
    assert doc["restapi"]["verify_client"] == "required"
    assert doc["postgresql"]["authentication"]["replication"]["sslmode"] == "verify-ca"


def test_patroni_yml_without_tls_is_plaintext() -> None:
    doc = _patroni(_lab(enabled=False))
    assert "ctl" not in doc and "protocol" not in doc["etcd3"] and "certfile" not in doc["restapi"]
    assert "ssl" not in doc["postgresql"]["parameters"]
    assert not any(line.startswith("hostssl") for line in doc["postgresql"]["pg_hba"])


def test_pg_hba_remote_lines_are_hostssl() -> None:
    cfg = _lab()
    hba = specs.pg_hba(cfg, ssl=True)
    plain = specs.pg_hba(cfg)
    assert hba.keys() == plain.keys()
    for key, line in hba.items():
        kind = line.split()[0]
        remote = key.split()[0] in (specs.HBA_REPLICATION, specs.HBA_REWIND, specs.HBA_BALANCER,
                                    specs.HBA_CLIENT)
        assert kind == ("hostssl" if remote else plain[key].split()[0]), (key, line)
        assert line.split()[1:] == plain[key].split()[1:], "only the connection type changes"
        assert line.endswith(("scram-sha-256", "peer")), line
    assert hba["20 replication pg2"].split() == ["hostssl", "replication", "replicator", "10.77.0.12/32",
                                                 "scram-sha-256"]


def test_etcd_env_with_tls() -> None:
    cfg = _lab()
    host = cfg.with_role("etcd")[1]
    spec = {**specs.etcd_member_spec(cfg, host), "tls": etcd_tls(cfg)}
    env = _env(render.etcd_env(spec, "pg1=https://10.77.0.11:2380", "new"))
    assert env["ETCD_LISTEN_PEER_URLS"] == env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == "https://10.77.0.12:2380"
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "https://10.77.0.12:2379,https://127.0.0.1:2379"
    assert env["ETCD_ADVERTISE_CLIENT_URLS"] == "https://10.77.0.12:2379"
    assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    for side in ("", "PEER_"):
        assert env[f"ETCD_{side}TRUSTED_CA_FILE"] == "/etc/etcd/pgha-tls/ca.crt"
        assert env[f"ETCD_{side}CERT_FILE"] == "/etc/etcd/pgha-tls/server.crt"
        assert env[f"ETCD_{side}KEY_FILE"] == "/etc/etcd/pgha-tls/server.key"
    plain = _env(render.etcd_env(specs.etcd_member_spec(_lab(enabled=False), host), "x", "new"))
    assert plain["ETCD_LISTEN_CLIENT_URLS"] == "http://10.77.0.12:2379,http://127.0.0.1:2379"
    assert not [k for k in plain if "CERT" in k or "CA_FILE" in k]


def _haproxy(cfg: ClusterConfig) -> str:
    return render.haproxy_cfg({**specs.haproxy_spec(cfg), "tls": haproxy_tls(cfg)})


def test_haproxy_checks_over_https() -> None:
    cfg = _lab()
    text = _haproxy(cfg)
    defaults = [line.strip() for line in text.splitlines() if line.strip().startswith("default-server")]
    assert len(defaults) == 2
    for line in defaults:
        assert line.endswith("on-marked-down shutdown-sessions check-ssl verify required "
                             "ca-file /etc/haproxy/pgha-ca.crt"), line
    servers = [line.strip() for line in text.splitlines() if line.strip().startswith("server ")]
    assert servers == [f"server {h.name} {h.address}:5432 maxconn 150 check port 8008 verifyhost {h.name}"
                       for h in cfg.with_role("patroni")] * 2
    assert " ssl " not in text, "PostgreSQL's own traffic is not wrapped by HAProxy"
    required = _haproxy(_lab(restApiVerifyClient="required"))
    assert "ca-file /etc/haproxy/pgha-ca.crt crt /etc/haproxy/pgha-client.pem" in required


def test_haproxy_cfg_with_tls_accepted_by_haproxy(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed on this machine")
    text = _haproxy(_lab(restApiVerifyClient="required"))
    from components import tls

    ca = tls.create_ca("t", 30)
    client = tls.issue(ca, tls.CertificateRequest("pg4", ("pg4",), client=True))
    (tmp_path / "ca.crt").write_text(ca.cert_pem)
    (tmp_path / "client.pem").write_text(client.cert_pem + client.key_pem)
    text = text.replace("/etc/haproxy/pgha-ca.crt", str(tmp_path / "ca.crt"))
    text = text.replace("/etc/haproxy/pgha-client.pem", str(tmp_path / "client.pem"))
    text = "\n".join(line for line in text.splitlines() if "stats socket" not in line) + "\n"
    (tmp_path / "haproxy.cfg").write_text(text)
    result = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

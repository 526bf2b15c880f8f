"""The rendered host files: valid syntax, the runbook's settings, and secrets that round-trip."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import render, specs
from components.config import ClusterConfig, Host, load_cluster_config
from tests.unit.configs import lab_raw

# YAML-hostile on purpose: quotes, ': ', ' #', a leading '&' / '*' / '!', backslash, braces.
SECRETS = {
    "superuser": "su: \"quoted\" 'single' #not-a-comment",
    "replication": "&anchor *alias !tag {flow} [seq]",
    "rewind": "back\\slash: % @ ` | > é",
    "restapi": "- dash, colon: and # hash",
}


@pytest.fixture(scope="module")
def lab() -> ClusterConfig:
    return load_cluster_config(lab_raw(), set())


def _patroni_doc(cfg: ClusterConfig, host: Host, secrets: dict[str, str] = SECRETS) -> dict[str, Any]:
    return yaml.safe_load(render.patroni_yml(specs.patroni_node_spec(cfg, host), secrets))


def _patroni_nodes() -> list[str]:
    return [h.name for h in load_cluster_config(lab_raw(), set()).with_role("patroni")]


@pytest.mark.parametrize("node", _patroni_nodes())
def test_patroni_yml_has_the_runbook_settings(lab: ClusterConfig, node: str) -> None:
    """Each node's patroni.yml parses and holds what Patroni needs to run that node."""
    host = next(h for h in lab.hosts if h.name == node)
    doc = _patroni_doc(lab, host)
    addr = host.address

    assert doc["scope"] == "pgha-lab"
    assert doc["namespace"] == "/service/"
    assert doc["name"] == node

    assert doc["restapi"]["listen"] == f"{addr}:8008"
    assert doc["restapi"]["connect_address"] == f"{addr}:8008"
    assert doc["restapi"]["authentication"] == {"username": "patroni", "password": SECRETS["restapi"]}

    assert doc["etcd3"]["hosts"] == [f"{h.address}:2379" for h in lab.with_role("etcd")]
    assert doc["etcd3"]["hosts"] == ["10.77.0.11:2379", "10.77.0.12:2379", "10.77.0.13:2379"]

    assert doc["postgresql"]["basebackup"] == [{"checkpoint": "fast"}]

    pg = doc["postgresql"]
    assert pg["listen"] == f"{addr},127.0.0.1:5432"
    assert pg["connect_address"] == f"{addr}:5432"
    assert pg["data_dir"] == "/var/lib/postgresql/15/pgha-lab"
    assert pg["bin_dir"] == "/usr/lib/postgresql/15/bin"
    assert pg["pgpass"] == "/var/lib/postgresql/.pgpass.patroni"
    assert pg["parameters"]["unix_socket_directories"] == "/var/run/postgresql"
    assert pg["authentication"] == {
        "superuser": {"username": "postgres", "password": SECRETS["superuser"]},
        "replication": {"username": "replicator", "password": SECRETS["replication"]},
        "rewind": {"username": "rewind_user", "password": SECRETS["rewind"]},
    }

    hba = [" ".join(line.split()) for line in pg["pg_hba"]]
    for member in lab.with_role("patroni"):
        assert f"host replication replicator {member.address}/32 scram-sha-256" in hba
        assert f"host all rewind_user {member.address}/32 scram-sha-256" in hba
    assert "host all all 10.77.0.14/32 scram-sha-256" in hba  # the HAProxy host
    assert "host all all 10.77.0.0/24 scram-sha-256" in hba  # clientCidrs
    assert "local all postgres peer" in hba
    assert not [line for line in hba if "trust" in line.split()]
    assert all(line.split()[-1] in ("scram-sha-256", "peer") for line in hba)

    assert doc["tags"] == {"nofailover": False, "noloadbalance": False, "nosync": False, "clonefrom": False}

    if node != lab.with_role("patroni")[0].name:
        # Only the first host bootstraps: without the section Patroni never races for it.
        assert "bootstrap" not in doc
        return
    dcs = doc["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (30, 10, 10)
    assert dcs["maximum_lag_on_failover"] == 1048576
    assert dcs["synchronous_mode"] is False
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["use_slots"] is True
    params = dcs["postgresql"]["parameters"]
    assert params["wal_level"] == "logical"
    assert params["hot_standby"] == "on"
    assert str(params["max_connections"]) == "150"
    assert str(params["max_wal_senders"]) == "10"
    assert str(params["max_replication_slots"]) == "10"
    assert params["wal_log_hints"] == "on"
    assert params["shared_buffers"] == "128MB"
    assert params["password_encryption"] == "scram-sha-256"
    assert "pg_stat_statements" in params["shared_preload_libraries"].split(",")

    assert doc["bootstrap"]["initdb"] == [{"encoding": "UTF8"}, "data-checksums", {"locale": "C.UTF-8"}]


def test_patroni_yml_tags_follow_the_host(lab: ClusterConfig) -> None:
    """A host's tags reach its own patroni.yml only."""
    raw = lab_raw()
    raw["hosts"][2]["tags"] = {"nofailover": True, "noloadbalance": True}
    cfg = load_cluster_config(raw, set())
    assert _patroni_doc(cfg, cfg.hosts[2])["tags"]["nofailover"] is True
    assert _patroni_doc(cfg, cfg.hosts[2])["tags"]["noloadbalance"] is True
    assert _patroni_doc(cfg, cfg.hosts[0])["tags"]["nofailover"] is False


def test_patroni_yml_secret_with_emoji_round_trips(lab: ClusterConfig) -> None:
    """Operator-set passwords may contain any Unicode; Patroni must read back exactly the same string."""
    secrets = {**SECRETS, "superuser": "key-\U0001F511-pw"}
    doc = _patroni_doc(lab, lab.hosts[0], secrets)
    assert doc["postgresql"]["authentication"]["superuser"]["password"] == "key-\U0001F511-pw"


def test_patroni_unit_matches_the_runbook(lab: ClusterConfig) -> None:
    """The systemd unit: Patroni owns PostgreSQL, so systemd must neither restart it nor kill postgres."""
    spec = {**specs.patroni_install_spec(lab, lab.hosts[0]), "config_file": "/etc/patroni/patroni.yml"}
    unit = render.patroni_unit(spec)
    lines = set(unit.splitlines())
    for expected in (
        "[Unit]", "[Service]", "[Install]",
        "After=network-online.target",
        "Type=simple",
        "User=postgres",
        "Group=postgres",
        "ExecStart=/opt/patroni/bin/patroni /etc/patroni/patroni.yml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=process",
        "KillSignal=SIGINT",
        "TimeoutSec=30",
        "LimitNOFILE=65536",
        "Restart=no",
        "WantedBy=multi-user.target",
    ):
        assert expected in lines, expected


def test_etcd_env_file(lab: ClusterConfig) -> None:
    """etcd's environment: this host's URLs, and the initial cluster and state given by the provider."""
    host = lab.hosts[1]
    spec = specs.etcd_member_spec(lab, host)
    initial = ",".join(f"{n}={u}" for n, u in sorted(spec["bootstrap_cluster"].items()))
    text = render.etcd_env(spec, initial, "existing")
    env = dict(re.fullmatch(r'([A-Z0-9_]+)="(.*)"', line).groups()  # type: ignore[union-attr]
               for line in text.splitlines() if line and not line.startswith("#"))
    assert env["ETCD_NAME"] == "pg2"
    assert env["ETCD_DATA_DIR"] == "/var/lib/etcd/pgha-pgha-lab"
    assert env["ETCD_LISTEN_PEER_URLS"] == "http://10.77.0.12:2380"
    assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == "http://10.77.0.12:2380"
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "http://10.77.0.12:2379,http://127.0.0.1:2379"
    assert env["ETCD_ADVERTISE_CLIENT_URLS"] == "http://10.77.0.12:2379"
    assert env["ETCD_INITIAL_CLUSTER"] == (
        "pg1=http://10.77.0.11:2380,pg2=http://10.77.0.12:2380,pg3=http://10.77.0.13:2380")
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    assert env["ETCD_INITIAL_CLUSTER_TOKEN"] == "pgha-pgha-lab"
    assert env["ETCD_ENABLE_V2"] == "false"


def _listen_sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            current = sections.setdefault(line.strip(), [])
        elif line.strip():
            current.append(line.strip())
    return sections


def test_haproxy_cfg_balances_every_patroni_node(lab: ClusterConfig) -> None:
    """Both listeners list every Patroni node, health-checked on Patroni's REST API."""
    text = render.haproxy_cfg(specs.haproxy_spec(lab))
    sections = _listen_sections(text)
    primary, replicas = sections["listen pgha-lab_primary"], sections["listen pgha-lab_replicas"]
    assert "bind *:5000" in primary
    assert "option httpchk GET /primary" in primary
    assert "bind *:5001" in replicas
    assert "option httpchk GET /replica" in replicas
    assert "bind *:7000" in sections["listen stats"]
    for body in (primary, replicas):
        assert "http-check expect status 200" in body
        assert any(line.startswith("default-server ") and line.endswith("on-marked-down shutdown-sessions")
                   for line in body)
        servers = [line for line in body if line.startswith("server ")]
        assert servers == [f"server {h.name} {h.address}:5432 maxconn 150 check port 8008"
                           for h in lab.with_role("patroni")]
    assert "mode tcp" in sections["defaults"]


def test_haproxy_cfg_accepted_by_haproxy(lab: ClusterConfig, tmp_path: Path) -> None:
    """`haproxy -c` is what the provider runs on the host before a reload: it must pass here too."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed on this machine")
    text = render.haproxy_cfg(specs.haproxy_spec(lab))
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    result = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    if result.returncode != 0 and "/run/haproxy" in result.stdout + result.stderr:
        # `haproxy -c` may check that the stats socket's directory exists; /run/haproxy is made
        # by the haproxy package on the host, not on this machine. Check the rest without it.
        path.write_text("\n".join(line for line in text.splitlines() if "stats socket" not in line) + "\n")
        result = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True,
                                check=False)
    assert result.returncode == 0, result.stdout + result.stderr

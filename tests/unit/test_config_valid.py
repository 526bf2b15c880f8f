"""Valid configs load, and the model fills in the runbook's defaults."""

from __future__ import annotations

from typing import Any

import pytest

from components.config import ClusterConfig, load_cluster_config
from tests.unit.configs import base_raw, base_secret_keys, lab_raw, lab_stack_raw


def _production_raw() -> dict[str, Any]:
    raw = base_raw()
    raw["production"] = True
    del raw["ssh"]["privateKeyFile"]
    raw["sshPrivateKey"] = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
    return raw


def test_lab_stack_file_loads() -> None:
    """The stack file shipped with the repo must pass validation, or the lab cannot deploy."""
    cfg = load_cluster_config(lab_raw(), set())
    assert cfg.scope == "pgha-lab"
    assert cfg.production is False
    assert cfg.generate_passwords is True
    assert [h.name for h in cfg.hosts] == ["pg1", "pg2", "pg3", "pg4"]
    assert [h.name for h in cfg.with_role("etcd")] == ["pg1", "pg2", "pg3"]
    assert [h.name for h in cfg.with_role("patroni")] == ["pg1", "pg2", "pg3"]
    assert [h.name for h in cfg.with_role("haproxy")] == ["pg4"]
    assert cfg.patroni.install.method == "wheelhouse"
    assert cfg.patroni.install.wheelhouse == "/var/cache/pgha-lab/wheelhouse"
    assert cfg.patroni.install.version == "4.1.5"
    assert cfg.client_cidrs == ("10.77.0.0/24",)
    assert cfg.dcs.parameters["shared_buffers"] == "128MB"
    assert [(r.name, r.options, r.login) for r in cfg.roles] == [("admin", ("CREATEDB", "CREATEROLE"), True)]
    assert cfg.secrets_present == frozenset()


def test_defaults_follow_the_runbook() -> None:
    """Unset keys must take the runbook's ports and Patroni timings, not something surprising."""
    cfg = load_cluster_config(lab_raw(), set())
    assert (cfg.etcd.client_port, cfg.etcd.peer_port) == (2379, 2380)
    assert cfg.patroni.restapi_port == 8008
    assert cfg.postgresql.port == 5432
    assert (cfg.haproxy.primary_port, cfg.haproxy.replica_port, cfg.haproxy.stats_port) == (5000, 5001, 7000)
    assert cfg.haproxy.maxconn == 150
    assert (cfg.dcs.ttl, cfg.dcs.loop_wait, cfg.dcs.retry_timeout) == (30, 10, 10)
    assert cfg.dcs.maximum_lag_on_failover == 1048576
    assert cfg.dcs.use_pg_rewind is True
    assert cfg.dcs.use_slots is True
    assert cfg.namespace == "/service/"
    assert cfg.postgresql.version == 15
    assert cfg.postgresql.os_family == "debian"
    assert cfg.postgresql.data_dir == "/var/lib/postgresql/15/pgha-lab"
    assert cfg.postgresql.bin_dir == "/usr/lib/postgresql/15/bin"
    assert (cfg.postgresql.superuser, cfg.postgresql.replication_user, cfg.postgresql.rewind_user) == (
        "postgres", "replicator", "rewind_user")
    assert cfg.etcd.data_dir == "/var/lib/etcd/pgha-pgha-lab"
    assert cfg.etcd.min_members == 1
    assert cfg.patroni.min_nodes == 1
    assert cfg.dcs.parameters["wal_level"] == "logical"
    assert cfg.dcs.parameters["password_encryption"] == "scram-sha-256"
    assert cfg.initdb == ({"encoding": "UTF8"}, "data-checksums", {"locale": "C.UTF-8"})


def test_rhel_paths() -> None:
    """RHEL's PGDG packages use other paths than Debian's; picking the wrong one breaks initdb."""
    raw = lab_raw()
    raw["postgresql"]["osFamily"] = "rhel"
    cfg = load_cluster_config(raw, set())
    assert cfg.postgresql.data_dir == "/var/lib/pgsql/15/data"
    assert cfg.postgresql.bin_dir == "/usr/pgsql-15/bin"


def test_version_changes_default_paths() -> None:
    """The default paths follow postgresql.version, not a hard-coded 15."""
    raw = lab_raw()
    raw["postgresql"]["version"] = 16
    cfg = load_cluster_config(raw, set())
    assert cfg.postgresql.data_dir == "/var/lib/postgresql/16/pgha-lab"
    assert cfg.postgresql.bin_dir == "/usr/lib/postgresql/16/bin"


@pytest.mark.parametrize("family", ["debian", "rhel"])
def test_explicit_paths_override_defaults(family: str) -> None:
    """An operator's dataDir/binDir must win over the OS-family defaults."""
    raw = lab_raw()
    raw["postgresql"].update(osFamily=family, dataDir="/srv/pg/data", binDir="/opt/pg/bin")
    cfg = load_cluster_config(raw, set())
    assert cfg.postgresql.data_dir == "/srv/pg/data"
    assert cfg.postgresql.bin_dir == "/opt/pg/bin"


def test_base_config_is_valid_in_and_out_of_production() -> None:
    """The invalid-config table mutates this base: it must itself be valid in both modes."""
    for production in (False, True):
        raw = base_raw()
        raw["production"] = production
        cfg = load_cluster_config(raw, base_secret_keys())
        assert cfg.production is production


def test_production_config_with_every_secret_loads() -> None:
    """A production stack: 3 etcd members, all passwords and the SSH key as secrets."""
    raw = _production_raw()
    secret_keys = {*base_secret_keys(), "sshPrivateKey"}
    cfg: ClusterConfig = load_cluster_config(raw, secret_keys)
    assert cfg.production is True
    assert cfg.generate_passwords is False
    assert len(cfg.with_role("etcd")) == 3
    assert cfg.etcd.min_members == 3
    assert cfg.patroni.min_nodes == 2
    assert cfg.secrets_present == frozenset({
        "superuserPassword", "replicationPassword", "rewindPassword", "restApiPassword", "sshPrivateKey"})
    assert all(h.ssh.private_key_file is None for h in cfg.hosts)


def test_production_with_five_etcd_members_loads() -> None:
    """Five is odd and at least three: a valid production quorum."""
    raw = _production_raw()
    raw["hosts"][3]["roles"] = ["etcd", "haproxy"]
    raw["hosts"].append({"name": "pg5", "address": "10.77.0.15", "roles": ["etcd"]})
    cfg = load_cluster_config(raw, {*base_secret_keys(), "sshPrivateKey"})
    assert len(cfg.with_role("etcd")) == 5


def test_per_host_ssh_override_merges_with_defaults() -> None:
    """A host overriding one SSH setting keeps the stack-wide values of the others."""
    raw = base_raw()
    raw["ssh"].update(knownHostsFile="/etc/pgha/known_hosts", strictHostKeys=False,
                      bastion={"address": "10.77.0.1", "user": "jump"})
    raw["hosts"][1]["ssh"] = {"port": 2222, "user": "admin"}
    raw["hosts"][2]["ssh"] = {"privateKeyFile": "/keys/pg3", "bastion": {"address": "10.77.0.2"}}
    cfg = load_cluster_config(raw, base_secret_keys())
    default, overridden, other_key = cfg.hosts[0].ssh, cfg.hosts[1].ssh, cfg.hosts[2].ssh

    assert (default.user, default.port) == ("pgha", 22)
    assert default.private_key_file == "/var/lib/pgha-lab/id_ed25519"
    assert default.known_hosts_file == "/etc/pgha/known_hosts"
    assert default.strict_host_keys is False
    assert default.bastion is not None
    assert (default.bastion.address, default.bastion.port, default.bastion.user) == ("10.77.0.1", 22, "jump")

    assert (overridden.user, overridden.port) == ("admin", 2222)
    assert overridden.private_key_file == default.private_key_file
    assert overridden.known_hosts_file == default.known_hosts_file
    assert overridden.strict_host_keys is False
    assert overridden.bastion == default.bastion

    assert other_key.private_key_file == "/keys/pg3"
    assert (other_key.user, other_key.port) == ("pgha", 22)
    assert other_key.bastion is not None
    assert (other_key.bastion.address, other_key.bastion.user) == ("10.77.0.2", "pgha")


def test_string_numbers_and_booleans_are_accepted() -> None:
    """`pulumi config set` stores scalars as strings: "5433" and "true" must load as 5433 and True."""
    raw = base_raw()
    raw["postgresql"]["port"] = "5433"
    raw["dcs"] = {"ttl": "40", "usePgRewind": "false"}
    raw["production"] = "true"
    cfg = load_cluster_config(raw, base_secret_keys())
    assert cfg.postgresql.port == 5433
    assert cfg.dcs.ttl == 40
    assert cfg.dcs.use_pg_rewind is False
    assert cfg.production is True


def test_the_lab_stack_itself_has_tls_on() -> None:
    """`make lab-up` deploys with TLS (the default); tests start from it with TLS off (lab_raw)."""
    assert load_cluster_config(lab_stack_raw(), set()).tls.enabled is True
    assert load_cluster_config(lab_raw(), set()).tls.enabled is False

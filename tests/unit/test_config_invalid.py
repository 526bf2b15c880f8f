"""Bad configs fail before any resource exists, each problem naming the exact key to fix.

Every case is one small mutation of a valid base (tests.unit.configs.base_raw, which
test_config_valid checks loads both in and out of production), so the expected
problem can only come from the mutation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from components.config import load_cluster_config
from components.validation import ConfigError
from tests.unit.configs import base_raw, base_secret_keys, del_path, set_path


@dataclass(frozen=True)
class Bad:
    """A mutation of the base config and the problem it must produce."""

    key: str
    fragment: str
    set: Mapping[str, Any] = field(default_factory=dict)
    delete: tuple[str, ...] = ()
    not_secret: tuple[str, ...] = ()


def _all_patroni(tag: str, value: Any) -> dict[str, Any]:
    return {f"hosts[{i}].tags.{tag}": value for i in range(3)}


CASES = [
    # Hosts.
    pytest.param(Bad("hosts[1].name", "duplicate host name 'pg1' (also hosts[0])",
                     set={"hosts[1].name": "pg1"}), id="duplicate-host-name"),
    pytest.param(Bad("hosts[1].address", "duplicate address 10.77.0.11 (also hosts[0])",
                     set={"hosts[1].address": "10.77.0.11"}), id="duplicate-address"),
    pytest.param(Bad("hosts[2].address", "'10.77.0.300' is not an IPv4 address",
                     set={"hosts[2].address": "10.77.0.300"}), id="invalid-ipv4"),
    pytest.param(Bad("hosts[0].name", "'PG1' is not a valid host name",
                     set={"hosts[0].name": "PG1"}), id="uppercase-host-name"),
    pytest.param(Bad("hosts[3].roles[1]", "unknown role 'pgbouncer'",
                     set={"hosts[3].roles": ["haproxy", "pgbouncer"]}), id="unknown-host-role"),
    pytest.param(Bad("hosts[3].roles", "at least one role",
                     set={"hosts[3].roles": []}), id="host-without-roles"),
    pytest.param(Bad("hosts[3].roles[1]", "role 'haproxy' listed twice",
                     set={"hosts[3].roles": ["haproxy", "haproxy"]}), id="host-role-twice"),
    pytest.param(Bad("hosts", "at least one host is required", set={"hosts": []}), id="no-hosts"),
    # Unknown keys (typos must not silently fall back to defaults).
    pytest.param(Bad("scop", "unknown key (did you mean 'scope'?)",
                     set={"scop": "pgha-lab"}, delete=("scope",)), id="typo-top-level-scop"),
    pytest.param(Bad("hosts[0].adress", "unknown key (did you mean 'address'?)",
                     set={"hosts[0].adress": "10.77.0.11"}, delete=("hosts[0].address",)),
                 id="typo-hosts-adress"),
    pytest.param(Bad("dcs.loop_wait", "unknown key (did you mean 'loopWait'?)",
                     set={"dcs.loop_wait": 5}), id="typo-dcs-snake-case-loop_wait"),
    pytest.param(Bad("haproxy.primaryport", "unknown key (did you mean 'primaryPort'?)",
                     set={"haproxy.primaryport": 6000}), id="typo-haproxy-primaryport"),
    pytest.param(Bad("hosts[0].tags.nofailver", "unknown key (did you mean 'nofailover'?)",
                     set={"hosts[0].tags": {"nofailver": True}}), id="typo-host-tag"),
    # Production rules.
    pytest.param(Bad("hosts", "odd number of etcd members (quorum), got 4",
                     set={"production": True, "hosts[3].roles": ["etcd", "haproxy"]}),
                 id="production-even-etcd-members"),
    pytest.param(Bad("hosts", "production stack needs at least 3 etcd members",
                     set={"production": True, "hosts[2].roles": ["patroni"]}),
                 id="production-two-etcd-members"),
    pytest.param(Bad("generatePasswords", "is for labs only",
                     set={"production": True, "generatePasswords": True}),
                 id="production-generate-passwords"),
    # Secrets.
    *[pytest.param(Bad(name, f"missing secret: pulumi config set --secret pgha:{name}",
                       delete=(name,)), id=f"missing-{name}")
      for name in ("superuserPassword", "replicationPassword", "rewindPassword", "restApiPassword")],
    pytest.param(Bad("replicationPassword", "must be a secret",
                     not_secret=("replicationPassword",)), id="plaintext-replicationPassword"),
    pytest.param(Bad("sshPrivateKey", "must be a secret", set={"sshPrivateKey": "KEY"}),
                 id="plaintext-sshPrivateKey"),
    pytest.param(Bad("rolePasswords", "must be secret", not_secret=("rolePasswords",)),
                 id="plaintext-rolePasswords"),
    # Networks and ports.
    pytest.param(Bad("clientCidrs[0]", "is not a network in CIDR notation",
                     set={"clientCidrs": ["10.77.0.0/33"]}), id="cidr-bad-prefix"),
    pytest.param(Bad("clientCidrs[1]", "has host bits set",
                     set={"clientCidrs": ["10.77.0.0/24", "10.77.0.1/24"]}), id="cidr-host-bits-set"),
    pytest.param(Bad("postgresql.port", "must be at most 65535, got 70000",
                     set={"postgresql.port": 70000}), id="port-above-65535"),
    pytest.param(Bad("etcd.peerPort", "must be at least 1, got 0",
                     set={"etcd.peerPort": 0}), id="port-zero"),
    pytest.param(Bad("patroni.restApiPort", "must be an integer, got 'eighty'",
                     set={"patroni.restApiPort": "eighty"}), id="port-string-not-number"),
    pytest.param(Bad("haproxy.statsPort", "port 8008 collides with patroni.restApiPort on host pg1",
                     set={"haproxy.statsPort": 8008, "hosts[0].roles": ["etcd", "patroni", "haproxy"]}),
                 id="port-collision-haproxy-stats-vs-patroni-api"),
    # The collision is reported on the later of the two keys (roles order etcd, patroni),
    # and the message names the other one.
    pytest.param(Bad("postgresql.port", "port 5432 collides with etcd.clientPort on host pg1",
                     set={"etcd.clientPort": 5432}), id="port-collision-etcd-client-vs-postgresql"),
    # PostgreSQL parameters.
    pytest.param(Bad("postgresql.parameters.max_connections", "must be an integer, got 'lots'",
                     set={"postgresql.parameters.max_connections": "lots"}), id="param-max-connections-lots"),
    pytest.param(Bad("postgresql.parameters.shared_buffers", "must be a size like 128MB",
                     set={"postgresql.parameters.shared_buffers": "big"}), id="param-shared-buffers-big"),
    pytest.param(Bad("postgresql.parameters.hot_standby", "must be a boolean (on/off), got 'maybe'",
                     set={"postgresql.parameters.hot_standby": "maybe"}), id="param-hot-standby-maybe"),
    pytest.param(Bad("postgresql.parameters.wal_level", "'verbose' is not one of minimal, replica, logical",
                     set={"postgresql.parameters.wal_level": "verbose"}), id="param-wal-level-verbose"),
    pytest.param(Bad("postgresql.parameters.port", "is managed by pgha/Patroni",
                     set={"postgresql.parameters.port": 5433}), id="param-managed-port"),
    pytest.param(Bad("postgresql.parameters.work_mem", "must be a scalar value, got list",
                     set={"postgresql.parameters.work_mem": ["4MB"]}), id="param-not-scalar"),
    pytest.param(Bad("postgresql.osFamily", "'arch' is not one of debian, rhel",
                     set={"postgresql.osFamily": "arch"}), id="unknown-os-family"),
    pytest.param(Bad("postgresql.dataDir", "is not a valid absolute path",
                     set={"postgresql.dataDir": "pgdata"}), id="relative-data-dir"),
    pytest.param(Bad("postgresql.version", "must be at least 12, got 11",
                     set={"postgresql.version": 11}), id="postgresql-version-too-old"),
    pytest.param(Bad("postgresql", "must be different roles",
                     set={"postgresql.rewindUser": "replicator"}), id="rewind-user-is-replication-user"),
    # DCS.
    pytest.param(Bad("dcs.ttl", "must be at least loopWait + 2 * retryTimeout = 30",
                     set={"dcs.ttl": 20}), id="ttl-below-loop-wait-plus-retries"),
    pytest.param(Bad("namespace", "is not a valid namespace", set={"namespace": "service"}),
                 id="namespace-without-slashes"),
    pytest.param(Bad("scope", "is not a valid cluster scope", set={"scope": "pgha_lab"}),
                 id="scope-with-underscore"),
    # pg_hba.
    pytest.param(Bad("pgHba[0]", "trust authentication is refused",
                     set={"pgHba": ["host all all 10.0.0.0/8 trust"]}), id="pghba-trust"),
    pytest.param(Bad("pgHba[1]", "does not start with a pg_hba connection type",
                     set={"pgHba": ["host all all 10.0.0.0/8 scram-sha-256",
                                    "all all 10.0.0.0/8 scram-sha-256"]}), id="pghba-no-connection-type"),
    pytest.param(Bad("pgHba[0]", "'10.0.0.999/8' is not an address or CIDR",
                     set={"pgHba": ["hostssl all all 10.0.0.999/8 scram-sha-256"]}), id="pghba-bad-address"),
    pytest.param(Bad("initdb[0]", "one-key object",
                     set={"initdb": [{"encoding": "UTF8", "locale": "C"}]}), id="initdb-two-key-entry"),
    # Database roles.
    pytest.param(Bad("roles[0].options[1]", "'GODMODE' is not one of",
                     set={"roles[0].options": ["CREATEDB", "GODMODE"]}), id="role-option-unknown"),
    pytest.param(Bad("roles[0].options[0]", "'LOGIN' is not one of",
                     set={"roles[0].options": ["LOGIN"]}), id="role-option-login-belongs-in-login-key"),
    pytest.param(Bad("roles[1].name", "duplicate role 'app'",
                     set={"roles[1]": {"name": "app", "login": False}}), id="duplicate-database-role"),
    pytest.param(Bad("roles[1].name", "'replicator' is one of Patroni's own roles",
                     set={"roles[1]": {"name": "replicator", "login": False}}),
                 id="role-named-like-replication-user"),
    pytest.param(Bad("rolePasswords.app", "missing password for login role 'app'",
                     delete=("rolePasswords",)), id="login-role-without-password"),
    # Patroni install.
    pytest.param(Bad("patroni.install.wheelhouse", "is required",
                     set={"patroni.install.method": "wheelhouse"}), id="wheelhouse-without-path"),
    pytest.param(Bad("patroni.install.method", "'conda' is not one of wheelhouse, index",
                     set={"patroni.install.method": "conda"}), id="install-method-unknown"),
    pytest.param(Bad("patroni.install.proxy", "'proxy.corp:3128' is not a valid proxy URL",
                     set={"patroni.install.proxy": "proxy.corp:3128"}), id="bad-proxy-url"),
    pytest.param(Bad("hosts", "3 host(s) have the patroni role; at least 4 are required",
                     set={"patroni.minNodes": 4}), id="fewer-patroni-hosts-than-min-nodes"),
    pytest.param(Bad("hosts", "3 host(s) have the etcd role; at least 5 are required",
                     set={"etcd.minMembers": 5}), id="fewer-etcd-hosts-than-min-members"),
    pytest.param(Bad("hosts", "every Patroni node is tagged nofailover",
                     set=_all_patroni("nofailover", True)), id="every-patroni-node-nofailover"),
    # SSH.
    pytest.param(Bad("ssh.privateKeyFile", "set a key file, or the secret pgha:sshPrivateKey",
                     delete=("ssh.privateKeyFile",)), id="ssh-without-any-key"),
    pytest.param(Bad("ssh.bastion.address", "'bastion.corp' is not an IPv4 address",
                     set={"ssh.bastion": {"address": "bastion.corp"}}), id="bastion-bad-address"),
    pytest.param(Bad("hosts[1].ssh.port", "must be an integer, got 'ssh'",
                     set={"hosts[1].ssh": {"port": "ssh"}}), id="host-ssh-port-not-number"),
]


def _mutated(case: Bad) -> tuple[dict[str, Any], set[str]]:
    raw = base_raw()
    for path in case.delete:
        del_path(raw, path)
    for path, value in case.set.items():
        set_path(raw, path, value)
    return raw, base_secret_keys() - set(case.not_secret)


def test_at_least_thirty_distinct_bad_configs() -> None:
    """The table is the contract of the validator; keep it broad."""
    ids = [p.id for p in CASES]
    assert len(set(ids)) == len(ids) >= 30


@pytest.mark.parametrize("case", CASES)
def test_bad_config_names_the_key(case: Bad) -> None:
    """Each mutation is refused, with a problem that starts with the exact full key."""
    raw, secret_keys = _mutated(case)
    with pytest.raises(ConfigError) as caught:
        load_cluster_config(raw, secret_keys)
    problems = caught.value.problems
    prefix = f"pgha:{case.key}: "
    matching = [p for p in problems if p.startswith(prefix)]
    assert matching, f"no problem starts with {prefix!r}: {problems}"
    assert any(case.fragment in p for p in matching), f"{case.fragment!r} not in {matching}"


def test_several_problems_reported_at_once() -> None:
    """One preview must show every problem, not just the first."""
    raw = base_raw()
    raw["hosts"][1]["address"] = "10.77.0.11"
    raw["clientCidrs"] = ["10.77.0.1/24"]
    raw["dcs"] = {"ttl": 20}
    raw["postgresql"]["parameters"]["wal_level"] = "verbose"
    del raw["rewindPassword"]
    with pytest.raises(ConfigError) as caught:
        load_cluster_config(raw, base_secret_keys())
    keys = {p.split(": ", 1)[0] for p in caught.value.problems}
    assert keys >= {"pgha:hosts[1].address", "pgha:clientCidrs[0]", "pgha:dcs.ttl",
                    "pgha:postgresql.parameters.wal_level", "pgha:rewindPassword"}
    assert len(caught.value.problems) == 5


def test_error_message_names_the_count_and_every_problem() -> None:
    """The exception text is what `pulumi preview` prints: it must count and list the problems."""
    raw = base_raw()
    raw["hosts"][0]["name"] = "PG1"
    raw["haproxy"] = {"primaryport": 6000}
    with pytest.raises(ConfigError) as caught:
        load_cluster_config(raw, base_secret_keys())
    problems = caught.value.problems
    assert len(problems) == 2
    text = str(caught.value)
    assert text.startswith("invalid pgha stack configuration (2 problem(s)):")
    for problem in problems:
        assert f"  - {problem}" in text

"""Planned resource inputs, the providers' pure diffs, and the pure SQL/REST helpers.

What the specs put in a resource's inputs is what a preview shows as changed, and the
diff decides between nothing, an in-place update and a replacement: both must be exact.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import re
from typing import Any

import pytest

from components import specs
from components.config import ClusterConfig, load_cluster_config
from components.providers.base import HostProvider
from components.providers.database_role import DatabaseRoleProvider, role_options_sql, scram_verifier
from components.providers.etcd_member import EtcdMemberProvider
from components.providers.haproxy_config import HAProxyConfigProvider
from components.providers.patroni_install import PatroniInstallProvider
from components.providers.patroni_node import PatroniNodeProvider
from components.transport.rest import _prefix_end, members_table
from components.validation import ConfigError
from tests.unit.configs import base_raw, base_secret_keys, lab_raw

NEW_HOST = {"name": "pg5", "address": "10.77.0.15", "roles": ["patroni"]}


def _lab(extra_hosts: tuple[dict[str, Any], ...] = ()) -> ClusterConfig:
    raw = lab_raw()
    raw["hosts"].extend(copy.deepcopy(list(extra_hosts)))
    return load_cluster_config(raw, set())


# --- specs -------------------------------------------------------------------------------


def test_pg_hba_adding_a_patroni_host_adds_exactly_its_two_lines() -> None:
    """A new member needs replication and rewind access; nothing else may move, so a
    reviewer's diff of every existing node is two `+` entries named after the host."""
    before = specs.pg_hba(_lab())
    after = specs.pg_hba(_lab((NEW_HOST,)))
    assert {k: v for k, v in after.items() if k in before} == before
    added = {k: " ".join(v.split()) for k, v in after.items() if k not in before}
    assert added == {
        "20 replication pg5": "host replication replicator 10.77.0.15/32 scram-sha-256",
        "30 rewind pg5": "host all rewind_user 10.77.0.15/32 scram-sha-256",
    }


def test_pg_hba_file_order_keeps_the_runbook_order() -> None:
    lines = [" ".join(line.split()) for line in specs.hba_lines(specs.pg_hba(_lab()))]
    assert lines[:2] == ["local all postgres peer", "local all all scram-sha-256"]
    assert lines.index("host replication replicator 10.77.0.11/32 scram-sha-256") < \
        lines.index("host all rewind_user 10.77.0.11/32 scram-sha-256") < \
        lines.index("host all all 10.77.0.14/32 scram-sha-256") < \
        lines.index("host all all 10.77.0.0/24 scram-sha-256")


def test_pg_hba_extra_lines_are_normalised_last_and_in_stack_order() -> None:
    """Operator lines come after pgha's own, with whitespace collapsed, in the order given."""
    raw = lab_raw()
    raw["pgHba"] = [f"hostssl   app{i}   app   10.9.0.0/16    scram-sha-256" for i in range(12)]
    lines = specs.hba_lines(specs.pg_hba(load_cluster_config(raw, set())))
    assert lines[-12:] == [f"hostssl app{i} app 10.9.0.0/16 scram-sha-256" for i in range(12)]


def test_haproxy_servers_follow_the_patroni_hosts() -> None:
    """HAProxy balances over exactly the Patroni hosts; one entry per host and backend."""
    before = specs.haproxy_spec(_lab())
    assert before["primary_servers"] == before["replica_servers"] == {
        "pg1": "10.77.0.11:5432 maxconn 150 check port 8008",
        "pg2": "10.77.0.12:5432 maxconn 150 check port 8008",
        "pg3": "10.77.0.13:5432 maxconn 150 check port 8008",
    }
    after = specs.haproxy_spec(_lab((NEW_HOST,)))
    assert set(after["primary_servers"]) - set(before["primary_servers"]) == {"pg5"}
    assert after["global_maxconn"] >= 150 * 2 * 4


def test_etcd_member_spec_lists_every_founding_member() -> None:
    """A founding member needs the peer URL of every etcd host, itself included."""
    cfg = _lab()
    for host in cfg.with_role("etcd"):
        spec = specs.etcd_member_spec(cfg, host)
        assert spec["name"] == host.name
        assert spec["address"] == host.address
        assert (spec["client_port"], spec["peer_port"]) == (2379, 2380)
        assert spec["cluster_token"] == "pgha-pgha-lab"
        assert spec["bootstrap_cluster"] == {
            "pg1": "http://10.77.0.11:2380", "pg2": "http://10.77.0.12:2380", "pg3": "http://10.77.0.13:2380"}


def test_ipv6_addresses_are_refused_until_supported() -> None:
    """IPv6 would need [addr]:port in every URL and peer list; refuse it clearly instead."""
    raw = base_raw()
    raw["hosts"][1]["address"] = "fd00::12"
    with pytest.raises(ConfigError) as err:
        load_cluster_config(raw, base_secret_keys())
    assert any(p.startswith("pgha:hosts[1].address: ") and "IPv6" in p for p in err.value.problems)


# --- provider diffs ----------------------------------------------------------------------


def _patroni_olds_news() -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = _lab()
    host = cfg.hosts[0]
    news = {"connection": specs.connection(host), **specs.patroni_node_spec(cfg, host),
            "secrets": {"superuser": "a", "replication": "b", "rewind": "c", "restapi": "d"},
            "__provider": "pickled-provider-v1"}
    # What the state holds: the inputs as outputs, plus the provider's own outputs.
    olds = {**copy.deepcopy(news), "running": True, "role": "leader", "timeline": 3,
            "patroni_version": "4.1.5"}
    return olds, news


def test_diff_identical_inputs_no_changes() -> None:
    """Outputs that are not inputs (role, timeline) must not count as changes."""
    olds, news = _patroni_olds_news()
    result = PatroniNodeProvider().diff("pgha-lab/pg1", olds, news)
    assert result.changes is False
    assert result.replaces == []
    assert result.delete_before_replace is False


def test_diff_ignores_create_only_bootstrap() -> None:
    """Bootstrap seeds a new cluster only: changing it must not touch running nodes."""
    olds, news = _patroni_olds_news()
    news["bootstrap"]["dcs"]["ttl"] = 60
    news["bootstrap"]["dcs"]["parameters"]["max_connections"] = "300"
    result = PatroniNodeProvider().diff("pgha-lab/pg1", olds, news)
    assert result.changes is False
    assert result.replaces == []


def test_diff_pg_hba_is_an_update_in_place() -> None:
    """A pg_hba change rewrites patroni.yml and reloads: no replacement. The provider
    answers "unknown" so that the engine shows the reviewer only the changed entries."""
    olds, news = _patroni_olds_news()
    news["pg_hba"] = {**news["pg_hba"], "60 pgHba[0]": "host all all 10.9.0.0/16 scram-sha-256"}
    result = PatroniNodeProvider().diff("pgha-lab/pg1", olds, news)
    assert result.changes is None
    assert result.replaces == []
    assert result.delete_before_replace is False


def test_diff_pg_hba_stored_as_a_list_by_an_older_pgha_is_no_change() -> None:
    olds, news = _patroni_olds_news()
    olds["pg_hba"] = specs.hba_lines(news["pg_hba"])
    assert PatroniNodeProvider().diff("pgha-lab/pg1", olds, news).changes is False
    news["pg_hba"] = {**news["pg_hba"], "20 replication pg5": "host replication replicator 10.77.0.15/32"}
    assert PatroniNodeProvider().diff("pgha-lab/pg1", olds, news).changes is None


def test_haproxy_servers_stored_as_a_list_by_an_older_pgha_are_no_change() -> None:
    cfg = _lab()
    news = {"connection": specs.connection(cfg.hosts[3]), **specs.haproxy_spec(cfg)}
    olds = {k: v for k, v in news.items() if k not in ("primary_servers", "replica_servers")}
    olds["maxconn"] = 150
    olds["servers"] = [{"name": h.name, "address": h.address, "pg_port": 5432, "api_port": 8008}
                       for h in cfg.with_role("patroni")]
    olds.update({"config_matches": True, "running": True, "primary_at_apply": "pg1"})
    assert HAProxyConfigProvider().diff("h", olds, news).changes is False
    news["replica_servers"] = {**news["replica_servers"],
                               "pg5": "10.77.0.15:5432 maxconn 150 check port 8008"}
    assert HAProxyConfigProvider().diff("h", olds, news).changes is None


def test_diff_address_change_replaces_delete_first() -> None:
    """A node that moves is a new node; the old one leaves first (same name in the DCS)."""
    olds, news = _patroni_olds_news()
    news["address"] = "10.77.0.21"
    result = PatroniNodeProvider().diff("pgha-lab/pg1", olds, news)
    assert result.changes is None
    assert result.replaces == ["address"]
    assert result.delete_before_replace is True


def test_diff_observed_drift_is_a_change() -> None:
    """A refresh that found Patroni stopped must make the next `up` repair it."""
    olds, news = _patroni_olds_news()
    olds["running"] = False
    result = PatroniNodeProvider().diff("pgha-lab/pg1", olds, news)
    assert result.changes is True
    assert result.replaces == []


def test_diff_ignores_dunder_keys() -> None:
    """Pulumi's own `__provider` blob changes with the code, not with the resource."""
    olds, news = _patroni_olds_news()
    news["__provider"] = "pickled-provider-v2"
    news["__extra"] = "x"
    assert PatroniNodeProvider().diff("pgha-lab/pg1", olds, news).changes is False


def _etcd_olds_news() -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = _lab()
    # The resource passes member_id=None as an input; Pulumi drops None inputs before diff.
    news = {"connection": specs.connection(cfg.hosts[0]), **specs.etcd_member_spec(cfg, cfg.hosts[0])}
    olds = {**copy.deepcopy(news), "member_id": "8e9e05c52164694d", "running": True, "in_cluster": True}
    return olds, news


def test_etcd_diff_new_founding_peers_is_not_a_change() -> None:
    """Adding an etcd member changes every member's bootstrap_cluster; that must not touch them."""
    olds, news = _etcd_olds_news()
    news["bootstrap_cluster"] = {**news["bootstrap_cluster"], "pg5": "http://10.77.0.15:2380"}
    result = EtcdMemberProvider().diff("m", olds, news)
    assert result.changes is False


@pytest.mark.parametrize(("drift_key", "value"), [("running", False), ("in_cluster", False)])
def test_etcd_diff_drift(drift_key: str, value: bool) -> None:
    """A stopped member, or one removed from the cluster, is repaired by the next `up`."""
    olds, news = _etcd_olds_news()
    olds[drift_key] = value
    result = EtcdMemberProvider().diff("m", olds, news)
    assert result.changes is True
    assert result.replaces == []


@pytest.mark.parametrize("key", ["peer_port", "data_dir", "cluster_token"])
def test_etcd_diff_identity_change_replaces(key: str) -> None:
    """An etcd member's identity (URLs, data, token) cannot change in place."""
    olds, news = _etcd_olds_news()
    news[key] = 2390 if key == "peer_port" else f"{news[key]}-2"
    result = EtcdMemberProvider().diff("m", olds, news)
    assert result.replaces == [key]
    assert result.delete_before_replace is True


def test_haproxy_diff_config_drift() -> None:
    """A hand-edited haproxy.cfg (config_matches false after refresh) is rewritten."""
    cfg = _lab()
    news = {"connection": specs.connection(cfg.hosts[3]), **specs.haproxy_spec(cfg)}
    olds = {**copy.deepcopy(news), "config_matches": False, "running": True, "primary_at_apply": "pg1"}
    assert HAProxyConfigProvider().diff("h", olds, news).changes is True
    olds["config_matches"] = True
    assert HAProxyConfigProvider().diff("h", olds, news).changes is False


def test_database_role_rename_replaces() -> None:
    """A renamed role is a drop and a create, not an update of another role."""
    olds = {"scope": "pgha-lab", "name": "app", "options": ["CREATEDB"], "login": True}
    news = {**olds, "name": "app2"}
    result = DatabaseRoleProvider().diff("r", olds, news)
    assert result.replaces == ["name"]
    news = {**olds, "options": ["CREATEDB", "CREATEROLE"]}
    result = DatabaseRoleProvider().diff("r", olds, news)
    assert (result.changes, result.replaces) == (None, [])


def test_diff_removed_input_is_a_change() -> None:
    """Dropping pgha:patroni.install.proxy must show in the preview and update the state."""
    raw = base_raw()
    raw["patroni"] = {"install": {"proxy": "http://proxy.corp:3128"}}
    with_proxy = load_cluster_config(raw, base_secret_keys())
    without_proxy = load_cluster_config(base_raw(), base_secret_keys())
    host = with_proxy.hosts[0]
    olds = {"connection": specs.connection(host), **specs.patroni_install_spec(with_proxy, host),
            "installed_version": "4.1.5", "installed_version_ok": True}
    news = {"connection": specs.connection(host), **specs.patroni_install_spec(without_proxy, host)}
    assert "proxy" in olds and "proxy" not in news
    assert PatroniInstallProvider().diff("i", olds, news).changes is None  # engine: input removed


def test_base_provider_has_no_special_keys() -> None:
    """The generic provider compares every input (sanity check of the class attributes)."""
    provider = HostProvider()
    assert provider.diff("x", {"a": 1}, {"a": 2}).changes is None  # the engine shows a: 1 => 2
    assert provider.diff("x", {"a": 1}, {"a": 1}).changes is False


# --- SQL helpers -------------------------------------------------------------------------

SALT = bytes(range(16))


def _rfc7677_verifier(password: str, salt: bytes, iterations: int = 4096) -> str:
    """Independent SCRAM-SHA-256 verifier per RFC 5802/7677, in PostgreSQL's text format."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    enc = base64.standard_b64encode
    return (f"SCRAM-SHA-256${iterations}:{enc(salt).decode()}$"
            f"{enc(stored_key).decode()}:{enc(server_key).decode()}")


def test_scram_verifier_format() -> None:
    """PostgreSQL stores and accepts exactly SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>."""
    verifier = scram_verifier("s3cret", salt=SALT)
    match = re.fullmatch(r"SCRAM-SHA-256\$4096:([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)",
                         verifier)
    assert match is not None
    assert base64.b64decode(match.group(1)) == SALT
    assert len(base64.b64decode(match.group(2))) == 32
    assert len(base64.b64decode(match.group(3))) == 32


def test_scram_verifier_deterministic_for_a_fixed_salt() -> None:
    """Same password and salt give the same verifier; a random salt gives a different one each time."""
    assert scram_verifier("s3cret", salt=SALT) == scram_verifier("s3cret", salt=SALT)
    assert scram_verifier("s3cret", salt=SALT) != scram_verifier("s3cret2", salt=SALT)
    assert scram_verifier("s3cret") != scram_verifier("s3cret")


@pytest.mark.parametrize("password", ["s3cret", "p@ss: 'w\"ord' #1", "é-ascii-free-ü"])
@pytest.mark.parametrize("iterations", [4096, 10000])
def test_scram_verifier_matches_rfc7677(password: str, iterations: int) -> None:
    """The verifier must equal an independent RFC 7677 computation, or logins fail."""
    assert scram_verifier(password, iterations=iterations, salt=SALT) == _rfc7677_verifier(
        password, SALT, iterations)


@pytest.mark.parametrize(("password", "prepared"), [("pass\u00a0word", "pass word"),
                                                    ("pass\u00adword", "password")])
def test_scram_verifier_applies_saslprep(password: str, prepared: str) -> None:
    """libpq authenticates with SASLprep(password); the stored verifier must be built from it too."""
    assert scram_verifier(password, salt=SALT) == _rfc7677_verifier(prepared, SALT)


def test_role_options_sql_gives_no_variants() -> None:
    """Every toggle is stated, so removing an option from the config revokes it."""
    assert role_options_sql([], True) == (
        "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT LOGIN")
    assert role_options_sql(["CREATEDB", "CREATEROLE"], False) == (
        "NOSUPERUSER CREATEDB CREATEROLE NOREPLICATION NOBYPASSRLS INHERIT NOLOGIN")
    assert role_options_sql(["SUPERUSER", "REPLICATION", "BYPASSRLS", "NOINHERIT"], True) == (
        "SUPERUSER NOCREATEDB NOCREATEROLE REPLICATION BYPASSRLS NOINHERIT LOGIN")


def test_role_options_from_config_reach_the_sql() -> None:
    """Every option the config validator accepts must reach CREATE/ALTER ROLE."""
    raw = base_raw()
    raw["roles"][0]["options"] = ["NOINHERIT"]
    role = load_cluster_config(raw, base_secret_keys()).roles[0]
    assert role.options == ("NOINHERIT",)
    assert "NOINHERIT" in role_options_sql(list(role.options), role.login).split()


# --- REST helpers ------------------------------------------------------------------------


def test_prefix_end_is_the_next_key_after_the_prefix() -> None:
    """etcd's range [key, range_end) covers every key with the prefix and nothing after it."""
    end = base64.b64decode(_prefix_end("/service/pgha-lab/"))
    assert end == b"/service/pgha-lab0"
    assert b"/service/pgha-lab/" <= b"/service/pgha-lab/members/pg1" < end
    assert end <= b"/service/pgha-lab2/x"


def test_members_table_sorts_and_defaults_lag() -> None:
    """Rows like `patronictl list`, sorted by name, missing or empty lag shown as 0."""
    cluster = {"members": [
        {"name": "pg2", "host": "10.77.0.12", "role": "replica", "state": "streaming", "timeline": 3,
         "lag": 16},
        {"name": "pg1", "host": "10.77.0.11", "role": "leader", "state": "running", "timeline": 3},
        {"name": "pg3", "host": "10.77.0.13", "role": "replica", "state": "streaming", "timeline": 3,
         "receive_lag": 0, "lag": ""},
    ]}
    rows = members_table(cluster)
    assert [r["name"] for r in rows] == ["pg1", "pg2", "pg3"]
    assert [r["lag"] for r in rows] == [0, 16, 0]
    assert rows[0] == {"name": "pg1", "host": "10.77.0.11", "role": "leader", "state": "running",
                       "timeline": 3, "lag": 0}
    assert members_table({}) == []


def test_providers_get_ports_back_as_integers() -> None:
    """Pulumi hands dynamic providers numbers as doubles; a port of 2380.0 broke etcd's URLs."""
    from components.providers.base import integral

    assert integral({"peer_port": 2380.0, "nested": [{"p": 5432.0}], "ratio": 0.9}) == {
        "peer_port": 2380, "nested": [{"p": 5432}], "ratio": 0.9}
    provider = EtcdMemberProvider()
    olds = {"name": "pg1", "peer_port": 2380.0}
    assert provider.diff("id", olds, {"name": "pg1", "peer_port": 2380}).changes is False


@pytest.mark.parametrize(("old", "new", "refused"), [
    (["a", "b", "c"], ["a", "b", "c", "d", "e"], False),
    (["a", "b", "c", "d", "e"], ["a", "b", "c"], False),
    (["a", "b", "c"], ["a", "b"], False),
    (["a", "b", "c"], ["a"], True),
    (["a", "b", "c", "d"], ["a", "b"], True),
    ([], ["a", "b", "c"], False),
])
def test_membership_guard_refuses_removing_a_majority(old: list[str], new: list[str], refused: bool) -> None:
    """Quorum: at most (n-1)//2 members may go in one `pulumi up`; the check names pgha:hosts."""
    from components.providers.membership_guard import MembershipGuardProvider

    result = MembershipGuardProvider().check({"etcd_members": old}, {"etcd_members": new, "scope": "s"})
    assert bool(result.failures) is refused
    if refused:
        assert result.failures[0].reason.startswith("pgha:hosts: removing")


class _SilentFailure(HostProvider):
    def create(self, props: dict[str, Any]) -> Any:
        raise EOFError()

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        raise RuntimeError("pg9: stop Patroni: exit 1")


def test_an_error_without_words_is_reported_with_its_host_and_kind() -> None:
    # paramiko raises a bare EOFError when a host goes away mid-transfer; the engine then
    # printed "Exception calling application: " and nothing else.
    with pytest.raises(RuntimeError, match=r"^10\.77\.0\.15: create: EOFError \(no message\)$"):
        _SilentFailure().create({"connection": {"host": "10.77.0.15"}, "port": 5432.0})
    with pytest.raises(RuntimeError, match=r"^pg9: stop Patroni: exit 1$"):
        _SilentFailure().delete("id", {"connection": {"host": "10.77.0.15"}})


def test_a_primary_is_ready_only_once_it_holds_the_leader_lock() -> None:
    """After a (custom) bootstrap Patroni says primary one HA loop before post_bootstrap
    writes the leader key and /config; a replica streams or is not ready."""
    from components.providers.patroni_node import ready_status_of

    primary = {"state": "running", "role": "primary"}
    assert ready_status_of(primary, holds_leader_lock=False) is None
    assert ready_status_of(primary, holds_leader_lock=True) == primary
    assert ready_status_of({"state": "starting", "role": "primary"}) is None
    streaming = {"state": "running", "role": "replica", "replication_state": "streaming"}
    assert ready_status_of(streaming, holds_leader_lock=False) == streaming
    assert ready_status_of({"state": "running", "role": "replica", "replication_state": "catchup"}) is None

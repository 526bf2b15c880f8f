"""pgha:tls wired into the specs and the file delivery (pure): with TLS on every URL is https and
each spec carries its `tls`; with TLS off the inputs are exactly those of a plaintext stack; the
files each service reads, their owners and modes; the read-back of TlsFiles."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from components import specs, tls
from components.config import ClusterConfig, load_cluster_config
from components.providers.base import HostProvider
from components.providers.tls_files import drift_of, expected_stat, parse_read_back, read_back_script
from components.providers.tls_trust import leader_last, quorum_problem, voting_members
from components.tls_plan import ca_common_name, dropped_trust_problem, tls_file_sets, trust_targets
from tests.unit.configs import lab_raw


def _lab(enabled: bool, **tls: Any) -> ClusterConfig:
    raw = lab_raw()
    raw["tls"] = {"enabled": enabled, **tls}
    return load_cluster_config(raw, set())


def _all_specs(cfg: ClusterConfig) -> dict[str, Any]:
    host = cfg.with_role("patroni")[0]
    return {
        "etcd": specs.etcd_member_spec(cfg, host), "node": specs.patroni_node_spec(cfg, host),
        "cluster": specs.patroni_cluster_spec(cfg), "dynamic": specs.dynamic_config_spec(cfg),
        "leader": specs.leader_spec(cfg), "haproxy": specs.haproxy_spec(cfg),
    }


def test_tls_on_every_url_is_https_and_specs_carry_tls() -> None:
    on = _all_specs(_lab(True))
    assert "http://" not in repr(on)
    assert on["etcd"]["bootstrap_cluster"]["pg2"] == "https://10.77.0.12:2380"
    assert on["cluster"]["etcd_endpoints"][0] == "https://10.77.0.11:2379"
    assert on["etcd"]["tls"]["key_file"] == "/etc/etcd/pgha-tls/server.key"
    assert on["node"]["tls"]["key_file"] == "/etc/patroni/tls/node.key"
    assert on["haproxy"]["tls"] == {"ca_file": "/etc/haproxy/pgha-ca.crt"}
    assert on["node"]["pg_hba"]["20 replication pg2"].startswith("hostssl")


def test_tls_off_inputs_are_those_of_a_plaintext_stack() -> None:
    off = _all_specs(_lab(False))
    assert "https://" not in repr(off) and "'tls'" not in repr(off)
    assert off["etcd"]["bootstrap_cluster"]["pg2"] == "http://10.77.0.12:2380"
    assert off["node"]["pg_hba"]["20 replication pg2"].startswith("host ")


def test_file_sets_per_host_and_service() -> None:
    cfg = _lab(True)
    sets = {h.name: {s.service: s for s in tls_file_sets(cfg, h)} for h in cfg.hosts}
    assert set(sets["pg1"]) == {"etcd", "patroni"} and set(sets["pg4"]) == {"haproxy"}
    etcd = sets["pg1"]["etcd"]
    assert (etcd.certificate, etcd.directory, etcd.owner) == ("pg1-etcd", "/etc/etcd/pgha-tls", "etcd")
    keys = [f for s in (etcd, sets["pg1"]["patroni"]) for f in s.files if f.content == "key"]
    assert [(f.path, f.mode, f.owner) for f in keys] == [
        ("/etc/etcd/pgha-tls/server.key", "0600", "etcd"), ("/etc/patroni/tls/node.key", "0600", "postgres")]
    haproxy = sets["pg4"]["haproxy"]
    assert haproxy.certificate is None and [f.path for f in haproxy.files] == ["/etc/haproxy/pgha-ca.crt"]
    required = _lab(True, restApiVerifyClient="required")
    pem = next(f for s in tls_file_sets(required, required.hosts[3]) for f in s.files
               if f.content == "cert+key")
    assert (pem.path, pem.mode, pem.owner) == ("/etc/haproxy/pgha-client.pem", "0600", "haproxy")
    assert tls_file_sets(_lab(False), cfg.hosts[0]) == []


PROPS = {"service": "etcd", "layout": {"/d/ca.crt": "0644 etcd:etcd", "/d/server.key": "0600 etcd:etcd"},
         "contents": {"/d/ca.crt": "CA", "/d/server.key": "KEY"}}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_read_back_matches_what_was_written() -> None:
    assert expected_stat(PROPS) == {"/d/ca.crt": f"{_sha('CA')} 644:etcd:etcd",
                                    "/d/server.key": f"{_sha('KEY')} 600:etcd:etcd"}
    output = f"/d/ca.crt {_sha('CA')} 644:etcd:etcd\n/d/server.key {_sha('KEY')} 600:etcd:etcd\n"
    assert drift_of(PROPS, parse_read_back(output)) == ""
    assert "for f in /d/ca.crt '/d/a b.key';" in read_back_script(["/d/ca.crt", "/d/a b.key"])


def test_read_back_names_what_changed_on_the_host() -> None:
    output = f"/d/ca.crt {_sha('other')} 644:etcd:etcd\n/d/server.key {_sha('KEY')} 644:root:root\n"
    assert drift_of(PROPS, parse_read_back(output)) == (
        "/d/ca.crt was changed on the host; /d/server.key is 644:root:root, not 600:etcd:etcd")
    assert drift_of(PROPS, parse_read_back("/d/ca.crt missing\n")) == (
        "/d/ca.crt is missing; /d/server.key is missing")


def test_a_renewed_client_certificate_is_no_change_of_a_resource() -> None:
    provider = HostProvider()
    olds = {"scope": "s", "tls_client": {"cert_pem": "old"}}
    assert provider.changed_keys(olds, {**olds, "tls_client": {"cert_pem": "new"}}) == []


def test_a_deployed_service_moves_to_tls_but_not_back() -> None:
    """Plaintext -> TLS is an update (providers/tls_move.py moves the cluster first); TLS ->
    plaintext fails the preview naming pgha:tls.enabled."""
    plain = {"name": "pg1", "connection": {"host": "10.77.0.11"}, "address": "10.77.0.11"}
    secured = {**plain, "tls": {"ca_file": "/etc/etcd/pgha-tls/ca.crt"}}
    provider = HostProvider()
    assert provider.diff("id", plain, secured).changes is None  # the engine shows `tls` added
    try:
        provider.diff("id", secured, plain)
    except RuntimeError as err:
        assert str(err).startswith("10.77.0.11 runs with TLS") and "pgha:tls.enabled: true" in str(err), err
    else:
        raise AssertionError("a move back to plaintext must be refused")
    assert provider.diff("id", secured, secured).changes is False
    assert provider.diff("id", plain, plain).changes is False


def test_a_change_of_trusted_cas_goes_to_every_bundle_and_restarts_etcd_last() -> None:
    """CA rotation, first phase: every CA file of every service, read-on-use files first, then the
    etcd members in the stack's order (each restarted: etcd loads its CAs only at start)."""
    targets = trust_targets(_lab(True))
    assert [(t.host, t.service, t.restart) for t in targets] == [
        ("pg1", "patroni", False), ("pg2", "patroni", False), ("pg3", "patroni", False),
        ("pg4", "haproxy", False), ("pg1", "etcd", True), ("pg2", "etcd", True), ("pg3", "etcd", True)]
    assert {t.file.path for t in targets if t.service == "etcd"} == {"/etc/etcd/pgha-tls/ca.crt"}
    assert all(t.file.content == "ca" and t.file.mode == "0644" for t in targets)
    assert trust_targets(_lab(False)) == []


def test_an_etcd_restart_for_the_bundle_keeps_a_quorum() -> None:
    assert quorum_problem("pg1", {"pg2": True, "pg3": True}) == ""
    # With pg3 down, restarting pg1 would leave pg2 alone.
    problem = quorum_problem("pg1", {"pg2": True, "pg3": False})
    assert "leave 1 of 3 members, below a quorum of 2: pg3 not healthy" in problem
    assert quorum_problem("pg1", {"pg2": True, "pg3": True, "pg4": True, "pg5": False}) == ""  # 3 of 5
    assert "pg4, pg5 not healthy" in quorum_problem("pg1", {"pg2": True, "pg3": True, "pg4": False,
                                                             "pg5": False})


def test_a_valid_ca_never_leaves_the_trusted_cas_with_its_certificates_in_use() -> None:
    """A user's new pgha:tls.caCertFile without the old CA would have the hosts restarted first
    refuse the others: refused in the preview, naming the key. New beside old is fine, and so is
    dropping a CA that expired (nothing it signed is still valid)."""
    now = tls.utcnow()
    old, new = tls.create_ca("old CA", 30, now=now), tls.create_ca("new CA", 3650, now=now)
    assert dropped_trust_problem(old.cert_pem, tls.bundle(new.cert_pem, old.cert_pem), now, "ca") == ""
    problem = dropped_trust_problem(old.cert_pem, new.cert_pem, now, "ca")
    assert problem.startswith("pgha:tls.caCertFile: ") and "old CA (valid until" in problem
    # The stack's own CA replaced instead of rotated (pulumi up --replace): the same refusal.
    assert "raising pgha:tls.caGeneration" in dropped_trust_problem(old.cert_pem, new.cert_pem, now,
                                                                     "generated")
    later = now + dt.timedelta(days=31)
    assert dropped_trust_problem(tls.bundle(new.cert_pem, old.cert_pem), new.cert_pem, later, "ca") == ""


def test_a_new_ca_generation_renames_the_ca_so_that_it_rotates() -> None:
    assert ca_common_name(_lab(True)) == "pgha pgha-lab cluster CA"  # as before caGeneration
    assert ca_common_name(_lab(True, caGeneration=2)) == "pgha pgha-lab cluster CA 2"


def test_the_quorum_counts_the_voting_members_etcd_lists() -> None:
    listed = [{"ID": "1", "name": "pg1", "clientURLs": ["https://10.77.0.11:2379"]},
              {"ID": "2", "name": "pg2", "clientURLs": ["https://10.77.0.12:2379"]},
              {"ID": "3", "name": "", "clientURLs": []},  # added, not started: counts, not healthy
              {"ID": "4", "name": "pg4", "clientURLs": ["https://10.77.0.14:2379"], "isLearner": True}]
    assert voting_members(listed) == {"pg1": "https://10.77.0.11:2379", "pg2": "https://10.77.0.12:2379",
                                      "3": None}


def test_the_etcd_leader_restarts_last() -> None:
    members = [{"host": "pg1"}, {"host": "pg2"}, {"host": "pg3"}]
    assert [m["host"] for m in leader_last(members, "pg1")] == ["pg2", "pg3", "pg1"]
    assert [m["host"] for m in leader_last(members, None)] == ["pg1", "pg2", "pg3"]

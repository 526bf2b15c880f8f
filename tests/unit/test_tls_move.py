"""The move of a running plaintext cluster to TLS: its decisions (components/tls_move.py) and the
HAProxy file it writes while the nodes move one by one."""

from __future__ import annotations

from components import render
from components.tls_move import EtcdHostState, etcd_step, initial_cluster, restart_order


def _hosts(scheme: str | None, data: bool = True, snapshot: str = "") -> list[EtcdHostState]:
    return [EtcdHostState(n, scheme, data, snapshot) for n in ("pg1", "pg2", "pg3")]


def test_a_new_cluster_has_nothing_to_move() -> None:
    assert etcd_step(_hosts(None, data=False), False, None).step == "new"


def test_a_cluster_on_tls_has_nothing_to_move() -> None:
    assert etcd_step(_hosts("https"), False, None).step == "tls"
    # A member being added in the same `up` has no pgha file yet.
    hosts = [*_hosts("https"), EtcdHostState("pg4", None, False)]
    assert etcd_step(hosts, False, None).step == "tls"


def test_a_plaintext_cluster_that_answers_moves() -> None:
    assert etcd_step(_hosts("http"), True, ["pg1", "pg2", "pg3"]).step == "move"
    # A member added in the same `up` joins later, on https.
    hosts = [*_hosts("http"), EtcdHostState("pg4", None, False)]
    assert etcd_step(hosts, True, ["pg1", "pg2", "pg3"]).step == "move"


def test_a_member_no_longer_configured_stops_the_move() -> None:
    decision = etcd_step(_hosts("http"), True, ["pg1", "pg2", "pg3", "pg9"])
    assert decision.step == "stop" and "pg9" in decision.reason and "second `up`" in decision.reason


def test_a_half_done_move_resumes_from_its_snapshot() -> None:
    hosts = [EtcdHostState("pg1", "https", True, "abc"), EtcdHostState("pg2", "http", True, "abc"),
             EtcdHostState("pg3", "http", False, "abc")]
    decision = etcd_step(hosts, False, None)
    assert decision.step == "resume" and "snapshot" in decision.reason


def test_a_silent_plaintext_cluster_without_one_snapshot_stops() -> None:
    hosts = [EtcdHostState("pg1", "http", True, "abc"), EtcdHostState("pg2", "http", True, ""),
             EtcdHostState("pg3", "http", True, "abc")]
    decision = etcd_step(hosts, False, None)
    assert decision.step == "stop" and "pg1, pg2, pg3" in decision.reason
    assert etcd_step(_hosts("http"), False, None).step == "stop"


def test_the_leader_restarts_first() -> None:
    assert restart_order({"pg1": "replica", "pg2": "primary", "pg3": "replica"}) == ["pg2", "pg1", "pg3"]
    assert restart_order({"pg3": "replica", "pg1": "replica"}) == ["pg1", "pg3"]


def test_initial_cluster_is_written_as_etcd_member_writes_it() -> None:
    assert initial_cluster({"pg2": "https://b:2380", "pg1": "https://a:2380"}) == (
        "pg1=https://a:2380,pg2=https://b:2380")


def _haproxy(**extra: object) -> str:
    servers = {"pg1": "10.0.0.1:5432 maxconn 100 check port 8008",
               "pg2": "10.0.0.2:5432 maxconn 100 check port 8008"}
    return render.haproxy_cfg({
        "scope": "demo", "primary_port": 5000, "replica_port": 5001, "stats_port": 7000,
        "global_maxconn": 100, "inter_ms": 2000, "fastinter_ms": 500, "fall": 3, "rise": 2,
        "primary_servers": servers, "replica_servers": servers, "tls": {"ca_file": "/etc/haproxy/ca.crt"},
        **extra})


def test_haproxy_checks_only_the_moved_nodes_over_https() -> None:
    text = _haproxy(tls_checked=["pg1"])
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("server ")]
    assert lines[0].endswith("check port 8008 check-ssl verify required ca-file /etc/haproxy/ca.crt "
                             "verifyhost pg1")
    assert lines[1].endswith("check port 8008"), lines
    assert all("check-ssl" not in line for line in text.splitlines() if "default-server" in line)
    assert "moving to TLS: pg1 checked over https so far" in text


def test_haproxy_file_outside_a_move_is_unchanged() -> None:
    text = _haproxy()
    assert "moving" not in text
    assert all("check-ssl" in line for line in text.splitlines() if "default-server" in line)
    assert all(line.strip().endswith(("verifyhost pg1", "verifyhost pg2"))
               for line in text.splitlines() if line.strip().startswith("server "))

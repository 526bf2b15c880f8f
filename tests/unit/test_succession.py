"""Who takes over the leader role: the members Patroni accepts as switchover candidate, and the best."""

from __future__ import annotations

from typing import Any

import pytest

from components.succession import Member, SyncMode, choose_successor, members_of

LEADER = Member("pg1", "leader", "running", lag=None)


def replica(name: str, role: str = "replica", state: str = "streaming", lag: int | None = 0,
            **tags: Any) -> Member:
    return Member.from_patroni({"name": name, "role": role, "state": state,
                                "lag": "unknown" if lag is None else lag, "tags": tags})


def test_synchronous_mode_skips_the_asynchronous_replica_listed_first() -> None:
    """Issue #12: the async replica came first and took the switchover; Patroni answered 412."""
    cluster = {"members": [
        {"name": "pg1", "role": "leader", "state": "running", "timeline": 3},
        {"name": "pg2", "role": "replica", "state": "streaming", "lag": 0, "tags": {}},
        {"name": "pg3", "role": "sync_standby", "state": "streaming", "lag": 4096},
    ]}
    members = members_of(cluster)
    chosen = choose_successor(members, SyncMode.ON)
    assert chosen.target == "pg3"
    assert chosen.why_not("pg2") == "pg2 is an asynchronous replica in synchronous mode"
    # Without synchronous mode the least lagging replica wins.
    assert choose_successor(members, SyncMode.OFF).target == "pg2"


def test_an_unhealthy_synchronous_standby_means_wait_and_says_why_for_each_member() -> None:
    members = [LEADER, replica("pg2"), replica("pg3", role="sync_standby", state="starting")]
    chosen = choose_successor(members, SyncMode.ON)
    assert chosen.must_wait
    assert chosen.target == ""
    assert chosen.reason == ("no member can take over the leader role: pg1 holds the leader role; "
                             "pg2 is an asynchronous replica in synchronous mode; "
                             "pg3 is not streaming (state: starting)")


def test_nosync_replicas_are_named_as_such_in_synchronous_mode() -> None:
    chosen = choose_successor([LEADER, replica("pg2", nosync=True)], SyncMode.ON)
    assert chosen.why_not("pg2") == "pg2 is an asynchronous replica in synchronous mode (tagged nosync)"


def test_nofailover_and_failover_priority_zero_never_qualify() -> None:
    members = [LEADER, replica("pg2", nofailover=True), replica("pg3", failover_priority=0),
               replica("pg4", lag=9000)]
    chosen = choose_successor(members, SyncMode.OFF)
    assert chosen.target == "pg4"
    assert chosen.why_not("pg2") == "pg2 is tagged nofailover"
    assert chosen.why_not("pg3") == "pg3 has failover_priority 0"


def test_an_explicit_nofailover_false_wins_over_failover_priority_zero() -> None:
    """Patroni's Tags.nofailover: the nofailover tag, when set, takes precedence."""
    chosen = choose_successor([LEADER, replica("pg2", nofailover=False, failover_priority=0)], SyncMode.OFF)
    assert chosen.target == "pg2"


def test_noloadbalance_does_not_stop_a_member_from_leading() -> None:
    assert choose_successor([LEADER, replica("pg2", noloadbalance=True)], SyncMode.OFF).target == "pg2"


def test_the_configured_leader_wins_when_it_qualifies_even_with_more_lag() -> None:
    members = [LEADER, replica("pg2", lag=0), replica("pg3", lag=65536)]
    chosen = choose_successor(members, SyncMode.OFF, preferred="pg3")
    assert (chosen.target, chosen.reason) == ("pg3", "pg3 is the configured leader")


def test_a_configured_leader_that_does_not_qualify_gives_way_and_the_reason_says_why() -> None:
    members = [LEADER, replica("pg2", lag=0), replica("pg3", role="sync_standby", lag=100)]
    chosen = choose_successor(members, SyncMode.ON, preferred="pg2")
    assert chosen.target == "pg3"
    assert chosen.reason == ("pg3 qualifies with the least lag (the configured leader does not qualify: "
                             "pg2 is an asynchronous replica in synchronous mode)")
    missing = choose_successor(members, SyncMode.OFF, preferred="pg9")
    assert missing.target == "pg2"
    assert missing.reason == ("pg2 qualifies with the least lag (the configured leader does not qualify: "
                              "pg9 is not a member of the cluster)")


def test_least_lag_then_unknown_lag_last_then_failover_priority_then_name() -> None:
    assert choose_successor([LEADER, replica("pg2", lag=500), replica("pg3", lag=20)],
                            SyncMode.OFF).target == "pg3"
    assert choose_successor([LEADER, replica("pg2", lag=None), replica("pg3", lag=1 << 20)],
                            SyncMode.OFF).target == "pg3"
    by_priority = [LEADER, replica("pg2", failover_priority=1), replica("pg3", failover_priority=5)]
    assert choose_successor(by_priority, SyncMode.OFF).target == "pg3"
    assert choose_successor([LEADER, replica("pg3"), replica("pg2")], SyncMode.OFF).target == "pg2"


def test_quorum_mode_hands_over_only_to_a_quorum_standby() -> None:
    members = [LEADER, replica("pg2", lag=0), replica("pg3", role="quorum_standby", lag=300),
               replica("pg4", role="quorum_standby", lag=200)]
    chosen = choose_successor(members, SyncMode.QUORUM)
    assert chosen.target == "pg4"
    assert chosen.why_not("pg2") == "pg2 is not a quorum standby in quorum mode"
    alone = choose_successor([LEADER, replica("pg2")], SyncMode.QUORUM)
    assert alone.must_wait
    assert alone.reason.endswith("pg2 is not a quorum standby in quorum mode")


def test_excluded_members_never_qualify_and_carry_the_callers_reason() -> None:
    members = [LEADER, replica("pg2", role="sync_standby"), replica("pg3", role="sync_standby", lag=10)]
    chosen = choose_successor(members, SyncMode.ON, exclude={"pg2": "is being removed"})
    assert chosen.target == "pg3"
    assert chosen.why_not("pg2") == "pg2 is being removed"
    everyone = choose_successor(members, SyncMode.ON, exclude={"pg2": "is being removed",
                                                                "pg3": "has a restart pending"})
    assert everyone.reason == ("no member can take over the leader role: pg1 holds the leader role; "
                               "pg2 is being removed; pg3 has a restart pending")


def test_no_member_at_all_means_wait() -> None:
    chosen = choose_successor([], SyncMode.OFF)
    assert (chosen.target, chosen.reason) == ("", "no member can take over the leader role: "
                                                  "the cluster lists no members")


@pytest.mark.parametrize(("value", "mode"), [
    (True, SyncMode.ON), ("on", SyncMode.ON), ("TRUE", SyncMode.ON), ("quorum", SyncMode.QUORUM),
    ("Quorum", SyncMode.QUORUM), (False, SyncMode.OFF), ("off", SyncMode.OFF), (None, SyncMode.OFF),
])
def test_synchronous_mode_is_read_from_the_dcs_setting(value: object, mode: SyncMode) -> None:
    assert SyncMode.from_setting(value) is mode


def test_a_patroni_member_is_parsed_into_what_decides_succession() -> None:
    member = Member.from_patroni({"name": "pg2", "role": "sync_standby", "state": "streaming",
                                  "lag": "unknown", "pending_restart": True,
                                  "tags": {"failover_priority": "3", "noloadbalance": True}})
    assert member == Member("pg2", "sync_standby", "streaming", lag=None, nofailover=None,
                            failover_priority=3, nosync=False, noloadbalance=True, pending_restart=True)
    assert not member.is_leader
    assert Member.from_patroni({"name": "pg1", "role": "standby_leader"}).is_leader

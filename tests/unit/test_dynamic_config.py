"""The DCS settings: what a PATCH sends, what a refresh sees, and when no PATCH is needed;
and who the hand-overs these providers start (rolling restart, pgha:leader, removing the
leader's host) switch over to, against a fake Patroni that refuses what the real one refuses."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from components import specs
from components.config import load_cluster_config
from components.providers import dynamic_config, patroni_cluster
from components.providers.dynamic_config import (
    Cluster,
    LeaderProvider,
    config_patch,
    managed_view,
    needs_patch,
    rolling_restart,
    wait_for_successor,
)
from components.providers.patroni_cluster import PatroniClusterProvider
from components.transport.ssh import SshError
from tests.unit.configs import lab_raw


def desired() -> dict[str, Any]:
    return specs.dynamic_config_spec(load_cluster_config(lab_raw(), set()))["dcs"]


def as_bootstrapped(dcs: dict[str, Any]) -> dict[str, Any]:
    """GET /config of a cluster seeded from bootstrap.dcs, with what Patroni adds on its own."""
    live = copy.deepcopy(dcs)
    live["postgresql"]["parameters"]["max_connections"] = 150  # YAML may hand back a number
    live["postgresql"]["parameters"]["unmanaged_by_pgha"] = "x"
    live["check_timeline"] = False
    return live


def test_a_freshly_bootstrapped_cluster_needs_no_patch() -> None:
    dcs = desired()
    assert managed_view(as_bootstrapped(dcs), dcs) == dcs
    assert not needs_patch(as_bootstrapped(dcs), None, dcs)


def test_a_changed_or_missing_setting_needs_a_patch() -> None:
    dcs = desired()
    live = as_bootstrapped(dcs)
    live["postgresql"]["parameters"]["shared_buffers"] = "256MB"
    assert needs_patch(live, dcs, dcs)
    live = as_bootstrapped(dcs)
    del live["loop_wait"]
    assert needs_patch(live, dcs, dcs)


def test_a_setting_dropped_from_the_stack_is_patched_away_only_while_live() -> None:
    old = desired()
    old["postgresql"]["parameters"]["log_min_duration_statement"] = "250ms"
    new = desired()
    live = as_bootstrapped(old)
    assert needs_patch(live, old, new)
    assert config_patch(old, new)["postgresql"]["parameters"]["log_min_duration_statement"] is None
    del live["postgresql"]["parameters"]["log_min_duration_statement"]
    assert not needs_patch(live, old, new)


def test_a_top_level_key_dropped_from_the_stack_is_sent_as_null() -> None:
    old, new = desired(), desired()
    del new["maximum_lag_on_failover"]
    patch = config_patch(old, new)
    assert patch["maximum_lag_on_failover"] is None
    assert needs_patch(as_bootstrapped(old), old, new)


def test_a_patch_carries_every_desired_value() -> None:
    dcs = desired()
    patch = config_patch(None, dcs)
    assert patch["ttl"] == dcs["ttl"]
    assert patch["postgresql"]["parameters"] == dcs["postgresql"]["parameters"]
    assert None not in patch["postgresql"]["parameters"].values()


@dataclass
class Answer:
    status_code: int
    text: str = ""


class FakePatroni:
    """GET /cluster and /config, POST /restart and /switchover, as far as hand-overs use them.

    Like Patroni in synchronous_mode on, a switchover to a member that is not the
    synchronous standby is refused with 412.
    """

    def __init__(self, synchronous_mode: object, *members: dict[str, Any]) -> None:
        self.synchronous_mode = synchronous_mode
        self.state = [dict(m) for m in members]
        self.switchovers: list[tuple[str, str]] = []

    def node(self, name: str | None = None) -> FakeNode:
        return FakeNode(self, name)

    def member(self, name: str) -> dict[str, Any]:
        return next(m for m in self.state if m["name"] == name)

    def switchover(self, leader: str, candidate: str) -> Answer:
        if self.synchronous_mode is True and self.member(candidate)["role"] != "sync_standby":
            return Answer(412, "candidate name does not match with sync_standby")
        self.switchovers.append((leader, candidate))
        self.member(leader).update(role="replica", state="streaming")
        self.member(candidate).update(role="leader", state="running")
        return Answer(200)

    def restart(self, name: str) -> Answer:
        member = self.member(name)
        member.update(pending_restart=False, state="running" if member["role"] == "leader" else "streaming")
        return Answer(200)


@dataclass
class FakeNode:
    patroni: FakePatroni
    name: str | None

    def cluster(self) -> dict[str, Any]:
        return {"members": [dict(m) for m in self.patroni.state]}

    def config(self) -> dict[str, Any]:
        return {"synchronous_mode": self.patroni.synchronous_mode}

    def restart(self) -> Answer:
        assert self.name is not None
        return self.patroni.restart(self.name)

    def switchover(self, leader: str, candidate: str) -> Answer:
        return self.patroni.switchover(leader, candidate)


def cluster_on(patroni: FakePatroni) -> Cluster:
    cluster = Cluster.__new__(Cluster)  # no DCS: every REST call reaches the fake
    cluster.api = patroni.node  # type: ignore[method-assign]
    return cluster


def node(name: str, role: str = "replica", lag: int = 0, pending_restart: bool = False,
         **tags: Any) -> dict[str, Any]:
    state = "running" if role == "leader" else "streaming"
    return {"name": name, "role": role, "state": state, "lag": lag, "pending_restart": pending_restart,
            "tags": tags}


def sync_three(pending_restart: bool = False) -> FakePatroni:
    """Issue #12's cluster: the asynchronous replica is listed before the synchronous standby."""
    return FakePatroni(True, node("pg1", "leader", pending_restart=pending_restart),
                       node("pg2", pending_restart=pending_restart),
                       node("pg3", "sync_standby", lag=4096, pending_restart=pending_restart))


def test_a_rolling_restart_in_synchronous_mode_switches_over_to_the_synchronous_standby() -> None:
    patroni = sync_three(pending_restart=True)
    assert rolling_restart(cluster_on(patroni), None, timeout=5) == ["pg2", "pg3", "pg1"]
    assert patroni.switchovers == [("pg1", "pg3")]
    assert not any(m["pending_restart"] for m in patroni.state)


def test_a_rolling_restart_hands_over_to_the_configured_leader_when_it_qualifies() -> None:
    patroni = FakePatroni(False, node("pg1", "leader", pending_restart=True), node("pg2"),
                          node("pg3", lag=9000))
    assert rolling_restart(cluster_on(patroni), "pg3", timeout=5) == ["pg1"]
    assert patroni.switchovers == [("pg1", "pg3")]


def test_a_leader_nobody_else_may_replace_restarts_in_place() -> None:
    patroni = FakePatroni(False, node("pg1", "leader", pending_restart=True), node("pg2", nofailover=True))
    assert rolling_restart(cluster_on(patroni), None, timeout=5) == ["pg1"]
    assert patroni.switchovers == []


def test_pgha_leader_on_an_asynchronous_replica_in_synchronous_mode_fails_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    patroni = sync_three()
    monkeypatch.setattr(dynamic_config, "Cluster", lambda _props: cluster_on(patroni))
    with pytest.raises(SshError) as err:
        LeaderProvider()._apply({"scope": "pg", "leader": "pg2"})
    assert str(err.value) == ("pg2: switch over to pgha:leader: pg2 is an asynchronous replica in "
                              "synchronous mode (a switchover could go to pg3 now)")
    assert patroni.switchovers == []


def test_pgha_leader_on_the_synchronous_standby_switches_over(monkeypatch: pytest.MonkeyPatch) -> None:
    patroni = sync_three()
    monkeypatch.setattr(dynamic_config, "Cluster", lambda _props: cluster_on(patroni))
    assert LeaderProvider()._apply({"scope": "pg", "leader": "pg3"})["current_leader"] == "pg3"
    assert patroni.switchovers == [("pg1", "pg3")]


def test_removing_the_leaders_host_in_synchronous_mode_hands_over_to_the_synchronous_standby(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #12, item 1: `up` failed with HTTP 412 after picking pg2."""
    patroni = sync_three()
    monkeypatch.setattr(patroni_cluster, "Cluster", lambda _props: cluster_on(patroni))
    PatroniClusterProvider()._move_leader_off({"scope": "pg", "members": ["pg2", "pg3"]}, {"pg1"})
    assert patroni.switchovers == [("pg1", "pg3")]


def test_waiting_for_a_successor_fails_with_every_member_and_why() -> None:
    patroni = sync_three()
    patroni.member("pg3")["state"] = "stopped"
    with pytest.raises(SshError) as err:
        wait_for_successor(cluster_on(patroni), "pg1", {"pg2": "is being removed"}, timeout=0)
    assert str(err.value) == ("pg1: choose who takes over the leader role: no member can take over the "
                              "leader role: pg1 holds the leader role; pg2 is being removed; "
                              "pg3 is not streaming (state: stopped)")

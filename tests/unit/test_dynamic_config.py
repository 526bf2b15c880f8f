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
    desired_view,
    live_view,
    rolling_restart,
    wait_for_successor,
)
from components.providers.patroni_cluster import PatroniClusterProvider
from components.transport.ssh import SshError
from tests.unit.configs import lab_raw


def desired(**raw_changes: Any) -> dict[str, Any]:
    raw = lab_raw()
    raw.update(raw_changes)
    return specs.dynamic_config_spec(load_cluster_config(raw, set()))


def as_bootstrapped(props: dict[str, Any]) -> dict[str, Any]:
    """GET /config of a cluster seeded from bootstrap.dcs, with what Patroni adds on its own."""
    want = desired_view(props)
    settings = dict(want["settings"])
    pg = {k: settings.pop(k) for k in ("use_pg_rewind", "use_slots")}
    params: dict[str, Any] = copy.deepcopy(want["parameters"])
    params["max_connections"] = 150  # YAML may hand back a number
    return {**settings, "check_timeline": False, "postgresql": {**pg, "parameters": params}}


def test_a_freshly_bootstrapped_cluster_needs_no_patch() -> None:
    props = desired()
    assert live_view(as_bootstrapped(props), []) == desired_view(props)
    assert config_patch(as_bootstrapped(props), props) is None


def test_each_parameter_is_in_exactly_one_map_that_says_what_its_change_costs() -> None:
    props = desired()
    assert props["parameters_restart"]["shared_buffers"] == "128MB"
    assert "shared_buffers" not in props["parameters_reload"]
    assert props["parameters_reload"]["log_lock_waits"] == "on"
    assert not set(props["parameters_reload"]) & set(props["parameters_restart"])
    assert "restart_required" not in props


def test_a_changed_or_missing_setting_needs_a_patch() -> None:
    props = desired()
    live = as_bootstrapped(props)
    live["postgresql"]["parameters"]["shared_buffers"] = "256MB"
    patch = config_patch(live, props)
    assert patch is not None and patch["postgresql"]["parameters"]["shared_buffers"] == "128MB"
    live = as_bootstrapped(props)
    del live["loop_wait"]
    assert config_patch(live, props) is not None


def test_a_parameter_added_by_hand_is_drift_and_patched_away() -> None:
    props = desired()
    live = as_bootstrapped(props)
    live["postgresql"]["parameters"]["log_min_duration_statement"] = "999ms"
    assert live_view(live, [])["parameters"]["log_min_duration_statement"] == "999ms"
    patch = config_patch(live, props)
    assert patch is not None and patch["postgresql"]["parameters"]["log_min_duration_statement"] is None
    provider = dynamic_config.DynamicConfigProvider()
    olds = {**props, "live": live_view(live, [])}
    assert provider.drifted(olds, props) == ["live"]
    assert provider.diff("id", olds, props).changes is True


def test_a_parameter_left_to_operators_is_never_reset() -> None:
    props = desired(postgresql={"operatorParameters": ["log_min_duration_statement"]})
    assert props["operator_parameters"] == ["log_min_duration_statement"]
    live = as_bootstrapped(props)
    live["postgresql"]["parameters"]["log_min_duration_statement"] = "999ms"
    assert config_patch(live, props) is None
    assert "log_min_duration_statement" not in live_view(live, props["operator_parameters"])["parameters"]


def test_a_top_level_key_dropped_from_the_stack_is_sent_as_null() -> None:
    props = desired()
    live = as_bootstrapped(props)
    del props["dcs"]["maximum_lag_on_failover"]
    patch = config_patch(live, props)
    assert patch is not None and patch["maximum_lag_on_failover"] is None


def test_a_patch_carries_every_desired_value() -> None:
    props = desired()
    live = as_bootstrapped(props)
    live["ttl"] = 99
    patch = config_patch(live, props)
    assert patch is not None
    assert patch["ttl"] == props["dcs"]["ttl"]
    assert patch["postgresql"]["parameters"] == {**props["parameters_reload"], **props["parameters_restart"]}


def test_a_stack_stored_by_an_older_pgha_reads_as_unchanged() -> None:
    """State written before the split (nested dcs + restart_required) is no change."""
    props = desired()
    want = desired_view(props)
    settings = dict(want["settings"])
    pg = {k: settings.pop(k) for k in ("use_pg_rewind", "use_slots")}
    legacy = {k: v for k, v in props.items()
              if k not in ("dcs", "parameters_reload", "parameters_restart", "operator_parameters")}
    legacy["dcs"] = {**settings, "postgresql": {**pg, "parameters": want["parameters"]}}
    legacy["restart_required"] = dict(props["parameters_restart"])
    provider = dynamic_config.DynamicConfigProvider()
    assert provider.changed_keys(legacy, props) == []
    assert provider.diff("id", legacy, props).changes is False
    changed = desired()
    changed["parameters_restart"]["shared_buffers"] = "256MB"
    result = provider.diff("id", legacy, changed)
    assert result.changes is None and not result.replaces  # the engine shows the leaf


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

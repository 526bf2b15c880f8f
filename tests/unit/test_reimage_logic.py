"""Hosts lost or re-imaged under a deployed stack (issue #12, item 2): the pure decisions.

What a refresh records about an etcd member, a Patroni node and the cluster as a whole;
what `up` does about each loss (rebuild, or stop and say how on); when a wait stops
early; and that a destroy completes without the DCS.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from components import render, specs
from components.config import load_cluster_config
from components.providers import database_role, patroni_cluster
from components.providers.database_role import DatabaseRoleProvider
from components.providers.etcd_member import (
    PEER_HAS_DATA,
    PEER_LOST,
    PEER_NO_QUORUM,
    EtcdMemberProvider,
    HostEtcd,
    env_file_problem,
    observe_member,
    parse_host_probe,
    plan_repair,
)
from components.providers.patroni_bootstrap import (
    UNREACHABLE,
    PatroniBootstrapProvider,
    cluster_nodes,
    observe_cluster,
    plan_bootstrap,
)
from components.providers.patroni_cluster import DcsView, PatroniClusterProvider
from components.providers.patroni_node import (
    DATA_ABSENT,
    DATA_EMPTY,
    DATA_OTHER,
    GRACE,
    NodeOnHost,
    PatroniNodeProvider,
    StartWatch,
    bootstrap_running,
    journal_verdict,
    no_leader_cause,
    observe_node,
    parse_node_probe,
    plan_node,
)
from components.transport import ssh as ssh_module
from components.transport.ssh import SshError, UnitStopped, WaitFailed, wait_for
from tests.unit.configs import lab_raw

SYSID = "7441234567890123456"
OTHER = "7449999999999999999"
DEBIAN_DEFAULT_ENV = ("# Debian's /etc/default/etcd\n#ETCD_NAME=\"hostname\"\n"
                      "#ETCD_DATA_DIR=\"/var/lib/etcd/default\"\n")


def _cfg() -> Any:
    return load_cluster_config(lab_raw(), set())


def _etcd(name: str = "pg1") -> dict[str, Any]:
    cfg = _cfg()
    host = next(h for h in cfg.hosts if h.name == name)
    return {"connection": specs.connection(host), **specs.etcd_member_spec(cfg, host)}


def _node(name: str = "pg1", **extra: Any) -> dict[str, Any]:
    cfg = _cfg()
    host = next(h for h in cfg.hosts if h.name == name)
    return {"connection": specs.connection(host), **specs.patroni_node_spec(cfg, host),
            "secrets": {"superuser": "a", "replication": "b", "rewind": "c", "restapi": "d"}, **extra}


# --- etcd: what a refresh sees ------------------------------------------------------------


def test_the_distros_default_etcd_is_not_our_member() -> None:
    props = _etcd()
    assert "not pgha's" in env_file_problem(DEBIAN_DEFAULT_ENV, props)
    assert env_file_problem(None, props) == "no /etc/default/etcd"
    ours = render.etcd_env(props, "pg1=http://10.77.0.11:2380", "new")
    assert env_file_problem(ours, props) == ""
    other = render.etcd_env(_etcd("pg2"), "pg2=http://10.77.0.12:2380", "new")
    assert "another member" in env_file_problem(other, props) and "ETCD_NAME='pg2'" in \
        env_file_problem(other, props)


def test_host_probe_parses_state_data_and_env_file() -> None:
    props = _etcd()
    ours = render.etcd_env(props, "pg1=http://10.77.0.11:2380", "new")
    assert parse_host_probe(f"active yes\n{ours}", props) == HostEtcd("active", "", True)
    debian = parse_host_probe(f"active no\n{DEBIAN_DEFAULT_ENV}", props)
    assert debian.active == "active" and not debian.has_data and not debian.serves_member
    assert parse_host_probe("inactive no\n<no env file>\n", props).config_problem == "no /etc/default/etcd"


def test_refresh_of_a_reimaged_etcd_host_is_drift_not_running() -> None:
    """Issue #12: Debian's single-node etcd counted as running, and in_cluster stayed true."""
    props = _etcd()
    debian = HostEtcd("active", env_file_problem(DEBIAN_DEFAULT_ENV, props), False)
    view = observe_member(props, "silent", debian)
    assert (view.running, view.in_cluster) == (False, False)
    assert "no member of etcd cluster pgha-pgha-lab answers" in view.drift
    assert "not pgha's" in view.drift and "no etcd data" in view.drift
    olds = {**props, "member_id": "1", "running": view.running, "in_cluster": view.in_cluster,
            "drift": view.drift}
    assert EtcdMemberProvider().diff("m", olds, props).changes is True


def test_refresh_of_a_healthy_member_is_no_drift() -> None:
    view = observe_member(_etcd(), "listed", HostEtcd("active", "", True))
    assert view == type(view)(True, True, "")


def test_refresh_of_an_unreachable_host_names_it() -> None:
    view = observe_member(_etcd(), "listed", None, "pg1: connect over SSH: timed out")
    assert not view.running and view.in_cluster and "unreachable" in view.drift


# --- etcd: what `up` does -----------------------------------------------------------------

HEALTHY = HostEtcd("active", "", True)
LOST = HostEtcd("active", "/etc/default/etcd is not pgha's", False)


@pytest.mark.parametrize(("answer", "host", "action"), [
    ("listed", HEALTHY, "restart"),
    ("listed", LOST, "rejoin"),  # data gone: restarting it under its old ID would make etcd panic
    ("unstarted", LOST, "join"),
    ("not listed", LOST, "join"),
    ("silent", HostEtcd("inactive", "", True), "start_from_data"),
])
def test_member_repair_with_a_cluster_or_with_data(answer: Any, host: HostEtcd, action: str) -> None:
    assert plan_repair(_etcd(), answer, host).action == action


def test_every_member_lost_founds_the_cluster_anew() -> None:
    repair = plan_repair(_etcd(), "silent", LOST, {"pg2": PEER_LOST, "pg3": PEER_LOST})
    assert repair.action == "found"
    assert "every member of etcd cluster pgha-pgha-lab is lost" in repair.reason


def test_a_quorum_still_holding_data_starts_first_and_the_lost_member_waits() -> None:
    repair = plan_repair(_etcd(), "silent", LOST, {"pg2": PEER_HAS_DATA, "pg3": PEER_NO_QUORUM})
    assert repair.action == "defer"
    assert "pg2, pg3 still hold the cluster's data" in repair.reason


def test_data_on_fewer_than_a_quorum_is_never_founded_over() -> None:
    repair = plan_repair(_etcd(), "silent", LOST, {"pg2": PEER_HAS_DATA, "pg3": PEER_LOST})
    assert repair.action == "stop"
    assert "only pg2 of 3 members still hold the cluster's data" in repair.reason
    assert "--force-new-cluster" in repair.reason and "mv /var/lib/etcd/pgha-pgha-lab" in repair.reason


def test_a_peer_that_cannot_be_checked_stops_the_founding() -> None:
    repair = plan_repair(_etcd(), "silent", LOST, {"pg2": "unknown: pg2: connect over SSH: timed out",
                                                   "pg3": PEER_LOST})
    assert repair.action == "stop"
    assert "cannot tell whether pg2 still hold" in repair.reason and "timed out" in repair.reason


# --- Patroni node: what a refresh sees ----------------------------------------------------


def test_node_probe_parses_unit_config_scope_and_data() -> None:
    host = parse_node_probe(f'unit=yes\nactive=active\nconfig=yes\nscope="pgha-lab"\ndata={SYSID}\n')
    assert host == NodeOnHost(unit=True, config_scope="pgha-lab", active="active", data=SYSID)
    bare = parse_node_probe("unit=no\nactive=inactive\ndata=absent\n")
    assert bare == NodeOnHost(unit=False, config_scope=None, active="inactive", data=DATA_ABSENT)


def test_refresh_of_a_reimaged_node_says_it_is_gone() -> None:
    view = observe_node(_node(system_identifier=SYSID), None, parse_node_probe("unit=no\nactive=inactive\n"
                                                                               "data=absent\n"))
    assert not view.running and view.drift.startswith("gone: no Patroni unit, no patroni.yml and no data")


@pytest.mark.parametrize(("probe", "words"), [
    ('unit=yes\nactive=inactive\nconfig=yes\nscope="pgha-lab"\ndata=empty\n', "an empty data directory"),
    (f'unit=yes\nactive=inactive\nconfig=yes\nscope="pgha-lab"\ndata={OTHER}\n',
     f"holds PostgreSQL system {OTHER}, another cluster: the state recorded {SYSID}"),
    (f'unit=yes\nactive=active\nconfig=yes\nscope="billing"\ndata={SYSID}\n', "is for cluster 'billing'"),
    (f'unit=yes\nactive=failed\nconfig=yes\nscope="pgha-lab"\ndata={SYSID}\n', "Patroni is failed"),
])
def test_refresh_from_the_host_when_patroni_does_not_answer(probe: str, words: str) -> None:
    view = observe_node(_node(system_identifier=SYSID), None, parse_node_probe(probe))
    assert not view.running and words in view.drift


def test_refresh_when_patroni_answers_for_another_cluster_or_system() -> None:
    props = _node(system_identifier=SYSID)
    status = {"state": "running", "role": "replica", "patroni": {"scope": "pgha-lab"},
              "database_system_identifier": SYSID}
    assert observe_node(props, status, None).running
    other_scope = observe_node(props, {**status, "patroni": {"scope": "billing"}}, None)
    assert not other_scope.running and "serves cluster 'billing'" in other_scope.drift
    other_system = observe_node(props, {**status, "database_system_identifier": OTHER}, None)
    assert not other_system.running and f"runs PostgreSQL system {OTHER}" in other_system.drift


def test_node_drift_makes_the_next_up_act() -> None:
    props = _node(system_identifier=SYSID)
    olds = {**copy.deepcopy(props), "running": False, "drift": "gone", "role": "leader", "timeline": 1}
    assert PatroniNodeProvider().diff("n", olds, props).changes is True


# --- Patroni node: what `up` does ---------------------------------------------------------

LED = DcsView(initialize=SYSID, leader="pg1", members=("pg1", "pg2"))


def test_a_node_without_data_is_rebuilt_from_the_leader() -> None:
    for data in (DATA_ABSENT, DATA_EMPTY):
        assert plan_node(_node("pg3"), NodeOnHost(False, None, "inactive", data), LED).action == "clone"


def test_a_node_with_the_clusters_data_starts() -> None:
    assert plan_node(_node("pg3"), NodeOnHost(True, "pgha-lab", "inactive", SYSID), LED).action == "start"
    fresh_dcs = DcsView(None, None, ())
    assert plan_node(_node("pg3", system_identifier=SYSID), NodeOnHost(True, "pgha-lab", "inactive", SYSID),
                     fresh_dcs).action == "start"


def test_a_node_with_another_system_next_to_a_running_cluster_is_never_wiped() -> None:
    plan = plan_node(_node("pg3"), NodeOnHost(True, "pgha-lab", "inactive", OTHER), LED)
    assert plan.action == "stop"
    assert f"holds PostgreSQL system {OTHER}, but cluster pgha-lab is system {SYSID} (the DCS)" in plan.reason
    for way_out in ("mv /var/lib/postgresql/15/pgha-lab /var/lib/postgresql/15/pgha-lab.old",
                    "remove it from pgha:hosts", "pulumi state delete"):
        assert way_out in plan.reason


def test_without_a_dcs_entry_the_recorded_system_decides() -> None:
    plan = plan_node(_node("pg3", system_identifier=SYSID), NodeOnHost(True, "pgha-lab", "inactive", OTHER),
                     DcsView(None, None, ()))
    assert plan.action == "stop" and f"system {SYSID} (the state)" in plan.reason


def test_unreadable_data_and_another_clusters_config_stop() -> None:
    assert plan_node(_node(), NodeOnHost(True, "pgha-lab", "inactive", DATA_OTHER), LED).action == "stop"
    plan = plan_node(_node(), NodeOnHost(True, "billing", "active", SYSID), LED)
    assert plan.action == "stop" and "another cluster lives on this host" in plan.reason


# --- waits that stop early ----------------------------------------------------------------

LINE = "2026-11-26 20:00:00,000"


def test_journal_system_id_mismatch_is_fatal_at_once() -> None:
    lines = [f"{LINE} INFO: Lock owner: pg1; I am pg3",
             f"{LINE} CRITICAL: system ID mismatch, node pg3 belongs to a different cluster: "
             f"{SYSID} != {OTHER}"]
    assert journal_verdict(lines) == ("fatal", lines[1])
    watch = StartWatch("pg3")
    assert "system ID mismatch" in (watch.verdict(0.0, "active", lines) or "")


def test_postgres_fatal_lines_are_part_of_a_normal_start() -> None:
    lines = [f"{LINE} UTC [42] FATAL:  the database system is starting up",
             f"{LINE} INFO: no action. I am (pg2), a secondary, and following a leader (pg1)"]
    assert journal_verdict(lines) is None


def test_unreachable_etcd_stops_the_wait_after_its_grace() -> None:
    """Issue #12: Patroni started against unreachable etcd endpoints and `up` waited 900 s."""
    # As Patroni 4.1.5 logs it on the lab, every 5 s, for each endpoint.
    def refused(address: str) -> str:
        return (f"{LINE} ERROR: Failed to get list of machines from http://{address}:2379/v3beta: "
                f"MaxRetryError('HTTPConnectionPool(host=\\'{address}\\', port=2379): Max retries exceeded')")

    lines = [f"{LINE} INFO: Lock owner: pg1; I am pg2", refused("10.77.0.11"), refused("10.77.0.12"),
             f"{LINE} INFO: waiting on etcd"]
    watch = StartWatch("pg1")
    assert watch.verdict(100.0, "active", lines) is None
    assert watch.verdict(100.0 + GRACE["dcs"] - 1, "active", lines) is None
    cause = watch.verdict(100.0 + GRACE["dcs"], "active", lines) or ""
    assert cause.startswith("Patroni on pg1 cannot reach etcd (for 30s): ")
    assert "Failed to get list of machines from http://10.77.0.12:2379" in cause  # the latest error line


def test_refused_logins_to_its_own_postgresql_stop_the_wait_after_their_grace() -> None:
    """Data kept by an earlier stack's destroy, new generated passwords: Patroni retries its
    login each loop between lines of progress; `up` waited 900 s before."""
    refused = (f"{LINE} UTC connection to server at \"localhost\" (127.0.0.1), port 5432 failed: FATAL:  "
               "password authentication failed for user \"postgres\"")
    lines = [f"{LINE} INFO: establishing a new patroni heartbeat connection to postgres", refused,
             f"{LINE} INFO: Error communicating with PostgreSQL. Will try again later",
             f"{LINE} INFO: establishing a new patroni heartbeat connection to postgres"]
    assert journal_verdict(lines) == ("auth", refused.strip())
    watch = StartWatch("pg1")
    assert watch.verdict(0.0, "active", lines) is None
    cause = watch.verdict(GRACE["auth"], "active", lines) or ""
    assert cause.startswith("Patroni on pg1 cannot log in to its PostgreSQL (for 30s)"), cause
    assert "pgha:superuserPassword" in cause and "move the data directory aside" in cause
    # Once the login works, the old refusals scroll out of the recent lines.
    assert journal_verdict([refused, *[f"{LINE} INFO: no action. I am (pg1), the leader"] * 60]) is None


def test_progress_resets_the_grace() -> None:
    watch = StartWatch("pg2")
    stuck = [f"{LINE} INFO: waiting for leader to bootstrap"]
    assert watch.verdict(0.0, "active", stuck) is None
    progress = f"{LINE} INFO: trying to bootstrap from leader 'pg1'"
    assert watch.verdict(10.0, "active", [*stuck, progress]) is None
    assert watch.verdict(GRACE["no_leader"] + 5, "active", stuck) is None  # the clock starts again
    assert "no leader to clone from" in (watch.verdict(2 * GRACE["no_leader"] + 10, "active", stuck) or "")


def test_a_stopped_unit_ends_the_wait_with_its_last_lines() -> None:
    cause = StartWatch("pg1").verdict(0.0, "failed", [f"{LINE} ERROR: something broke"])
    assert cause == f"patroni on pg1 stopped (failed): {LINE} ERROR: something broke"


def test_a_unit_passing_through_a_restart_has_not_stopped() -> None:
    """Issue seen on the lab: right after `restart --no-block` the distro's etcd was
    `deactivating`; a wait must not take a restart for a stop."""
    stopped = UnitStopped()
    assert [stopped(s) for s in ("deactivating", "inactive", "activating", "active", "inactive")] == \
        [False, False, False, False, False]
    assert stopped("inactive") is True
    assert UnitStopped()("failed") is True


def test_waiting_for_a_leader_that_no_node_can_become() -> None:
    props = _node("pg3")
    nobody = DcsView(initialize=SYSID, leader=None, members=())
    assert no_leader_cause(nobody, GRACE["no_leader"] - 1, props) is None
    cause = no_leader_cause(nobody, GRACE["no_leader"], props) or ""
    assert f"cluster pgha-lab (system {SYSID}) has no leader and no registered member" in cause
    assert no_leader_cause(LED, 1000, props) is None
    assert "no healthy etcd" in (no_leader_cause(None, GRACE["dcs"], props) or "")


BOOTSTRAPPING = DcsView(initialize="", leader=None, members=("pg1", "pg2", "pg3"))


def test_a_bootstrap_under_way_is_progress_however_long() -> None:
    """Nodes started beside the first host's bootstrap wait for it (a restore may take hours)."""
    assert BOOTSTRAPPING.bootstrapping and not LED.bootstrapping
    assert not DcsView(initialize=None, leader=None, members=()).bootstrapping
    assert no_leader_cause(BOOTSTRAPPING, 10 * GRACE["no_leader"], _node("pg3"), saw_bootstrap=True) is None
    assert "being bootstrapped" in BOOTSTRAPPING.describe("pgha-lab")


def test_a_bootstrap_nobody_runs_any_more_ends_the_wait_after_its_grace() -> None:
    """The bootstrapping host lost power: its member key expires, the initialize key stays."""
    assert bootstrap_running({"pg1": "initializing new cluster", "pg2": "stopped"})
    assert bootstrap_running({"pg1": "running custom bootstrap script"})
    assert not bootstrap_running({"pg2": "stopped", "pg3": "stopped"})
    assert not bootstrap_running({})
    props = _node("pg3")
    assert no_leader_cause(BOOTSTRAPPING, 300, props, True, GRACE["no_leader"] - 1) is None
    cause = no_leader_cause(BOOTSTRAPPING, 300, props, True, GRACE["no_leader"]) or ""
    assert "no registered node has run that bootstrap for 45s" in cause
    assert "patronictl -c /etc/patroni/patroni.yml remove pgha-lab" in cause


def test_a_failed_bootstrap_ends_the_wait_of_the_nodes_beside_it_at_once() -> None:
    """Patroni removes the initialize key when its bootstrap fails: without a leader that is final."""
    failed = DcsView(initialize=None, leader=None, members=("pg2", "pg3"))
    cause = no_leader_cause(failed, 1, _node("pg3"), saw_bootstrap=True) or ""
    assert "the bootstrap of cluster pgha-lab failed" in cause and "journal" in cause
    # Not having seen one, the same view is a wait within the grace (a bootstrap about to begin).
    assert no_leader_cause(failed, 1, _node("pg3")) is None


def test_the_first_host_mid_initdb_is_waited_for_not_refused() -> None:
    """While its own Patroni runs initdb into the data directory, the first host's node waits."""
    for data in (DATA_OTHER, "unreadable"):
        mid = plan_node(_node("pg1"), NodeOnHost(True, "pgha-lab", "active", data), BOOTSTRAPPING)
        assert mid.action == "start" and "bootstrapping cluster pgha-lab" in mid.reason
        # Patroni not running: nobody is bootstrapping into it, so it is refused as before.
        assert plan_node(_node("pg1"), NodeOnHost(True, "pgha-lab", "inactive", data),
                         BOOTSTRAPPING).action == "stop"
    assert plan_node(_node("pg2"), NodeOnHost(True, "pgha-lab", "active", DATA_ABSENT),
                     BOOTSTRAPPING).action == "clone"


def test_only_the_first_host_may_bootstrap() -> None:
    """Only the first host's patroni.yml has the section Patroni needs to race for a new cluster."""
    cfg = _cfg()
    first, *others = cfg.with_role("patroni")
    assert specs.patroni_node_spec(cfg, first)["bootstrap_leader"] is True
    for host in others:
        assert specs.patroni_node_spec(cfg, host)["bootstrap_leader"] is False
        assert "\nbootstrap:" not in render.patroni_yml(_node(host.name), _node(host.name)["secrets"])
    assert "\nbootstrap:" in render.patroni_yml(_node(first.name), _node(first.name)["secrets"])


def test_wait_for_stops_at_once_with_a_visible_cause() -> None:
    with pytest.raises(WaitFailed) as err:
        wait_for(lambda: False, timeout=60, interval=0.01, what="the impossible", host="pg1",
                 blocked=lambda: "it cannot happen")
    assert err.value.cause == "it cannot happen"
    assert str(err.value).startswith("pg1: wait for the impossible: stopped after 0s: it cannot happen")
    assert isinstance(err.value, SshError)  # callers catch waits as step failures


def test_wait_for_says_what_it_waits_for(monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[str] = []
    monkeypatch.setattr(ssh_module, "notify",
                        lambda host, text, warning=False: told.append(f"{host}: {text}"))
    monkeypatch.setattr(ssh_module, "ANNOUNCE_AFTER", 0.0)
    calls = iter([False, False, True])
    assert wait_for(lambda: next(calls), timeout=10, interval=0.01, what="the thing", host="pg2",
                    status=lambda: "state: starting")
    assert told[0] == "pg2: waiting for the thing (up to 10s) (state: starting)"
    assert told[-1].startswith("pg2: the thing: reached after")


def test_wait_for_timeout_keeps_its_message() -> None:
    with pytest.raises(SshError) as err:
        wait_for(lambda: None, timeout=0, what="x", host="h")
    assert str(err.value) == "h: wait for x: not reached within 0s"


# --- the cluster as a whole ---------------------------------------------------------------

NODES = ("pg1", "pg2", "pg3")


def test_the_first_hosts_inputs_name_every_node() -> None:
    assert cluster_nodes(_node("pg1")) == {"pg1": "10.77.0.11", "pg2": "10.77.0.12", "pg3": "10.77.0.13"}


def test_a_running_cluster_is_left_alone() -> None:
    assert plan_bootstrap("pgha-lab", "pg1", LED, {}).action == "running"


def test_nodes_left_waiting_by_a_failed_bootstrap_do_not_count_as_running() -> None:
    """A bootstrap that failed leaves the nodes started beside it registered, with no
    initialize key: the next `up` bootstraps again on the first host."""
    waiting = DcsView(initialize=None, leader=None, members=("pg2", "pg3"))
    plan = plan_bootstrap("pgha-lab", "pg1", waiting, dict.fromkeys(NODES, DATA_ABSENT))
    assert plan.action == "start_first"
    assert plan_bootstrap("pgha-lab", "pg1", BOOTSTRAPPING, {}).action == "running"


def test_a_first_deploy_bootstraps_on_the_first_host() -> None:
    plan = plan_bootstrap("pgha-lab", "pg1", DcsView(None, None, ()), dict.fromkeys(NODES, DATA_ABSENT))
    assert plan.action == "start_first"


def test_every_node_gone_rebuilds_after_clearing_the_stale_keys() -> None:
    stale = DcsView(initialize=SYSID, leader=None, members=())
    plan = plan_bootstrap("pgha-lab", "pg1", stale, dict.fromkeys(NODES, DATA_ABSENT))
    assert plan.action == "rebuild"
    assert plan.reason == ("every node of cluster pgha-lab is gone: no data on pg1, pg2, pg3 and no member "
                           "in the DCS. Bootstrapping a new, empty cluster on pg1 after clearing the old "
                           f"cluster's keys (system {SYSID}) from the DCS")
    # All etcd lost too: the state's system identifier says there was a cluster.
    fresh = plan_bootstrap("pgha-lab", "pg1", DcsView(None, None, ()), dict.fromkeys(NODES, DATA_EMPTY),
                           recorded=SYSID, restore=True)
    assert fresh.action == "rebuild" and fresh.reason.endswith(
        "Bootstrapping a cluster restored from pgha:restore's backup on pg1"), fresh.reason
    assert "clearing" not in fresh.reason
    # A state that recorded no system identifier (an older pgha, or Patroni did not say yet).
    unrecorded = plan_bootstrap("pgha-lab", "pg1", DcsView(None, None, ()), dict.fromkeys(NODES, DATA_ABSENT),
                                existed=True)
    assert unrecorded.action == "rebuild" and "every node of cluster pgha-lab is gone" in unrecorded.reason


def test_the_clusters_data_on_some_node_starts_from_it() -> None:
    stale = DcsView(initialize=SYSID, leader=None, members=())
    data = {"pg1": DATA_ABSENT, "pg2": SYSID, "pg3": DATA_ABSENT}
    assert plan_bootstrap("pgha-lab", "pg1", stale, data).action == "leave_to_nodes"
    assert plan_bootstrap("pgha-lab", "pg1", stale, {**data, "pg1": SYSID}).action == "start_first"


def test_only_other_systems_left_is_never_bootstrapped_over() -> None:
    stale = DcsView(initialize=SYSID, leader=None, members=())
    plan = plan_bootstrap("pgha-lab", "pg1", stale, {"pg1": DATA_ABSENT, "pg2": OTHER, "pg3": DATA_ABSENT})
    assert plan.action == "stop" and f"pg2 holds system {OTHER}, another cluster" in plan.reason


def test_a_node_that_cannot_be_checked_stops_the_rebuild() -> None:
    stale = DcsView(initialize=SYSID, leader=None, members=())
    plan = plan_bootstrap("pgha-lab", "pg1", stale, {"pg1": DATA_ABSENT, "pg2": DATA_ABSENT,
                                                     "pg3": f"{UNREACHABLE}pg3: connect over SSH: timed out"})
    assert plan.action == "stop" and "cannot tell whether pg3 hold its data" in plan.reason


def test_a_fresh_dcs_never_bootstraps_next_to_existing_data() -> None:
    """The first host must not initdb while another node holds data: Patroni would then
    refuse that data (system ID mismatch) and the cluster would be the empty one."""
    fresh = DcsView(None, None, ())
    plan = plan_bootstrap("pgha-lab", "pg1", fresh, {"pg1": DATA_ABSENT, "pg2": SYSID, "pg3": SYSID})
    assert plan.action == "leave_to_nodes"
    mixed = plan_bootstrap("pgha-lab", "pg1", fresh, {"pg1": DATA_ABSENT, "pg2": SYSID, "pg3": OTHER})
    assert mixed.action == "stop" and "cannot tell which is the cluster" in mixed.reason


def test_refresh_of_the_cluster() -> None:
    endpoints = ["http://10.77.0.11:2379"]
    assert observe_cluster("pgha-lab", LED, SYSID, endpoints) == (True, "")
    assert observe_cluster("pgha-lab", None, SYSID, endpoints)[0] is False
    gone = observe_cluster("pgha-lab", DcsView(None, None, ()), SYSID, endpoints)
    assert gone == (False, "the DCS holds no cluster pgha-lab")
    anew = observe_cluster("pgha-lab", DcsView(OTHER, "pg2", ("pg2",)), SYSID, endpoints)
    assert anew[0] is False and "bootstrapped anew" in anew[1]


def test_bootstrap_changes_only_on_drift() -> None:
    props = _node("pg1", bootstrap_leader=True)
    olds = {**copy.deepcopy(props), "bootstrapped": True, "cluster_running": True, "system_identifier": SYSID}
    changed_tags = {**props, "tags": {"nofailover": True}}
    assert PatroniBootstrapProvider().diff("b", olds, changed_tags).changes is False
    assert PatroniBootstrapProvider().diff("b", {**olds, "cluster_running": False}, props).changes is True


def test_destroy_without_a_healthy_etcd_completes_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[str] = []
    monkeypatch.setattr(patroni_cluster, "first_healthy", lambda _endpoints: None)
    monkeypatch.setattr(patroni_cluster, "notify", lambda host, text, warning=False: told.append(text))
    PatroniClusterProvider().delete("c", {"scope": "pgha-lab", "namespace": "/service/",
                                          "etcd_endpoints": ["http://10.77.0.11:2379"]})
    assert told and told[0].startswith("no healthy etcd among http://10.77.0.11:2379: skipped removing")


# --- database roles without a cluster -------------------------------------------------------


def _role() -> dict[str, Any]:
    return {"scope": "pgha-lab", "name": "admin", "options": ["CREATEDB"], "login": True,
            "nodes": {"pg1": {"api_url": "http://10.77.0.11:8008", "connection": {"host": "10.77.0.11"}}},
            "default_connection": {"user": "pgha"}, "bin_dir": "/usr/lib/postgresql/15/bin",
            "socket_dir": "/var/run/postgresql", "pg_port": 5432}


def test_role_refresh_without_a_leader_is_unconfirmed_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database_role, "find_leader", lambda _props: (None, []))
    monkeypatch.setattr(database_role, "notify", lambda *_a, **_k: None)
    result = DatabaseRoleProvider().read("r", {**_role(), "confirmed": True})
    assert result.id == "r" and result.outs["confirmed"] is False
    assert DatabaseRoleProvider().diff("r", result.outs, _role()).changes is True


def test_role_destroy_without_a_cluster_completes_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[str] = []
    monkeypatch.setattr(database_role, "find_leader", lambda _props: (None, []))
    monkeypatch.setattr(database_role, "notify", lambda _host, text, warning=False: told.append(text))
    monkeypatch.setattr(ssh_module, "notify", lambda *_a, **_k: None)
    monkeypatch.setattr(time, "monotonic", _fast_clock())
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    DatabaseRoleProvider().delete("r", _role())
    assert told and told[0].startswith("skipped dropping role admin: ")
    assert "no Patroni node of pgha-lab answers (pg1)" in told[0]


def _fast_clock() -> Any:
    """A clock that moves 5 s per look: waits run their course without sleeping."""
    now = [0.0]

    def tick() -> float:
        now[0] += 5.0
        return now[0]

    return tick


def test_a_restored_cluster_lost_again_is_not_rebuilt_by_replaying_its_restore() -> None:
    """Its own backups are in its own stanza: replaying pgha:restore would bring back the
    source's old data; the plan stops and says how to restore in place."""
    lost = dict.fromkeys(NODES, DATA_ABSENT)
    plan = plan_bootstrap("pgha-clone", "pg1", DcsView(None, None, ()), lost, recorded=SYSID, restore=True,
                          existed=True, restored_before=True)
    assert plan.action == "stop"
    assert "does not replay that restore" in plan.reason and "pgha:restore.fromStanza" in plan.reason
    # A stack that was not made by a restore (the first in-place restore), and one without
    # pgha:restore, still rebuild.
    assert plan_bootstrap("pgha-lab", "pg1", DcsView(None, None, ()), lost, recorded=SYSID, restore=True,
                          existed=True).action == "rebuild"
    assert plan_bootstrap("pgha-lab", "pg1", DcsView(None, None, ()), lost, recorded=SYSID,
                          existed=True, restored_before=True).action == "rebuild"

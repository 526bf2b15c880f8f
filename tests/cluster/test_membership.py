"""Membership changes as stack diffs, on real lab hosts, under a steady write load.

One cluster, changed step by step (tests run in order): Patroni 3 -> 4 -> 3,
removing the node that leads at that moment, etcd 3 -> 5 -> 3, and a node
removed while its host is crashed. Every step asserts the preview diff, the
cluster through REST, HAProxy's backends from its stats, and that every
acknowledged write is still there.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from components.providers.haproxy_config import backend_status
from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import ProjectCopy, host, install_resources, patroni_members, wait_until
from tests.cluster.workload import WriteLoad

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]

BASE_HOSTS = [host("pg1", ["etcd", "patroni"]), host("pg2", ["etcd", "patroni"]),
              host("pg3", ["etcd", "patroni"]), host("pg4", ["haproxy"])]
ADDRESSES = {f"pg{i}": f"10.77.0.{10 + i}" for i in range(1, 8)}


@dataclass
class Scenario:
    lab: Lab
    project: ProjectCopy
    load: WriteLoad
    hosts: list[dict[str, Any]]

    def apply(self, hosts: list[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
        """Write the new host list, return the preview's changes by op, then `pulumi up`."""
        self.hosts = hosts
        config = copy.deepcopy(self.project.base_config)
        config["hosts"] = hosts
        self.project.write_config(config)
        steps = self.project.preview_changes()
        self.project.run("up", "--yes", "--skip-preview")
        return steps


def leader_name() -> str:
    return next(n for n, m in patroni_members().items() if m["role"] == "leader")


def settled(names: set[str]) -> bool:
    members = patroni_members()
    return set(members) == names and all(
        m["role"] == "leader" or (m["state"] == "streaming" and m.get("lag") == 0) for m in members.values())


def etcd_members() -> list[dict[str, Any]]:
    for name in ("pg1", "pg2", "pg3"):
        try:
            resp = requests.post(f"http://{ADDRESSES[name]}:2379/v3/cluster/member/list", json={}, timeout=3)
            return resp.json()["members"]
        except (requests.RequestException, ValueError, KeyError):
            continue
    raise AssertionError("no etcd member answers")


def haproxy_servers() -> dict[str, dict[str, str]]:
    return backend_status("10.77.0.14", 7000)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Scenario]:
    lab = Lab.up(7)
    try:
        link_wheelhouse(lab)
        project = ProjectCopy.with_stack(tmp_path_factory.mktemp("membership"), "membership")
        config = copy.deepcopy(project.base_config)
        config["hosts"] = BASE_HOSTS
        project.write_config(config)
        project.run("up", "--yes", "--skip-preview")
        password = project.run("stack", "output", "superuserPassword", "--show-secrets").stdout.strip()
        wait_until(lambda: settled({"pg1", "pg2", "pg3"}), timeout=60, what="3 members settled")
        load = WriteLoad("10.77.0.14", 5000, password)
        load.prepare()
        load.start()
        yield Scenario(lab=lab, project=project, load=load, hosts=list(BASE_HOSTS))
        load.stop()
        project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_add_a_replica(scenario: Scenario) -> None:
    scenario.load.reset_counters()
    steps = scenario.apply([*scenario.hosts, host("pg5", ["patroni"])])
    assert set(steps.get("create", {})) == {*install_resources("pg5"), "pgha-lab-node-pg5"}, steps
    assert steps.get("update") == {
        "pgha-lab-cluster": ["members"],
        "pgha-lab-node-pg1": ["pg_hba"], "pgha-lab-node-pg2": ["pg_hba"], "pgha-lab-node-pg3": ["pg_hba"],
        "pgha-lab-haproxy-pg4": ["primary_servers", "replica_servers"]}, steps
    assert set(steps) <= {"create", "update"}, steps
    review = scenario.project.last_review
    assert "pg_hba reloaded on pg1, pg2, pg3 (admits pg5)" in review, review
    assert "pg5 starts once the leader's pg_hba admits it, clones from the leader" in review, review
    assert "Expect no write interruption" in review, review
    assert "Patroni 4.1.5 installed (wheelhouse) on pg5" in review, review
    assert "| **Install pg5** |" in review, review
    wait_until(lambda: settled({"pg1", "pg2", "pg3", "pg5"}), timeout=60, what="pg5 streaming")
    assert set(haproxy_servers()["pgha-lab_primary"]) == {"pg1", "pg2", "pg3", "pg5"}
    wait_until(lambda: haproxy_servers()["pgha-lab_replicas"].get("pg5") == "UP", timeout=30,
               what="pg5 UP in HAProxy's replica backend")
    assert scenario.load.failures == [], scenario.load.failures[:5]
    assert scenario.load.missing() == []
    scenario.load.assert_progressing()


def test_remove_a_replica(scenario: Scenario) -> None:
    scenario.load.reset_counters()
    steps = scenario.apply([h for h in scenario.hosts if h["name"] != "pg5"])
    assert set(steps.get("delete", {})) == {*install_resources("pg5"), "pgha-lab-node-pg5"}, steps
    assert steps.get("update") == {
        "pgha-lab-cluster": ["members"],
        "pgha-lab-node-pg1": ["pg_hba"], "pgha-lab-node-pg2": ["pg_hba"], "pgha-lab-node-pg3": ["pg_hba"],
        "pgha-lab-haproxy-pg4": ["primary_servers", "replica_servers"]}, steps
    review = scenario.project.last_review
    assert "stops and leaves the cluster; its Patroni unit and virtualenv are removed" in review, review
    wait_until(lambda: settled({"pg1", "pg2", "pg3"}), timeout=60, what="3 members again")
    assert "pg5" not in haproxy_servers()["pgha-lab_primary"]
    assert scenario.load.failures == [], scenario.load.failures[:5]
    assert scenario.load.missing() == []
    scenario.load.assert_progressing()


def test_remove_the_current_leader(scenario: Scenario) -> None:
    leader = leader_name()
    scenario.load.reset_counters()
    # The leader's host keeps its etcd member; only its Patroni node goes.
    hosts = [dict(h, roles=["etcd"]) if h["name"] == leader else h for h in scenario.hosts]
    steps = scenario.apply(hosts)
    assert set(steps.get("delete", {})) == {*install_resources(leader), f"pgha-lab-node-{leader}"}, steps
    assert f"switchover {leader} →" in scenario.project.last_review, scenario.project.last_review
    remaining = {"pg1", "pg2", "pg3"} - {leader}
    wait_until(lambda: settled(remaining), timeout=60, what="two members after the leader left")
    assert leader_name() in remaining
    window = scenario.load.longest_window()
    print(f"\nremoving leader {leader}: {len(scenario.load.failures)} failed writes, "
          f"write-unavailability window {window:.2f}s")
    assert window < 30, "the switchover window is longer than a failover would be"
    assert scenario.load.missing() == []
    scenario.load.assert_progressing()
    # Put it back as a replica for the etcd steps that follow.
    scenario.load.reset_counters()
    scenario.apply([dict(h, roles=["etcd", "patroni"]) if h["name"] == leader else h for h in scenario.hosts])
    wait_until(lambda: settled({"pg1", "pg2", "pg3"}), timeout=90, what="three members again")
    assert scenario.load.failures == []


def test_etcd_three_to_five_to_three(scenario: Scenario) -> None:
    scenario.load.reset_counters()
    steps = scenario.apply([*scenario.hosts, host("pg6", ["etcd"]), host("pg7", ["etcd"])])
    assert set(steps.get("create", {})) == {"pgha-lab-etcd-pg6", "pgha-lab-etcd-pg7"}, steps
    assert set(steps.get("update", {})) == {"pgha-lab-node-pg1", "pgha-lab-node-pg2", "pgha-lab-node-pg3",
                                            "pgha-lab-cluster", "pgha-lab-etcd-membership"}, steps
    assert all(keys == ["etcd_hosts"] for name, keys in steps["update"].items() if "node" in name), steps
    members = etcd_members()
    assert sorted(m["name"] for m in members) == ["pg1", "pg2", "pg3", "pg6", "pg7"]
    assert not any(m.get("isLearner") for m in members), members

    steps = scenario.apply([h for h in scenario.hosts if h["name"] not in ("pg6", "pg7")])
    assert set(steps.get("delete", {})) == {"pgha-lab-etcd-pg6", "pgha-lab-etcd-pg7"}, steps
    assert sorted(m["name"] for m in etcd_members()) == ["pg1", "pg2", "pg3"]
    wait_until(lambda: settled({"pg1", "pg2", "pg3"}), timeout=60, what="Patroni unaffected")
    assert scenario.load.failures == [], scenario.load.failures[:5]
    assert scenario.load.missing() == []
    scenario.load.assert_progressing()


def test_remove_a_node_whose_host_crashed(scenario: Scenario) -> None:
    scenario.apply([*scenario.hosts, host("pg5", ["etcd", "patroni"])])
    wait_until(lambda: settled({"pg1", "pg2", "pg3", "pg5"}), timeout=90, what="pg5 streaming")
    assert "pg5" in [m["name"] for m in etcd_members()]
    scenario.lab.crash("pg5")
    time.sleep(2)
    scenario.load.reset_counters()
    scenario.apply([h for h in scenario.hosts if h["name"] != "pg5"])
    assert "pg5" not in [m["name"] for m in etcd_members()]
    wait_until(lambda: settled({"pg1", "pg2", "pg3"}), timeout=90, what="pg5 gone from the DCS")
    assert "pg5" not in haproxy_servers()["pgha-lab_primary"]
    assert scenario.load.missing() == []
    scenario.load.assert_progressing()

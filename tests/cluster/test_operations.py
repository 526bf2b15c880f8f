"""Configuration and operations as diffs, on real lab hosts, under a write load.

A reload-only parameter, a restart-only parameter (rolling restart), the
noloadbalance tag, a switchover by config, database roles, and Patroni's
REST API refusing unauthenticated unsafe calls.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from components.providers.haproxy_config import backend_status
from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import NODES, ProjectCopy, wait_until
from tests.cluster.workload import WriteLoad

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]


@dataclass
class Ops:
    lab: Lab
    project: ProjectCopy
    load: WriteLoad
    config: dict[str, Any]
    password: str

    def change(self, edit: Any) -> dict[str, dict[str, list[str]]]:
        """Edit the config, return the preview's steps by op, then `pulumi up`."""
        config = copy.deepcopy(self.config)
        edit(config)
        self.config = config
        self.project.write_config(config)
        steps = self.project.preview_changes()
        self.project.run("up", "--yes", "--skip-preview")
        return steps

    def show(self, address: str, parameter: str) -> str:
        with psycopg.connect(host=address, port=5432, user="postgres", dbname="postgres",
                             password=self.password, connect_timeout=5) as conn:
            row = conn.execute(f"SHOW {parameter}").fetchone()
            return str(row[0]) if row else ""

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(host="10.77.0.14", port=5000, user="postgres", dbname="postgres",
                             password=self.password, connect_timeout=5) as conn:
            return conn.execute(query).fetchall()


def members() -> dict[str, dict[str, Any]]:
    view = requests.get("http://10.77.0.11:8008/cluster", timeout=5).json()
    return {m["name"]: m for m in view["members"]}


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Ops]:
    lab = Lab.up(4)
    try:
        link_wheelhouse(lab)
        project = ProjectCopy.with_stack(tmp_path_factory.mktemp("operations"), "ops")
        config = copy.deepcopy(project.base_config)
        project.write_config(config)
        project.run("up", "--yes", "--skip-preview")
        password = project.run("stack", "output", "superuserPassword", "--show-secrets").stdout.strip()
        load = WriteLoad("10.77.0.14", 5000, password)
        load.prepare()
        load.start()
        yield Ops(lab=lab, project=project, load=load, config=config, password=password)
        load.stop()
        project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_reload_only_parameter_reaches_every_node_without_restart(ops: Ops) -> None:
    ops.load.reset_counters()
    steps = ops.change(lambda c: c["postgresql"].setdefault("parameters", {}).update(
        log_min_duration_statement="250ms"))
    assert steps.get("update") == {"pgha-lab-dynamic-config": ["parameters_reload"]}, steps
    assert "log_min_duration_statement unset → 250ms (reload, no restart)" in ops.project.last_review
    for name, address in NODES.items():
        wait_until(lambda a=address: ops.show(a, "log_min_duration_statement") == "250ms", timeout=30,
                   what=f"log_min_duration_statement on {name}")
    assert not any(m.get("pending_restart") for m in members().values())
    assert ops.load.failures == [], ops.load.failures[:3]


def test_restart_parameter_rolls_through_the_cluster(ops: Ops) -> None:
    leader_before = next(n for n, m in members().items() if m["role"] == "leader")
    ops.load.reset_counters()
    steps = ops.change(lambda c: c["postgresql"]["parameters"].update(shared_buffers="256MB"))
    assert steps.get("update") == {"pgha-lab-dynamic-config": ["parameters_restart"]}, steps
    assert "shared_buffers needs a restart" in ops.project.last_review, ops.project.last_review
    for name, address in NODES.items():
        assert ops.show(address, "shared_buffers") == "256MB", name
    after = members()
    assert not any(m.get("pending_restart") for m in after.values()), after
    assert all(m["state"] == "streaming" for m in after.values() if m["role"] != "leader"), after
    leader_after = next(n for n, m in after.items() if m["role"] == "leader")
    window = ops.load.longest_window()
    print(f"\nrolling restart (shared_buffers): leader {leader_before} -> {leader_after}, "
          f"{len(ops.load.failures)} failed writes, longest write outage {window:.2f}s, "
          f"{len(ops.load.windows)} outage(s)")
    assert len(ops.load.windows) <= 1, f"writes failed more than once: {ops.load.windows}"
    assert ops.load.missing() == []
    ops.load.assert_progressing()


def test_manual_restart_policy_leaves_the_restart_to_the_operator(ops: Ops) -> None:
    ops.load.reset_counters()

    def manual(c: dict[str, Any]) -> None:
        c["restartPolicy"] = "manual"
        c["postgresql"]["parameters"]["shared_buffers"] = "192MB"

    steps = ops.change(manual)
    assert list(steps.get("update", {})) == ["pgha-lab-dynamic-config"], steps
    assert steps["update"]["pgha-lab-dynamic-config"] == ["parameters_restart", "restart_policy"], steps
    wait_until(lambda: all(m.get("pending_restart") for m in members().values()), timeout=30,
               what="every member pending_restart")
    for name, address in NODES.items():
        assert ops.show(address, "shared_buffers") == "256MB", f"{name} restarted under restartPolicy: manual"
    assert ops.load.failures == [], ops.load.failures[:3]

    # Back to rolling: the next up restarts what is pending, the same way as a change would.
    steps = ops.change(lambda c: c.update(restartPolicy="rolling"))
    assert steps.get("update") == {"pgha-lab-dynamic-config": ["restart_policy"]}, steps
    for name, address in NODES.items():
        assert ops.show(address, "shared_buffers") == "192MB", name
    assert not any(m.get("pending_restart") for m in members().values()), members()
    assert len(ops.load.windows) <= 1, f"writes failed more than once: {ops.load.windows}"
    assert ops.load.missing() == []
    ops.load.assert_progressing()


def test_edit_config_by_hand_is_drift_that_refresh_shows_and_up_undoes(ops: Ops) -> None:
    """`patronictl edit-config` behind the stack's back: the stack owns the settings and the
    parameters it declares as a whole, so a changed value and a parameter it does not declare
    are both drift that `up` undoes; a parameter it leaves to operators is never touched."""
    steps = ops.change(lambda c: c["postgresql"].update(operatorParameters=["deadlock_timeout"]))
    assert steps.get("update") == {"pgha-lab-dynamic-config": ["operator_parameters"]}, steps
    planned = requests.get("http://10.77.0.11:8008/config", timeout=5).json()
    ops.lab.ssh("pg2", "sudo patronictl -c /etc/patroni/patroni.yml edit-config --force "
                       "-s loop_wait=7 -p log_min_duration_statement=999ms "
                       "-p log_autovacuum_min_duration=5s -p deadlock_timeout=2s >/dev/null")
    wait_until(lambda: ops.show(NODES["pg1"], "log_min_duration_statement") == "999ms", timeout=30,
               what="the hand edit applied")
    ops.project.run("preview", "--expect-no-changes")  # a preview alone reads the state, not the hosts
    ops.project.run("refresh", "--yes", "--skip-preview")
    steps = ops.project.preview_changes()
    assert list(steps.get("update", {})) == ["pgha-lab-dynamic-config"], steps
    ops.project.run("up", "--yes", "--skip-preview")
    for name, address in NODES.items():
        wait_until(lambda a=address: ops.show(a, "log_min_duration_statement") == "250ms", timeout=30,
                   what=f"log_min_duration_statement back to 250ms on {name}")
    live = requests.get("http://10.77.0.11:8008/config", timeout=5).json()
    assert live["loop_wait"] == planned["loop_wait"], live
    params = live["postgresql"]["parameters"]
    assert "log_autovacuum_min_duration" not in params, "a parameter the stack does not declare stayed"
    assert params.get("deadlock_timeout") == "2s", "a parameter left to operators was reset"
    ops.project.run("refresh", "--yes", "--skip-preview")
    ops.project.run("preview", "--expect-no-changes")


def test_noloadbalance_takes_a_node_out_of_the_replica_backend(ops: Ops) -> None:
    replica = next(n for n, m in sorted(members().items()) if m["role"] != "leader")

    def tag(value: bool) -> Any:
        def edit(c: dict[str, Any]) -> None:
            for h in c["hosts"]:
                if h["name"] == replica:
                    h["tags"] = {"noloadbalance": value}
        return edit

    steps = ops.change(tag(True))
    assert steps.get("update") == {f"pgha-lab-node-{replica}": ["tags"]}, steps
    wait_until(lambda: backend_status("10.77.0.14", 7000)["pgha-lab_replicas"][replica] != "UP", timeout=30,
               what=f"{replica} out of the replica backend")
    ops.change(tag(False))
    wait_until(lambda: backend_status("10.77.0.14", 7000)["pgha-lab_replicas"][replica] == "UP", timeout=30,
               what=f"{replica} back in the replica backend")


def test_switchover_by_config(ops: Ops) -> None:
    target = next(n for n, m in sorted(members().items()) if m["role"] != "leader")
    ops.load.reset_counters()
    steps = ops.change(lambda c: c.update(leader=target))
    assert steps.get("update") == {"pgha-lab-leader": ["leader"]}, steps
    assert members()[target]["role"] == "leader"
    print(f"\nswitchover by config to {target}: longest write outage {ops.load.longest_window():.2f}s")
    assert ops.load.missing() == []
    ops.load.assert_progressing()


def test_roles_created_altered_dropped(ops: Ops) -> None:
    ops.change(lambda c: c["roles"].append({"name": "app", "options": ["CREATEDB"]}))
    assert ops.sql("SELECT rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles WHERE rolname = 'app'") == [
        (True, False, True)]
    steps = ops.change(lambda c: c["roles"][-1].update(options=["CREATEROLE"]))
    assert steps.get("update") == {"pgha-lab-role-app": ["options"]}, steps
    assert ops.sql("SELECT rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = 'app'") == [(False, True)]
    steps = ops.change(lambda c: c.update(roles=[r for r in c["roles"] if r["name"] != "app"]))
    assert "pgha-lab-role-app" in steps.get("delete", {}), steps
    assert ops.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'app'") == [(0,)]


def test_unsafe_rest_calls_need_credentials(ops: Ops) -> None:
    for address in NODES.values():
        assert requests.get(f"http://{address}:8008/patroni", timeout=5).status_code == 200
        assert requests.post(f"http://{address}:8008/restart", json={}, timeout=5).status_code == 401
        assert requests.post(f"http://{address}:8008/switchover", json={"leader": "pg1"},
                             auth=("patroni", "wrong"), timeout=5).status_code == 401
        assert requests.patch(f"http://{address}:8008/config", json={"ttl": 5}, timeout=5).status_code == 401

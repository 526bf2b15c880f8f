"""A first deploy whose bootstrap fails, on real lab hosts, and the `up` after the fix.

The replicas' Patroni starts while the first host bootstraps (PatroniBootstrap returns
once that host holds the initialize key). When that bootstrap fails (here PostgreSQL
cannot load a library the stack asks for), Patroni removes the initialize key and
exits: the `up` must stop at once on every node with the cause, not wait out its
timeouts, and leave no node in the state. The nodes started beside it keep waiting for
a leader; after the fix, the next `up` bootstraps again on the first host (those waiting
members are not a running cluster) and every node joins.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import NODES, ProjectCopy, patroni_members, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

MISSING = "pgha_no_such_library"


@dataclass
class FailedFirst:
    lab: Lab
    project: ProjectCopy
    config: dict[str, Any]
    failed_output: str
    failed_seconds: float


def _nodes_in_state(project: ProjectCopy) -> list[str]:
    state = json.loads(project.run("stack", "export").stdout)
    return sorted(r["urn"].rsplit("::", 1)[-1] for r in state["deployment"].get("resources", [])
                  if r["type"].endswith(":PatroniNode"))


@pytest.fixture(scope="module")
def failed_first(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[FailedFirst]:
    lab = Lab.up(4)
    try:
        link_wheelhouse(lab)
        project = ProjectCopy.with_stack(tmp_path_factory.mktemp("bootstrap-fails"), "lab")
        config = copy.deepcopy(project.base_config)
        broken = copy.deepcopy(config)
        params = broken.setdefault("postgresql", {}).setdefault("parameters", {})
        params["shared_preload_libraries"] = f"pg_stat_statements,{MISSING}"
        project.write_config(broken)
        started = time.monotonic()
        result = project.run("up", "--yes", "--skip-preview", check=False)
        seconds = time.monotonic() - started
        assert result.returncode != 0, result.stdout[-3000:]
        yield FailedFirst(lab, project, config, result.stdout + result.stderr, seconds)
        project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_a_failed_bootstrap_stops_every_node_with_its_cause(failed_first: FailedFirst) -> None:
    out = failed_first.failed_output
    print(f"\nfailed first up: {failed_first.failed_seconds:.1f}s")
    # Said by the first host's node (its Patroni stopped), or by a node that saw the
    # bootstrap under way and then its initialize key removed.
    removed = "the bootstrap of cluster pgha-lab failed: Patroni removed its initialize key"
    assert "patroni on pg1 stopped" in out or removed in out, out[-4000:]
    assert "not reached within" not in out, "a wait ran to its timeout instead of stopping on the cause"
    assert _nodes_in_state(failed_first.project) == [], "the state claims nodes that never ran"
    # No other node bootstrapped the cluster: no leader, no data on the replicas.
    for name in ("pg2", "pg3"):
        data = failed_first.lab.ssh(name, "ls -A /var/lib/postgresql/15/pgha-lab 2>/dev/null | wc -l",
                                    check=False).stdout.strip()
        assert data == "0", f"{name} has data after a failed bootstrap on pg1"


def test_the_next_up_after_the_fix_bootstraps_and_every_node_joins(failed_first: FailedFirst) -> None:
    project = failed_first.project
    # The replicas' Patroni still runs, waiting for a leader.
    waiting = {n: failed_first.lab.ssh(n, "systemctl is-active patroni", check=False).stdout.strip()
               for n in ("pg2", "pg3")}
    print(f"\nbefore the fix: {waiting}")
    project.write_config(failed_first.config)
    out = project.run("up", "--yes", "--skip-preview").stdout
    again = "the last bootstrap of cluster pgha-lab on pg1 failed (Patroni's journal): bootstrapping it again"
    assert again in out, out[-4000:]

    def settled() -> dict[str, Any] | None:
        members = patroni_members()
        ok = set(members) == set(NODES) and members["pg1"]["role"] == "leader" and all(
            members[n]["state"] == "streaming" for n in ("pg2", "pg3"))
        return members if ok else None

    members = wait_until(settled, timeout=60, what="pg1 leading, pg2 and pg3 streaming")
    assert len({m["timeline"] for m in members.values()}) == 1
    assert _nodes_in_state(project) == ["pgha-lab-node-pg1", "pgha-lab-node-pg2", "pgha-lab-node-pg3"]
    project.run("preview", "--expect-no-changes")

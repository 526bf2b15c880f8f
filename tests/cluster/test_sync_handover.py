"""Leader hand-over in synchronous mode, on real lab hosts, under a write load.

With `dcs.synchronousMode: true` only the synchronous standby may take over (Patroni answers
412 to a switchover to anyone else). Three etcd+Patroni hosts and HAProxy; a write load
through HAProxy records every acknowledged commit. With the leader placed on each
host in turn (nosync tags, then `pgha:leader`, as an operator would): the leader's host
removed (its node hands over first) and added back, then a restart-only parameter (the
rolling restart's switchover). Finally `destroy`. Every
`up` succeeds and no acknowledged write is lost.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import NODES, ProjectCopy, host, patroni_members, wait_until
from tests.cluster.workload import WriteLoad

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]

HOSTS = [host("pg1", ["etcd", "patroni"]), host("pg2", ["etcd", "patroni"]),
         host("pg3", ["etcd", "patroni"]), host("pg4", ["haproxy"])]


def members() -> dict[str, dict[str, Any]]:
    return patroni_members(tuple(NODES.values()))


def leader() -> str:
    return next(n for n, m in members().items() if m["role"] == "leader")


def settled(names: set[str]) -> bool:
    view = members()
    return (set(view) == names and any(m["role"] == "sync_standby" for m in view.values())
            and all(m["role"] == "leader" or m["state"] == "streaming" for m in view.values()))


@dataclass
class Sync:
    lab: Lab
    project: ProjectCopy
    load: WriteLoad
    config: dict[str, Any]
    led: list[str] = field(default_factory=list)

    def up(self, edit: Any) -> None:
        config = copy.deepcopy(self.config)
        edit(config)
        self.config = config
        self.project.write_config(config)
        self.project.run("up", "--yes", "--skip-preview")  # fails the test if `up` fails


@pytest.fixture(scope="module")
def sync(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Sync]:
    lab = Lab.up(4)
    try:
        link_wheelhouse(lab)
        project = ProjectCopy.with_stack(tmp_path_factory.mktemp("sync"), "sync")
        config = copy.deepcopy(project.base_config)
        config["hosts"] = HOSTS
        config["dcs"] = {"synchronousMode": True}
        project.write_config(config)
        project.run("up", "--yes", "--skip-preview")
        wait_until(lambda: settled({"pg1", "pg2", "pg3"}), timeout=90, what="a leader and a sync standby")
        password = project.run("stack", "output", "superuserPassword", "--show-secrets").stdout.strip()
        load = WriteLoad("10.77.0.14", 5000, password)
        load.prepare()
        load.start()
        yield Sync(lab=lab, project=project, load=load, config=config)
        load.stop()
        project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def place_leader(sync: Sync, target: str) -> None:
    """Move the leader to `target` the way an operator would in synchronous mode: tag the
    other replicas `nosync` until Patroni makes `target` the sync standby, then `pgha:leader`."""
    if leader() == target:
        return
    others = {n for n in ("pg1", "pg2", "pg3") if n not in (target, leader())}

    def tag(c: dict[str, Any], nosync: set[str]) -> None:
        c["hosts"] = [dict(h, tags={"nosync": True}) if h["name"] in nosync
                      else {k: v for k, v in h.items() if k != "tags"} for h in c["hosts"]]

    sync.up(lambda c: tag(c, others))
    wait_until(lambda: members()[target]["role"] == "sync_standby", timeout=60,
               what=f"{target} as the sync standby")
    sync.up(lambda c: c.update(leader=target))
    assert leader() == target
    sync.up(lambda c: (tag(c, set()), c.pop("leader", None)))
    wait_until(lambda: settled({"pg1", "pg2", "pg3"}), timeout=60, what="settled after the placement")


def test_restart_and_leader_removal_hand_over_to_the_sync_standby(sync: Sync) -> None:
    buffers = ["160MB", "128MB"]
    restarted_under: list[str] = []
    for round_, target in enumerate(("pg1", "pg2", "pg3")):
        # Remove the leader's Patroni node (its host keeps its etcd member): it hands over
        # to the sync standby first.
        place_leader(sync, target)
        sync.load.reset_counters()
        sync.led.append(target)
        sync.up(lambda c, g=target: c.update(
            hosts=[dict(h, roles=["etcd"]) if h["name"] == g else h for h in c["hosts"]]))
        staying = {"pg1", "pg2", "pg3"} - {target}
        wait_until(lambda s=staying: set(members()) == s and leader() in s, timeout=90,
                   what=f"{target} gone, a staying member leading")
        print(f"\nround {round_}: removed leader {target}, new leader {leader()}, "
              f"write outage {sync.load.longest_window():.2f}s")
        assert sync.load.missing() == [], "acknowledged writes lost"
        sync.load.assert_progressing()
        sync.up(lambda c: c.update(hosts=list(HOSTS)))
        wait_until(lambda: settled({"pg1", "pg2", "pg3"}), timeout=120, what="three members again")

        # A restart-only parameter: replicas restart, then a switchover to the sync standby.
        sync.load.reset_counters()
        before = leader()
        restarted_under.append(before)
        sync.up(lambda c, b=buffers[round_ % 2]: c["postgresql"]["parameters"].update(shared_buffers=b))
        wait_until(lambda: settled({"pg1", "pg2", "pg3"}), timeout=90, what="settled after the restart")
        assert not any(m.get("pending_restart") for m in members().values()), members()
        print(f"round {round_}: rolling restart, leader {before} -> {leader()}, "
              f"write outage {sync.load.longest_window():.2f}s")
        assert sync.load.missing() == [], "acknowledged writes lost"
    assert sync.led == ["pg1", "pg2", "pg3"]
    assert len(set(restarted_under)) >= 2, f"every rolling restart ran under one leader: {restarted_under}"


def test_destroy_in_synchronous_mode_completes(sync: Sync) -> None:
    acknowledged = len(sync.load.acknowledged)
    assert sync.load.missing() == []
    sync.project.run("destroy", "--yes", "--skip-preview")
    sync.load.stop()
    assert acknowledged > 0
    for name in NODES:
        active = sync.lab.ssh(name, "systemctl is-active patroni", check=False).stdout.strip()
        assert active != "active", f"patroni still running on {name} after destroy"

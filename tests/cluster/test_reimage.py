"""Hosts re-imaged under a deployed stack: the state must never lie (issue #12, item 2).

One stack, step by step (tests run in order): deploy 3 etcd+Patroni hosts and an
HAProxy host; re-create every host bare (`Lab.up(4)` again: Debian's own single-node
etcd and PostgreSQL, no Patroni) and check that `pulumi refresh` records every loss and
`pulumi up` builds a working cluster again; put another PostgreSQL system into one
node's data directory and check that `up` stops within a minute, saying what it found
and how to resolve it, without touching that data; then `destroy` on re-imaged hosts
and with every host down. Durations are printed (run with -s to see them).
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import NODES, PRIMARY, REPLICAS, ProjectCopy, cluster_view, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]

DATA_DIR = "/var/lib/postgresql/15/pgha-lab"
BIN_DIR = "/usr/lib/postgresql/15/bin"
ETCD = [f"pgha-lab-etcd-{n}" for n in NODES]
PATRONI = [f"pgha-lab-node-{n}" for n in NODES]
INSTALLS = [f"pgha-lab-install-{n}" for n in NODES]


@dataclass
class Reimage:
    lab: Lab
    project: ProjectCopy
    durations: dict[str, float] = field(default_factory=dict)

    def timed(self, label: str, *args: str, check: bool = True) -> tuple[float, str, int]:
        """Run a pulumi command, keep its whole output beside the state, report its duration."""
        started = time.monotonic()
        proc = self.project.run(*args, check=False)
        elapsed = time.monotonic() - started
        self.durations[label] = elapsed
        out = proc.stdout + proc.stderr
        log = self.project.dir.parent / f"{len(self.durations):02d}-{args[0]}.log"
        log.write_text(out)
        print(f"\n{label}: {elapsed:.1f}s (exit {proc.returncode}, output in {log})")
        if check and proc.returncode != 0:
            diagnostics = out[out.find("Diagnostics:"):] if "Diagnostics:" in out else out[-8000:]
            command = " ".join(args)
            raise AssertionError(f"pulumi {command} failed ({proc.returncode}):\n{diagnostics[:12000]}")
        return elapsed, out, proc.returncode

    def reimage(self) -> None:
        """Every host re-created from the image: what a re-imaging leaves (new host keys too)."""
        self.lab = Lab.up(4)
        link_wheelhouse(self.lab)

    def resources(self) -> dict[str, dict[str, Any]]:
        state = json.loads(self.project.run("stack", "export").stdout)
        return {r["urn"].rsplit("::", 1)[-1]: r for r in state["deployment"].get("resources") or []}

    def superuser_password(self) -> str:
        return self.project.run("stack", "output", "superuserPassword", "--show-secrets").stdout.strip()


def settled() -> dict[str, Any] | None:
    view = cluster_view()
    members = view.get("members", [])
    leaders = [m for m in members if m.get("role") == "leader"]
    streaming = [m for m in members if m.get("role") == "replica" and m.get("state") == "streaming"]
    return view if len(leaders) == 1 and len(streaming) == len(NODES) - 1 else None


def sysid(lab: Lab, name: str, data_dir: str = DATA_DIR) -> str:
    out = lab.ssh(name, f"sudo {BIN_DIR}/pg_controldata -D {data_dir} | sed -n "
                        "'s/^Database system identifier: *//p'", check=False)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def reimage(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Reimage]:
    lab = Lab.up(4)
    try:
        link_wheelhouse(lab)
        project = ProjectCopy.with_stack(tmp_path_factory.mktemp("reimage"), "reimage")
        project.write_config(copy.deepcopy(project.base_config))
        scenario = Reimage(lab=lab, project=project)
        scenario.timed("first up (3 etcd+Patroni, 1 HAProxy)", "up", "--yes", "--skip-preview")
        wait_until(settled, timeout=60, what="a leader and two streaming replicas")
        yield scenario
        print("\ndurations: " + json.dumps({k: round(v, 1) for k, v in scenario.durations.items()}, indent=1))
        project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_refresh_after_reimaging_every_host_records_every_loss(reimage: Reimage) -> None:
    # What a refresh compares with: the system identifier, recorded by the first `up`.
    before = reimage.resources()
    recorded = {before[n]["outputs"].get("system_identifier") for n in [*PATRONI, "pgha-lab-bootstrap"]}
    assert len(recorded) == 1 and next(iter(recorded)).isdigit(), recorded
    reimage.reimage()
    _, out, _ = reimage.timed("refresh after re-imaging every host", "refresh", "--yes", "--skip-preview")
    assert "no member of etcd cluster pgha-pgha-lab answers" in out, out[-4000:]
    assert "/etc/default/etcd is not pgha's" in out, out[-4000:]
    assert "gone: no Patroni unit, no patroni.yml and no data on the host" in out, out[-4000:]

    resources = reimage.resources()
    for name in ETCD:
        outs = resources[name]["outputs"]
        assert (outs["running"], outs["in_cluster"]) == (False, False), (name, outs.get("drift"))
    for name in PATRONI:
        assert resources[name]["outputs"]["running"] is False
        assert resources[name]["outputs"]["drift"].startswith("gone:"), resources[name]["outputs"]["drift"]
    assert resources["pgha-lab-bootstrap"]["outputs"]["cluster_running"] is False

    steps = reimage.project.preview_changes()
    updates = set(steps.get("update", {}))
    expected = {*ETCD, *PATRONI, "pgha-lab-bootstrap", "pgha-lab-haproxy-pg4", "pgha-lab-role-admin"}
    assert expected <= updates, sorted(updates)
    for install in INSTALLS:  # however the host preparation is split into resources
        assert any(u.startswith(install) for u in updates), (install, sorted(updates))
    # Nothing deleted: the same resources, rebuilt. Only the wheelhouse uploads are replaced (an
    # upload runs again only as a new one: its trigger is the host key, new on a re-imaged host).
    assert set(steps) <= {"update", "replace"}, steps
    assert set(steps.get("replace", {})) == {f"{i}-wheelhouse" for i in INSTALLS}, steps


def test_up_after_reimaging_builds_a_working_cluster_again(reimage: Reimage) -> None:
    _, out, _ = reimage.timed("up after re-imaging every host", "up", "--yes", "--skip-preview")
    assert "every member of etcd cluster pgha-pgha-lab is lost" in out, out[-4000:]
    assert "every node of cluster pgha-lab is gone" in out and "Bootstrapping a new, empty cluster on pg1" \
        in out, out[-4000:]
    view = wait_until(settled, timeout=60, what="a leader and two streaming replicas after the rebuild")
    assert {m["name"] for m in view["members"]} == set(NODES)

    marker = str(uuid.uuid4())
    password = reimage.superuser_password()
    with psycopg.connect(host=PRIMARY[0], port=PRIMARY[1], user="postgres", dbname="postgres",
                         password=password, connect_timeout=5, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pgha_probe (id text PRIMARY KEY)")
        conn.execute("INSERT INTO pgha_probe VALUES (%s)", (marker,))
        assert conn.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = 'admin'").fetchone() == (True,)

    def replica_has_it() -> bool:
        with psycopg.connect(host=REPLICAS[0], port=REPLICAS[1], user="postgres", dbname="postgres",
                             password=password, connect_timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM pgha_probe WHERE id = %s", (marker,)).fetchone() == (1,)

    wait_until(replica_has_it, timeout=30, what="the row on a replica through HAProxy")
    etcd = json.loads(reimage.lab.ssh("pg1", "ETCDCTL_API=3 etcdctl --endpoints=http://10.77.0.11:2379 "
                                             "member list -w json").stdout)
    assert sorted(m["name"] for m in etcd["members"]) == sorted(NODES)
    assert not any(m.get("isLearner") for m in etcd["members"]), etcd

    # The state tells the truth now: a refresh finds nothing to repair.
    reimage.timed("refresh after the rebuild", "refresh", "--yes", "--skip-preview")
    reimage.project.run("preview", "--expect-no-changes")
    members = json.loads(reimage.project.run("stack", "output", "members", "--json").stdout)
    roles = sorted("leader" if m["role"] in ("leader", "primary") else m["role"] for m in members)
    assert roles == ["leader", "replica", "replica"], members


def test_another_system_on_one_node_stops_the_up_fast_and_keeps_that_data(reimage: Reimage) -> None:
    lab = reimage.lab
    wait_until(settled, timeout=60, what="a settled cluster")
    ours = sysid(lab, "pg3")
    lab.ssh("pg3", f"sudo systemctl stop patroni && sudo mv {DATA_DIR} {DATA_DIR}.moved-by-test && "
                   f"sudo -u postgres {BIN_DIR}/initdb -D {DATA_DIR} >/dev/null")
    foreign = sysid(lab, "pg3")
    assert foreign and foreign != ours

    _, out, _ = reimage.timed("refresh with another system on pg3", "refresh", "--yes", "--skip-preview")
    drift = reimage.resources()["pgha-lab-node-pg3"]["outputs"]["drift"]
    assert f"holds PostgreSQL system {foreign}, another cluster" in drift, drift
    assert "pgha-lab-node-pg3" in reimage.project.preview_changes().get("update", {})

    elapsed, out, code = reimage.timed("up refusing pg3's other system", "up", "--yes", "--skip-preview",
                                       check=False)
    assert code != 0
    assert elapsed < 60, f"up took {elapsed:.0f}s to refuse"
    assert f"holds PostgreSQL system {foreign}, but cluster pgha-lab is system {ours} (the DCS)" in out, \
        out[-4000:]
    assert "pgha does not start over or remove data that may be the only copy" in out
    assert f"mv {DATA_DIR} {DATA_DIR}.old" in out and "remove it from pgha:hosts" in out
    assert sysid(lab, "pg3") == foreign, "the other system's data was touched"
    assert lab.ssh("pg3", "systemctl is-active patroni", check=False).stdout.strip() != "active"

    # The way out the message names: move that data aside, and `up` rebuilds pg3 from the leader.
    lab.ssh("pg3", f"sudo mv {DATA_DIR} {DATA_DIR}.old")
    reimage.timed("up rebuilding pg3 after its data was moved aside", "up", "--yes", "--skip-preview")
    wait_until(settled, timeout=60, what="pg3 streaming again")
    assert sysid(lab, "pg3") == ours
    assert sysid(lab, "pg3", f"{DATA_DIR}.old") == foreign


def test_destroy_completes_on_reimaged_hosts(reimage: Reimage) -> None:
    reimage.reimage()
    _, out, _ = reimage.timed("destroy on re-imaged hosts (no refresh)", "destroy", "--yes", "--skip-preview")
    assert "no healthy etcd among" in out and "skipped removing the cluster's keys" in out, out[-4000:]
    assert "HAProxy left as it is" in out, out[-4000:]
    assert "etcd there is not member pg1" in out, out[-4000:]
    assert reimage.resources() == {}
    # What pgha did not make is left as it was: the distro's etcd and HAProxy still run.
    for name in NODES:
        assert reimage.lab.ssh(name, "systemctl is-active etcd", check=False).stdout.strip() == "active"
    assert reimage.lab.ssh("pg4", "systemctl is-active haproxy", check=False).stdout.strip() == "active"


def test_destroy_completes_with_every_host_down(reimage: Reimage) -> None:
    reimage.timed("up on fresh hosts (empty state)", "up", "--yes", "--skip-preview")
    wait_until(settled, timeout=60, what="a settled cluster")
    # Hosts that are down leave the operator's SSH key and known_hosts where they were;
    # `Lab.down` removes them with the hosts, so they are put back (the next `down` removes them).
    keep = {Path(p): Path(p).read_bytes() for p in (reimage.lab.inv.private_key, reimage.lab.inv.known_hosts)}
    Lab.down()
    for path, content in keep.items():
        path.write_bytes(content)
        path.chmod(0o600)
    elapsed, out, _ = reimage.timed("destroy with every host down", "destroy", "--yes", "--skip-preview")
    assert reimage.resources() == {}
    for skipped in ("skipped stopping HAProxy", "skipped dropping role admin",
                    "skipped: stopping Patroni and removing patroni.yml",
                    "skipped removing the cluster's keys", "skipped stopping etcd member pg1"):
        assert skipped in out, (skipped, out[-4000:])
    assert "Traceback" not in out, out[-4000:]  # each unreachable host is one line, not a paramiko dump
    print(f"\ndestroy with every host down: {elapsed:.1f}s")

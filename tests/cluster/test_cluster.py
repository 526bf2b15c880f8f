"""`pulumi up` builds the runbook's cluster on real lab hosts, and `destroy` takes it away.

Runs in order within the module: deploy, check the cluster through REST,
psql and patronictl, a no-change preview and up, then destroy.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import requests

from scripts.lab_stack import WHEELHOUSE_LINK
from tests.cluster.conftest import NODES, PRIMARY, REPLICAS, Deployed, cluster_view, ssh_accepts, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(2400)]


def test_one_leader_two_streaming_replicas_one_timeline(deployed: Deployed) -> None:
    def settled() -> dict | None:
        view = cluster_view()
        replicas = [m for m in view["members"] if m.get("role") == "replica"]
        return view if replicas and all(m.get("state") == "streaming" for m in replicas) else None

    cluster = wait_until(settled, timeout=60, what="every replica streaming")
    roles = {m["name"]: m["role"] for m in cluster["members"]}
    # Nodes start in host order, so the first host bootstraps and leads.
    assert roles == {"pg1": "leader", "pg2": "replica", "pg3": "replica"}, cluster
    assert {m["name"] for m in cluster["members"]} == set(NODES)
    assert len({m["timeline"] for m in cluster["members"]}) == 1, cluster
    replicas = [m for m in cluster["members"] if m["role"] == "replica"]
    assert all(m["state"] == "streaming" for m in replicas), cluster
    wait_until(
        lambda: all(m.get("lag", 1) == 0 for m in cluster_view()["members"] if m["role"] == "replica"),
        timeout=60,
        what="replication lag 0",
    )
    for name, address in NODES.items():
        status = requests.get(f"http://{address}:8008/patroni", timeout=5).json()
        assert status["state"] == "running" and status["patroni"]["name"] == name


def test_write_through_primary_read_through_replicas(deployed: Deployed) -> None:
    marker = str(uuid.uuid4())
    with deployed.connect(PRIMARY, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        conn.execute("CREATE TABLE IF NOT EXISTS pgha_probe (id text PRIMARY KEY)")
        conn.execute("INSERT INTO pgha_probe VALUES (%s)", (marker,))

    def replica_has_it() -> bool:
        with deployed.connect(REPLICAS) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            found = conn.execute("SELECT count(*) FROM pgha_probe WHERE id = %s", (marker,)).fetchone()
            return in_recovery == (True,) and found == (1,)

    wait_until(replica_has_it, timeout=30, what="the row on a replica through HAProxy's replica port")


def test_patronictl_list_on_a_node(deployed: Deployed) -> None:
    out = deployed.lab.ssh("pg2", "sudo patronictl -c /etc/patroni/patroni.yml list").stdout
    assert "Leader" in out and out.count("streaming") == 2, out
    assert "pgha-lab" in out


def test_admin_role_created_on_the_leader(deployed: Deployed) -> None:
    with deployed.connect(PRIMARY) as conn:
        row = conn.execute(
            "SELECT rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles WHERE rolname = 'admin'"
        ).fetchone()
    assert row == (True, True, True)


def test_files_and_services_on_hosts(deployed: Deployed) -> None:
    for name in NODES:
        stat = deployed.lab.ssh(name, "sudo stat -c '%a %U %G' /etc/patroni/patroni.yml").stdout.split()
        assert stat == ["600", "postgres", "postgres"], (name, stat)
        distro = deployed.lab.ssh(name, "cat /etc/postgresql/15/main/start.conf | grep -v '^#'").stdout
        assert distro.strip() == "disabled", (name, distro)
        active = deployed.lab.ssh(name, "systemctl is-active patroni etcd", check=False).stdout.split()
        assert active == ["active", "active"], (name, active)
        # pgha's drop-in: etcd waits for the network after a reboot and a failed start is retried.
        unit = deployed.lab.ssh(name, "systemctl show -p Restart -p After etcd").stdout
        assert "Restart=on-failure" in unit and "network-online.target" in unit, (name, unit)
        # The lab's wheelhouse holds uv's wheel: uv installed Patroni, bytecode compiled (Patroni
        # runs as postgres and could not write it), and its unpacked copy is gone.
        site = "/opt/patroni/lib/python3.11/site-packages"
        installer = deployed.lab.ssh(name, f"cat {site}/patroni-*.dist-info/INSTALLER").stdout.strip()
        assert installer == "uv", (name, installer)
        compiled = deployed.lab.ssh(name, f"ls {site}/patroni/__pycache__ | grep -c 'ha.cpython'").stdout
        assert int(compiled) >= 1, (name, compiled)
        assert deployed.lab.ssh(name, "ls -d /opt/.pgha-uv.* 2>/dev/null | wc -l").stdout.strip() == "0", name
    assert deployed.lab.ssh("pg4", "systemctl is-active haproxy").stdout.strip() == "active"


def test_no_plaintext_secret_in_state(deployed: Deployed) -> None:
    password = deployed.password()
    assert len(password) >= 20
    exported = deployed.cli.run("stack", "export", "--stack", "lab").stdout
    assert password not in exported
    state = json.loads(exported)
    nodes = [r for r in state["deployment"]["resources"] if r["type"].endswith("PatroniNode")]
    assert nodes and all("ciphertext" in r["outputs"]["secrets"] for r in nodes)


def test_second_up_and_preview_change_nothing_and_open_no_ssh(deployed: Deployed) -> None:
    before = ssh_accepts(deployed.lab)
    started = time.monotonic()
    preview = deployed.cli.run("preview", "--stack", "lab", "--expect-no-changes", "--diff")
    preview_seconds = time.monotonic() - started
    up = deployed.cli.run("up", "--yes", "--stack", "lab", "--expect-no-changes", "--skip-preview")
    after = ssh_accepts(deployed.lab)
    # ssh_accepts itself logs in once per host each time it runs.
    assert after - before == len(deployed.lab.hosts), "preview/up with unchanged config opened SSH sessions"
    assert "unchanged" in preview.stdout and "unchanged" in up.stdout
    print(f"\nno-change pulumi preview: {preview_seconds:.1f}s; first up: {deployed.up_seconds:.1f}s")


def test_a_pull_requests_preview_without_key_known_hosts_or_wheelhouse_shows_no_change(
        deployed: Deployed) -> None:
    """A pull request's CI job has the state and the passphrase, not the SSH key, known_hosts or
    the wheelhouse: its preview still runs and shows no change where there is none."""
    files = [Path(deployed.lab.inv.private_key), Path(deployed.lab.inv.known_hosts), WHEELHOUSE_LINK]
    moved = [(path, path.with_name(path.name + ".away")) for path in files]
    try:
        for path, away in moved:
            path.rename(away)
        preview = deployed.cli.run("preview", "--stack", "lab", "--expect-no-changes", "--diff")
    finally:
        for path, away in moved:
            if away.exists() or away.is_symlink():
                away.rename(path)
    said = preview.stdout + preview.stderr
    assert "is not readable here: the preview shows host keys as unchanged" in said, said[-3000:]
    assert "replace" not in preview.stdout and "unchanged" in preview.stdout, preview.stdout[-3000:]


def test_refresh_shows_drift_and_up_repairs_it(deployed: Deployed) -> None:
    lab = deployed.lab
    etcdctl = "ETCDCTL_API=3 etcdctl --endpoints=http://10.77.0.11:2379"
    lab.ssh("pg3", "sudo systemctl stop patroni")
    lab.ssh("pg4", "echo '# edited by hand' | sudo tee -a /etc/haproxy/haproxy.cfg >/dev/null")
    member = next(
        line.split(",")[0]
        for line in lab.ssh("pg1", f"{etcdctl} member list").stdout.splitlines()
        if ", pg2," in line
    )
    lab.ssh("pg1", f"{etcdctl} member remove {member}")

    deployed.cli.run("refresh", "--yes", "--skip-preview", "--stack", "lab")
    preview = json.loads(deployed.cli.run("preview", "--json", "--stack", "lab").stdout)
    updates = {s["urn"].rsplit("::", 1)[-1] for s in preview["steps"] if s["op"] == "update"}
    assert {"pgha-lab-node-pg3", "pgha-lab-haproxy-pg4", "pgha-lab-etcd-pg2"} <= updates, updates

    deployed.cli.run("up", "--yes", "--skip-preview", "--stack", "lab")
    assert lab.ssh("pg3", "systemctl is-active patroni").stdout.strip() == "active"
    wait_until(
        lambda: any(m["name"] == "pg3" and m["state"] == "streaming" for m in cluster_view()["members"]),
        timeout=90,
        what="pg3 streaming again",
    )
    assert "edited by hand" not in lab.ssh("pg4", "cat /etc/haproxy/haproxy.cfg").stdout
    members = lab.ssh("pg1", f"{etcdctl} member list").stdout
    assert ", pg2," in members and "true" not in members.split(", pg2,")[1].split("\n")[0].split(",")[-1]
    assert requests.get("http://10.77.0.12:2379/health", timeout=5).json()["health"] == "true"
    deployed.cli.run("preview", "--stack", "lab", "--expect-no-changes")


def test_destroy_removes_dcs_keys_then_everything(deployed: Deployed) -> None:
    state = json.loads(deployed.cli.run("stack", "export", "--stack", "lab").stdout)
    cluster_urn = next(
        r["urn"] for r in state["deployment"]["resources"] if r["type"].endswith("pgha:PatroniCluster")
    )
    # Everything that depends on the cluster's DCS entry goes first, etcd stays.
    deployed.cli.run(
        "destroy", "--yes", "--skip-preview", "--stack", "lab", "--target", cluster_urn, "--target-dependents"
    )
    count = deployed.lab.ssh(
        "pg1",
        "ETCDCTL_API=3 etcdctl --endpoints=http://10.77.0.11:2379 get --prefix --keys-only "
        "/service/pgha-lab/ | grep -c . || true",
    ).stdout.strip()
    assert count == "0", f"DCS keys left under /service/pgha-lab/: {count}"
    for name in NODES:
        assert deployed.lab.ssh(name, "systemctl is-active patroni", check=False).stdout.strip() != "active"
    assert deployed.lab.ssh("pg4", "systemctl is-active haproxy", check=False).stdout.strip() != "active"

    deployed.cli.run("destroy", "--yes", "--skip-preview", "--stack", "lab")
    for name in NODES:
        assert deployed.lab.ssh(name, "systemctl is-active etcd", check=False).stdout.strip() != "active"
        assert deployed.lab.ssh(name, "test -e /etc/systemd/system/etcd.service.d/pgha.conf",
                                check=False).returncode == 1, f"{name}: pgha's etcd drop-in is left"
        data = deployed.lab.ssh(
            name, "sudo test -s /var/lib/postgresql/15/pgha-lab/PG_VERSION && echo kept", check=False
        ).stdout.strip()
        assert data == "kept", f"{name}: the data directory must be kept by default"

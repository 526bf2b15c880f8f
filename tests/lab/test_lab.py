"""The lab gives real hosts: systemd running, strict host keys, crashes, partitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import Lab, config
from lab.proc import cmdline, mounts_under, pid_alive

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


def eventually(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll until check() is true or the deadline passes (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def pings(lab: Lab, src: str, dst: str) -> bool:
    """One ping from host src to host dst (by name, via /etc/hosts)."""
    return lab.ssh(src, f"ping -c1 -W1 {dst}", check=False, timeout=15).returncode == 0


def test_every_host_is_running(lab: Lab) -> None:
    assert list(lab.hosts) == ["pg1", "pg2", "pg3"]
    for name in lab.hosts:
        res = lab.ssh(name, "systemctl is-system-running; hostname; id -un; sudo -n id -un")
        assert res.stdout.split() == ["running", name, "pgha", "root"], res.stdout


def test_addresses_are_fixed(lab: Lab) -> None:
    assert [h.address for h in lab.hosts.values()] == [
        "10.77.0.11",
        "10.77.0.12",
        "10.77.0.13",
    ]
    res = lab.ssh("pg1", "ip -4 -o addr show dev host0; getent hosts pg3")
    assert "10.77.0.11/24" in res.stdout
    assert "10.77.0.13" in res.stdout


def test_host_keys_differ_and_match_known_hosts(lab: Lab, tmp_path: Path) -> None:
    keys = {h.name: h.host_public_key.split()[:2] for h in lab.hosts.values()}
    assert len({k[1] for k in keys.values()}) == 3
    known = Path(lab.inv.known_hosts).read_text().splitlines()
    for h in lab.hosts.values():
        assert f"{h.address},{h.name} {' '.join(keys[h.name])}" in known

    def strict_ssh(address: str, known_hosts: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                lab.inv.private_key,
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={known_hosts}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=5",
                f"pgha@{address}",
                "cat /etc/ssh/ssh_host_ed25519_key.pub",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    for h in lab.hosts.values():
        res = strict_ssh(h.address, lab.inv.known_hosts)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split()[:2] == keys[h.name]
    # pg2's key listed for pg1's address must be refused: checking really is strict
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"10.77.0.11 {' '.join(keys['pg2'])}\n")
    res = strict_ssh("10.77.0.11", str(wrong))
    assert res.returncode == 255
    assert "host key" in res.stderr.lower()


def test_default_postgresql_and_etcd_run_at_boot(lab: Lab) -> None:
    for name in lab.hosts:
        res = lab.ssh(name, "systemctl is-active postgresql@15-main etcd ssh", check=False)
        assert res.stdout.split() == ["active"] * 3, (name, res.stdout)
    res = lab.ssh("pg1", "pg_lsclusters -h; ETCDCTL_API=3 etcdctl endpoint health 2>&1")
    assert "15 main 5432 online" in " ".join(res.stdout.split())
    assert "is healthy" in res.stdout


def test_hosts_reach_each_other_but_nothing_else(lab: Lab) -> None:
    assert pings(lab, "pg1", "pg2")
    assert pings(lab, "pg3", "pg1")
    routes = lab.ssh("pg1", "ip -4 route show").stdout
    assert "default" not in routes
    assert routes.split()[0] == config.CIDR


def test_cli_inventory_status_and_ssh_exit_code(lab: Lab) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lab", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    inv = json.loads(cli("inventory").stdout)
    assert inv["bridge"] == "pghabr0"
    assert inv["cidr"] == "10.77.0.0/24"
    assert inv["gateway"] == "10.77.0.1"
    assert Path(inv["wheelhouse"]).is_dir()
    assert [h["name"] for h in inv["hosts"]] == ["pg1", "pg2", "pg3"]
    for h in inv["hosts"]:
        assert set(h) >= {
            "name",
            "address",
            "ssh_user",
            "ssh_port",
            "private_key",
            "host_public_key",
            "known_hosts",
        }
        assert h["host_public_key"].startswith("ssh-ed25519 ")
    assert cli("ssh", "pg1", "exit", "7").returncode == 7
    res = cli("ssh", "pg1", "echo", "$(hostname)")
    assert res.returncode == 0 and res.stdout.strip() == "pg1"
    status = json.loads(cli("status", "--json").stdout)
    assert all(s["running"] and s["attached"] for s in status)


def test_crash_and_start_keep_the_disk(lab: Lab) -> None:
    token = uuid.uuid4().hex
    lab.ssh("pg2", f"echo {token} > /var/tmp/marker")
    lab.crash("pg2")
    assert not lab.is_running("pg2")
    assert eventually(lambda: not pings(lab, "pg1", "pg2"), timeout=5)
    res = lab.ssh("pg2", "true", check=False, timeout=15)
    assert res.returncode == 255
    lab.start("pg2", timeout=120)
    assert lab.is_running("pg2")
    res = lab.ssh("pg2", "cat /var/tmp/marker; systemctl is-system-running")
    assert res.stdout.split() == [token, "running"]
    assert pings(lab, "pg1", "pg2")


def test_one_shared_directory_in_every_host(lab: Lab) -> None:
    """/srv/pgha-shared is one directory (the lab's stand-in for NFS), writable by postgres,
    bound again when a crashed host starts."""
    owner = lab.ssh("pg1", f"stat -c '%U %a' {config.SHARED_MOUNT}").stdout.split()
    assert owner == ["postgres", "750"], owner
    lab.ssh("pg1", f"sudo -u postgres sh -c 'hostname > {config.SHARED_MOUNT}/probe'")
    for name in lab.hosts:
        assert lab.ssh(name, f"sudo -u postgres cat {config.SHARED_MOUNT}/probe").stdout == "pg1\n"
    assert (lab.state_dir / config.SHARED_DIR / "probe").read_text() == "pg1\n"
    lab.ssh("pg1", f"sudo -u postgres rm {config.SHARED_MOUNT}/probe")


def test_isolate_and_heal(lab: Lab) -> None:
    lab.isolate("pg3")
    try:
        assert eventually(lambda: not pings(lab, "pg1", "pg3"), timeout=5)
        assert pings(lab, "pg2", "pg1")
        assert lab.is_running("pg3")
    finally:
        lab.heal("pg3")
    assert eventually(lambda: pings(lab, "pg1", "pg3"), timeout=10)
    assert lab.ssh("pg3", "systemctl is-system-running").stdout.strip() == "running"


def test_down_leaves_nothing(lab: Lab) -> None:
    state = lab.state_dir
    Lab.down()
    assert mounts_under(state) == []
    assert not Path("/sys/class/net", config.BRIDGE).exists()
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith("vb-")]
    nspawns = [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit()
        and pid_alive(int(p))
        and cmdline(int(p))[:1] != []
        and cmdline(int(p))[0].endswith("systemd-nspawn")
    ]
    assert nspawns == []
    cgroups = [Path("/sys/fs/cgroup", h, config.LAB_NAME) for h in ("systemd", "unified", "")]
    assert not [cg for cg in cgroups if cg.exists()]
    assert not (state / "hosts").exists()
    assert not (state / config.SHARED_DIR).exists()
    with pytest.raises(RuntimeError):
        Lab.load()

"""Failures, bad input and security, on real lab hosts.

With synchronous replication on and a write load through HAProxy whose every
acknowledged id is recorded: secrets never in plaintext, bad configs refused
at preview without touching a host, etcd losing a member and then quorum,
the leader crashing and being cut off (never two writable primaries), an `up`
interrupted by a host crash, and a changed SSH host key.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from lab import Lab
from lab import hosts as lab_hosts
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import NODES, ProjectCopy, host, ssh_accepts, wait_until
from tests.cluster.workload import WriteLoad

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]


@dataclass
class Failures:
    lab: Lab
    project: ProjectCopy
    load: WriteLoad
    config: dict[str, Any]
    passwords: list[str]
    up_output: str
    ps_samples: list[str] = field(default_factory=list)

    def write(self, config: dict[str, Any]) -> None:
        self.config = config
        self.project.write_config(config)


def node_sql(lab: Lab, name: str, sql: str, timeout: float = 5) -> subprocess.CompletedProcess[str]:
    """psql inside the host's own namespaces: reaches a node even while it is cut off."""
    _, pid = lab_hosts.running_pids(lab.state_dir, name)
    if pid is None:
        return subprocess.CompletedProcess([], 1, "", "host down")
    return subprocess.run(
        [
            "nsenter",
            "-t",
            str(pid),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-X",
            "-At",
            "-h",
            "/var/run/postgresql",
            "-d",
            "postgres",
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cluster_from(names: list[str]) -> dict[str, dict[str, Any]]:
    for name in names:
        try:
            view = requests.get(f"http://{NODES.get(name, '10.77.0.15')}:8008/cluster", timeout=3).json()
            return {m["name"]: m for m in view["members"]}
        except (requests.RequestException, ValueError):
            continue
    raise AssertionError(f"none of {names} answers /cluster")


def sync_ready() -> bool:
    members = cluster_from(list(NODES)).values()
    return any(m["role"] == "leader" for m in members) and any(
        m["role"] == "sync_standby" and m["state"] == "streaming" for m in members
    )


def leader_of(names: list[str]) -> str | None:
    return next((n for n, m in cluster_from(names).items() if m["role"] == "leader"), None)


def all_passwords(project: ProjectCopy) -> list[str]:
    state = json.loads(project.run("stack", "export", "--show-secrets").stdout)
    values = [
        r["outputs"]["value"]
        for r in state["deployment"]["resources"]
        if r["type"].endswith("pgha:GeneratedPassword")
    ]
    # A secret shows as {"<sig>": ..., "plaintext": "<JSON of the value>"} with --show-secrets.
    return [json.loads(v["plaintext"]) if isinstance(v, dict) else v for v in values]


def sample_ps(lab: Lab, names: list[str], stop: threading.Event, out: list[str]) -> None:
    while not stop.is_set():
        for name in names:
            proc = lab.ssh(name, "ps -eo args --no-headers", check=False, timeout=10)
            out.append(proc.stdout)
        time.sleep(0.2)


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Failures]:
    lab = Lab.up(5)
    try:
        link_wheelhouse(lab)
        project = ProjectCopy.with_stack(tmp_path_factory.mktemp("failures"), "failures")
        config = copy.deepcopy(project.base_config)
        config["dcs"] = {"synchronousMode": True}
        project.write_config(config)
        stop = threading.Event()
        samples: list[str] = []
        sampler = threading.Thread(target=sample_ps, args=(lab, list(lab.hosts), stop, samples), daemon=True)
        sampler.start()
        up = project.run("up", "--yes", "--skip-preview")
        stop.set()
        sampler.join()
        passwords = all_passwords(project)
        load = WriteLoad(
            "10.77.0.14",
            5000,
            project.run("stack", "output", "superuserPassword", "--show-secrets").stdout.strip(),
        )
        load.prepare()
        load.start()
        yield Failures(
            lab=lab,
            project=project,
            load=load,
            config=config,
            passwords=passwords,
            up_output=up.stdout + up.stderr,
            ps_samples=samples,
        )
        load.stop()
        project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


# --- security -------------------------------------------------------------------------


def test_no_plaintext_secret_in_state_output_or_process_lists(failures: Failures) -> None:
    assert len(failures.passwords) >= 5 and all(len(p) >= 20 for p in failures.passwords)
    exported = failures.project.run("stack", "export").stdout
    assert len(failures.ps_samples) > 20, "the ps sampler did not run during the up"
    for password in failures.passwords:
        assert password not in exported
        assert password not in failures.up_output
        assert not any(password in sample for sample in failures.ps_samples)


def test_secret_files_are_0600_and_owned_by_their_service_user(failures: Failures) -> None:
    patterns = "\n".join(failures.passwords) + "\n"
    for name in [*NODES, "pg4"]:
        found = failures.lab.ssh(
            name,
            "sudo grep -rlF -f /dev/stdin /etc /opt /var/lib/postgresql /var/cache/pgha /tmp /root "
            "/home /var/tmp /var/log 2>/dev/null || true",
            input=patterns,
        ).stdout.split()
        for path in found:
            stat = failures.lab.ssh(name, f"sudo stat -c '%a %U' {path}").stdout.split()
            assert stat == ["600", "postgres"], f"{name}:{path} holds a password with {stat}"
        if name in NODES:
            assert "/etc/patroni/patroni.yml" in found, f"{name}: the check found nothing to check"


def test_pg_hba_uses_scram_never_trust_and_limits_replication(failures: Failures) -> None:
    with psycopg.connect(
        host="10.77.0.14", port=5000, user="postgres", dbname="postgres", password=failures.load.password
    ) as conn:
        rules = conn.execute(
            "SELECT type, database, user_name, address, auth_method FROM pg_hba_file_rules"
        ).fetchall()
    assert rules and not any(r[4] == "trust" for r in rules), rules
    assert {r[4] for r in rules if r[0] != "local"} == {"scram-sha-256"}, rules
    replication_from = {r[3] for r in rules if r[1] == ["replication"]}
    assert replication_from == {"127.0.0.1", "::1", *NODES.values()}, replication_from


# --- bad input ------------------------------------------------------------------------


BAD_CONFIGS: list[tuple[str, Any, str]] = [
    ("duplicate address", lambda c: c["hosts"][1].update(address="10.77.0.11"), "pgha:hosts[1].address"),
    ("typo in a key", lambda c: c["hosts"][0].update(rolez=["etcd"]), "pgha:hosts[0].rolez"),
    (
        "port collision",
        lambda c: (
            c["hosts"][0].update(roles=["etcd", "patroni", "haproxy"]),
            c.update(haproxy={"statsPort": 8008}),
        ),
        "pgha:haproxy.statsPort",
    ),
    (
        "wrong parameter type",
        lambda c: c["postgresql"]["parameters"].update(max_connections="lots"),
        "pgha:postgresql.parameters.max_connections",
    ),
    ("leader not a node", lambda c: c.update(leader="pg9"), "pgha:leader"),
    (
        "production without secrets",
        lambda c: c.update(production=True, generatePasswords=False),
        "pgha:superuserPassword",
    ),
    ("bad CIDR", lambda c: c.update(clientCidrs=["10.77.0.0/33"]), "pgha:clientCidrs[0]"),
    (
        "removing a majority of etcd members",
        lambda c: [h.update(roles=["patroni"]) for h in c["hosts"] if h["name"] in ("pg2", "pg3")],
        "pgha:hosts: removing 2 of 3 etcd members",
    ),
    ("duplicate host name", lambda c: c["hosts"][1].update(name="pg1"), "pgha:hosts[1].name"),
    ("invalid IPv4 address", lambda c: c["hosts"][2].update(address="10.77.0.300"), "pgha:hosts[2].address"),
    ("IPv6 address", lambda c: c["hosts"][0].update(address="fd00::11"), "pgha:hosts[0].address"),
    ("unknown role", lambda c: c["hosts"][3].update(roles=["loadbalancer"]), "pgha:hosts[3].roles[0]"),
    ("unknown top-level key", lambda c: c.update(scop="x"), "pgha:scop"),
    ("port out of range", lambda c: c.update(etcd={"clientPort": 70000}), "pgha:etcd.clientPort"),
    ("ttl too small", lambda c: c.update(dcs={"ttl": 10}), "pgha:dcs.ttl"),
    ("trust in pg_hba", lambda c: c.update(pgHba=["host all all 0.0.0.0/0 trust"]), "pgha:pgHba[0]"),
    (
        "bad enum parameter",
        lambda c: c["postgresql"]["parameters"].update(wal_level="verbose"),
        "pgha:postgresql.parameters.wal_level",
    ),
    (
        "bad boolean parameter",
        lambda c: c["postgresql"]["parameters"].update(hot_standby="maybe"),
        "pgha:postgresql.parameters.hot_standby",
    ),
    (
        "managed parameter",
        lambda c: c["postgresql"]["parameters"].update(port=5433),
        "pgha:postgresql.parameters.port",
    ),
    (
        "unknown role option",
        lambda c: c["roles"][0].update(options=["SUPERPOWERS"]),
        "pgha:roles[0].options[0]",
    ),
    (
        "duplicate database role",
        lambda c: c.update(roles=[c["roles"][0], dict(c["roles"][0])]),
        "pgha:roles[1].name",
    ),
    ("role named like Patroni's", lambda c: c.update(roles=[{"name": "replicator"}]), "pgha:roles[0].name"),
    (
        "wheelhouse without a path",
        lambda c: c.update(patroni={"install": {"method": "wheelhouse"}}),
        "pgha:patroni.install.wheelhouse",
    ),
    ("unknown restart policy", lambda c: c.update(restartPolicy="sometimes"), "pgha:restartPolicy"),
    (
        "leader tagged nofailover",
        lambda c: (c.update(leader="pg2"), c["hosts"][1].update(tags={"nofailover": True})),
        "pgha:leader",
    ),
    ("no Patroni host", lambda c: [h.update(roles=["etcd"]) for h in c["hosts"][:3]], "pgha:hosts"),
    ("secret given in plaintext", lambda c: c.update(superuserPassword="hunter2"), "pgha:superuserPassword"),
]


def test_bad_configs_fail_at_preview_without_touching_a_host(failures: Failures) -> None:
    good = copy.deepcopy(failures.config)
    before = ssh_accepts(failures.lab)
    for label, edit, key in BAD_CONFIGS:
        config = copy.deepcopy(good)
        edit(config)
        failures.project.write_config(config)
        result = failures.project.run("preview", check=False)
        assert result.returncode != 0, f"{label}: preview passed"
        assert key in result.stdout + result.stderr, f"{label}: {key!r} not named:\n{result.stdout[-2000:]}"
        up = failures.project.run("up", "--yes", "--skip-preview", check=False)
        assert up.returncode != 0, f"{label}: up passed"
    failures.project.write_config(good)
    after = ssh_accepts(failures.lab)
    assert after - before == len(failures.lab.hosts), "a refused config opened SSH sessions to hosts"
    failures.project.run("preview", "--expect-no-changes")


# --- etcd -----------------------------------------------------------------------------


def test_one_etcd_member_down_keeps_the_cluster_writable(failures: Failures) -> None:
    leader = leader_of(list(NODES))
    victim = next(n for n in NODES if n != leader)
    failures.load.reset_counters()
    failures.lab.ssh(victim, "sudo systemctl stop etcd")
    try:
        time.sleep(25)
        assert failures.load.failures == [], failures.load.failures[:3]
        assert leader_of([n for n in NODES if n != victim]) == leader
    finally:
        failures.lab.ssh(victim, "sudo systemctl start --no-block etcd")
    wait_until(
        lambda: requests.get(f"http://{NODES[victim]}:2379/health", timeout=3).json()["health"] == "true",
        timeout=60,
        what=f"etcd on {victim} healthy again",
    )


def test_etcd_quorum_loss_makes_the_leader_read_only_then_recovers(failures: Failures) -> None:
    leader = leader_of(list(NODES))
    others = [n for n in NODES if n != leader]
    failures.load.reset_counters()
    for name in others:
        failures.lab.ssh(name, "sudo systemctl stop etcd")
    try:
        # Patroni without failsafe_mode demotes a leader that cannot update the DCS.
        wait_until(
            lambda: node_sql(failures.lab, leader, "SELECT pg_is_in_recovery()").stdout.strip() == "t",
            timeout=90,
            what=f"{leader} read-only after losing etcd quorum",
        )
        lost_at = time.monotonic()
        assert failures.load.failures, "writes went on without a DCS quorum"
    finally:
        for name in others:
            failures.lab.ssh(name, "sudo systemctl start --no-block etcd")
    wait_until(lambda: leader_of(list(NODES)) is not None, timeout=120, what="a leader after etcd recovered")
    resumed = len(failures.load.acknowledged)
    wait_until(lambda: len(failures.load.acknowledged) > resumed + 5, timeout=60, what="writes resumed")
    print(
        f"\netcd quorum loss: leader read-only, writes unavailable for "
        f"{failures.load.longest_window():.1f}s (recovery started {time.monotonic() - lost_at:.1f}s later)"
    )
    assert failures.load.missing() == []
    failures.load.assert_progressing()


# --- the leader -----------------------------------------------------------------------


# Soak: PGHA_SOAK_CYCLES=N crashes the leader N times in a row (CI runs one cycle).
SOAK_CYCLES = int(os.environ.get("PGHA_SOAK_CYCLES", "1"))


@pytest.mark.parametrize("cycle", range(SOAK_CYCLES))
def test_leader_crash_loses_no_acknowledged_commit(failures: Failures, cycle: int) -> None:
    # With synchronous_mode only the synchronous standby may take over: crash once there is one.
    wait_until(sync_ready, timeout=120, what="a leader and a streaming synchronous standby")
    leader = leader_of(list(NODES))
    assert leader
    survivors = [n for n in NODES if n != leader]
    failures.load.reset_counters()
    crashed_at = time.monotonic()
    failures.lab.crash(leader)
    new_leader = wait_until(
        lambda: (lambda n: n if n and n != leader else None)(leader_of(survivors)),
        timeout=120,
        what="a new leader",
    )
    elected_after = time.monotonic() - crashed_at
    wait_until(lambda: failures.load.windows, timeout=60, what="writes flowing again through HAProxy")
    window = failures.load.longest_window()
    print(
        f"\nleader crash {cycle + 1}/{SOAK_CYCLES}: {leader} -> {new_leader} "
        f"elected after {elected_after:.1f}s; write "
        f"unavailability through HAProxy {window:.1f}s (ttl 30 + HAProxy checks 2 x 0.5s predicts <= 31s)"
    )
    assert window < 30 + 10 + 5
    assert failures.load.missing() == [], "an acknowledged commit was lost"
    failures.lab.start(leader)
    wait_until(
        lambda: cluster_from(survivors).get(leader, {}).get("state") == "streaming",
        timeout=180,
        what=f"{leader} back as a streaming replica",
    )


def test_isolated_leader_stops_accepting_writes_never_two_primaries(failures: Failures) -> None:
    wait_until(sync_ready, timeout=120, what="a leader and a streaming synchronous standby")
    leader = leader_of(list(NODES))
    assert leader
    writable_samples: list[set[str]] = []
    stop = threading.Event()

    sampler_errors: list[str] = []

    def sample() -> None:
        while not stop.is_set():
            writable = set()
            try:
                for name in NODES:
                    res = node_sql(
                        failures.lab,
                        name,
                        "INSERT INTO pgha_load (id) VALUES ((-1 * extract(epoch FROM clock_timestamp()) "
                        "* 1000000)::bigint) RETURNING 1",
                    )
                    if res.returncode == 0 and res.stdout.strip().startswith("1"):
                        writable.add(name)
            except Exception as err:  # noqa: BLE001 - reported by the assertion below
                sampler_errors.append(repr(err))
                time.sleep(0.3)
                continue
            writable_samples.append(writable)
            time.sleep(0.3)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wait_until(
        lambda: any(leader in w for w in writable_samples),
        timeout=30,
        what=f"a sample with {leader} writable before the cut",
    )
    failures.load.reset_counters()
    failures.lab.isolate(leader)
    try:
        others = [n for n in NODES if n != leader]
        new_leader = wait_until(
            lambda: (lambda n: n if n and n != leader else None)(leader_of(others)),
            timeout=120,
            what="a new leader elected without the isolated one",
        )
        wait_until(
            lambda: node_sql(failures.lab, leader, "SELECT pg_is_in_recovery()").stdout.strip() == "t",
            timeout=60,
            what=f"{leader} demoted while cut off",
        )
        wait_until(
            lambda: any(new_leader in w for w in writable_samples[-5:]),
            timeout=90,
            what=f"{new_leader} accepting writes",
        )
    finally:
        failures.lab.heal(leader)
    stop.set()
    sampler.join(timeout=30)
    assert writable_samples, f"the sampler saw nothing: {sampler_errors[:3]}"
    assert all(len(s) <= 1 for s in writable_samples), [s for s in writable_samples if len(s) > 1]
    assert any(leader in s for s in writable_samples) and any(new_leader in s for s in writable_samples)
    wait_until(
        lambda: cluster_from(others).get(leader, {}).get("state") == "streaming",
        timeout=180,
        what=f"{leader} rejoined (pg_rewind) as a streaming replica",
    )
    assert failures.load.missing() == []
    failures.load.assert_progressing()
    print(
        f"\nisolation: {leader} -> {new_leader}; writes unavailable {failures.load.longest_window():.1f}s; "
        f"{len(writable_samples)} samples, never two writable nodes"
    )


# --- interrupted up, changed host key ---------------------------------------------------


def test_up_interrupted_by_a_host_crash_converges_on_rerun(failures: Failures) -> None:
    config = copy.deepcopy(failures.config)
    config["hosts"] = [*config["hosts"], host("pg5", ["patroni"])]
    failures.write(config)
    proc = subprocess.Popen(
        ["pulumi", "up", "--yes", "--skip-preview", "--non-interactive", "--stack", failures.project.stack],
        cwd=failures.project.dir,
        env=failures.project.cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until(
        lambda: failures.lab.ssh("pg5", "test -d /opt/patroni && echo y", check=False).stdout.strip(),
        timeout=120,
        what="Patroni's install under way on pg5",
        interval=0.3,
    )
    failures.lab.crash("pg5")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode != 0, out[-3000:]
    assert "10.77.0.15" in out, out[-3000:]
    state = json.loads(failures.project.run("stack", "export").stdout)
    node = [r for r in state["deployment"]["resources"] if r["urn"].endswith("pgha-lab-node-pg5")]
    assert not node, "the state claims a node that was never created"
    failures.lab.start("pg5")
    failures.project.run("up", "--yes", "--skip-preview")
    wait_until(
        lambda: cluster_from(list(NODES)).get("pg5", {}).get("state") == "streaming",
        timeout=120,
        what="pg5 streaming after the re-run",
    )
    failures.project.run("preview", "--expect-no-changes")


def test_changed_host_key_stops_the_up(failures: Failures, tmp_path: Path) -> None:
    known = Path(failures.lab.inv.known_hosts).read_text().splitlines()
    keys = {line.split()[0].split(",")[1]: line.split(None, 1)[1] for line in known if line.strip()}
    forged = [
        f"{line.split()[0]} {keys['pg3']}" if line.startswith("10.77.0.12,") else line for line in known
    ]
    forged_file = tmp_path / "known_hosts"
    forged_file.write_text("\n".join(forged) + "\n")
    config = copy.deepcopy(failures.config)
    config["ssh"] = {**config["ssh"], "knownHostsFile": str(forged_file)}
    for h in config["hosts"]:
        if h["name"] == "pg2":
            h["tags"] = {"nosync": True}
    failures.project.write_config(config)
    result = failures.project.run("up", "--yes", "--skip-preview", check=False)
    assert result.returncode != 0
    assert "10.77.0.12: check host key: host key CHANGED" in result.stdout + result.stderr, result.stdout[
        -3000:
    ]
    failures.project.write_config(failures.config)

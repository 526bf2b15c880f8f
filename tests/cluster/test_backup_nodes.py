"""pgBackRest with the repository on the Patroni nodes themselves (no repository host), on real
lab hosts.

pg1..pg3 run the cluster, pg4 HAProxy; no host has the `backup` role, so the repository is
pgha:backup.repoPath on shared storage: the lab's shared directory, bind-mounted at
/srv/pgha-shared in every host (lab/README.md). First a repoPath that is NOT shared (a local
directory on each node) is refused by `up` with the error naming the key and the hosts, before
Patroni archives anything. Then, under a write load through HAProxy: archiving from the first
`up` (`pgbackrest check`), a full backup by the documented command on the leader, the same
unit on a replica skipping, a switchover, the new leader archiving and its timer's service
taking a differential backup while the old leader's skips, `pgbackrest verify` clean and no
WAL gap across both timelines; a replica re-initialised from the repository; the shared
mount lost on a replica seen by `refresh` and refused by `up`; destroy removing the timers on
every node and keeping the backups.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import ProjectCopy, wait_until
from tests.cluster.test_backup import leader_of, members
from tests.cluster.workload import WriteLoad

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

STANZA = "pgha-lab"
NODES = ("pg1", "pg2", "pg3")
SHARED = "/srv/pgha-shared/pgbackrest"  # the lab's shared directory (lab/config.py SHARED_MOUNT)
LOCAL = "/var/lib/postgresql/pgbackrest-local"  # exists on each node, shared by none
BACKUP = {"repoPath": SHARED, "retention": {"full": 2, "diff": 3},
          "schedule": {"full": "Sun *-*-* 01:00:00", "diff": "Mon..Sat *-*-* 01:00:00"}}


@dataclass
class NodeBackups:
    lab: Lab
    project: ProjectCopy
    config: dict[str, Any]
    password: str = ""
    load: WriteLoad | None = None
    timings: dict[str, float] = field(default_factory=dict)
    marks: dict[str, Any] = field(default_factory=dict)

    def leader(self) -> str:
        return leader_of("10.77.0.11")

    def pgbackrest(self, name: str, args: str, check: bool = True, timeout: float = 600) -> str:
        """pgbackrest as postgres on a node (the repository is local to every node)."""
        out = self.lab.ssh(name, f"cd / && sudo -u postgres pgbackrest --stanza={STANZA} {args}",
                           check=False, timeout=timeout)
        text = out.stdout + out.stderr
        if check:
            assert out.returncode == 0, f"{name}: pgbackrest {args}: {out.returncode}\n{text}"
        return text

    def info(self) -> dict[str, Any]:
        return json.loads(self.pgbackrest(self.leader(), "--output=json info"))[0]

    def run_unit(self, name: str, kind: str) -> tuple[int, str]:
        """What the timer runs: `systemctl start` of the backup service on one node, and the
        service's journal for this run."""
        unit = f"pgha-backup-{STANZA}-{kind}"
        since = self.lab.ssh(name, "date '+%Y-%m-%d %H:%M:%S'", check=True).stdout.strip()
        out = self.lab.ssh(name, f"sudo systemctl start {unit}.service", check=False, timeout=900)
        journal = self.lab.ssh(name, f"sudo journalctl -u {unit} --since '{since}' --no-pager -o cat",
                               check=False).stdout
        return out.returncode, journal + out.stderr

    def timed(self, name: str, started: float) -> None:
        self.timings[name] = time.monotonic() - started
        print(f"\n{name}: {self.timings[name]:.1f}s")

    def outputs(self) -> dict[str, Any]:
        return json.loads(self.project.run("stack", "output", "--json", "--show-secrets").stdout)


@pytest.fixture(scope="module")
def nb(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[NodeBackups]:
    lab = Lab.up(4)
    try:
        link_wheelhouse(lab)
        project = ProjectCopy.with_stack(tmp_path_factory.mktemp("backup-nodes"), "nodes")
        config = copy.deepcopy(project.base_config)
        config["backup"] = copy.deepcopy(BACKUP)
        state = NodeBackups(lab=lab, project=project, config=config)
        yield state
        if state.load is not None:
            state.load.stop()
        print("\ntimings:\n" + "\n".join(f"  {k}: {v:.1f}s" for k, v in state.timings.items()))
        project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_a_repo_path_that_is_not_shared_is_refused(nb: NodeBackups) -> None:
    """A local directory on each node (the shared mount forgotten): `up` stops at the check,
    naming pgha:backup.repoPath and the hosts that do not see the first node's marker; Patroni
    has not started, so nothing was archived anywhere. With the shared path, `up` completes."""
    for name in NODES:  # the same path on every node, but each its own local directory
        nb.lab.ssh(name, f"sudo install -d -o postgres -g postgres -m 0750 {LOCAL}", check=True)
    config = copy.deepcopy(nb.config)
    config["backup"]["repoPath"] = LOCAL
    nb.project.write_config(config)
    started = time.monotonic()
    refused = nb.project.run("up", "--yes", "--skip-preview", check=False)
    nb.timed("pulumi up refused (repoPath not shared)", started)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0
    message = re.search(r"pgha:backup\.repoPath [^\n]*", text)
    assert message, text[-3000:]
    print(f"  {message.group(0)[:400]}")
    assert f"pgha:backup.repoPath {LOCAL} is not shared storage" in text, text[-3000:]
    assert "is not visible on pg2, pg3" in text and "(pg1, pg2, pg3)" in text, text[-3000:]
    for name in NODES:
        patroni = nb.lab.ssh(name, "systemctl is-active patroni", check=False).stdout.strip()
        assert patroni != "active", f"{name}: Patroni runs although the repository check failed"
        conf = nb.lab.ssh(name, "test -e /etc/pgbackrest/pgbackrest.conf", check=False)
        assert conf.returncode != 0, f"{name}: pgbackrest.conf written before the check passed"
        assert nb.lab.ssh(name, f"sudo ls -A {LOCAL}", check=True).stdout.strip() == ""

    nb.project.write_config(nb.config)
    started = time.monotonic()
    nb.project.run("up", "--yes", "--skip-preview")
    nb.timed("pulumi up (3 nodes + HAProxy, repository on the shared path)", started)
    nb.password = nb.project.run("stack", "output", "superuserPassword", "--show-secrets").stdout.strip()
    nb.load = WriteLoad("10.77.0.14", 5000, nb.password)


def test_archiving_works_from_the_first_up(nb: NodeBackups) -> None:
    leader = nb.leader()
    nb.pgbackrest(leader, "check")
    info = nb.info()
    assert info["status"]["code"] in (0, 2), info["status"]  # 2: no backup yet
    assert info["archive"] and info["archive"][0]["min"], info
    # The repository is the same directory from every node (and the build machine's shared dir).
    listing = {name: nb.lab.ssh(name, f"sudo -u postgres ls {SHARED}/archive/{STANZA}", check=True).stdout
               for name in NODES}
    assert len(set(listing.values())) == 1 and listing["pg1"].strip(), listing
    passphrase = nb.lab.ssh(leader, "sudo sed -n 's/^repo1-cipher-pass=//p' "
                                    f"/etc/pgbackrest/conf.d/{STANZA}-cipher.conf", check=True).stdout.strip()
    assert len(passphrase) >= 24
    nb.marks["passphrase"] = passphrase
    for name in NODES:
        files = nb.lab.ssh(name, "sudo stat -c '%a %U:%G' /etc/pgbackrest/pgbackrest.conf "
                                 f"/etc/pgbackrest/conf.d/{STANZA}-cipher.conf", check=True).stdout.split()
        assert files == ["640", "root:postgres", "600", "postgres:postgres"], (name, files)
        conf = nb.lab.ssh(name, "sudo cat /etc/pgbackrest/pgbackrest.conf", check=True).stdout
        assert f"repo1-path={SHARED}" in conf and "repo1-host" not in conf and "cipher-pass" not in conf, conf
        timers = nb.lab.ssh(name, "systemctl list-timers --all --no-pager 'pgha-backup-*'", check=True).stdout
        assert f"pgha-backup-{STANZA}-full.timer" in timers and f"pgha-backup-{STANZA}-diff.timer" in timers
        # The passphrase only in that 0600 file (pattern on stdin: sudo would log a command line).
        found = nb.lab.ssh(name, "sudo grep -rlF -f /dev/stdin /etc /var/lib/postgresql /var/log "
                                 "/var/spool/pgbackrest", check=False, input=passphrase + "\n")
        assert found.stdout.split() == [f"/etc/pgbackrest/conf.d/{STANZA}-cipher.conf"], found.stdout
    status = nb.outputs()["backup"]
    assert status["stanza"] == STANZA and status["repository"] == f"{SHARED} (shared by pg1, pg2, pg3)"
    assert status["archive"]["healthy"] is True and status["archive"]["leader"] == leader, status
    assert status.get("last_full") is None and status["backups"] == 0, status


def test_backups_follow_the_leader_across_a_switchover(nb: NodeBackups) -> None:
    assert nb.load is not None
    nb.load.prepare()
    nb.load.start()
    time.sleep(5)
    leader = nb.leader()
    replicas = [n for n in NODES if n != leader]

    # The documented command on the leader, while ps is watched for the passphrase.
    seen: list[str] = []
    done = threading.Event()

    def watch_ps() -> None:
        while not done.is_set():
            seen.extend(nb.lab.ssh(name, "ps -eo args", check=False).stdout for name in NODES)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_ps, daemon=True)
    watcher.start()
    started = time.monotonic()
    code, journal = nb.run_unit(leader, "full")
    done.set()
    watcher.join()
    assert code == 0, journal[-3000:]
    nb.timed(f"full backup on the leader {leader} (systemctl start pgha-backup-{STANZA}-full)", started)
    assert any("pgbackrest" in snapshot and "backup" in snapshot for snapshot in seen)
    assert not any(nb.marks["passphrase"] in snapshot for snapshot in seen)
    assert "backup command end: completed successfully" in journal, journal[-3000:]
    assert [b["type"] for b in nb.info()["backup"]] == ["full"]

    # The same unit on a replica (as its timer would start it): a clear line, exit 0, no backup.
    code, journal = nb.run_unit(replicas[0], "diff")
    assert code == 0, journal
    skipped = [line for line in journal.splitlines() if f"{replicas[0]} is not the leader" in line]
    assert skipped and "backup command begin" not in journal, journal
    print(f"  {replicas[0]}: {skipped[0].strip()}")
    assert len(nb.info()["backup"]) == 1

    target = next(n for n, m in members("10.77.0.11").items() if m["role"] != "leader"
                  and m["state"] == "streaming")
    started = time.monotonic()
    nb.lab.ssh(leader, f"sudo patronictl -c /etc/patroni/patroni.yml switchover --leader {leader} "
                       f"--candidate {target} --force", check=True, timeout=120)
    wait_until(lambda: nb.leader() == target, timeout=60, what=f"{target} leading")
    nb.timed(f"switchover {leader} -> {target} (patronictl)", started)
    time.sleep(3)
    nb.pgbackrest(target, "check")  # the new leader archives into the same repository

    code, journal = nb.run_unit(leader, "diff")  # the former leader's timer now skips
    assert code == 0 and f"{leader} is not the leader" in journal, journal
    started = time.monotonic()
    code, journal = nb.run_unit(target, "diff")
    assert code == 0 and "backup command end: completed successfully" in journal, journal[-3000:]
    nb.timed(f"differential backup on the new leader {target} (its timer's service)", started)
    backups = nb.info()["backup"]
    assert [b["type"] for b in backups] == ["full", "diff"], backups
    time.sleep(3)
    nb.load.stop()
    assert nb.load.missing() == []
    print(f"  {len(nb.load.failures)} failed writes during the switchover")

    nb.pgbackrest(target, "check")
    started = time.monotonic()
    text = nb.pgbackrest(target, "--log-level-console=info verify")
    nb.timed("pgbackrest verify", started)
    assert not re.search(r"missing|invalid|error", text.split("verify command begin")[-1], re.I), text
    info = nb.info()
    timelines = {b["archive"]["start"][:8] for b in info["backup"]}
    assert timelines == {"00000001", "00000002"}, info["backup"]
    listing = nb.lab.ssh(target, f"sudo -u postgres sh -c 'ls {SHARED}/archive/{STANZA}/*/*/'",
                         check=True).stdout.split()
    segments = sorted(name[:24] for name in listing if re.fullmatch(r"[0-9A-F]{24}-.*", name))
    numbers = sorted({int(s[8:], 16) for s in segments})
    first = int(info["backup"][0]["archive"]["start"][8:], 16)
    assert [n for n in range(first, numbers[-1] + 1) if n not in numbers] == [], segments
    print(f"  archive: {json.dumps(info['archive'])}")

    started = time.monotonic()
    nb.project.run("refresh", "--run-program", "--yes")
    nb.timed("pulumi refresh", started)
    status = nb.outputs()["backup"]
    assert status["last_full"]["label"].endswith("F") and status["last_diff"]["label"].endswith("D"), status
    assert status["archive"]["healthy"] is True and status["archive"]["leader"] == target, status
    assert nb.project.preview_changes() == {}


def test_a_replica_is_made_from_the_shared_repository(nb: NodeBackups) -> None:
    """create_replica_methods: a replica re-initialised by Patroni restores the latest backup
    from the shared repository (pgBackRest, then the archived WAL) and streams again."""
    replica = next(n for n in ("pg3", "pg2") if n != nb.leader())
    since = nb.lab.ssh(replica, "date '+%Y-%m-%d %H:%M:%S'", check=True).stdout.strip()
    started = time.monotonic()
    nb.lab.ssh(replica, f"sudo patronictl -c /etc/patroni/patroni.yml reinit {STANZA} {replica} --force",
               check=True, timeout=120)

    def journal() -> str:
        return nb.lab.ssh(replica, f"sudo journalctl -u patroni --since '{since}' --no-pager -o cat",
                          check=False).stdout

    # The reinit is asynchronous: the member streams again only after Patroni recreated it.
    wait_until(lambda: "replica has been created" in journal()
               and members("10.77.0.11")[replica]["state"] == "streaming", timeout=180,
               what=f"{replica} recreated by Patroni and streaming again")
    nb.timed(f"{replica} re-initialised from the repository (patronictl reinit)", started)
    text = journal()
    made = [line for line in text.splitlines() if "replica has been created using pgbackrest" in line]
    assert made, text[-3000:]
    print(f"  {made[0].strip()}")


def test_a_node_losing_the_shared_mount_is_drift(nb: NodeBackups) -> None:
    """The shared storage unmounted on a replica: `refresh` records it on the repository
    resource, `up` stops naming the node, and with the mount back `up` passes again."""
    # A replica other than pg1, the node that writes the marker (see the unit tests for pg1).
    replica = next(n for n in ("pg3", "pg2") if n != nb.leader())
    nb.lab.ssh(replica, "sudo umount /srv/pgha-shared", check=True)
    started = time.monotonic()
    nb.project.run("refresh", "--run-program", "--yes")
    nb.timed(f"pulumi refresh ({replica} without the shared mount)", started)
    assert nb.project.preview_changes() == {"update": {"pgha-lab-backup-repository": []}}
    failed = nb.project.run("up", "--yes", "--skip-preview", check=False)
    text = failed.stdout + failed.stderr
    assert failed.returncode != 0
    expected = f"is not shared storage: a marker written there by postgres on pg1 is not visible on {replica}"
    message = re.search(rf"pgha:backup\.repoPath {SHARED} [^\n]*", text)
    assert message and expected in message.group(0), text[-3000:]
    print(f"  {message.group(0)[:300]}")
    nb.lab.crash(replica)  # the lab binds the shared directory again when the host starts
    nb.lab.start(replica)
    wait_until(lambda: members("10.77.0.11")[replica]["state"] == "streaming", timeout=120,
               what=f"{replica} streaming again")
    started = time.monotonic()
    nb.project.run("up", "--yes", "--skip-preview")
    nb.timed("pulumi up with the mount back", started)
    assert nb.project.preview_changes() == {}


def test_destroy_removes_the_timers_and_keeps_the_backups(nb: NodeBackups) -> None:
    started = time.monotonic()
    nb.project.run("destroy", "--yes", "--skip-preview")
    nb.timed("pulumi destroy", started)
    for name in NODES:
        units = nb.lab.ssh(name, "ls /etc/systemd/system/ /usr/local/sbin/ | grep pgha-backup",
                           check=False).stdout
        assert units == "", f"{name}: {units}"
        left = nb.lab.ssh(name, "sudo ls /etc/pgbackrest/ /etc/pgbackrest/conf.d/", check=False).stdout
        assert "pgbackrest.conf" not in left and "cipher" not in left, f"{name}: {left}"
    shared = nb.lab.state_dir / "shared" / "pgbackrest"
    assert sorted(p.name for p in (shared / "backup" / STANZA).iterdir() if re.search(r"[FD]$", p.name))

"""Backups and point-in-time recovery with pgBackRest, on real lab hosts.

pg1..pg3 run the cluster, pg4 HAProxy, pg5 is the repository host (role `backup`); pg6 is
added later as a replica (made from the repository), pg7 and pg8 run a clone restored to
a point in time. Under a write load through HAProxy: archiving from the first minute
(`pgbackrest check`), a full backup (the documented command), a switchover, a
differential backup, a timestamp, and the clone holding exactly the rows committed
before it; no WAL gap (`pgbackrest verify`); a failing archive_command seen as drift;
the repository host down for a while (WAL kept, the failure shown, archiving catching up);
destroy keeping the backups; pgha:backup added to a running cluster (pg7, pg8 again).
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

import psycopg
import pytest
import requests

from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import ProjectCopy, host, wait_until
from tests.cluster.workload import WriteLoad

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]

REPO = "pg5"
STANZA = "pgha-lab"
CLONE = "pgha-clone"
BACKUP = {"retention": {"full": 2, "diff": 3}, "processMax": 2,
          "schedule": {"full": "Sun *-*-* 01:00:00", "diff": "Mon..Sat *-*-* 01:00:00"}}


@dataclass
class Backups:
    lab: Lab
    project: ProjectCopy
    config: dict[str, Any]
    password: str
    load: WriteLoad
    timings: dict[str, float] = field(default_factory=dict)
    marks: dict[str, Any] = field(default_factory=dict)
    clone: ProjectCopy | None = None

    def repo(self, command: str, check: bool = True, timeout: float = 600) -> str:
        """A command on the repository host as the pgbackrest user."""
        out = self.lab.ssh(REPO, f"cd / && sudo -u pgbackrest {command}", check=False, timeout=timeout)
        if check:
            assert out.returncode == 0, f"{command}: {out.returncode}\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def info(self, stanza: str = STANZA) -> dict[str, Any]:
        return json.loads(self.repo(f"pgbackrest --stanza={stanza} --output=json info"))[0]

    def timed(self, name: str, started: float) -> None:
        self.timings[name] = time.monotonic() - started
        print(f"\n{name}: {self.timings[name]:.1f}s")

    def backup(self, kind: str, stanza: str = STANZA, what: str = "") -> None:
        """A backup by the documented command (the timer's unit, on the repository host), timed;
        pgBackRest's last lines when it fails."""
        unit = f"pgha-backup-{stanza}-{kind}"
        started = time.monotonic()
        out = self.lab.ssh(REPO, f"sudo systemctl start {unit}.service", check=False, timeout=900)
        assert out.returncode == 0, out.stderr + self.lab.ssh(
            REPO, f"sudo journalctl -u {unit} --no-pager -n 40", check=False).stdout
        self.timed(f"{kind} backup (systemctl start {unit}){what}", started)

    def outputs(self, project: ProjectCopy | None = None) -> dict[str, Any]:
        return json.loads((project or self.project).run("stack", "output", "--json", "--show-secrets").stdout)

    def primary(self, **kw: Any) -> psycopg.Connection:
        return psycopg.connect(host="10.77.0.14", port=5000, user="postgres", dbname="postgres",
                               password=self.password, connect_timeout=5, **kw)


def members(address: str) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in requests.get(f"http://{address}:8008/cluster", timeout=5).json()["members"]}


def leader_of(address: str) -> str:
    return next(n for n, m in members(address).items() if m["role"] == "leader")


def patroni_journal(lab: Lab, name: str) -> str:
    return lab.ssh(name, "sudo journalctl -u patroni --no-pager -o cat", check=False).stdout


def verify_clean(bk: Backups, stanza: str = STANZA) -> str:
    """`pgbackrest verify` of a stanza: exit 0 and nothing missing, invalid or in error. Its output."""
    verify = bk.lab.ssh(REPO, f"cd / && sudo -u pgbackrest pgbackrest --stanza={stanza} "
                              "--log-level-console=info verify", check=False, timeout=600)
    text = verify.stdout + verify.stderr
    assert verify.returncode == 0, text
    assert not re.search(r"missing|invalid|error", text.split("verify command begin")[-1], re.I), text
    return text


def stamp_between_writes(bk: Backups) -> tuple[str, set[int]]:
    """A timestamp for a PITR: writes stop, the rows committed so far are read, the time is
    taken, and writes go on 1.5 s later. (time "YYYY-MM-DD HH:MM:SS.ffffff+00", rows before it)"""
    bk.load.stop()
    with bk.primary(autocommit=True) as conn:
        before = {r[0] for r in conn.execute("SELECT id FROM pgha_load").fetchall()}
        stamp = conn.execute("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                             "'YYYY-MM-DD HH24:MI:SS.US') || '+00'").fetchone()
    assert stamp is not None
    time.sleep(1.5)
    bk.load.start()
    return str(stamp[0]), before


def clone_stack(base: Path, stack: str, scope: str, names: list[str],
                target: Any) -> tuple[ProjectCopy, dict[str, Any]]:
    """A clone stack (its config written, not up yet): `names` run etcd and Patroni, the same
    repository host; restored from STANZA to `target` (pgha:restore.target), archiving into its
    own stanza (its scope)."""
    clone = ProjectCopy.with_stack(base, stack)
    config = copy.deepcopy(clone.base_config)
    config["scope"] = scope
    config["hosts"] = [*(host(name, ["etcd", "patroni"]) for name in names), host(REPO, ["backup"])]
    config["backup"] = copy.deepcopy(BACKUP)
    config["restore"] = {"fromStanza": STANZA, "target": target}
    clone.write_config(config)
    return clone, config


def clone_rows(clone: ProjectCopy, name: str) -> tuple[set[int], int]:
    """The load's ids on a clone's node, and the node's timeline."""
    password = clone.run("stack", "output", "superuserPassword", "--show-secrets").stdout.strip()
    with psycopg.connect(host=f"10.77.0.{10 + int(name[2:])}", port=5432, user="postgres", dbname="postgres",
                         password=password, connect_timeout=5) as conn:
        rows = {r[0] for r in conn.execute("SELECT id FROM pgha_load").fetchall()}
        timeline = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
    assert timeline is not None
    return rows, int(timeline[0])


def deploy_backups(lab: Lab, base: Path, stack: str, **extra: Any) -> Backups:
    """`up` of pg1..pg3 + HAProxy pg4 + the repository host with pgha:backup (BACKUP), and any
    other pgha keys in `extra`; the write load through HAProxy made, not started."""
    link_wheelhouse(lab)
    project = ProjectCopy.with_stack(base, stack)
    config = copy.deepcopy(project.base_config)
    config["hosts"].append(host(REPO, ["backup"]))
    config["backup"] = copy.deepcopy(BACKUP)
    config.update(extra)
    project.write_config(config)
    started = time.monotonic()
    project.run("up", "--yes", "--skip-preview")
    password = project.run("stack", "output", "superuserPassword", "--show-secrets").stdout.strip()
    return Backups(lab=lab, project=project, config=config, password=password,
                   load=WriteLoad("10.77.0.14", 5000, password), marks={"up_started": started})


@pytest.fixture(scope="module")
def bk(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Backups]:
    lab = Lab.up(8)
    clone: ProjectCopy | None = None
    try:
        state = deploy_backups(lab, tmp_path_factory.mktemp("backup"), "backup")
        state.timed("pulumi up (3 nodes + HAProxy + repository host, archiving from the start)",
                    state.marks["up_started"])
        yield state
        state.load.stop()
        print("\ntimings:\n" + "\n".join(f"  {k}: {v:.1f}s" for k, v in state.timings.items()))
        clone = state.clone
        if clone is not None:
            clone.run("destroy", "--yes", "--skip-preview", check=False)
        state.project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_archiving_works_from_the_first_up(bk: Backups) -> None:
    """`pgbackrest check` (a WAL switch archived through archive_command) and `info` pass
    right after the first `up`; the timers are scheduled; the stack output says so."""
    bk.repo(f"pgbackrest --stanza={STANZA} check")
    info = bk.info()
    assert info["status"]["code"] in (0, 2), info["status"]  # 2: no backup yet
    assert info["archive"] and info["archive"][0]["min"], info
    timers = bk.lab.ssh(REPO, "systemctl list-timers --all --no-pager 'pgha-backup-*'", check=True).stdout
    assert f"pgha-backup-{STANZA}-full.timer" in timers and f"pgha-backup-{STANZA}-diff.timer" in timers
    status = bk.outputs()["backup"]
    assert status["stanza"] == STANZA and status["repository"] == f"{REPO}:/var/lib/pgbackrest"
    assert status["archive"]["healthy"] is True, status
    assert status.get("last_full") is None and status["backups"] == 0
    # No secret on a node: the cipher passphrase is only in the repository host's 0600 file.
    files = bk.lab.ssh(REPO, f"sudo stat -c '%a %U %n' /etc/pgbackrest/conf.d/{STANZA}.conf "
                             f"/etc/pgbackrest/conf.d/{STANZA}-cipher.conf", check=True).stdout.split("\n")
    assert files[0].startswith("640 root") and files[1].startswith("600 pgbackrest"), files
    passphrase = bk.lab.ssh(REPO, "sudo sed -n 's/^repo1-cipher-pass=//p' "
                                  f"/etc/pgbackrest/conf.d/{STANZA}-cipher.conf", check=True).stdout.strip()
    assert len(passphrase) >= 24
    bk.marks["passphrase"] = passphrase
    for name in ("pg1", "pg2", "pg3"):
        node_conf = bk.lab.ssh(name, "sudo cat /etc/pgbackrest/pgbackrest.conf", check=True).stdout
        assert "repo1-cipher" not in node_conf and "repo1-host=10.77.0.15" in node_conf
        # The pattern on stdin: on a command line, sudo would log it to the journal.
        found = bk.lab.ssh(name, "sudo grep -rlF -f /dev/stdin /etc /var/lib/postgresql /var/log "
                                 "/var/spool/pgbackrest", check=False, input=passphrase + "\n")
        assert found.stdout.strip() == "", found.stdout


def test_backups_under_load_across_a_switchover(bk: Backups) -> None:
    """Full backup (the documented command), switchover, differential backup, a timestamp:
    the archive has no gap across the timeline change."""
    bk.load.prepare()
    bk.load.start()
    time.sleep(5)

    started = time.monotonic()
    seen: list[str] = []
    done = threading.Event()

    def watch_ps() -> None:  # the passphrase must never be on a command line while backups run
        while not done.is_set():
            for name in (REPO, "pg1", "pg2", "pg3"):
                seen.append(bk.lab.ssh(name, "ps -eo args", check=False).stdout)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_ps, daemon=True)
    watcher.start()
    out = bk.lab.ssh(REPO, f"sudo systemctl start pgha-backup-{STANZA}-full.service", check=False,
                     timeout=900)
    done.set()
    watcher.join()
    assert any("pgbackrest" in snapshot and "backup" in snapshot for snapshot in seen)
    assert not any(bk.marks["passphrase"] in snapshot for snapshot in seen)
    assert out.returncode == 0, out.stderr + bk.lab.ssh(
        REPO, f"sudo journalctl -u pgha-backup-{STANZA}-full --no-pager -n 40", check=False).stdout
    bk.timed("full backup (systemctl start pgha-backup-pgha-lab-full, from a standby)", started)
    journal = bk.lab.ssh(REPO, f"sudo journalctl -u pgha-backup-{STANZA}-full --no-pager -o cat",
                         check=False).stdout
    standby = [line for line in journal.splitlines() if "on the standby" in line]
    assert standby, journal[-2000:]  # "wait for replay on the standby to reach ..."
    print(f"  {standby[0].strip()}")
    full = [b for b in bk.info()["backup"] if b["type"] == "full"]
    assert len(full) == 1, full

    time.sleep(3)
    before = leader_of("10.77.0.11")
    target = next(n for n, m in members("10.77.0.11").items() if m["role"] != "leader"
                  and m["state"] == "streaming")
    started = time.monotonic()
    bk.lab.ssh(before, f"sudo patronictl -c /etc/patroni/patroni.yml switchover --leader {before} "
                       f"--candidate {target} --force", check=True, timeout=120)
    wait_until(lambda: leader_of("10.77.0.11") == target, timeout=60, what=f"{target} leading")
    bk.timed(f"switchover {before} -> {target} (patronictl)", started)
    time.sleep(5)

    started = time.monotonic()
    out = bk.lab.ssh(REPO, f"sudo systemctl start pgha-backup-{STANZA}-diff.service", check=False,
                     timeout=900)
    assert out.returncode == 0, out.stderr
    bk.timed("differential backup after the switchover", started)
    time.sleep(3)

    stamp, before_t = stamp_between_writes(bk)
    time.sleep(6)
    bk.load.stop()
    with bk.primary(autocommit=True) as conn:
        after_t = {r[0] for r in conn.execute("SELECT id FROM pgha_load").fetchall()}
    assert after_t > before_t
    bk.marks.update(stamp=stamp, before=before_t, after=after_t, switched_to=target)
    print(f"\ntimestamp {stamp}: {len(before_t)} rows before, {len(after_t) - len(before_t)} after; "
          f"{len(bk.load.failures)} failed writes during the switchover")
    assert bk.load.missing() == []

    # Archive the segment holding the writes after the timestamp (the PITR replays up to them).
    bk.repo(f"pgbackrest --stanza={STANZA} check")
    started = time.monotonic()
    text = verify_clean(bk)
    bk.timed("pgbackrest verify", started)
    print("  " + "\n  ".join(line for line in text.splitlines() if "INFO" in line or "WARN" in line))
    info = bk.info()
    print(f"archive: {json.dumps(info['archive'])}")
    timelines = {b["archive"]["start"][:8] for b in info["backup"]}
    assert timelines == {"00000001", "00000002"}, info["backup"]  # full on 1, diff on 2 (the new primary)
    # Every segment from the first backup's start to the newest is in the archive, across both timelines.
    listing = bk.repo(f"sh -c 'ls /var/lib/pgbackrest/archive/{STANZA}/*/*/'").split()
    segments = sorted(name[:24] for name in listing if re.fullmatch(r"[0-9A-F]{24}-.*", name))
    numbers = sorted({int(s[8:], 16) for s in segments})
    first = int(info["backup"][0]["archive"]["start"][8:], 16)
    assert [n for n in range(first, numbers[-1] + 1) if n not in numbers] == [], segments

    bk.project.run("refresh", "--run-program", "--yes")
    backup = bk.outputs()["backup"]
    assert backup["last_full"]["label"].endswith("F") and backup["last_diff"]["label"].endswith("D"), backup
    assert backup["archive"]["healthy"] is True, backup
    print(f"backup output: {json.dumps(backup, indent=1)}")


def test_a_new_replica_is_made_from_the_repository(bk: Backups) -> None:
    config = copy.deepcopy(bk.config)
    config["hosts"].append(host("pg6", ["patroni"]))
    bk.project.write_config(config)
    steps = bk.project.preview_changes()
    assert "pgha-lab-backup-node-pg6" in steps.get("create", {}), steps
    started = time.monotonic()
    bk.project.run("up", "--yes", "--skip-preview")
    bk.timed("pulumi up adding pg6 (replica restored from the repository)", started)
    bk.config = config
    journal = patroni_journal(bk.lab, "pg6")
    assert "replica has been created using pgbackrest" in journal, journal[-3000:]
    assert members("10.77.0.11")["pg6"]["state"] == "streaming"
    print("\npg6 patroni journal: " + next(line for line in journal.splitlines()
                                          if "replica has been created using pgbackrest" in line))


def test_point_in_time_recovery_into_a_clone(bk: Backups, tmp_path_factory: pytest.TempPathFactory) -> None:
    stamp = bk.marks["stamp"]
    source_before = bk.repo(f"sh -c 'ls -R /var/lib/pgbackrest/archive/{STANZA}'")
    clone, config = clone_stack(tmp_path_factory.mktemp("clone"), "clone", CLONE, ["pg7", "pg8"],
                                {"time": stamp})
    bk.clone = clone

    preview = clone.run("preview", "--diff").stdout
    shown = stamp.replace("+00", "").rstrip("0").rstrip(".") + "+00"  # pgha writes .5331, not .533100
    plan = (f"restore from stanza {STANZA} on {REPO} to time {shown}, promote, then archive into "
            f"stanza {CLONE}")
    assert re.search(rf'\n\s+plan\s+: "{re.escape(plan)}"\n', preview), preview[-4000:]
    print(f"\npreview: + pgha:BackupRestore {CLONE}-restore create, plan: {plan!r}")

    started = time.monotonic()
    clone.run("up", "--yes", "--skip-preview")
    bk.timed("pulumi up of the clone (PITR restore on pg7, replica pg8)", started)

    view = members("10.77.0.17")
    leaders = [n for n, m in view.items() if m["role"] == "leader"]
    replicas = [n for n in view if n not in leaders]
    assert len(leaders) == 1 and replicas and all(view[n]["state"] == "streaming" for n in replicas), view
    rows, timeline = clone_rows(clone, leaders[0])
    assert rows == bk.marks["before"], (len(rows), len(bk.marks["before"]),
                                        sorted(rows ^ bk.marks["before"])[:10])
    print(f"clone: {len(rows)} rows, exactly those committed before {stamp}; timeline {timeline}")
    assert "replica has been created" in patroni_journal(bk.lab, replicas[0])

    # The clone archives into its own stanza, on its new timeline; the source's archive is as it was.
    bk.repo(f"pgbackrest --stanza={CLONE} check")
    clone_info = bk.info(CLONE)
    assert clone_info["archive"], clone_info
    new_tl = f"{timeline:08X}"
    clone_files = bk.repo(f"sh -c 'ls -R /var/lib/pgbackrest/archive/{CLONE}'")
    assert f"{new_tl}.history" in clone_files, clone_files
    source_after = bk.repo(f"sh -c 'ls -R /var/lib/pgbackrest/archive/{STANZA}'")
    assert f"{new_tl}.history" not in source_after
    assert set(source_before.split()) <= set(source_after.split())
    status = bk.outputs(clone)["backup"]
    assert status["stanza"] == CLONE and status["archive"]["healthy"] is True, status

    # A restore happens once: changing the target afterwards is refused at preview.
    config["restore"]["target"] = "latest"
    clone.write_config(config)
    refused = clone.run("preview", check=False)
    assert refused.returncode != 0
    assert "pgha:restore cannot change for a cluster that exists" in refused.stdout + refused.stderr
    config["restore"]["target"] = {"time": stamp}
    clone.write_config(config)


def test_refresh_shows_a_failing_archive_command_as_drift(bk: Backups) -> None:
    leader = leader_of("10.77.0.11")
    # Break archiving on the leader: pgBackRest now logs in to the repository as a user that
    # does not exist.
    bk.lab.ssh(leader, "sudo sed -i 's/^repo1-host-user=pgbackrest/repo1-host-user=nobody/' "
                       "/etc/pgbackrest/pgbackrest.conf", check=True)
    with bk.primary(autocommit=True) as conn:
        conn.execute("INSERT INTO pgha_load (id) SELECT coalesce(max(id), 0) + 1 FROM pgha_load")
        conn.execute("SELECT pg_switch_wal()")

    def failing() -> bool:
        with bk.primary(autocommit=True) as conn:
            row = conn.execute("SELECT last_failed_time > coalesce(last_archived_time, 'epoch') "
                               "FROM pg_stat_archiver").fetchone()
        return bool(row and row[0])

    wait_until(failing, timeout=90, what="the leader's archive_command failing")
    started = time.monotonic()
    bk.project.run("refresh", "--run-program", "--yes")
    bk.timed("pulumi refresh (archive_command failing)", started)
    steps = bk.project.preview_changes()
    assert "pgha-lab-backup-stanza" in steps.get("update", {}), steps
    assert f"pgha-lab-backup-node-{leader}" in steps.get("update", {}), steps
    assert bk.outputs()["backup"]["archive"]["healthy"] is False
    started = time.monotonic()
    bk.project.run("up", "--yes", "--skip-preview")
    bk.timed("pulumi up repairing archiving", started)
    assert bk.outputs()["backup"]["archive"]["healthy"] is True
    assert bk.project.preview_changes() == {}


def _archiver(bk: Backups) -> dict[str, Any]:
    with bk.primary(autocommit=True) as conn:
        row = conn.execute("SELECT failed_count, last_failed_time > coalesce(last_archived_time, 'epoch'), "
                           "last_archived_wal FROM pg_stat_archiver").fetchone()
    assert row is not None
    return {"failed_count": row[0], "failing": bool(row[1]), "last_archived_wal": row[2]}


def _ready_segments(bk: Backups, leader: str) -> int:
    """WAL segments the leader keeps because they are not archived yet."""
    out = bk.lab.ssh(leader, "sudo find /var/lib/postgresql/15/pgha-lab/pg_wal/archive_status "
                             "-name '*.ready' | wc -l", check=False).stdout.strip()
    return int(out or 0)


def test_repository_host_down_loses_nothing(bk: Backups) -> None:
    """The repository host down for a while under write load: writes go on, the leader keeps
    its WAL, a refresh shows the failure (and completes), and once the host is back archiving
    catches up with no gap; nothing acknowledged is lost."""
    leader = leader_of("10.77.0.11")
    bk.load.prepare()  # ids go on after the rows earlier tests inserted
    bk.load.reset_counters()
    bk.load.start()
    bk.lab.crash(REPO)
    try:
        _while_the_repository_is_down(bk, leader)
    finally:
        bk.lab.start(REPO)
    down = time.monotonic()
    wait_until(lambda: not _archiver(bk)["failing"] and _ready_segments(bk, leader) == 0, timeout=180,
               what="archiving caught up (no .ready segment left on the leader)")
    bk.timed("repository host back: archiving caught up", down)
    # The timers are Persistent: a scheduled backup missed while the host was down starts when it
    # is back. Its end is awaited, and the count kept for the destroy test.
    wait_until(lambda: not bk.lab.ssh(REPO, "systemctl list-units --no-legend --state=activating,active "
                                            "'pgha-backup-*.service'", check=False).stdout.strip(),
               timeout=600, what="any catch-up backup on the repository host to end")
    bk.marks["backups"] = len(bk.info().get("backup") or [])
    print(f"  {bk.marks['backups']} backups in the repository after the host came back")
    bk.load.stop()
    assert bk.load.missing() == []
    bk.repo(f"pgbackrest --stanza={STANZA} check")
    verify_clean(bk)

    bk.project.run("refresh", "--run-program", "--yes")
    status = bk.outputs()["backup"]
    assert status["archive"]["healthy"] is True and not status["repository_status"].startswith("unreachable")
    assert bk.project.preview_changes() == {}


def _while_the_repository_is_down(bk: Backups, leader: str) -> None:
    for _ in range(4):  # a few segments to archive while the repository is away
        time.sleep(2)
        with bk.primary(autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
    wait_until(lambda: _archiver(bk)["failing"], timeout=60, what="archive_command failing on the leader")
    kept = _ready_segments(bk, leader)
    assert kept >= 1, "the leader kept no WAL for the archive"

    started = time.monotonic()
    bk.project.run("refresh", "--run-program", "--yes")
    bk.timed("pulumi refresh with the repository host down", started)
    status = bk.outputs()["backup"]
    assert status["repository_status"].startswith("unreachable: 10.77.0.15"), status
    assert status["archive"]["healthy"] is False and status["archive"]["failed_count"] > 0, status
    assert "pgha-lab-backup-stanza" in bk.project.preview_changes().get("update", {})
    assert bk.load.failures == [], bk.load.failures[:3]  # archiving failing does not stop writes
    print(f"  {kept} WAL segment(s) kept on {leader} while the repository host was down")


def test_destroy_keeps_the_repository(bk: Backups) -> None:
    """Destroying both stacks removes the timers, the nodes' pgBackRest files and the stacks'
    key lines; the backups and each stanza's repository settings stay, restorable."""
    assert bk.clone is not None
    started = time.monotonic()
    bk.clone.run("destroy", "--yes", "--skip-preview")
    bk.project.run("destroy", "--yes", "--skip-preview")
    bk.timed("pulumi destroy of the clone and the source stacks", started)
    units = bk.lab.ssh(REPO, "ls /etc/systemd/system/ /usr/local/sbin/ | grep pgha-backup",
                       check=False).stdout
    assert units == "", units
    keys = bk.lab.ssh(REPO, "sudo cat /home/pgbackrest/.ssh/authorized_keys "
                            "/home/pgbackrest/.ssh/known_hosts", check=True).stdout
    assert "pgha-backup:" not in keys, keys
    for name in ("pg1", "pg7"):
        gone = bk.lab.ssh(name, "sudo test -e /etc/pgbackrest/pgbackrest.conf", check=False)
        assert gone.returncode != 0, f"{name} still has /etc/pgbackrest/pgbackrest.conf"
    for stanza, backups in ((STANZA, bk.marks.get("backups", 2)), (CLONE, 0)):
        conf = bk.lab.ssh(REPO, f"sudo cat /etc/pgbackrest/conf.d/{stanza}.conf", check=True).stdout
        assert "pg1-host" not in conf and "repo1-path=/var/lib/pgbackrest" in conf, conf
        info = bk.info(stanza)
        assert len(info.get("backup") or []) == backups and info["archive"], info


def test_backup_added_to_a_running_cluster(bk: Backups, tmp_path_factory: pytest.TempPathFactory) -> None:
    """pgha:backup added to a cluster that runs without it: one `up` configures the hosts,
    rolls the restart archive_mode needs, creates the stanza and checks archiving."""
    late = ProjectCopy.with_stack(tmp_path_factory.mktemp("late"), "late")
    config = copy.deepcopy(late.base_config)
    config["scope"] = "pgha-late"
    config["hosts"] = [host("pg7", ["etcd", "patroni"]), host("pg8", ["etcd", "patroni"])]
    late.write_config(config)
    late.run("up", "--yes", "--skip-preview")
    try:
        config["hosts"].append(host(REPO, ["backup"]))
        config["backup"] = {"schedule": {"full": "daily"}}
        late.write_config(config)
        steps = late.preview_changes()
        changed = steps["update"]["pgha-late-dynamic-config"]
        assert changed == ["parameters_reload", "parameters_restart"], steps
        assert set(steps["update"]) >= {"pgha-late-node-pg7", "pgha-late-node-pg8"}, steps
        assert {"pgha-late-backup-stanza", "pgha-late-backup-repository"} <= set(steps["create"]), steps
        started = time.monotonic()
        late.run("up", "--yes", "--skip-preview")
        bk.timed("pulumi up adding pgha:backup to a running 2-node cluster (rolling restart)", started)
        bk.repo("pgbackrest --stanza=pgha-late check")
        view = members("10.77.0.17")
        assert not any(m.get("pending_restart") for m in view.values()), view
        status = bk.outputs(late)["backup"]
        assert status["stanza"] == "pgha-late" and status["archive"]["healthy"] is True, status
        assert late.preview_changes() == {}
    finally:
        late.run("destroy", "--yes", "--skip-preview", check=False)

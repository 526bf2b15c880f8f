"""Backups across a leader crash, and point-in-time recovery across the timeline switch (issue #13).

pg1..pg3 run the cluster (synchronous mode: with a crash, an acknowledged commit is kept only if
a standby had it), pg4 HAProxy, pg5 the repository host; pg6 and pg7 each run a one-node clone.
Under a write load through HAProxy whose acknowledged ids are recorded: a full backup (the
documented command), more writes, the leader's power cut (`lab.crash`), the failover, writes on
the new leader's timeline, a timestamp T, a differential backup, the crashed host back and
rejoined. Then: `pgbackrest check` on the new leader, `verify` clean, every WAL segment on the
path from the full backup (old timeline) to the end (new timeline) archived, the history file
archived; a clone restored to T from the full backup taken before the crash (exactly the rows
committed before T), a second clone restored to the latest WAL (every acknowledged row), each on
a timeline of its own in its own stanza, the source's archive left as it was; destroy.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab
from lab import hosts as lab_hosts
from tests.cluster.conftest import NODES, ProjectCopy, wait_until
from tests.cluster.test_backup import (
    CLONE,
    REPO,
    STANZA,
    Backups,
    clone_rows,
    clone_stack,
    deploy_backups,
    members,
    patroni_journal,
    stamp_between_writes,
    verify_clean,
)
from tests.cluster.test_failures import leader_of, sync_ready

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]

LATEST = "pgha-latest"  # the second clone's scope and stanza
DATA = f"/var/lib/postgresql/15/{STANZA}"
SEGMENT = 16 * 1024 * 1024
# <timeline><log><segment>[.partial]-<sha1>[.gz|.zst|...]: a WAL file in a pgBackRest archive.
WAL_NAME = re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?-[0-9a-f]{40}(\.[a-z0-9]+)?")


def segment_number(name: str) -> int:
    """A WAL file name's segment number (16 MB segments), its timeline left out."""
    return int(name[8:16], 16) * (0x100000000 // SEGMENT) + int(name[16:24], 16)


def lsn_segment(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return ((int(high, 16) << 32) + int(low, 16)) // SEGMENT


def archived_segments(bk: Backups, stanza: str = STANZA) -> dict[int, set[int]]:
    """The complete WAL segments in a stanza's archive: {timeline: {segment number}} (no .partial)."""
    listing = bk.repo(f"sh -c 'ls /var/lib/pgbackrest/archive/{stanza}/*/*/'").split()
    found: dict[int, set[int]] = {}
    for name in listing:
        match = WAL_NAME.fullmatch(name)
        if match and not match.group(4):
            found.setdefault(int(match.group(1), 16), set()).add(segment_number(name))
    return found


def not_archived_at_crash(lab: Lab, name: str) -> list[str]:
    """Segments the crashed host's PostgreSQL had finished but not archived (`.ready`), read
    from its disk while it is down."""
    status = lab_hosts.host_dir(lab.state_dir, name).merged / DATA.lstrip("/") / "pg_wal" / "archive_status"
    return sorted(p.name.removesuffix(".ready") for p in status.glob("*.ready"))


def restore_clone(cr: Backups, tmp_path_factory: pytest.TempPathFactory, scope: str, name: str,
                  target: Any, backup: str) -> tuple[ProjectCopy, set[int], int]:
    """`up` of a one-node clone stack restored to `target`, from the backup set `backup` (the one
    its BackupRestore chose): (the stack, the load's ids on the clone, its timeline)."""
    clone, _ = clone_stack(tmp_path_factory.mktemp(scope), scope, scope, [name], target)
    cr.marks["clones"].append(clone)
    started = time.monotonic()
    clone.run("up", "--yes", "--skip-preview")
    cr.timed(f"pulumi up of the clone {scope} on {name} restored to {target}", started)
    state = json.loads(clone.run("stack", "export").stdout)
    chosen = next(r["outputs"]["backup_set"] for r in state["deployment"]["resources"]
                  if r["type"].endswith("pgha:BackupRestore"))
    assert chosen == backup, (chosen, backup)
    rows, timeline = clone_rows(clone, name)
    return clone, rows, timeline


@pytest.fixture(scope="module")
def cr(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Backups]:
    lab = Lab.up(7)
    try:
        state = deploy_backups(lab, tmp_path_factory.mktemp("crash"), "crash", dcs={"synchronousMode": True})
        state.marks["clones"] = []
        state.timed("pulumi up (3 nodes, synchronous mode, + HAProxy + repository host)",
                    state.marks["up_started"])
        yield state
        state.load.stop()
        print("\ntimings:\n" + "\n".join(f"  {k}: {v:.1f}s" for k, v in state.timings.items()))
        if not state.marks.get("destroyed"):
            for clone in state.marks["clones"]:
                clone.run("destroy", "--yes", "--skip-preview", check=False)
            state.project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_full_backup_then_the_leader_crashes(cr: Backups) -> None:
    """Full backup on timeline 1 under load, the leader's power cut, a failover to the
    synchronous standby, writes on the new timeline, T, a differential backup."""
    cr.load.prepare()
    cr.load.start()
    time.sleep(3)
    cr.backup("full")
    full = [b for b in cr.info()["backup"] if b["type"] == "full"]
    assert len(full) == 1 and full[0]["archive"]["start"].startswith("00000001"), full
    for _ in range(2):  # more writes on timeline 1 after the full backup, over more than one segment
        time.sleep(2)
        with cr.primary(autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
    time.sleep(2)

    wait_until(sync_ready, timeout=120, what="a leader and a streaming synchronous standby")
    leader = leader_of(list(NODES))
    assert leader
    old_tl = int(members(NODES[leader])[leader]["timeline"])
    survivors = [n for n in NODES if n != leader]
    acknowledged_before_crash = len(cr.load.acknowledged)
    cr.load.reset_counters()
    crashed_at = time.monotonic()
    cr.lab.crash(leader)
    # Failover: a survivor is leader on the next timeline (Patroni's /cluster), then writes go
    # through HAProxy again (a failed write followed by an acknowledged one).
    new_leader = wait_until(
        lambda: next((n for n, m in members(NODES[survivors[0]]).items() if n != leader
                      and m["role"] == "leader" and int(m.get("timeline", 0)) > old_tl), None),
        timeout=120, what=f"a survivor of {leader}'s crash leading on a timeline after {old_tl}")
    elected = time.monotonic() - crashed_at
    wait_until(lambda: cr.load.windows, timeout=60, what="writes acknowledged again through HAProxy")
    new_tl = int(members(NODES[new_leader])[new_leader]["timeline"])
    unarchived = not_archived_at_crash(cr.lab, leader)
    print(f"\nleader crash: {leader} (timeline {old_tl}) -> {new_leader} (timeline {new_tl}) after "
          f"{elected:.1f}s; writes unavailable {cr.load.longest_window():.1f}s; segments finished "
          f"but not archived on {leader} at the crash: {unarchived or 'none'}")
    cr.timed(f"failover after the crash of {leader} (new leader elected)", crashed_at)
    assert cr.load.missing() == [], "an acknowledged commit was lost in the failover"

    time.sleep(4)  # writes on the new timeline before T
    stamp, before = stamp_between_writes(cr)
    after_crash = [i for i in before if i > cr.load.acknowledged[acknowledged_before_crash - 1]]
    assert len(after_crash) >= 10, f"only {len(after_crash)} rows committed between the failover and T"
    time.sleep(4)  # writes after T

    started = time.monotonic()
    out = cr.lab.ssh(REPO, f"sudo systemctl start pgha-backup-{STANZA}-diff.service", check=False,
                     timeout=900)
    assert out.returncode == 0, out.stderr
    cr.timed("differential backup after the crash", started)
    journal = cr.lab.ssh(REPO, f"sudo journalctl -u pgha-backup-{STANZA}-diff --no-pager -o cat",
                         check=False).stdout
    # pgBackRest's warnings (on stderr, without the P00 prefix): a timeline switch since the full
    # backup (delta checksum of every file), the crashed host unreachable.
    print("  " + "\n  ".join(line.strip()[:200] for line in journal.splitlines()
                             if re.search(r"P00 .*command (begin|end)|WARN|HINT", line)))
    diff = [b for b in cr.info()["backup"] if b["type"] == "diff"]
    assert len(diff) == 1 and diff[0]["archive"]["start"].startswith(f"{new_tl:08X}"), diff
    assert diff[0]["prior"] == full[0]["label"], diff
    cr.marks.update(crashed=leader, leader=new_leader, old_tl=old_tl, new_tl=new_tl, stamp=stamp,
                    before=before, full=full[0]["label"], diff=diff[0]["label"], unarchived=unarchived)
    print(f"T = {stamp}: {len(before)} rows committed before it ({len(after_crash)} of them on timeline "
          f"{new_tl}); full {full[0]['label']}, diff {diff[0]['label']}")


def test_the_crashed_host_rejoins(cr: Backups) -> None:
    crashed, leader = cr.marks["crashed"], cr.marks["leader"]
    started = time.monotonic()
    cr.lab.start(crashed)

    def rejoined() -> bool:
        member = members(NODES[leader]).get(crashed, {})
        return member.get("state") == "streaming" and int(member.get("timeline", 0)) == cr.marks["new_tl"]

    wait_until(rejoined, timeout=240, what=f"{crashed} streaming on timeline {cr.marks['new_tl']}")
    cr.timed(f"{crashed} back and streaming (host boot included)", started)
    journal = patroni_journal(cr.lab, crashed)
    how = [line for line in journal.splitlines()
           if re.search(r"pg_rewind|rewind|reinitializ|crash recovery", line, re.I)]
    print(f"\n{crashed} rejoined; Patroni said:\n  " + "\n  ".join(how[-6:] or ["(no rewind or reinit)"]))
    assert leader_of(list(NODES)) == leader


def test_archive_is_complete_across_the_crash(cr: Backups) -> None:
    """check on the new leader, verify clean, the history file archived, and every segment
    recovery needs, from the full backup's start on the old timeline to the newest on the
    new one."""
    cr.load.stop()
    assert cr.load.missing() == []
    with cr.primary(autocommit=True) as conn:
        cr.marks["all"] = {r[0] for r in conn.execute("SELECT id FROM pgha_load").fetchall()}
    assert set(cr.load.acknowledged) <= cr.marks["all"]
    leader, old_tl, new_tl = cr.marks["leader"], cr.marks["old_tl"], cr.marks["new_tl"]
    # On the new leader (as the documented check runs on a database host): a WAL switch archived.
    out = cr.lab.ssh(leader, f"cd / && sudo -u postgres pgbackrest --stanza={STANZA} check", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    cr.repo(f"pgbackrest --stanza={STANZA} check")
    started = time.monotonic()
    text = verify_clean(cr)
    cr.timed("pgbackrest verify", started)
    print("\n  " + "\n  ".join(line for line in text.splitlines() if "INFO" in line or "WARN" in line))

    history = cr.lab.ssh(leader, f"sudo cat {DATA}/pg_wal/{new_tl:08X}.history", check=True).stdout
    switch = next(line.split()[1] for line in history.splitlines()
                  if line.split() and line.split()[0] == str(old_tl))
    listing = cr.repo(f"sh -c 'ls -R /var/lib/pgbackrest/archive/{STANZA}'")
    assert f"{new_tl:08X}.history" in listing.split(), listing

    info = cr.info()
    print(f"archive: {json.dumps(info['archive'])}; timeline {old_tl} ends at {switch}")
    segments = archived_segments(cr)
    full = next(b for b in info["backup"] if b["label"] == cr.marks["full"])
    first, fork = segment_number(full["archive"]["start"]), lsn_segment(switch)
    last = max(segments[new_tl])
    assert fork - first >= 2, (first, fork)  # the full backup and the crash a few segments apart
    assert max(segment_number(a["max"]) for a in info["archive"]) == last, (info["archive"], last)
    # Recovery from the full backup reads timeline 1 up to the segment holding the switch, then
    # timeline 2 from that segment on (it starts with a copy of timeline 1's part).
    missing = [f"{old_tl:08X}:{n:X}" for n in range(first, fork) if n not in segments.get(old_tl, set())]
    missing += [f"{new_tl:08X}:{n:X}" for n in range(fork, last + 1) if n not in segments[new_tl]]
    lost = [s for s in cr.marks["unarchived"] if int(s[:8], 16) == old_tl and segment_number(s) < fork]
    assert missing == [], (f"WAL gap: {missing}; finished but unarchived on {cr.marks['crashed']} at the "
                           f"crash: {lost}")
    print(f"  segments {first:X}..{fork - 1:X} on timeline {old_tl}, {fork:X}..{last:X} on timeline "
          f"{new_tl}: all archived")


def test_pitr_to_a_time_after_the_crash_from_the_backup_before_it(
        cr: Backups, tmp_path_factory: pytest.TempPathFactory) -> None:
    """T lies on the new timeline; the only backup that ended before it is the full one, on the
    old timeline: the clone replays timeline 1, follows the history file onto timeline 2, stops
    at T and promotes onto a timeline of its own."""
    source_before = set(cr.repo(f"sh -c 'ls -R /var/lib/pgbackrest/archive/{STANZA}'").split())
    clone, rows, timeline = restore_clone(cr, tmp_path_factory, CLONE, "pg6", {"time": cr.marks["stamp"]},
                                          cr.marks["full"])
    before = cr.marks["before"]
    assert rows == before, (len(rows), len(before), sorted(rows ^ before)[:10])
    assert timeline == cr.marks["new_tl"] + 1, timeline
    history = cr.lab.ssh("pg6", f"sudo cat /var/lib/postgresql/15/{CLONE}/pg_wal/{timeline:08X}.history",
                         check=True).stdout
    assert [line.split()[0] for line in history.splitlines() if line.strip()] == [
        str(cr.marks["old_tl"]), str(cr.marks["new_tl"])], history
    print(f"\nclone at T: {len(rows)} rows, exactly those committed before {cr.marks['stamp']}, from "
          f"{cr.marks['full']}; timeline {timeline}, history:\n  " + history.strip().replace("\n", "\n  "))

    cr.repo(f"pgbackrest --stanza={CLONE} check")
    assert f"{timeline:08X}.history" in cr.repo(f"sh -c 'ls -R /var/lib/pgbackrest/archive/{CLONE}'")
    source_after = set(cr.repo(f"sh -c 'ls -R /var/lib/pgbackrest/archive/{STANZA}'").split())
    assert source_before <= source_after
    added = source_after - source_before
    assert not [n for n in added if n.startswith(f"{timeline:08X}")], added
    assert cr.outputs(clone)["backup"]["archive"]["healthy"] is True


def test_latest_restore_has_every_acknowledged_row(cr: Backups,
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """The newest backup is the differential one taken on the new timeline (its full on the old
    one): restored and replayed to the end of the archive, it holds every acknowledged row."""
    _, rows, timeline = restore_clone(cr, tmp_path_factory, LATEST, "pg7", "latest", cr.marks["diff"])
    assert set(cr.load.acknowledged) <= rows
    assert rows == cr.marks["all"], (len(rows), len(cr.marks["all"]), sorted(rows ^ cr.marks["all"])[:10])
    assert timeline == cr.marks["new_tl"] + 1, timeline
    cr.repo(f"pgbackrest --stanza={LATEST} check")
    print(f"\nlatest clone: {len(rows)} rows ({len(cr.load.acknowledged)} acknowledged), from "
          f"{cr.marks['diff']}; timeline {timeline}")


def test_destroy_completes(cr: Backups) -> None:
    started = time.monotonic()
    for clone in cr.marks["clones"]:
        clone.run("destroy", "--yes", "--skip-preview")
    cr.project.run("destroy", "--yes", "--skip-preview")
    cr.marks["destroyed"] = True
    cr.timed("pulumi destroy of both clones and the source stack", started)
    for stanza in (STANZA, CLONE, LATEST):
        assert cr.info(stanza)["archive"], stanza  # the repository keeps every stanza's archive

"""Point-in-time recovery in place after total loss (issue #13), on real lab hosts.

pg1..pg3 run the cluster, pg4 HAProxy, pg5 the repository host. Under a write load through
HAProxy: a full backup (the documented command), a timestamp T with rows committed before and
after it. Then every database host is lost: pg1..pg3 lose power and come back re-imaged (a fresh
disk from the image, new SSH host keys: nothing of etcd, Patroni or PostgreSQL), and only the
repository host keeps anything of the cluster. The documented procedure (README, "Point-in-time
recovery in place"), each way on a lab of its own: pgha:restore from the surviving stanza to T
and a new pgha:backup.stanza set in the same stack and scope, then either `pulumi up --refresh`
of the dead stack, or `pulumi destroy` (which completes on the re-imaged hosts) and `up`; the
preview says a restore is what `up` will do. On the same hosts:
one leader, two streaming replicas, exactly the rows committed before T, archiving on a new
timeline into the new stanza (`pgbackrest check`), the old stanza's backups and archive as they
were.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from scripts.lab_stack import link_wheelhouse
from tests.cluster.conftest import NODES, wait_until
from tests.cluster.test_backup import (
    REPO,
    STANZA,
    Backups,
    deploy_backups,
    members,
    patroni_journal,
    stamp_between_writes,
    verify_clean,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

NEW_STANZA = "pgha-lab-2"  # where the restored cluster archives: pgha:restore needs a stanza of its own
DATA = f"/var/lib/postgresql/15/{STANZA}"  # the data directory (pgha:scope pgha-lab)
DB_HOSTS = list(NODES)  # pg1..pg3


def settled() -> dict[str, dict[str, object]] | None:
    """Patroni's view when one node leads and the two others stream from it."""
    try:
        view = members(NODES["pg1"])
    except (OSError, ValueError):
        return None
    leaders = [n for n, m in view.items() if m["role"] == "leader"]
    streaming = [n for n, m in view.items() if m["role"] != "leader" and m.get("state") == "streaming"]
    return view if set(view) == set(DB_HOSTS) and len(leaders) == 1 and len(streaming) == 2 else None


def repo_listing(bk: Backups, stanza: str) -> set[str]:
    """Every file of a stanza in the repository (backups and archive), with its size."""
    out = bk.repo(f"sh -c 'cd /var/lib/pgbackrest && find archive/{stanza} backup/{stanza} -type f "
                  "-printf \"%p %s\\n\"'")
    return set(out.splitlines())


@pytest.fixture(scope="module", params=["destroy", "refresh"])
def bk(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
       pulumi_bin: Path) -> Iterator[Backups]:
    """The two documented procedures, each on a lab of its own: `destroy` then `up`, or one
    `up --refresh` of the dead stack."""
    lab = Lab.up(5)
    try:
        state = deploy_backups(lab, tmp_path_factory.mktemp(f"inplace-{request.param}"), "inplace")
        state.marks["procedure"] = request.param
        state.timed("pulumi up (3 nodes + HAProxy + repository host)", state.marks["up_started"])
        yield state
        state.load.stop()
        print("\ntimings:\n" + "\n".join(f"  {k}: {v:.1f}s" for k, v in state.timings.items()))
        state.project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def test_full_backup_and_a_point_in_time(bk: Backups) -> None:
    bk.load.prepare()
    bk.load.start()
    time.sleep(3)
    bk.backup("full")
    full = [b for b in bk.info()["backup"] if b["type"] == "full"]
    assert len(full) == 1, full
    time.sleep(3)  # writes after the backup, before T
    stamp, before = stamp_between_writes(bk)
    time.sleep(3)  # writes after T
    bk.load.stop()
    assert bk.load.missing() == []
    with bk.primary(autocommit=True) as conn:
        every = {r[0] for r in conn.execute("SELECT id FROM pgha_load").fetchall()}
    after = every - before
    assert len(after) >= 10 and before < every, (len(before), len(every))
    # The WAL past T is in the archive (check switches WAL and waits for it to be archived).
    bk.repo(f"pgbackrest --stanza={STANZA} check")
    view = members(NODES["pg1"])
    assert [int(m["timeline"]) for m in view.values() if m["role"] == "leader"] == [1], view
    bk.marks.update(stamp=stamp, before=before, every=every, full=full[0]["label"])
    print(f"\nT = {stamp}: {len(before)} rows committed before it, {len(after)} after; "
          f"full {full[0]['label']}")


def test_total_loss_of_every_database_host(bk: Backups) -> None:
    started = time.monotonic()
    bk.lab.reimage(DB_HOSTS)
    link_wheelhouse(bk.lab)
    bk.timed("pg1..pg3 lose power and come back re-imaged", started)
    for name in DB_HOSTS:
        left = bk.lab.ssh(name, f"ls -d {DATA} /etc/patroni /var/lib/etcd/pgha-* "
                                "/etc/pgbackrest/pgbackrest.conf 2>/dev/null; systemctl is-active patroni",
                          check=False).stdout.split()
        assert left in (["inactive"], ["unknown"]), (name, left)  # nothing of the cluster left
    # Only the repository host remembers the cluster: its stanza, backups and archive.
    bk.marks["source_files"] = repo_listing(bk, STANZA)
    bk.marks["source_info"] = bk.info()
    assert [b["label"] for b in bk.marks["source_info"]["backup"]] == [bk.marks["full"]]


def test_destroy_of_the_dead_stack_completes(bk: Backups) -> None:
    if bk.marks["procedure"] != "destroy":
        pytest.skip("the other procedure keeps the dead stack's state: `up --refresh` rebuilds it")
    started = time.monotonic()
    out = bk.project.run("destroy", "--yes", "--skip-preview")
    bk.timed("pulumi destroy of the dead stack (re-imaged hosts)", started)
    state = json.loads(bk.project.run("stack", "export").stdout)
    assert not state["deployment"].get("resources"), "destroy left resources in the state"
    text = out.stdout + out.stderr
    print("\n  " + "\n  ".join(line.strip()[:160] for line in text.splitlines() if "skipped" in line)[:3000])
    # The repository host keeps the stanza's settings (detached), so its backups stay restorable.
    conf = bk.lab.ssh(REPO, f"sudo cat /etc/pgbackrest/conf.d/{STANZA}.conf", check=True).stdout
    assert "The stack was destroyed" in conf and f"[{STANZA}]" in conf, conf
    assert repo_listing(bk, STANZA) == bk.marks["source_files"]


def test_restore_in_place_to_the_point_in_time(bk: Backups) -> None:
    config = copy.deepcopy(bk.config)
    config["backup"] = {**config["backup"], "stanza": NEW_STANZA}
    config["restore"] = {"fromStanza": STANZA, "target": {"time": bk.marks["stamp"]}}
    bk.project.write_config(config)
    bk.config = config

    # The preview says that a restore is what `up` will do: the raw diff's plan line, and the
    # review summary's restore line.
    refresh = ("--refresh",) if bk.marks["procedure"] == "refresh" else ()
    preview = bk.project.run("preview", *refresh, "--diff").stdout
    shown = bk.marks["stamp"].replace("+00", "").rstrip("0").rstrip(".") + "+00"
    plan = (f"restore from stanza {STANZA} on {REPO} to time {shown}, promote, then archive into "
            f"stanza {NEW_STANZA}")
    assert re.search(rf'\n\s+plan\s+: "{re.escape(plan)}"\n', preview), preview[-4000:]
    bk.project.preview_changes()
    review = bk.project.last_review
    assert "(the new cluster is restored, not initdb)" in review, review[:4000]
    print("review: " + " / ".join(line.strip() for line in review.splitlines()
                                  if "restore" in line and ("bootstraps" in line or "restore check" in line)))
    print(f"\npreview: + pgha:BackupRestore pgha-lab-restore create, plan: {plan!r}")

    started = time.monotonic()
    out = bk.project.run("up", *refresh, "--yes", "--skip-preview")
    bk.timed(f"pulumi {' '.join(('up', *refresh))} restoring in place (pg1 restored to T, pg2 and pg3 "
             "replicas)", started)
    if refresh:  # the state still had the lost cluster: up says it rebuilds it by a restore
        said = out.stdout + out.stderr
        assert ("every node of cluster pgha-lab is gone: no data on pg1, pg2, pg3 and no member in the DCS. "
                "Bootstrapping a cluster restored from pgha:restore's backup on pg1") in said, said[-4000:]

    view = wait_until(settled, timeout=60, what="one leader and two streaming replicas on pg1..pg3")
    leader = next(n for n, m in view.items() if m["role"] == "leader")
    timeline = int(view[leader]["timeline"])
    assert timeline == 2, view
    assert "replica has been created" in patroni_journal(bk.lab, next(n for n in DB_HOSTS if n != leader))

    bk.password = bk.project.run("stack", "output", "superuserPassword", "--show-secrets").stdout.strip()
    with bk.primary(autocommit=True) as conn:
        rows = {r[0] for r in conn.execute("SELECT id FROM pgha_load").fetchall()}
    before = bk.marks["before"]
    assert rows == before, (len(rows), len(before), sorted(rows ^ before)[:10])
    print(f"restored in place on {leader} (timeline {timeline}): {len(rows)} rows, exactly those committed "
          f"before T ({len(bk.marks['every']) - len(rows)} rows after T not restored)")
    bk.marks.update(leader=leader, timeline=timeline)


def test_the_restored_cluster_archives_on_a_new_timeline(bk: Backups) -> None:
    timeline = bk.marks["timeline"]
    bk.repo(f"pgbackrest --stanza={NEW_STANZA} check")
    out = bk.lab.ssh(bk.marks["leader"], f"cd / && sudo -u postgres pgbackrest --stanza={NEW_STANZA} check",
                     check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    files = bk.repo(f"sh -c 'ls -R /var/lib/pgbackrest/archive/{NEW_STANZA}'").split()
    assert f"{timeline:08X}.history" in files, files
    assert any(f.startswith(f"{timeline:08X}") and not f.endswith(".history") for f in files), files
    status = bk.outputs()["backup"]
    assert status["stanza"] == NEW_STANZA and status["archive"]["healthy"] is True, status
    # A full backup of the restored cluster into its new stanza, by the same documented command.
    bk.backup("full", NEW_STANZA, " of the restored cluster")
    assert [b["type"] for b in bk.info(NEW_STANZA)["backup"]] == ["full"]

    # The old cluster's stanza: its backup and archive exactly as they were at the loss.
    assert repo_listing(bk, STANZA) == bk.marks["source_files"]
    info = bk.info()
    assert [b["label"] for b in info["backup"]] == [bk.marks["full"]]
    assert info["archive"] == bk.marks["source_info"]["archive"]
    verify_clean(bk, STANZA)

    # A restore happens once: changing the target afterwards is refused at preview.
    config = copy.deepcopy(bk.config)
    config["restore"]["target"] = "latest"
    bk.project.write_config(config)
    refused = bk.project.run("preview", check=False)
    assert refused.returncode != 0
    assert "pgha:restore cannot change for a cluster that exists" in refused.stdout + refused.stderr
    bk.project.write_config(bk.config)

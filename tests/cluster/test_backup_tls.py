"""pgha:tls with a repository host, on real lab hosts.

The repository host's backup script asks each node's Patroni (`/replica`, over https) whether it
is a healthy standby to take the backup from. With TLS, the host holds the cluster's CA (and, with
`restApiVerifyClient: required`, a client certificate of its own) in a 0700 directory of the
pgbackrest user, so the check passes and the backup comes from a standby, not the primary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from tests.cluster.test_backup import REPO, STANZA, Backups, deploy_backups

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def bk(tmp_path_factory: pytest.TempPathFactory, pulumi_bin: Path) -> Iterator[Backups]:
    lab = Lab.up(5)
    try:
        state = deploy_backups(lab, tmp_path_factory.mktemp("backup-tls"), "backuptls",
                               tls={"enabled": True, "restApiVerifyClient": "required"})
        yield state
        state.project.run("destroy", "--yes", "--skip-preview", check=False)
    finally:
        Lab.down()


def _from_a_standby(bk: Backups, kind: str) -> str:
    unit = f"pgha-backup-{STANZA}-{kind}"
    started = time.monotonic()
    out = bk.lab.ssh(REPO, f"sudo systemctl start {unit}.service", check=False, timeout=900)
    journal = bk.lab.ssh(REPO, f"sudo journalctl -u {unit} --no-pager -o cat", check=False).stdout
    assert out.returncode == 0, out.stderr + journal[-3000:]
    print(f"\n{kind} backup: {time.monotonic() - started:.1f}s")
    standby = [line for line in journal.splitlines() if "on the standby" in line]
    assert standby, journal[-3000:]  # "wait for replay on the standby to reach ..."
    return standby[0].strip()


def test_the_repository_hosts_files_are_its_users_alone(bk: Backups) -> None:
    d = "/etc/pgbackrest/pgha-tls"
    out = bk.lab.ssh(REPO, f"sudo stat -c '%a %U %n' {d} {d}/ca.crt {d}/client.crt {d}/client.key",
                     check=True).stdout.split("\n")
    modes = {line.split()[2]: line.split()[:2] for line in out if line.strip()}
    assert modes["/etc/pgbackrest/pgha-tls"] == ["700", "pgbackrest"], modes
    assert modes["/etc/pgbackrest/pgha-tls/client.key"] == ["600", "pgbackrest"], modes
    assert modes["/etc/pgbackrest/pgha-tls/ca.crt"] == ["644", "pgbackrest"], modes


def test_a_backup_is_taken_from_a_standby_over_https(bk: Backups) -> None:
    line = _from_a_standby(bk, "full")
    print(f"  {line}")
    info = bk.info()
    assert [b["type"] for b in info["backup"]] == ["full"], info["backup"]
    # Without its client certificate the same check is refused by Patroni (required).
    refused = bk.lab.ssh(REPO, "sudo -u pgbackrest curl -fs --cacert /etc/pgbackrest/pgha-tls/ca.crt "
                               "--max-time 3 -o /dev/null https://10.77.0.12:8008/replica; echo rc=$?",
                         check=False).stdout.strip()
    assert not refused.endswith("rc=0"), refused
    d = "/etc/pgbackrest/pgha-tls"
    shown = bk.lab.ssh(REPO, f"sudo -u pgbackrest curl -fs --cacert {d}/ca.crt --cert {d}/client.crt "
                             f"--key {d}/client.key --max-time 3 -o /dev/null -w '%{{http_code}}' "
                             "https://10.77.0.12:8008/replica", check=False).stdout.strip()
    assert shown == "200", shown
    bk.project.run("preview", "--expect-no-changes")

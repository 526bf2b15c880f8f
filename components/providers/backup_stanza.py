"""BackupStanza: the cluster's pgBackRest stanza, its scheduled backups, and their health.

Created once the cluster runs (after the dynamic configuration has archive_mode on):
`stanza-create` on the repository host (idempotent), then `pgbackrest check`, which forces
a WAL switch and waits for the segment to reach the repository through archive_command.
Then the systemd timers of pgha:backup.schedule on the repository host. `up` never takes
a backup itself: a backup is the timer's job or the documented manual command.

With the repository on the nodes' shared storage (layout "nodes"), the stanza's commands run
on the leader (found through Patroni's REST API) as postgres, and the timers are on every
node: the backup script runs the backup only where Patroni's /primary answers 200 and exits
0 elsewhere, so the schedule follows the leader through a failover.

Its `status` output (the `backup` stack output) is read on every `up` and `refresh`: the
last full and differential backups and their age, and WAL archiving from the leader's
pg_stat_archiver. A failing archive_command shows on `refresh` as drift
(`archiving_ok: false`), and the next `up` re-runs the stanza's checks.
"""

from __future__ import annotations

import json
import shlex
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any, ClassVar

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components import render
from components.providers.backup_hosts import on_nodes
from components.providers.base import HostProvider, public
from components.transport.rest import LEADER_ROLES, PatroniApi, RestError
from components.transport.ssh import Ssh, SshError, SshTarget, wait_for

SCRIPT_DIR = "/usr/local/sbin"
UNIT_DIR = "/etc/systemd/system"
KINDS = ("full", "diff")


def script_path(stanza: str) -> str:
    return f"{SCRIPT_DIR}/pgha-backup-{stanza}"


def unit_name(stanza: str, kind: str) -> str:
    return f"pgha-backup-{stanza}-{kind}"


def scheduled_timers(props: dict[str, Any]) -> list[str]:
    schedule = props.get("schedule") or {}
    return [f"{unit_name(props['stanza'], kind)}.timer" for kind in KINDS if schedule.get(kind)]


def backup_script(props: dict[str, Any], node: str | None) -> str:
    """/usr/local/sbin/pgha-backup-<stanza>: on the repository host (node None), a backup from a
    healthy standby if any; on a node (nodes layout), a backup only while this node leads."""
    tls = props.get("tls") or {}
    # pgha:tls: curl verifies the REST API against the CA, and shows a certificate when it has one
    # (a node's own; the repository host's when Patroni requires one on every request).
    curl_tls = "".join(f" --{opt} {shlex.quote(tls[key])}" for opt, key in (
        ("cacert", "ca_file"), ("cert", "cert_file"), ("key", "key_file")) if key in tls)
    context = {"scope": props["scope"], "stanza": props["stanza"], "repo_user": props["repo_user"],
               "curl_tls": curl_tls}
    if node is not None:
        primary_url = f"{props['nodes'][node]['api_url']}/primary"
        return render.render("pgbackrest-backup.sh.j2", primary_url=primary_url, replica_urls=[], **context)
    replica_urls = [f"{n['api_url']}/replica" for _, n in sorted(props["nodes"].items())]
    return render.render("pgbackrest-backup.sh.j2", replica_urls=replica_urls, **context)


def as_repo_user(props: dict[str, Any], command: str) -> str:
    """A pgbackrest command line run as the repository's user (from /, which it can read)."""
    return f"cd / && runuser -u {shlex.quote(props['repo_user'])} -- {command}"


def pgbackrest(props: dict[str, Any], args: str) -> str:
    return as_repo_user(props, f"pgbackrest --stanza={shlex.quote(props['stanza'])} {args}")


def human_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summarize_info(info: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """The stanza's backups and archive from `pgbackrest info --output=json` (pure)."""
    stanza = info[0] if info else {}
    backups = stanza.get("backup") or []

    def last(kind: str) -> dict[str, Any] | None:
        done = [b for b in backups if b.get("type") == kind]
        if not done:
            return None
        b = max(done, key=lambda x: x["timestamp"]["stop"])
        stop = b["timestamp"]["stop"]
        return {"label": b.get("label"), "finished": _iso(stop), "age": human_age(now - stop),
                "age_seconds": int(now - stop),
                "wal": [b.get("archive", {}).get("start"), b.get("archive", {}).get("stop")]}

    archive = stanza.get("archive") or []
    return {
        "repository_status": (stanza.get("status") or {}).get("message", "missing"),
        "backups": len(backups),
        "last_full": last("full"),
        "last_diff": last("diff"),
        "wal_min": min((a.get("min") for a in archive if a.get("min")), default=None),
        "wal_max": max((a.get("max") for a in archive if a.get("max")), default=None),
    }


def archiver_health(row: dict[str, Any]) -> dict[str, Any]:
    """pg_stat_archiver of the leader: healthy unless the latest attempt failed (pure)."""
    archived_at, failed_at = row.get("last_archived_time"), row.get("last_failed_time")
    failing = failed_at is not None and (archived_at is None or str(failed_at) > str(archived_at))
    return {
        "healthy": not failing,
        "failed_count": int(row.get("failed_count") or 0),
        "archived_count": int(row.get("archived_count") or 0),
        "last_archived_wal": row.get("last_archived_wal"),
        "last_archived_at": archived_at,
        "last_failed_wal": row.get("last_failed_wal"),
        "last_failed_at": failed_at,
    }


ARCHIVER_SQL = ("SELECT json_build_object('archived_count', archived_count, 'last_archived_wal', "
                "last_archived_wal, 'last_archived_time', to_char(last_archived_time AT TIME ZONE 'UTC', "
                "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'failed_count', failed_count, 'last_failed_wal', "
                "last_failed_wal, 'last_failed_time', to_char(last_failed_time AT TIME ZONE 'UTC', "
                "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')) FROM pg_stat_archiver")


class BackupStanzaProvider(HostProvider):
    REPLACE_ON = frozenset({"stanza"})
    OBSERVED: ClassVar[dict[str, Any]] = {"archiving_ok": True, "timers_ok": True}
    OUTPUTS = frozenset({"status"})

    # -- the leader and its archiver --------------------------------------------------

    def _leader(self, props: dict[str, Any]) -> str | None:
        for node in props["nodes"].values():
            try:
                members = PatroniApi(node["api_url"]).cluster().get("members", [])
            except RestError:
                continue
            return next((m["name"] for m in members if m.get("role") in LEADER_ROLES), None)
        return None

    def _node_ssh(self, props: dict[str, Any], name: str, connect_timeout: float = 15.0) -> Ssh:
        target = SshTarget.from_props(props["nodes"][name]["connection"], props.get("ssh_private_key"))
        return Ssh(target, connect_timeout=connect_timeout)

    def _repo_ssh(self, props: dict[str, Any], connect_timeout: float = 15.0) -> Ssh:
        """Where the stanza's pgbackrest commands run: the repository host, or (nodes layout)
        the leader, whose pgBackRest reaches both the repository and the primary locally."""
        if not on_nodes(props):
            return self.ssh(props, connect_timeout)
        leader = self._leader(props)
        if leader is None or leader not in props["nodes"]:
            raise SshError(props["stanza"], "find the leader", "no Patroni node leads the cluster")
        return self._node_ssh(props, leader, connect_timeout)

    def _timer_hosts(self, props: dict[str, Any]) -> list[str | None]:
        """Where the timers are: the repository host (None), or every node."""
        return sorted(props["nodes"]) if on_nodes(props) else [None]

    def _timer_ssh(self, props: dict[str, Any], node: str | None, repo: Ssh | None = None,
                   connect_timeout: float = 15.0) -> AbstractContextManager[Ssh]:
        """A connection to a timer host: `repo`, already open to the repository host, serves
        that host (node None) rather than a second connection."""
        if node is None:
            return nullcontext(repo) if repo is not None else self.ssh(props, connect_timeout)
        return self._node_ssh(props, node, connect_timeout)

    def _archiver(self, props: dict[str, Any]) -> dict[str, Any]:
        leader = self._leader(props)
        if leader is None or leader not in props["nodes"]:
            return {"healthy": False, "error": "no leader"}
        target = SshTarget.from_props(props["nodes"][leader]["connection"], props.get("ssh_private_key"))
        psql = (f"runuser -u postgres -- {shlex.quote(props['bin_dir'])}/psql -XAt "
                f"-h {shlex.quote(props['socket_dir'])} "
                f"-p {int(props['pg_port'])} -d postgres -c {shlex.quote(ARCHIVER_SQL)}")
        with Ssh(target, connect_timeout=10) as ssh:
            out = ssh.run(f"cd / && {psql}", step="read pg_stat_archiver on the leader")
        return {"leader": leader, **archiver_health(json.loads(out.stdout.strip().splitlines()[-1]))}

    def _status(self, ssh: Ssh, props: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        info = ssh.run(pgbackrest(props, "--output=json info"), step="pgbackrest info", check=False)
        try:
            summary = summarize_info(json.loads(info.stdout), now)
        except ValueError:
            summary = {"repository_status": (info.stderr or info.stdout).strip()[-300:]}
        try:
            archive = self._archiver(props)
        except (SshError, ValueError, IndexError) as err:
            archive = {"healthy": False, "error": str(err)[-300:]}
        return {"stanza": props["stanza"], "repository": props["repository"],
                "checked_at": _iso(now), **summary, "archive": archive}

    # -- create / update --------------------------------------------------------------

    def _stanza_create_and_check(self, ssh: Ssh, props: dict[str, Any]) -> None:
        wait_for(lambda: self._leader(props), timeout=300, interval=1, what="a leader in the cluster",
                 host=props["stanza"])
        host = props["connection"]["host"]
        created = ssh.run(pgbackrest(props, "stanza-create"), step="pgbackrest stanza-create", check=False)
        if created.code != 0:
            raise SshError(host, "pgbackrest stanza-create",
                           (created.stderr or created.stdout).strip()[-1500:])
        last = ""

        def check() -> bool:
            nonlocal last
            # `check` forces a WAL switch and waits for that segment in the repository: it
            # proves archive_command works from the current primary.
            result = ssh.run(pgbackrest(props, "check"), step="pgbackrest check", check=False, timeout=180)
            last = (result.stderr or result.stdout).strip()[-1500:]
            return result.code == 0

        try:
            # A cluster that just turned archive_mode on may still be restarting nodes.
            wait_for(check, timeout=240, interval=5, what="pgbackrest check to pass", host=host)
        except SshError as err:
            raise SshError(host, "pgbackrest check", last or str(err)) from err

    def _install_timers(self, ssh: Ssh, props: dict[str, Any], node: str | None) -> None:
        stanza = props["stanza"]
        script = script_path(stanza)
        context = {"scope": props["scope"], "stanza": stanza, "repo_user": props["repo_user"]}
        changed = ssh.write_file(script, backup_script(props, node), step=f"write {script}", mode="0755")
        for kind in KINDS:
            unit = unit_name(stanza, kind)
            calendar = (props.get("schedule") or {}).get(kind)
            if calendar:
                check = ssh.run(f"systemd-analyze calendar {shlex.quote(calendar)} >/dev/null",
                                step=f"check pgha:backup.schedule.{kind}", check=False)
                if check.code != 0:
                    raise SshError(props["connection"]["host"], f"check pgha:backup.schedule.{kind}",
                                   f"systemd does not accept OnCalendar={calendar!r}: {check.stderr.strip()}")
            changed |= ssh.write_file(f"{UNIT_DIR}/{unit}.service",
                                      render.render("pgbackrest-backup.service.j2", kind=kind, unit=unit,
                                                    script=script, **context),
                                      step=f"write {unit}.service")
            if calendar:
                changed |= ssh.write_file(f"{UNIT_DIR}/{unit}.timer",
                                          render.render("pgbackrest-backup.timer.j2", kind=kind,
                                                        calendar=calendar, **context),
                                          step=f"write {unit}.timer")
            else:
                ssh.run(f"systemctl disable --now {unit}.timer >/dev/null 2>&1 || true; "
                        f"rm -f {UNIT_DIR}/{unit}.timer", step=f"remove {unit}.timer")
        if changed:
            ssh.run("systemctl daemon-reload", step="reload systemd")
        timers = " ".join(scheduled_timers(props))
        if timers:
            ssh.run(f"systemctl enable {timers} >/dev/null 2>&1 && systemctl restart {timers}",
                    step="enable the backup timers")

    def _timers_ok(self, ssh: Ssh, props: dict[str, Any]) -> bool:
        wanted = scheduled_timers(props)
        if not wanted:
            return True
        out = ssh.run(f"systemctl is-active {' '.join(wanted)}", step="check the backup timers", check=False)
        return out.stdout.split() == ["active"] * len(wanted)

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        wait_for(lambda: self._leader(props), timeout=300, interval=1, what="a leader in the cluster",
                 host=props["stanza"])
        with self._repo_ssh(props) as repo:
            self._stanza_create_and_check(repo, props)
            timers_ok = True
            for node in self._timer_hosts(props):
                with self._timer_ssh(props, node, repo) as ssh:
                    self._install_timers(ssh, props, node)
                    timers_ok = self._timers_ok(ssh, props) and timers_ok
            status = self._status(repo, props)
        archive = status.get("archive") or {}
        if not archive.get("healthy", False) and archive.get("error") is None:
            # check just archived a segment, so an unhealthy archiver here is a real failure.
            raise SshError(props["connection"]["host"], "WAL archiving",
                           f"the leader's last archive attempt failed: {json.dumps(archive)}")
        return {**public(props), "status": status, "archiving_ok": True, "timers_ok": timers_ok}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}/{props['stanza']}/stanza", outs=self._apply(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def _unreachable(self, props: dict[str, Any], err: SshError) -> dict[str, Any]:
        """The status while the repository host does not answer: the backups last seen, marked
        as such, and the leader's archiver as it is now (WAL piles up there meanwhile)."""
        try:
            archive = self._archiver(props)
        except (SshError, ValueError, IndexError) as failure:
            archive = {"healthy": False, "error": str(failure)[-300:]}
        return {**(props.get("status") or {}), "stanza": props["stanza"], "repository": props["repository"],
                "checked_at": _iso(time.time()), "repository_status": f"unreachable: {str(err)[-300:]}",
                "archive": archive}

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        outs = dict(props)
        try:
            with self._repo_ssh(props, connect_timeout=10) as repo:
                status = self._status(repo, props)
                outs["timers_ok"] = self._all_timers_ok(props, repo)
        except SshError as err:
            status = self._unreachable(props, err)
        outs["status"] = status
        outs["archiving_ok"] = bool((status.get("archive") or {}).get("healthy")) and \
            not str(status.get("repository_status", "")).startswith("unreachable")
        return ReadResult(id_=id_, outs=outs)

    def _all_timers_ok(self, props: dict[str, Any], repo: Ssh) -> bool:
        """The timers on every host that has them (a node that does not answer is skipped in
        the nodes layout: the others still run the schedule)."""
        ok = True
        for node in self._timer_hosts(props):
            try:
                with self._timer_ssh(props, node, repo, connect_timeout=10) as ssh:
                    ok = self._timers_ok(ssh, props) and ok
            except SshError as err:
                if node is None or err.step != "connect over SSH":
                    raise
        return ok

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """The timers go; the stanza's backups and archive stay in the repository."""
        stanza = props["stanza"]
        units = " ".join(f"{unit_name(stanza, k)}.timer" for k in KINDS)
        files = " ".join(f"{UNIT_DIR}/{unit_name(stanza, k)}.{suffix}"
                         for k in KINDS for suffix in ("timer", "service"))
        for node in self._timer_hosts(props):
            try:
                with self._timer_ssh(props, node, connect_timeout=10) as ssh:
                    ssh.run(f"systemctl disable --now {units} >/dev/null 2>&1 || true; rm -f {files} "
                            f"{script_path(stanza)}; systemctl daemon-reload",
                            step="remove the backup timers")
            except SshError as err:
                if err.step != "connect over SSH":
                    raise

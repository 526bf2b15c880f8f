"""BackupRestore: pgha:restore, a new cluster made from another stanza's backup and WAL.

The restore itself is Patroni's custom bootstrap on the first node (specs.restore_bootstrap:
`pgbackrest restore` of the source stanza, then PostgreSQL replays the archived WAL to the
target and promotes). This resource comes first: its input `plan` is the one line a
reviewer reads in the preview ("restore stanza X ... to time T, then promote: new cluster
Y ... archiving into its own stanza Z"), and its create checks on the repository host,
before any database host is touched, that the restore can work: the source stanza exists
and holds a backup that ends before the target, and the new stanza does not exist yet
(archiving a new timeline into an old cluster's stanza would mix two histories).

A restore happens once, when the cluster is created: changing pgha:restore afterwards is
refused at preview; removing it forgets the resource and touches nothing.
"""

from __future__ import annotations

import json
import shlex
import time
from datetime import UTC, datetime
from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, UpdateResult

from components.providers.backup_stanza import as_repo_user
from components.providers.base import HostProvider, public
from components.transport.ssh import SshError

# Inputs that define what was restored: fixed once the cluster exists.
FIXED = ("from_stanza", "target", "stanza", "plan")


def lsn_value(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def parse_target_time(value: str) -> float:
    """specs' normalized "YYYY-MM-DD HH:MM:SS[.ffffff]+00" as an epoch."""
    text = value.removesuffix("+00")
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()


def choose_backup(info: list[dict[str, Any]], target: dict[str, Any], now: float) -> tuple[str | None, str]:
    """(label of the backup pgBackRest will restore, why none qualifies) for a target (pure)."""
    stanza = info[0] if info else {}
    status = (stanza.get("status") or {}).get("message", "missing")
    backups = stanza.get("backup") or []
    if not backups:
        return None, f"the stanza has no backup (status: {status})"
    kind, value = target.get("kind"), target.get("value")
    usable = backups
    if kind == "time":
        moment = parse_target_time(str(value))
        if moment > now:
            return None, f"the target time {value} is in the future"
        usable = [b for b in backups if b["timestamp"]["stop"] < moment]
        if not usable:
            first = min(b["timestamp"]["stop"] for b in backups)
            when = datetime.fromtimestamp(first, UTC).strftime("%Y-%m-%d %H:%M:%S+00")
            return None, f"no backup ended before {value}; the oldest ended at {when}"
    elif kind == "lsn":
        limit = lsn_value(str(value))
        usable = [b for b in backups if lsn_value(b.get("lsn", {}).get("stop", "0/0")) <= limit]
        if not usable:
            return None, f"no backup ended before LSN {value}"
    chosen = max(usable, key=lambda b: b["timestamp"]["stop"])
    return str(chosen.get("label")), ""


class BackupRestoreProvider(HostProvider):
    OUTPUTS = frozenset({"backup_set", "checked_at"})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in FIXED if olds.get(k) != news.get(k)]
        if changed and olds.get("backup_set") is not None:
            raise ValueError(
                f"pgha:restore cannot change for a cluster that exists: it was restored from stanza "
                f"{olds.get('from_stanza')} ({olds.get('plan')}). A restore happens when a cluster is "
                "created; restore into a new stack (another scope and hosts), or remove pgha:restore.")
        return super().diff(_id, olds, news)

    def _check(self, props: dict[str, Any]) -> str:
        host = props["connection"]["host"]
        with self.ssh(props) as ssh:
            info = ssh.run(as_repo_user(props, f"pgbackrest --stanza={shlex.quote(props['from_stanza'])} "
                                        "--output=json info"), step="pgbackrest info of the source stanza",
                           check=False)
            try:
                parsed = json.loads(info.stdout)
            except ValueError:
                raise SshError(host, f"read stanza {props['from_stanza']}",
                               (info.stderr or info.stdout).strip()[-1000:]) from None
            label, why = choose_backup(parsed, props["target"], time.time())
            if label is None:
                raise SshError(host, f"restore from stanza {props['from_stanza']}", why)
            own = ssh.run(as_repo_user(props, f"pgbackrest --stanza={shlex.quote(props['stanza'])} "
                                       "--output=json info"), step="pgbackrest info of the new stanza",
                          check=False)
            try:
                existing = json.loads(own.stdout)
            except ValueError:
                existing = []
            code = ((existing[0] if existing else {}).get("status") or {}).get("code")
            if code not in (None, 1):  # 1: "missing stanza path"
                raise SshError(host, f"archive into stanza {props['stanza']}",
                               f"stanza {props['stanza']} already exists in the repository (an earlier "
                               "cluster's archive): set another pgha:backup.stanza, or delete it on the "
                               f"repository host with `pgbackrest --stanza={props['stanza']} stanza-delete`")
        return label

    def create(self, props: dict[str, Any]) -> CreateResult:
        label = self._check(props)
        outs = {**public(props), "backup_set": label,
                "checked_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        return CreateResult(id_=f"{props['scope']}/restore", outs=outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Only routing (the repository host's connection) can change here.
        return UpdateResult(outs={**public(news), "backup_set": olds.get("backup_set"),
                                  "checked_at": olds.get("checked_at")})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Forgetting the restore touches nothing: the cluster and both stanzas stay."""

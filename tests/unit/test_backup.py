"""pgha:backup and pgha:restore: validation naming the key, the planned inputs, the rendered
files, and the providers' pure parts (key files, pgBackRest's info, the archiver, the
choice of a backup to restore)."""

from __future__ import annotations

import configparser
import copy
from typing import Any

import pytest
import yaml

from components import render, specs
from components.config import ClusterConfig, check_calendar, load_cluster_config
from components.providers.backup_hosts import (
    BackupRepositoryProvider,
    authorized_key_line,
    merge_managed_lines,
    node_conf,
    repo_secrets_conf,
    repo_stanza_conf,
)
from components.providers.backup_restore import BackupRestoreProvider, choose_backup, parse_target_time
from components.providers.backup_stanza import archiver_health, human_age, summarize_info
from components.validation import ConfigError
from tests.unit.configs import base_raw, base_secret_keys, lab_raw, set_path

BACKUP_HOST = {"name": "pg5", "address": "10.77.0.15", "roles": ["backup"]}
PASSPHRASE = "cipher-Pw_6 with spaces"


def backup_raw(**backup: Any) -> dict[str, Any]:
    """The base config (production-valid) with a repository host and pgha:backup."""
    raw = base_raw()
    raw["hosts"].append(copy.deepcopy(BACKUP_HOST))
    raw["backup"] = backup
    raw["backupCipherPassphrase"] = PASSPHRASE
    return raw


def secret_keys() -> set[str]:
    return {*base_secret_keys(), "backupCipherPassphrase"}


def lab_backup(**extra: Any) -> ClusterConfig:
    raw = lab_raw()
    raw["hosts"].append(copy.deepcopy(BACKUP_HOST))
    raw["backup"] = {}
    raw.update(extra)
    return load_cluster_config(raw, set())


def problems_of(raw: dict[str, Any], secrets: set[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_cluster_config(raw, secret_keys() if secrets is None else secrets)
    return err.value.problems


# --- config --------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = load_cluster_config(backup_raw(), secret_keys())
    b = cfg.backup
    assert b is not None and cfg.restore is None
    assert (b.stanza, b.repo_path) == ("pgha-lab", "/var/lib/pgbackrest")
    assert (b.retention_full, b.retention_diff) == (2, None)
    assert (b.compress_type, b.compress_level, b.archive_async, b.process_max) == ("zst", None, True, 2)
    assert b.encryption is True
    assert (b.schedule_full, b.schedule_diff) == ("Sun *-*-* 01:00:00", "Mon..Sat *-*-* 01:00:00")
    assert b.archive_timeout == "60s"
    assert [h.name for h in cfg.with_role("backup")] == ["pg5"]


def test_production_stack_with_backup_loads() -> None:
    raw = backup_raw(retention={"full": 4, "diff": 6}, compression={"type": "lz4", "level": 1},
                     schedule={"full": "Sat 02:00", "diff": "daily"}, processMax=4, archiveAsync=False)
    raw["production"] = True
    cfg = load_cluster_config(raw, secret_keys())
    assert cfg.backup is not None
    assert (cfg.backup.retention_full, cfg.backup.retention_diff) == (4, 6)
    assert (cfg.backup.schedule_full, cfg.backup.schedule_diff) == ("Sat 02:00", "daily")


def test_an_empty_schedule_means_no_timers() -> None:
    cfg = load_cluster_config(backup_raw(schedule={}), secret_keys())
    assert cfg.backup is not None and (cfg.backup.schedule_full, cfg.backup.schedule_diff) == (None, None)


def test_a_lab_stack_generates_the_cipher_passphrase() -> None:
    assert lab_backup().backup is not None  # generatePasswords: no backupCipherPassphrase needed


BAD = [
    pytest.param({"hosts[4].roles": ["backup"], "backup": None}, "hosts[4].roles[0]",
                 "the backup role needs pgha:backup", id="backup-role-without-settings"),
    pytest.param({"hosts[4].roles": ["haproxy"]}, "backup.repoPath",
                 "is required when no host has the backup role", id="backup-without-host"),
    pytest.param({"hosts[4].roles": ["backup", "patroni", "etcd"]}, "hosts[4].roles",
                 "must not be a Patroni node", id="backup-host-is-a-node"),
    pytest.param({"hosts[5]": {"name": "pg6", "address": "10.77.0.16", "roles": ["backup"]}},
                 "hosts[5].roles",
                 "only one host may have the backup role", id="two-backup-hosts"),
    pytest.param({"backup.retention.full": 0}, "backup.retention.full", "must be at least 1",
                 id="retention-full-zero"),
    pytest.param({"backup.retention.weekly": 3}, "backup.retention.weekly", "unknown key",
                 id="retention-unknown"),
    pytest.param({"backup.compression.type": "xz"}, "backup.compression.type", "'xz' is not one of none, gz",
                 id="compression-type"),
    pytest.param({"backup.compression.level": 30}, "backup.compression.level", "must be at most 22",
                 id="compression-level"),
    pytest.param({"backup.processMax": 0}, "backup.processMax", "must be at least 1", id="process-max"),
    pytest.param({"backup.archiveAsync": "yes"}, "backup.archiveAsync", "must be true or false",
                 id="archive-async"),
    pytest.param({"backup.schedule.full": "Sun 25:00"}, "backup.schedule.full", "hour 25 is out of range",
                 id="schedule-hour"),
    pytest.param({"backup.schedule.diff": "every night"}, "backup.schedule.diff",
                 "not a systemd OnCalendar expression", id="schedule-words"),
    pytest.param({"backup.schedule.full": "Mon-Fri 01:00"}, "backup.schedule.full", "Mon..Fri",
                 id="schedule-weekday-dash"),
    pytest.param({"backup.schedule.weekly": "Sun"}, "backup.schedule.weekly", "unknown key",
                 id="schedule-unknown"),
    pytest.param({"backup.stanza": "my stanza"}, "backup.stanza", "not a valid stanza name",
                 id="stanza-name"),
    pytest.param({"backup.repoPath": "backups"}, "backup.repoPath", "not a valid absolute path",
                 id="repo-path-relative"),
    pytest.param({"backup.archiveTimeout": "soon"}, "backup.archiveTimeout", "must be a duration",
                 id="archive-timeout"),
    pytest.param({"backup.retension": {}}, "backup.retension", "did you mean 'retention'", id="backup-typo"),
    pytest.param({"backupCipherPassphrase": None}, "backupCipherPassphrase", "missing secret",
                 id="cipher-missing"),
    pytest.param({"backup.encryption": False}, "backupCipherPassphrase", "backup.encryption is false",
                 id="cipher-without-encryption"),
    pytest.param({"postgresql.parameters.archive_command": "cp %p /mnt/%f"},
                 "postgresql.parameters.archive_command", "is set by pgha:backup",
                 id="archive-command-by-hand"),
    pytest.param({"postgresql.parameters.restore_command": "cp /mnt/%f %p"},
                 "postgresql.parameters.restore_command", "is set by pgha:backup",
                 id="restore-command-by-hand"),
    pytest.param({"restore": {"fromStanza": "pgha-lab", "target": "latest"}}, "restore.fromStanza",
                 "must name another cluster's stanza", id="restore-into-own-stanza"),
    pytest.param({"restore": {"fromStanza": "old"}}, "restore.target", "is required", id="restore-no-target"),
    pytest.param({"restore": {"fromStanza": "old", "target": {"time": "2026-01-31 12:00:00"}}},
                 "restore.target.time", "a time without a zone is ambiguous", id="restore-time-no-zone"),
    pytest.param({"restore": {"fromStanza": "old", "target": {"time": "yesterday"}}}, "restore.target.time",
                 "is not a time with a time zone", id="restore-time-words"),
    pytest.param({"restore": {"fromStanza": "old", "target": {"lsn": "5000028"}}}, "restore.target.lsn",
                 "is not an LSN", id="restore-lsn"),
    pytest.param({"restore": {"fromStanza": "old", "target": {"name": "it's"}}}, "restore.target.name",
                 "is not a restore point name", id="restore-name-quote"),
    pytest.param({"restore": {"fromStanza": "old",
                              "target": {"time": "2026-01-31 12:00:00+00", "lsn": "0/1"}}},
                 "restore.target", "give exactly one of time, lsn, name", id="restore-two-targets"),
    pytest.param({"restore": {"fromStanza": "old", "target": {"xid": "1234"}}}, "restore.target.xid",
                 "unknown key", id="restore-xid"),
    pytest.param({"restore": {"from": "old", "target": "latest"}}, "restore.from", "unknown key",
                 id="restore-typo"),
]


@pytest.mark.parametrize(("mutation", "key", "fragment"), BAD)
def test_bad_backup_config_names_its_key(mutation: dict[str, Any], key: str, fragment: str) -> None:
    raw = backup_raw()
    for path, value in mutation.items():
        if path == "backup" and value is None:
            del raw["backup"]
            raw.pop("backupCipherPassphrase")
        elif path == "backupCipherPassphrase" and value is None:
            raw.pop(path)
        else:
            set_path(raw, path, value)
    problems = problems_of(raw)
    assert any(p.startswith(f"pgha:{key}: ") and fragment in p for p in problems), problems


def test_cipher_passphrase_must_be_a_secret() -> None:
    problems = problems_of(backup_raw(), base_secret_keys())
    assert any(p.startswith("pgha:backupCipherPassphrase: must be a secret") for p in problems), problems


def test_restore_without_backup_names_restore() -> None:
    raw = base_raw()
    raw["restore"] = {"fromStanza": "old", "target": "latest"}
    problems = problems_of(raw, base_secret_keys())
    assert any(p.startswith("pgha:restore: needs pgha:backup") for p in problems), problems


@pytest.mark.parametrize(("given", "normalized"), [
    ("2026-11-26 21:03:04+00", "2026-11-26 21:03:04+00"),
    ("2026-11-26T21:03:04.250Z", "2026-11-26 21:03:04.25+00"),
    ("2026-11-26 23:03:04+02:00", "2026-11-26 21:03:04+00"),
    ("2026-11-26 16:03:04-0500", "2026-11-26 21:03:04+00"),
    ("2026-11-26 21:03:04 UTC", "2026-11-26 21:03:04+00"),
])
def test_restore_time_is_normalized_to_utc(given: str, normalized: str) -> None:
    raw = backup_raw()
    raw["scope"] = "clone"
    raw["restore"] = {"fromStanza": "pgha-lab", "target": {"time": given}}
    cfg = load_cluster_config(raw, secret_keys())
    assert cfg.restore is not None
    assert (cfg.restore.target_kind, cfg.restore.target_value) == ("time", normalized)


@pytest.mark.parametrize("spec", ["daily", "weekly", "Sun *-*-* 01:00:00", "Mon..Sat *-*-* 01:00:00",
                                  "*-*-* 00/6:00", "Sat,Sun 03:30", "*-*~01 02:00", "2026-12-24 18:00:00",
                                  "*-*-* 01:00:00 UTC", "01:30", "Mon"])
def test_calendar_accepts_systemd_forms(spec: str) -> None:
    assert check_calendar(spec) is None


@pytest.mark.parametrize(("spec", "fragment"), [
    ("", "is empty"), ("Funday 01:00", "cannot read"), ("*-13-01 00:00", "month 13"),
    ("*-*-* 12:60", "minute 60"), ("*-*-* */0:00", "step must be at least 1"), ("tomorrow", "cannot read"),
])
def test_calendar_refuses(spec: str, fragment: str) -> None:
    why = check_calendar(spec)
    assert why is not None and fragment in why


# --- specs ---------------------------------------------------------------------------------


def test_without_backup_no_input_changes() -> None:
    """An existing stack without pgha:backup plans exactly what it did before."""
    cfg = load_cluster_config(lab_raw(), set())
    host = cfg.with_role("patroni")[0]
    node = specs.patroni_node_spec(cfg, host)
    assert "replica_from_backup" not in node and "restore" not in node["bootstrap"]
    assert specs.pg_parameters(cfg) == cfg.dcs.parameters
    assert "archive_command" not in specs.dynamic_config_spec(cfg)["parameters_reload"]


def test_backup_archives_from_the_first_segment() -> None:
    cfg = lab_backup()
    host = cfg.with_role("patroni")[0]
    seeded = specs.patroni_node_spec(cfg, host)["bootstrap"]["dcs"]["parameters"]
    dynamic = specs.dynamic_config_spec(cfg)
    for params in (seeded, {**dynamic["parameters_reload"], **dynamic["parameters_restart"]}):
        assert params["archive_mode"] == "on"
        assert params["archive_command"] == "/usr/bin/pgbackrest --stanza=pgha-lab archive-push %p"
        assert params["restore_command"] == '/usr/bin/pgbackrest --stanza=pgha-lab archive-get %f "%p"'
        assert params["archive_timeout"] == "60s"
    assert "archive_mode" in dynamic["parameters_restart"]  # turning it on restarts the nodes
    assert "archive_command" in dynamic["parameters_reload"]


def test_a_declared_archive_timeout_wins() -> None:
    raw = lab_raw()
    raw["hosts"].append(copy.deepcopy(BACKUP_HOST))
    raw["backup"] = {}
    raw["postgresql"]["parameters"]["archive_timeout"] = "5min"
    cfg = load_cluster_config(raw, set())
    assert specs.pg_parameters(cfg)["archive_timeout"] == "5min"


def test_patroni_yml_replicas_from_the_repository() -> None:
    cfg = lab_backup()
    spec = specs.patroni_node_spec(cfg, cfg.with_role("patroni")[1])
    assert spec["replica_from_backup"] == "/usr/bin/pgbackrest --stanza=pgha-lab --delta restore"
    doc = yaml.safe_load(render.patroni_yml(spec, {"superuser": "a", "replication": "b", "rewind": "c",
                                                     "restapi": "d"}))
    pg = doc["postgresql"]
    assert pg["create_replica_methods"] == ["pgbackrest", "basebackup"]
    assert pg["pgbackrest"] == {"command": "/usr/bin/pgbackrest --stanza=pgha-lab --delta restore",
                                "keep_data": True, "no_params": True}
    assert pg["basebackup"] == [{"checkpoint": "fast"}]
    assert "bootstrap" not in doc  # a replica never bootstraps
    first = render.patroni_yml(specs.patroni_node_spec(cfg, cfg.with_role("patroni")[0]),
                               {"superuser": "a", "replication": "b", "rewind": "c", "restapi": "d"})
    assert "method" not in yaml.safe_load(first)["bootstrap"]


@pytest.mark.parametrize(("target", "args", "recovery"), [
    ({"time": "2026-11-26 21:03:04+00"},
     "--type=time '--target=2026-11-26 21:03:04+00' --target-action=promote",
     {"recovery_target_time": "2026-11-26 21:03:04+00", "recovery_target_action": "promote"}),
    ({"lsn": "0/5000028"}, "--type=lsn --target=0/5000028 --target-action=promote",
     {"recovery_target_lsn": "0/5000028", "recovery_target_action": "promote"}),
    ({"name": "before upgrade"}, "--type=name '--target=before upgrade' --target-action=promote",
     {"recovery_target_name": "before upgrade", "recovery_target_action": "promote"}),
    ("latest", "", {}),
])
def test_restore_is_patroni_custom_bootstrap(target: Any, args: str, recovery: dict[str, str]) -> None:
    cfg = lab_backup(scope="pgha-clone", restore={"fromStanza": "pgha-lab", "target": target})
    node = specs.patroni_node_spec(cfg, cfg.with_role("patroni")[0])
    doc = yaml.safe_load(render.patroni_yml(node, {"superuser": "a", "replication": "b", "rewind": "c",
                                                     "restapi": "d"}))
    boot = doc["bootstrap"]
    assert boot["method"] == "pgbackrest_restore"
    method = boot["pgbackrest_restore"]
    words = ["/usr/bin/pgbackrest --stanza=pgha-lab", args, "restore"]
    assert method["command"] == " ".join(filter(None, words))
    assert method["no_params"] is True
    assert method["recovery_conf"] == {
        "restore_command": '/usr/bin/pgbackrest --stanza=pgha-lab archive-get %f "%p"',
        "recovery_target_timeline": "latest", **recovery}
    # Once running, the clone archives into its own stanza only.
    params = boot["dcs"]["postgresql"]["parameters"]
    assert params["archive_command"] == "/usr/bin/pgbackrest --stanza=pgha-clone archive-push %p"
    assert "pgha-lab" not in params["restore_command"]


def test_restore_plan_reads_like_what_up_does() -> None:
    cfg = lab_backup(scope="pgha-clone", restore={"fromStanza": "pgha-lab",
                                                  "target": {"time": "2026-11-26 22:03:04+01"}})
    spec = specs.backup_restore_spec(cfg)
    assert spec["plan"] == ("restore from stanza pgha-lab on pg5 to time 2026-11-26 21:03:04+00, promote, "
                            "then archive into stanza pgha-clone")
    assert len(spec["plan"]) < 150  # the CLI shortens longer strings in a preview


def _nones(value: Any, path: str = "") -> list[str]:
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nones(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nones(v, f"{path}[{i}]")]
    return []


def test_no_input_is_none() -> None:
    """Pulumi drops None-valued inputs before a provider sees them: an unset setting must be
    left out of the spec (templates test `is defined`), never sent as None."""
    cfg = lab_backup(scope="pgha-clone", restore={"fromStanza": "pgha-lab", "target": "latest"})
    node = cfg.with_role("patroni")[0]
    for spec in (specs.backup_repository_spec(cfg), specs.backup_node_spec(cfg, node),
                 specs.backup_stanza_spec(cfg), specs.backup_restore_spec(cfg),
                 specs.backup_identity_spec(cfg, node), specs.patroni_node_spec(cfg, node)):
        assert _nones(spec) == []


# --- rendered files ------------------------------------------------------------------------


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_repository_stanza_file() -> None:
    cfg = lab_backup()
    props = {**specs.backup_repository_spec(cfg), "repo_user": "pgbackrest",
             "secrets": {"cipher_pass": PASSPHRASE}}
    ini = _ini(repo_stanza_conf(props))
    stanza = ini["pgha-lab"]
    assert stanza["repo1-path"] == "/var/lib/pgbackrest"
    assert stanza["repo1-retention-full"] == "2"
    assert [stanza[f"pg{i}-host"] for i in (1, 2, 3)] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    assert stanza["pg1-path"] == "/var/lib/postgresql/15/pgha-lab"
    assert stanza["pg1-host-user"] == "postgres"
    assert PASSPHRASE not in repo_stanza_conf(props)  # only in the 0600 cipher file
    detached = _ini(repo_stanza_conf(props, detached=True))["pgha-lab"]
    assert "pg1-host" not in detached and detached["repo1-path"] == "/var/lib/pgbackrest"


def test_node_file() -> None:
    cfg = lab_backup(scope="pgha-clone", restore={"fromStanza": "pgha-lab", "target": "latest"})
    ini = _ini(node_conf(specs.backup_node_spec(cfg, cfg.with_role("patroni")[0])))
    assert ini["global"]["repo1-host"] == "10.77.0.15"
    assert ini["global"]["repo1-host-user"] == "pgbackrest"
    assert ini["global"]["archive-async"] == "y"
    assert ini["pgha-clone"]["pg1-path"] == "/var/lib/postgresql/15/pgha-clone"
    assert ini["pgha-lab"]["pg1-path"] == "/var/lib/postgresql/15/pgha-clone"
    assert not any("cipher" in key for section in ini.values() for key in section)


def test_backup_script_and_units() -> None:
    context = {"scope": "pgha-lab", "stanza": "pgha-lab", "repo_user": "pgbackrest"}
    script = render.render("pgbackrest-backup.sh.j2", replica_urls=["http://10.77.0.11:8008/replica"],
                           **context)
    assert script.startswith("#!/bin/sh\n")
    assert "curl -fs -o /dev/null --max-time 3" in script and "http://10.77.0.11:8008/replica" in script
    assert '--stanza=pgha-lab --type="$type" "$standby"' in script
    timer = _ini(render.render("pgbackrest-backup.timer.j2", kind="full", calendar="Sun *-*-* 01:00:00",
                               **context))
    assert timer["Timer"]["OnCalendar"] == "Sun *-*-* 01:00:00"
    service = _ini(render.render("pgbackrest-backup.service.j2", kind="diff",
                                 unit="pgha-backup-pgha-lab-diff",
                                 script="/usr/local/sbin/pgha-backup-pgha-lab", **context))
    assert service["Service"]["User"] == "pgbackrest"
    assert service["Service"]["ExecStart"] == "/usr/local/sbin/pgha-backup-pgha-lab diff"


# --- providers (pure parts) ----------------------------------------------------------------


def test_key_lines_keep_everyone_elses() -> None:
    existing = ("ssh-ed25519 AAAAuser someone@laptop\n"
                "restrict ssh-ed25519 AAAAold pgha-backup:pgha-lab:pg1\n"
                "restrict ssh-ed25519 AAAAclone pgha-backup:pgha-clone:pg6\n")
    merged = merge_managed_lines(existing, "pgha-lab", {"pg2": "restrict ssh-ed25519 AAAAnew"})
    assert merged.splitlines() == [
        "ssh-ed25519 AAAAuser someone@laptop",
        "restrict ssh-ed25519 AAAAclone pgha-backup:pgha-clone:pg6",
        "restrict ssh-ed25519 AAAAnew pgha-backup:pgha-lab:pg2",
    ]
    assert merge_managed_lines(merged, "pgha-lab", {}).count("pgha-lab") == 0
    assert merge_managed_lines("", "x", {}) == ""


def test_authorized_key_runs_pgbackrest_only() -> None:
    line = authorized_key_line("ssh-ed25519 AAAAkey postgres@pg1")
    assert line == 'restrict,command="/usr/bin/pgbackrest ${SSH_ORIGINAL_COMMAND#* }" ssh-ed25519 AAAAkey'


INFO = [{
    "name": "pgha-lab", "status": {"code": 0, "message": "ok"},
    "archive": [{"id": "15-1", "min": "000000010000000000000001", "max": "000000020000000000000009"}],
    "backup": [
        {"label": "20261126-200000F", "type": "full", "timestamp": {"start": 1000, "stop": 1100},
         "lsn": {"start": "0/2000028", "stop": "0/2000100"},
         "archive": {"start": "000000010000000000000002", "stop": "000000010000000000000002"}},
        {"label": "20261126-200000F_20261126-210000D", "type": "diff",
         "timestamp": {"start": 4000, "stop": 4100},
         "lsn": {"start": "0/6000028", "stop": "0/6000100"},
         "archive": {"start": "000000020000000000000006", "stop": "000000020000000000000006"}},
    ],
}]


def test_status_summarizes_pgbackrest_info() -> None:
    summary = summarize_info(INFO, now=4100 + 3725)
    assert summary["backups"] == 2 and summary["repository_status"] == "ok"
    assert summary["last_full"]["label"] == "20261126-200000F"
    assert summary["last_diff"]["age"] == "1h02m" and summary["last_diff"]["age_seconds"] == 3725
    assert summary["wal_min"] == "000000010000000000000001"
    assert summary["wal_max"] == "000000020000000000000009"
    empty = summarize_info([{"name": "x", "status": {"code": 2, "message": "no valid backups"}}], now=0)
    assert empty["last_full"] is None and empty["repository_status"] == "no valid backups"


def test_human_age() -> None:
    assert [human_age(s) for s in (5, 65, 3600, 90000)] == ["5s", "1m05s", "1h00m", "1d01h"]


def test_archiver_health_is_the_latest_attempt() -> None:
    ok = archiver_health({"archived_count": 9, "failed_count": 3,
                          "last_archived_time": "2026-11-26T21:00:05.1Z",
                          "last_failed_time": "2026-11-26T21:00:01.0Z"})
    assert ok["healthy"] is True and ok["failed_count"] == 3
    failing = archiver_health({"archived_count": 9, "failed_count": 4,
                               "last_archived_time": "2026-11-26T21:00:05.1Z",
                               "last_failed_time": "2026-11-26T21:01:00.0Z"})
    assert failing["healthy"] is False
    never = archiver_health({"archived_count": 0, "failed_count": 1, "last_failed_time": "x"})
    assert never["healthy"] is False


def test_choose_backup_for_a_target() -> None:
    assert choose_backup(INFO, {"kind": "latest"}, now=5000) == ("20261126-200000F_20261126-210000D", "")
    assert choose_backup(INFO, {"kind": "time", "value": "1970-01-01 01:10:00+00"}, now=5000) == (
        "20261126-200000F_20261126-210000D", "")
    assert choose_backup(INFO, {"kind": "time", "value": "1970-01-01 00:30:00+00"}, now=5000)[0] == \
        "20261126-200000F"
    label, why = choose_backup(INFO, {"kind": "time", "value": "1970-01-01 00:01:00+00"}, now=5000)
    assert label is None and "no backup ended before" in why
    label, why = choose_backup(INFO, {"kind": "time", "value": "1970-01-02 00:00:00+00"}, now=5000)
    assert label is None and "in the future" in why
    assert choose_backup(INFO, {"kind": "lsn", "value": "0/3000000"}, now=5000)[0] == "20261126-200000F"
    assert choose_backup([{"status": {"message": "missing stanza path"}}], {"kind": "latest"}, now=0)[1] == \
        "the stanza has no backup (status: missing stanza path)"
    assert parse_target_time("1970-01-01 00:00:01.5+00") == 1.5


def test_a_restore_cannot_change_once_done() -> None:
    provider = BackupRestoreProvider()
    olds = {"from_stanza": "pgha-lab", "target": {"kind": "latest", "value": None}, "stanza": "c",
            "plan": "p",
            "backup_set": "20261126-200000F"}
    with pytest.raises(ValueError, match="pgha:restore cannot change for a cluster that exists"):
        provider.diff("id", olds, {**olds, "target": {"kind": "time", "value": "x"}, "backup_set": None})
    same = provider.diff("id", olds, {k: v for k, v in olds.items() if k != "backup_set"})
    assert not same.changes


def test_repository_diff_is_leaf_by_leaf() -> None:
    cfg = lab_backup()
    olds = {**specs.backup_repository_spec(cfg), "pgbackrest_version": "2.45", "config_ok": True}
    news = {**specs.backup_repository_spec(cfg), "retention": {"full": 3, "diff": None}}
    result = BackupRepositoryProvider().diff("id", olds, news)
    assert result.changes is None and not result.replaces


# --- an S3 repository ----------------------------------------------------------------------

S3 = {"endpoint": "s3.pgha.lab", "port": 7070, "bucket": "pgbackrest", "region": "us-east-1",
      "uriStyle": "path", "keyId": "pgha-lab-key", "caFile": "/etc/pgha/s3-ca.crt"}
S3_SECRET = "s3-Secret/with+chars"


def test_s3_repository_config_errors_name_their_keys() -> None:
    raw = backup_raw(s3={"endpoint": "10.0.0.9", "bucket": "B", "uriStyle": "virtual", "port": 0, "tls": 1})
    assert set(problems_of(raw)) == {
        "pgha:backup.s3.tls: unknown key; allowed: bucket, caFile, endpoint, keyId, port, region, uriStyle, "
        "verifyTls",
        "pgha:backupS3KeySecret: missing secret (the S3 secret access key): pulumi config set --secret "
        "pgha:backupS3KeySecret ...",
        "pgha:backup.s3.uriStyle: 'virtual' is not one of host, path",
        "pgha:backup.s3.endpoint: '10.0.0.9' is not a valid DNS name (pgBackRest checks the certificate by "
        "name, not by IP)",
        "pgha:backup.s3.port: must be at least 1, got 0",
        "pgha:backup.s3.bucket: 'B' is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')",
        "pgha:backup.s3.region: is required",
        "pgha:backup.s3.keyId: is required",
    }
    raw = backup_raw(s3=S3)
    raw["backupS3KeySecret"] = S3_SECRET
    assert any(p.startswith("pgha:backupS3KeySecret: must be a secret") for p in problems_of(raw)), raw
    raw = backup_raw()
    raw["backupS3KeySecret"] = S3_SECRET
    assert any("is set but pgha:backup.s3 is not" in p for p in problems_of(raw, {*secret_keys(),
                                                                              "backupS3KeySecret"}))


def test_s3_repository_files() -> None:
    raw = backup_raw(s3=S3)
    raw["backupS3KeySecret"] = S3_SECRET
    cfg = load_cluster_config(raw, {*secret_keys(), "backupS3KeySecret"})
    assert cfg.backup is not None and cfg.backup.repo_path == "/pgbackrest"
    props = {**specs.backup_repository_spec(cfg), "repo_user": "pgbackrest", "s3_ca": "-----BEGIN...",
             "secrets": {"cipher_pass": PASSPHRASE, "s3_key_secret": S3_SECRET}}
    stanza = _ini(repo_stanza_conf(props))[cfg.backup.stanza]
    assert (stanza["repo1-type"], stanza["repo1-path"], stanza["repo1-s3-bucket"]) == ("s3", "/pgbackrest",
                                                                                    "pgbackrest")
    assert (stanza["repo1-s3-endpoint"], stanza["repo1-storage-port"]) == ("s3.pgha.lab", "7070")
    assert (stanza["repo1-s3-uri-style"], stanza["repo1-s3-region"]) == ("path", "us-east-1")
    assert stanza["repo1-s3-key"] == "pgha-lab-key" and stanza["repo1-storage-verify-tls"] == "y"
    assert stanza["repo1-storage-ca-file"].endswith("-s3-ca.crt")
    assert S3_SECRET not in repo_stanza_conf(props)  # only in the 0600 secrets file
    secret = _ini(repo_secrets_conf(props))[cfg.backup.stanza]
    assert secret["repo1-s3-key-secret"] == S3_SECRET and secret["repo1-cipher-pass"] == PASSPHRASE
    status = specs.backup_stanza_spec(cfg)["repository"]
    assert status == "s3://pgbackrest/pgbackrest at s3.pgha.lab"
    # A posix repository has no secrets file without encryption.
    plain = {**specs.backup_repository_spec(lab_backup()), "encryption": "none", "secrets": {}}
    assert repo_secrets_conf(plain) == ""

"""pgha:backup with no repository host: the repository on the Patroni nodes' shared storage.
Validation naming the key, the planned inputs of each layout, the rendered files, the backup
script's leader check, and the verdict of the shared-storage check (pure)."""

from __future__ import annotations

import configparser
import copy
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components import specs
from components.config import ClusterConfig, load_cluster_config
from components.providers.backup_hosts import node_conf, repo_secrets_conf, shared_marker, shared_path_problem
from components.providers.backup_stanza import backup_script
from components.tls_plan import planned_certificates, tls_file_sets
from components.transport.ssh import Result
from components.validation import ConfigError
from tests.unit.configs import base_raw, base_secret_keys, lab_raw
from tests.unit.test_install_component import Recorder, _is_secret, _lab, _program

SHARED = "/mnt/pgbackrest"
PASSPHRASE = "cipher-Pw_6 with spaces"
BACKUP_HOST = {"name": "pg5", "address": "10.77.0.15", "roles": ["backup"]}


def nodes_raw(**backup: Any) -> dict[str, Any]:
    """The base config (production-valid), pgha:backup and no host with the backup role."""
    raw = base_raw()
    raw["backup"] = {"repoPath": SHARED, **backup}
    raw["backupCipherPassphrase"] = PASSPHRASE
    return raw


def secret_keys() -> set[str]:
    return {*base_secret_keys(), "backupCipherPassphrase"}


def nodes_cfg(**backup: Any) -> ClusterConfig:
    return load_cluster_config(nodes_raw(**backup), secret_keys())


def host_cfg() -> ClusterConfig:
    raw = nodes_raw()
    raw["hosts"].append(copy.deepcopy(BACKUP_HOST))
    return load_cluster_config(raw, secret_keys())


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_cluster_config(raw, secret_keys())
    return err.value.problems


# --- config --------------------------------------------------------------------------------


def test_no_backup_host_means_the_nodes_layout() -> None:
    cfg = nodes_cfg()
    assert cfg.backup is not None and cfg.backup.on_nodes and cfg.backup.layout == "nodes"
    assert (cfg.backup.stanza, cfg.backup.repo_path) == ("pgha-lab", SHARED)
    assert host_cfg().backup is not None and not host_cfg().backup.on_nodes  # type: ignore[union-attr]


def test_production_stack_on_the_nodes_loads() -> None:
    raw = nodes_raw(retention={"full": 3}, schedule={"full": "daily"})
    raw["production"] = True
    cfg = load_cluster_config(raw, secret_keys())
    assert cfg.backup is not None and cfg.backup.on_nodes


def test_a_lab_stack_on_the_nodes_generates_the_passphrase() -> None:
    raw = lab_raw()
    raw["backup"] = {"repoPath": "/srv/pgha-shared/pgbackrest"}
    cfg = load_cluster_config(raw, set())
    assert cfg.backup is not None and cfg.backup.on_nodes and cfg.backup.encryption


@pytest.mark.parametrize(("mutate", "key", "fragment"), [
    (lambda raw: raw["backup"].pop("repoPath"), "backup.repoPath",
     "is required when no host has the backup role: the repository is then on the Patroni nodes themselves, "
     "in a directory on shared storage (NFS or similar) mounted at this same path on every Patroni node"),
    (lambda raw: raw["backup"].update(s3={"endpoint": "s3.example.internal", "bucket": "pgbackrest",
                                          "region": "us-east-1", "keyId": "AKIA"}) or raw.update(
        backupS3KeySecret="s3-secret"), "backup.s3", "an S3 repository needs a host with the backup role"),
    (lambda raw: raw.update(restore={"fromStanza": "old", "target": "latest"}), "restore",
     "needs pgha:backup and a host with the backup role"),
    (lambda raw: raw["backup"].update(repoPath="mnt/pgbackrest"), "backup.repoPath", "absolute path"),
], ids=["repo-path-required", "s3-needs-a-host", "restore-needs-a-host", "repo-path-relative"])
def test_bad_nodes_config_names_its_key(mutate: Any, key: str, fragment: str) -> None:
    raw = nodes_raw()
    mutate(raw)
    problems = problems_of(raw)
    assert any(p.startswith(f"pgha:{key}: ") and fragment in p for p in problems), problems


# --- specs ---------------------------------------------------------------------------------


def test_the_repository_host_layout_plans_what_it_did() -> None:
    """A stack with a repository host stores no new input (no `layout`), so upgrading pgha
    shows it no change."""
    cfg = host_cfg()
    node = cfg.with_role("patroni")[0]
    for spec in (specs.backup_repository_spec(cfg), specs.backup_node_spec(cfg, node),
                 specs.backup_stanza_spec(cfg)):
        assert "layout" not in spec
    assert specs.backup_node_spec(cfg, node)["repo_host"] == "10.77.0.15"
    assert specs.backup_stanza_spec(cfg)["repo_user"] == "pgbackrest"
    assert specs.backup_home(cfg).name == "pg5"


def test_the_nodes_layout_plans_the_shared_check_first() -> None:
    cfg = nodes_cfg()
    repo = specs.backup_repository_spec(cfg)
    assert repo["layout"] == "nodes" and repo["repo_path"] == SHARED and repo["repo_user"] == "postgres"
    assert sorted(repo["nodes"]) == ["pg1", "pg2", "pg3"]
    assert repo["nodes"]["pg2"]["host"] == "10.77.0.12"
    assert specs.backup_home(cfg).name == "pg1"


def test_the_nodes_layout_node_holds_the_repository_settings() -> None:
    cfg = nodes_cfg(retention={"full": 3, "diff": 4})
    node = specs.backup_node_spec(cfg, cfg.with_role("patroni")[1])
    assert "repo_host" not in node and "repo_user" not in node
    assert (node["layout"], node["repo_path"], node["encryption"]) == ("nodes", SHARED, "aes-256-cbc")
    text = node_conf(node)
    parsed = configparser.ConfigParser()
    parsed.read_string(text)
    assert dict(parsed["global"]).items() >= {"repo1-type": "posix", "repo1-path": SHARED,
                                              "repo1-retention-full": "3", "repo1-retention-diff": "4",
                                              "start-fast": "y", "archive-async": "y"}.items()
    assert "repo1-host" not in text and "cipher" not in parsed["global"]
    assert dict(parsed["pgha-lab"]) == {"pg1-path": "/var/lib/postgresql/15/pgha-lab", "pg1-port": "5432",
                                        "pg1-socket-path": "/var/run/postgresql"}
    secret = repo_secrets_conf({**node, "secrets": {"cipher_pass": PASSPHRASE}})
    assert f"repo1-cipher-pass={PASSPHRASE}" in secret and "[pgha-lab]" in secret
    raw = nodes_raw(encryption=False)
    raw.pop("backupCipherPassphrase")
    plain = load_cluster_config(raw, secret_keys())
    assert repo_secrets_conf(specs.backup_node_spec(plain, plain.with_role("patroni")[0])) == ""


def test_the_nodes_layout_stanza_runs_as_postgres_with_a_timer_per_node() -> None:
    cfg = nodes_cfg()
    stanza = specs.backup_stanza_spec(cfg)
    assert (stanza["layout"], stanza["repo_user"]) == ("nodes", "postgres")
    assert stanza["repository"] == f"{SHARED} (shared by pg1, pg2, pg3)"
    assert stanza["schedule"] == {"full": "Sun *-*-* 01:00:00", "diff": "Mon..Sat *-*-* 01:00:00"}
    # Archiving and replicas from backups are the same in both layouts.
    assert specs.backup_parameters(cfg) == specs.backup_parameters(host_cfg())
    assert specs.replica_from_backup(cfg) == "/usr/bin/pgbackrest --stanza=pgha-lab --delta restore"


# --- the backup script ---------------------------------------------------------------------


def test_a_nodes_backup_script_checks_its_own_node_leads() -> None:
    raw = nodes_raw()
    raw["tls"] = {"enabled": False}
    stanza = specs.backup_stanza_spec(load_cluster_config(raw, secret_keys()))
    script = backup_script(stanza, "pg2")
    assert 'curl -s -o /dev/null -w \'%{http_code}\' --max-time 3 "http://10.77.0.12:8008/primary"' in script
    assert "is not the leader" in script and "exit 0" in script
    assert "--backup-standby" not in script.replace("--no-backup-standby", "")
    assert "/replica" not in script
    raw["hosts"].append(copy.deepcopy(BACKUP_HOST))
    repo_script = backup_script(specs.backup_stanza_spec(load_cluster_config(raw, secret_keys())), None)
    assert "http://10.77.0.11:8008/replica" in repo_script and "/primary" not in repo_script


@pytest.mark.parametrize(("answer", "runs"), [("200", True), ("503", False), ("000", False)])
def test_the_backup_script_runs_only_where_primary_answers_200(tmp_path: Path, answer: str,
                                                               runs: bool) -> None:
    """The rendered script under sh, with curl and pgbackrest replaced by stubs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(f"#!/bin/sh\nprintf {answer}\n[ {answer} != 000 ]\n")
    (bin_dir / "hostname").write_text("#!/bin/sh\necho pg2\n")
    ran = tmp_path / "ran"
    (bin_dir / "pgbackrest").write_text(f'#!/bin/sh\necho "$@" > {ran}\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    script = backup_script(specs.backup_stanza_spec(nodes_cfg()), "pg2").replace(
        "/usr/bin/pgbackrest", str(bin_dir / "pgbackrest"))
    out = subprocess.run(["sh", "-c", script, "pgha-backup", "diff"], capture_output=True, text=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=False)
    assert out.returncode == 0, out.stderr
    if runs:
        assert ran.read_text().split() == ["--stanza=pgha-lab", "--type=diff", "--no-backup-standby",
                                           "--log-level-console=info", "backup"]
    else:
        assert not ran.exists()
        assert out.stdout.strip() == (f"pgha-backup-pgha-lab: pg2 is not the leader (Patroni's /primary "
                                      f"answered {answer}): no diff backup here, the leader's timer takes it")


# --- the shared-storage check --------------------------------------------------------------


def test_a_shared_path_passes() -> None:
    seen = {"pg2": "tok\nWRITABLE\n", "pg3": "tok\nWRITABLE\n"}
    assert shared_path_problem(SHARED, "postgres", "pg1", "tok", seen) is None
    assert shared_marker("/mnt/pgbackrest/", "pgha-lab") == "/mnt/pgbackrest/.pgha-shared-check-pgha-lab"


def test_a_path_not_shared_names_the_key_and_the_hosts() -> None:
    seen = {"pg2": "WRITABLE\n", "pg3": "an older marker\nWRITABLE\n"}
    why = shared_path_problem(SHARED, "postgres", "pg1", "tok", seen)
    assert why is not None
    assert why.startswith(f"pgha:backup.repoPath {SHARED} is not shared storage: a marker written there by "
                          "postgres on pg1 is not visible on pg2, pg3.")
    assert "mounted at this same path on every Patroni node (pg1, pg2, pg3)" in why
    assert "after a failover" in why


def test_a_shared_path_the_user_cannot_write_is_refused() -> None:
    seen = {"pg2": "tok\nWRITABLE", "pg3": "tok\nREADONLY"}
    why = shared_path_problem(SHARED, "postgres", "pg1", "tok", seen)
    assert why is not None and "is not shared storage: postgres cannot write there on pg3 (" in why
    assert "every Patroni node (pg1, pg2, pg3)" in why
    assert "not visible" not in why


# --- the component as the engine sees it (Pulumi mocks) ------------------------------------


@pytest.fixture()
def mocks() -> Recorder:
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, preview=False)
    return recorder


@pulumi.runtime.test
def test_the_nodes_layout_registers_no_identity(mocks: Recorder, tmp_path: Path) -> Any:
    recorder = mocks
    raw = _lab(tmp_path)
    raw["backup"] = {"repoPath": "/srv/pgha-shared/pgbackrest"}
    cluster = _program(raw)

    def check(_: Any) -> None:
        kinds = {r.name: r.typ.rsplit(":", 1)[-1] for r in recorder.resources if "backup" in r.name}
        assert kinds == {"pgha-lab-backup": "Backup", "pgha-lab-backup-repository": "BackupRepository",
                         "pgha-lab-backup-node-pg1": "BackupNode", "pgha-lab-backup-node-pg2": "BackupNode",
                         "pgha-lab-backup-node-pg3": "BackupNode", "pgha-lab-backup-stanza": "BackupStanza",
                         "pgha-lab-backup-cipher-password": "GeneratedPassword"}, kinds
        repo = recorder.named("pgha-lab-backup-repository")["pgha-lab-backup-repository"].inputs
        assert repo["layout"] == "nodes" and repo["connection"]["host"] == "10.77.0.11"
        assert "secrets" not in repo
        for name in ("pg1", "pg2", "pg3"):
            node = recorder.named(f"pgha-lab-backup-node-{name}")[f"pgha-lab-backup-node-{name}"].inputs
            assert _is_secret(node["secrets"]), node["secrets"]
            assert "repo_key" not in node and node["repo_path"] == "/srv/pgha-shared/pgbackrest"
        stanza = recorder.named("pgha-lab-backup-stanza")["pgha-lab-backup-stanza"].inputs
        assert stanza["layout"] == "nodes" and stanza["repo_user"] == "postgres"

    assert cluster.backup is not None and cluster.backup.stanza is not None
    return cluster.backup.stanza.id.apply(check)


def test_the_writing_node_without_the_mount_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first node writes the marker; when it cannot even create repoPath (the mount point
    alone, owned by root), the message names it and the rule, as for any other node."""
    from components.providers import backup_hosts

    class Refusing:
        def __init__(self, *_: Any, **__: Any) -> None:
            pass

        def __enter__(self) -> Refusing:
            return self

        def __exit__(self, *_: Any) -> None:
            return None

        def run(self, *_: Any, **__: Any) -> Any:
            return Result(1, "", "mkdir: cannot create directory: Permission denied")

    props = specs.backup_repository_spec(nodes_cfg())
    monkeypatch.setattr(backup_hosts, "Ssh", Refusing)
    with pytest.raises(backup_hosts.SshError) as err:
        backup_hosts.check_shared_path(props)
    assert str(err.value).startswith(f"10.77.0.11: check pgha:backup.repoPath (shared storage): "
                                     f"pgha:backup.repoPath {SHARED} is not usable on pg1: postgres cannot "
                                     "create or write it (mkdir: cannot create directory: Permission "
                                     "denied). With no host in the backup role")



def test_the_review_describes_the_nodes_layout() -> None:
    """What a reviewer reads for the created resources, from the planned inputs."""
    from review.preview import Step
    from review.resources import describe

    cfg = nodes_cfg()
    repo = Step(op="create", urn="urn:x::pgha-lab-backup-repository", kind="BackupRepository",
                name="pgha-lab-backup-repository", new_inputs=specs.backup_repository_spec(cfg))
    pg2 = cfg.with_role("patroni")[1]
    node = Step(op="create", urn="urn:x::pgha-lab-backup-node-pg2", kind="BackupNode",
                name="pgha-lab-backup-node-pg2", new_inputs=specs.backup_node_spec(cfg, pg2))
    assert describe(repo) == f"stanza pgha-lab in {SHARED}, shared storage on pg1, pg2, pg3 (checked)"
    assert describe(node) == f"archive_command to {SHARED} (shared), aes-256-cbc, keeps 2 full backups"


def test_with_tls_a_nodes_backup_script_asks_its_node_over_https_with_its_certificate() -> None:
    """pgha:tls (on by default): the leader check verifies the node's REST API against the CA and
    shows the node's certificate (the script runs as postgres, who owns the key)."""
    script = backup_script(specs.backup_stanza_spec(nodes_cfg()), "pg2")
    assert ("curl -s --cacert /etc/patroni/tls/ca.crt --cert /etc/patroni/tls/node.crt --key "
            "/etc/patroni/tls/node.key -o /dev/null -w '%{http_code}' --max-time 3 "
            '"https://10.77.0.12:8008/primary"') in script



def test_with_tls_a_repository_hosts_script_verifies_the_ca_and_shows_its_own_certificate() -> None:
    """On a repository host the check for a healthy standby verifies the nodes' REST API against
    the CA in the host's own 0700 directory; with restApiVerifyClient required it also shows the
    repository host's certificate (a client certificate of its own, 0600 pgbackrest)."""
    cfg = host_cfg()
    script = backup_script(specs.backup_stanza_spec(cfg), None)
    assert ("curl -fs --cacert /etc/pgbackrest/pgha-tls/ca.crt -o /dev/null --max-time 3 "
            '"$url"') in script
    assert "https://10.77.0.12:8008/replica" in script
    [files] = tls_file_sets(cfg, cfg.hosts[-1])
    assert (files.service, files.certificate) == ("pgbackrest", None)
    assert files.directory == "/etc/pgbackrest/pgha-tls"
    assert [(f.path, f.mode, f.owner) for f in files.files] == [
        ("/etc/pgbackrest/pgha-tls/ca.crt", "0644", "pgbackrest")]
    assert not any(name.endswith("-pgbackrest") for name in planned_certificates(cfg))

    raw = nodes_raw()
    raw["hosts"].append(copy.deepcopy(BACKUP_HOST))
    raw["tls"] = {"restApiVerifyClient": "required"}
    required = load_cluster_config(raw, secret_keys())
    script = backup_script(specs.backup_stanza_spec(required), None)
    assert ("--cacert /etc/pgbackrest/pgha-tls/ca.crt --cert /etc/pgbackrest/pgha-tls/client.crt "
            "--key /etc/pgbackrest/pgha-tls/client.key") in script
    [files] = tls_file_sets(required, required.hosts[-1])
    repo = required.hosts[-1].name
    assert files.certificate == f"{repo}-pgbackrest"
    assert ("/etc/pgbackrest/pgha-tls/client.key", "0600", "pgbackrest") in [
        (f.path, f.mode, f.owner) for f in files.files]
    cert = planned_certificates(required)[f"{repo}-pgbackrest"].request
    assert cert.client and not cert.server

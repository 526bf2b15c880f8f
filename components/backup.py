"""Backup: pgBackRest for the cluster (pgha:backup), and the restore of a new cluster from
another stanza (pgha:restore).

Two layouts. With a host that has the `backup` role, the repository lives there and runs the
backups over SSH to the database hosts (pgBackRest's "dedicated repository host"). Order in an `up`:

  BackupIdentity (repository host, each node)    users and SSH keys, made on the hosts
    -> BackupRepository, BackupNode per node       pgbackrest.conf, authorized_keys, known_hosts
    -> [BackupRestore]                             pgha:restore only: checks, and the preview's plan
    -> Patroni (bootstrap, nodes)                  archive_command works from the first WAL segment
    -> PatroniDynamicConfig                        archive_mode on (a rolling restart when added)
    -> BackupStanza                                stanza-create, check, timers; the `backup` output

With no such host ("nodes" layout), the repository is backup.repoPath on the Patroni nodes,
shared storage mounted at the same path on every node; no SSH between hosts, no identities:

  BackupRepository                               the path is one shared directory on every node
    -> BackupNode per node                         pgbackrest.conf (repo1-path local), the passphrase
    -> Patroni, PatroniDynamicConfig               as above
    -> BackupStanza                                stanza-create and check on the leader; a timer on
                                                   every node, whose backup runs on the leader only
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import Resource

from components import specs
from components.certificates import ClusterCertificates
from components.command_connection import FileReader
from components.config import BACKUP_SECRET, S3_SECRET, ClusterConfig
from components.providers.backup_hosts import (
    BackupIdentityProvider,
    BackupNodeProvider,
    BackupRepositoryProvider,
)
from components.providers.backup_restore import BackupRestoreProvider
from components.providers.backup_stanza import BackupStanzaProvider
from components.resources import GeneratedPassword
from components.secrets import ClusterSecrets
from components.tls_plan import tls_file_sets

SECRET_OUTPUTS = ["secrets", "ssh_private_key"]


def _opts(opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    secret = pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS)
    return pulumi.ResourceOptions.merge(secret, opts) if opts else secret


class BackupIdentity(Resource, module="pgha", name="BackupIdentity"):
    public_key: pulumi.Output[str]
    host_key: pulumi.Output[str]
    pgbackrest_version: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outs = {"public_key": None, "host_key": None, "pgbackrest_version": None}
        super().__init__(BackupIdentityProvider(), name, {**outs, **props}, _opts(opts))


class BackupRepository(Resource, module="pgha", name="BackupRepository"):
    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(BackupRepositoryProvider(), name, {"pgbackrest_version": None, **props}, _opts(opts))


class BackupNode(Resource, module="pgha", name="BackupNode"):
    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(BackupNodeProvider(), name, props, _opts(opts))


class BackupStanza(Resource, module="pgha", name="BackupStanza"):
    status: pulumi.Output[dict[str, Any]]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(BackupStanzaProvider(), name, {"status": None, **props}, _opts(opts))


class BackupRestore(Resource, module="pgha", name="BackupRestore"):
    backup_set: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        outs = {"backup_set": None, "checked_at": None}
        super().__init__(BackupRestoreProvider(), name, {**outs, **props}, _opts(opts))


def cipher_passphrase(cfg: ClusterConfig, raw: dict[str, Any],
                      parent: pulumi.Resource) -> pulumi.Output[str] | None:
    """pgha:backupCipherPassphrase, or (labs, pgha:generatePasswords) one generated into the state."""
    assert cfg.backup is not None
    if not cfg.backup.encryption:
        return None
    if raw.get(BACKUP_SECRET):
        return pulumi.Output.secret(str(raw[BACKUP_SECRET]))
    return GeneratedPassword(f"{cfg.scope}-backup-cipher-password", "backup-cipher",
                             pulumi.ResourceOptions(parent=parent)).value


class Backup(pulumi.ComponentResource):
    """Everything pgBackRest needs before Patroni starts; `add_stanza` adds what comes after."""

    prerequisites: list[pulumi.Resource]
    status: pulumi.Output[Any] | None
    repository: BackupRepository
    nodes: dict[str, BackupNode]

    def __init__(self, name: str, cfg: ClusterConfig, raw: dict[str, Any], secrets: ClusterSecrets,
                 guard: pulumi.Resource, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:index:Backup", name, None, opts)
        assert cfg.backup is not None
        self.cfg = cfg
        self.secrets = secrets
        self.repo_connection = specs.connection(specs.backup_home(cfg))
        self.restore: BackupRestore | None = None
        self.stanza: BackupStanza | None = None
        self.status = None
        if cfg.backup.on_nodes:
            self._on_nodes(raw, guard)
            return
        repo_host = specs.backup_host(cfg)
        after_guard = pulumi.ResourceOptions(parent=self, depends_on=[guard])

        self.identities: dict[str, BackupIdentity] = {}
        for host in (repo_host, *cfg.with_role("patroni")):
            self.identities[host.name] = BackupIdentity(
                f"{cfg.scope}-backup-identity-{host.name}",
                self._with_key({"connection": specs.connection(host),
                                **specs.backup_identity_spec(cfg, host)}),
                after_guard)
        repo_identity = self.identities[repo_host.name]
        nodes = cfg.with_role("patroni")

        repo_props: dict[str, Any] = {
            "connection": self.repo_connection, **specs.backup_repository_spec(cfg),
            "repo_user": specs.BACKUP_USER,
            "node_keys": {h.name: self.identities[h.name].public_key for h in nodes},
            "node_host_keys": {h.name: self.identities[h.name].host_key for h in nodes},
        }
        passphrase = cipher_passphrase(cfg, raw, self)
        s3_secret = pulumi.Output.secret(str(raw[S3_SECRET])) if cfg.backup.s3 is not None else None
        if passphrase is not None or s3_secret is not None:
            repo_props["secrets"] = pulumi.Output.secret(pulumi.Output.all(passphrase, s3_secret).apply(
                lambda both: {k: v for k, v in (("cipher_pass", both[0]), ("s3_key_secret", both[1])) if v}))
        ignore: list[str] = []
        if cfg.backup.s3 is not None and cfg.backup.s3.ca_file:
            # The CA's certificate (public) travels as an input; a preview on a machine without the
            # file (a pull request's CI job) keeps the stored one.
            reader = FileReader(dry_run=pulumi.runtime.is_dry_run())
            ca = reader.read(cfg.backup.s3.ca_file, "pgha:backup.s3.caFile", "the S3 CA certificate")
            if ca is None:
                ignore.append("s3_ca")
            repo_props["s3_ca"] = ca or ""
        self.repository = BackupRepository(f"{cfg.scope}-backup-repository", self._with_key(repo_props),
                                           pulumi.ResourceOptions(parent=self, ignore_changes=ignore))

        self.nodes = {}
        for host in nodes:
            self.nodes[host.name] = BackupNode(
                f"{cfg.scope}-backup-node-{host.name}",
                self._with_key({"connection": specs.connection(host), **specs.backup_node_spec(cfg, host),
                                "repo_key": repo_identity.public_key,
                                "repo_host_key": repo_identity.host_key}),
                pulumi.ResourceOptions(parent=self, depends_on=[self.identities[host.name]]))

        self.prerequisites = [self.repository, *self.nodes.values()]
        if cfg.restore is not None:
            self.restore = BackupRestore(
                f"{cfg.scope}-restore",
                self._with_key({"connection": self.repo_connection, **specs.backup_restore_spec(cfg)}),
                pulumi.ResourceOptions(parent=self, depends_on=[self.repository]))
            self.prerequisites.append(self.restore)

    def _on_nodes(self, raw: dict[str, Any], guard: pulumi.Resource) -> None:
        """The nodes layout: the shared path checked first, then each node's configuration
        (with the cipher passphrase in its own 0600 file: every node writes the repository)."""
        cfg = self.cfg
        self.repository = BackupRepository(
            f"{cfg.scope}-backup-repository",
            self._with_key({"connection": self.repo_connection, **specs.backup_repository_spec(cfg)}),
            pulumi.ResourceOptions(parent=self, depends_on=[guard]))
        passphrase = cipher_passphrase(cfg, raw, self)
        self.nodes = {}
        for host in cfg.with_role("patroni"):
            props: dict[str, Any] = {"connection": specs.connection(host),
                                     **specs.backup_node_spec(cfg, host)}
            if passphrase is not None:
                props["secrets"] = pulumi.Output.secret(passphrase.apply(lambda p: {"cipher_pass": p}))
            self.nodes[host.name] = BackupNode(
                f"{cfg.scope}-backup-node-{host.name}", self._with_key(props),
                pulumi.ResourceOptions(parent=self, depends_on=[self.repository]))
        self.prerequisites = [self.repository, *self.nodes.values()]

    def _with_key(self, props: dict[str, Any]) -> dict[str, Any]:
        if self.secrets.ssh_private_key is not None:
            props["ssh_private_key"] = self.secrets.ssh_private_key
        return props

    def add_stanza(self, after: list[pulumi.Resource],
                   tls: ClusterCertificates | None = None) -> BackupStanza:
        """The stanza, its checks and timers, once the cluster runs with archive_mode on. With
        pgha:tls, pgha's calls to Patroni show its client identity, and a repository host gets the
        files its backup script's curl needs (tls_plan.backup_host_tls) before the script."""
        cfg = self.cfg
        client = {"tls_client": tls.client_tls()} if tls is not None else {}
        files: list[pulumi.Resource] = []
        if tls is not None and not cfg.backup.on_nodes:
            host = specs.backup_host(cfg)
            files = [tls.deliver(f"{cfg.scope}-backup-tls-{host.name}", host, file_set,
                                 self.repo_connection, self.secrets.ssh_private_key,
                                 pulumi.ResourceOptions(parent=self, depends_on=[
                                     self.repository, *tls.client_certificate_after(file_set)]))
                     for file_set in tls_file_sets(cfg, host) if file_set.service == "pgbackrest"]
        self.stanza = BackupStanza(
            f"{cfg.scope}-backup-stanza",
            self._with_key({"connection": self.repo_connection, **specs.backup_stanza_spec(cfg), **client}),
            pulumi.ResourceOptions(parent=self, depends_on=[*self.prerequisites, *after, *files]))
        self.status = self.stanza.status
        self.register_outputs({"status": self.status})
        return self.stanza

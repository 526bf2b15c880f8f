"""PostgresHaCluster: the runbook's whole cluster, etcd -> Patroni -> HAProxy."""

from __future__ import annotations

from typing import Any

import pulumi

from components.backup import Backup
from components.certificates import ClusterCertificates
from components.config import ClusterConfig
from components.etcd import EtcdCluster
from components.haproxy import HAProxy
from components.patroni import PatroniClusterComponent
from components.secrets import cluster_secrets


class PostgresHaCluster(pulumi.ComponentResource):
    def __init__(self, cfg: ClusterConfig, raw_config: dict[str, Any],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgha:index:PostgresHaCluster", cfg.scope, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        secrets = cluster_secrets(cfg, raw_config, parent=self)
        self.secrets = secrets
        # pgha:tls: the CA and the certificates, before anything that uses them. With TLS off
        # there is no such resource at all (the stack stays as it was before pgha:tls).
        self.tls = (ClusterCertificates(f"{cfg.scope}-tls", cfg, raw_config, child)
                    if cfg.tls.enabled else None)
        if self.tls is not None:
            self.tls.distribute_trust(cfg, secrets.ssh_private_key)
        self.etcd = EtcdCluster(f"{cfg.scope}-etcd", cfg, secrets, child, self.tls)
        etcd_members = list(self.etcd.members.values())
        # pgha:backup: pgBackRest's configuration and SSH keys are in place before Patroni
        # starts (archiving from the first WAL segment; a restore bootstraps from them).
        self.backup = Backup(f"{cfg.scope}-backup", cfg, raw_config, secrets, self.etcd.guard,
                             child) if cfg.backup is not None else None
        before_patroni = self.backup.prerequisites if self.backup is not None else []
        balancers: list[HAProxy] = []

        def balancer_tls_files() -> list[pulumi.Resource]:
            # HAProxy's CA file (a move to TLS checks each node over https as soon as it serves
            # it): delivered after Patroni's certificate files, before Patroni's nodes.
            balancers.append(HAProxy(f"{cfg.scope}-haproxy", cfg, secrets, child, self.tls))
            return [f for files in balancers[0].tls_files.values() for f in files]

        self.patroni = PatroniClusterComponent(f"{cfg.scope}-patroni", cfg, secrets,
                                               etcd_members + before_patroni, self.etcd.guard, child,
                                               self.tls, self.etcd.tls_move, balancer_tls_files)
        if self.backup is not None:
            self.backup.add_stanza([self.patroni.dynamic_config], self.tls)
        if not balancers:
            balancer_tls_files()
        self.haproxy = balancers[0]
        self.haproxy.balance(self.patroni.leader_ready)
        self.register_outputs({
            "primary": self.haproxy.primary_endpoints,
            "replicas": self.haproxy.replica_endpoints,
            "members": self.patroni.members,
            **({"backup": self.backup.status} if self.backup is not None else {}),
            **({"tlsCa": self.tls.trust_pem, "certificateExpiry": self.tls.expiry} if self.tls else {}),
        })

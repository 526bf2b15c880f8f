"""EtcdCluster: the DCS, one EtcdMember per host with the etcd role."""

from __future__ import annotations

from typing import Any

import pulumi

from components import specs
from components.certificates import ClusterCertificates
from components.config import ClusterConfig
from components.resources import EtcdMember, EtcdTlsMove, MembershipGuard
from components.secrets import ClusterSecrets
from components.tls_plan import tls_file_sets


class EtcdCluster(pulumi.ComponentResource):
    members: dict[str, EtcdMember]

    def __init__(self, name: str, cfg: ClusterConfig, secrets: ClusterSecrets,
                 opts: pulumi.ResourceOptions | None = None, tls: ClusterCertificates | None = None) -> None:
        super().__init__("pgha:index:EtcdCluster", name, None, opts)
        self.members = {}
        self.tls_files: dict[str, pulumi.Resource] = {}
        self.guard = guard = MembershipGuard(f"{cfg.scope}-etcd-membership", {
            "scope": cfg.scope, "etcd_members": [h.name for h in cfg.with_role("etcd")]},
            pulumi.ResourceOptions(parent=self))
        before_members: list[pulumi.Resource] = [guard]
        self.tls_move: EtcdTlsMove | None = None
        if tls is not None:
            # The members' certificate files, then a plaintext cluster's move to TLS (nothing on a
            # new cluster), before the first member's create or update.
            for host in cfg.with_role("etcd"):
                for files in tls_file_sets(cfg, host):
                    if files.service == "etcd":
                        self.tls_files[host.name] = tls.deliver(
                            f"{cfg.scope}-etcd-tls-{host.name}", host, files, specs.connection(host),
                            secrets.ssh_private_key, pulumi.ResourceOptions(parent=self, depends_on=[guard]))
            self.tls_move = EtcdTlsMove(f"{cfg.scope}-etcd-tls-move", _move_props(cfg, secrets, tls),
                                        pulumi.ResourceOptions(parent=self,
                                                               depends_on=[guard, *self.tls_files.values()]))
            before_members.append(self.tls_move)
        for host in cfg.with_role("etcd"):
            props = {"connection": specs.connection(host), **specs.etcd_member_spec(cfg, host)}
            if secrets.ssh_private_key is not None:
                props["ssh_private_key"] = secrets.ssh_private_key
            before: list[pulumi.Resource] = []
            if tls is not None:
                # The member's certificate files are on the host before etcd starts with them.
                props["tls_client"] = tls.client_tls()
                if host.name in self.tls_files:
                    before.append(self.tls_files[host.name])
            # No member waits for another: the members of a new cluster start together, and
            # the provider makes every other membership change one at a time (etcd allows one
            # learner, and quorum must hold between steps: see providers/etcd_member.py).
            member = EtcdMember(f"{cfg.scope}-etcd-{host.name}", props,
                                pulumi.ResourceOptions(parent=self, depends_on=before_members + before,
                                                       # Founding peers: read only by a new cluster.
                                                       ignore_changes=["bootstrap_cluster"]))
            self.members[host.name] = member
        self.endpoints = specs.etcd_client_urls(cfg)
        self.register_outputs({"endpoints": self.endpoints})


def _move_props(cfg: ClusterConfig, secrets: ClusterSecrets, tls: ClusterCertificates) -> dict[str, Any]:
    """EtcdTlsMove's inputs: every etcd member as EtcdMember has it (the move writes the same
    /etc/default/etcd), and the Patroni nodes it pauses first (REST API over http, the password
    for unsafe endpoints)."""
    props: dict[str, Any] = {
        "scope": cfg.scope,
        "members": [{"connection": specs.connection(h), **specs.etcd_member_spec(cfg, h)}
                    for h in cfg.with_role("etcd")],
        "nodes": [{"name": h.name, "address": h.address, "restapi_port": cfg.patroni.restapi_port,
                   "connection": specs.connection(h)} for h in cfg.with_role("patroni")],
        "restapi_username": specs.RESTAPI_USERNAME,
        "secrets": pulumi.Output.secret(secrets.patroni().apply(lambda p: {"restapi": p["restapi"]})),
        "tls_client": tls.client_tls(),
    }
    if secrets.ssh_private_key is not None:
        props["ssh_private_key"] = secrets.ssh_private_key
    return props

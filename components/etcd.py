"""EtcdCluster: the DCS, one EtcdMember per host with the etcd role."""

from __future__ import annotations

import pulumi

from components import specs
from components.certificates import ClusterCertificates
from components.config import ClusterConfig
from components.resources import EtcdMember, MembershipGuard
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
        previous: list[pulumi.Resource] = [guard]
        for host in cfg.with_role("etcd"):
            props = {"connection": specs.connection(host), **specs.etcd_member_spec(cfg, host)}
            if secrets.ssh_private_key is not None:
                props["ssh_private_key"] = secrets.ssh_private_key
            before: list[pulumi.Resource] = []
            if tls is not None:
                # The member's certificate files are on the host before etcd starts with them.
                props["tls_client"] = tls.client_tls()
                for files in tls_file_sets(cfg, host):
                    if files.service == "etcd":
                        self.tls_files[host.name] = tls.deliver(
                            f"{cfg.scope}-etcd-tls-{host.name}", host, files, specs.connection(host),
                            secrets.ssh_private_key, pulumi.ResourceOptions(parent=self, depends_on=[guard]))
                        before.append(self.tls_files[host.name])
            # One membership change at a time (etcd allows one learner, and quorum
            # must hold between steps): each member waits for the one before it.
            member = EtcdMember(f"{cfg.scope}-etcd-{host.name}", props,
                                pulumi.ResourceOptions(parent=self, depends_on=previous + before,
                                                       # Founding peers: read only by a new cluster.
                                                       ignore_changes=["bootstrap_cluster"]))
            self.members[host.name] = member
            previous = [member]
        self.endpoints = specs.etcd_client_urls(cfg)
        self.register_outputs({"endpoints": self.endpoints})

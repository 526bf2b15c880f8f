"""PatroniCluster: host preparation, the cluster's DCS entry, one PatroniNode
per host, and the database roles created on the leader."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pulumi

from components import render, specs
from components.certificates import ClusterCertificates
from components.command_connection import FileReader, connection_args
from components.config import ClusterConfig, Host
from components.host_install import PatroniHostInstall, PatroniHostInstallArgs, wheelhouse_archive
from components.resources import (
    DatabaseRole,
    EtcdTlsMove,
    PatroniBootstrap,
    PatroniCluster,
    PatroniDynamicConfig,
    PatroniLeader,
    PatroniNode,
    PatroniTlsMove,
)
from components.secrets import ClusterSecrets
from components.tls_plan import tls_file_sets


def _ssh_key_prefix(cfg: ClusterConfig, host: Host) -> str:
    """The stack key that sets a host's SSH settings, for errors."""
    if host.ssh == cfg.ssh:
        return "pgha:ssh"
    return f"pgha:hosts[{cfg.hosts.index(host)}].ssh"


# What `depends_on` takes: resources, or an output that resolves to them.
Dependencies = pulumi.Input[Sequence[pulumi.Input[pulumi.Resource]]]


def _install(cfg: ClusterConfig, host: Host, secrets: ClusterSecrets, reader: FileReader,
             guard: pulumi.Resource, after: list[pulumi.Resource]) -> PatroniHostInstallArgs:
    spec = specs.patroni_install_spec(cfg, host)
    plan = specs.patroni_install_plan(cfg, host)
    return PatroniHostInstallArgs(
        plan=plan, scope=cfg.scope,
        connection=connection_args(host, secrets.ssh_private_key, reader, _ssh_key_prefix(cfg, host)),
        host_connection=specs.connection(host), ssh_private_key=secrets.ssh_private_key,
        unit=render.patroni_unit({**spec, "config_file": f"{plan.config_dir}/patroni.yml"}),
        wheelhouse=wheelhouse_archive(plan.wheelhouse, reader) if plan.wheelhouse else None,
        # A refused membership change must stop before any host is touched.
        depends_on=[guard, *after],
        host_key_known=os.access(os.path.expanduser(host.ssh.known_hosts_file), os.R_OK),
    )


def _with_key(props: dict[str, Any], secrets: ClusterSecrets) -> dict[str, Any]:
    if secrets.ssh_private_key is not None:
        props["ssh_private_key"] = secrets.ssh_private_key
    return props


class PatroniClusterComponent(pulumi.ComponentResource):
    nodes: dict[str, PatroniNode]

    def __init__(self, name: str, cfg: ClusterConfig, secrets: ClusterSecrets,
                 depends_on: list[pulumi.Resource], guard: pulumi.Resource,
                 opts: pulumi.ResourceOptions | None = None, tls: ClusterCertificates | None = None,
                 etcd_tls_move: EtcdTlsMove | None = None,
                 balancer_tls_files: Callable[[], list[pulumi.Resource]] | None = None) -> None:
        super().__init__("pgha:index:PatroniCluster", name, None, opts)
        patroni_secrets = secrets.patroni()
        # pgha:tls: pgha's client certificate for its calls to etcd and Patroni.
        client = {"tls_client": tls.client_tls()} if tls is not None else {}

        # Created after etcd and deleted before it; deleted after every node,
        # when it removes the cluster's keys from the DCS.
        self.cluster = PatroniCluster(
            f"{cfg.scope}-cluster",
            {**specs.patroni_cluster_spec(cfg), "secrets": patroni_secrets, **client},
            pulumi.ResourceOptions(parent=self, depends_on=depends_on),
        )

        self.installs: dict[str, PatroniHostInstall] = {}
        self.nodes = {}
        first = cfg.with_role("patroni")[0]

        def node_props(host: Host) -> dict[str, Any]:
            return _with_key({"connection": specs.connection(host), **specs.patroni_node_spec(cfg, host),
                              "secrets": patroni_secrets, **client}, secrets)

        reader = FileReader(dry_run=pulumi.runtime.is_dry_run())
        for host in cfg.with_role("patroni"):
            # pulumi-command resources: the venv, Patroni, the distro's services, the unit. The
            # first host's install comes first, the others' once its Patroni is installed: the
            # bootstrap waits for the first host alone, and the others can only clone once it
            # leads. A new cluster leads sooner when its install does not share the CPU, or the
            # engine's parallelism (`pulumi up --parallel`, 4 per CPU), with the others'.
            after = [] if host.name == first.name else [self.installs[first.name].patroni]
            self.installs[host.name] = PatroniHostInstall(
                f"{cfg.scope}-install-{host.name}", _install(cfg, host, secrets, reader, guard, after),
                pulumi.ResourceOptions(parent=self),
            )
        # pgha:tls: the node's certificate files, on the host before Patroni starts with them.
        self.tls_files: dict[str, list[pulumi.Resource]] = {h.name: [] for h in cfg.with_role("patroni")}
        if tls is not None:
            # One host after another: a renewal reloads one node's Patroni at a time.
            previous: list[pulumi.Resource] = []
            for host in cfg.with_role("patroni"):
                self.tls_files[host.name] = previous = [
                    tls.deliver(f"{cfg.scope}-patroni-tls-{host.name}", host, files, specs.connection(host),
                                secrets.ssh_private_key,
                                pulumi.ResourceOptions(parent=self,
                                                       depends_on=[self.installs[host.name], *previous]),
                                extra={"rest_endpoint": f"{host.address}:{cfg.patroni.restapi_port}"})
                    for files in tls_file_sets(cfg, host) if files.service == "patroni"]
        # pgha:tls: a plaintext cluster's move to TLS (its etcd moved first) restarts every Patroni
        # with TLS before any node's update; nothing on a new cluster or one on TLS already.
        moved: list[pulumi.Resource] = []
        self.tls_move: PatroniTlsMove | None = None
        if tls is not None and etcd_tls_move is not None:
            balancer_files = balancer_tls_files() if balancer_tls_files is not None else []
            move_props: dict[str, Any] = {
                "scope": cfg.scope, "etcd_found": etcd_tls_move.found,
                "nodes": [node_props(h) for h in cfg.with_role("patroni")],
                "haproxy": [{"connection": specs.connection(h), **specs.haproxy_spec(cfg)}
                            for h in cfg.with_role("haproxy")],
                **client}
            self.tls_move = PatroniTlsMove(
                f"{cfg.scope}-patroni-tls-move", _with_key(move_props, secrets),
                pulumi.ResourceOptions(parent=self, depends_on=[
                    etcd_tls_move, self.cluster, *depends_on, *self.installs.values(),
                    *[f for files in self.tls_files.values() for f in files], *balancer_files]))
            moved = [self.tls_move]

        def after_move(before: list[pulumi.Resource]) -> Dependencies:
            """`before`, then the move to TLS when there is one to wait for. The move waits for
            every host's install and certificate files; a new cluster has nothing to move (the
            etcd step found no etcd), and its bootstrap and nodes do not wait for the others'."""
            if etcd_tls_move is None or not moved:
                return before
            return etcd_tls_move.found.apply(lambda found: before if found == "new" else [*before, *moved])

        # A new cluster's bootstrap begins on the first host before any node's create begins;
        # an existing one is left alone (see providers/patroni_bootstrap.py).
        self.bootstrap = PatroniBootstrap(
            f"{cfg.scope}-bootstrap", node_props(first),
            pulumi.ResourceOptions(parent=self, depends_on=after_move(
                [self.installs[first.name], self.cluster, *depends_on, *self.tls_files[first.name]])),
        )
        for host in cfg.with_role("patroni"):
            # A node added later starts once the leader's pg_hba admits it (checked by
            # the node itself, while existing nodes reload in parallel).
            self.nodes[host.name] = PatroniNode(
                f"{cfg.scope}-node-{host.name}", node_props(host),
                pulumi.ResourceOptions(parent=self, depends_on=after_move(
                    [self.installs[host.name], self.cluster, self.bootstrap, *depends_on,
                     *self.tls_files[host.name]]),
                                       # Seeds a new cluster only: never a change of a running node.
                                       ignore_changes=["bootstrap", "bootstrap_leader"]),
            )

        nodes = list(self.nodes.values())
        # What needs only a running leader (HAProxy's config, roles) waits for the first
        # host's node (a new cluster's leader), not for every replica's copy.
        self.leader_ready: list[pulumi.Resource] = [self.bootstrap, self.nodes[first.name]]
        self.dynamic_config = PatroniDynamicConfig(
            f"{cfg.scope}-dynamic-config",
            {**specs.dynamic_config_spec(cfg), "secrets": patroni_secrets, **client},
            pulumi.ResourceOptions(parent=self, depends_on=nodes),
        )
        self.leader = PatroniLeader(
            f"{cfg.scope}-leader", {**specs.leader_spec(cfg), "secrets": patroni_secrets, **client},
            pulumi.ResourceOptions(parent=self, depends_on=[self.dynamic_config]),
        )

        nodes_info = {
            host.name: {"connection": specs.connection(host),
                        "api_url": specs.patroni_api_url(cfg, host)}
            for host in cfg.with_role("patroni")
        }
        self.roles: dict[str, DatabaseRole] = {}
        for role in cfg.roles:
            props: dict[str, Any] = {
                "scope": cfg.scope, "name": role.name, "options": list(role.options), "login": role.login,
                "nodes": nodes_info, "default_connection": specs.default_connection(cfg),
                "bin_dir": cfg.postgresql.bin_dir,
                "socket_dir": "/var/run/postgresql", "pg_port": cfg.postgresql.port, **client,
            }
            if role.name in secrets.role_passwords:
                props["secrets"] = pulumi.Output.secret(
                    secrets.role_passwords[role.name].apply(lambda p: {"password": p}))
            self.roles[role.name] = DatabaseRole(
                f"{cfg.scope}-role-{role.name}", _with_key(props, secrets),
                pulumi.ResourceOptions(parent=self, depends_on=self.leader_ready),
            )

        self.members = pulumi.Output.all(*[
            pulumi.Output.all(name=name, role=node.role, timeline=node.timeline)
            for name, node in self.nodes.items()
        ])
        self.register_outputs({"members": self.members})

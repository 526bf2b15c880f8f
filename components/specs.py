"""Per-resource inputs planned from the config model (pure).

What goes into a resource's inputs is what `pulumi preview --diff` shows a
reviewer, so each spec holds readable, non-secret properties; passwords travel
separately as secret inputs.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from components import pg_params
from components.config import ClusterConfig, Host, SshSettings

RESTAPI_USERNAME = "patroni"
SCRAM = "scram-sha-256"


def _host_cidr(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{address}/{32 if ip.version == 4 else 128}"


def _hba(kind: str, database: str, user: str, address: str, method: str = SCRAM) -> str:
    return f"{kind:<7} {database:<15} {user:<15} {address:<23} {method}".rstrip()


# pg_hba is keyed so that a reviewer's diff names what a line is for: adding a host
# adds its own lines (`+ pg_hba."20 replication pg5"`) instead of shifting a list.
# Keys sort in file order; within a group the order does not matter (one address each).
HBA_REPLICATION = "20"
HBA_REWIND = "30"
HBA_BALANCER = "40"
HBA_CLIENT = "50"
HBA_EXTRA = "60"


def pg_hba(cfg: ClusterConfig) -> dict[str, str]:
    """Runbook pg_hba, but scram-sha-256 everywhere and replication only from members."""
    pg = cfg.postgresql
    entries = {
        "01 local superuser": _hba("local", "all", pg.superuser, "", "peer"),
        "02 local users": _hba("local", "all", "all", "", SCRAM),
        "03 loopback ipv4": _hba("host", "all", "all", "127.0.0.1/32"),
        "04 loopback ipv6": _hba("host", "all", "all", "::1/128"),
        "05 replication loopback ipv4": _hba("host", "replication", pg.replication_user, "127.0.0.1/32"),
        "06 replication loopback ipv6": _hba("host", "replication", pg.replication_user, "::1/128"),
    }
    for host in cfg.with_role("patroni"):
        entries[f"{HBA_REPLICATION} replication {host.name}"] = _hba(
            "host", "replication", pg.replication_user, _host_cidr(host.address))
        entries[f"{HBA_REWIND} rewind {host.name}"] = _hba("host", "all", pg.rewind_user,
                                                          _host_cidr(host.address))
    for host in cfg.with_role("haproxy"):
        entries[f"{HBA_BALANCER} haproxy {host.name}"] = _hba("host", "all", "all", _host_cidr(host.address))
    for cidr in cfg.client_cidrs:
        entries[f"{HBA_CLIENT} clients {cidr}"] = _hba("host", "all", "all", cidr)
    for i, line in enumerate(cfg.pg_hba_extra, start=1):
        entries[f"{HBA_EXTRA} pgHba[{i - 1}]"] = " ".join(line.split())
    return entries


def hba_lines(pg_hba_input: dict[str, str] | list[str]) -> list[str]:
    """The lines of pg_hba in file order, from the keyed input (or the list stacks before
    the keyed form stored)."""
    if isinstance(pg_hba_input, dict):
        return [pg_hba_input[k] for k in sorted(pg_hba_input, key=_hba_order)]
    return list(pg_hba_input)


def _hba_order(key: str) -> tuple[str, int, str]:
    # pgHba[10] after pgHba[9]: extra lines keep the order the stack gives them.
    group, _, rest = key.partition(" ")
    if rest.startswith("pgHba[") and rest.endswith("]"):
        return group, int(rest[6:-1]), ""
    return group, 0, rest


def etcd_client_endpoints(cfg: ClusterConfig) -> list[str]:
    return [f"{h.address}:{cfg.etcd.client_port}" for h in cfg.with_role("etcd")]


def _ssh_props(ssh: SshSettings) -> dict[str, Any]:
    props: dict[str, Any] = {
        "port": ssh.port, "user": ssh.user, "private_key_file": ssh.private_key_file,
        "known_hosts_file": ssh.known_hosts_file, "strict_host_keys": ssh.strict_host_keys,
    }
    if ssh.bastion:
        props["bastion"] = {"host": ssh.bastion.address, "port": ssh.bastion.port, "user": ssh.bastion.user}
    return props


def connection(host: Host) -> dict[str, Any]:
    """How providers reach a host; part of every host resource's inputs."""
    return {"host": host.address, **_ssh_props(host.ssh)}


def default_connection(cfg: ClusterConfig) -> dict[str, Any]:
    """The stack-wide SSH settings, for a host known only from the DCS."""
    assert cfg.ssh is not None
    return _ssh_props(cfg.ssh)


def etcd_member_spec(cfg: ClusterConfig, host: Host) -> dict[str, Any]:
    members = cfg.with_role("etcd")
    return {
        "name": host.name,
        "address": host.address,
        "client_port": cfg.etcd.client_port,
        "peer_port": cfg.etcd.peer_port,
        "data_dir": cfg.etcd.data_dir,
        "cluster_token": f"pgha-{cfg.scope}",
        # Only read when this member founds a new cluster; ignored by diffs.
        "bootstrap_cluster": {m.name: f"http://{m.address}:{cfg.etcd.peer_port}" for m in members},
    }


def patroni_install_spec(cfg: ClusterConfig, host: Host) -> dict[str, Any]:
    inst = cfg.patroni.install
    spec: dict[str, Any] = {
        "method": inst.method, "version": inst.version, "venv": inst.venv,
        "config_dir": cfg.patroni.config_dir, "scope": cfg.scope,
        "os_family": cfg.postgresql.os_family, "pg_version": cfg.postgresql.version,
    }
    if inst.method == "wheelhouse":
        spec["wheelhouse"] = inst.wheelhouse
    if inst.index_url:
        spec["index_url"] = inst.index_url
    if inst.proxy:
        spec["proxy"] = inst.proxy
    return spec


def _pgpass(cfg: ClusterConfig) -> str:
    home = "/var/lib/pgsql" if cfg.postgresql.os_family == "rhel" else "/var/lib/postgresql"
    return f"{home}/.pgpass.patroni"


def patroni_node_spec(cfg: ClusterConfig, host: Host) -> dict[str, Any]:
    pg = cfg.postgresql
    dcs = cfg.dcs
    return {
        "scope": cfg.scope,
        "namespace": cfg.namespace,
        "name": host.name,
        "address": host.address,
        "restapi_port": cfg.patroni.restapi_port,
        "restapi_username": RESTAPI_USERNAME,
        "etcd_hosts": etcd_client_endpoints(cfg),
        "pg_port": pg.port,
        "data_dir": pg.data_dir,
        "bin_dir": pg.bin_dir,
        "pgpass": _pgpass(cfg),
        "socket_dir": "/var/run/postgresql",
        "users": {"superuser": pg.superuser, "replication": pg.replication_user,
                  "rewind": pg.rewind_user},
        "pg_hba": pg_hba(cfg),
        "tags": host.tags.as_patroni(),
        "config_file": f"{cfg.patroni.config_dir}/patroni.yml",
        "venv": cfg.patroni.install.venv,
        "keep_data_on_destroy": pg.keep_data_on_destroy,
        # Seeds a new cluster only: the node resource ignores its changes (ignore_changes),
        # so an existing node never shows them; the DCS holds the live copy.
        "bootstrap": {
            "dcs": {
                "ttl": dcs.ttl, "loop_wait": dcs.loop_wait, "retry_timeout": dcs.retry_timeout,
                "maximum_lag_on_failover": dcs.maximum_lag_on_failover,
                "synchronous_mode": dcs.synchronous_mode, "use_pg_rewind": dcs.use_pg_rewind,
                "use_slots": dcs.use_slots,
                "parameters": {k: str(v) for k, v in dcs.parameters.items()},
            },
            "initdb": list(cfg.initdb),
        },
    }


def patroni_cluster_spec(cfg: ClusterConfig) -> dict[str, Any]:
    return {
        "scope": cfg.scope,
        "namespace": cfg.namespace,
        "etcd_endpoints": [f"http://{e}" for e in etcd_client_endpoints(cfg)],
        "members": [h.name for h in cfg.with_role("patroni")],
        # Preferred successor when the leader's host is removed (routing, not a change).
        "leader": cfg.leader,
    }


def haproxy_spec(cfg: ClusterConfig) -> dict[str, Any]:
    ha = cfg.haproxy
    return {
        "scope": cfg.scope,
        "primary_port": ha.primary_port,
        "replica_port": ha.replica_port,
        "stats_port": ha.stats_port,
        "global_maxconn": ha.global_maxconn,
        "inter_ms": ha.check_inter_ms,
        "fastinter_ms": ha.check_fastinter_ms,
        "fall": ha.check_fall,
        "rise": ha.check_rise,
        # One entry per backend server, keyed by host: adding a host reads as one
        # `+ server` per backend. Both backends list every node; Patroni's /replica
        # check keeps the leader and noloadbalance nodes out of the replica port.
        "primary_servers": haproxy_servers(cfg),
        "replica_servers": haproxy_servers(cfg),
    }


def haproxy_servers(cfg: ClusterConfig) -> dict[str, str]:
    """{host: the rest of its `server` line}, e.g. "10.0.0.1:5432 maxconn 150 check port 8008"."""
    return {h.name: (f"{h.address}:{cfg.postgresql.port} maxconn {cfg.haproxy.maxconn} "
                     f"check port {cfg.patroni.restapi_port}")
            for h in cfg.with_role("patroni")}


def dcs_settings(cfg: ClusterConfig) -> dict[str, Any]:
    """Patroni's own settings in the DCS (`patronictl show-config`), flat, as the stack declares them."""
    dcs = cfg.dcs
    return {
        "ttl": dcs.ttl, "loop_wait": dcs.loop_wait, "retry_timeout": dcs.retry_timeout,
        "maximum_lag_on_failover": dcs.maximum_lag_on_failover,
        "synchronous_mode": dcs.synchronous_mode,
        "use_pg_rewind": dcs.use_pg_rewind, "use_slots": dcs.use_slots,
    }


def split_parameters(params: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(applied by a reload, applied only by a restart): each parameter shows once in a
    diff, in the map that says what its change costs."""
    reload = {k: str(v) for k, v in sorted(params.items()) if k not in pg_params.RESTART_REQUIRED}
    restart = {k: str(v) for k, v in sorted(params.items()) if k in pg_params.RESTART_REQUIRED}
    return reload, restart


def dynamic_config_spec(cfg: ClusterConfig) -> dict[str, Any]:
    reload, restart = split_parameters(cfg.dcs.parameters)
    return {
        "scope": cfg.scope,
        "namespace": cfg.namespace,
        "etcd_endpoints": [f"http://{e}" for e in etcd_client_endpoints(cfg)],
        "dcs": dcs_settings(cfg),
        "parameters_reload": reload,
        # Changing one of these restarts every node (replicas one at a time, a switchover,
        # then the former leader) unless restart_policy is manual.
        "parameters_restart": restart,
        # Parameters the stack leaves to operators (`patronictl edit-config`): never reset.
        "operator_parameters": sorted(cfg.dcs.operator_parameters),
        "restart_policy": cfg.restart_policy,
        "leader": cfg.leader,
    }


def leader_spec(cfg: ClusterConfig) -> dict[str, Any]:
    return {"scope": cfg.scope, "namespace": cfg.namespace,
            "etcd_endpoints": [f"http://{e}" for e in etcd_client_endpoints(cfg)], "leader": cfg.leader}

"""Per-resource inputs planned from the config model (pure).

What goes into a resource's inputs is what `pulumi preview --diff` shows a
reviewer, so each spec holds readable, non-secret properties; passwords travel
separately as secret inputs.
"""

from __future__ import annotations

import ipaddress
import shlex
from typing import Any

from components import pg_params, tls_plan
from components.config import BACKUP_USER, ClusterConfig, Host, SshSettings
from components.install_steps import InstallPlan

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


def pg_hba(cfg: ClusterConfig, ssl: bool = False) -> dict[str, str]:
    """Runbook pg_hba, but scram-sha-256 everywhere and replication only from members.

    `ssl` (pgha:tls): every line for another host becomes hostssl (the loopback and the
    stack's extra pgHba lines stay as they are).
    """
    remote = "hostssl" if ssl else "host"
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
            remote, "replication", pg.replication_user, _host_cidr(host.address))
        entries[f"{HBA_REWIND} rewind {host.name}"] = _hba(remote, "all", pg.rewind_user,
                                                          _host_cidr(host.address))
    for host in cfg.with_role("haproxy"):
        entries[f"{HBA_BALANCER} haproxy {host.name}"] = _hba(remote, "all", "all", _host_cidr(host.address))
    for cidr in cfg.client_cidrs:
        entries[f"{HBA_CLIENT} clients {cidr}"] = _hba(remote, "all", "all", cidr)
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


def scheme(cfg: ClusterConfig) -> str:
    """etcd's and Patroni's REST scheme: https with pgha:tls on."""
    return "https" if cfg.tls.enabled else "http"


def etcd_client_urls(cfg: ClusterConfig) -> list[str]:
    return [f"{scheme(cfg)}://{e}" for e in etcd_client_endpoints(cfg)]


def patroni_api_url(cfg: ClusterConfig, host: Host) -> str:
    return f"{scheme(cfg)}://{host.address}:{cfg.patroni.restapi_port}"


def _with_tls(spec: dict[str, Any], tls: dict[str, str] | None) -> dict[str, Any]:
    """A spec's `tls` (pgha:tls), left out with TLS off: the inputs stay as before pgha:tls."""
    return spec if tls is None else {**spec, "tls": tls}


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
    return _with_tls({
        "name": host.name,
        "address": host.address,
        "client_port": cfg.etcd.client_port,
        "peer_port": cfg.etcd.peer_port,
        "data_dir": cfg.etcd.data_dir,
        "cluster_token": f"pgha-{cfg.scope}",
        # Only read when this member founds a new cluster; ignored by diffs.
        "bootstrap_cluster": {m.name: f"{scheme(cfg)}://{m.address}:{cfg.etcd.peer_port}" for m in members},
    }, tls_plan.etcd_tls(cfg))


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


def patroni_install_plan(cfg: ClusterConfig, host: Host) -> InstallPlan:
    """The host steps of PatroniHostInstall (components/host_install.py)."""
    spec = patroni_install_spec(cfg, host)
    return InstallPlan(
        host=host.name, address=host.address, ssh_user=host.ssh.user, method=spec["method"],
        version=spec["version"], venv=spec["venv"], config_dir=spec["config_dir"],
        os_family=spec["os_family"], pg_version=spec["pg_version"], etcd_member="etcd" in host.roles,
        wheelhouse=spec.get("wheelhouse"), index_url=spec.get("index_url"), proxy=spec.get("proxy"),
    )


def _pgpass(cfg: ClusterConfig) -> str:
    home = "/var/lib/pgsql" if cfg.postgresql.os_family == "rhel" else "/var/lib/postgresql"
    return f"{home}/.pgpass.patroni"


def patroni_node_spec(cfg: ClusterConfig, host: Host) -> dict[str, Any]:
    pg = cfg.postgresql
    dcs = cfg.dcs
    return _with_tls({
        "scope": cfg.scope,
        "namespace": cfg.namespace,
        "name": host.name,
        "address": host.address,
        # The host a new (or lost) cluster is bootstrapped on: only its patroni.yml has a
        # bootstrap section (see providers/patroni_bootstrap.py).
        "bootstrap_leader": host.name == cfg.with_role("patroni")[0].name,
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
        "pg_hba": pg_hba(cfg, ssl=cfg.tls.enabled),
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
                "parameters": {k: str(v) for k, v in pg_parameters(cfg).items()},
            },
            "initdb": list(cfg.initdb),
            **({"restore": restore_bootstrap(cfg)} if cfg.restore else {}),
        },
        **({"replica_from_backup": replica_from_backup(cfg)} if cfg.backup else {}),
    }, tls_plan.patroni_tls(cfg))


def patroni_cluster_spec(cfg: ClusterConfig) -> dict[str, Any]:
    return {
        "scope": cfg.scope,
        "namespace": cfg.namespace,
        "etcd_endpoints": etcd_client_urls(cfg),
        "members": [h.name for h in cfg.with_role("patroni")],
        # Preferred successor when the leader's host is removed (routing, not a change).
        "leader": cfg.leader,
    }


def haproxy_spec(cfg: ClusterConfig) -> dict[str, Any]:
    ha = cfg.haproxy
    return _with_tls({
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
    }, tls_plan.haproxy_tls(cfg))


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
    reload, restart = split_parameters(pg_parameters(cfg))
    return {
        "scope": cfg.scope,
        "namespace": cfg.namespace,
        "etcd_endpoints": etcd_client_urls(cfg),
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
            "etcd_endpoints": etcd_client_urls(cfg), "leader": cfg.leader}


# --- Backups and point-in-time recovery (pgBackRest, pgha:backup / pgha:restore) ---------------

PGBACKREST = "/usr/bin/pgbackrest"
SOCKET_DIR = "/var/run/postgresql"


def backup_parameters(cfg: ClusterConfig) -> dict[str, str]:
    """What pgha:backup adds to the DCS parameters: archiving into the stanza from the first
    WAL segment, and restore_command (Patroni 4 moves it from `parameters` into the
    recovery settings it writes on replicas)."""
    backup = cfg.backup
    if backup is None:
        return {}
    params = {
        "archive_mode": "on",
        "archive_command": f"{PGBACKREST} --stanza={backup.stanza} archive-push %p",
        "restore_command": f'{PGBACKREST} --stanza={backup.stanza} archive-get %f "%p"',
    }
    if "archive_timeout" not in cfg.dcs.parameters:
        params["archive_timeout"] = backup.archive_timeout
    return params


def pg_parameters(cfg: ClusterConfig) -> dict[str, Any]:
    """Every parameter the stack declares: postgresql.parameters and pgha:backup's archiving."""
    return {**cfg.dcs.parameters, **backup_parameters(cfg)}


def backup_host(cfg: ClusterConfig) -> Host:
    hosts = cfg.with_role("backup")
    assert hosts, "validated: pgha:backup has a host with the backup role"
    return hosts[0]


def backup_repo_user(cfg: ClusterConfig) -> str:
    """Who owns the repository and runs the backups: pgbackrest on a repository host, postgres
    when the repository is the nodes' shared storage (each node's pgBackRest writes it locally)."""
    assert cfg.backup is not None
    return "postgres" if cfg.backup.on_nodes else BACKUP_USER


def backup_home(cfg: ClusterConfig) -> Host:
    """The host the Backup resources connect to first: the repository host, or (nodes layout)
    the first Patroni node (the stanza's commands then go to whichever node leads)."""
    assert cfg.backup is not None
    return cfg.with_role("patroni")[0] if cfg.backup.on_nodes else backup_host(cfg)


def _layout(cfg: ClusterConfig) -> dict[str, str]:
    """The layout input, present only for the nodes layout (stacks with a repository host keep
    the inputs they stored)."""
    assert cfg.backup is not None
    return {"layout": "nodes"} if cfg.backup.on_nodes else {}


def _retention(cfg: ClusterConfig) -> dict[str, int]:
    backup = cfg.backup
    assert backup is not None
    return {"full": backup.retention_full,
            **({"diff": backup.retention_diff} if backup.retention_diff is not None else {})}


def replica_from_backup(cfg: ClusterConfig) -> str:
    """Patroni's `pgbackrest` replica method: restore the latest backup into the data directory."""
    assert cfg.backup is not None
    return f"{PGBACKREST} --stanza={cfg.backup.stanza} --delta restore"


# Pulumi drops None-valued inputs: an unset setting is left out, not sent as None.


def _compression(cfg: ClusterConfig) -> dict[str, Any]:
    assert cfg.backup is not None
    level = cfg.backup.compress_level
    return {"type": cfg.backup.compress_type, **({"level": level} if level is not None else {})}


def backup_identity_spec(cfg: ClusterConfig, host: Host) -> dict[str, Any]:
    """The OS user that runs pgBackRest on a host and its SSH key pair, made on the host
    (the private key never leaves it): pgbackrest on the repository host, postgres on nodes."""
    repository = "backup" in host.roles
    return {"scope": cfg.scope, "user": BACKUP_USER if repository else "postgres",
            "create_user": repository, "host_name": host.name}


def backup_repository_spec(cfg: ClusterConfig) -> dict[str, Any]:
    backup = cfg.backup
    assert backup is not None
    pg = cfg.postgresql
    if backup.on_nodes:
        # The repository is repo_path on every node: the resource checks it is one shared
        # directory (a marker written on one node must be read back on every other one).
        return {"scope": cfg.scope, "stanza": backup.stanza, "repo_path": backup.repo_path,
                "repo_user": backup_repo_user(cfg), **_layout(cfg),
                "nodes": {h.name: connection(h) for h in cfg.with_role("patroni")}}
    return {
        "scope": cfg.scope,
        "stanza": backup.stanza,
        "repo_path": backup.repo_path,
        "retention": _retention(cfg),
        "compression": _compression(cfg),
        "process_max": backup.process_max,
        "encryption": "aes-256-cbc" if backup.encryption else "none",
        # An S3 repository (left out: posix, in repo_path on the repository host). The secret key
        # and the CA's text are added by the component (components/backup.py).
        **({} if backup.s3 is None else {"s3": {
            "endpoint": backup.s3.endpoint, "port": backup.s3.port, "bucket": backup.s3.bucket,
            "region": backup.s3.region, "uri_style": backup.s3.uri_style, "key_id": backup.s3.key_id,
            "verify_tls": backup.s3.verify_tls}}),
        # pgBackRest's pgN-host entries: every database host, found by its address.
        "pg_hosts": {h.name: {"address": h.address, "port": pg.port, "data_dir": pg.data_dir,
                              "socket_dir": SOCKET_DIR}
                     for h in cfg.with_role("patroni")},
    }


def backup_node_spec(cfg: ClusterConfig, host: Host) -> dict[str, Any]:
    backup = cfg.backup
    assert backup is not None
    pg = cfg.postgresql
    where: dict[str, Any] = (
        # The repository on the node itself (shared storage): its settings live here too.
        {**_layout(cfg), "repo_path": backup.repo_path, "retention": _retention(cfg),
         "encryption": "aes-256-cbc" if backup.encryption else "none"}
        if backup.on_nodes else {"repo_host": backup_host(cfg).address, "repo_user": BACKUP_USER})
    return {
        "scope": cfg.scope,
        "name": host.name,
        "stanza": backup.stanza,
        **where,
        "data_dir": pg.data_dir,
        "pg_port": pg.port,
        "socket_dir": SOCKET_DIR,
        "compression": _compression(cfg),
        "archive_async": backup.archive_async,
        "process_max": backup.process_max,
        # A restored cluster's nodes also know the stanza they were restored from (read only).
        **({"source_stanza": cfg.restore.from_stanza} if cfg.restore else {}),
    }


def backup_stanza_spec(cfg: ClusterConfig) -> dict[str, Any]:
    backup = cfg.backup
    assert backup is not None
    nodes = cfg.with_role("patroni")
    if backup.on_nodes:
        repository = f"{backup.repo_path} (shared by {', '.join(h.name for h in nodes)})"
    elif backup.s3:
        repository = f"s3://{backup.s3.bucket}{backup.repo_path} at {backup.s3.endpoint}"
    else:
        repository = f"{backup_host(cfg).name}:{backup.repo_path}"
    return _with_tls({
        "scope": cfg.scope,
        "stanza": backup.stanza,
        "repository": repository,
        "repo_user": backup_repo_user(cfg),
        # nodes layout: the stanza's commands run on the leader, a timer on every node.
        **_layout(cfg),
        "schedule": {kind: calendar for kind, calendar in
                     (("full", backup.schedule_full), ("diff", backup.schedule_diff)) if calendar},
        # Where the backup script looks for a healthy standby, and how status finds the leader.
        "nodes": {h.name: {"api_url": patroni_api_url(cfg, h),
                           "connection": connection(h)}
                  for h in nodes},
        "pg_port": cfg.postgresql.port,
        "socket_dir": SOCKET_DIR,
        "bin_dir": cfg.postgresql.bin_dir,
    }, _backup_tls(cfg))


def _backup_tls(cfg: ClusterConfig) -> dict[str, str] | None:
    """pgha:tls: what the backup script's curl to Patroni's REST API verifies and shows. In the
    nodes layout, its own node's CA, certificate and key (it runs as postgres, who owns them); on
    a repository host, the CA bundle of its own files, with a certificate of its own when Patroni
    requires one on every request (tls_plan.backup_host_tls)."""
    if cfg.backup is None or not cfg.backup.on_nodes:
        return tls_plan.backup_host_tls(cfg)
    node_tls = tls_plan.patroni_tls(cfg)
    if node_tls is None:
        return None
    return {k: node_tls[k] for k in ("ca_file", "cert_file", "key_file")}


def restore_bootstrap(cfg: ClusterConfig) -> dict[str, Any]:
    """Patroni's custom bootstrap for pgha:restore: pgBackRest restores the source stanza's
    backup (the newest one before the target), and PostgreSQL replays its WAL to the target
    and promotes. The restored cluster's own archive_command (its own stanza) takes over
    once it runs as primary."""
    restore = cfg.restore
    assert restore is not None
    kind, value = restore.target_kind, restore.target_value
    args = [] if kind == "latest" else [f"--type={kind}", f"--target={value}", "--target-action=promote"]
    recovery: dict[str, str] = {
        "restore_command": f'{PGBACKREST} --stanza={restore.from_stanza} archive-get %f "%p"',
        "recovery_target_timeline": "latest",
    }
    if kind != "latest":
        recovery[f"recovery_target_{kind}"] = str(value)
        recovery["recovery_target_action"] = "promote"
    return {"command": shlex.join([PGBACKREST, f"--stanza={restore.from_stanza}", *args, "restore"]),
            "recovery_conf": recovery}


def restore_plan(cfg: ClusterConfig) -> str:
    """One line that says what `up` will do, for the preview."""
    restore, backup = cfg.restore, cfg.backup
    assert restore is not None and backup is not None
    return (f"restore from stanza {restore.from_stanza} on {backup_host(cfg).name} to {restore.describe()}, "
            f"promote, then archive into stanza {backup.stanza}")


def backup_restore_spec(cfg: ClusterConfig) -> dict[str, Any]:
    restore, backup = cfg.restore, cfg.backup
    assert restore is not None and backup is not None
    return {
        "scope": cfg.scope,
        "plan": restore_plan(cfg),
        "from_stanza": restore.from_stanza,
        "target": {"kind": restore.target_kind,
                   **({"value": restore.target_value} if restore.target_value is not None else {})},
        "stanza": backup.stanza,
        "repo_user": BACKUP_USER,
    }

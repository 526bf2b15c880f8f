"""The cluster's config model, loaded from the stack's ``pgha:*`` keys.

Pure: no Pulumi calls, no I/O. ``load_cluster_config`` takes the raw config
mapping (key without namespace -> parsed value) and the names of keys that are
secret, validates everything and returns an immutable model, or raises
``ConfigError`` naming every bad key before any resource is registered.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from components import pg_params
from components.tls_config import CA_KEY_SECRET, TlsSettings, load_tls
from components.validation import (
    ABS_PATH_RE,
    DNS_NAME_RE,
    IDENT_RE,
    NAME_RE,
    Problems,
    as_address,
    as_bool,
    as_cidr,
    as_int,
    as_list,
    as_mapping,
    as_port,
    as_str,
    check_unknown_keys,
)

ROLES = ("etcd", "patroni", "haproxy", "backup")
SECRET_KEYS = (
    "superuserPassword", "replicationPassword", "rewindPassword", "restApiPassword",
)
OS_FAMILIES = ("debian", "rhel")


@dataclass(frozen=True)
class Bastion:
    address: str
    port: int
    user: str


@dataclass(frozen=True)
class SshSettings:
    user: str
    port: int
    private_key_file: str | None
    known_hosts_file: str
    strict_host_keys: bool
    bastion: Bastion | None


@dataclass(frozen=True)
class NodeTags:
    nofailover: bool = False
    noloadbalance: bool = False
    nosync: bool = False
    clonefrom: bool = False

    def as_patroni(self) -> dict[str, bool]:
        return {"nofailover": self.nofailover, "noloadbalance": self.noloadbalance,
                "nosync": self.nosync, "clonefrom": self.clonefrom}


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    roles: tuple[str, ...]
    ssh: SshSettings
    tags: NodeTags


@dataclass(frozen=True)
class EtcdSettings:
    client_port: int
    peer_port: int
    data_dir: str
    min_members: int


@dataclass(frozen=True)
class PatroniInstall:
    method: str  # "wheelhouse" | "index"
    version: str
    wheelhouse: str | None
    index_url: str | None
    proxy: str | None
    venv: str


@dataclass(frozen=True)
class PatroniSettings:
    restapi_port: int
    config_dir: str
    install: PatroniInstall
    min_nodes: int


@dataclass(frozen=True)
class PostgresSettings:
    version: int
    port: int
    os_family: str
    data_dir: str
    bin_dir: str
    superuser: str
    replication_user: str
    rewind_user: str
    keep_data_on_destroy: bool


@dataclass(frozen=True)
class DcsSettings:
    ttl: int
    loop_wait: int
    retry_timeout: int
    maximum_lag_on_failover: int
    synchronous_mode: bool
    use_pg_rewind: bool
    use_slots: bool
    parameters: dict[str, Any]
    # Parameters left to operators (`patronictl edit-config`): the stack neither sets nor
    # resets them. Every other parameter in the DCS that the stack does not declare is drift.
    operator_parameters: tuple[str, ...] = ()


@dataclass(frozen=True)
class HaproxySettings:
    primary_port: int
    replica_port: int
    stats_port: int
    maxconn: int
    global_maxconn: int
    check_inter_ms: int
    check_fastinter_ms: int
    check_fall: int
    check_rise: int


@dataclass(frozen=True)
class DatabaseRole:
    name: str
    options: tuple[str, ...]
    login: bool


@dataclass(frozen=True)
class ClusterConfig:
    scope: str
    namespace: str
    production: bool
    generate_passwords: bool
    hosts: tuple[Host, ...]
    etcd: EtcdSettings
    patroni: PatroniSettings
    postgresql: PostgresSettings
    dcs: DcsSettings
    initdb: tuple[Any, ...]
    client_cidrs: tuple[str, ...]
    pg_hba_extra: tuple[str, ...]
    roles: tuple[DatabaseRole, ...]
    haproxy: HaproxySettings
    restart_policy: str = "rolling"
    leader: str | None = None
    ssh: SshSettings | None = None
    secrets_present: frozenset[str] = field(default_factory=frozenset)
    # pgBackRest (pgha:backup) and a cluster bootstrapped from a backup (pgha:restore).
    backup: BackupSettings | None = None
    restore: RestoreSettings | None = None
    # pgha:tls (components/tls_config.py): on unless the stack turns it off.
    tls: TlsSettings = field(default_factory=TlsSettings)

    def with_role(self, role: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if role in h.roles)


TOP_LEVEL_KEYS = (
    "scope", "namespace", "production", "generatePasswords", "ssh", "hosts", "etcd",
    "patroni", "postgresql", "dcs", "initdb", "clientCidrs", "pgHba", "roles", "haproxy",
    "sshPrivateKey", "rolePasswords", "restartPolicy", "leader", *SECRET_KEYS,
    "backup", "restore", "backupCipherPassphrase", "backupS3KeySecret", "tls", CA_KEY_SECRET,
)

DEFAULT_PARAMETERS: dict[str, Any] = {
    "wal_level": "logical",
    "hot_standby": "on",
    "max_connections": 150,
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_log_hints": "on",
    "wal_keep_size": "256MB",
    "password_encryption": "scram-sha-256",
    "shared_preload_libraries": "pg_stat_statements",
    "logging_collector": "on",
    "log_checkpoints": "on",
    "log_lock_waits": "on",
    "timezone": "UTC",
}

DEFAULT_INITDB: tuple[Any, ...] = (
    {"encoding": "UTF8"}, "data-checksums", {"locale": "C.UTF-8"},
)

ROLE_OPTIONS = (
    "SUPERUSER", "CREATEDB", "CREATEROLE", "INHERIT", "NOINHERIT", "LOGIN", "NOLOGIN",
    "REPLICATION", "BYPASSRLS", "NOCREATEDB", "NOCREATEROLE",
)


def os_family_defaults(family: str, version: int, scope: str) -> tuple[str, str]:
    """Return (data_dir, bin_dir) for a PostgreSQL major version on an OS family."""
    if family == "rhel":
        return f"/var/lib/pgsql/{version}/data", f"/usr/pgsql-{version}/bin"
    # Debian keeps the distro's own 15/main cluster untouched beside ours.
    return f"/var/lib/postgresql/{version}/{scope}", f"/usr/lib/postgresql/{version}/bin"


def _load_ssh(problems: Problems, path: str, raw: Any, base: SshSettings | None,
              has_secret_key: bool) -> SshSettings:
    data = as_mapping(problems, path, raw)
    check_unknown_keys(problems, path, data,
                       ("user", "port", "privateKeyFile", "knownHostsFile", "strictHostKeys",
                        "bastion"))
    user = as_str(problems, f"{path}.user", data.get("user"),
                  base.user if base else "root", pattern=r"[a-z_][a-z0-9_-]*", what="user name")
    port = as_port(problems, f"{path}.port", data.get("port"), base.port if base else 22)
    key_file = data.get("privateKeyFile", base.private_key_file if base else None)
    if key_file is not None:
        key_file = as_str(problems, f"{path}.privateKeyFile", key_file, pattern=ABS_PATH_RE,
                          what="absolute path")
    known_hosts = as_str(problems, f"{path}.knownHostsFile", data.get("knownHostsFile"),
                         base.known_hosts_file if base else "~/.ssh/known_hosts")
    strict = as_bool(problems, f"{path}.strictHostKeys", data.get("strictHostKeys"),
                     base.strict_host_keys if base else True)
    bastion = base.bastion if base else None
    if "bastion" in data:
        b = as_mapping(problems, f"{path}.bastion", data["bastion"])
        check_unknown_keys(problems, f"{path}.bastion", b, ("address", "port", "user"))
        bastion = Bastion(
            address=as_address(problems, f"{path}.bastion.address", b.get("address")),
            port=as_port(problems, f"{path}.bastion.port", b.get("port"), 22),
            user=as_str(problems, f"{path}.bastion.user", b.get("user"), user),
        )
    if base is None and key_file is None and not has_secret_key:
        problems.add(f"{path}.privateKeyFile",
                     "set a key file, or the secret pgha:sshPrivateKey "
                     "(pulumi config set --secret pgha:sshPrivateKey < key)")
    return SshSettings(user=user, port=port, private_key_file=key_file,
                       known_hosts_file=known_hosts, strict_host_keys=strict, bastion=bastion)


def _load_tags(problems: Problems, path: str, raw: Any) -> NodeTags:
    data = as_mapping(problems, path, raw)
    check_unknown_keys(problems, path, data, ("nofailover", "noloadbalance", "nosync", "clonefrom"))
    return NodeTags(**{
        name: as_bool(problems, f"{path}.{name}", data.get(name), False)
        for name in ("nofailover", "noloadbalance", "nosync", "clonefrom")
    })


def _load_hosts(problems: Problems, raw: Any, ssh: SshSettings) -> tuple[Host, ...]:
    hosts: list[Host] = []
    seen_names: dict[str, int] = {}
    seen_addresses: dict[str, int] = {}
    items = as_list(problems, "hosts", raw)
    if not items:
        problems.add("hosts", "at least one host is required")
    for i, item in enumerate(items):
        path = f"hosts[{i}]"
        data = as_mapping(problems, path, item)
        check_unknown_keys(problems, path, data, ("name", "address", "roles", "ssh", "tags"))
        name = as_str(problems, f"{path}.name", data.get("name"), pattern=NAME_RE,
                      what="host name (lowercase letters, digits and '-')")
        address = as_address(problems, f"{path}.address", data.get("address"))
        if name in seen_names:
            problems.add(f"{path}.name", f"duplicate host name {name!r} (also hosts[{seen_names[name]}])")
        seen_names.setdefault(name, i)
        if address in seen_addresses:
            problems.add(f"{path}.address",
                         f"duplicate address {address} (also hosts[{seen_addresses[address]}])")
        seen_addresses.setdefault(address, i)
        roles_raw = as_list(problems, f"{path}.roles", data.get("roles"))
        roles: list[str] = []
        for j, role in enumerate(roles_raw):
            if role not in ROLES:
                problems.add(f"{path}.roles[{j}]", f"unknown role {role!r}; one of {', '.join(ROLES)}")
            elif role in roles:
                problems.add(f"{path}.roles[{j}]", f"role {role!r} listed twice")
            else:
                roles.append(role)
        if not roles_raw:
            problems.add(f"{path}.roles", f"give the host at least one role of {', '.join(ROLES)}")
        host_ssh = _load_ssh(problems, f"{path}.ssh", data.get("ssh"), ssh, True)
        tags = _load_tags(problems, f"{path}.tags", data.get("tags"))
        hosts.append(Host(name=name, address=address, roles=tuple(roles), ssh=host_ssh, tags=tags))
    return tuple(hosts)


def _load_dcs(problems: Problems, raw: Any, parameters: dict[str, Any],
              operator_parameters: tuple[str, ...] = ()) -> DcsSettings:
    data = as_mapping(problems, "dcs", raw)
    check_unknown_keys(problems, "dcs", data, (
        "ttl", "loopWait", "retryTimeout", "maximumLagOnFailover", "synchronousMode",
        "usePgRewind", "useSlots"))
    ttl = as_int(problems, "dcs.ttl", data.get("ttl"), 30, minimum=5)
    loop_wait = as_int(problems, "dcs.loopWait", data.get("loopWait"), 10, minimum=1)
    retry = as_int(problems, "dcs.retryTimeout", data.get("retryTimeout"), 10, minimum=1)
    # Patroni's own rule: loop_wait + 2 * retry_timeout must fit within ttl.
    if loop_wait + 2 * retry > ttl:
        problems.add("dcs.ttl", f"must be at least loopWait + 2 * retryTimeout = {loop_wait + 2 * retry}")
    return DcsSettings(
        ttl=ttl, loop_wait=loop_wait, retry_timeout=retry,
        maximum_lag_on_failover=as_int(problems, "dcs.maximumLagOnFailover",
                                       data.get("maximumLagOnFailover"), 1048576, minimum=0),
        synchronous_mode=as_bool(problems, "dcs.synchronousMode", data.get("synchronousMode"), False),
        use_pg_rewind=as_bool(problems, "dcs.usePgRewind", data.get("usePgRewind"), True),
        use_slots=as_bool(problems, "dcs.useSlots", data.get("useSlots"), True),
        parameters=parameters,
        operator_parameters=operator_parameters,
    )


def _load_operator_parameters(problems: Problems, raw: Any, parameters: dict[str, Any],
                              declared: Any) -> tuple[str, ...]:
    names: list[str] = []
    for i, name in enumerate(as_list(problems, "postgresql.operatorParameters", raw)):
        key = f"postgresql.operatorParameters[{i}]"
        if not isinstance(name, str) or not re.fullmatch(r"[a-z_][a-z0-9_.]*", name):
            problems.add(key, f"{name!r} is not a PostgreSQL parameter name")
        elif isinstance(declared, dict) and name in declared:
            problems.add(key, f"{name} is also set in postgresql.parameters: a parameter is either "
                              "declared by the stack or left to operators")
        elif name in parameters:
            problems.add(key, f"{name} is one of pgha's defaults ({parameters[name]}); set it in "
                              "postgresql.parameters instead")
        else:
            names.append(name)
    return tuple(sorted(set(names)))


def _load_parameters(problems: Problems, raw: Any) -> dict[str, Any]:
    data = as_mapping(problems, "postgresql.parameters", raw)
    merged = dict(DEFAULT_PARAMETERS)
    for name, value in data.items():
        why = pg_params.check_parameter(name, value)
        if why:
            problems.add(f"postgresql.parameters.{name}", why)
        if name in ("port", "listen_addresses", "data_directory", "hba_file", "config_file"):
            problems.add(f"postgresql.parameters.{name}",
                         "is managed by pgha/Patroni; use pgha:postgresql.port or paths instead")
        merged[name] = value
    return merged


def _load_postgres(problems: Problems, raw: Any, scope: str) -> tuple[PostgresSettings, Any]:
    data = as_mapping(problems, "postgresql", raw)
    check_unknown_keys(problems, "postgresql", data, (
        "version", "port", "osFamily", "dataDir", "binDir", "superuser", "replicationUser",
        "rewindUser", "parameters", "operatorParameters", "keepDataOnDestroy"))
    version = as_int(problems, "postgresql.version", data.get("version"), 15, minimum=12, maximum=18)
    family = as_str(problems, "postgresql.osFamily", data.get("osFamily"), "debian")
    if family not in OS_FAMILIES:
        problems.add("postgresql.osFamily", f"{family!r} is not one of {', '.join(OS_FAMILIES)}")
    default_data, default_bin = os_family_defaults(family, version, scope)
    users = {}
    for key_name, default in (("superuser", "postgres"), ("replicationUser", "replicator"),
                              ("rewindUser", "rewind_user")):
        users[key_name] = as_str(problems, f"postgresql.{key_name}", data.get(key_name), default,
                                 pattern=IDENT_RE, what="role name")
    if len(set(users.values())) != len(users):
        problems.add("postgresql", "superuser, replicationUser and rewindUser must be different roles")
    settings = PostgresSettings(
        version=version,
        port=as_port(problems, "postgresql.port", data.get("port"), 5432),
        os_family=family,
        data_dir=as_str(problems, "postgresql.dataDir", data.get("dataDir"), default_data,
                        pattern=ABS_PATH_RE, what="absolute path"),
        bin_dir=as_str(problems, "postgresql.binDir", data.get("binDir"), default_bin,
                       pattern=ABS_PATH_RE, what="absolute path"),
        superuser=users["superuser"], replication_user=users["replicationUser"],
        rewind_user=users["rewindUser"],
        keep_data_on_destroy=as_bool(problems, "postgresql.keepDataOnDestroy",
                                     data.get("keepDataOnDestroy"), True),
    )
    return settings, data


def _load_patroni(problems: Problems, raw: Any, production: bool) -> PatroniSettings:
    data = as_mapping(problems, "patroni", raw)
    check_unknown_keys(problems, "patroni", data, ("restApiPort", "configDir", "install", "minNodes"))
    inst = as_mapping(problems, "patroni.install", data.get("install"))
    check_unknown_keys(problems, "patroni.install", inst,
                       ("method", "version", "wheelhouse", "indexUrl", "proxy", "venv"))
    method = as_str(problems, "patroni.install.method", inst.get("method"), "index")
    if method not in ("wheelhouse", "index"):
        problems.add("patroni.install.method", f"{method!r} is not one of wheelhouse, index")
    wheelhouse = inst.get("wheelhouse")
    if method == "wheelhouse":
        wheelhouse = as_str(problems, "patroni.install.wheelhouse", wheelhouse,
                            pattern=ABS_PATH_RE, what="absolute path of a wheel directory")
    proxy = inst.get("proxy")
    if proxy is not None:
        proxy = as_str(problems, "patroni.install.proxy", proxy, pattern=r"https?://\S+", what="proxy URL")
    index_url = inst.get("indexUrl")
    if index_url is not None:
        index_url = as_str(problems, "patroni.install.indexUrl", index_url,
                           pattern=r"https?://\S+", what="index URL")
    install = PatroniInstall(
        method=method,
        version=as_str(problems, "patroni.install.version", inst.get("version"), "4.1.5",
                       pattern=r"\d+\.\d+(\.\d+)?", what="Patroni version"),
        wheelhouse=wheelhouse, index_url=index_url, proxy=proxy,
        venv=as_str(problems, "patroni.install.venv", inst.get("venv"), "/opt/patroni",
                    pattern=ABS_PATH_RE, what="absolute path"),
    )
    return PatroniSettings(
        restapi_port=as_port(problems, "patroni.restApiPort", data.get("restApiPort"), 8008),
        config_dir=as_str(problems, "patroni.configDir", data.get("configDir"), "/etc/patroni",
                          pattern=ABS_PATH_RE, what="absolute path"),
        install=install,
        min_nodes=as_int(problems, "patroni.minNodes", data.get("minNodes"),
                         2 if production else 1, minimum=1),
    )


def _load_haproxy(problems: Problems, raw: Any) -> HaproxySettings:
    data = as_mapping(problems, "haproxy", raw)
    check_unknown_keys(problems, "haproxy", data, (
        "primaryPort", "replicaPort", "statsPort", "maxconn", "globalMaxconn", "checkInterMs",
        "checkFastInterMs", "checkFall", "checkRise"))
    return HaproxySettings(
        primary_port=as_port(problems, "haproxy.primaryPort", data.get("primaryPort"), 5000),
        replica_port=as_port(problems, "haproxy.replicaPort", data.get("replicaPort"), 5001),
        stats_port=as_port(problems, "haproxy.statsPort", data.get("statsPort"), 7000),
        maxconn=as_int(problems, "haproxy.maxconn", data.get("maxconn"), 150, minimum=1),
        # Fixed, not derived from the node count, so adding a node changes only the server list.
        global_maxconn=as_int(problems, "haproxy.globalMaxconn", data.get("globalMaxconn"), 4000, minimum=1),
        check_inter_ms=as_int(problems, "haproxy.checkInterMs", data.get("checkInterMs"), 1000, minimum=100),
        check_fastinter_ms=as_int(problems, "haproxy.checkFastInterMs", data.get("checkFastInterMs"),
                                  500, minimum=100),
        check_fall=as_int(problems, "haproxy.checkFall", data.get("checkFall"), 2, minimum=1),
        check_rise=as_int(problems, "haproxy.checkRise", data.get("checkRise"), 1, minimum=1),
    )


def _load_roles(problems: Problems, raw: Any, reserved: set[str],
                role_passwords: dict[str, Any], generate: bool) -> tuple[DatabaseRole, ...]:
    roles = []
    seen: set[str] = set()
    for i, item in enumerate(as_list(problems, "roles", raw)):
        path = f"roles[{i}]"
        data = as_mapping(problems, path, item)
        check_unknown_keys(problems, path, data, ("name", "options", "login"))
        name = as_str(problems, f"{path}.name", data.get("name"), pattern=IDENT_RE, what="role name")
        if name in seen:
            problems.add(f"{path}.name", f"duplicate role {name!r}")
        if name in reserved:
            problems.add(f"{path}.name", f"{name!r} is one of Patroni's own roles")
        seen.add(name)
        options = []
        for j, opt in enumerate(as_list(problems, f"{path}.options", data.get("options"))):
            upper = str(opt).upper()
            if upper not in ROLE_OPTIONS or upper in ("LOGIN", "NOLOGIN"):
                problems.add(f"{path}.options[{j}]", f"{opt!r} is not one of "
                             f"{', '.join(o for o in ROLE_OPTIONS if o not in ('LOGIN', 'NOLOGIN'))}")
            else:
                options.append(upper)
        login = as_bool(problems, f"{path}.login", data.get("login"), True)
        if login and name and name not in role_passwords and not generate:
            problems.add(f"rolePasswords.{name}",
                         f"missing password for login role {name!r}: "
                         f"pulumi config set --secret --path 'pgha:rolePasswords.{name}' <password>")
        roles.append(DatabaseRole(name=name, options=tuple(sorted(set(options))), login=login))
    return tuple(roles)


def _check_ports(problems: Problems, cfg_hosts: tuple[Host, ...], ports: dict[str, dict[str, int]]) -> None:
    """Two services on one host cannot listen on one port."""
    for i, host in enumerate(cfg_hosts):
        used: dict[int, str] = {}
        for role in host.roles:
            for key_path, port in ports[role].items():
                if port in used:
                    problems.add(key_path, f"port {port} collides with {used[port]} on host "
                                 f"{host.name} (hosts[{i}])")
                used.setdefault(port, key_path)


def load_cluster_config(raw: dict[str, Any], secret_keys: set[str] | None = None) -> ClusterConfig:
    """Validate the whole ``pgha:*`` config; raise ConfigError listing every problem."""
    secret_keys = secret_keys or set()
    problems = Problems()
    check_unknown_keys(problems, "", raw, TOP_LEVEL_KEYS)

    scope = as_str(problems, "scope", raw.get("scope"), pattern=NAME_RE, what="cluster scope")
    namespace = as_str(problems, "namespace", raw.get("namespace"), "/service/",
                       pattern=r"/([A-Za-z0-9_.-]+/)*", what="namespace (like /service/)")
    production = as_bool(problems, "production", raw.get("production"), False)
    generate = as_bool(problems, "generatePasswords", raw.get("generatePasswords"), False)
    if production and generate:
        problems.add("generatePasswords", "is for labs only; a production stack sets every "
                     "password with pulumi config set --secret")

    for name in (*SECRET_KEYS, "sshPrivateKey"):
        if name in raw and name not in secret_keys:
            problems.add(name, f"must be a secret: pulumi config set --secret pgha:{name} ...")
    role_passwords = as_mapping(problems, "rolePasswords", raw.get("rolePasswords"))
    if role_passwords and "rolePasswords" not in secret_keys:
        problems.add("rolePasswords", "must be secret: pulumi config set --secret --path "
                     "'pgha:rolePasswords.NAME' ...")
    if not generate:
        for name in SECRET_KEYS:
            if not raw.get(name):
                problems.add(name, f"missing secret: pulumi config set --secret pgha:{name} <value>")

    ssh = _load_ssh(problems, "ssh", raw.get("ssh"), None, bool(raw.get("sshPrivateKey")))
    hosts = _load_hosts(problems, raw.get("hosts"), ssh)
    postgres, raw_postgres = _load_postgres(problems, raw.get("postgresql"), scope or "main")
    parameters = _load_parameters(problems, raw_postgres.get("parameters"))
    operator_parameters = _load_operator_parameters(
        problems, raw_postgres.get("operatorParameters"), parameters, raw_postgres.get("parameters"))
    patroni = _load_patroni(problems, raw.get("patroni"), production)
    dcs = _load_dcs(problems, raw.get("dcs"), parameters, operator_parameters)
    haproxy = _load_haproxy(problems, raw.get("haproxy"))

    etcd_raw = as_mapping(problems, "etcd", raw.get("etcd"))
    check_unknown_keys(problems, "etcd", etcd_raw, ("clientPort", "peerPort", "dataDir", "minMembers"))
    etcd = EtcdSettings(
        client_port=as_port(problems, "etcd.clientPort", etcd_raw.get("clientPort"), 2379),
        peer_port=as_port(problems, "etcd.peerPort", etcd_raw.get("peerPort"), 2380),
        data_dir=as_str(problems, "etcd.dataDir", etcd_raw.get("dataDir"),
                        f"/var/lib/etcd/pgha-{scope or 'main'}", pattern=ABS_PATH_RE,
                        what="absolute path"),
        min_members=as_int(problems, "etcd.minMembers", etcd_raw.get("minMembers"),
                           3 if production else 1, minimum=1),
    )

    etcd_hosts = [h for h in hosts if "etcd" in h.roles]
    patroni_hosts = [h for h in hosts if "patroni" in h.roles]
    if hosts:
        if len(etcd_hosts) < etcd.min_members:
            problems.add("hosts", f"{len(etcd_hosts)} host(s) have the etcd role; at least "
                         f"{etcd.min_members} are required (pgha:etcd.minMembers)")
        if production and len(etcd_hosts) % 2 == 0:
            problems.add("hosts", f"a production stack needs an odd number of etcd members "
                         f"(quorum), got {len(etcd_hosts)}")
        if production and len(etcd_hosts) < 3:
            problems.add("hosts", "a production stack needs at least 3 etcd members")
        if len(patroni_hosts) < patroni.min_nodes:
            problems.add("hosts", f"{len(patroni_hosts)} host(s) have the patroni role; at least "
                         f"{patroni.min_nodes} are required (pgha:patroni.minNodes)")
        if all(h.tags.nofailover for h in patroni_hosts) and patroni_hosts:
            problems.add("hosts", "every Patroni node is tagged nofailover: no node could become leader")

    backup = _load_backup(problems, raw, secret_keys, hosts, scope, generate, production)
    restore = _load_restore(problems, raw.get("restore"), backup)
    _check_backup_parameters(problems, raw_postgres, backup)
    tls = load_tls(problems, raw, secret_keys, hosts)

    _check_ports(problems, hosts, {
        "backup": {},
        "etcd": {"etcd.clientPort": etcd.client_port, "etcd.peerPort": etcd.peer_port},
        "patroni": {"patroni.restApiPort": patroni.restapi_port, "postgresql.port": postgres.port},
        "haproxy": {"haproxy.primaryPort": haproxy.primary_port,
                    "haproxy.replicaPort": haproxy.replica_port,
                    "haproxy.statsPort": haproxy.stats_port},
    })

    cidrs = tuple(as_cidr(problems, f"clientCidrs[{i}]", c)
                  for i, c in enumerate(as_list(problems, "clientCidrs", raw.get("clientCidrs"))))
    hba_extra = []
    for i, line in enumerate(as_list(problems, "pgHba", raw.get("pgHba"))):
        text = as_str(problems, f"pgHba[{i}]", line)
        words = text.split()
        if words and words[0] not in ("local", "host", "hostssl", "hostnossl", "hostgssenc",
                                      "hostnogssenc"):
            problems.add(f"pgHba[{i}]", f"{text!r} does not start with a pg_hba connection type")
        if "trust" in words:
            problems.add(f"pgHba[{i}]", "trust authentication is refused: use scram-sha-256")
        if len(words) >= 4 and words[0] != "local":
            try:
                ipaddress.ip_network(words[3], strict=False)
            except ValueError:
                if words[3] not in ("all", "samehost", "samenet"):
                    problems.add(f"pgHba[{i}]", f"{words[3]!r} is not an address or CIDR")
        hba_extra.append(text)

    initdb_raw = raw.get("initdb")
    initdb = DEFAULT_INITDB if initdb_raw is None else tuple(as_list(problems, "initdb", initdb_raw))
    for i, entry in enumerate(initdb):
        if not isinstance(entry, (str, dict)) or (isinstance(entry, dict) and len(entry) != 1):
            problems.add(f"initdb[{i}]", "must be a flag like data-checksums or a one-key object "
                         "like {encoding: UTF8}")

    reserved = {postgres.superuser, postgres.replication_user, postgres.rewind_user}
    roles = _load_roles(problems, raw.get("roles"), reserved, role_passwords, generate)

    restart_policy = as_str(problems, "restartPolicy", raw.get("restartPolicy"), "rolling")
    if restart_policy not in ("rolling", "manual"):
        problems.add("restartPolicy", f"{restart_policy!r} is not one of rolling, manual")
    leader = raw.get("leader")
    if leader is not None:
        leader = as_str(problems, "leader", leader)
        node = next((h for h in patroni_hosts if h.name == leader), None)
        if node is None:
            problems.add("leader", f"{leader!r} is not a host with the patroni role "
                         f"({', '.join(h.name for h in patroni_hosts) or 'none'})")
        elif node.tags.nofailover:
            problems.add("leader", f"{leader!r} is tagged nofailover and cannot lead")

    problems.raise_if_any()
    present = frozenset(k for k in (*SECRET_KEYS, "sshPrivateKey") if raw.get(k))
    return ClusterConfig(
        scope=scope, namespace=namespace, production=production, generate_passwords=generate,
        hosts=hosts, etcd=etcd, patroni=patroni, postgresql=postgres, dcs=dcs,
        initdb=tuple(initdb), client_cidrs=cidrs, pg_hba_extra=tuple(hba_extra), roles=roles,
        haproxy=haproxy, restart_policy=restart_policy, leader=leader, ssh=ssh, secrets_present=present,
        backup=backup, restore=restore, tls=tls,
    )


# --- Backups and point-in-time recovery (pgBackRest) -------------------------------------------

BACKUP_KEYS = ("stanza", "repoPath", "retention", "compression", "archiveAsync", "processMax",
               "encryption", "schedule", "archiveTimeout", "s3")
RESTORE_KEYS = ("fromStanza", "target")
COMPRESS_TYPES = ("none", "gz", "lz4", "zst", "bz2")
# Parameters pgha:backup sets on every node: a stack that also set them by hand would fight it.
BACKUP_PARAMETERS = ("archive_mode", "archive_command", "restore_command")
BACKUP_SECRET = "backupCipherPassphrase"
S3_SECRET = "backupS3KeySecret"
S3_KEYS = ("endpoint", "port", "bucket", "region", "uriStyle", "keyId", "caFile", "verifyTls")
STANZA_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
# pgBackRest 2.45 matches a server certificate by DNS name only (not an IP address): DNS_NAME_RE.
BUCKET_RE = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"


@dataclass(frozen=True)
class S3Repository:
    """An S3-type repository (pgha:backup.s3), reached from the repository host over HTTPS."""

    endpoint: str  # a DNS name: the certificate must carry it
    port: int
    bucket: str
    region: str
    uri_style: str  # "host" | "path"
    key_id: str  # repo1-s3-key; the secret key is pgha:backupS3KeySecret
    ca_file: str | None  # on the machine running pulumi; copied to the repository host
    verify_tls: bool


# The repository host's pgBackRest user (Debian's package makes it): it owns the repository,
# the cipher passphrase's file and, with pgha:tls, the CA and certificate its backup script uses.
BACKUP_USER = "pgbackrest"


@dataclass(frozen=True)
class BackupSettings:
    """pgBackRest: with a dedicated repository host (the host with the `backup` role), or, with
    none, a posix repository in repo_path on the Patroni nodes themselves (the "nodes" layout:
    repo_path is shared storage mounted at the same path on every node)."""

    stanza: str
    repo_path: str
    retention_full: int
    retention_diff: int | None
    compress_type: str
    compress_level: int | None
    archive_async: bool
    process_max: int
    # Repository encryption (aes-256-cbc) with pgha:backupCipherPassphrase.
    encryption: bool
    # systemd OnCalendar expressions; None: no timer for that backup type.
    schedule_full: str | None
    schedule_diff: str | None
    archive_timeout: str
    # None: a posix repository in repo_path on the repository host.
    s3: S3Repository | None = None
    # "repository-host" (a host with the backup role) or "nodes" (no such host: the repository
    # is repo_path on shared storage, and each node runs pgBackRest against it locally).
    layout: str = "repository-host"

    @property
    def on_nodes(self) -> bool:
        return self.layout == "nodes"


@dataclass(frozen=True)
class RestoreSettings:
    """A new cluster bootstrapped from another stanza's backups and WAL (Patroni custom bootstrap)."""

    from_stanza: str
    # "time" | "lsn" | "name" | "latest"
    target_kind: str
    # time: normalized to "YYYY-MM-DD HH:MM:SS[.ffffff]+00" (UTC); None for latest.
    target_value: str | None

    def describe(self) -> str:
        if self.target_kind == "latest":
            return "the end of its archived WAL (latest)"
        if self.target_kind == "name":
            return f"restore point {self.target_value!r}"
        return f"{self.target_kind} {self.target_value}"


_CAL_SHORTHANDS = frozenset({"minutely", "hourly", "daily", "monthly", "weekly", "yearly", "quarterly",
                             "semiannually", "annually"})
_CAL_DAYS = {d: i for i, names in enumerate((
    ("mon", "monday"), ("tue", "tuesday"), ("wed", "wednesday"), ("thu", "thursday"),
    ("fri", "friday"), ("sat", "saturday"), ("sun", "sunday"))) for d in names}
_CAL_ITEM = re.compile(r"(\*|\d+)(?:\.\.(\d+))?(?:/(\d+))?")


def _calendar_values(text: str, low: int, high: int, what: str) -> str | None:
    for item in text.split(","):
        m = _CAL_ITEM.fullmatch(item)
        if not m:
            return f"{item!r} is not a valid {what} (a number, *, a range a..b or a repetition a/step)"
        first, last, step = m.groups()
        if step is not None and int(step) == 0:
            return f"{item!r}: a repetition step must be at least 1"
        for number in (first, last):
            if number not in (None, "*") and not low <= int(number) <= high:
                return f"{what} {number} is out of range {low}..{high}"
        if first == "*" and last is not None:
            return f"{item!r}: * cannot start a range"
    return None


def check_calendar(spec: str) -> str | None:
    """Why `spec` is not a systemd OnCalendar expression (systemd.time(7)), or None.

    Covers the forms used for backups: shorthands (daily, weekly, ...) and
    `[weekdays] [[year-]month-day] [hour:minute[:second]] [timezone]`. The repository
    host checks the accepted text again with `systemd-analyze calendar` before using it.
    """
    words = spec.split()
    if not words:
        return "is empty"
    if len(words) == 1 and words[0].lower() in _CAL_SHORTHANDS:
        return None
    i = 0
    if words[i][0].isalpha() and words[i].lower().split(",")[0].split("..")[0] in _CAL_DAYS:
        for part in words[i].lower().split(","):
            ends = part.split("..")
            if len(ends) > 2 or any(e not in _CAL_DAYS for e in ends):
                return f"{part!r} is not a weekday or weekday range like Mon..Fri"
        i += 1
    elif all(part in _CAL_DAYS for part in words[0].lower().split("-")):
        return f"write a weekday range as {words[0].replace('-', '..')!r}"
    seen = 0
    if i < len(words) and ":" not in words[i] and re.search(r"[-~]", words[i]):
        date = words[i]
        parts = re.split(r"[-~]", date)
        if len(parts) == 2:
            parts = ["*", *parts]
        if len(parts) != 3:
            return f"{date!r} is not a date like *-*-01 or 2026-01-01"
        for text, low, high, what in ((parts[0], 1970, 2199, "year"), (parts[1], 1, 12, "month"),
                                      (parts[2], 1, 31, "day")):
            why = _calendar_values(text, low, high, what)
            if why:
                return why
        i += 1
        seen += 1
    if i < len(words) and ":" in words[i]:
        parts = words[i].split(":")
        if len(parts) not in (2, 3):
            return f"{words[i]!r} is not a time like 01:30 or 01:30:00"
        if len(parts) == 3:
            parts[2] = parts[2].split(".")[0]
        for text, high, what in zip(parts, (23, 59, 59), ("hour", "minute", "second"), strict=False):
            low = 0
            why = _calendar_values(text, low, high, what)
            if why:
                return why
        i += 1
        seen += 1
    zone = re.fullmatch(r"[A-Za-z][A-Za-z0-9_+/-]*", words[i]) if i == len(words) - 1 else None
    if zone and seen:
        i += 1  # a time zone: UTC, Europe/Paris
    if i != len(words):
        return f"cannot read {' '.join(words[i:])!r}; write e.g. 'Sun *-*-* 01:00:00' or 'daily'"
    return None  # weekdays alone ("Mon,Thu") mean midnight on those days


def _normalize_time(text: str) -> str | None:
    """`text` as "YYYY-MM-DD HH:MM:SS[.ffffff]+00" (UTC), or None when it has no time zone or is invalid."""
    from datetime import UTC, datetime

    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)\s*"
                     r"(Z|UTC|[+-]\d{2}(?::?\d{2})?)", text.strip())
    if not m:
        return None
    zone = m.group(3)
    if zone in ("Z", "UTC"):
        zone = "+00:00"
    elif len(zone) == 3:
        zone += ":00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        moment = datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{zone}").astimezone(UTC)
    except ValueError:
        return None
    text_utc = moment.strftime("%Y-%m-%d %H:%M:%S")
    if moment.microsecond:
        text_utc += f".{moment.microsecond:06d}".rstrip("0")
    return f"{text_utc}+00"


def _load_backup(problems: Problems, raw: dict[str, Any], secret_keys: set[str], hosts: tuple[Host, ...],
                 scope: str, generate: bool, production: bool) -> BackupSettings | None:
    backup_hosts = [(i, h) for i, h in enumerate(hosts) if "backup" in h.roles]
    for i, host in backup_hosts:
        j = host.roles.index("backup")
        if raw.get("backup") is None:
            problems.add(f"hosts[{i}].roles[{j}]",
                         "the backup role needs pgha:backup (at least `backup: {}`)")
        if "patroni" in host.roles:
            problems.add(f"hosts[{i}].roles", "the backup (repository) host must not be a Patroni node: "
                         "its backups must outlive the loss of any database host")
    if len(backup_hosts) > 1:
        i, _ = backup_hosts[1]
        problems.add(f"hosts[{i}].roles", f"only one host may have the backup role (also "
                     f"hosts[{backup_hosts[0][0]}]); pgha:backup uses one repository host")
    if BACKUP_SECRET in raw and BACKUP_SECRET not in secret_keys:
        problems.add(BACKUP_SECRET, f"must be a secret: pulumi config set --secret pgha:{BACKUP_SECRET} ...")
    if raw.get("backup") is None:
        if raw.get(BACKUP_SECRET):
            problems.add(BACKUP_SECRET, "is set but pgha:backup is not")
        return None
    data = as_mapping(problems, "backup", raw.get("backup"))
    check_unknown_keys(problems, "backup", data, BACKUP_KEYS)
    on_nodes = not backup_hosts
    if on_nodes and "repoPath" not in data:
        problems.add("backup.repoPath", "is required when no host has the backup role: the repository is "
                     "then on the Patroni nodes themselves, in a directory on shared storage (NFS or "
                     "similar) mounted at this same path on every Patroni node; or give one host the "
                     "backup role (a dedicated repository host)")
    retention = as_mapping(problems, "backup.retention", data.get("retention"))
    check_unknown_keys(problems, "backup.retention", retention, ("full", "diff"))
    compression = as_mapping(problems, "backup.compression", data.get("compression"))
    check_unknown_keys(problems, "backup.compression", compression, ("type", "level"))
    compress_type = as_str(problems, "backup.compression.type", compression.get("type"), "zst")
    if compress_type not in COMPRESS_TYPES:
        problems.add("backup.compression.type",
                     f"{compress_type!r} is not one of {', '.join(COMPRESS_TYPES)}")
    level = compression.get("level")
    if level is not None:
        zst = compress_type == "zst"
        level = as_int(problems, "backup.compression.level", level, 3, minimum=-5 if zst else 0,
                       maximum=22 if zst else 9)
        if compress_type == "none":
            problems.add("backup.compression.level", "has no meaning with compression type none")
    schedule = as_mapping(problems, "backup.schedule", data.get("schedule"))
    check_unknown_keys(problems, "backup.schedule", schedule, ("full", "diff"))
    calendars: dict[str, str | None] = {}
    for kind, default in (("full", "Sun *-*-* 01:00:00"), ("diff", "Mon..Sat *-*-* 01:00:00")):
        value = schedule.get(kind, default if "schedule" not in data else None)
        if value is None:
            calendars[kind] = None
            continue
        text = as_str(problems, f"backup.schedule.{kind}", value)
        why = check_calendar(text) if text else None
        if why:
            problems.add(f"backup.schedule.{kind}", f"{text!r} is not a systemd OnCalendar expression: {why}")
        calendars[kind] = " ".join(text.split())
    encryption = as_bool(problems, "backup.encryption", data.get("encryption"), True)
    if encryption and not raw.get(BACKUP_SECRET) and (production or not generate):
        problems.add(BACKUP_SECRET, "missing secret (the repository's cipher passphrase): pulumi config "
                     f"set --secret pgha:{BACKUP_SECRET} \"$(openssl rand -base64 48)\" "
                     "(or backup.encryption: false)")
    if not encryption and raw.get(BACKUP_SECRET):
        problems.add(BACKUP_SECRET, "is set but backup.encryption is false")
    archive_timeout = as_str(problems, "backup.archiveTimeout", data.get("archiveTimeout"), "60s")
    why = pg_params.check_parameter("archive_timeout", archive_timeout)
    if why:
        problems.add("backup.archiveTimeout", why)
    diff_retention = retention.get("diff")
    s3 = _load_s3(problems, raw, secret_keys, data.get("s3"))
    if on_nodes and s3 is not None:
        problems.add("backup.s3", "an S3 repository needs a host with the backup role (the repository host "
                     "alone holds the S3 credentials); without one, the repository is the shared posix "
                     "path pgha:backup.repoPath on the Patroni nodes")
    return BackupSettings(
        stanza=as_str(problems, "backup.stanza", data.get("stanza"), scope or "main", pattern=STANZA_RE,
                      what="stanza name (letters, digits, '-', '_', '.')"),
        repo_path=as_str(problems, "backup.repoPath", data.get("repoPath"),
                         "/pgbackrest" if s3 else "/var/lib/pgbackrest", pattern=ABS_PATH_RE,
                         what="absolute path"),
        retention_full=as_int(problems, "backup.retention.full", retention.get("full"), 2, minimum=1,
                              maximum=9999999),
        retention_diff=None if diff_retention is None else as_int(
            problems, "backup.retention.diff", diff_retention, 1, minimum=1, maximum=9999999),
        compress_type=compress_type, compress_level=level,
        archive_async=as_bool(problems, "backup.archiveAsync", data.get("archiveAsync"), True),
        process_max=as_int(problems, "backup.processMax", data.get("processMax"), 2, minimum=1, maximum=999),
        encryption=encryption,
        schedule_full=calendars["full"], schedule_diff=calendars["diff"],
        archive_timeout=archive_timeout, s3=s3,
        layout="nodes" if on_nodes else "repository-host",
    )


def _load_s3(problems: Problems, raw: dict[str, Any], secret_keys: set[str],
             value: Any) -> S3Repository | None:
    if S3_SECRET in raw and S3_SECRET not in secret_keys:
        problems.add(S3_SECRET, f"must be a secret: pulumi config set --secret pgha:{S3_SECRET} ...")
    if value is None:
        if raw.get(S3_SECRET):
            problems.add(S3_SECRET, "is set but pgha:backup.s3 is not")
        return None
    data = as_mapping(problems, "backup.s3", value)
    check_unknown_keys(problems, "backup.s3", data, S3_KEYS)
    if not raw.get(S3_SECRET):
        problems.add(S3_SECRET, f"missing secret (the S3 secret access key): pulumi config set --secret "
                                f"pgha:{S3_SECRET} ...")
    uri_style = as_str(problems, "backup.s3.uriStyle", data.get("uriStyle"), "host")
    if uri_style not in ("host", "path"):
        problems.add("backup.s3.uriStyle", f"{uri_style!r} is not one of host, path")
    ca_file = data.get("caFile")
    return S3Repository(
        endpoint=as_str(problems, "backup.s3.endpoint", data.get("endpoint"), None,
                        pattern=DNS_NAME_RE,
                        what="DNS name (pgBackRest checks the certificate by name, not by IP)"),
        port=as_int(problems, "backup.s3.port", data.get("port"), 443, minimum=1, maximum=65535),
        bucket=as_str(problems, "backup.s3.bucket", data.get("bucket"), None, pattern=BUCKET_RE,
                      what="S3 bucket name (3-63 lowercase letters, digits, '.', '-')"),
        region=as_str(problems, "backup.s3.region", data.get("region"), None),
        uri_style=uri_style,
        key_id=as_str(problems, "backup.s3.keyId", data.get("keyId"), None),
        ca_file=None if ca_file is None else as_str(problems, "backup.s3.caFile", ca_file,
                                                   pattern=ABS_PATH_RE, what="absolute path"),
        verify_tls=as_bool(problems, "backup.s3.verifyTls", data.get("verifyTls"), True),
    )


def _load_restore(problems: Problems, raw: Any, backup: BackupSettings | None) -> RestoreSettings | None:
    if raw is None:
        return None
    data = as_mapping(problems, "restore", raw)
    check_unknown_keys(problems, "restore", data, RESTORE_KEYS)
    if backup is None or backup.on_nodes:
        problems.add("restore", "needs pgha:backup and a host with the backup role: the repository to "
                     "restore from, where the new cluster then archives into its own stanza (a "
                     "repository on the nodes' shared storage cannot restore into a new cluster yet)")
    source = as_str(problems, "restore.fromStanza", data.get("fromStanza"), pattern=STANZA_RE,
                    what="stanza name")
    if backup is not None and source == backup.stanza:
        problems.add("restore.fromStanza", f"must name another cluster's stanza: the restored cluster "
                     f"archives into its own stanza {backup.stanza!r}, and the source's archive stays "
                     "untouched")
    target = data.get("target")
    kind, value = "latest", None
    if target is None:
        problems.add("restore.target", "is required: {time: '2026-01-31 12:00:00+00'}, {lsn: '0/5000028'}, "
                     "{name: restore-point} or latest")
    elif target != "latest":
        spec = as_mapping(problems, "restore.target", target)
        check_unknown_keys(problems, "restore.target", spec, ("time", "lsn", "name"))
        if len(spec) != 1:
            if spec:
                problems.add("restore.target",
                             f"give exactly one of time, lsn, name (got {', '.join(sorted(spec))})")
        else:
            kind, given = next(iter(spec.items()))
            text = str(given).strip() if isinstance(given, (str, int, float)) else ""
            if kind == "time":
                value = _normalize_time(text)
                if value is None:
                    problems.add("restore.target.time", f"{given!r} is not a time with a time zone, like "
                                 "'2026-01-31 12:00:00+00' (a time without a zone is ambiguous)")
            elif kind == "lsn":
                value = text.upper()
                if not re.fullmatch(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}", value):
                    problems.add("restore.target.lsn", f"{given!r} is not an LSN like 0/5000028")
            elif kind == "name":
                value = text
                if not value or len(value) > 63 or not re.fullmatch(r"[^'\"\\\n]+", value):
                    problems.add("restore.target.name", f"{given!r} is not a restore point name "
                                 "(1 to 63 characters, no quotes or backslashes)")
    return RestoreSettings(from_stanza=source, target_kind=kind, target_value=value)


def _check_backup_parameters(problems: Problems, raw_postgres: Any, backup: BackupSettings | None) -> None:
    declared = raw_postgres.get("parameters") if isinstance(raw_postgres, dict) else None
    if backup is None or not isinstance(declared, dict):
        return
    for name in BACKUP_PARAMETERS:
        if name in declared:
            problems.add(f"postgresql.parameters.{name}", "is set by pgha:backup (pgBackRest archive-push / "
                         "archive-get); remove it from the stack")

"""pgha's resources as a reviewer names them: `PatroniNode pg5`, and what a created or
deleted one is in a few words (its address, its version...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from review.preview import Preview, Step
from review.properties import normalized_inputs, text

# The resources `up` acts on, in the order the README lists them. A host's install is the
# steps of its PatroniHostInstall component (components/host_install.py), one kind here:
# pulumi-command's Command and CopyToRemote and the PatroniHostCleanup, named
# `<scope>-install-<host>-<part>`; PatroniInstall is the one resource older pgha made instead.
INSTALL = "Install"
INSTALL_KINDS = ("Command", "CopyToRemote", "PatroniHostCleanup")
INSTALL_PARTS = ("wheelhouse", "patroni", "distro", "unit", "cleanup")
KINDS = ("MembershipGuard", "EtcdMember", "PatroniCluster", "PatroniInstall", INSTALL, "BackupIdentity",
         "BackupRepository", "BackupNode", "BackupRestore", "PatroniBootstrap", "PatroniNode",
         "PatroniDynamicConfig", "PatroniLeader", "BackupStanza", "HAProxyConfig", "DatabaseRole",
         "GeneratedPassword", "TlsCertificateAuthority", "TlsCertificate", "TlsFiles", "TlsTrust",
         "EtcdTlsMove", "PatroniTlsMove")
# Resources whose `name` input is the host's or the role's name.
_NAMED_BY_INPUT = ("EtcdMember", "PatroniNode", "PatroniBootstrap", "DatabaseRole", "BackupNode",
                   "TlsCertificate")
# The part of a resource name after `<scope>-` that precedes the host or role name.
_NAME_PREFIX = {"EtcdMember": "etcd-", "PatroniInstall": "install-", "PatroniNode": "node-",
                "HAProxyConfig": "haproxy-", "DatabaseRole": "role-", "BackupIdentity": "backup-identity-",
                "BackupNode": "backup-node-"}


def install_part(step: Step, scope: str) -> tuple[str, str] | None:
    """(host, part) for a step of a host's install (`pg5`, `patroni`), else None."""
    if step.kind not in INSTALL_KINDS:
        return None
    rest = step.name.removeprefix(f"{scope}-")
    if not rest.startswith("install-") or "-" not in rest.removeprefix("install-"):
        return None
    host, part = rest.removeprefix("install-").rsplit("-", 1)
    return (host, part) if part in INSTALL_PARTS else None


def kind(step: Step, scope: str) -> str:
    """The kind a reviewer reads: `Install` for each step of a host's install."""
    return INSTALL if install_part(step, scope) else step.kind


def script_title(script: Any) -> str:
    """What an install script does, from its first comment line (`# pgha on pg5 (addr): ...`)."""
    for line in str(script or "").splitlines():
        line = line.strip().lstrip("'")
        if line.startswith("# pgha on ") and ": " in line:
            return line.split(": ", 1)[1]
    return ""


def is_logical(step: Step) -> bool:
    """Components (`pgha:index:PatroniCluster` too), the stack and providers: nothing happens on a host."""
    return not step.custom or step.type.startswith("pulumi:providers:")


def scope_of(preview: Preview) -> str:
    for step in preview.steps:
        scope = step.inputs.get("scope")
        if isinstance(scope, str) and scope:
            return scope
    return next((s.name for s in preview.steps if s.kind == "PostgresHaCluster"), "")


@dataclass(frozen=True)
class Named:
    """A resource's kind and its short name (host, role or purpose)."""

    kind: str
    short: str
    part: str = ""  # which step of a host's install

    def __str__(self) -> str:
        name = f"{self.kind} {self.short}" if self.short else self.kind
        return f"{name} ({self.part})" if self.part else name


def short_name(step: Step, scope: str) -> str:
    """The host a host resource sits on, the role's name, or '' for cluster-wide ones."""
    part = install_part(step, scope)
    if part:
        return part[0]
    name = step.inputs.get("name")
    if step.kind in _NAMED_BY_INPUT and isinstance(name, str):
        return name
    prefix = _NAME_PREFIX.get(step.kind)
    if prefix is not None:
        return step.name.removeprefix(f"{scope}-").removeprefix(prefix)
    if step.kind == "GeneratedPassword":
        purpose = str(step.inputs.get("purpose") or step.name.removeprefix(f"{scope}-"))
        return purpose.replace("role-", "role ", 1) if purpose.startswith("role-") else purpose
    if step.kind not in KINDS:  # a resource this summary does not know: its name, without the scope
        return step.name.removeprefix(f"{scope}-") if step.name != scope else ""
    return ""


def named(step: Step, scope: str, with_part: bool = True) -> Named:
    part = install_part(step, scope)
    if part:
        return Named(INSTALL, part[0], part[1] if with_part else "")
    return Named(step.kind, short_name(step, scope))


def role_words(inputs: dict[str, Any]) -> str:
    """`CREATEDB CREATEROLE LOGIN`: a role's attributes as CREATE ROLE spells them."""
    login = "LOGIN" if inputs.get("login", True) else "NOLOGIN"
    return " ".join([*(str(o) for o in inputs.get("options") or []), login])


def _endpoint(inputs: dict[str, Any], port_key: str) -> str:
    return f"{inputs.get('address', '?')}:{text(inputs.get(port_key, '?'))}"


def describe(step: Step) -> str:
    """What a created (or deleted) resource is, in a few words, from its inputs."""
    i = step.inputs
    match step.kind:
        case "EtcdMember":
            return f"client {_endpoint(i, 'client_port')}, peer port {text(i.get('peer_port'))}"
        case "PatroniNode":
            tags = [k for k, v in (i.get("tags") or {}).items() if v is True]
            extra = f", tags {', '.join(tags)}" if tags else ""
            return f"PostgreSQL {_endpoint(i, 'pg_port')}, data {i.get('data_dir', '?')}{extra}"
        case "PatroniInstall":
            return f"Patroni {i.get('version', '?')} ({i.get('method', '?')}) in {i.get('venv', '?')}"
        case "PatroniBootstrap":
            return f"first host {i.get('name', '?')}"
        case "HAProxyConfig":
            servers = ", ".join(normalized_inputs(step.kind, i).get("primary_servers") or {})
            return (f"primary :{text(i.get('primary_port'))}, replicas :{text(i.get('replica_port'))}, "
                    f"servers {servers or 'none'}")
        case "DatabaseRole":
            return role_words(i)
        case "PatroniCluster":
            return f"members {', '.join(i.get('members') or []) or 'none'}"
        case "MembershipGuard":
            return f"etcd members {', '.join(i.get('etcd_members') or []) or 'none'}"
        case "PatroniDynamicConfig":
            today = normalized_inputs(step.kind, i)
            count = len(today.get("parameters_reload") or {}) + len(today.get("parameters_restart") or {})
            return f"{count} parameters, restartPolicy {i.get('restart_policy', 'rolling')}"
        case "PatroniLeader":
            return f"leader {i['leader']}" if i.get("leader") else "no preferred leader"
        case "GeneratedPassword":
            return f"{text(i.get('length'))} characters, kept encrypted in the state"
        case "Command":
            return script_title(i.get("create")) or text(i.get("create"), 60)
        case "CopyToRemote":
            return f"upload to ~/{text(i.get('remotePath'))} (the SSH user's home)"
        case "PatroniHostCleanup":
            return script_title(i.get("script")) or "removes the install when the host leaves"
        case "BackupIdentity":
            made = " (created)" if i.get("create_user") else ""
            return f"user {text(i.get('user'))} and its SSH key{made}"
        case "BackupRepository" if i.get("layout") == "nodes":
            return (f"stanza {text(i.get('stanza'))} in {text(i.get('repo_path'))}, shared storage on "
                    f"{', '.join(sorted(i.get('nodes') or {}))} (checked)")
        case "BackupRepository":
            retention = i.get("retention") or {}
            return (f"stanza {text(i.get('stanza'))} in {text(i.get('repo_path'))}, "
                    f"{text(i.get('encryption'))}, keeps {text(retention.get('full'))} full backups")
        case "BackupNode" if i.get("layout") == "nodes":
            retention = i.get("retention") or {}
            return (f"archive_command to {text(i.get('repo_path'))} (shared), {text(i.get('encryption'))}, "
                    f"keeps {text(retention.get('full'))} full backups")
        case "BackupNode":
            return f"archive_command to {text(i.get('repo_user'))}@{text(i.get('repo_host'))}"
        case "BackupStanza":
            schedule = ", ".join(f"{k} {text(v)}" for k, v in sorted((i.get("schedule") or {}).items()))
            return f"stanza-create, check; backups {schedule or 'on demand only'}"
        case "BackupRestore":
            target = i.get("target") or {}
            return (f"restore from stanza {text(i.get('from_stanza'))} to {text(target.get('kind'))} "
                    f"{text(target.get('value', ''))}").strip()
    # A type this summary does not know: its first plain inputs.
    plain = [f"{k}={text(v, 40)}" for k, v in sorted(i.items())
             if k not in ("scope", "secrets", "connection") and not k.startswith("__")
             and not isinstance(v, (dict, list)) and v != "[secret]"]
    return ", ".join(plain[:4])

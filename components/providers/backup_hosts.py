"""pgBackRest on the hosts: who runs it, its configuration, and SSH between the repository
host and the database hosts (pgBackRest's "dedicated repository host" layout).

- BackupIdentity: the OS user that runs pgBackRest on one host (pgbackrest on the
  repository host, postgres on the nodes) and its SSH key pair, made ON the host: the
  private key never leaves it, so it is in no state, output or command line. Its outputs
  are the public key and the host's SSH host key.
- BackupRepository: the repository host's stanza configuration (conf.d/<stanza>.conf,
  0640 root:pgbackrest; the cipher passphrase alone in conf.d/<stanza>-cipher.conf, 0600
  pgbackrest), the repository directory, and the nodes' keys in pgbackrest's
  authorized_keys (forced to run pgbackrest only) and known_hosts.
- BackupNode: a database host's /etc/pgbackrest/pgbackrest.conf (0640 root:postgres; no
  secret: the repository host encrypts), and the repository's key in postgres's
  authorized_keys and known_hosts.

Several stacks may share one repository host (a restored clone uses its source's): each
writes only its own stanza's files and only the key lines tagged with its scope.

With no repository host (layout "nodes"), the repository is a posix path on shared storage
mounted on every Patroni node, and no SSH runs between hosts:
- BackupRepository checks that the path is one shared directory: a marker written there by
  postgres on the first node must be read (and the directory written) by postgres on every
  other node; otherwise `up` stops, naming pgha:backup.repoPath and the hosts, before
  Patroni starts archiving.
- BackupNode writes pgbackrest.conf with the repository itself (repo1-path, retention) and
  the cipher passphrase alone in conf.d/<stanza>-cipher.conf (0600 postgres): every node
  writes the repository (archive-push from whichever node leads).
"""

from __future__ import annotations

import shlex
import uuid
from typing import Any, ClassVar

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components import render
from components.providers.base import HostProvider, public
from components.transport.ssh import Ssh, SshError, SshTarget

CONF_DIR = "/etc/pgbackrest"
CONF_FILE = f"{CONF_DIR}/pgbackrest.conf"
# pgBackRest forced command for authorized_keys, as in pgBackRest's user guide: the key only
# ever runs pgbackrest (its remote), with no forwarding, pty or rc files.
FORCED_COMMAND = 'restrict,command="/usr/bin/pgbackrest ${SSH_ORIGINAL_COMMAND#* }"'


def key_tag(scope: str, name: str) -> str:
    """The comment that marks a key line as this stack's (one line per host)."""
    return f"pgha-backup:{scope}:{name}"


def merge_managed_lines(existing: str, scope: str, lines: dict[str, str]) -> str:
    """authorized_keys / known_hosts with this stack's lines replaced by `lines` ({host: line
    without its tag}), every other line (the user's own, other stacks') kept as it was."""
    prefix = f"pgha-backup:{scope}:"
    kept = [line for line in existing.splitlines() if not line.rstrip().split(" ")[-1].startswith(prefix)]
    ours = [f"{text.strip()} {key_tag(scope, name)}" for name, text in sorted(lines.items()) if text]
    out = "\n".join(kept + ours)
    return out + "\n" if out else ""


def key_body(public_key: str) -> str:
    """`ssh-ed25519 AAAA...` without the key's own comment."""
    return " ".join(public_key.split()[:2])


def authorized_key_line(public_key: str) -> str:
    return f"{FORCED_COMMAND} {key_body(public_key)}"


def known_host_line(address: str, host_key: str) -> str:
    return f"{address} {key_body(host_key)}"


def user_home(ssh: Ssh, user: str) -> tuple[str, str]:
    """(home directory, primary group) of an OS user."""
    out = ssh.run(f"getent passwd {shlex.quote(user)} | cut -d: -f6; id -gn {shlex.quote(user)}",
                  step=f"look up the {user} user").stdout.split()
    if len(out) != 2:
        raise SshError(ssh.target.host, f"look up the {user} user", f"no user {user} on this host")
    return out[0], out[1]


def update_key_file(ssh: Ssh, user: str, name: str, scope: str, lines: dict[str, str]) -> bool:
    """Rewrite this stack's lines in ~user/.ssh/<name> (0600, owned by the user)."""
    home, group = user_home(ssh, user)
    ssh.run(f"install -d -m 0700 -o {shlex.quote(user)} -g {shlex.quote(group)} {shlex.quote(home)}/.ssh",
            step=f"create {home}/.ssh")
    path = f"{home}/.ssh/{name}"
    existing = ssh.run(f"cat {shlex.quote(path)} 2>/dev/null || true", step=f"read {path}").stdout
    return ssh.write_file(path, merge_managed_lines(existing, scope, lines), step=f"write {path}",
                          mode="0600", owner=user, group=group)


def ensure_pgbackrest(ssh: Ssh) -> str:
    """pgBackRest's version on the host, installing the distro package when it is missing."""
    probe = "pgbackrest version 2>/dev/null"
    found = ssh.run(probe, step="check pgBackRest", check=False)
    if found.code != 0:
        ssh.run("if command -v apt-get >/dev/null; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                "--no-install-recommends pgbackrest; elif command -v dnf >/dev/null; then dnf install -y "
                "pgbackrest; else exit 1; fi", step="install pgBackRest (the pgbackrest package)",
                check=False, timeout=600)
        found = ssh.run(probe, step="check pgBackRest", check=False)
        if found.code != 0:
            raise SshError(ssh.target.host, "install pgBackRest",
                           "pgbackrest is not installed and its package could not be installed: install "
                           "the pgbackrest package (Debian 12: apt-get install pgbackrest)")
    return found.stdout.strip().removeprefix("pgBackRest ").strip()


class BackupIdentityProvider(HostProvider):
    REPLACE_ON = frozenset({"user"})
    OBSERVED: ClassVar[dict[str, Any]] = {"key_ok": True}
    OUTPUTS = frozenset({"public_key", "host_key", "pgbackrest_version"})

    def _probe(self, ssh: Ssh, props: dict[str, Any]) -> dict[str, Any]:
        user = props["user"]
        home, _group = user_home(ssh, user)
        key = f"{home}/.ssh/id_ed25519"
        pub = ssh.run(f"cat {shlex.quote(key)}.pub 2>/dev/null && test -s {shlex.quote(key)}",
                      step="read the pgBackRest SSH key", check=False)
        host_key = ssh.run("cat /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null || "
                           "cat /etc/ssh/ssh_host_ecdsa_key.pub /etc/ssh/ssh_host_rsa_key.pub 2>/dev/null",
                           step="read the host's SSH host key", check=False).stdout.strip().splitlines()
        version = ssh.run("pgbackrest version 2>/dev/null", step="check pgBackRest", check=False).stdout
        return {"public_key": key_body(pub.stdout) if pub.code == 0 else "",
                "host_key": key_body(host_key[0]) if host_key else "",
                "pgbackrest_version": version.strip().removeprefix("pgBackRest ").strip(),
                "key_ok": pub.code == 0 and bool(pub.stdout.strip())}

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        user = shlex.quote(props["user"])
        with self.ssh(props) as ssh:
            ensure_pgbackrest(ssh)
            if props.get("create_user"):
                # As pgBackRest's guide: a user of its own owns the repository, not postgres.
                ssh.run(f"id -u {user} >/dev/null 2>&1 || useradd --system --user-group --create-home "
                        f"--home-dir /home/{props['user']} --shell /bin/bash {user}",
                        step=f"create the {props['user']} user")
            # A locked password ('!') makes sshd refuse even key logins where PAM is off;
            # '*' only means "no password".
            ssh.run(f"if [ \"$(getent shadow {user} | cut -d: -f2 | cut -c1)\" = '!' ]; then "
                    f"usermod -p '*' {user}; fi", step=f"allow key logins for {props['user']}")
            home, group = user_home(ssh, props["user"])
            key = shlex.quote(f"{home}/.ssh/id_ed25519")
            comment = shlex.quote(f"{props['user']}@{props['host_name']}")
            ssh.run(f"install -d -m 0700 -o {user} -g {shlex.quote(group)} {shlex.quote(home)}/.ssh && "
                    f"if ! [ -s {key} ]; then rm -f {key} {key}.pub; runuser -u {user} -- ssh-keygen -q "
                    f"-t ed25519 -N '' -C {comment} -f {key}; fi",
                    step=f"create {props['user']}'s SSH key for pgBackRest")
            probed = self._probe(ssh, props)
        if not probed["host_key"]:
            raise SshError(props["connection"]["host"], "read the host's SSH host key",
                           "no /etc/ssh/ssh_host_*_key.pub")
        return {**public(props), **probed}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}/{props['host_name']}/backup-identity",
                            outs=self._apply(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        outs = dict(props)
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                outs.update(self._probe(ssh, props))
        except SshError:
            outs["key_ok"] = False
        return ReadResult(id_=id_, outs=outs)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The user and its key stay: another stack may share the repository host, and the
        key is only trusted where a BackupRepository/BackupNode put it (removed with them)."""


def repo_stanza_conf(props: dict[str, Any], detached: bool = False) -> str:
    ca = s3_ca_file(props["stanza"]) if props.get("s3_ca") else None
    return render.render("pgbackrest-repo.conf.j2", detached=detached, s3_ca_file=ca, **props)


def node_conf(props: dict[str, Any]) -> str:
    return render.render("pgbackrest-node.conf.j2", **props)


def _file_is(provider: HostProvider, props: dict[str, Any], path: str, expected: str) -> bool:
    """What a refresh reads back: the file on the host is exactly `expected` (False when the host
    does not answer)."""
    try:
        with provider.ssh(props, connect_timeout=10) as ssh:
            return ssh.run(f"cat {path} 2>/dev/null || true", step=f"read {path}").stdout == expected
    except SshError:
        return False


def _stanza_files(stanza: str) -> tuple[str, str]:
    """The stanza's settings, and its secrets alone (0600): the cipher passphrase, the S3 secret key."""
    return f"{CONF_DIR}/conf.d/{stanza}.conf", f"{CONF_DIR}/conf.d/{stanza}-cipher.conf"


def s3_ca_file(stanza: str) -> str:
    return f"{CONF_DIR}/conf.d/{stanza}-s3-ca.crt"


def repo_secrets_conf(props: dict[str, Any]) -> str:
    """The stanza's secret options, or "" when it has none (pure)."""
    secrets = props.get("secrets") or {}
    lines = []
    if props["encryption"] != "none":
        lines += [f"repo1-cipher-type={props['encryption']}", f"repo1-cipher-pass={secrets['cipher_pass']}"]
    if props.get("s3"):
        lines.append(f"repo1-s3-key-secret={secrets['s3_key_secret']}")
    if not lines:
        return ""
    return (f"# Managed by pgha (stack {props['scope']}): the secrets of stanza {props['stanza']}'s "
            f"repository.\n[{props['stanza']}]\n" + "\n".join(lines) + "\n")


def on_nodes(props: dict[str, Any]) -> bool:
    """The repository is the nodes' shared storage (no repository host)."""
    return props.get("layout") == "nodes"


def shared_marker(repo_path: str, scope: str) -> str:
    return f"{repo_path.rstrip('/')}/.pgha-shared-check-{scope}"


# What a node reports about the marker: its text, then one line WRITABLE or READONLY.
_WRITABLE, _READONLY = "WRITABLE", "READONLY"


def shared_path_problem(repo_path: str, user: str, writer: str, token: str,
                        seen: dict[str, str]) -> str | None:
    """Why repo_path is not one directory shared by every node, from what each other node read
    back ({node: its report}); None when it is (pure)."""
    missing, readonly = [], []
    for name, report in sorted(seen.items()):
        lines = report.strip().splitlines()
        if not lines or lines[0].strip() != token:
            missing.append(name)
        elif lines[-1].strip() != _WRITABLE:
            readonly.append(name)
    if not missing and not readonly:
        return None
    why = []
    if missing:
        why.append(f"a marker written there by {user} on {writer} is not visible on {', '.join(missing)}")
    if readonly:
        why.append(f"{user} cannot write there on {', '.join(readonly)} (the same uid on every node?)")
    return (f"pgha:backup.repoPath {repo_path} is not shared storage: {'; '.join(why)}. "
            + _shared_rule(repo_path, user, [writer, *seen]))


def _shared_rule(repo_path: str, user: str, nodes: list[str]) -> str:
    return (f"With no host in the backup role, the repository must be one directory on shared storage "
            f"(NFS or similar) mounted at this same path on every Patroni node ({', '.join(sorted(nodes))}), "
            f"writable by {user}: otherwise, after a failover, the new primary archives into a repository "
            f"without the backups. Mount it there (`findmnt {repo_path}` on each node), or give one host "
            "the backup role.")


def check_shared_path(props: dict[str, Any]) -> None:
    """Write a marker on the first node and read it back on every other one (see
    shared_path_problem); SshError naming pgha:backup.repoPath when the path is not shared."""
    path, user, scope = props["repo_path"], props["repo_user"], props["scope"]
    nodes = props["nodes"]
    names = sorted(nodes)
    writer = names[0]
    token = f"pgha {scope} {uuid.uuid4().hex}"
    marker = shlex.quote(shared_marker(path, scope))
    step = "check pgha:backup.repoPath (shared storage)"

    def connect(name: str) -> Ssh:
        return Ssh(SshTarget.from_props(nodes[name], props.get("ssh_private_key")), connect_timeout=15)

    as_user = f"cd / && runuser -u {shlex.quote(user)} --"
    seen: dict[str, str] = {}
    with connect(writer) as first:
        made = first.run(f"{as_user} mkdir -p -m 0750 {shlex.quote(path)} && "
                         f"{as_user} sh -c 'cat > \"$1\"' sh {marker}", step=step, stdin=token + "\n",
                         check=False)
        if made.code != 0:
            raise SshError(nodes[writer]["host"], step,
                           f"pgha:backup.repoPath {path} is not usable on {writer}: {user} cannot create or "
                           f"write it ({(made.stderr or made.stdout).strip()[-300:]}). "
                           + _shared_rule(path, user, names))
        try:
            for name in names[1:]:
                probe = (f"{as_user} cat {marker} 2>/dev/null; "
                         f"if {as_user} sh -c ': > \"$1.w\" && rm -f \"$1.w\"' sh {marker} 2>/dev/null; "
                         f"then echo {_WRITABLE}; else echo {_READONLY}; fi")
                with connect(name) as ssh:
                    seen[name] = ssh.run(probe, step=step, check=False).stdout
        finally:
            first.run(f"rm -f {marker}", step=step, check=False)
    problem = shared_path_problem(path, user, writer, token, seen)
    if problem:
        raise SshError(nodes[writer]["host"], step, problem)


class BackupRepositoryProvider(HostProvider):
    REPLACE_ON = frozenset({"stanza"})
    OBSERVED: ClassVar[dict[str, Any]] = {"config_ok": True}
    OUTPUTS = frozenset({"pgbackrest_version"})

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        if on_nodes(props):
            check_shared_path(props)
            return {**public(props), "config_ok": True}
        user = props["repo_user"]
        conf, cipher = _stanza_files(props["stanza"])
        with self.ssh(props) as ssh:
            version = ensure_pgbackrest(ssh)
            # A posix repository is a directory here; an S3 one lives in its bucket.
            repo = "" if props.get("s3") else (
                f"install -d -m 0750 -o {user} -g {user} {shlex.quote(props['repo_path'])} && ")
            ssh.run(f"{repo}install -d -m 0770 -o {user} -g {user} /var/log/pgbackrest && "
                    f"install -d -m 0755 {CONF_DIR} {CONF_DIR}/conf.d",
                    step="create the repository and log directories")
            if props.get("s3_ca"):
                ca = s3_ca_file(props["stanza"])
                ssh.write_file(ca, props["s3_ca"], step=f"write {ca}", mode="0644")
            ssh.write_file(CONF_FILE, render.render("pgbackrest-repo-global.conf.j2"),
                           step=f"write {CONF_FILE}", mode="0640", owner="root", group=user)
            ssh.write_file(conf, repo_stanza_conf(props), step=f"write {conf}", mode="0640", owner="root",
                           group=user)
            text = repo_secrets_conf(props)
            if text:
                ssh.write_file(cipher, text, step=f"write {cipher}", mode="0600", owner=user, group=user)
            else:
                ssh.run(f"rm -f {cipher}", step=f"remove {cipher}")
            update_key_file(ssh, user, "authorized_keys", props["scope"],
                            {n: authorized_key_line(k) for n, k in (props.get("node_keys") or {}).items()})
            host_keys = props.get("node_host_keys") or {}
            update_key_file(ssh, user, "known_hosts", props["scope"],
                            {n: known_host_line(props["pg_hosts"][n]["address"], k)
                             for n, k in host_keys.items() if n in props["pg_hosts"]})
        return {**public(props), "pgbackrest_version": version, "config_ok": True}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}/{props['stanza']}/repository", outs=self._apply(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if on_nodes(props):
            # The shared mount gone from a node is drift; a node that does not answer is not.
            try:
                check_shared_path(props)
                ok = True
            except SshError as err:
                ok = err.step == "connect over SSH"
            return ReadResult(id_=id_, outs={**props, "config_ok": ok})
        conf, _cipher = _stanza_files(props["stanza"])
        ok = _file_is(self, props, conf, repo_stanza_conf(props))
        return ReadResult(id_=id_, outs={**props, "config_ok": ok})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """The stanza's backups and repository settings stay (restorable with pgha:restore);
        the database hosts and their keys are detached. On the nodes' shared storage the
        repository stays as it is."""
        if on_nodes(props):
            return
        conf, _cipher = _stanza_files(props["stanza"])
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                ssh.write_file(conf, repo_stanza_conf(props, detached=True), step=f"write {conf}",
                               mode="0640", owner="root", group=props["repo_user"])
                for name in ("authorized_keys", "known_hosts"):
                    update_key_file(ssh, props["repo_user"], name, props["scope"], {})
        except SshError as err:
            if err.step != "connect over SSH":
                raise


class BackupNodeProvider(HostProvider):
    REPLACE_ON = frozenset({"name"})
    OBSERVED: ClassVar[dict[str, Any]] = {"config_ok": True}

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        with self.ssh(props) as ssh:
            ensure_pgbackrest(ssh)
            ssh.run(f"install -d -m 0755 {CONF_DIR} {CONF_DIR}/conf.d && "
                    "install -d -m 0750 -o postgres -g postgres /var/log/pgbackrest /var/spool/pgbackrest",
                    step="create pgBackRest's directories")
            ssh.write_file(CONF_FILE, node_conf(props), step=f"write {CONF_FILE}", mode="0640",
                           owner="root", group="postgres")
            if on_nodes(props):
                # The repository is written from here: its secrets too, alone in a 0600 file.
                _conf, cipher = _stanza_files(props["stanza"])
                text = repo_secrets_conf(props)
                if text:
                    ssh.write_file(cipher, text, step=f"write {cipher}", mode="0600", owner="postgres",
                                   group="postgres")
                else:
                    ssh.run(f"rm -f {cipher}", step=f"remove {cipher}")
                return {**public(props), "config_ok": True}
            update_key_file(ssh, "postgres", "authorized_keys", props["scope"],
                            {"repository": authorized_key_line(props["repo_key"])})
            update_key_file(ssh, "postgres", "known_hosts", props["scope"],
                            {"repository": known_host_line(props["repo_host"], props["repo_host_key"])})
        return {**public(props), "config_ok": True}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}/{props['name']}/backup-node", outs=self._apply(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        ok = _file_is(self, props, CONF_FILE, node_conf(props))
        return ReadResult(id_=id_, outs={**props, "config_ok": ok})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                _conf, cipher = _stanza_files(props["stanza"])
                for path in (CONF_FILE, *([cipher] if on_nodes(props) else [])):
                    ssh.run(f"if grep -q 'Managed by pgha (stack {props['scope']})' {path} 2>/dev/null; "
                            f"then rm -f {path}; fi", step=f"remove {path}")
                if on_nodes(props):
                    return
                for name in ("authorized_keys", "known_hosts"):
                    update_key_file(ssh, "postgres", name, props["scope"], {})
        except SshError as err:
            if err.step != "connect over SSH":
                raise

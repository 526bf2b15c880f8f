"""DatabaseRole: a PostgreSQL role created, altered and dropped on the leader.

Patroni 4 no longer creates bootstrap `users`, so pgha does it after the
cluster is up. The password never reaches the server in plaintext: pgha sends
a SCRAM-SHA-256 verifier computed here, through psql's stdin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shlex
import stringprep
import time
import unicodedata
from typing import Any, ClassVar

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components.providers.base import HostProvider, public
from components.transport.rest import PatroniApi, RestError
from components.transport.ssh import Ssh, SshError, SshTarget, WaitFailed, notify, wait_for

TOGGLES = ("SUPERUSER", "CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS")
# A standby leader (of a standby cluster) is read-only: SQL runs on a primary only,
# so this is narrower than the REST client's LEADER_ROLES.
WRITABLE_ROLES = ("leader", "primary", "master")


def saslprep(password: str) -> str:
    """RFC 4013 as PostgreSQL applies it: on a prohibited character, the raw password is used."""
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch
                     for ch in password if not stringprep.in_table_b1(ch))
    prepared = unicodedata.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
                  stringprep.in_table_a1)
    if any(check(ch) for ch in prepared for check in prohibited):
        return password
    return prepared


def scram_verifier(password: str, iterations: int = 4096, salt: bytes | None = None) -> str:
    """PostgreSQL's SCRAM-SHA-256 password verifier (RFC 5802 / 7677)."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def role_options_sql(options: list[str], login: bool) -> str:
    """Every attribute spelled out, so ALTER also takes away what the config dropped."""
    chosen = set(options)
    words = [opt if opt in chosen else f"NO{opt}" for opt in TOGGLES]
    words.append("NOINHERIT" if "NOINHERIT" in chosen else "INHERIT")
    words.append("LOGIN" if login else "NOLOGIN")
    return " ".join(words)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class NoLeader(RuntimeError):
    """No Patroni node of the cluster answers as a writable leader."""


def find_leader(props: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """(how to reach the writable leader, the nodes that answered) from one look at the nodes."""
    answered = []
    for name, host in props["nodes"].items():
        try:
            status = PatroniApi(host["api_url"]).patroni()
        except RestError:
            continue
        answered.append(name)
        if status.get("role") in WRITABLE_ROLES:
            return host, answered
        try:
            members = PatroniApi(host["api_url"]).cluster().get("members") or []
        except RestError:
            continue
        for member in members:
            if member.get("role") in WRITABLE_ROLES and member["name"] != name:
                # A leader added after this role's last update: reach it with the defaults.
                default = {**props["default_connection"], "host": member["host"]}
                return props["nodes"].get(member["name"]) or {"connection": default}, answered
    return None, answered


class DatabaseRoleProvider(HostProvider):
    REPLACE_ON = frozenset({"name"})
    # How to reach the nodes is routing, not the role's state: membership
    # changes must not show as an update of every role.
    CREATE_ONLY = frozenset({"nodes", "default_connection"})
    # `confirmed`: whether the last refresh saw the role on the leader. A refresh that could
    # not look (no leader answered) records False, so the next `up` creates the role if a
    # rebuilt cluster lacks it (and only ALTERs it if it is there).
    OBSERVED: ClassVar[dict[str, Any]] = {"confirmed": True}

    def _leader(self, props: dict[str, Any], timeout: float = 120.0, patience: float = 20.0
                ) -> dict[str, Any]:
        """The writable leader, waiting for one; stops when no node answers at all for `patience`."""
        started = time.monotonic()
        answered: list[str] = []

        def find() -> dict[str, Any] | None:
            host, answered[:] = find_leader(props)
            return host

        def nobody() -> str | None:
            if answered or time.monotonic() - started < patience:
                return None
            return f"no Patroni node of {props['scope']} answers ({', '.join(props['nodes'])})"

        try:
            return wait_for(find, timeout=timeout, interval=1, what="a Patroni leader to run SQL on",
                            host=props["scope"], blocked=nobody,
                            status=lambda: f"answering: {', '.join(answered) or 'none'}")
        except WaitFailed as err:
            raise NoLeader(err.cause or str(err)) from err

    def _psql(self, props: dict[str, Any], sql: str, step: str, leader: dict[str, Any] | None = None) -> str:
        leader = leader or self._leader(props)
        target = SshTarget.from_props(leader["connection"], props.get("ssh_private_key"))
        psql = (f"runuser -u postgres -- {shlex.quote(props['bin_dir'])}/psql -X -q -At "
                f"-v ON_ERROR_STOP=1 -h {shlex.quote(props['socket_dir'])} -p {int(props['pg_port'])} "
                f"-d postgres")
        with Ssh(target) as ssh:
            return ssh.run(psql, step=step, stdin=sql).stdout.strip()

    def _apply(self, props: dict[str, Any]) -> None:
        """CREATE the role, or ALTER it when it exists: whatever the state says, the leader
        decides (a create may find it made by hand, an update after a rebuild may not)."""
        name = props["name"]
        options = role_options_sql(props.get("options", []), props.get("login", True))
        password = (props.get("secrets") or {}).get("password")
        pw_sql = f" PASSWORD {_literal(scram_verifier(password))}" if password else ""
        leader = self._leader(props)
        sql = (f"SELECT 1 FROM pg_roles WHERE rolname = {_literal(name)}\n")
        exists = self._psql(props, sql, step=f"look up role {name}", leader=leader) == "1"
        verb = "ALTER" if exists else "CREATE"
        self._psql(props, f"{verb} ROLE {_ident(name)} WITH {options}{pw_sql};\n",
                   step=f"{verb.lower()} role {name}", leader=leader)

    def create(self, props: dict[str, Any]) -> CreateResult:
        self._apply(props)
        outs = {**public(props), "confirmed": True}
        return CreateResult(id_=f"{props['scope']}/role/{props['name']}", outs=outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        self._apply(news)
        return UpdateResult(outs={**public(news), "confirmed": True})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh with one look (no wait): a role the leader lacks leaves the state; when no
        leader answers, whether it exists is not confirmed, which the next `up` settles."""
        leader, _ = find_leader(props)
        if leader is None:
            notify(props["scope"], f"role {props['name']}: no Patroni leader answers, cannot tell whether it "
                   f"exists", warning=True)
            return ReadResult(id_=id_, outs={**props, "confirmed": False})
        try:
            found = self._psql(props, f"SELECT 1 FROM pg_roles WHERE rolname = {_literal(props['name'])}\n",
                               step=f"look up role {props['name']}", leader=leader)
        except SshError:
            return ReadResult(id_=id_, outs={**props, "confirmed": False})
        return ReadResult(id_=id_ if found == "1" else "", outs={**props, "confirmed": found == "1"})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        try:
            self._psql(props, f"DROP ROLE IF EXISTS {_ident(props['name'])};\n",
                       step=f"drop role {props['name']}", leader=self._leader(props, timeout=60, patience=10))
        except NoLeader as err:
            # The cluster itself is gone (stack destroy, or hosts lost): nothing left to drop.
            notify(props["scope"], f"skipped dropping role {props['name']}: {err}", warning=True)
        except SshError as err:
            if err.step != "connect over SSH":
                raise
            notify(props["scope"], f"skipped dropping role {props['name']}: the leader is unreachable "
                   f"({err})", warning=True)

"""PatroniNode: Patroni (and so PostgreSQL) running on one host.

A create returns only once the node runs as the leader or as a streaming
replica. Changes to node-local settings rewrite patroni.yml and reload.
A delete never stops a leader that still has healthy replicas: it switches
over first (unless the replicas are themselves going away, as in a destroy).

The node's PostgreSQL system identifier is recorded at create and update. A
refresh compares what runs (or what is on disk when Patroni does not answer)
with it: a node that is gone (no unit, patroni.yml or data), whose data
directory is empty, or that belongs to another cluster (another scope or
system identifier) is drift, said in words in `drift`. Before starting Patroni,
`up` checks the host again (plan_node): a node without data is rebuilt from the
leader, and data of another system is never started over nor removed: `up`
stops and says how to resolve it. Waits for Patroni read its journal and stop
at once when it shows why Patroni cannot come up (start_blocker).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components import render, state_upgrade
from components.handover import plan_handover
from components.providers.base import HostProvider, public
from components.providers.patroni_cluster import DcsView, dcs_prefix, is_system_identifier, pgha_prefix
from components.providers.patroni_install import UNIT_FILE
from components.succession import SyncMode, members_of
from components.transport.rest import LEADER_ROLES, EtcdGateway, PatroniApi, RestError, first_healthy
from components.transport.ssh import Ssh, SshError, UnitStopped, WaitFailed, enable_unit, notify, wait_for


def scheme(props: dict[str, Any]) -> str:
    """https for etcd and Patroni's REST API when the node runs with pgha:tls (its spec has `tls`)."""
    return "https" if props.get("tls") else "http"


def etcd_urls(props: dict[str, Any]) -> list[str]:
    return [f"{scheme(props)}://{e}" for e in props["etcd_hosts"]]


def api(props: dict[str, Any]) -> PatroniApi:
    return PatroniApi(f"{scheme(props)}://{props['address']}:{props['restapi_port']}",
                      auth=(props["restapi_username"], props["secrets"]["restapi"]))


def ready_status(node: PatroniApi) -> dict[str, Any] | None:
    """The node's /patroni when it is a running leader or a streaming replica."""
    return ready_status_of(node.patroni())


def ready_status_of(status: dict[str, Any], holds_leader_lock: bool = True) -> dict[str, Any] | None:
    """`status` (a /patroni answer) when it shows a running leader or a streaming replica.

    A new cluster's first node reports role primary as soon as PostgreSQL leaves recovery,
    one HA loop before Patroni writes the leader key, the system identifier and /config
    (post_bootstrap): a leader counts only once it holds the leader lock.
    """
    if status.get("state") != "running":
        return None
    if status.get("role") in LEADER_ROLES:
        return status if holds_leader_lock else None
    if status.get("role") == "replica" and status.get("replication_state") == "streaming":
        return status
    return None


def _journal(ssh: Ssh) -> str:
    out = ssh.run("journalctl -u patroni -n 15 --no-pager -o cat", step="read patroni's journal",
                  check=False)
    return out.stdout.strip()[-2000:]


def _member_key(props: dict[str, Any]) -> str:
    return f"{dcs_prefix(props)}members/{props['name']}"


def dcs_gateway(props: dict[str, Any]) -> EtcdGateway | None:
    """A healthy etcd member of the cluster this node uses as its DCS."""
    return first_healthy(etcd_urls(props))


def member_states(gateway: EtcdGateway, props: dict[str, Any], dcs: DcsView) -> dict[str, str]:
    """{member: PostgreSQL state} as each registered member last wrote it to the DCS."""
    states = {}
    for name in dcs.members:
        try:
            states[name] = str(json.loads(gateway.get(f"{dcs_prefix(props)}members/{name}") or "{}")
                               .get("state", ""))
        except ValueError:
            states[name] = ""
    return states


def bootstrap_running(states: dict[str, str]) -> bool:
    """Whether some registered member runs the cluster's bootstrap: nodes waiting beside it
    have not started PostgreSQL ("stopped"); the bootstrapping one initializes, restores or
    starts it."""
    return any(state not in ("", "stopped") for state in states.values())


def leader_member(gateway: EtcdGateway, props: dict[str, Any]) -> dict[str, Any] | None:
    """The leader's member record in the DCS (conn_url, api_url, ...); None before bootstrap."""
    leader = gateway.get(f"{dcs_prefix(props)}leader")
    if not leader:
        return None
    return json.loads(gateway.get(f"{dcs_prefix(props)}members/{leader}") or "{}")


def wait_for_dcs(props: dict[str, Any], timeout: float = 30.0) -> EtcdGateway:
    """A healthy etcd member of the DCS, waiting a while for one (etcd members repaired
    earlier in the same `up` may still be electing a leader; that takes seconds)."""
    endpoints = ", ".join(etcd_urls(props))
    try:
        return wait_for(lambda: dcs_gateway(props), timeout=timeout, interval=1,
                        what=f"a healthy etcd member among {endpoints}", host=props["address"])
    except WaitFailed as err:
        raise SshError(props["address"], "reach the DCS",
                       f"no healthy etcd among {endpoints} within {timeout:.0f}s: Patroni cannot run without "
                       f"its DCS. `pulumi refresh` shows the etcd members' state and the next `pulumi up` "
                       f"repairs them") from err


# --- what is on the host (pure) ---------------------------------------------------------

# `data` of a node, as NODE_PROBE reports it: a system identifier, or one of these.
DATA_ABSENT = "absent"  # no data directory
DATA_EMPTY = "empty"  # an empty data directory
DATA_UNREADABLE = "unreadable"  # PG_VERSION, but pg_controldata cannot read the control file
DATA_OTHER = "other"  # files, but no PostgreSQL cluster (no PG_VERSION)


def has_data(data: str) -> bool:
    """Whether a data directory holds something (that pgha must never remove unasked)."""
    return data not in (DATA_ABSENT, DATA_EMPTY)


@dataclass(frozen=True)
class NodeOnHost:
    """A Patroni node's traces on its host, as SSH sees them."""

    unit: bool  # the patroni systemd unit is installed
    config_scope: str | None  # `scope` in patroni.yml; None without the file
    active: str  # `systemctl is-active patroni`
    data: str  # a system identifier, or DATA_ABSENT / DATA_EMPTY / DATA_UNREADABLE / DATA_OTHER


def parse_node_probe(output: str) -> NodeOnHost:
    values = dict(line.partition("=")[::2] for line in output.splitlines() if "=" in line)
    scope = values.get("scope", "").strip()
    if scope.startswith('"'):
        try:
            scope = json.loads(scope)
        except ValueError:
            pass
    return NodeOnHost(unit=values.get("unit") == "yes",
                      config_scope=scope if values.get("config") == "yes" else None,
                      active=values.get("active") or "unknown", data=values.get("data") or DATA_ABSENT)


def describe_data(data: str, data_dir: str) -> str:
    return {DATA_ABSENT: f"no data directory {data_dir}", DATA_EMPTY: f"an empty data directory {data_dir}",
            DATA_UNREADABLE: f"{data_dir} holds a PostgreSQL cluster whose control file cannot be read",
            DATA_OTHER: f"{data_dir} holds files but no PostgreSQL cluster"}.get(
                data, f"{data_dir} holds PostgreSQL system {data}")


@dataclass(frozen=True)
class NodeView:
    """What a refresh records about a node: running (OBSERVED) and what is wrong, in words."""

    running: bool
    drift: str
    status: dict[str, Any] = field(default_factory=dict)  # /patroni, when it answered


def observe_node(props: dict[str, Any], status: dict[str, Any] | None, host: NodeOnHost | None,
                 unreachable: str = "") -> NodeView:
    """Compare what answers (or what is on disk) with the node the state describes."""
    scope, recorded = props["scope"], props.get("system_identifier") or ""
    if status is not None:
        serving = (status.get("patroni") or {}).get("scope")
        sysid = str(status.get("database_system_identifier") or "")
        if serving and serving != scope:
            return NodeView(False, f"Patroni on this host serves cluster {serving!r}, not {scope!r}", status)
        if recorded and sysid and sysid != recorded:
            return NodeView(False, f"it runs PostgreSQL system {sysid}; the state recorded {recorded}",
                            status)
        if status.get("state") != "running":
            return NodeView(False, f"Patroni is up, PostgreSQL is {status.get('state')}", status)
        return NodeView(True, "", status)
    if host is None:
        return NodeView(False, f"Patroni does not answer and the host is unreachable ({unreachable})")
    if not host.unit and host.config_scope is None and not has_data(host.data):
        return NodeView(False, "gone: no Patroni unit, no patroni.yml and no data on the host (re-imaged?)")
    problems = []
    if host.config_scope is None:
        problems.append(f"no {props['config_file']}")
    elif host.config_scope != scope:
        problems.append(f"{props['config_file']} is for cluster {host.config_scope!r}, not {scope!r}")
    if not host.unit:
        problems.append("no patroni unit")
    if is_system_identifier(host.data) and recorded and host.data != recorded:
        problems.append(f"{props['data_dir']} holds PostgreSQL system {host.data}, another cluster: "
                        f"the state recorded {recorded}")
    elif not is_system_identifier(host.data):
        problems.append(describe_data(host.data, props["data_dir"]))
    problems.append(f"Patroni is {host.active}")
    return NodeView(False, "; ".join(problems))


# --- what `up` does with a node (pure) --------------------------------------------------


@dataclass(frozen=True)
class NodePlan:
    action: Literal["start", "clone", "stop"]  # start from its data / rebuild from the leader / refuse
    reason: str = ""


def plan_node(props: dict[str, Any], host: NodeOnHost, dcs: DcsView) -> NodePlan:
    """Before Patroni starts on a host: may it, and from what.

    Data of the cluster (its system identifier is the DCS's, or the one the state recorded
    when the DCS has none) starts; a node without data is rebuilt from the leader; anything
    else on the host is data or configuration pgha did not make for this cluster, maybe the
    only copy of something: `up` stops, names it and says how to resolve it.
    """
    name, scope, data_dir = props["name"], props["scope"], props["data_dir"]
    if host.config_scope is not None and host.config_scope != scope:
        other = host.config_scope
        return NodePlan("stop", f"{props['config_file']} on {name} is for Patroni cluster {other!r}, not "
                                f"{scope!r}: another cluster lives on this host, and pgha leaves it alone. "
                                f"Remove {name} from pgha:hosts, or move that cluster off the host (its "
                                f"patroni.yml and data directory), then run `pulumi up` again")
    if not has_data(host.data):
        return NodePlan("clone")
    if dcs.bootstrapping and host.active == "active" and not is_system_identifier(host.data):
        # The first host's Patroni runs initdb (or a restore) into this very directory.
        return NodePlan("start", f"Patroni on {name} is bootstrapping cluster {scope}")
    expected = dcs.system_identifier or props.get("system_identifier") or ""
    source = ("the DCS" if dcs.system_identifier else "the state") if expected else ""
    if is_system_identifier(host.data) and (not expected or host.data == expected):
        return NodePlan("start")
    what = describe_data(host.data, data_dir)
    if is_system_identifier(host.data):
        what = f"{what}, but cluster {scope} is system {expected} ({source})"
    return NodePlan("stop", f"{name}: {what}. pgha does not start over or remove data that may be the "
                            f"only copy of something. To rebuild {name} as a replica of {scope}, move that "
                            f"directory aside on {name} (mv {data_dir} {data_dir}.old) and run `pulumi up` "
                            f"again; to keep {name} out of the cluster, remove it from pgha:hosts (its data "
                            f"stays: postgresql.keepDataOnDestroy) or forget it with `pulumi state delete` "
                            f"on its PatroniNode")


# --- why a wait for Patroni cannot succeed (pure) ---------------------------------------

# Patroni's own lines (`<date> <time> <LEVEL>: <message>`); PostgreSQL's lines in the same
# journal ("FATAL:  the database system is starting up") are part of a normal start.
FATAL_MARKERS = ("system ID mismatch", " CRITICAL: ", "but system ID is invalid",
                 "Please first start Patroni on the node running as primary")
DCS_MARKERS = ("Failed to get list of machines", "waiting on etcd", "Error communicating with DCS",
               "DCS is not accessible", "No more machines in the cluster")
NO_LEADER_MARKERS = ("waiting for leader to bootstrap",)
# Patroni cannot log in to its own PostgreSQL: the data directory's roles have other passwords than
# patroni.yml (data kept by an earlier stack's destroy, and this stack generated new ones).
AUTH_MARKERS = ("password authentication failed for user",)
BOOTSTRAP_FAILED_MARKERS = ("failed attempt to bootstrap the cluster", "Failed to bootstrap cluster")
# How long a condition must last before a wait gives up on it: etcd elects a leader in
# seconds, and a node without data waits for a leader another node is electing.
GRACE = {"dcs": 30.0, "no_leader": 45.0, "auth": 30.0}


def journal_verdict(lines: list[str]) -> tuple[str, str] | None:
    """(kind, line) for what the journal says about why Patroni is not up: "fatal" (it will
    never be), "auth" (its own PostgreSQL refuses its passwords), "dcs" (it cannot reach etcd) or
    "no_leader" (no data and nobody to clone from), by the latest line that says either; None
    when the latest news is progress."""
    for line in lines:
        if any(marker in line for marker in FATAL_MARKERS):
            return "fatal", line.strip()
    # Refused logins repeat between lines of progress (Patroni retries each loop): the recent ones.
    refused = [line for line in lines[-60:] if any(marker in line for marker in AUTH_MARKERS)]
    if refused:
        return "auth", _clip(refused[-1].strip())
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if any(marker in line for marker in DCS_MARKERS):
            # "INFO: waiting on etcd" follows the ERROR lines that name the endpoint and why.
            block = []
            for earlier in reversed(lines[:i + 1]):
                if not any(marker in earlier for marker in DCS_MARKERS):
                    break
                block.append(earlier)
            error = next((b for b in block if " ERROR: " in b), line)
            return "dcs", _clip(error.strip())
        if any(marker in line for marker in NO_LEADER_MARKERS):
            return "no_leader", line.strip()
        if " INFO: " in line or " WARNING: " in line:
            return None  # Patroni made progress since
    return None


def _clip(line: str, limit: int = 400) -> str:
    return line if len(line) <= limit else f"{line[:limit]}..."


@dataclass
class StartWatch:
    """Decides, from successive looks at the unit and its journal, when to stop waiting."""

    name: str
    seen_since: dict[str, float] = field(default_factory=dict)
    stopped: UnitStopped = field(default_factory=UnitStopped)

    def verdict(self, now: float, active: str, lines: list[str]) -> str | None:
        found = journal_verdict(lines)
        if self.stopped(active):
            last = found[1] if found else " | ".join(line.strip() for line in lines[-3:])
            return f"patroni on {self.name} stopped ({active}): {last or 'no journal lines'}"
        if found is None:
            self.seen_since.clear()
            return None
        kind, line = found
        if kind == "fatal":
            return line
        since = self.seen_since.setdefault(kind, now)
        for other in [k for k in self.seen_since if k != kind]:
            del self.seen_since[other]
        if now - since < GRACE[kind]:
            return None
        if kind == "dcs":
            return f"Patroni on {self.name} cannot reach etcd (for {now - since:.0f}s): {line}"
        if kind == "auth":
            return (f"Patroni on {self.name} cannot log in to its PostgreSQL (for {now - since:.0f}s): "
                    f"{line}. "
                    "The data directory's roles have other passwords than this stack's (data kept by an "
                    "earlier stack's destroy, while this one generated new passwords?): set pgha:"
                    "superuserPassword, pgha:replicationPassword and pgha:rewindPassword to the ones the "
                    "data was made with, or move the data directory aside for a new cluster")
        return (f"{self.name} has no data and no leader to clone from (for {now - since:.0f}s): no other "
                f"node leads cluster, and this one may not bootstrap it: {line}")


def no_leader_cause(dcs: DcsView | None, waited: float, props: dict[str, Any],
                    saw_bootstrap: bool = False, bootstrap_idle: float = 0.0) -> str | None:
    """Why a node without data, waiting for a leader to clone from, will not get one.

    A bootstrap under way (the initialize key taken, no leader yet) is progress however
    long it takes (a restore may take hours) while a registered node runs it;
    `bootstrap_idle`: for how long no registered node has (every member "stopped": the
    bootstrapping host went down). `saw_bootstrap`: this wait saw one, so its key gone
    without a leader means that bootstrap failed.
    """
    name, scope = props["name"], props["scope"]
    if dcs is None:
        if waited < GRACE["dcs"]:
            return None
        return f"no healthy etcd among {', '.join(props['etcd_hosts'])} for {waited:.0f}s"
    if dcs.leader:
        return None
    if dcs.bootstrapping:
        if bootstrap_idle < GRACE["no_leader"]:
            return None
        return (f"{dcs.describe(scope)}, but no registered node has run that bootstrap for "
                f"{bootstrap_idle:.0f}s: the host bootstrapping it is down or its Patroni stopped. Its "
                f"Patroni journal says why; the initialize key it left blocks a new bootstrap until removed "
                f"(`patronictl -c /etc/patroni/patroni.yml remove {scope}` on a node)")
    if saw_bootstrap and dcs.initialize is None:
        return (f"the bootstrap of cluster {scope} failed: Patroni removed its initialize key, and no node "
                f"leads. The first host's Patroni journal says why")
    if not dcs.members and waited >= GRACE["no_leader"]:
        return (f"{dcs.describe(scope)}: no node runs that could lead, so {name} (no data) has nothing "
                f"to replicate from")
    if dcs.members and waited >= 2 * GRACE["no_leader"]:
        return f"{dcs.describe(scope)}, for {waited:.0f}s"
    return None


BOOTSTRAPPING = "bootstrapping"  # _wait_for_leader: a bootstrap is under way, no leader yet


def host_clock(ssh: Ssh) -> int:
    """The host's time (seconds since the epoch): journal lines since a step began."""
    out = ssh.run("date +%s", step="read the host's clock", check=False).stdout.strip()
    return int(out) if out.isdigit() else int(time.time())


NODE_PROBE = """cfg={config}; d={data}
[ -f {unit} ] && echo unit=yes || echo unit=no
echo "active=$(systemctl is-active patroni 2>/dev/null)"
if [ -f "$cfg" ]; then echo config=yes; echo "scope=$(sed -n 's/^scope: *//p' "$cfg" | head -n 1)"; fi
if [ ! -d "$d" ]; then echo data=absent
elif [ -s "$d/PG_VERSION" ]; then
  s=$(LC_ALL=C {bin}/pg_controldata -D "$d" 2>/dev/null | sed -n 's/^Database system identifier: *//p')
  echo "data=${{s:-unreadable}}"
elif [ -z "$(ls -A "$d" 2>/dev/null)" ]; then echo data=empty
else echo data=other; fi"""


def probe_node(ssh: Ssh, props: dict[str, Any]) -> NodeOnHost:
    script = NODE_PROBE.format(config=shlex.quote(props["config_file"]), data=shlex.quote(props["data_dir"]),
                               unit=UNIT_FILE, bin=shlex.quote(props["bin_dir"]))
    out = ssh.run(script, step="look at Patroni and the data directory", check=False)
    return parse_node_probe(out.stdout)


def write_patroni_config(ssh: Ssh, props: dict[str, Any]) -> bool:
    """The node's patroni.yml (0600, postgres) and its data directory; True when the file changed."""
    data_dir = shlex.quote(props["data_dir"])
    ssh.run(f"install -d -o postgres -g postgres -m 0700 {data_dir}",
            step="create the PostgreSQL data directory")
    text = render.patroni_yml(props, props["secrets"])
    return ssh.write_file(props["config_file"], text, step="write patroni.yml", mode="0600",
                          owner="postgres", group="postgres")


class PatroniNodeProvider(HostProvider):
    CREATE_ONLY = frozenset({"bootstrap", "bootstrap_leader"})
    REPLACE_ON = frozenset({"name", "address", "scope", "namespace", "data_dir", "pg_port"})
    OBSERVED: ClassVar[dict[str, Any]] = {"running": True}
    # `drift`: what the last refresh found wrong, in words ('' when nothing).
    OUTPUTS = frozenset({"role", "timeline", "patroni_version", "system_identifier", "drift"})

    def same(self, key: str, old: Any, new: Any) -> bool:
        if key == "pg_hba":
            return state_upgrade.same_pg_hba(old, new)
        return super().same(key, old, new)

    def _wait_ready(self, ssh: Ssh, props: dict[str, Any], timeout: float, since: int | None = None
                    ) -> dict[str, Any]:
        """Until Patroni runs as leader or streaming replica; stops as soon as the unit or
        its journal (since `since`, the host's clock) shows why it cannot (StartWatch)."""
        node = api(props)
        last: dict[str, Any] = {}

        def ready() -> dict[str, Any] | None:
            status = node.patroni()
            last.clear()
            last.update(status)
            if status.get("state") == "running" and status.get("role") in LEADER_ROLES:
                return ready_status_of(status, holds_leader_lock=node.health_status("/leader") == 200)
            return ready_status_of(status)

        def status() -> str:
            if not last:
                return "Patroni's REST API does not answer yet"
            lock = (", the leader lock not yet taken" if last.get("state") == "running"
                    and last.get("role") in LEADER_ROLES else "")
            return (f"Patroni: PostgreSQL {last.get('state')}, role {last.get('role')}{lock}"
                    + (f", replication {last['replication_state']}" if last.get("replication_state") else ""))

        return self._watch_start(ssh, props, ready, timeout, since, status=status,
                                 what=f"Patroni on {props['name']} running as leader or streaming replica")

    def _watch_start(self, ssh: Ssh, props: dict[str, Any], ready: Callable[[], Any], timeout: float,
                     since: int | None, what: str, status: Callable[[], str]) -> Any:
        """wait_for(ready) on a Patroni just started, stopping as soon as its unit or journal
        (since `since`, the host's clock) shows why it cannot get there (StartWatch)."""
        watch = StartWatch(props["name"])
        since = host_clock(ssh) if since is None else since

        def blocked() -> str | None:
            active = ssh.run("systemctl is-active patroni", step="check patroni", check=False).stdout.strip()
            journal = ssh.run(f"journalctl -u patroni --since @{since} --no-pager -o cat | tail -n 200",
                              step="read patroni's journal", check=False).stdout.splitlines()
            return watch.verdict(time.monotonic(), active, journal)

        try:
            return wait_for(ready, timeout=timeout, interval=0.25, what=what, host=props["address"],
                            blocked=blocked, status=status)
        except WaitFailed as err:
            if err.cause:
                raise SshError(props["address"], "start Patroni", err.cause) from err
            raise SshError(props["address"], err.step, f"{err}\npatroni journal:\n{_journal(ssh)}") from err

    @staticmethod
    def _system_identifier(ssh: Ssh, props: dict[str, Any], status: dict[str, Any]) -> str:
        """The node's system identifier: Patroni's word, or, as Patroni reads it lazily and
        may not report it just after a bootstrap, the data directory's control file."""
        sysid = str(status.get("database_system_identifier") or "")
        if not sysid:
            data = probe_node(ssh, props).data
            sysid = data if is_system_identifier(data) else ""
        return sysid

    def _outs(self, props: dict[str, Any], status: dict[str, Any], sysid: str) -> dict[str, Any]:
        return {**public(props), "running": True, "drift": "", "role": status.get("role", ""),
                "timeline": status.get("timeline", 0),
                "patroni_version": status.get("patroni", {}).get("version", ""),
                "system_identifier": sysid}

    def _wait_for_leader(self, props: dict[str, Any], beside_bootstrap: bool, saw_bootstrap: bool = False
                         ) -> tuple[str, int] | None:
        """(host, port) of the cluster's leader, waiting for one. With `beside_bootstrap`,
        None as soon as a bootstrap is under way: a node without data may start beside it,
        as only the bootstrapping host's patroni.yml lets Patroni race for a new cluster,
        and Patroni clones the leader as soon as it holds the leader key. A node never
        bootstraps a cluster itself: PatroniBootstrap decides that, for the whole cluster."""
        started = time.monotonic()
        seen = {"bootstrap": saw_bootstrap}
        idle_since: list[float] = []  # since when no registered node runs the bootstrap
        cause: list[str] = []

        def look() -> tuple[str, int] | str | None:
            cause.clear()
            gateway = dcs_gateway(props)
            dcs = DcsView.read(gateway, props) if gateway is not None else None
            if gateway is not None and dcs is not None and dcs.leader:
                url = urlparse((leader_member(gateway, props) or {}).get("conn_url", ""))
                if url.hostname:
                    return url.hostname, url.port or 5432
            now = time.monotonic()
            if gateway is not None and dcs is not None and dcs.bootstrapping:
                seen["bootstrap"] = True
                if beside_bootstrap:
                    return BOOTSTRAPPING
                if bootstrap_running(member_states(gateway, props, dcs)):
                    idle_since.clear()
                elif not idle_since:
                    idle_since.append(now)
            why = no_leader_cause(dcs, now - started, props, seen["bootstrap"],
                                  now - idle_since[0] if idle_since else 0.0)
            if why:
                cause.append(why)
            return None

        try:
            found = wait_for(look, timeout=900, interval=0.5, host=props["address"],
                             what=("a cluster leader to replicate from, or its bootstrap under way"
                                   if beside_bootstrap else "a cluster leader to replicate from"),
                             blocked=lambda: cause[0] if cause else None)
        except WaitFailed as err:
            if not err.cause:
                raise
            if seen["bootstrap"]:
                raise SshError(props["address"], "wait for the cluster's bootstrap", err.cause) from err
            raise SshError(props["address"], "wait for a leader to replicate from",
                           f"{err.cause}. Bring back a node that holds the cluster's data (`pulumi refresh` "
                           f"shows each node's state), or, if no node holds it any more, run `pulumi up "
                           f"--refresh`: it bootstraps the cluster anew when no node has data") from err
        return None if found == BOOTSTRAPPING else found

    def _wait_for_admission(self, ssh: Ssh, props: dict[str, Any], leader: tuple[str, int]) -> None:
        """Until the running leader's pg_hba admits this node's replication connection (the
        existing nodes reload their pg_hba in the same `up`)."""
        host, port = leader
        psql = (f"{shlex.quote(props['bin_dir'])}/psql -X -At -c 'IDENTIFY_SYSTEM' "
                f"'host={host} port={port} user={props['users']['replication']} "
                f"dbname=postgres replication=true connect_timeout=5'")
        password = props["secrets"]["replication"]

        def admitted() -> bool:
            result = ssh.run(f'PGPASSWORD="$(cat)" {psql}', step="test replication access to the leader",
                             stdin=password, check=False)
            if result.code == 0:
                return True
            if "pg_hba.conf" in result.stderr:
                return False  # not yet: the leader's pg_hba is being updated in this same `up`
            raise SshError(props["address"], "test replication access to the leader", result.stderr.strip())

        wait_for(admitted, timeout=300, interval=1, what=f"the leader {host} admitting replication",
                 host=props["address"])

    def _hurry_slot(self, props: dict[str, Any]) -> None:
        """Have the leader create this node's replication slot now rather than in up to loop_wait.

        A new replica streams only once the leader has made its slot, which the leader does
        in its HA loop; until then its WAL receiver fails and retries every 5 s, which cost
        about 10 s per replica. Best effort: without it the leader's next loop makes the
        slot anyway.
        """
        gateway = dcs_gateway(props)
        if gateway is None:
            return
        try:
            wait_for(lambda: gateway.get(_member_key(props)) is not None, timeout=30, interval=0.3,
                     what="this node registered in the DCS", host=props["address"])
            api_url = (leader_member(gateway, props) or {}).get("api_url", "")
            if not api_url:
                return
            PatroniApi(api_url.rsplit("/", 1)[0],
                       auth=(props["restapi_username"], props["secrets"]["restapi"])).wake()
        except (RestError, SshError, ValueError):
            return

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        """Start (or reload) Patroni on the host, as plan_node allows, and wait until it runs."""
        address = props["address"]
        with self.ssh(props) as ssh:
            host = probe_node(ssh, props)
            dcs = DcsView.read(wait_for_dcs(props), props)
            plan = plan_node(props, host, dcs)
            if plan.action == "stop":
                raise SshError(address, "check the node before starting Patroni", plan.reason)
            since = host_clock(ssh)
            changed = write_patroni_config(ssh, props)
            beside = False  # started beside a bootstrap under way
            if host.active == "active":
                if changed:
                    ssh.run("systemctl reload patroni", step="reload patroni")
                    self._wake(props)
                    time.sleep(1)
            else:
                if (plan.action == "clone" and props.get("bootstrap_leader") and dcs.leader is None
                        and dcs.initialize is None and self._last_bootstrap_failed(ssh)):
                    # PatroniBootstrap returned once this host's bootstrap had made the data
                    # directory; the bootstrap failed after that (Patroni moved the directory
                    # aside). Nobody else may bootstrap the cluster: this node starts it again.
                    notify(address, f"the last bootstrap of cluster {props['scope']} on {props['name']} "
                           f"failed (Patroni's journal): bootstrapping it again")
                    plan = NodePlan("start")
                if plan.action == "clone":
                    if host.unit or host.config_scope is not None:
                        notify(address, f"{describe_data(host.data, props['data_dir'])}: rebuilding "
                               f"{props['name']} from the leader", warning=True)
                    leader = self._wait_for_leader(props, beside_bootstrap=True)
                    beside = leader is None
                    if leader is not None:
                        self._wait_for_admission(ssh, props, leader)
                ssh.run(f"{enable_unit('patroni')} && systemctl start patroni",
                        step="start patroni")
            if plan.action == "clone":
                # Started beside a bootstrap (now or by an earlier `up`), it waits for the leader.
                self._wait_for_leader(props, beside_bootstrap=False, saw_bootstrap=beside)
                self._hurry_slot(props)
            status = self._wait_ready(ssh, props, timeout=900, since=since)
            sysid = self._system_identifier(ssh, props, status)
        return self._outs(props, status, sysid)

    @staticmethod
    def _wake(props: dict[str, Any]) -> None:
        """Patroni applies a reload at the top of its next HA loop, up to loop_wait away: run
        it now, so that what `up` reports done is in effect (best effort: at worst it takes
        effect within loop_wait)."""
        try:
            api(props).wake()
        except RestError:
            pass

    @staticmethod
    def _last_bootstrap_failed(ssh: Ssh) -> bool:
        """Whether Patroni's last run on this host failed to bootstrap the cluster (it then
        removed the initialize key and moved the data directory aside)."""
        journal = _journal(ssh)
        return any(marker in journal for marker in BOOTSTRAP_FAILED_MARKERS)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}/{props['name']}", outs=self._apply(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: Patroni's own word when it answers; otherwise what is on the host."""
        outs = dict(props)
        status: dict[str, Any] | None = None
        try:
            status = api(props).patroni()
        except RestError:
            pass
        host, unreachable = None, ""
        if status is None:
            try:
                with self.ssh(props, connect_timeout=10) as ssh:
                    host = probe_node(ssh, props)
            except SshError as err:
                unreachable = str(err)
        view = observe_node(props, status, host, unreachable)
        outs.update(running=view.running, drift=view.drift)
        if status is not None:
            outs.update(role=status.get("role", ""), timeline=status.get("timeline", 0))
        if view.drift:
            notify(props["address"], f"Patroni node {props['name']}: {view.drift}", warning=True)
        return ReadResult(id_=id_, outs=outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Stop the node (a leader hands over first) and forget it in the DCS. What cannot
        be reached is skipped and said; Patroni or data of another cluster is left alone."""
        address, name, scope = props["address"], props["name"], props["scope"]
        skipped: list[str] = []
        gateway = dcs_gateway(props)
        leaving = f"{pgha_prefix(scope)}leaving/{name}"
        if gateway is not None:
            gateway.put(leaving, "1")  # tells a leader being removed not to hand over to us
        node = api(props)
        try:
            serving = (node.patroni().get("patroni") or {}).get("scope", scope)
        except RestError:
            serving = None
        if serving == scope:
            self._step_down_if_leader(node, props, gateway)
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                self._remove_from_host(ssh, props, skipped)
        except SshError as err:
            if err.step != "connect over SSH":
                raise
            # The host is gone (a dead host being replaced): clean the DCS below.
            skipped.append(f"stopping Patroni and removing patroni.yml (unreachable: {err})")
        if gateway is not None:
            # Patroni drops its member key on a clean stop; a dead host's would linger until ttl.
            gateway.delete_key(_member_key(props))
            gateway.delete_key(leaving)
        else:
            skipped.append(f"removing its member key from the DCS (no healthy etcd among "
                           f"{', '.join(props['etcd_hosts'])})")
        if skipped:
            notify(address, f"Patroni node {name} deleted; skipped: " + "; ".join(skipped), warning=True)

    def _remove_from_host(self, ssh: Ssh, props: dict[str, Any], skipped: list[str]) -> None:
        host = probe_node(ssh, props)
        if host.config_scope is not None and host.config_scope != props["scope"]:
            skipped.append(f"the host's Patroni, which is cluster {host.config_scope!r}'s")
            return
        ssh.run("systemctl disable --now patroni >/dev/null 2>&1 || true", step="stop patroni")
        ssh.run(f"rm -f {shlex.quote(props['config_file'])}", step="remove patroni.yml")
        if props.get("keep_data_on_destroy", True) or not has_data(host.data):
            return
        recorded = props.get("system_identifier") or ""
        if is_system_identifier(host.data) and recorded and host.data != recorded:
            skipped.append(f"removing {props['data_dir']} (postgresql.keepDataOnDestroy: false): it holds "
                           f"PostgreSQL system {host.data}, not this node's {recorded}")
            return
        ssh.run(f"rm -rf {shlex.quote(props['data_dir'])}",
                step="remove the data directory (postgresql.keepDataOnDestroy: false)")

    def _step_down_if_leader(self, node: PatroniApi, props: dict[str, Any],
                             gateway: EtcdGateway | None) -> None:
        """Hand the leader role to a member that stays and that Patroni accepts, before stopping.

        Looks again after every wait or failed switchover: in a destroy the other
        members announce their departure at about the same moment, so a first
        look can pick a target that is about to stop.
        """
        prefix = f"{pgha_prefix(props['scope'])}leaving/"
        deadline = time.monotonic() + 180
        last = ""
        while time.monotonic() < deadline:
            leaving = set()
            if gateway is not None:
                leaving = {k.rsplit("/", 1)[-1] for k in gateway.keys_with_prefix(prefix)}
            sync_mode = SyncMode.from_setting(node.config().get("synchronous_mode"))
            step = plan_handover(props["name"], members_of(node.cluster()), leaving, sync_mode)
            if step.action == "stop":
                return
            if step.action == "switchover":
                notify(props["address"], f"{props['name']} leads: switching over to {step.target} before "
                       f"removing it")
                resp = node.switchover(props["name"], step.target)
                if resp.status_code in (200, 202):
                    last = f"switched over to {step.target}"
                    time.sleep(1)
                    continue  # the next look confirms the role moved
                last = f"POST /switchover to {step.target}: HTTP {resp.status_code} {resp.text[:200]}"
            else:
                if step.reason != last:
                    notify(props["address"], f"{props['name']} leads; before it stops: {step.reason}")
                last = step.reason
            time.sleep(2)
        raise SshError(props["address"], "switch over before removing the leader",
                       f"still the leader after 180s; last: {last}")

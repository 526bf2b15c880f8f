"""PatroniBootstrap: start the first host's Patroni once, when the cluster does not exist yet.

The runbook starts Patroni on one node, waits for it to lead, then starts the others.
pgha starts the others sooner, while the first one bootstraps: this resource returns as
soon as the first host's Patroni holds the new cluster's initialize key and has made its data
directory (its system identifier, recorded in the state, is known then). Only that host's
patroni.yml has a `bootstrap` section, so no other node can race for the cluster; each
waits for the leader key and clones the leader at once (Patroni watches that key), and
the first host's PatroniNode waits for its leader. Every PatroniNode depends on this
resource because the dynamic provider runs only 4 operations at once: replicas whose
creates started first would hold every slot while waiting for a bootstrap that could then
never start.

It is also where the cluster as a whole is found lost: a refresh looks at the DCS (a
leader, registered members, the system identifier), and when no cluster runs, the next
`up` decides, before any node starts, from the DCS and from every node's data directory
(plan_bootstrap): the data of the cluster starts; a cluster of which no node holds data
any more is bootstrapped anew (its stale keys cleared from the DCS first); data of
another system, or a host that cannot be checked, stops the `up` with what it found.
Otherwise it never reports a change, so the nodes that depend on it are never ordered
behind a node being added (a re-added first host must not wait for itself to be admitted).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, UpdateResult

from components.providers.base import public
from components.providers.patroni_cluster import DcsView, dcs_prefix, is_system_identifier, pgha_prefix
from components.providers.patroni_node import (
    DATA_OTHER,
    DATA_UNREADABLE,
    PatroniNodeProvider,
    dcs_gateway,
    etcd_urls,
    has_data,
    host_clock,
    probe_node,
    wait_for_dcs,
    write_patroni_config,
)
from components.specs import HBA_REPLICATION
from components.transport.rest import EtcdGateway, RestError
from components.transport.ssh import Ssh, SshError, SshTarget, enable_unit, notify

UNREACHABLE = "unreachable: "  # a node's data could not be looked at: "unreachable: <why>"


def cluster_nodes(props: dict[str, Any]) -> dict[str, str]:
    """{name: address} of every Patroni node of the stack.

    The first host's inputs do not list the other nodes, but its pg_hba admits each
    node's replication connection from the node's own address ("20 replication <name>").
    """
    nodes = {props["name"]: props["address"]}
    hba = props.get("pg_hba")
    if isinstance(hba, dict):
        for key, line in hba.items():
            group, _, rest = key.partition(" ")
            kind, _, name = rest.partition(" ")
            fields = line.split()
            if group == HBA_REPLICATION and kind == "replication" and name and len(fields) > 3:
                nodes.setdefault(name, fields[3].split("/")[0])
    return nodes


@dataclass(frozen=True)
class BootstrapPlan:
    # running: nothing to do / start_first: the first host starts (bootstraps, or from its
    # data) / rebuild: clear the DCS keys, then bootstrap on the first host / leave_to_nodes:
    # other nodes hold the data and start from it / stop: refuse, `reason` says why and how on
    action: Literal["running", "start_first", "rebuild", "leave_to_nodes", "stop"]
    reason: str = ""


def plan_bootstrap(scope: str, first: str, dcs: DcsView, data: dict[str, str], recorded: str = "",
                   restore: bool = False, existed: bool = False, restored_before: bool = False
                   ) -> BootstrapPlan:
    """What to do about the cluster as a whole, before any node starts (see _plan_bootstrap).

    `restored_before`: the state says this cluster was made by its pgha:restore. Lost again,
    it is not rebuilt by replaying that restore: that would bring back the source stanza's
    old data to the old target, not this cluster's own backups.
    """
    plan = _plan_bootstrap(scope, first, dcs, data, recorded, restore, existed)
    if plan.action == "rebuild" and restore and restored_before:
        return BootstrapPlan("stop", (
            f"every node of cluster {scope} is gone, and this cluster was made by pgha:restore: `up` does "
            f"not replay that restore (it would bring back the source stanza's data as of its target, not "
            f"this cluster's). This cluster's own backups and WAL are in its stanza (pgha:backup.stanza). "
            f"To restore them in place: `pulumi destroy`, then set pgha:restore.fromStanza to that stanza "
            f"(and a new pgha:backup.stanza) and run `pulumi up` (README: point-in-time recovery in place)"))
    return plan


def _plan_bootstrap(scope: str, first: str, dcs: DcsView, data: dict[str, str], recorded: str,
                    restore: bool, existed: bool) -> BootstrapPlan:
    """What to do about the cluster as a whole, before any node starts.

    `data` is each node's data directory (a system identifier, patroni_node's DATA_* or
    "unreachable: ..."); `recorded` the system identifier the state last saw; `existed`
    whether the state says the cluster was bootstrapped before (an update, perhaps of a
    state that recorded no system identifier). Never bootstraps while a node might hold
    the cluster's data, and never over data of another system: an empty cluster on top of
    the only copy of some data would hide it.
    """
    if dcs.leader or (dcs.members and dcs.initialize is not None):
        return BootstrapPlan("running")
    # Members without an initialize key: nodes started beside a bootstrap that failed
    # (Patroni removes the key then); they wait for a leader, so the data decides below.
    cluster = dcs.system_identifier or recorded
    unknown = {n: d for n, d in sorted(data.items())
               if d.startswith(UNREACHABLE) or d in (DATA_UNREADABLE, DATA_OTHER)}
    systems = {n: d for n, d in sorted(data.items()) if is_system_identifier(d)}
    found = ", ".join(f"{n} holds system {d}" for n, d in systems.items())
    empty = ", ".join(sorted(n for n, d in data.items() if not has_data(d))) or "no node"
    if cluster:
        holders = sorted(n for n, d in systems.items() if d == cluster)
        ours = f"cluster {scope}'s data (system {cluster})"
        if first in holders:
            return BootstrapPlan("start_first", f"{first} holds {ours}: starting it first")
        if holders:
            return BootstrapPlan("leave_to_nodes", f"{', '.join(holders)} hold {ours}: their nodes start it")
        if unknown:
            return BootstrapPlan("stop", _cannot_tell(scope, cluster, unknown))
        if systems:
            return BootstrapPlan("stop", (
                f"no node holds {ours}: {found}, another cluster; {empty} has no data. pgha does not "
                f"bootstrap over data that may be the only copy of something. If that data is the cluster "
                f"now, remove the DCS's stale entry (`patronictl -c /etc/patroni/patroni.yml remove {scope}` "
                f"on a node) and run `pulumi up --refresh`; if it is not wanted, move it aside on its host "
                f"and run `pulumi up --refresh` to bootstrap anew"))
        stale = (f" after clearing the old cluster's keys (system {cluster}) from the DCS"
                 if dcs.initialize is not None else "")
        return BootstrapPlan("rebuild", (
            f"every node of cluster {scope} is gone: no data on {empty} and no member in the DCS. "
            f"Bootstrapping {_new_cluster(restore)} on {first}{stale}"))
    if len(set(systems.values())) > 1:
        return BootstrapPlan("stop", (
            f"the DCS holds no cluster {scope} and the nodes hold different PostgreSQL systems ({found}): "
            f"pgha cannot tell which is the cluster. Move aside the data that is not, then run "
            f"`pulumi up --refresh`"))
    if systems and first not in systems:
        return BootstrapPlan("leave_to_nodes", f"{', '.join(systems)} hold PostgreSQL data: their nodes "
                                               f"start the cluster from it")
    if unknown and first not in systems:
        return BootstrapPlan("stop", _cannot_tell(scope, "", unknown))
    if existed and not systems:
        return BootstrapPlan("rebuild", f"every node of cluster {scope} is gone: no data on {empty} and no "
                                        f"member in the DCS. Bootstrapping {_new_cluster(restore)} on "
                                        f"{first}")
    return BootstrapPlan("start_first")


def _new_cluster(restore: bool) -> str:
    return "a cluster restored from pgha:restore's backup" if restore else "a new, empty cluster"


def _cannot_tell(scope: str, cluster: str, unknown: dict[str, str]) -> str:
    system = f" (system {cluster})" if cluster else ""
    why = "; ".join(f"{n}: {d.removeprefix(UNREACHABLE)}" for n, d in unknown.items())
    return (f"cluster {scope}{system} has no leader and no member, and pgha cannot tell whether "
            f"{', '.join(unknown)} hold its data ({why}). Bootstrapping anew could hide the only copy. Bring "
            f"{', '.join(unknown)} back (or remove them from pgha:hosts) and run `pulumi up --refresh` again")


def observe_cluster(scope: str, dcs: DcsView | None, recorded: str, endpoints: list[str]) -> tuple[bool, str]:
    """What a refresh records: (cluster_running, drift in words)."""
    if dcs is None:
        return False, f"no healthy etcd among {', '.join(endpoints)}: the cluster's DCS does not answer"
    if dcs.leader and recorded and dcs.system_identifier and dcs.system_identifier != recorded:
        return False, (f"the DCS holds system {dcs.system_identifier}, the state recorded {recorded}: the "
                       f"cluster was bootstrapped anew")
    if dcs.leader:
        return True, ""
    return False, dcs.describe(scope)


class PatroniBootstrapProvider(PatroniNodeProvider):
    OBSERVED: ClassVar[dict[str, Any]] = {"cluster_running": True}
    OUTPUTS = frozenset({"bootstrapped", "system_identifier", "drift"})

    def _data_of(self, props: dict[str, Any], name: str, address: str) -> str:
        conn = props["connection"] if name == props["name"] else {**props["connection"], "host": address}
        try:
            with Ssh(SshTarget.from_props(conn, props.get("ssh_private_key")), connect_timeout=10) as ssh:
                return probe_node(ssh, {**props, "name": name, "address": address}).data
        except SshError as err:
            return f"{UNREACHABLE}{err}"

    def _ensure_cluster(self, props: dict[str, Any], recorded: str = "", existed: bool = False,
                        restored_before: bool = False) -> dict[str, Any]:
        """Decide with plan_bootstrap and act; the outputs record what runs now."""
        gateway = wait_for_dcs(props)
        dcs = DcsView.read(gateway, props)
        bootstrapped, sysid = False, dcs.system_identifier
        if not (dcs.leader or dcs.members):
            nodes = cluster_nodes(props)
            with ThreadPoolExecutor(max_workers=min(len(nodes), 8)) as pool:
                found = dict(zip(nodes, pool.map(lambda n: self._data_of(props, n, nodes[n]), nodes),
                                 strict=True))
            restore = bool((props.get("bootstrap") or {}).get("restore"))
            plan = plan_bootstrap(props["scope"], props["name"], dcs, found, recorded, restore=restore,
                                  existed=existed, restored_before=restored_before)
            if plan.action == "stop":
                raise SshError(props["scope"], "bootstrap the cluster", plan.reason)
            if plan.reason:
                notify(props["scope"], plan.reason, warning=plan.action == "rebuild")
            if plan.action == "rebuild":
                gateway.delete_prefix(dcs_prefix(props))
                gateway.delete_prefix(pgha_prefix(props["scope"]))
            if plan.action in ("start_first", "rebuild"):
                bootstrapped = not has_data(found.get(props["name"], ""))
                with self.ssh(props) as ssh:
                    since = host_clock(ssh)
                    write_patroni_config(ssh, props)
                    ssh.run(f"{enable_unit('patroni')} && systemctl start patroni",
                            step="start patroni on the first host")
                    if bootstrapped:
                        # The other nodes start beside the bootstrap (see the module doc);
                        # the first host's node waits for its leader.
                        sysid = self._wait_system_identifier(ssh, props, gateway, since)
                    else:
                        status = self._wait_ready(ssh, props, timeout=900, since=since)
                        sysid = self._system_identifier(ssh, props, status)
        return {**public(props), "bootstrapped": bootstrapped, "cluster_running": True,
                "system_identifier": sysid or recorded, "drift": ""}

    def _wait_system_identifier(self, ssh: Ssh, props: dict[str, Any], gateway: EtcdGateway,
                                since: int) -> str:
        """Until the first host's bootstrap has made the new cluster's data directory (initdb, or
        a restore, wrote its control file): its system identifier, which the state records for
        the checks after a loss. The first host then holds the initialize key, so no other node
        can bootstrap the cluster, and they may start."""
        last: list[str] = []

        def made() -> str | None:
            dcs = DcsView.read(gateway, props)
            data = probe_node(ssh, props).data
            last[:] = [f"{dcs.describe(props['scope'])}; the data directory: {data}"]
            return data if dcs.initialize is not None and is_system_identifier(data) else None

        return str(self._watch_start(ssh, props, made, timeout=900, since=since,
                                     what=f"Patroni on {props['name']} to create cluster "
                                          f"{props['scope']}'s data directory (initdb or restore)",
                                     status=lambda: last[0] if last else ""))

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}/bootstrap", outs=self._ensure_cluster(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Only a refresh that found no cluster running is a change (see the module doc)."""
        return DiffResult(changes=bool(self.drifted(olds, news)))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        restored_before = bool(olds.get("bootstrapped") and (olds.get("bootstrap") or {}).get("restore"))
        outs = self._ensure_cluster(news, recorded=olds.get("system_identifier") or "", existed=True,
                                    restored_before=restored_before)
        outs["bootstrapped"] = bool(olds.get("bootstrapped") or outs["bootstrapped"])
        return UpdateResult(outs=outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: does the DCS show the cluster running (a leader) with the system the
        state recorded?"""
        outs = dict(props)
        endpoints = etcd_urls(props)
        gateway = dcs_gateway(props)
        dcs = None
        if gateway is not None:
            try:
                dcs = DcsView.read(gateway, props)
            except RestError:
                dcs = None
        running, drift = observe_cluster(props["scope"], dcs, props.get("system_identifier") or "", endpoints)
        outs.update(cluster_running=running, drift=drift)
        if running and dcs is not None and not props.get("system_identifier"):
            # A state that recorded none (an `up` interrupted after the bootstrap began).
            outs["system_identifier"] = dcs.system_identifier
        if drift:
            notify(props["scope"], f"Patroni cluster: {drift}", warning=True)
        return ReadResult(id_=id_, outs=outs)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The first host's node resource stops and cleans up its Patroni."""


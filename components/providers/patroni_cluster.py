"""PatroniCluster: the cluster as a whole, as it lives in the DCS.

Created after etcd and before the nodes, deleted after every node, so that a
destroy ends with what `patronictl remove` does: the cluster's keys deleted
from etcd once no member is left running. Its member list changes before any
node or HAProxy changes, so when the leader's node is being removed, the
leader role moves to a staying member first (one Patroni accepts, see
succession.py): HAProxy then never points at no primary, and the removed node
is stopped as a replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pulumi.dynamic import CreateResult, UpdateResult

from components.providers.base import HostProvider, public
from components.providers.dynamic_config import Cluster, switch_leader, wait_for_successor
from components.transport.rest import LEADER_ROLES, EtcdGateway, RestError, first_healthy
from components.transport.ssh import SshError, notify, wait_for


def dcs_prefix(props: dict[str, Any]) -> str:
    return f"{props['namespace'].rstrip('/')}/{props['scope']}/"


def pgha_prefix(scope: str) -> str:
    """pgha's own coordination keys, outside Patroni's namespace."""
    return f"/pgha/{scope}/"


def is_system_identifier(value: str | None) -> bool:
    """Whether a value is a PostgreSQL system identifier (Patroni writes "" to `initialize`
    while a bootstrap is under way)."""
    return value is not None and value.isdigit()


@dataclass(frozen=True)
class DcsView:
    """What the DCS says about one Patroni cluster: its system identifier (`initialize`),
    the leader key's holder and the members that are registered (alive within ttl)."""

    initialize: str | None
    leader: str | None
    members: tuple[str, ...]

    @classmethod
    def read(cls, gateway: EtcdGateway, props: dict[str, Any]) -> DcsView:
        prefix = dcs_prefix(props)
        members = sorted(k.rsplit("/", 1)[-1] for k in gateway.keys_with_prefix(f"{prefix}members/"))
        return cls(initialize=gateway.get(f"{prefix}initialize"),
                   leader=gateway.get(f"{prefix}leader") or None, members=tuple(members))

    @property
    def system_identifier(self) -> str:
        return self.initialize if is_system_identifier(self.initialize) else ""

    @property
    def bootstrapping(self) -> bool:
        """A node won the race for the initialize key and bootstraps the cluster now."""
        return self.leader is None and self.initialize == ""

    def describe(self, scope: str) -> str:
        system = f"system {self.system_identifier}" if self.system_identifier else "no system identifier"
        if self.leader:
            return f"cluster {scope} ({system}) is led by {self.leader}"
        if self.bootstrapping:
            return f"cluster {scope} is being bootstrapped (no leader yet)"
        if self.members:
            return f"cluster {scope} ({system}) has no leader; registered: {', '.join(self.members)}"
        if self.initialize is not None:
            return f"cluster {scope} ({system}) has no leader and no registered member"
        return f"the DCS holds no cluster {scope}"


def healthy_etcd(endpoints: list[str], scope: str) -> EtcdGateway:
    gateway = first_healthy(endpoints)
    if gateway is None:
        raise SshError(scope, "reach etcd", f"no healthy etcd among {', '.join(endpoints)}")
    return gateway


class PatroniClusterProvider(HostProvider):
    REPLACE_ON = frozenset({"scope", "namespace"})
    # Whom to prefer when the leader's host is removed: the PatroniLeader resource's change.
    CREATE_ONLY = frozenset({"leader"})

    def create(self, props: dict[str, Any]) -> CreateResult:
        # Founding etcd members return as soon as they run; the cluster is only
        # usable once every one of them answers healthy.
        endpoints = props["etcd_endpoints"]
        gateways = [EtcdGateway(e) for e in endpoints]
        wait_for(lambda: all(g.healthy() and g.cluster_version_ready() for g in gateways),
                 timeout=180, interval=0.25,
                 what=f"every etcd member healthy ({', '.join(endpoints)})", host=props["scope"],
                 status=lambda: "not yet: " + ", ".join(g.endpoint for g in gateways if not g.healthy()))
        return CreateResult(id_=dcs_prefix(props), outs=public(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        healthy_etcd(news["etcd_endpoints"], news["scope"])
        removed = set(olds.get("members") or []) - set(news["members"])
        if removed:
            self._move_leader_off(news, removed)
        return UpdateResult(outs=public(news))

    def _move_leader_off(self, props: dict[str, Any], removed: set[str]) -> None:
        cluster = Cluster(props)
        members = cluster.members()
        leader = next((m for m in members if m.get("role") in LEADER_ROLES), None)
        if leader is None or leader["name"] not in removed:
            return
        leaving = {m["name"]: "is being removed" if m["name"] in removed else "is not in pgha:hosts"
                   for m in members if m["name"] not in props["members"]}
        # `leader` (pgha:leader) is honoured when the cluster's props carry it.
        target = wait_for_successor(cluster, leader["name"], leaving, props.get("leader") or "")
        switch_leader(cluster, leader["name"], target)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """`patronictl remove`: only once no member is left, then every key of the cluster.

        Without a healthy etcd (its hosts are gone, or re-imaged) there is nothing left to
        remove from: the delete completes and says what it skipped.
        """
        gateway = first_healthy(props["etcd_endpoints"])
        if gateway is None:
            notify(props["scope"], f"no healthy etcd among {', '.join(props['etcd_endpoints'])}: skipped "
                   f"removing the cluster's keys ({dcs_prefix(props)}, {pgha_prefix(props['scope'])}); "
                   f"an etcd cluster that is gone holds none", warning=True)
            return
        members = f"{dcs_prefix(props)}members/"

        def no_members() -> bool:
            try:
                return gateway.count_prefix(members) == 0
            except RestError:
                return False

        try:
            wait_for(no_members, timeout=90, interval=2, what=f"no Patroni member left under {members}",
                     host=props["scope"])
        except SshError as err:
            left = ", ".join(k.rsplit("/", 1)[-1] for k in gateway.keys_with_prefix(members))
            raise SshError(props["scope"], "remove the cluster from the DCS",
                           f"members still registered: {left}; stop them first") from err
        gateway.delete_prefix(dcs_prefix(props))
        gateway.delete_prefix(pgha_prefix(props["scope"]))

"""PatroniCluster: the cluster as a whole, as it lives in the DCS.

Created before the nodes and deleted after them, so that a destroy ends with
what `patronictl remove` does: the cluster's keys deleted from etcd once no
member is left running. When the member list shrinks, its update runs before
the removed nodes are deleted and moves the leader role away from them.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CreateResult, UpdateResult

from components.providers.base import HostProvider, public
from components.transport.rest import EtcdGateway, PatroniApi, RestError, first_healthy
from components.transport.ssh import SshError, wait_for

LEADER_ROLES = ("leader", "primary", "master", "standby_leader")


def _prefix(props: dict[str, Any]) -> str:
    return f"{props['namespace'].rstrip('/')}/{props['scope']}/"


def _etcd(props: dict[str, Any]) -> EtcdGateway:
    gateway = first_healthy(props["etcd_endpoints"])
    if gateway is None:
        raise SshError(props["scope"], "reach etcd", f"no healthy etcd among {props['etcd_endpoints']}")
    return gateway


def _cluster_view(props: dict[str, Any], names: list[str]) -> tuple[PatroniApi, dict[str, Any]] | None:
    auth = (props["restapi_username"], props["secrets"]["restapi"])
    for name in names:
        node = PatroniApi(props["members"][name], auth=auth)
        try:
            return node, node.cluster()
        except RestError:
            continue
    return None


class PatroniClusterProvider(HostProvider):
    REPLACE_ON = frozenset({"scope", "namespace"})

    def create(self, props: dict[str, Any]) -> CreateResult:
        _etcd(props)
        return CreateResult(id_=_prefix(props), outs=public(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        removed = sorted(set(olds.get("members", {})) - set(news["members"]))
        remaining = sorted(set(news["members"]) & set(olds.get("members", {})))
        if removed and remaining:
            self._move_leader_off(news, removed, remaining)
        return UpdateResult(outs=public(news))

    def _move_leader_off(self, props: dict[str, Any], removed: list[str], remaining: list[str]) -> None:
        view = _cluster_view(props, remaining)
        if view is None:
            return  # nothing running to switch over to; the node deletes decide
        node, cluster = view
        members = cluster.get("members", [])
        leader = next((m for m in members if m.get("role") in LEADER_ROLES), None)
        if leader is None or leader.get("name") not in removed:
            return
        candidates = [m for m in members if m.get("name") in remaining
                      and m.get("state") in ("streaming", "running")
                      and not (m.get("tags") or {}).get("nofailover")]
        if not candidates:
            raise SshError(leader.get("host", props["scope"]), "switch over away from a removed leader",
                           f"{leader['name']} leads and no remaining member is a healthy replica")
        target = sorted(candidates, key=lambda m: (m.get("lag") if isinstance(m.get("lag"), int) else 0,
                                                   m["name"]))[0]
        resp = node.switchover(leader["name"], target["name"])
        if resp.status_code not in (200, 202):
            raise SshError(leader.get("host", props["scope"]), "switch over away from a removed leader",
                           f"POST /switchover to {target['name']}: HTTP {resp.status_code} {resp.text[:200]}")
        wait_for(lambda: any(m.get("name") == target["name"] and m.get("role") in LEADER_ROLES
                             for m in node.cluster().get("members", [])),
                 timeout=120, interval=1, what=f"{target['name']} leading", host=props["scope"])

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """`patronictl remove`: only once no member is left, then every key of the cluster."""
        prefix = _prefix(props)
        gateway = _etcd(props)
        members_prefix = f"{prefix}members/"
        wait_for(lambda: gateway.count_prefix(members_prefix) == 0, timeout=90, interval=2,
                 what=f"no Patroni member left under {members_prefix} (still: "
                      f"{', '.join(k.rsplit('/', 1)[-1] for k in gateway.keys_with_prefix(members_prefix))})",
                 host=props["scope"])
        gateway.delete_prefix(prefix)

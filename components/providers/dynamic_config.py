"""PatroniDynamicConfig: the cluster-wide settings Patroni keeps in the DCS.

`bootstrap.dcs` only seeds a new cluster; afterwards this resource is the
source of truth. A change is one `PATCH /config` (keys removed from the stack
are sent as null, which deletes them); `pulumi refresh` reads `GET /config`,
so edits made with `patronictl edit-config` show up as drift.

When a parameter needs a restart, the nodes are restarted so that writes see
only one switchover: replicas one at a time (each streaming again before the
next), then a switchover to a restarted replica, then the former leader. Who
takes over, here and for `pgha:leader`, is succession.py's rule.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, UpdateResult

from components import state_upgrade
from components.providers.base import HostProvider, public
from components.succession import Member, Succession, SyncMode, choose_successor, members_of
from components.transport.rest import LEADER_ROLES, EtcdGateway, PatroniApi, RestError, first_healthy
from components.transport.ssh import SshError, wait_for

TOP_LEVEL = ("ttl", "loop_wait", "retry_timeout", "maximum_lag_on_failover", "synchronous_mode")
PG_LEVEL = ("use_pg_rewind", "use_slots")
# How long a hand-over waits for a member to qualify, e.g. for Patroni to name a new synchronous
# standby (it does so within loop_wait) after the previous one restarted.
SUCCESSOR_TIMEOUT = 120.0


def desired_view(props: dict[str, Any]) -> dict[str, Any]:
    """What the stack declares, in the flat shape refresh reads back: Patroni's settings
    and every PostgreSQL parameter (reload- and restart-applied alike)."""
    dcs = props.get("dcs") or {}
    return {
        "settings": {k: dcs[k] for k in (*TOP_LEVEL, *PG_LEVEL) if k in dcs},
        "parameters": {**(props.get("parameters_reload") or {}), **(props.get("parameters_restart") or {})},
    }


def live_view(live: dict[str, Any], operator_parameters: list[str]) -> dict[str, Any]:
    """GET /config in the same shape: every parameter except those left to operators, so
    a parameter added by hand (`patronictl edit-config`) shows as drift."""
    pg = live.get("postgresql") or {}
    settings = {k: live[k] for k in TOP_LEVEL if k in live}
    settings.update({k: pg[k] for k in PG_LEVEL if k in pg})
    parameters = {k: str(v) for k, v in (pg.get("parameters") or {}).items()
                  if k not in operator_parameters and v is not None}
    return {"settings": settings, "parameters": parameters}


def config_patch(live: dict[str, Any], props: dict[str, Any]) -> dict[str, Any] | None:
    """The PATCH /config body that makes the DCS what the stack declares, or None when it
    already is (a new cluster is seeded with the same settings by bootstrap.dcs).

    Every declared value is sent; a setting or parameter the DCS holds and the stack does
    not declare is sent as null, which deletes it, except parameters left to operators.
    """
    want = desired_view(props)
    have = live_view(live, props.get("operator_parameters") or [])
    if have == want:
        return None
    settings = want["settings"]
    patch: dict[str, Any] = {k: settings[k] for k in TOP_LEVEL if k in settings}
    patch.update({k: None for k in TOP_LEVEL if k in have["settings"] and k not in settings})
    pg: dict[str, Any] = {k: settings[k] for k in PG_LEVEL if k in settings}
    params: dict[str, Any] = dict(want["parameters"])
    params.update({k: None for k in have["parameters"] if k not in params})
    pg["parameters"] = params
    patch["postgresql"] = pg
    return patch


class Cluster:
    """The members as the DCS lists them, and their REST APIs."""

    def __init__(self, props: dict[str, Any]) -> None:
        self.props = props
        self.auth = ("patroni", props["secrets"]["restapi"])
        gateway = first_healthy(props["etcd_endpoints"])
        if gateway is None:
            raise SshError(props["scope"], "read the DCS", "no healthy etcd member")
        self.gateway: EtcdGateway = gateway
        self.prefix = f"{props['namespace'].rstrip('/')}/{props['scope']}/"

    def api_urls(self) -> dict[str, str]:
        urls = {}
        for key in self.gateway.keys_with_prefix(f"{self.prefix}members/"):
            member = json.loads(self.gateway.get(key) or "{}")
            if member.get("api_url"):
                urls[key.rsplit("/", 1)[-1]] = member["api_url"].rsplit("/", 1)[0]
        return urls

    def api(self, name: str | None = None) -> PatroniApi:
        urls = self.api_urls()
        if not urls:
            raise SshError(self.props["scope"], "reach Patroni", "no member is registered in the DCS")
        return PatroniApi(urls[name] if name else next(iter(sorted(urls.values()))), auth=self.auth)

    def members(self) -> list[dict[str, Any]]:
        return self.api().cluster().get("members", [])

    def succession_input(self) -> tuple[list[Member], SyncMode]:
        """The members and the DCS's synchronous_mode, both through one member's REST API."""
        api = self.api()
        return members_of(api.cluster()), SyncMode.from_setting(api.config().get("synchronous_mode"))


def _healthy_replica(member: dict[str, Any]) -> bool:
    return member.get("state") == "streaming" and not member.get("pending_restart")


def _restart(cluster: Cluster, name: str, ready: Any, what: str, timeout: float) -> None:
    def posted() -> bool:
        resp = cluster.api(name).restart()
        if resp.status_code in (200, 202):
            return True
        if resp.status_code == 503:  # e.g. a demote still in progress: try again shortly
            raise SshError(name, what, f"POST /restart: HTTP 503 {resp.text[:200]}")
        raise SshError(name, what, f"POST /restart: HTTP {resp.status_code} {resp.text[:200]}")

    wait_for(posted, timeout=60, interval=1, what=f"{name} accepting a restart", host=name)
    wait_for(lambda: any(m["name"] == name and ready(m) for m in cluster.members()),
             timeout=timeout, interval=0.5, what=f"{name} back after its restart", host=name)


def rolling_restart(cluster: Cluster, preferred_leader: str | None, timeout: float = 600) -> list[str]:
    """Restart every node with pending_restart, leader last, behind one switchover."""
    restarted: list[str] = []
    replicas = sorted(m["name"] for m in cluster.members()
                      if m.get("role") not in LEADER_ROLES and m.get("pending_restart"))
    for name in replicas:
        _restart(cluster, name, _healthy_replica, "restart a replica", timeout)
        restarted.append(name)
    members = [Member.from_patroni(m) for m in cluster.members()]
    leader = next((m for m in members if m.is_leader), None)
    if leader is None or not leader.pending_restart:
        return restarted
    others = [m for m in members if m.name != leader.name]
    if all(m.promotion_barred for m in others):  # a single node, or no other may ever lead
        _restart(cluster, leader.name,
                 lambda m: m.get("state") == "running" and not m.get("pending_restart"),
                 "restart the leader", timeout)
    else:
        pending = {m.name: "has a restart pending" for m in others if m.pending_restart}
        target = wait_for_successor(cluster, leader.name, pending, preferred_leader or "")
        switch_leader(cluster, leader.name, target)
        former = wait_for(lambda: next((m for m in cluster.members() if m["name"] == leader.name
                                        and m.get("state") == "streaming"), None),
                          timeout=timeout, interval=0.5, host=leader.name,
                          what=f"{leader.name} streaming from the new leader")
        # Demoting stopped and started its PostgreSQL, which usually applied the change already.
        if former.get("pending_restart"):
            _restart(cluster, leader.name, _healthy_replica, "restart the former leader", timeout)
    restarted.append(leader.name)
    return restarted


def wait_for_successor(cluster: Cluster, leader: str, exclude: Mapping[str, str], preferred: str = "",
                       timeout: float = SUCCESSOR_TIMEOUT) -> str:
    """The member to hand `leader`'s role to, once one qualifies (succession.py's rule).

    `exclude` maps members that must not take over to why ("is being removed"). Fails after
    `timeout` with every member and why it does not qualify.
    """
    last: list[Succession] = []

    def successor() -> str:
        members, sync_mode = cluster.succession_input()
        last[:] = [choose_successor(members, sync_mode, exclude, preferred)]
        return last[0].target

    try:
        return wait_for(successor, timeout=timeout, interval=1, host=leader,
                        what="a member that may take over the leader role")
    except SshError as err:
        raise SshError(leader, "choose who takes over the leader role",
                       last[0].reason if last else str(err)) from err


def switch_leader(cluster: Cluster, current: str, target: str) -> None:
    resp = cluster.api(current).switchover(current, target)
    if resp.status_code not in (200, 202):
        raise SshError(current, f"switch over to {target}", f"HTTP {resp.status_code} {resp.text[:200]}")
    wait_for(lambda: any(m["name"] == target and m.get("role") in LEADER_ROLES for m in cluster.members()),
             timeout=120, interval=0.5, what=f"{target} leading", host=target)


def settle(cluster: Cluster, props: dict[str, Any], expect_restart: bool) -> None:
    """Return once every member has applied a PATCH /config.

    Members read new settings in their HA loop, every loop_wait seconds, so each one is
    woken. A restart-only change is seen applied when every member reports
    pending_restart; a reload-only change leaves no trace, so it gets a moment.
    """
    for url in cluster.api_urls().values():  # one DCS read for all members
        try:
            PatroniApi(url, auth=cluster.auth).wake()
        except RestError:
            pass  # a member that is down reads the settings when it starts
    time.sleep(1.0)
    if not expect_restart:
        return
    loop_wait = min(int((props.get("dcs") or {}).get("loop_wait", 10)), 10)
    try:
        wait_for(lambda: all(m.get("pending_restart") for m in cluster.members()), timeout=loop_wait + 2,
                 interval=0.5, what="every member flagging pending_restart", host=props["scope"])
    except SshError:
        pass  # a value set back to what runs needs no restart: nothing will be flagged


class DynamicConfigProvider(HostProvider):
    REPLACE_ON = frozenset({"scope", "namespace"})
    # Routing and preference, not settings: any live etcd member will do, and the
    # preferred leader is the PatroniLeader resource's change.
    CREATE_ONLY = frozenset({"etcd_endpoints", "leader"})
    # `live`: the DCS as the last refresh (or `up`) read it, in desired_view's shape.
    OUTPUTS = frozenset({"restarted", "pending_restart", "live"})

    def upgrade(self, props: dict[str, Any]) -> dict[str, Any]:
        return state_upgrade.dynamic_config(props)

    def drifted(self, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
        live = olds.get("live")
        return ["live"] if live is not None and live != desired_view(news) else []

    def _apply(self, olds: dict[str, Any] | None, props: dict[str, Any]) -> dict[str, Any]:
        old = self.upgrade(olds) if olds else {}
        cluster = Cluster(props)
        api = cluster.api()
        patch = config_patch(api.config(), props)
        if patch is not None:
            resp = api.patch_config(patch)
            if resp.status_code != 200:
                raise SshError(props["scope"], "PATCH /config", f"HTTP {resp.status_code} {resp.text[:300]}")
            settle(cluster, props,
                   expect_restart=old.get("parameters_restart") != props.get("parameters_restart"))
        restarted: list[str] = []
        if props.get("restart_policy", "rolling") == "rolling":
            wait_for(lambda: all(m.get("state") in ("running", "streaming") for m in cluster.members()),
                     timeout=120, interval=1, what="every member running", host=props["scope"])
            restarted = rolling_restart(cluster, props.get("leader"))
        pending = sorted(m["name"] for m in cluster.members() if m.get("pending_restart"))
        return {**public(props), "restarted": restarted, "pending_restart": pending,
                "live": desired_view(props)}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}/config", outs=self._apply(None, props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(olds, news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: what the DCS holds, including parameters added by hand, as `live`."""
        outs = dict(props)
        try:
            cluster = Cluster(props)
            outs["live"] = live_view(cluster.api().config(), props.get("operator_parameters") or [])
            outs["pending_restart"] = sorted(m["name"] for m in cluster.members() if m.get("pending_restart"))
        except (RestError, SshError):
            pass
        return ReadResult(id_=id_, outs=outs)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The settings go with the cluster's keys (PatroniCluster's delete)."""


class LeaderProvider(HostProvider):
    """Switchover to the configured leader when it is not leading (after checking it).

    Without `pgha:leader` nothing is asserted, so an automatic failover stands.
    With it, a refresh that finds another leader makes the next `up` switch back.
    """

    OUTPUTS = frozenset({"current_leader"})
    CREATE_ONLY = frozenset({"etcd_endpoints"})  # routing: any live member will do

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        result = super().diff(_id, olds, news)
        if result.changes is None:  # inputs changed: the engine shows which
            return result
        moved = bool(news.get("leader")) and olds.get("current_leader") not in (None, news.get("leader"))
        return DiffResult(changes=bool(result.changes or moved), replaces=result.replaces,
                          delete_before_replace=result.delete_before_replace)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        outs = dict(props)
        try:
            outs["current_leader"] = next((m["name"] for m in Cluster(props).members()
                                           if m.get("role") in LEADER_ROLES), None)
        except (RestError, SshError):
            pass
        return ReadResult(id_=id_, outs=outs)

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        target = props.get("leader")
        if not target:
            # Nothing to assert, but the leader is recorded: a reviewer's summary names it.
            try:
                current = next((m["name"] for m in Cluster(props).members()
                                if m.get("role") in LEADER_ROLES), None)
            except (RestError, SshError):
                current = None
            return {**public(props), "current_leader": current}
        cluster = Cluster(props)
        members, sync_mode = cluster.succession_input()
        current = next((m.name for m in members if m.is_leader), None)
        if current == target:
            return {**public(props), "current_leader": current}
        succession = choose_successor(members, sync_mode, preferred=target)
        if succession.target != target:
            why = succession.why_not(target) or f"{target} is not a member of the cluster"
            now = f" (a switchover could go to {succession.target} now)" if succession.target else ""
            raise SshError(target, "switch over to pgha:leader", f"{why}{now}")
        if current is None:
            raise SshError(target, "switch over to pgha:leader", "the cluster has no leader now")
        switch_leader(cluster, current, target)
        return {**public(props), "current_leader": target}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}/leader", outs=self._apply(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Removing the setting leaves the leader where it is."""

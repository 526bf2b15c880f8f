"""Who takes over the leader role when pgha moves it (pure).

pgha moves the leader role with Patroni's POST /switchover, naming a candidate, and Patroni
accepts only some candidates. Every hand-over pgha starts picks its candidate here: removing the
leader's host (PatroniCluster), a leader's own delete (handover.py), the rolling restart and the
configured `pgha:leader` (dynamic_config.py). When nobody qualifies, the answer says why for each
member, so that the caller can wait for the cluster to change or fail with that text.

Patroni's rules, as read in its source (Patroni 4):

- synchronous_mode on (or strict): POST /switchover answers 412 "candidate name does not match
  with sync_standby" unless the candidate is listed in the DCS /sync key, which GET /cluster shows
  as role `sync_standby` (api.py `is_failover_possible`, utils.py `cluster_as_json`).
- synchronous_mode quorum: the REST API skips that check (it tests `is_synchronous_mode and not
  is_quorum_commit_mode`), but the leader, on taking the request, drops every member not listed in
  /sync from a switchover's candidates: in ha.py `get_failover_candidates` only a failover without
  a leader may go to a member outside /sync, and `is_healthiest_node` lets only /sync members race
  in a switchover. So a candidate outside /sync gets "Switchover failed" (503) after the leader
  cleared the request. In quorum mode /cluster shows /sync members as role `quorum_standby`.
- a member tagged `nofailover`, or without that tag and with `failover_priority` <= 0, never
  promotes (tags.py `Tags.nofailover`: an explicit `nofailover` wins over `failover_priority`).
  Among members as far along, Patroni prefers the higher `failover_priority` (ha.py
  `_is_healthiest_node`); so does the order here, after lag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from components.transport.rest import LEADER_ROLES

# /cluster `state` of a member that could be promoted: a streaming replica (Patroni >= 3.0.4
# reports the replication state) or, from older Patroni, a running one.
HEALTHY_STATES = frozenset({"streaming", "running"})
DEFAULT_FAILOVER_PRIORITY = 1  # Patroni's value when the tag is absent


class SyncMode(Enum):
    """Patroni's `synchronous_mode` (the DCS setting, GET /config)."""

    OFF = "off"
    ON = "on"  # also synchronous_mode_strict: the same switchover rule
    QUORUM = "quorum"  # Patroni 4 quorum commit

    @classmethod
    def from_setting(cls, value: object) -> SyncMode:
        """The mode from the setting's value as GET /config returns it: a bool, on/off, quorum or absent."""
        text = str(value).strip().lower()
        if text == "quorum":
            return cls.QUORUM
        return cls.ON if text in ("true", "on", "yes", "1") else cls.OFF


# The /cluster role of the members a switchover may go to, in each synchronous mode.
SYNC_ROLES = {SyncMode.ON: "sync_standby", SyncMode.QUORUM: "quorum_standby"}


@dataclass(frozen=True)
class Member:
    """One member of Patroni's GET /cluster, with what decides whether it may lead."""

    name: str
    role: str
    state: str
    lag: int | None = None  # bytes behind the leader; None while Patroni reports "unknown"
    nofailover: bool | None = None  # None: the tag is not set
    failover_priority: int = DEFAULT_FAILOVER_PRIORITY
    nosync: bool = False
    noloadbalance: bool = False  # HAProxy's concern only: it does not stop a member from leading
    pending_restart: bool = False

    @classmethod
    def from_patroni(cls, raw: Mapping[str, Any]) -> Member:
        tags = raw.get("tags") or {}
        nofailover = tags.get("nofailover")
        return cls(name=str(raw.get("name", "")), role=str(raw.get("role", "")),
                   state=str(raw.get("state", "")), lag=_bytes(raw.get("lag")),
                   nofailover=None if nofailover is None else bool(nofailover),
                   failover_priority=_priority(tags.get("failover_priority")),
                   nosync=bool(tags.get("nosync")), noloadbalance=bool(tags.get("noloadbalance")),
                   pending_restart=bool(raw.get("pending_restart")))

    @property
    def is_leader(self) -> bool:
        return self.role in LEADER_ROLES

    @property
    def promotion_barred(self) -> str:
        """Why Patroni never promotes this member, from its tags; "" when it may."""
        if self.nofailover is not None:
            return "is tagged nofailover" if self.nofailover else ""
        if self.failover_priority <= 0:
            return f"has failover_priority {self.failover_priority}"
        return ""


def members_of(cluster: Mapping[str, Any]) -> list[Member]:
    """The members of a GET /cluster answer."""
    return [Member.from_patroni(m) for m in cluster.get("members", [])]


@dataclass(frozen=True)
class Rejection:
    name: str
    why: str  # a sentence that starts with the name: "pg3 is an asynchronous replica in synchronous mode"


@dataclass(frozen=True)
class Succession:
    """The member to hand the leader role to, or none for now (`target` empty) and why."""

    target: str
    reason: str
    rejected: tuple[Rejection, ...] = ()

    @property
    def must_wait(self) -> bool:
        return not self.target

    def why_not(self, name: str) -> str:
        """Why `name` does not qualify; "" when it does or is not a member."""
        return next((r.why for r in self.rejected if r.name == name), "")


def choose_successor(members: Sequence[Member], sync_mode: SyncMode,
                     exclude: Mapping[str, str] | None = None, preferred: str = "") -> Succession:
    """The member Patroni would accept as switchover candidate, and the best of them.

    `exclude` maps the members that must not take over to why, as a phrase that follows the
    name ("is being removed"). Among the members that qualify, `preferred` (pgha:leader) wins;
    then the least lag (unknown lag last), the higher failover_priority, the name.
    """
    exclude = exclude or {}
    eligible: list[Member] = []
    rejected: list[Rejection] = []
    for member in members:
        why = _disqualification(member, sync_mode, exclude)
        if why:
            rejected.append(Rejection(member.name, f"{member.name} {why}"))
        else:
            eligible.append(member)
    if not eligible:
        because = "; ".join(r.why for r in rejected) or "the cluster lists no members"
        return Succession("", f"no member can take over the leader role: {because}", tuple(rejected))
    chosen = next((m for m in eligible if preferred and m.name == preferred), None)
    if chosen is not None:
        return Succession(chosen.name, f"{chosen.name} is the configured leader", tuple(rejected))
    chosen = min(eligible, key=_succession_order)
    reason = f"{chosen.name} qualifies with the least lag"
    if preferred:
        why_not = next((r.why for r in rejected if r.name == preferred),
                       f"{preferred} is not a member of the cluster")
        reason += f" (the configured leader does not qualify: {why_not})"
    return Succession(chosen.name, reason, tuple(rejected))


def _disqualification(member: Member, sync_mode: SyncMode, exclude: Mapping[str, str]) -> str:
    """Why `member` cannot take over, as a phrase that follows its name; "" when it can."""
    if member.is_leader:
        return "holds the leader role"
    if member.name in exclude:
        return exclude[member.name]
    barred = member.promotion_barred
    if barred:
        return barred
    if member.state not in HEALTHY_STATES:
        return f"is not streaming (state: {member.state or 'unknown'})"
    wanted = SYNC_ROLES.get(sync_mode)
    if wanted and member.role != wanted:
        kind = "an asynchronous replica in synchronous mode" if sync_mode is SyncMode.ON \
            else "not a quorum standby in quorum mode"
        return f"is {kind}" + (" (tagged nosync)" if member.nosync else "")
    return ""


def _succession_order(member: Member) -> tuple[bool, int, int, str]:
    return (member.lag is None, member.lag or 0, -member.failover_priority, member.name)


def _bytes(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _priority(value: object) -> int:
    """Patroni parses the tag as an integer and falls back to its default when it cannot."""
    if isinstance(value, bool) or value is None:
        return DEFAULT_FAILOVER_PRIORITY
    try:
        return int(str(value).strip())
    except ValueError:
        return DEFAULT_FAILOVER_PRIORITY

"""Moving a running plaintext cluster to pgha:tls in one `up` (pure: what to do, from what the
hosts show). providers/tls_move.py carries it out, in two steps that every etcd member and every
Patroni node wait for:

1. **etcd** (EtcdTlsMove). Patroni is paused first: a paused Patroni neither demotes its primary
   when it loses the DCS nor stops PostgreSQL when it stops. A listener serves http or https, not
   both, so the members cannot move one at a time: one snapshot of etcd is restored on every
   member with https peer URLs, and etcd starts again on https with client certificates.
2. **Patroni** (PatroniTlsMove). Each Patroni restarts with its TLS patroni.yml, the leader first:
   PostgreSQL keeps running, `ssl` and the hostssl pg_hba take effect by reload, and the replicas'
   walreceivers reconnect over TLS once the leader serves it. HAProxy checks each node over https
   as soon as it serves https. Then the pause ends (unless the cluster was paused before).

PostgreSQL is not restarted and no switchover happens. A key in pgha's own DCS namespace
(MARKER) says a move is under way and whether pgha set the pause; the snapshot carries it to the
new etcd, and the Patroni step removes it last, so a re-run after a failure finds where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# pgha's key (under /pgha/<scope>/) while a move is under way, and its values.
MARKER = "tls-move"
PAUSED_BY_PGHA = "paused by pgha"
PAUSED_BEFORE = "paused before"

EtcdStep = Literal["new", "tls", "move", "resume", "stop"]


@dataclass(frozen=True)
class EtcdHostState:
    """One etcd host as SSH sees it before the move."""

    name: str
    scheme: str | None  # of pgha's /etc/default/etcd (ETCD_LISTEN_PEER_URLS); None: not pgha's
    has_data: bool  # <data_dir>/member exists
    snapshot: str = ""  # sha256 of an earlier move's snapshot on the host ('' when none)


@dataclass(frozen=True)
class EtcdDecision:
    step: EtcdStep
    reason: str = ""


def etcd_step(hosts: list[EtcdHostState], answers_plaintext: bool, listed: list[str] | None) -> EtcdDecision:
    """What the etcd step does.

    - no host runs pgha's etcd yet: a new cluster, deployed with TLS from the start ("new");
    - none runs it in plaintext: nothing to move ("tls");
    - the plaintext cluster answers: move it ("move"), provided that every member it lists is a
      configured host (a membership change and the move are two `up`s);
    - it does not answer, and every pgha host holds the same snapshot of an earlier move that
      stopped half-way: restore that one again everywhere ("resume");
    - otherwise stop, and say why."""
    plaintext = sorted(h.name for h in hosts if h.scheme == "http")
    if not plaintext:
        deployed = any(h.scheme for h in hosts) or any(h.has_data for h in hosts)
        return EtcdDecision("tls" if deployed else "new")
    configured = {h.name for h in hosts}
    if answers_plaintext:
        strangers = sorted(set(listed or []) - configured)
        if strangers:
            return EtcdDecision("stop", (
                f"etcd lists {', '.join(strangers)}, which pgha:hosts no longer has as an etcd member: "
                "remove it with pgha:tls.enabled: false first, then turn TLS on in a second `up` (the "
                "move to TLS restores etcd on exactly the members it has)"))
        return EtcdDecision("move")
    ours = [h for h in hosts if h.scheme]
    snapshots = {h.snapshot for h in ours}
    if len(snapshots) == 1 and "" not in snapshots:
        return EtcdDecision("resume", (
            f"no etcd member answers, and {', '.join(sorted(h.name for h in ours))} hold the snapshot of "
            "an earlier move to TLS: restoring it on every member again"))
    return EtcdDecision("stop", (
        f"etcd on {', '.join(plaintext)} runs in plaintext and no member answers over http, so pgha "
        "cannot take the snapshot it moves to TLS. Bring etcd back (with pgha:tls.enabled: false, "
        "`pulumi up --refresh` repairs it), then turn TLS on again"))


def restart_order(roles: dict[str, str]) -> list[str]:
    """The nodes in the order their Patroni restarts with TLS: the leader first (its PostgreSQL
    then serves TLS, which the replicas' new primary_conninfo requires), then the others by name."""
    return sorted(roles, key=lambda name: (roles[name] not in ("primary", "master", "standby_leader"), name))


def initial_cluster(peers: dict[str, str]) -> str:
    """ETCD_INITIAL_CLUSTER as EtcdMember writes it for an existing member (name=peer URL, sorted),
    so that its update after the move finds the file unchanged and does not restart etcd."""
    return ",".join(sorted(f"{name}={url}" for name, url in peers.items()))

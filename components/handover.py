"""What a Patroni member being removed must do about the leader role (pure).

Removals of several members run in parallel (a destroy removes all of them), and
each announces itself under `leaving/` before it stops. A leader that is being
removed hands over only to a member that stays; when every other member is
leaving too, it waits for them to go and then stops last. Each call looks at one
snapshot of `/cluster`, so the provider calls it again after every action: a
member that announces its departure late, or a switchover that fails, is seen on
the next look.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from components.transport.rest import LEADER_ROLES

HEALTHY_STATES = frozenset({"streaming", "running"})

Action = Literal["stop", "wait", "switchover"]


@dataclass(frozen=True)
class Handover:
    action: Action
    reason: str
    target: str = ""


def plan_handover(me: str, members: list[dict[str, Any]], leaving: set[str]) -> Handover:
    """The next step for member `me`, given Patroni's /cluster members and who is leaving."""
    mine = next((m for m in members if m.get("name") == me), None)
    if mine is None or mine.get("role") not in LEADER_ROLES:
        return Handover("stop", f"{me} does not hold the leader role")
    others = [m for m in members if m.get("name") != me]
    if not others:
        return Handover("stop", f"{me} is the last member: nothing to hand over to")
    staying = [m for m in others if m.get("name") not in leaving]
    if not staying:
        going = ", ".join(sorted(str(m.get("name")) for m in others))
        return Handover("wait", f"the other members ({going}) are being removed too: "
                                "waiting for them to stop")
    candidates = [m for m in staying if m.get("state") in HEALTHY_STATES
                  and not (m.get("tags") or {}).get("nofailover")]
    if not candidates:
        states = ", ".join(f"{m.get('name')}={m.get('state')}" for m in staying)
        return Handover("wait", f"no healthy replica that stays in the cluster to hand the leader role to "
                                f"({states})")
    target = min(candidates, key=lambda m: (_lag(m), str(m.get("name"))))
    return Handover("switchover", f"switching over to {target['name']}", str(target["name"]))


def _lag(member: dict[str, Any]) -> int:
    lag = member.get("lag")
    return lag if isinstance(lag, int) else 0

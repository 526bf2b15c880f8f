"""What a Patroni member being removed must do about the leader role (pure).

Removals of several members run in parallel (a destroy removes all of them), and
each announces itself under `leaving/` before it stops. A leader that is being
removed hands over only to a member that stays; when every other member is
leaving too, it waits for them to go and then stops last. Who may take over is
succession.py's rule (synchronous standbys only in synchronous mode, ...). Each
call looks at one snapshot of `/cluster`, so the provider calls it again after
every action: a member that announces its departure late, a synchronous standby
that Patroni has not picked yet, or a switchover that fails, is seen on the next
look.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from components.succession import Member, SyncMode, choose_successor

Action = Literal["stop", "wait", "switchover"]


@dataclass(frozen=True)
class Handover:
    action: Action
    reason: str
    target: str = ""


def plan_handover(me: str, members: Sequence[Member], leaving: Collection[str],
                  sync_mode: SyncMode) -> Handover:
    """The next step for member `me`, given Patroni's /cluster members, who is leaving and the
    DCS's synchronous_mode."""
    mine = next((m for m in members if m.name == me), None)
    if mine is None or not mine.is_leader:
        return Handover("stop", f"{me} does not hold the leader role")
    others = [m for m in members if m.name != me]
    if not others:
        return Handover("stop", f"{me} is the last member: nothing to hand over to")
    if all(m.name in leaving for m in others):
        going = ", ".join(sorted(m.name for m in others))
        return Handover("wait", f"the other members ({going}) are being removed too: "
                                "waiting for them to stop")
    succession = choose_successor(members, sync_mode, exclude=dict.fromkeys(leaving, "is being removed"))
    if succession.must_wait:
        return Handover("wait", succession.reason)
    return Handover("switchover", f"switching over to {succession.target}: {succession.reason}",
                    succession.target)

"""The leader-removal planner: never stop a leader that a staying replica could take over from."""

from __future__ import annotations

from typing import Any

from components.handover import plan_handover


def member(name: str, role: str = "replica", state: str = "streaming", lag: Any = 0,
           **tags: Any) -> dict[str, Any]:
    return {"name": name, "role": role, "state": state, "lag": lag, "tags": tags}


def three(leader: str = "pg1") -> list[dict[str, Any]]:
    return [member(n, role="leader" if n == leader else "replica",
                   state="running" if n == leader else "streaming") for n in ("pg1", "pg2", "pg3")]


def test_a_replica_just_stops() -> None:
    assert plan_handover("pg2", three(), {"pg2"}).action == "stop"


def test_an_unknown_member_just_stops() -> None:
    assert plan_handover("pg9", three(), {"pg9"}).action == "stop"


def test_the_last_member_stops() -> None:
    step = plan_handover("pg1", [member("pg1", role="leader", state="running")], {"pg1"})
    assert step.action == "stop"


def test_a_leader_hands_over_to_the_least_lagging_staying_replica() -> None:
    members = three()
    members[1]["lag"] = 4096
    step = plan_handover("pg1", members, {"pg1"})
    assert (step.action, step.target) == ("switchover", "pg3")


def test_unknown_lag_counts_as_zero_and_ties_break_by_name() -> None:
    members = three()
    members[1]["lag"] = "unknown"
    step = plan_handover("pg1", members, {"pg1"})
    assert step.target == "pg2"


def test_a_leaving_replica_is_never_the_target() -> None:
    step = plan_handover("pg1", three(), {"pg1", "pg2"})
    assert (step.action, step.target) == ("switchover", "pg3")


def test_a_destroy_makes_the_leader_wait_then_stop_last() -> None:
    """The race CI hit: the leader must not hand over to members that are stopping."""
    everyone = {"pg1", "pg2", "pg3"}
    waiting = plan_handover("pg1", three(), everyone)
    assert waiting.action == "wait"
    assert "pg2, pg3" in waiting.reason
    alone = [member("pg1", role="leader", state="running")]
    assert plan_handover("pg1", alone, everyone).action == "stop"


def test_a_late_announcement_changes_the_next_look() -> None:
    first = plan_handover("pg1", three(), {"pg1"})
    assert first.action == "switchover"
    second = plan_handover("pg1", three(), {"pg1", "pg2", "pg3"})
    assert second.action == "wait"


def test_unhealthy_or_nofailover_replicas_make_the_leader_wait() -> None:
    members = [member("pg1", role="leader", state="running"),
               member("pg2", state="starting"),
               member("pg3", nofailover=True)]
    step = plan_handover("pg1", members, {"pg1"})
    assert step.action == "wait"
    assert "pg2=starting" in step.reason


def test_primary_and_standby_leader_roles_count_as_leader() -> None:
    for role in ("primary", "master", "standby_leader"):
        members = three()
        members[0]["role"] = role
        assert plan_handover("pg1", members, {"pg1"}).action == "switchover"

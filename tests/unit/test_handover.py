"""The leader-removal planner: never stop a leader that a staying member could take over from."""

from __future__ import annotations

from components.handover import plan_handover
from components.succession import Member, SyncMode

OFF, ON = SyncMode.OFF, SyncMode.ON


def member(name: str, role: str = "replica", state: str = "streaming", lag: int | None = 0,
           nofailover: bool | None = None) -> Member:
    return Member(name, role, state, lag=lag, nofailover=nofailover)


def three(leader: str = "pg1") -> list[Member]:
    return [member(n, role="leader" if n == leader else "replica",
                   state="running" if n == leader else "streaming") for n in ("pg1", "pg2", "pg3")]


def test_a_replica_just_stops() -> None:
    assert plan_handover("pg2", three(), {"pg2"}, OFF).action == "stop"


def test_an_unknown_member_just_stops() -> None:
    assert plan_handover("pg9", three(), {"pg9"}, OFF).action == "stop"


def test_the_last_member_stops() -> None:
    step = plan_handover("pg1", [member("pg1", role="leader", state="running")], {"pg1"}, OFF)
    assert step.action == "stop"


def test_a_leader_hands_over_to_the_least_lagging_staying_replica() -> None:
    members = three()
    members[1] = member("pg2", lag=4096)
    step = plan_handover("pg1", members, {"pg1"}, OFF)
    assert (step.action, step.target) == ("switchover", "pg3")


def test_unknown_lag_comes_after_any_known_lag() -> None:
    members = three()
    members[1] = member("pg2", lag=None)
    members[2] = member("pg3", lag=1 << 20)
    step = plan_handover("pg1", members, {"pg1"}, OFF)
    assert step.target == "pg3"


def test_a_leaving_replica_is_never_the_target() -> None:
    step = plan_handover("pg1", three(), {"pg1", "pg2"}, OFF)
    assert (step.action, step.target) == ("switchover", "pg3")


def test_a_destroy_makes_the_leader_wait_then_stop_last() -> None:
    """The race CI hit: the leader must not hand over to members that are stopping."""
    everyone = {"pg1", "pg2", "pg3"}
    waiting = plan_handover("pg1", three(), everyone, OFF)
    assert waiting.action == "wait"
    assert "pg2, pg3" in waiting.reason
    alone = [member("pg1", role="leader", state="running")]
    assert plan_handover("pg1", alone, everyone, OFF).action == "stop"


def test_a_late_announcement_changes_the_next_look() -> None:
    first = plan_handover("pg1", three(), {"pg1"}, OFF)
    assert first.action == "switchover"
    second = plan_handover("pg1", three(), {"pg1", "pg2", "pg3"}, OFF)
    assert second.action == "wait"


def test_unhealthy_or_nofailover_replicas_make_the_leader_wait() -> None:
    members = [member("pg1", role="leader", state="running"),
               member("pg2", state="starting"),
               member("pg3", nofailover=True)]
    step = plan_handover("pg1", members, {"pg1"}, OFF)
    assert step.action == "wait"
    assert step.reason == ("no member can take over the leader role: pg1 holds the leader role; "
                           "pg2 is not streaming (state: starting); pg3 is tagged nofailover")


def test_primary_and_standby_leader_roles_count_as_leader() -> None:
    for role in ("primary", "master", "standby_leader"):
        members = three()
        members[0] = member("pg1", role=role, state="running")
        assert plan_handover("pg1", members, {"pg1"}, OFF).action == "switchover"


def test_synchronous_mode_hands_over_to_the_synchronous_standby_only() -> None:
    members = [member("pg1", role="leader", state="running"), member("pg2"),
               member("pg3", role="sync_standby", lag=8192)]
    step = plan_handover("pg1", members, {"pg1"}, ON)
    assert (step.action, step.target) == ("switchover", "pg3")


def test_synchronous_mode_waits_while_the_synchronous_standby_is_leaving() -> None:
    """Patroni names a staying replica synchronous once the leaving one stops; until then, wait."""
    members = [member("pg1", role="leader", state="running"), member("pg2"),
               member("pg3", role="sync_standby")]
    step = plan_handover("pg1", members, {"pg1", "pg3"}, ON)
    assert step.action == "wait"
    assert step.reason.endswith("pg2 is an asynchronous replica in synchronous mode; pg3 is being removed")

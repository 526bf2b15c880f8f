"""EtcdMember's membership lock (providers/etcd_member.py): the members of a new cluster start
together, every other membership change waits for the one before it. The provider's steps
on the host are replaced by recorders; the locking is the provider's own code."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from typing import Any

import pytest

from components.providers.etcd_member import EtcdMemberProvider, membership_lock


class Recorder(EtcdMemberProvider):
    """The provider with its host and cluster steps recording how many run at once."""

    def __init__(self, state: str, together: int = 0) -> None:
        self.state = state
        # `together` members must be in `_start` at the same time (a barrier; broken if not).
        self.barrier = threading.Barrier(together) if together else None
        self.met: list[bool] = []
        self.running: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.lock = threading.Lock()

    def _step(self, name: str) -> None:
        """One step on the host, taking a while; counts how many run at once, by step and in all."""
        with self.lock:
            for key in (name, "any"):
                self.running[key] = self.running.get(key, 0) + 1
                self.most[key] = max(self.most.get(key, 0), self.running[key])
        time.sleep(0.2)
        with self.lock:
            for key in (name, "any"):
                self.running[key] -= 1

    def ssh(self, props: dict[str, Any], connect_timeout: float = 15.0) -> Any:
        return nullcontext(None)

    def _join_plan(self, ssh: Any, props: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
        return f"{props['name']}=http://{props['address']}:2380", self.state, None

    def _start(self, ssh: Any, props: dict[str, Any], initial: str, state: str,
               keep_config: bool = False) -> None:
        if self.barrier is not None:
            try:
                self.barrier.wait(timeout=10)
                self.met.append(True)
            except threading.BrokenBarrierError:
                self.met.append(False)
        self._step("start")

    def _wait_started(self, ssh: Any, props: dict[str, Any]) -> None:
        self._step("wait started")

    def _wait_healthy(self, props: dict[str, Any], timeout: float = 180.0, ssh: Any = None) -> None:
        self._step("wait healthy")

    def _member_id(self, props: dict[str, Any], default: str = "") -> str:
        return default

    def _leave(self, props: dict[str, Any]) -> None:
        self._step("leave")


def _members(token: str) -> list[dict[str, Any]]:
    return [{"name": f"pg{i}", "address": f"10.0.0.{i}", "cluster_token": token, "peer_port": 2380,
             "client_port": 2379, "data_dir": "/var/lib/etcd", "connection": {"host": f"10.0.0.{i}"}}
            for i in (1, 2, 3)]


def _all_at_once(action: Any, members: list[dict[str, Any]]) -> None:
    threads = [threading.Thread(target=action, args=(m,)) for m in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_the_members_of_a_new_cluster_start_together() -> None:
    provider = Recorder("new", together=3)
    _all_at_once(provider.create, _members("pgha-founding"))
    assert provider.met == [True, True, True]


@pytest.mark.parametrize("operation", ["create", "delete"])
def test_joins_and_removals_go_one_at_a_time(operation: str) -> None:
    provider = Recorder("existing")
    if operation == "create":
        _all_at_once(provider.create, _members(f"pgha-{operation}"))
    else:
        _all_at_once(lambda m: provider.delete("id", m), _members(f"pgha-{operation}"))
    assert provider.most["any"] == 1


def test_one_lock_per_cluster() -> None:
    assert membership_lock("pgha-a") is membership_lock("pgha-a")
    assert membership_lock("pgha-a") is not membership_lock("pgha-b")

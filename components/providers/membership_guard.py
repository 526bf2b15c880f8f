"""MembershipGuard: refuses, at preview, an etcd membership change that is unsafe.

A stack's config only says what membership it wants; whether a change is safe
depends on what the cluster has now, which lives in the state. This resource
keeps the member list in its state, and its check compares old and new before
any host is touched: removing a majority of the members at once would lose
quorum, so it must be done one `pulumi up` at a time.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, ResourceProvider, UpdateResult


def unsafe_change(old: list[str], new: list[str]) -> str | None:
    removed = sorted(set(old) - set(new))
    if old and len(removed) * 2 >= len(old):
        return (f"removing {len(removed)} of {len(old)} etcd members at once ({', '.join(removed)}) "
                f"would leave the cluster without quorum; remove at most {(len(old) - 1) // 2} per "
                f"`pulumi up`")
    return None


class MembershipGuardProvider(ResourceProvider):
    serialize_as_secret_always = False

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        problem = unsafe_change(list(olds.get("etcd_members") or []), list(news.get("etcd_members") or []))
        failures = [CheckFailure("etcd_members", f"pgha:hosts: {problem}")] if problem else []
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}/membership", outs=props)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=news)

"""Leaf property changes of one step: old -> new, with secrets hidden.

The changes are computed from the step's stored and new inputs the way the provider compares
them: both sides read in today's shape (the provider's `upgrade`: a stack deployed by an older
pgha stores other shapes), the inputs the provider ignores (its CREATE_ONLY, OUTPUTS and
OBSERVED keys) and the pickled `__provider` left out. The engine's own `detailedDiff` compares
the raw stored shapes, so it only serves to tell which secrets changed: a secret (`[secret]`
in a preview, the serialised envelope in `stack export`) is never shown, only that it changed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from components.providers.base import HostProvider
from components.providers.database_role import DatabaseRoleProvider
from components.providers.dynamic_config import DynamicConfigProvider, LeaderProvider
from components.providers.etcd_member import EtcdMemberProvider
from components.providers.haproxy_config import HAProxyConfigProvider
from components.providers.patroni_cluster import PatroniClusterProvider
from components.providers.patroni_install import PatroniInstallProvider
from components.providers.patroni_node import PatroniNodeProvider
from review.preview import Step

SECRET_TEXT = "[secret]"
# Pulumi's serialised secret: {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", ...}
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # a value known only after `up`
MAX_TEXT = 160


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

_PROVIDERS: dict[str, type[HostProvider]] = {
    "EtcdMember": EtcdMemberProvider,
    "PatroniInstall": PatroniInstallProvider,
    "PatroniCluster": PatroniClusterProvider,
    "PatroniNode": PatroniNodeProvider,
    "HAProxyConfig": HAProxyConfigProvider,
    "DatabaseRole": DatabaseRoleProvider,
    "PatroniDynamicConfig": DynamicConfigProvider,
    "PatroniLeader": LeaderProvider,
}
# Inputs that restate others: `restart_required` is the restart-needing subset of
# dcs.postgresql.parameters, shown by the plan rather than twice in the table.
_DERIVED: dict[str, frozenset[str]] = {"PatroniDynamicConfig": frozenset({"restart_required"})}
# Every input of these is bookkeeping or create-only.
_NO_DIFF = frozenset({"PatroniBootstrap"})


def ignored_keys(kind: str) -> frozenset[str]:
    """Top-level inputs whose change alone does not make the provider act."""
    provider = _PROVIDERS.get(kind)
    keys: set[str] = set(_DERIVED.get(kind, ()))
    if provider is not None:
        keys |= provider.CREATE_ONLY | provider.OUTPUTS | set(provider.OBSERVED)
    return frozenset(keys)


def is_secret(value: Any) -> bool:
    if isinstance(value, str):
        return value == SECRET_TEXT
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A value as one line of plain text (a secret as `[secret]`, never its content)."""
    if value is MISSING:
        return ""
    if is_secret(value):
        return SECRET_TEXT
    if value == UNKNOWN:
        return "(known after up)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        return "null"
    if isinstance(value, str):
        out = " ".join(value.split())
    elif isinstance(value, dict):
        out = ", ".join(f"{k}={text(v, limit)}" for k, v in value.items() if not str(k).startswith("__"))
        out = "{" + out + "}"
    elif isinstance(value, list):
        out = "[" + ", ".join(text(v, limit) for v in value) + "]"
    else:
        out = json.dumps(value)
    return out if len(out) <= limit else out[: limit - 1] + "…"


@dataclass(frozen=True)
class Change:
    """One leaf: `path` went from `old` to `new` (MISSING when absent on that side)."""

    path: str
    old: Any = MISSING
    new: Any = MISSING
    secret: bool = False

    @property
    def top(self) -> str:
        return _top(self.path)

    @property
    def added(self) -> bool:
        return self.old is MISSING

    @property
    def removed(self) -> bool:
        return self.new is MISSING


@dataclass(frozen=True)
class StepChanges:
    changes: tuple[Change, ...] = ()
    # Secret leaves present on both sides: a preview cannot tell whether they changed.
    hidden_secrets: tuple[str, ...] = ()

    def under(self, top: str) -> list[Change]:
        return [c for c in self.changes if c.top == top]

    @property
    def tops(self) -> set[str]:
        return {c.top for c in self.changes}


@dataclass
class _Collector:
    changes: list[Change] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)

    def walk(self, path: str, old: Any, new: Any) -> None:
        if is_secret(old) or is_secret(new):
            if is_secret(old) and is_secret(new):
                self.hidden.append(path)
            else:
                self.changes.append(Change(path, old, new, secret=True))
            return
        if old == new:
            return
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new), key=str):
                if str(key).startswith("__"):
                    continue
                self.walk(_join(path, str(key)), old.get(key, MISSING), new.get(key, MISSING))
            return
        if isinstance(old, list) and isinstance(new, list):
            self._walk_list(path, old, new)
            return
        if {type(old), type(new)} == {list, dict} and all(_scalar(v) for v in [*_values(old), *_values(new)]):
            # One shape stored by an older pgha, the other today's (pg_hba lines, keyed now):
            # compare what matters, the lines.
            self._walk_list(path, _values(old), _values(new))
            return
        self.changes.append(Change(path, old, new))

    def _walk_list(self, path: str, old: list[Any], new: list[Any]) -> None:
        keyed_old, keyed_new = _by_name(old), _by_name(new)
        if keyed_old is not None and keyed_new is not None:
            # A list of named things (HAProxy servers): match by name, not position.
            for name in [*keyed_old, *(n for n in keyed_new if n not in keyed_old)]:
                self.walk(f"{path}[{name}]", keyed_old.get(name, MISSING), keyed_new.get(name, MISSING))
            return
        if all(_scalar(v) for v in [*old, *new]):
            # A list of lines (pg_hba, endpoints): what was added and removed, wherever it sits.
            before, after = Counter(map(_key, old)), Counter(map(_key, new))
            if before == after:
                self.changes.append(Change(f"{path} (order)", old, new))
                return
            gone, came = before - after, after - before
            if gone.total() == 1 and came.total() == 1:
                # One entry replaced by another (an address changed): one row, old → new.
                self.changes.append(Change(f"{path}[]", json.loads(next(iter(gone))),
                                           json.loads(next(iter(came)))))
                return
            for value in old:
                if gone[_key(value)] > 0:
                    gone[_key(value)] -= 1
                    self.changes.append(Change(f"{path}[]", value, MISSING))
            for value in new:
                if came[_key(value)] > 0:
                    came[_key(value)] -= 1
                    self.changes.append(Change(f"{path}[]", MISSING, value))
            return
        for i in range(max(len(old), len(new))):
            self.walk(f"{path}[{i}]", old[i] if i < len(old) else MISSING,
                      new[i] if i < len(new) else MISSING)


def _values(value: Any) -> list[Any]:
    return list(value.values()) if isinstance(value, dict) else list(value)


def _join(path: str, key: str) -> str:
    """Pulumi's property path syntax: `a.b`, or `a["key with spaces"]`."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list))


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _by_name(items: list[Any]) -> dict[str, Any] | None:
    if not items or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return None
    names = [i["name"] for i in items]
    return dict(zip(names, items, strict=True)) if len(set(names)) == len(names) else None


def _provider(kind: str) -> HostProvider | None:
    cls = _PROVIDERS.get(kind)
    return cls() if cls is not None else None


def normalized_inputs(kind: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs in today's shape: stored ones of an older pgha read through the provider's `upgrade`."""
    upgrade = getattr(_provider(kind), "upgrade", None)
    return upgrade(dict(inputs)) if upgrade is not None else dict(inputs)


def diff_inputs(kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> StepChanges:
    """Leaf changes between two sets of inputs, as the provider sees them: both sides read in
    today's shape (its `upgrade`), without the inputs it ignores, and a key it calls `same`
    (a pg_hba stored as a list by an older pgha) left out."""
    if kind in _NO_DIFF:
        return StepChanges()
    same = getattr(_provider(kind), "same", None)
    old, new = normalized_inputs(kind, old or {}), normalized_inputs(kind, new or {})
    skip = ignored_keys(kind)
    keys = [k for k in sorted(set(old) | set(new)) if k not in skip and not k.startswith("__")]
    collector = _Collector()
    for key in keys:
        both = key in old and key in new and not is_secret(old[key]) and not is_secret(new[key])
        if both and same is not None and same(key, old[key], new[key]):
            continue
        collector.walk(key, old.get(key, MISSING), new.get(key, MISSING))
    return StepChanges(changes=tuple(collector.changes), hidden_secrets=tuple(collector.hidden))


def drift(step: Step) -> list[Change]:
    """What the last refresh found out of line (a stopped service, a hand-edited file, another
    leader): the provider reports a change although no input changed, and `up` repairs it."""
    if step.old_inputs is None or step.new_inputs is None:
        return []
    provider = _provider(step.kind)
    # A dynamic provider's diff gets the stored outputs, which repeat the inputs.
    olds = {**step.old_inputs, **(step.old_outputs or {})}
    found = []
    if provider is not None:
        drifted = getattr(provider, "drifted", None)
        # Against what the stack declared when the refresh ran (the stored inputs), not the new
        # inputs: a refreshed value that differs only from the edit under review is no drift.
        declared = normalized_inputs(step.kind, step.old_inputs)
        keys = drifted(olds, declared) if drifted is not None else [
            k for k, want in provider.OBSERVED.items() if k in olds and olds[k] != want]
        for key in keys:
            seen = olds.get(key, MISSING)
            if isinstance(seen, (dict, list)):
                seen = "changed outside the stack"
            found.append(Change(f"{key} (refresh)", seen, provider.OBSERVED.get(key, "as declared")))
    if step.kind == "PatroniLeader":
        wanted, current = step.new_inputs.get("leader"), olds.get("current_leader")
        if wanted and current not in (None, wanted):
            found.append(Change("current_leader (refresh)", current, wanted))
    return found


def _top(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def step_changes(step: Step) -> StepChanges:
    """The leaf changes of an update or replace (nothing for a create or delete).

    Both sides of a secret read `[secret]`, so a secret is reported changed when the engine or
    the provider names it (detailedDiff/diffReasons), or, when nothing is named (an older
    provider), when an update has no other cause: no visible input change and no drift.
    """
    if step.old_inputs is None or step.new_inputs is None:
        return StepChanges()
    found = diff_inputs(step.kind, step.old_inputs, step.new_inputs)
    drifted = drift(step)
    named = {_top(p) for p in [*step.diff_reasons, *step.detailed_diff]}
    # Only a step whose changes nobody named: the engine's detailed diff, when present, is exact.
    unexplained = step.op in ("update", "replace") and not found.changes and not drifted and not named
    changed = [p for p in found.hidden_secrets if _top(p) in named or unexplained]
    secrets = tuple(Change(p, SECRET_TEXT, SECRET_TEXT, secret=True) for p in changed)
    hidden = tuple(p for p in found.hidden_secrets if p not in changed)
    return StepChanges(changes=found.changes + tuple(drifted) + secrets, hidden_secrets=hidden)

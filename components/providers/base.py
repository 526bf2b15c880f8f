"""What every pgha dynamic provider shares: SSH from inputs, and diffs from state.

Diffs compare the stored inputs with the new ones and never touch a host, so
a no-change preview opens no connection. Some inputs only matter when a thing
is first created (an etcd member's founding peers, Patroni's bootstrap
section); they are listed in CREATE_ONLY and ignored by diffs, and the
component also passes them in `ignore_changes`, so the engine shows no change
of them on an existing resource.

What a reviewer reads: when inputs changed, `diff` answers "unknown" and the
engine computes a property-level diff of the inputs itself, so `pulumi preview
--diff` shows only the changed leaves (old → new), never the unchanged rest.
A change seen only in what `refresh` read back (drift) answers "changed".
Stored inputs of older pgha versions are read through `upgrade` first
(components/state_upgrade.py), so an upgraded program sees no change where
there is none.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

from pulumi.dynamic import DiffResult, ResourceProvider

from components.transport.ssh import Ssh, SshTarget, describe
from components.transport.tls_client import client_tls

SECRET_INPUTS = ("secrets", "ssh_private_key", "tls_client")
# Inputs that are how pgha reaches a service, not what it sets up: a renewed client certificate
# is no change of the resource (the state keeps the one it has until an update of its own).
CREDENTIALS = frozenset({"tls_client"})


def integral(value: Any) -> Any:
    """Numbers reach providers as protobuf doubles (2380.0); ports must be ints again."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def _host_of(args: tuple[Any, ...]) -> str:
    for arg in args:
        if isinstance(arg, dict) and isinstance(arg.get("connection"), dict):
            return str(arg["connection"].get("host") or "")
    return ""


def _tls_client_of(args: tuple[Any, ...]) -> dict[str, Any] | None:
    for arg in reversed(args):
        if isinstance(arg, dict) and isinstance(arg.get("tls_client"), dict):
            return arg["tls_client"]
    return None


def _provider_method(method: Callable[..., Any]) -> Callable[..., Any]:
    """Numbers made integral again; an error that says nothing gets its host and its kind."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any) -> Any:
        args = tuple(integral(a) if isinstance(a, dict) else a for a in args)
        try:
            # pgha:tls: the resource's client identity for its https calls (the newest inputs);
            # a diff reads the state only and writes no key file.
            with client_tls(None if method.__name__ == "diff" else _tls_client_of(args)):
                return method(self, *args)
        except Exception as exc:
            if str(exc).strip():
                raise
            host = _host_of(args) or type(self).__name__
            raise RuntimeError(f"{host}: {method.__name__}: {describe(exc)}") from exc

    return wrapper


class HostProvider(ResourceProvider):
    # Providers capture nothing secret (secrets arrive as inputs), so the pickled
    # provider need not be encrypted on every preview (pulumi/pulumi#15538).
    serialize_as_secret_always = False

    CREATE_ONLY: ClassVar[frozenset[str]] = frozenset()
    REPLACE_ON: ClassVar[frozenset[str]] = frozenset()
    # Outputs a refresh may change to show drift; a value other than the
    # desired one here makes the next `up` repair the resource.
    OBSERVED: ClassVar[dict[str, Any]] = {}
    # Outputs that are not inputs: their absence from new inputs is no change.
    OUTPUTS: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("create", "update", "read", "delete", "diff"):
            if name in cls.__dict__:
                setattr(cls, name, _provider_method(cls.__dict__[name]))

    def ssh(self, props: dict[str, Any], connect_timeout: float = 15.0) -> Ssh:
        target = SshTarget.from_props(props["connection"], props.get("ssh_private_key"))
        return Ssh(target, connect_timeout=connect_timeout)

    def host_ssh(self, item: dict[str, Any], props: dict[str, Any]) -> Ssh:
        """SSH to one host of a cluster-wide resource's list (`item["connection"]`), with the
        stack's key from the resource's inputs."""
        return self.ssh({"connection": item["connection"], "ssh_private_key": props.get("ssh_private_key")})

    def upgrade(self, props: dict[str, Any]) -> dict[str, Any]:
        """Stored props of an older pgha in today's shape (see components/state_upgrade.py)."""
        return props

    def same(self, key: str, old: Any, new: Any) -> bool:
        """Whether one input is unchanged between the state and the program."""
        return bool(old == new)

    def changed_keys(self, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
        olds = self.upgrade(olds)
        keys = (set(olds) | set(news)) - self.CREATE_ONLY - set(self.OBSERVED) - self.OUTPUTS - CREDENTIALS
        keys = {k for k in keys if not k.startswith("__")}
        return sorted(k for k in keys if not self.same(k, olds.get(k), news.get(k)))

    def drifted(self, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
        """What the last refresh read back that differs from what `up` maintains."""
        return [k for k, want in self.OBSERVED.items() if k in olds and olds[k] != want]

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        refused = tls_switch_refused(olds, news)
        if refused:
            raise RuntimeError(refused)
        changed = self.changed_keys(olds, news)
        replaces = [k for k in changed if k in self.REPLACE_ON]
        if changed:
            # None: the engine diffs the inputs itself (respecting ignore_changes) and shows
            # a reviewer only the changed leaves.
            return DiffResult(changes=None, replaces=replaces, delete_before_replace=bool(replaces))
        return DiffResult(changes=bool(self.drifted(olds, news)), replaces=[],
                          stables=[k for k in news if not k.startswith("__")], delete_before_replace=False)


def tls_switch_refused(olds: dict[str, Any], news: dict[str, Any]) -> str:
    """Why a deployed service cannot switch between plaintext and TLS in this `up` ('' when it
    can, or it is no switch). A plaintext cluster moves to TLS (providers/tls_move.py); moving a
    cluster on TLS back to plaintext is not done: it would send the DCS and the REST API's
    credentials in clear again."""
    if "tls" not in olds and "tls" not in news:
        return ""
    if bool(olds.get("tls")) == bool(news.get("tls")) or news.get("tls"):
        return ""
    where = (olds.get("connection") or {}).get("host") or olds.get("name") or "this host"
    return (f"{where} runs with TLS and pgha:tls.enabled is false: pgha does not move a deployed "
            "cluster back to plaintext. Set pgha:tls.enabled: true")


def public(props: dict[str, Any]) -> dict[str, Any]:
    """Inputs as outputs; secret inputs are kept (marked secret by the resource)."""
    return {k: v for k, v in props.items() if not k.startswith("__")}

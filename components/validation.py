"""Primitive checks for stack config values.

Every problem is recorded against the full config key (``pgha:hosts[1].address``)
so a user reading the preview error knows exactly which line of the stack file
to fix; all problems are reported at once rather than one per run.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

NAMESPACE = "pgha"


class ConfigError(ValueError):
    """Raised before any resource is registered when the stack config is invalid."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid pgha stack configuration ({len(problems)} problem(s)):\n{lines}")


def key(path: str) -> str:
    return f"{NAMESPACE}:{path}"


class Problems:
    """Collects problems so that one preview shows all of them."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{key(path)}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def check_unknown_keys(
    problems: Problems, path: str, value: Mapping[str, Any], allowed: Iterable[str]
) -> None:
    """Reject keys the model does not know: a typo must not silently fall back to a default."""
    allowed = list(allowed)
    for name in value:
        if name not in allowed:
            hint = difflib.get_close_matches(name, allowed, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            where = f"{path}.{name}" if path else name
            problems.add(where, f"unknown key{suggestion}; allowed: {', '.join(sorted(allowed))}")


def as_mapping(problems: Problems, path: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(path, f"must be an object, got {type(value).__name__}")
        return {}
    return dict(value)


def as_list(problems: Problems, path: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(path, f"must be a list, got {type(value).__name__}")
        return []
    return value


def as_int(
    problems: Problems, path: str, value: Any, default: int, minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        else:
            problems.add(path, f"must be an integer, got {value!r}")
            return default
    if minimum is not None and value < minimum:
        problems.add(path, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        problems.add(path, f"must be at most {maximum}, got {value}")
    return value


def as_port(problems: Problems, path: str, value: Any, default: int) -> int:
    return as_int(problems, path, value, default, minimum=1, maximum=65535)


def as_bool(problems: Problems, path: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    problems.add(path, f"must be true or false, got {value!r}")
    return default


def as_str(
    problems: Problems, path: str, value: Any, default: str | None = None,
    pattern: str | None = None, what: str = "",
) -> str:
    if value is None:
        if default is None:
            problems.add(path, "is required")
            return ""
        return default
    if not isinstance(value, str) or not value.strip():
        problems.add(path, f"must be a non-empty string, got {value!r}")
        return default or ""
    if pattern and not re.fullmatch(pattern, value):
        problems.add(path, f"{value!r} is not a valid {what or 'value'}")
    return value


def as_address(problems: Problems, path: str, value: Any) -> str:
    text = as_str(problems, path, value)
    if not text:
        return text
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        problems.add(path, f"{text!r} is not an IPv4 address")
        return text
    if ip.version == 6:
        # URLs, etcd peer lists and haproxy.cfg would need [addr]:port everywhere.
        problems.add(path, f"{text!r} is IPv6; pgha supports IPv4 host addresses only for now")
    return str(ip)


def as_cidr(problems: Problems, path: str, value: Any) -> str:
    text = as_str(problems, path, value)
    if not text:
        return text
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as err:
        problems.add(path, f"{text!r} is not a network in CIDR notation ({err})")
        return text


NAME_RE = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
IDENT_RE = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
ABS_PATH_RE = r"/[^\0\n'\"]*"
# A DNS name: labels of letters, digits and '-', at least one letter (so not an IP address).
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DNS_NAME_RE = rf"(?=.*[A-Za-z]){_LABEL}(\.{_LABEL})*"

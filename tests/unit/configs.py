"""Raw configs shared by the unit tests: the lab stack file and small valid bases to mutate.

Each builder returns a fresh deep copy so a test can mutate it freely.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
LAB_STACK = ROOT / "lab" / "stack.yaml"
PREFIX = "pgha:"

PASSWORDS: dict[str, str] = {
    "superuserPassword": "su-Pw_1",
    "replicationPassword": "repl-Pw_2",
    "rewindPassword": "rewind-Pw_3",
    "restApiPassword": "api-Pw_4",
}
SECRET_NAMES = frozenset(PASSWORDS)


def lab_raw() -> dict[str, Any]:
    """The lab stack's config with the ``pgha:`` prefix stripped, as the loader takes it, with
    TLS off unless a test turns it on (as tests/cluster's lab_stack_config; the lab stack itself
    has it on: lab_stack_raw)."""
    raw = lab_stack_raw()
    raw.setdefault("tls", {"enabled": False})
    return raw


def lab_stack_raw() -> dict[str, Any]:
    """lab/stack.yaml's config with the ``pgha:`` prefix stripped, as it is."""
    doc = yaml.safe_load(LAB_STACK.read_text())
    return {k.removeprefix(PREFIX): v for k, v in doc["config"].items() if k.startswith(PREFIX)}


def base_raw() -> dict[str, Any]:
    """A valid config that stays valid with production: true (3 etcd, explicit secrets, no generation)."""
    return copy.deepcopy({
        "scope": "pgha-lab",
        "generatePasswords": False,
        **PASSWORDS,
        "ssh": {"user": "pgha", "privateKeyFile": "/var/lib/pgha-lab/id_ed25519"},
        "hosts": [
            {"name": "pg1", "address": "10.77.0.11", "roles": ["etcd", "patroni"]},
            {"name": "pg2", "address": "10.77.0.12", "roles": ["etcd", "patroni"]},
            {"name": "pg3", "address": "10.77.0.13", "roles": ["etcd", "patroni"]},
            {"name": "pg4", "address": "10.77.0.14", "roles": ["haproxy"]},
        ],
        "postgresql": {"parameters": {"shared_buffers": "128MB", "max_connections": 150}},
        "clientCidrs": ["10.77.0.0/24"],
        "roles": [{"name": "app", "options": ["CREATEDB"]}],
        "rolePasswords": {"app": "app-Pw_5"},
    })


def base_secret_keys() -> set[str]:
    """Every key of base_raw() that is given as a Pulumi secret."""
    return {*SECRET_NAMES, "rolePasswords"}


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _split(path: str) -> list[str | int]:
    return [int(index) if index else name for name, index in _TOKEN.findall(path)]


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b[1].c`` in a nested dict/list, creating missing mappings on the way.

    An index one past the end of a list appends, so ``roles[1]`` adds a second role.
    """
    *parents, last = _split(path)
    node: Any = raw
    for part in parents:
        if isinstance(part, str) and part not in node:
            node[part] = {}
        node = node[part]
    if isinstance(node, list) and last == len(node):
        node.append(value)
    else:
        node[last] = value


def del_path(raw: dict[str, Any], path: str) -> None:
    """Delete ``a.b[1].c`` from a nested dict/list."""
    *parents, last = _split(path)
    node: Any = raw
    for part in parents:
        node = node[part]
    del node[last]

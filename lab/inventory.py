"""The lab's inventory: what clients (tests, the Pulumi program) need to reach hosts.

Written to STATE/inventory.json by `up` and printed by `python -m lab inventory`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Host:
    """How to reach one lab host over SSH."""

    name: str
    address: str
    ssh_user: str
    ssh_port: int
    private_key: str
    host_public_key: str
    known_hosts: str


@dataclass(frozen=True)
class Inventory:
    """The whole lab; `hosts` keeps the order they were created in."""

    lab: str
    state_dir: str
    bridge: str
    cidr: str
    gateway: str
    ssh_user: str
    private_key: str
    public_key: str
    known_hosts: str
    image: str
    wheelhouse: str
    hosts: tuple[Host, ...]

    def to_json(self) -> str:
        d = asdict(self)
        d["hosts"] = [asdict(h) for h in self.hosts]
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Inventory:
        hosts = tuple(Host(**h) for h in d["hosts"])
        return cls(**{**d, "hosts": hosts})


def path(state: Path) -> Path:
    """Location of inventory.json in a state dir."""
    return state / "inventory.json"


def write(state: Path, inv: Inventory) -> None:
    """Atomic write, so a reader never sees half a file."""
    tmp = path(state).with_suffix(".tmp")
    tmp.write_text(inv.to_json())
    os.replace(tmp, path(state))


def read(state: Path) -> Inventory:
    """Load the inventory; FileNotFoundError when no lab is up."""
    return Inventory.from_dict(json.loads(path(state).read_text()))

"""The lab's private bridge and each host's link to it.

Hosts get no default route and the build machine adds no NAT or forwarding, so lab
traffic can only reach other lab hosts and the build machine's bridge address.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import config
from .proc import run


def veth_name(host: str) -> str:
    """Host-side veth that `systemd-nspawn --network-bridge` creates for a machine."""
    return f"vb-{host}"


def link_exists(name: str) -> bool:
    """True when a network interface of that name exists on the build machine."""
    return Path("/sys/class/net", name).exists()


def bridge_up() -> None:
    """Create the bridge with the gateway address (idempotent).

    STP off and forward delay 0: ports must forward as soon as a container starts.
    """
    br = config.BRIDGE
    if not link_exists(br):
        run(
            [
                "ip",
                "link",
                "add",
                br,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ]
        )
    addr = f"{config.GATEWAY}/{config.PREFIX_LEN}"
    shown = run(["ip", "-o", "-4", "addr", "show", "dev", br], capture=True).stdout
    if addr not in shown:
        run(["ip", "addr", "add", addr, "dev", br])
    run(["ip", "link", "set", br, "up"])


def bridge_down() -> None:
    """Delete the bridge (veths go away with their containers' network namespaces)."""
    if link_exists(config.BRIDGE):
        run(["ip", "link", "del", config.BRIDGE])


def remove_veths(hosts: list[str], timeout: float = 3.0) -> None:
    """Make sure the hosts' veths are gone.

    The kernel tears a dead container's network namespace (and so its veth) down
    asynchronously; wait a little, then delete what is left ourselves.
    """
    deadline = time.monotonic() + timeout
    left = [veth_name(h) for h in hosts]
    while left:
        left = [v for v in left if link_exists(v)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for v in left:
        run(["ip", "link", "del", v], check=False, capture=True)


def isolate(host: str) -> None:
    """Cut a host off: detach its veth from the bridge.

    Its own link stays up (carrier on), so inside nothing changes but every packet
    to or from it is lost, like a failed switch port; heal() restores it instantly.
    """
    run(["ip", "link", "set", veth_name(host), "nomaster"])


def heal(host: str) -> None:
    """Put a host's veth back on the bridge."""
    run(["ip", "link", "set", veth_name(host), "master", config.BRIDGE])
    run(["ip", "link", "set", veth_name(host), "up"])


def attached(host: str) -> bool:
    """True when the host's veth exists and is a port of the lab bridge."""
    master = Path("/sys/class/net", veth_name(host), "master")
    return master.exists() and master.resolve().name == config.BRIDGE

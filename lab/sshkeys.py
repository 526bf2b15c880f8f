"""SSH material: the lab's client key, per-host host keys, known_hosts, ssh argv.

Host keys are made on the build machine when a host is created (never shared from the
image) and listed in a known_hosts file, so clients can check host keys strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from . import config
from .proc import run


def make_key(path: Path, comment: str) -> str:
    """Make an ed25519 key pair at path (replacing an old one); return the pub line."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_name(path.name + ".pub").read_text().strip()


def write_known_hosts(path: Path, entries: Sequence[tuple[str, str, str]]) -> None:
    """known_hosts lines 'ADDRESS,NAME KEYTYPE KEY' for (name, address, pub line)."""
    lines = []
    for name, address, pub in entries:
        keytype, key = pub.split()[:2]
        lines.append(f"{address},{name} {keytype} {key}\n")
    path.write_text("".join(lines))


def client_options(*, key: Path, known_hosts: Path, connect_timeout: int = 5) -> list[str]:
    """ssh/scp options: ignore the caller's config and agent; strict host keys."""
    return [
        "-F", "/dev/null",
        "-i", str(key),
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=3",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip


def ssh_argv(
    address: str,
    *,
    user: str,
    key: Path,
    known_hosts: Path,
    port: int = config.SSH_PORT,
    tty: bool = False,
) -> list[str]:
    """`ssh ... USER@ADDRESS` (add '--', CMD to run a command)."""
    return [
        "ssh",
        *client_options(key=key, known_hosts=known_hosts),
        "-p", str(port),
        "-t" if tty else "-T",
        f"{user}@{address}",
    ]  # fmt: skip

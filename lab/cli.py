"""`python -m lab <command>`: the lab's command line, a thin layer over lab.api."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from . import config
from .api import Lab
from .image import ensure_image, image_dir
from .proc import log, require_root
from .wheelhouse import ensure_wheelhouse


def _up(args: argparse.Namespace) -> int:
    hosts = args.hosts
    spec: int | list[str] = int(hosts[0]) if len(hosts) == 1 and hosts[0].isdigit() else hosts
    lab = Lab.up(spec, timeout=args.timeout)
    for h in lab.hosts.values():
        print(f"{h.name}\t{h.address}")
    return 0


def _down(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    Lab.down()
    log(f"down in {time.monotonic() - t0:.1f} s")
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        lab = Lab.load()
    except RuntimeError as e:
        print(e)
        return 1
    rows = lab.status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':8} {'ADDRESS':12} {'STATE':8} {'LINK':9} {'INIT':>8} {'MEM(MiB)':>8}")
    for r in rows:
        state = "running" if r["running"] else "stopped"
        link = "attached" if r["attached"] else ("isolated" if r["running"] else "-")
        mem = int(r["memory_kib"]) / 1024  # type: ignore[call-overload]
        print(f"{r['name']!s:8} {r['address']!s:12} {state:8} {link:9} "
              f"{r['init_pid'] or '-'!s:>8} {mem:8.0f}")  # fmt: skip
    return 0


def _ssh(args: argparse.Namespace) -> int:
    lab = Lab.load()
    argv = lab.ssh_argv(args.name, " ".join(args.cmd) if args.cmd else None)  # like ssh
    os.execvp(argv[0], argv)  # the exit code (and the tty) pass straight through


def _crash(args: argparse.Namespace) -> int:
    Lab.load().crash(args.name)
    return 0


def _start(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    Lab.load().start(args.name, timeout=args.timeout)
    log(f"{args.name} running in {time.monotonic() - t0:.1f} s")
    return 0


def _isolate(args: argparse.Namespace) -> int:
    Lab.load().isolate(args.name)
    return 0


def _heal(args: argparse.Namespace) -> int:
    Lab.load().heal(args.name)
    return 0


def _inventory(args: argparse.Namespace) -> int:
    sys.stdout.write(Lab.load().inv.to_json())
    return 0


def _image(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    root = ensure_image()
    t1 = time.monotonic()
    wheels = ensure_wheelhouse()
    t2 = time.monotonic()
    print(json.dumps({"image": str(image_dir()), "rootfs": str(root), "wheelhouse": str(wheels)}))
    log(f"image ready in {t1 - t0:.1f} s, wheelhouse in {t2 - t1:.1f} s")
    return 0


def parser() -> argparse.ArgumentParser:
    """All subcommands; each maps to one Lab method."""
    p = argparse.ArgumentParser(
        prog="python -m lab",
        description="Real Debian 12 hosts (systemd-nspawn) on a private bridge.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="create a fresh lab: 'up 3' (pg1..pg3) or 'up NAME...'")
    up.add_argument("hosts", nargs="+", metavar="N|NAME")
    up.add_argument("--timeout", type=float, default=180.0, help="boot timeout per host (s)")
    up.set_defaults(func=_up)

    sub.add_parser("down", help="remove the lab entirely").set_defaults(func=_down)

    st = sub.add_parser("status", help="hosts, state, link, memory")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

    ssh = sub.add_parser("ssh", help=f"ssh to a host as {config.SSH_USER}")
    ssh.add_argument("name")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER, help="command (interactive when absent)")
    ssh.set_defaults(func=_ssh)

    for cmd, func, text in (
        ("crash", _crash, "SIGKILL the host's init, like pulling the power"),
        ("isolate", _isolate, "cut the host's network link"),
        ("heal", _heal, "restore the host's network link"),
    ):
        sp = sub.add_parser(cmd, help=text)
        sp.add_argument("name")
        sp.set_defaults(func=func)

    start = sub.add_parser("start", help="boot a crashed host again from its disk")
    start.add_argument("name")
    start.add_argument("--timeout", type=float, default=180.0)
    start.set_defaults(func=_start)

    sub.add_parser("inventory", help="JSON inventory on stdout").set_defaults(func=_inventory)
    sub.add_parser("image", help="build or reuse image and wheelhouse").set_defaults(func=_image)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; errors become one line on stderr and exit code 1."""
    args = parser().parse_args(argv)
    if args.command not in ("inventory", "status"):
        require_root()
    try:
        return int(args.func(args))
    except (RuntimeError, TimeoutError, KeyError, ValueError) as e:
        print(f"lab: error: {e}", file=sys.stderr)
        return 1

"""One lab host: its overlay, its systemd-nspawn container, its power switch.

Each host is an overlayfs (image as lower dir, a fresh upper dir) booted with
`systemd-nspawn -b --register=no --keep-unit` (no dbus/machined on the build machine).
We record two pids: the nspawn process, and the container's init (nspawn's child):
SIGKILL to the init ends the whole container at once, like pulling the power, while
killing nspawn alone would leave the container running.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import config, network
from .proc import (
    children,
    cmdline,
    kill,
    ns_pid,
    pid_alive,
    read_pid,
    remove_tree,
    run,
    umount_all,
    wait_dead,
)
from .sshkeys import make_key


@dataclass(frozen=True)
class HostDir:
    """Files of one host under STATE/hosts/NAME."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def nspawn_pid(self) -> Path:
        return self.root / "nspawn.pid"

    @property
    def init_pid(self) -> Path:
        return self.root / "init.pid"

    @property
    def console_log(self) -> Path:
        return self.root / "console.log"

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"


def host_dir(state: Path, name: str) -> HostDir:
    """Where a host's overlay, pid files and logs live."""
    return HostDir(state / "hosts" / name)


def _write(path: Path, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chown(path, uid, gid)
    path.chmod(mode)


def make_shared_dir(state: Path, image_root: Path) -> Path:
    """A fresh, empty shared directory owned by the image's postgres user (mode 0750)."""
    shared = state / config.SHARED_DIR
    remove_tree(shared)
    shared.mkdir(mode=0o750, parents=True)
    uid, gid, _home = _user_ids(image_root, "postgres")
    os.chown(shared, uid, gid)
    shared.chmod(0o750)
    return shared


def _user_ids(root: Path, user: str) -> tuple[int, int, str]:
    """uid, gid and home of a user, read from the image's /etc/passwd."""
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == user:
            return int(f[2]), int(f[3]), f[5]
    raise RuntimeError(f"user {user} missing from the image")


def _authorize(root: Path, user: str, pub: str) -> None:
    uid, gid, home = _user_ids(root, user)
    ssh_dir = root / home.lstrip("/") / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, uid, gid)
    _write(ssh_dir / "authorized_keys", pub + "\n", 0o600, uid, gid)


def create(
    state: Path,
    name: str,
    address: str,
    all_hosts: dict[str, str],
    image_root: Path,
    client_pub: str,
) -> str:
    """Make a fresh overlay for a host and write its own files; return its host pub key.

    Files are written through the mounted overlay (not into upper/ directly) so that
    directories copied up keep the image's owners and modes.
    """
    hd = host_dir(state, name)
    remove_tree(hd.root)
    for d in (hd.upper, hd.work, hd.merged):
        d.mkdir(parents=True)
    run(
        [
            "mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={image_root},upperdir={hd.upper},workdir={hd.work}",
            str(hd.merged),
        ]
    )  # fmt: skip
    m = hd.merged
    _write(m / "etc/hostname", name + "\n")
    _write(m / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    hosts += "".join(f"{addr}\t{n}\n" for n, addr in all_hosts.items())
    _write(m / "etc/hosts", hosts)
    _write(
        m / "etc/systemd/network/10-host0.network",
        "# Static lab address. Named 10-* to win over Debian's\n"
        "# /usr/lib/systemd/network/80-container-host0.network (DHCP).\n"
        "[Match]\nName=host0\n\n"
        f"[Network]\nAddress={address}/{config.PREFIX_LEN}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n",
    )
    pub = make_key(hd.host_key, f"root@{name}")
    key_dst = m / "etc/ssh/ssh_host_ed25519_key"
    _write(key_dst, hd.host_key.read_text(), 0o600)
    _write(key_dst.with_name(key_dst.name + ".pub"), pub + "\n", 0o644)
    _authorize(m, config.SSH_USER, client_pub)
    _authorize(m, "root", client_pub)
    return pub


def running_pids(state: Path, name: str) -> tuple[int | None, int | None]:
    """(nspawn pid, init pid), each None unless that process is alive."""
    hd = host_dir(state, name)
    npid, ipid = read_pid(hd.nspawn_pid), read_pid(hd.init_pid)
    return (
        npid if npid and pid_alive(npid) and _is_nspawn(npid) else None,
        ipid if ipid and pid_alive(ipid) and ns_pid(ipid)[-1:] == [1] else None,
    )


def is_running(state: Path, name: str) -> bool:
    """A host runs while its container's init does."""
    return running_pids(state, name)[1] is not None


def _is_nspawn(pid: int) -> bool:
    argv = cmdline(pid)
    return bool(argv) and argv[0].endswith("systemd-nspawn")


def _hierarchies() -> list[tuple[Path, bool]]:
    """The cgroup hierarchies systemd-nspawn uses, as (mount point, is name=systemd v1).

    This machine is "hybrid": cgroup2 at /sys/fs/cgroup/unified (nspawn takes its own
    cgroup from there) plus the v1 name=systemd hierarchy (the "compat" one). A pure
    cgroup v2 machine has just /sys/fs/cgroup.
    """
    root = Path("/sys/fs/cgroup")
    found = []
    if (root / "unified/cgroup.procs").exists():
        found.append((root / "unified", False))
    if (root / "systemd/cgroup.procs").exists():
        found.append((root / "systemd", True))
    if not found and (root / "cgroup.controllers").exists():
        found.append((root, False))
    return found


def host_cgroups(name: str) -> list[Path]:
    """The host's own cgroup in each hierarchy."""
    return [base / config.LAB_NAME / name for base, _ in _hierarchies()]


def _make_cgroups(name: str) -> list[Path]:
    """Fresh per-host cgroups; nspawn expects payload/ and supervisor/ in the compat one."""
    made = []
    for base, compat in _hierarchies():
        cg = base / config.LAB_NAME / name
        remove_cgroup(cg)  # what a crashed container's systemd left
        cg.mkdir(parents=True, exist_ok=True)
        if compat:
            for sub in ("payload", "supervisor"):
                (cg / sub).mkdir(exist_ok=True)
        made.append(cg)
    return made


def remove_cgroup(cg: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup subtree, deepest first.

    Retries for a while: after a container's init is killed, the kernel takes a moment
    to end the rest of its processes, and a cgroup with processes cannot be removed.
    """
    deadline = time.monotonic() + timeout
    while cg.is_dir():
        for dirpath, _dirs, _files in os.walk(cg, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        if not cg.is_dir() or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def remove_lab_cgroups() -> None:
    """Drop every lab cgroup (at `down`)."""
    for base, _ in _hierarchies():
        remove_cgroup(base / config.LAB_NAME)


def boot(state: Path, name: str) -> tuple[int, int]:
    """Start the container in the background and record its two pids."""
    hd = host_dir(state, name)
    if is_running(state, name):
        raise RuntimeError(f"{name} is already running")
    if not hd.merged.is_dir() or not any(hd.merged.iterdir()):
        raise RuntimeError(f"{name} has no mounted overlay at {hd.merged}")
    argv = [
        "systemd-nspawn",
        "--quiet",
        "--boot",
        "--register=no",  # no machined/dbus on the build machine
        "--keep-unit",
        f"--directory={hd.merged}",
        f"--machine={name}",
        f"--network-bridge={config.BRIDGE}",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]
    shared = state / config.SHARED_DIR
    if shared.is_dir():  # the lab's shared storage, the same directory in every host
        argv.append(f"--bind={shared}:{config.SHARED_MOUNT}")
    # Enter the host's own cgroups, then exec nspawn (same pid), which (--keep-unit) puts
    # the container in CGROUP/payload. Otherwise every container shares /payload, and
    # their systemds create and remove each other's unit cgroups ("degraded" boots).
    procs = [str(cg / "cgroup.procs") for cg in _make_cgroups(name)]
    enter = "".join(f'echo $$ > "${i + 1}" && ' for i in range(len(procs)))
    wrapper = ["/bin/sh", "-c", f'{enter}shift {len(procs)} && exec "$@"', "sh", *procs]
    with hd.console_log.open("ab") as out:
        proc = subprocess.Popen(
            [*wrapper, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the CLI and ^C in its terminal
        )
    hd.nspawn_pid.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for child in children(proc.pid):
            if ns_pid(child)[-1:] == [1]:
                hd.init_pid.write_text(f"{child}\n")
                return proc.pid, child
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    kill(proc.pid)
    raise RuntimeError(f"{name}: container did not start; see {hd.console_log}:\n{_tail(hd)}")


def _tail(hd: HostDir, n: int = 30) -> str:
    try:
        return "\n".join(hd.console_log.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def power_off(state: Path, name: str, timeout: float = 10.0) -> None:
    """SIGKILL the container's init (a crash), then wait for nspawn to exit.

    The overlay stays mounted so that start() boots the same disk again. Writes the
    container had not synced survive (same page cache), unlike a real power loss.
    """
    hd = host_dir(state, name)
    npid, ipid = running_pids(state, name)
    if ipid is None and npid is not None:
        ipid = next((c for c in children(npid) if ns_pid(c)[-1:] == [1]), None)
    if ipid is not None:
        kill(ipid)
        if not wait_dead(ipid, timeout):
            raise RuntimeError(f"{name}: init {ipid} survived SIGKILL")
    if npid is not None and not wait_dead(npid, timeout):
        kill(npid)
        wait_dead(npid, timeout)
    hd.init_pid.unlink(missing_ok=True)
    hd.nspawn_pid.unlink(missing_ok=True)
    for cg in host_cgroups(name):
        remove_cgroup(cg)
    # nspawn's veth dies with the container's netns; wait so start() can reuse the name
    deadline = time.monotonic() + timeout
    while network.link_exists(network.veth_name(name)) and time.monotonic() < deadline:
        time.sleep(0.02)


def destroy(state: Path, name: str) -> None:
    """Power off, unmount and delete a host."""
    power_off(state, name)
    remove_tree(host_dir(state, name).root)


def ssh_banner(address: str, port: int, timeout: float = 0.5) -> bool:
    """Cheap readiness probe before paying for a full ssh handshake.

    Reads sshd's banner and answers with ours before closing, so sshd does not log an
    error for a client that vanished before identifying itself.
    """
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            if not s.recv(256).startswith(b"SSH-"):
                return False
            s.sendall(b"SSH-2.0-pgha-lab-probe\r\n")
            return True
    except OSError:
        return False


def kill_strays(state: Path) -> list[int]:
    """Kill containers a killed earlier run left behind, found by their root directory.

    Finds nspawn processes whose --directory is under the state dir, and container inits
    whose root overlay is there (an init survives its nspawn being killed): SIGKILL.
    """
    prefix = str(state.resolve()) + "/"
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        if not pid_alive(pid):
            continue
        argv = cmdline(pid)
        stray = (
            bool(argv)
            and argv[0].endswith("systemd-nspawn")
            and any(a.startswith("--directory=" + prefix) for a in argv)
        )
        if not stray and ns_pid(pid)[-1:] == [1] and len(ns_pid(pid)) > 1:
            stray = _root_upper(pid).startswith(prefix)
        if stray:
            for child in children(pid):
                kill(child)
            kill(pid)
            killed.append(pid)
    for pid in killed:
        wait_dead(pid, 10)
    return killed


def _root_upper(pid: int) -> str:
    """upperdir of the overlay a process has as its root ('' when none).

    /proc/PID/root reads as "/" for a container init, so look at its mount table.
    """
    try:
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
            f = line.split()
            if f[4] == "/" and "overlay" in f[f.index("-") + 1 :]:
                for opt in f[-1].split(","):
                    if opt.startswith("upperdir="):
                        return opt.removeprefix("upperdir=")
    except (OSError, ValueError, IndexError):
        pass
    return ""


def memory_kib(init_pid: int) -> int:
    """Proportional set size of all processes in the container's pid namespace."""
    try:
        ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return 0
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            for line in Path(f"/proc/{entry}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def unmount(state: Path, name: str) -> None:
    """Unmount a host's overlay (after it is powered off)."""
    umount_all(host_dir(state, name).root)

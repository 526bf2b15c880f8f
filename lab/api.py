"""The Python API: Lab.up(3), Lab.load(), lab.ssh(), lab.crash(), Lab.down()."""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from . import config, hosts, inventory, network
from .image import ensure_image
from .inventory import Host, Inventory
from .proc import log, remove_tree, require_root, require_tools, run, umount_all
from .sshkeys import client_options, make_key, ssh_argv, write_known_hosts
from .wheelhouse import ensure_wheelhouse

BOOT_TIMEOUT = 180.0
_STATE_FILES = ("inventory.json", "inventory.tmp", "known_hosts", "id_ed25519", "id_ed25519.pub")


@contextmanager
def _locked(state: Path) -> Iterator[None]:
    """One up/down/start at a time (the bridge and the addresses are global)."""
    state.mkdir(parents=True, exist_ok=True)
    with open(state / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _clean(state: Path, *, quiet: bool = False) -> None:
    """Remove what a lab (or a killed run) left: processes, mounts, bridge, files."""
    killed = hosts.kill_strays(state)
    if killed and not quiet:
        log(f"cleaned up a previous lab: killed {len(killed)} container process(es)")
    hosts_root = state / "hosts"
    names = [p.name for p in hosts_root.iterdir()] if hosts_root.exists() else []
    if hosts_root.exists():
        umount_all(hosts_root)
    network.bridge_down()
    network.remove_veths(names)
    hosts.remove_lab_cgroups()
    remove_tree(hosts_root)
    remove_tree(state / config.SHARED_DIR)
    for name in _STATE_FILES:  # only our own files: PGHA_LAB_DIR may name a shared dir
        (state / name).unlink(missing_ok=True)


def host_names(spec: int | Sequence[str]) -> list[str]:
    """`3` -> pg1..pg3; a list of names is kept as given."""
    if isinstance(spec, int):
        if not 1 <= spec <= 89:
            raise ValueError("host count must be 1..89")
        return [f"pg{i}" for i in range(1, spec + 1)]
    return list(spec)


class Lab:
    """A running lab, loaded from its inventory."""

    def __init__(self, inv: Inventory) -> None:
        self.inv = inv
        self.state_dir = Path(inv.state_dir)
        self.hosts: dict[str, Host] = {h.name: h for h in inv.hosts}

    # -- life cycle -------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: Path | None = None) -> Lab:
        """The lab that `up` created; RuntimeError when none is up."""
        state = state_dir or config.state_dir()
        try:
            return cls(inventory.read(state))
        except FileNotFoundError:
            raise RuntimeError(f"no lab is up (no {inventory.path(state)})") from None

    @classmethod
    def up(
        cls,
        spec: int | Sequence[str] = 3,
        *,
        state_dir: Path | None = None,
        timeout: float = BOOT_TIMEOUT,
    ) -> Lab:
        """Clean up any previous lab, create fresh hosts, boot them in parallel, and
        return once each answers SSH with `systemctl is-system-running` = running."""
        require_root()
        require_tools("systemd-nspawn", "ip", "ssh", "ssh-keygen")
        t0 = time.monotonic()
        names = host_names(spec)
        addresses = config.address_for(names)
        state = (state_dir or config.state_dir()).resolve()
        image_root = ensure_image()
        wheels = ensure_wheelhouse()
        with _locked(state):
            _clean(state)
            key = state / "id_ed25519"
            client_pub = make_key(key, f"{config.LAB_NAME}@{os.uname().nodename}")
            network.bridge_up()
            hosts.make_shared_dir(state, image_root)
            host_pubs = {
                n: hosts.create(state, n, addresses[n], addresses, image_root, client_pub) for n in names
            }
            known = state / "known_hosts"
            write_known_hosts(known, [(n, addresses[n], host_pubs[n]) for n in names])
            inv = Inventory(
                lab=config.LAB_NAME,
                state_dir=str(state),
                bridge=config.BRIDGE,
                cidr=config.CIDR,
                gateway=config.GATEWAY,
                ssh_user=config.SSH_USER,
                private_key=str(key),
                public_key=client_pub,
                known_hosts=str(known),
                image=str(image_root),
                wheelhouse=str(wheels),
                hosts=tuple(
                    Host(
                        name=n,
                        address=addresses[n],
                        ssh_user=config.SSH_USER,
                        ssh_port=config.SSH_PORT,
                        private_key=str(key),
                        host_public_key=host_pubs[n],
                        known_hosts=str(known),
                    )
                    for n in names
                ),
            )
            inventory.write(state, inv)
            lab = cls(inv)
            t1 = time.monotonic()
            for n in names:
                hosts.boot(state, n)
            with ThreadPoolExecutor(max_workers=len(names)) as pool:
                list(pool.map(lambda n: lab.wait_ready(n, timeout), names))
        log(
            f"up: {len(names)} host(s) running in {time.monotonic() - t0:.1f} s "
            f"(boot {time.monotonic() - t1:.1f} s)"
        )
        return lab

    @classmethod
    def down(cls, state_dir: Path | None = None) -> None:
        """Kill every container, unmount, delete overlays, keys and the bridge."""
        require_root()
        state = (state_dir or config.state_dir()).resolve()
        if not state.exists() and not network.link_exists(config.BRIDGE):
            return
        with _locked(state):
            _clean(state, quiet=True)

    # -- one host ---------------------------------------------------------------------

    def _host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no lab host {name!r}; hosts: {', '.join(self.hosts)}") from None

    def ssh_argv(
        self,
        name: str,
        cmd: str | Sequence[str] | None = None,
        *,
        user: str | None = None,
    ) -> list[str]:
        """Full ssh command line for a host (with a tty when cmd is None)."""
        h = self._host(name)
        argv = ssh_argv(
            h.address,
            user=user or h.ssh_user,
            key=Path(h.private_key),
            known_hosts=Path(h.known_hosts),
            port=h.ssh_port,
            tty=cmd is None,
        )
        if cmd is not None:
            argv += ["--", cmd if isinstance(cmd, str) else shlex.join(cmd)]
        return argv

    def ssh(
        self,
        name: str,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60.0,
        user: str | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a host as the lab user (sudo works without password).

        A string is passed to the remote shell as is; a list is shell-quoted first.
        Output is captured as text; check=True raises CalledProcessError on non-zero.
        """
        return subprocess.run(
            self.ssh_argv(name, cmd, user=user),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def copy_to(self, name: str, src: Path | str, dest: str, *, user: str | None = None) -> None:
        """Copy a local file or directory to a host with scp (over SFTP)."""
        h = self._host(name)
        opts = client_options(key=Path(h.private_key), known_hosts=Path(h.known_hosts))
        target = f"{user or h.ssh_user}@{h.address}:{dest}"
        run(
            ["scp", "-q", "-r", "-P", str(h.ssh_port), *opts, str(src), target],
            capture=True,
        )

    def is_running(self, name: str) -> bool:
        """True while the host's container is up (its init process lives)."""
        self._host(name)
        return hosts.is_running(self.state_dir, name)

    def wait_ready(self, name: str, timeout: float = BOOT_TIMEOUT) -> None:
        """Wait until the host answers SSH and systemd reports `running`.

        Raises with the failed units (or the console log) when it ends up degraded
        or does not come up in time.
        """
        h = self._host(name)
        deadline = time.monotonic() + timeout
        while not hosts.ssh_banner(h.address, h.ssh_port):
            if not hosts.is_running(self.state_dir, name):
                raise RuntimeError(f"{name}: container exited during boot\n{self._console(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: no ssh after {timeout:.0f} s\n{self._console(name)}")
            time.sleep(0.1)
        while True:
            left = max(deadline - time.monotonic(), 1.0)
            try:
                res = self.ssh(
                    name,
                    "systemctl is-system-running --wait",
                    check=False,
                    timeout=left,
                )
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"{name}: boot did not finish in {timeout:.0f} s") from None
            state = res.stdout.strip()
            if state == "running":
                return
            if state == "degraded":
                failed = self.ssh(name, "systemctl --failed --plain --no-legend", check=False)
                raise RuntimeError(f"{name}: system degraded; failed units:\n{failed.stdout}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: state {state!r} {res.stderr.strip()}")
            time.sleep(0.2)  # ssh not accepting yet (255) or still starting

    def _console(self, name: str) -> str:
        log_path = hosts.host_dir(self.state_dir, name).console_log
        try:
            return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        except FileNotFoundError:
            return ""

    def crash(self, name: str) -> None:
        """Pull the power: SIGKILL the container's init. Its disk (overlay) is kept."""
        self._host(name)
        hosts.power_off(self.state_dir, name)

    def start(self, name: str, *, wait: bool = True, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot a stopped host again from its existing overlay (data persists).

        It comes back attached to the bridge, even if it was isolated before.
        """
        self._host(name)
        with _locked(self.state_dir):
            if not hosts.is_running(self.state_dir, name):
                hosts.power_off(self.state_dir, name)  # reap a half-dead nspawn, if any
                hosts.boot(self.state_dir, name)
        if wait:
            self.wait_ready(name, timeout)

    def reimage(self, names: Sequence[str], *, timeout: float = BOOT_TIMEOUT) -> None:
        """Re-create some hosts from the image and boot them, the others left running.

        What re-imaging a machine leaves: its power cut, a fresh disk (nothing written since
        the image), new SSH host keys (known_hosts and the inventory updated), the same
        name and address.
        """
        for name in names:
            self._host(name)
        state = self.state_dir
        addresses = {h.name: h.address for h in self.inv.hosts}
        with _locked(state):
            fresh: dict[str, str] = {}
            for name in names:
                hosts.power_off(state, name)
                hosts.unmount(state, name)
                fresh[name] = hosts.create(state, name, addresses[name], addresses, Path(self.inv.image),
                                           self.inv.public_key)
            inv = replace(self.inv, hosts=tuple(
                replace(h, host_public_key=fresh.get(h.name, h.host_public_key)) for h in self.inv.hosts))
            write_known_hosts(Path(inv.known_hosts),
                              [(h.name, h.address, h.host_public_key) for h in inv.hosts])
            inventory.write(state, inv)
            self.inv, self.hosts = inv, {h.name: h for h in inv.hosts}
            for name in names:
                hosts.boot(state, name)
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            list(pool.map(lambda n: self.wait_ready(n, timeout), names))
        log(f"reimage: {', '.join(names)} re-created from the image and running")

    def isolate(self, name: str) -> None:
        """Cut the host's network link (detach its veth from the bridge)."""
        self._host(name)
        network.isolate(name)

    def heal(self, name: str) -> None:
        """Restore the host's network link."""
        self._host(name)
        network.heal(name)

    def status(self) -> list[dict[str, object]]:
        """Per host: running or not, attached to the bridge, pids, memory (PSS, KiB)."""
        out = []
        for name, h in self.hosts.items():
            npid, ipid = hosts.running_pids(self.state_dir, name)
            out.append(
                {
                    "name": name,
                    "address": h.address,
                    "running": ipid is not None,
                    "attached": network.attached(name),
                    "nspawn_pid": npid,
                    "init_pid": ipid,
                    "memory_kib": hosts.memory_kib(ipid) if ipid else 0,
                }
            )
        return out

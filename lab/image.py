"""Build (or reuse) the Debian 12 root filesystem every lab host boots from.

The image is cached outside the checkout under a hash of its recipe (suite, mirror,
package list, masked units and this file's own source), built in a temp dir and
renamed into place only when complete, so a killed build is never reused.
Everything per host (hostname, keys, addresses) is added later by hosts.py, on an
overlay, so it does not change the hash.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import IO

from . import config
from .proc import log, remove_tree, require_tools

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

# Installed with apt in the chroot (policy-rc.d forbids starting services meanwhile).
# --no-install-recommends keeps the image small and its contents explicit; the few
# recommends that matter on a real host are listed by name.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "openssh-sftp-server",
    "iproute2",
    "sudo",
    "python3",
    "python3-venv",
    "postgresql-15",
    "postgresql-client-15",
    "etcd-server",
    "etcd-client",
    "haproxy",
    "pgbackrest",
    "curl",
    "ca-certificates",
    "procps",
    "less",
    "iputils-ping",
    "locales",
    "logrotate",
)

# Units that cannot work in an nspawn container and would leave the system "degraded".
# None needed with Debian 12's systemd 252 under systemd-nspawn 252: units that cannot
# work in a container skip themselves (ConditionVirtualization=!container), and the
# timers' services (apt-daily, e2scrub_all, fstrim, logrotate...) end cleanly when run.
# Boot checks `systemctl is-system-running` == running and lists failed units otherwise.
MASKED_UNITS: tuple[str, ...] = ()

# Runs inside the image after the packages are in: the host-independent setup.
_CONFIGURE = r"""
set -eu
systemctl enable systemd-networkd.service ssh.service
for u in {masked}; do systemctl mask "$u"; done
id -u {user} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {user}
usermod -p '*' {user}
printf '%s\n' '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{user}
chmod 0440 /etc/sudoers.d/{user}
visudo -cq
cat > /etc/ssh/sshd_config.d/pgha-lab.conf <<'CONF'
# Lab hosts: key-only logins; each host gets its own ed25519 host key when created.
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
CONF
rm -f /etc/ssh/ssh_host_*
printf 'LANG=C.UTF-8\n' > /etc/default/locale
printf 'pgha-image\n' > /etc/hostname
printf '# lab hosts have no DNS: names come from /etc/hosts\n' > /etc/resolv.conf
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /tmp/* /var/tmp/*
rm -rf /var/log/*.log /var/log/apt/*
"""


def recipe() -> dict[str, object]:
    """Everything that decides the image's contents, hashed into its cache key."""
    return {
        "suite": SUITE,
        "mirror": MIRROR,
        "security_mirror": SECURITY_MIRROR,
        "packages": list(PACKAGES),
        "masked": list(MASKED_UNITS),
        "user": config.SSH_USER,
        "source_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }


def image_hash() -> str:
    """Short stable hash of the recipe."""
    blob = json.dumps(recipe(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def image_dir() -> Path:
    """Where the finished image lives (its root filesystem is rootfs/ inside)."""
    return config.cache_dir() / f"image-{image_hash()}"


def rootfs() -> Path:
    """The lower dir of every host's overlay."""
    return image_dir() / "rootfs"


def in_root(root: Path, script: str, logf: Path) -> None:
    """Run a shell script inside the tree with systemd-nspawn (not booted).

    nspawn rather than chroot: its /proc, /dev and /sys mounts live in a private mount
    namespace, so a killed build cannot leave host mounts inside the temp dir.
    It shares the build machine's network, which apt needs to reach the Debian mirror.
    """
    with logf.open("a") as out:
        out.write(f"\n### in_root\n{script}\n")
        out.flush()
        res = run_logged(
            [
                "systemd-nspawn",
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--resolv-conf=copy-host",
                "--timezone=off",
                "--link-journal=no",
                "-E",
                "DEBIAN_FRONTEND=noninteractive",
                "-E",
                "LC_ALL=C.UTF-8",
                "-D",
                str(root),
                "/bin/sh",
                "-c",
                script,
            ],
            out,
        )
    if res != 0:
        raise RuntimeError(f"image step failed ({res}); see {logf}:\n{_tail(logf)}")


def run_logged(cmd: list[str], out: IO[str]) -> int:
    """Run with output appended to the build log (apt is too chatty for a terminal)."""
    res = subprocess.run(cmd, check=False, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return res.returncode


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _build(tmp: Path) -> None:
    """debootstrap minbase, then apt-get the packages, keeping services stopped."""
    root = tmp / "rootfs"
    logf = tmp / "build.log"
    t0 = time.monotonic()
    with logf.open("a") as out:
        rc = run_logged(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR], out)
    if rc != 0:
        raise RuntimeError(f"debootstrap failed ({rc}); see {logf}:\n{_tail(logf)}")
    log(f"image: debootstrap done in {time.monotonic() - t0:.0f} s")

    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# lab image build: start no services while installing\nexit 101\n")
    policy.chmod(0o755)
    (root / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb {SECURITY_MIRROR} {SUITE}-security main\n"
    )
    apt = "apt-get -y -q -o Acquire::Check-Valid-Until=false -o Acquire::Languages=none"
    t1 = time.monotonic()
    in_root(
        root,
        f"set -e; {apt} update; {apt} dist-upgrade; "
        f"{apt} install --no-install-recommends {' '.join(PACKAGES)}",
        logf,
    )
    log(f"image: packages installed in {time.monotonic() - t1:.0f} s")
    in_root(
        root,
        _CONFIGURE.format(masked=" ".join(MASKED_UNITS), user=config.SSH_USER),
        logf,
    )
    policy.unlink()
    (tmp / "recipe.json").write_text(json.dumps(recipe(), indent=2, sort_keys=True) + "\n")


def ensure_image() -> Path:
    """Return the cached image's rootfs, building it first when missing."""
    final = image_dir()
    if (final / "rootfs").is_dir():
        return final / "rootfs"
    require_tools("debootstrap", "systemd-nspawn")
    cache = config.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".image.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # a concurrent build finishes first, then we reuse it
        if (final / "rootfs").is_dir():
            return final / "rootfs"
        for stale in cache.glob(".tmp-image-*"):  # leftovers of killed builds: we hold the lock
            log(f"image: removing unfinished build {stale}")
            remove_tree(stale)
        tmp = cache / f".tmp-image-{image_hash()}-{os.getpid()}"
        tmp.mkdir()
        log(f"image: building {final.name} (log: {tmp}/build.log) ...")
        t0 = time.monotonic()
        try:
            _build(tmp)
        except BaseException:
            log(f"image: build failed; partial tree kept for debugging at {tmp}")
            raise
        os.rename(tmp, final)
        log(f"image: built in {time.monotonic() - t0:.0f} s")
        prune(keep=final)
    return final / "rootfs"


def prune(keep: Path, spare: int = 1) -> None:
    """Delete older images (620 MB each), keeping `spare` recent ones and any in use."""
    in_use = Path("/proc/self/mountinfo").read_text()
    old = sorted(
        (p for p in keep.parent.glob("image-*") if p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for p in old[spare:]:
        if f"lowerdir={p}/rootfs" not in in_use:
            log(f"image: pruning old {p.name}")
            remove_tree(p)

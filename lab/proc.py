"""Process, mount and command helpers: how the lab touches the build machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

VERBOSE = bool(os.environ.get("PGHA_LAB_VERBOSE"))


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout stays machine-readable (JSON)."""
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    capture: bool = False,
    input: str | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output, to debug with."""
    if VERBOSE:
        log("+ " + " ".join(cmd))
    res = subprocess.run(
        list(cmd),
        check=False,
        text=True,
        input=input,
        capture_output=capture,
        timeout=timeout,
        env=env,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        detail = ((res.stderr or "") + (res.stdout or "")).strip()[-4000:] if capture else ""
        raise RuntimeError(f"command failed ({res.returncode}): {' '.join(cmd)}\n{detail}")
    return res


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True for a live process; zombies count as dead (PID 1 here never reaps them)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    """Direct children of pid, found by scanning /proc (no psutil: stdlib only)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and fields[1] == str(pid) and fields[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def cmdline(pid: int) -> list[str]:
    """argv of a process, empty when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def ns_pid(pid: int) -> list[int]:
    """The NSpid line: pid as seen in each nested pid namespace (last is innermost)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return []


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a pid, ignoring one that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def wait_dead(pid: int, timeout: float) -> bool:
    """Poll until pid is gone (or a zombie); also reaps it when it is our own child."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def read_pid(path: Path) -> int | None:
    """Pid from a pid file, None when missing or garbage."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below path, deepest first, to unmount them in order."""
    root = str(path.resolve()) if path.exists() else str(path)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4].encode().decode("unicode_escape")
        if mnt == root or mnt.startswith(root.rstrip("/") + "/"):
            found.append(Path(mnt))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def umount_all(path: Path) -> None:
    """Unmount everything at or below path; lazily as a last resort for busy ones."""
    for mnt in mounts_under(path):
        if run(["umount", str(mnt)], check=False, capture=True).returncode != 0:
            run(["umount", "-l", str(mnt)], check=False, capture=True)
    left = mounts_under(path)
    if left:
        raise RuntimeError(f"still mounted: {left}")


def remove_tree(path: Path) -> None:
    """Delete a tree that may hold mounts, never crossing into other filesystems."""
    if not path.exists():
        return
    umount_all(path)
    run(["rm", "-rf", "--one-file-system", str(path)])


def require_root() -> None:
    """Mounts, bridges and containers all need root; fail early with a clear message."""
    if os.geteuid() != 0:
        raise SystemExit("lab: must run as root (mounts, bridge, systemd-nspawn)")


def require_tools(*tools: str) -> None:
    """Point at scripts/lab-deps instead of failing deep inside a build."""
    missing = [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        raise SystemExit(f"lab: missing {', '.join(missing)}; run scripts/lab-deps")

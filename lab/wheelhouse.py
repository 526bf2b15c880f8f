"""Build (or reuse) the wheelhouse lab hosts install Patroni from.

Lab hosts have no route to PyPI (and pip in a chroot fails TLS), exactly like an
air-gapped site: Patroni is installed from a directory of wheels copied to the host.
The wheels are built here with a CPython of the image's minor version (3.11), so that
binary wheels (psycopg2-binary, psutil, PyYAML) match the image's python3.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import config
from .proc import log, remove_tree

REQUIREMENTS = Path(__file__).with_name("wheelhouse-requirements.txt")
PY_MINOR = (3, 11)  # Debian 12's python3


def python() -> str:
    """A CPython 3.11 on the build machine (this one, or python3.11 on PATH)."""
    if sys.version_info[:2] == PY_MINOR:
        return sys.executable
    exe = shutil.which(f"python{PY_MINOR[0]}.{PY_MINOR[1]}")
    if exe is None:
        raise SystemExit("lab: building the wheelhouse needs a CPython 3.11 (the image's)")
    return exe


def wheelhouse_hash() -> str:
    """Cache key: the pinned list, this file's source and the Python minor version."""
    h = hashlib.sha256()
    h.update(REQUIREMENTS.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(f"cp{PY_MINOR[0]}{PY_MINOR[1]}".encode())
    return h.hexdigest()[:16]


def wheelhouse_dir() -> Path:
    """Where the finished wheelhouse lives."""
    return config.cache_dir() / f"wheelhouse-{wheelhouse_hash()}"


def ensure_wheelhouse() -> Path:
    """Return the cached wheelhouse, building it first when missing."""
    final = wheelhouse_dir()
    if final.is_dir():
        return final
    cache = config.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".wheelhouse.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        for stale in cache.glob(".tmp-wheelhouse-*"):
            remove_tree(stale)
        tmp = cache / f".tmp-wheelhouse-{wheelhouse_hash()}-{os.getpid()}"
        tmp.mkdir()
        log(f"wheelhouse: building {final.name} ...")
        t0 = time.monotonic()
        # PIP_FIND_LINKS may name a local wheel dir on a machine: pins decide anyway,
        # but keep the build to the index so the result does not depend on such a dir.
        env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        res = subprocess.run(
            [
                python(),
                "-m",
                "pip",
                "wheel",
                "-q",
                "-w",
                str(tmp),
                "-r",
                str(REQUIREMENTS),
            ],
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise RuntimeError(f"pip wheel failed:\n{res.stdout}{res.stderr}"[-4000:])
        not_wheels = [p.name for p in tmp.iterdir() if not p.name.endswith(".whl")]
        if not_wheels:
            raise RuntimeError(f"wheelhouse holds non-wheels: {not_wheels}")
        os.rename(tmp, final)
        log(f"wheelhouse: built in {time.monotonic() - t0:.1f} s")
        for old in sorted(cache.glob("wheelhouse-*"), key=lambda p: p.stat().st_mtime)[:-2]:
            if old != final:  # keep this one and the previous build
                remove_tree(old)
    return final


def check_install_command(wheelhouse_in_host: str = "/opt/wheelhouse") -> str:
    """The shell command that installs Patroni on a host from a copied wheelhouse."""
    return (
        "python3 -m venv /opt/patroni && "
        "PIP_FIND_LINKS= /opt/patroni/bin/pip install -q "
        f'--no-index --find-links {wheelhouse_in_host} "patroni[etcd3]" psycopg2-binary'
    )

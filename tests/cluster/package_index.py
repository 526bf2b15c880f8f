"""A package index behind an HTTP proxy on the build machine: the runbook's way of installing
Patroni (`pip` through the site's proxy), for lab tests.

- pypiserver (from .venv) serves a wheel directory, the lab's wheelhouse, on 127.0.0.1 only,
  without fallback to any public index; it refuses uploads (no password file).
- tinyproxy (Debian's, scripts/lab-deps) listens on the lab bridge address only, admits the lab
  subnet only, asks for a user and password (so the proxy URL carries credentials, as a real
  one may), forwards plain HTTP only to 127.0.0.1 (a filter denies every other destination)
  and refuses CONNECT. It runs as `nobody` and logs every request it serves.

A lab host reaches the index only through the proxy: `http://127.0.0.1:<port>/simple/` is its
own loopback otherwise. Both processes belong to the caller and stop with `stop()` (or the
context manager).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from lab import config as lab_config

PROXY_USER = "pgha-lab"


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _wait_listening(address: str, port: int, proc: subprocess.Popen[bytes], what: str,
                    timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {address}:{port}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} does not listen on {address}:{port} after {timeout:.0f}s")


def tinyproxy_conf(*, listen: str, port: int, allow: str, user: str, password: str, log: Path,
                   filter_file: Path) -> str:
    return "\n".join([
        "User nobody", "Group nogroup",
        f"Port {port}", f"Listen {listen}",
        "Timeout 60", "MaxClients 50",
        f'LogFile "{log}"', "LogLevel Info",
        f"Allow {allow}",
        f"BasicAuth {user} {password}",
        f'Filter "{filter_file}"', "FilterType ere", "FilterDefaultDeny Yes",
        "ConnectPort 0",  # no CONNECT: plain HTTP to the index only
        "DisableViaHeader Yes",
        "",
    ])


@dataclass
class IndexBehindProxy:
    wheels: Path
    listen: str = lab_config.GATEWAY
    allow: str = lab_config.CIDR
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgha-index-proxy-")))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    index_port: int = 0
    proxy_port: int = 0
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def index_url(self) -> str:
        """The index as the hosts name it: the build machine's loopback, through the proxy."""
        return f"http://127.0.0.1:{self.index_port}/simple/"

    @property
    def proxy_url(self) -> str:
        return f"http://{PROXY_USER}:{self.password}@{self.listen}:{self.proxy_port}"

    @property
    def proxy_log(self) -> Path:
        return self.workdir / "tinyproxy.log"

    def start(self) -> IndexBehindProxy:
        if shutil.which("tinyproxy") is None:
            raise RuntimeError("tinyproxy is not installed: run scripts/lab-deps")
        self.workdir.chmod(0o755)  # tinyproxy runs as nobody
        self.index_port = free_port("127.0.0.1")
        self.proxy_port = free_port(self.listen)
        index = subprocess.Popen(
            [sys.executable, "-m", "pypiserver", "run", "-i", "127.0.0.1", "-p", str(self.index_port),
             "--disable-fallback", "--log-file", str(self.workdir / "pypiserver.log"), str(self.wheels)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(index)
        _wait_listening("127.0.0.1", self.index_port, index, "pypiserver")
        filter_file = self.workdir / "filter"
        filter_file.write_text("^127\\.0\\.0\\.1$\n")
        self.proxy_log.touch()
        os.chmod(self.proxy_log, 0o666)
        conf = self.workdir / "tinyproxy.conf"
        conf.write_text(tinyproxy_conf(listen=self.listen, port=self.proxy_port, allow=self.allow,
                                       user=PROXY_USER, password=self.password, log=self.proxy_log,
                                       filter_file=filter_file))
        conf.chmod(0o600)  # it holds the password; tinyproxy reads it before dropping to nobody
        proxy = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(proxy)
        _wait_listening(self.listen, self.proxy_port, proxy, "tinyproxy")
        self.check()
        return self

    def check(self) -> None:
        """The index answers through the proxy (from here, as a host would ask)."""
        proxies = {"http": self.proxy_url}
        answer = requests.get(f"{self.index_url}patroni/", proxies=proxies, timeout=10)
        answer.raise_for_status()

    def requests_seen(self) -> list[str]:
        """The index URLs the proxy forwarded (its log's `Request` lines)."""
        seen = []
        for line in self.proxy_log.read_text(errors="replace").splitlines():
            if "Request (file descriptor" in line and f"127.0.0.1:{self.index_port}/" in line:
                seen.append(line.split("): ", 1)[1])
        return seen

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self._procs.clear()


@contextmanager
def index_behind_proxy(wheels: Path, listen: str = lab_config.GATEWAY) -> Iterator[IndexBehindProxy]:
    served = IndexBehindProxy(wheels=wheels, listen=listen)
    try:
        yield served.start()
    finally:
        served.stop()
        shutil.rmtree(served.workdir, ignore_errors=True)

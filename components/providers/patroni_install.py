"""PatroniInstall: prepare a host for Patroni, as the runbook's first steps do.

Stops and disables the distro's default PostgreSQL cluster (Debian starts a
15/main on install; its data is left in place), installs Patroni into a
virtualenv from an uploaded wheelhouse (air-gapped sites) or from an index
(optionally through a proxy), and installs the systemd unit.
"""

from __future__ import annotations

import shlex
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components import render
from components.providers.base import HostProvider, public
from components.transport.ssh import Ssh, SshError

UNIT_FILE = "/etc/systemd/system/patroni.service"
REMOTE_WHEELHOUSE = "/var/cache/pgha/wheelhouse"


def _disable_distro_cluster(ssh: Ssh, props: dict[str, Any]) -> None:
    if props["os_family"] != "debian":
        return
    ver = int(props["pg_version"])
    # Debian's generator starts clusters whose start.conf says auto; 'disabled'
    # keeps pg_ctlcluster and the postgresql@ units from starting it again.
    ssh.run(
        f"if [ -f /etc/postgresql/{ver}/main/start.conf ]; then "
        f"  pg_ctlcluster {ver} main stop -m fast 2>/dev/null || true; "
        f"  systemctl stop postgresql@{ver}-main 2>/dev/null || true; "
        f"  echo disabled > /etc/postgresql/{ver}/main/start.conf; "
        f"fi; systemctl disable postgresql >/dev/null 2>&1 || true; "
        f"systemctl stop postgresql >/dev/null 2>&1 || true",
        step="stop and disable the distro's default PostgreSQL cluster")


def _installed_version(ssh: Ssh, venv: str) -> str:
    """The installed Patroni's version from its package metadata (`patroni --version`
    imports all of Patroni: half a second more on every install and refresh)."""
    v = shlex.quote(venv)
    probe = "import importlib.metadata as m; print(m.version('patroni'))"
    result = ssh.run(f"test -x {v}/bin/patroni && {v}/bin/python -c {shlex.quote(probe)} 2>/dev/null",
                     step="check Patroni", check=False)
    words = result.stdout.split()
    return words[-1] if result.code == 0 and words else ""


# Debian's python3-venv ships pip as a wheel, and pip runs from its wheel. A venv made
# --without-pip and filled by that pip takes 0.1 s instead of ensurepip's 5 s (measured
# on the lab); other systems fall back to a venv with its own pip.
_DISTRO_PIP = 'w=$(ls /usr/share/python-wheels/pip-*.whl 2>/dev/null | tail -n 1)'


def make_venv(venv: str) -> str:
    """Shell: a fresh virtualenv at `venv` (removing what was there)."""
    v = shlex.quote(venv)
    return (f'{_DISTRO_PIP}; rm -rf {v} && if [ -n "$w" ]; then python3 -m venv --without-pip {v}; '
            f"else python3 -m venv {v}; fi")


def pip_install(venv: str, args: str) -> str:
    """Shell: `pip install -q <args>` into `venv`, with the distro's pip wheel when there is one."""
    v = shlex.quote(venv)
    return (f'{_DISTRO_PIP}; if [ -n "$w" ]; then set -- {v}/bin/python "$w/pip"; '
            f'else set -- {v}/bin/pip; fi; "$@" install -q --disable-pip-version-check {args}')


def _install(ssh: Ssh, props: dict[str, Any]) -> None:
    requirement = shlex.quote(f"patroni[etcd3]=={props['version']}")
    # Only reached when the wanted version is not installed: a fresh virtualenv also
    # clears what an interrupted earlier install may have left half-done.
    ssh.run(make_venv(props["venv"]), step="create the Patroni virtualenv (needs python3-venv)")
    if props["method"] == "wheelhouse":
        ssh.upload_dir(props["wheelhouse"], REMOTE_WHEELHOUSE, step="upload the Patroni wheelhouse")
        wheels = f"--no-index --find-links {REMOTE_WHEELHOUSE} {requirement} psycopg2-binary"
        ssh.run("export PIP_CONFIG_FILE=/dev/null; " + pip_install(props["venv"], wheels),
                step="install Patroni from the wheelhouse", timeout=600)
        return
    index = f"--index-url {shlex.quote(props['index_url'])} " if props.get("index_url") else ""
    # The proxy URL may carry credentials: it travels on stdin, not argv.
    ssh.run('p="$(cat)"; [ -n "$p" ] && export HTTPS_PROXY="$p" HTTP_PROXY="$p"; '
            + pip_install(props["venv"], f"{index}{requirement} psycopg2-binary"),
            step="install Patroni with pip", stdin=props.get("proxy") or "", timeout=900)


class PatroniInstallProvider(HostProvider):
    OBSERVED: ClassVar[dict[str, Any]] = {"installed_version_ok": True}
    OUTPUTS = frozenset({"installed_version"})

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        venv = props["venv"]
        with self.ssh(props) as ssh, ThreadPoolExecutor(max_workers=1) as background:
            # Stopping the distro's cluster waits on PostgreSQL, installing on the CPU:
            # on a channel of their own they overlap.
            stopping = background.submit(_disable_distro_cluster, ssh, props)
            if _installed_version(ssh, venv) != props["version"]:
                _install(ssh, props)
            stopping.result()
            version = _installed_version(ssh, venv)
            if version != props["version"]:
                raise SshError(props["connection"]["host"], "install Patroni",
                               f"expected Patroni {props['version']}, found {version or 'none'}")
            ssh.run(f"ln -sf {shlex.quote(venv)}/bin/patroni /usr/local/bin/patroni && "
                    f"ln -sf {shlex.quote(venv)}/bin/patronictl /usr/local/bin/patronictl && "
                    f"install -d -o postgres -g postgres -m 0750 {shlex.quote(props['config_dir'])}",
                    step="link patronictl and create the config directory")
            unit = render.patroni_unit({**props, "config_file": f"{props['config_dir']}/patroni.yml"})
            if ssh.write_file(UNIT_FILE, unit, step="install the patroni systemd unit"):
                ssh.run("systemctl daemon-reload", step="reload systemd")
        return {**public(props), "installed_version": version, "installed_version_ok": True}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._apply(props)
        return CreateResult(id_=f"{props['scope']}/{props['connection']['host']}/patroni-install", outs=outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        outs = dict(props)
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                outs["installed_version"] = _installed_version(ssh, props["venv"])
        except SshError:
            outs["installed_version"] = ""
        outs["installed_version_ok"] = outs["installed_version"] == props.get("version")
        return ReadResult(id_=id_, outs=outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Remove the unit and the virtualenv; PostgreSQL data is not touched."""
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                venv = shlex.quote(props["venv"])
                ssh.run("systemctl disable --now patroni >/dev/null 2>&1 || true; "
                        f"rm -f {UNIT_FILE} /usr/local/bin/patroni /usr/local/bin/patronictl; "
                        f"systemctl daemon-reload; rm -rf {venv} {REMOTE_WHEELHOUSE}",
                        step="remove Patroni's unit and virtualenv")
        except SshError as err:
            if err.step != "connect over SSH":
                raise
            # A dead host being replaced: nothing left to clean up on it.

"""PatroniInstall, retired: its host steps are pulumi-command resources now
(components/host_install.py, PatroniHostInstall).

The class stays because stacks deployed before hold PatroniInstall resources, and the engine
finds their provider by this module and class name (dynamic providers are pickled by
reference). The `up` that upgrades such a stack registers PatroniHostInstall, whose install
leaves a marker in the virtualenv (install_steps.MARKER), and deletes the old resources last:
their delete then leaves the host as it is. Without the marker (a stack destroyed without
having been upgraded), the delete removes the unit and the virtualenv as it always did.
`read` still reports the installed version for a refresh before the upgrade.
"""

from __future__ import annotations

import shlex
from typing import Any, ClassVar

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components.install_steps import MARKER, OLD_UPLOAD_ROOT, UNIT_FILE, make_venv, pip_install
from components.providers.base import HostProvider
from components.transport.ssh import Ssh, SshError

# make_venv, pip_install: bench/floors.py; UNIT_FILE: providers/patroni_node.py
__all__ = ["UNIT_FILE", "PatroniInstallProvider", "make_venv", "pip_install"]

_RETIRED = ("PatroniInstall is retired: Patroni is installed by PatroniHostInstall "
            "(pulumi-command resources); this program never registers PatroniInstall")


def _installed_version(ssh: Ssh, venv: str) -> str:
    v = shlex.quote(venv)
    probe = "import importlib.metadata as m; print(m.version('patroni'))"
    result = ssh.run(f"test -x {v}/bin/patroni && {v}/bin/python -c {shlex.quote(probe)} 2>/dev/null",
                     step="check Patroni", check=False)
    words = result.stdout.split()
    return words[-1] if result.code == 0 and words else ""


def retired_delete_script(venv: str) -> str:
    """The old delete, unless PatroniHostInstall owns the install (its marker is there)."""
    v = shlex.quote(venv)
    return (f"if [ -e {v}/{MARKER} ]; then exit 0; fi; "
            "systemctl disable --now patroni >/dev/null 2>&1 || true; "
            f"rm -f {UNIT_FILE} /usr/local/bin/patroni /usr/local/bin/patronictl; "
            f"systemctl daemon-reload; rm -rf {v} {OLD_UPLOAD_ROOT}/wheelhouse")


class PatroniInstallProvider(HostProvider):
    OBSERVED: ClassVar[dict[str, Any]] = {"installed_version_ok": True}
    OUTPUTS = frozenset({"installed_version"})

    def create(self, props: dict[str, Any]) -> CreateResult:
        raise RuntimeError(_RETIRED)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        raise RuntimeError(_RETIRED)

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
        """Keep the host when PatroniHostInstall owns the install; else remove the unit and the
        virtualenv (PostgreSQL data is not touched)."""
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                ssh.run(retired_delete_script(props["venv"]),
                        step="remove Patroni's unit and virtualenv, unless PatroniHostInstall owns them")
        except SshError as err:
            if err.step != "connect over SSH":
                raise
            # A dead host being replaced: nothing left to clean up on it.

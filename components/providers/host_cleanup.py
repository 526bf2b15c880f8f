"""PatroniHostCleanup: what deleting a host's Patroni install removes, run on delete only.

The install's pulumi-command steps (components/host_install.py) have no `delete` script,
because pulumi-command fails a delete whose host does not answer SSH, and a dead host must
stay removable from the stack. This resource does nothing on create or update (its inputs
are the script, for the reviewer); its delete runs the script over SSH, and skips a host
that does not answer: there is nothing left to clean up on it.
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CreateResult, UpdateResult

from components.providers.base import HostProvider, public
from components.transport.ssh import SshError


class PatroniHostCleanupProvider(HostProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}/{props['connection']['host']}/patroni-cleanup",
                            outs=public(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=public(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                ssh.run(props["script"], step="remove the Patroni install")
        except SshError as err:
            if err.step != "connect over SSH":
                raise
            # A dead host being removed: nothing left to clean up on it.

"""PatroniBootstrap: start the first host's Patroni once, when the cluster does not exist yet.

The runbook starts Patroni on one node, waits for it to lead, then starts the others.
Every PatroniNode depends on this resource, so a new cluster has its leader before any
replica's create begins. That matters because the dynamic provider runs only 4
operations at once: replicas whose creates started first would hold every slot while
waiting for a leader that could then never start.

It acts only on create, and only if the DCS shows no cluster. It never reports a change
afterwards, so the nodes that depend on it are never ordered behind a node being added
(a re-added first host must not wait for itself to be admitted).
"""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ReadResult, UpdateResult

from components.providers.base import public
from components.providers.patroni_cluster import dcs_prefix
from components.providers.patroni_node import PatroniNodeProvider, dcs_gateway
from components.transport.ssh import SshError


class PatroniBootstrapProvider(PatroniNodeProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        gateway = dcs_gateway(props)
        if gateway is None:
            raise SshError(props["address"], "read the DCS", "no healthy etcd member")
        existing = gateway.get(f"{dcs_prefix(props)}initialize") is not None
        if not existing:
            with self.ssh(props) as ssh:
                self._write_config(ssh, props)
                ssh.run("systemctl enable patroni >/dev/null 2>&1 && systemctl start patroni",
                        step="start patroni on the first host")
                self._wait_ready(ssh, props, timeout=900)
        outs = {**public(props), "bootstrapped": not existing}
        return CreateResult(id_=f"{props['scope']}/bootstrap", outs=outs)

    def diff(self, _id: str, _olds: dict[str, Any], _news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=False)

    def update(self, _id: str, olds: dict[str, Any], _news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=olds)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_=id_, outs=props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The first host's node resource stops and cleans up its Patroni."""

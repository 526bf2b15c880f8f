"""PatroniNode: Patroni (and so PostgreSQL) running on one host.

A create returns only once the node runs as the leader or as a streaming
replica. Changes to node-local settings rewrite patroni.yml and reload.
A delete never stops a leader that still has healthy replicas: it switches
over first (unless the replicas are themselves going away, as in a destroy).
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any, ClassVar
from urllib.parse import urlparse

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components import render, state_upgrade
from components.handover import plan_handover
from components.providers.base import HostProvider, public
from components.providers.patroni_cluster import dcs_prefix, pgha_prefix
from components.succession import SyncMode, members_of
from components.transport.rest import LEADER_ROLES, EtcdGateway, PatroniApi, RestError, first_healthy
from components.transport.ssh import Ssh, SshError, wait_for


def api(props: dict[str, Any]) -> PatroniApi:
    return PatroniApi(f"http://{props['address']}:{props['restapi_port']}",
                      auth=(props["restapi_username"], props["secrets"]["restapi"]))


def ready_status(node: PatroniApi) -> dict[str, Any] | None:
    """The node's /patroni when it is a running leader or a streaming replica."""
    status = node.patroni()
    if status.get("state") != "running":
        return None
    if status.get("role") in LEADER_ROLES:
        return status
    if status.get("role") == "replica" and status.get("replication_state") == "streaming":
        return status
    return None


def _journal(ssh: Ssh) -> str:
    out = ssh.run("journalctl -u patroni -n 15 --no-pager -o cat", step="read patroni's journal",
                  check=False)
    return out.stdout.strip()[-2000:]


def _member_key(props: dict[str, Any]) -> str:
    return f"{dcs_prefix(props)}members/{props['name']}"


def dcs_gateway(props: dict[str, Any]) -> EtcdGateway | None:
    """A healthy etcd member of the cluster this node uses as its DCS."""
    return first_healthy([f"http://{e}" for e in props["etcd_hosts"]])


def leader_member(gateway: EtcdGateway, props: dict[str, Any]) -> dict[str, Any] | None:
    """The leader's member record in the DCS (conn_url, api_url, ...); None before bootstrap."""
    leader = gateway.get(f"{dcs_prefix(props)}leader")
    if not leader:
        return None
    return json.loads(gateway.get(f"{dcs_prefix(props)}members/{leader}") or "{}")


class PatroniNodeProvider(HostProvider):
    CREATE_ONLY = frozenset({"bootstrap", "bootstrap_leader"})
    REPLACE_ON = frozenset({"name", "address", "scope", "namespace", "data_dir", "pg_port"})
    OBSERVED: ClassVar[dict[str, Any]] = {"running": True}
    OUTPUTS = frozenset({"role", "timeline", "patroni_version"})

    def same(self, key: str, old: Any, new: Any) -> bool:
        if key == "pg_hba":
            return state_upgrade.same_pg_hba(old, new)
        return super().same(key, old, new)

    def _write_config(self, ssh: Ssh, props: dict[str, Any]) -> bool:
        data_dir = shlex.quote(props["data_dir"])
        ssh.run(f"install -d -o postgres -g postgres -m 0700 {data_dir}",
                step="create the PostgreSQL data directory")
        text = render.patroni_yml(props, props["secrets"])
        return ssh.write_file(props["config_file"], text, step="write patroni.yml", mode="0600",
                              owner="postgres", group="postgres")

    def _wait_ready(self, ssh: Ssh, props: dict[str, Any], timeout: float) -> dict[str, Any]:
        node = api(props)
        try:
            return wait_for(lambda: ready_status(node), timeout=timeout, interval=0.5,
                            what="Patroni running as leader or streaming replica",
                            host=props["address"])
        except SshError as err:
            raise SshError(props["address"], err.step, f"{err}\npatroni journal:\n{_journal(ssh)}") from err

    def _outs(self, props: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        return {**public(props), "running": True, "role": status.get("role", ""),
                "timeline": status.get("timeline", 0),
                "patroni_version": status.get("patroni", {}).get("version", "")}

    def _existing_leader(self, props: dict[str, Any]) -> tuple[str, int] | None:
        """(host, port) of the running cluster's leader, from the DCS; None before bootstrap."""
        gateway = dcs_gateway(props)
        if gateway is None:
            raise SshError(props["address"], "read the DCS", "no healthy etcd member")
        member = leader_member(gateway, props)
        if member is None:
            return None
        url = urlparse(member.get("conn_url", ""))
        return (url.hostname, url.port or 5432) if url.hostname else None

    def _wait_for_admission(self, ssh: Ssh, props: dict[str, Any]) -> bool:
        """A joining node starts only once the leader's pg_hba admits its replication
        connection: the existing nodes reload their pg_hba in the same `up`.
        False when this node founds the cluster instead."""
        leader = self._existing_leader(props)
        if leader is None and props.get("bootstrap_leader"):
            return False
        host, port = leader or wait_for(lambda: self._existing_leader(props), timeout=600, interval=0.5,
                                        what="a cluster leader to replicate from", host=props["address"])
        psql = (f"{shlex.quote(props['bin_dir'])}/psql -X -At -c 'IDENTIFY_SYSTEM' "
                f"'host={host} port={port} user={props['users']['replication']} "
                f"dbname=postgres replication=true connect_timeout=5'")
        password = props["secrets"]["replication"]

        def admitted() -> bool:
            result = ssh.run(f'PGPASSWORD="$(cat)" {psql}', step="test replication access to the leader",
                             stdin=password, check=False)
            if result.code == 0:
                return True
            if "pg_hba.conf" in result.stderr:
                return False  # not yet: the leader's pg_hba is being updated in this same `up`
            raise SshError(props["address"], "test replication access to the leader", result.stderr.strip())

        wait_for(admitted, timeout=300, interval=1, what=f"the leader {host} admitting replication",
                 host=props["address"])
        return True

    def _hurry_slot(self, props: dict[str, Any]) -> None:
        """Have the leader create this node's replication slot now rather than in up to loop_wait.

        A new replica streams only once the leader has made its slot, which the leader does
        in its HA loop; until then its WAL receiver fails and retries every 5 s, which cost
        about 10 s per replica. Best effort: without it the leader's next loop makes the
        slot anyway.
        """
        gateway = dcs_gateway(props)
        if gateway is None:
            return
        try:
            wait_for(lambda: gateway.get(_member_key(props)) is not None, timeout=30, interval=0.3,
                     what="this node registered in the DCS", host=props["address"])
            api_url = (leader_member(gateway, props) or {}).get("api_url", "")
            if not api_url:
                return
            PatroniApi(api_url.rsplit("/", 1)[0],
                       auth=(props["restapi_username"], props["secrets"]["restapi"])).wake()
        except (RestError, SshError, ValueError):
            return

    def create(self, props: dict[str, Any]) -> CreateResult:
        with self.ssh(props) as ssh:
            changed = self._write_config(ssh, props)
            active = ssh.run("systemctl is-active patroni", step="check patroni", check=False)
            if active.stdout.strip() == "active":
                if changed:
                    ssh.run("systemctl reload patroni", step="reload patroni")
            else:
                joining = self._wait_for_admission(ssh, props)
                ssh.run("systemctl enable patroni >/dev/null 2>&1 && systemctl start patroni",
                        step="start patroni")
                if joining:
                    self._hurry_slot(props)
            status = self._wait_ready(ssh, props, timeout=900)
        return CreateResult(id_=f"{props['scope']}/{props['name']}", outs=self._outs(props, status))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        with self.ssh(news) as ssh:
            changed = self._write_config(ssh, news)
            active = ssh.run("systemctl is-active patroni", step="check patroni", check=False)
            if active.stdout.strip() != "active":
                ssh.run("systemctl enable patroni >/dev/null 2>&1 && systemctl start patroni",
                        step="start patroni")
            elif changed:
                ssh.run("systemctl reload patroni", step="reload patroni")
                time.sleep(1)
            status = self._wait_ready(ssh, news, timeout=900)
        return UpdateResult(outs=self._outs(news, status))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        outs = dict(props)
        try:
            status = api(props).patroni()
            outs["running"] = status.get("state") == "running"
            outs["role"] = status.get("role", "")
            outs["timeline"] = status.get("timeline", 0)
        except RestError:
            outs["running"] = False
        return ReadResult(id_=id_, outs=outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        gateway = dcs_gateway(props)
        leaving = f"{pgha_prefix(props['scope'])}leaving/{props['name']}"
        if gateway is not None:
            gateway.put(leaving, "1")  # tells a leader being removed not to hand over to us
        node = api(props)
        try:
            node.patroni()
            reachable = True
        except RestError:
            reachable = False
        if reachable:
            self._step_down_if_leader(node, props, gateway)
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                ssh.run("systemctl disable --now patroni >/dev/null 2>&1 || true",
                        step="stop patroni")
                ssh.run(f"rm -f {shlex.quote(props['config_file'])}", step="remove patroni.yml")
                if not props.get("keep_data_on_destroy", True):
                    ssh.run(f"rm -rf {shlex.quote(props['data_dir'])}",
                            step="remove the data directory (postgresql.keepDataOnDestroy: false)")
        except SshError as err:
            if err.step != "connect over SSH":
                raise
            # The host is gone (a dead host being replaced): clean the DCS below.
        if gateway is not None:
            # Patroni drops its member key on a clean stop; a dead host's would linger until ttl.
            gateway.delete_key(_member_key(props))
            gateway.delete_key(leaving)

    def _step_down_if_leader(self, node: PatroniApi, props: dict[str, Any],
                             gateway: EtcdGateway | None) -> None:
        """Hand the leader role to a member that stays and that Patroni accepts, before stopping.

        Looks again after every wait or failed switchover: in a destroy the other
        members announce their departure at about the same moment, so a first
        look can pick a target that is about to stop.
        """
        prefix = f"{pgha_prefix(props['scope'])}leaving/"
        deadline = time.monotonic() + 180
        last = ""
        while time.monotonic() < deadline:
            leaving = set()
            if gateway is not None:
                leaving = {k.rsplit("/", 1)[-1] for k in gateway.keys_with_prefix(prefix)}
            sync_mode = SyncMode.from_setting(node.config().get("synchronous_mode"))
            step = plan_handover(props["name"], members_of(node.cluster()), leaving, sync_mode)
            if step.action == "stop":
                return
            if step.action == "switchover":
                resp = node.switchover(props["name"], step.target)
                if resp.status_code in (200, 202):
                    last = f"switched over to {step.target}"
                    time.sleep(1)
                    continue  # the next look confirms the role moved
                last = f"POST /switchover to {step.target}: HTTP {resp.status_code} {resp.text[:200]}"
            else:
                last = step.reason
            time.sleep(2)
        raise SshError(props["address"], "switch over before removing the leader",
                       f"still the leader after 180s; last: {last}")

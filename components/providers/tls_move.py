"""EtcdTlsMove and PatroniTlsMove: a running plaintext cluster moves to pgha:tls (components/
tls_move.py has the sequence and its decisions).

Both exist in every stack with pgha:tls on. On a new cluster, or one already on TLS, they touch
nothing; they act in the `up` that turns TLS on for a cluster deployed without it, and in a
re-run after that `up` failed half-way. Every etcd member waits for the first, every Patroni node
(and so HAProxy) for the second: the members' and nodes' own updates then find their files as the
move left them and restart nothing.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pulumi.dynamic import CreateResult, DiffResult

from components import render
from components.providers.base import HostProvider, public
from components.providers.etcd_member import ENV_FILE, env_settings, etcd_unit_failed
from components.providers.haproxy_config import HAProxyConfigProvider
from components.providers.patroni_cluster import pgha_prefix
from components.providers.patroni_node import write_patroni_config
from components.tls_move import (
    MARKER,
    PAUSED_BEFORE,
    PAUSED_BY_PGHA,
    EtcdHostState,
    etcd_step,
    initial_cluster,
    restart_order,
)
from components.transport.rest import EtcdGateway, PatroniApi, RestError, first_healthy
from components.transport.ssh import Ssh, SshError, notify, wait_for


class TlsMoveRefused(RuntimeError):
    """A move to TLS that pgha does not start (or continue), with the reason and the way on."""


def _snapshot_path(member: dict[str, Any]) -> str:
    return f"{member['data_dir'].rstrip('/')}.tls-move.db"


def _url(scheme: str, member: dict[str, Any], port_key: str) -> str:
    return f"{scheme}://{member['address']}:{member[port_key]}"


class _Steps(HostProvider):
    """What both steps share: no diff. A step acts when it is created (with TLS turned on, or
    again after it failed), from what the hosts show; once it is in the state the cluster is on
    TLS, and a cluster on TLS stays on it."""

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # Never a change a reviewer reads: the step acts only on what the hosts show.
        return DiffResult(changes=False, replaces=[], stables=[k for k in news if not k.startswith("__")],
                          delete_before_replace=False)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Nothing: a cluster on TLS stays on TLS."""


# --- step 1: etcd ------------------------------------------------------------------------


class EtcdTlsMoveProvider(_Steps):
    def create(self, props: dict[str, Any]) -> CreateResult:
        found = self._run(props)
        return CreateResult(id_=f"{props['scope']}-etcd-tls-move", outs={**public(props), "found": found})

    def _run(self, props: dict[str, Any]) -> str:
        members = list(props["members"])
        with ThreadPoolExecutor(max_workers=len(members) or 1) as pool:
            # In parallel: on a new cluster this is all the step does, before the first member starts.
            # SSH only: the https client identity (a context variable) is not needed in the threads.
            probed = list(pool.map(lambda m: self._probe(m, props), members))
        states = {m["name"]: state for m, state in zip(members, probed, strict=True)}
        plain = first_healthy([_url("http", m, "client_port") for m in members])
        listed = [str(m.get("name") or "") for m in plain.members()] if plain is not None else None
        decision = etcd_step(list(states.values()), plain is not None, listed)
        if decision.step == "stop":
            raise TlsMoveRefused(f"{props['scope']}: moving etcd to TLS: {decision.reason}")
        if decision.step == "new":
            return "new"
        if decision.step == "tls":
            # A move whose Patroni step has not finished yet left its key in the DCS.
            if self._marker(props) is None:
                return "tls"
            notify(props["scope"], "etcd is on https already: the move to TLS an earlier `up` began "
                                   "carries on")
            return "moving"
        if decision.reason:
            notify(props["scope"], decision.reason, warning=True)
        if decision.step == "move":
            assert plain is not None
            self._pause(props, plain)
            snapshot = self._snapshot(props, plain, [m for m in members if states[m["name"]].scheme])
        else:
            snapshot = next(iter({s.snapshot for s in states.values() if s.scheme}))
        restored = [m for m in members if states[m["name"]].scheme]
        self._restore(props, restored, snapshot)
        return "moving"

    def _probe(self, member: dict[str, Any], props: dict[str, Any]) -> EtcdHostState:
        snap = shlex.quote(_snapshot_path(member))
        data = shlex.quote(member["data_dir"])
        with self.host_ssh(member, props) as ssh:
            out = ssh.run(f"d=no; [ -d {data}/member ] && d=yes; "
                          f"s=$(sha256sum {snap} 2>/dev/null | cut -c1-64); echo \"$d ${{s:--}}\"; "
                          f"cat {ENV_FILE} 2>/dev/null || true",
                          step="look at etcd before the move to TLS", check=False).stdout
        first, _, env = out.partition("\n")
        words = first.split()
        settings = env_settings(env)
        ours = settings.get("ETCD_NAME") == member["name"]
        peer = settings.get("ETCD_LISTEN_PEER_URLS", "") if ours else ""
        scheme = peer.split("://", 1)[0] if "://" in peer else None
        return EtcdHostState(name=member["name"], scheme=scheme, has_data=bool(words) and words[0] == "yes",
                             snapshot="" if len(words) < 2 or words[1] == "-" else words[1])

    @staticmethod
    def _marker(props: dict[str, Any]) -> str | None:
        """The move's key in etcd on https (None: no move under way, or no member answers)."""
        gateway = first_healthy([_url("https", m, "client_port") for m in props["members"]])
        if gateway is None:
            return None
        return gateway.get(pgha_prefix(props["scope"]) + MARKER)

    def _pause(self, props: dict[str, Any], gateway: EtcdGateway) -> None:
        """Pause Patroni, and wait until every running node says it is paused: a node that is not
        would demote its primary when etcd goes away."""
        scope = props["scope"]
        key = pgha_prefix(scope) + MARKER
        nodes = {n["name"]: PatroniApi(f"http://{n['address']}:{n['restapi_port']}",
                                       auth=(props["restapi_username"], props["secrets"]["restapi"]))
                 for n in props["nodes"]}
        running: dict[str, PatroniApi] = {}
        for node in props["nodes"]:
            api = nodes[node["name"]]
            try:
                api.patroni()
            except RestError as err:
                with self.host_ssh(node, props) as ssh:
                    active = ssh.run("systemctl is-active patroni", step="check patroni", check=False)
                if active.stdout.strip() == "active":
                    raise TlsMoveRefused(
                        f"{node['address']}: Patroni on {node['name']} runs but its REST API does not answer "
                        f"({err}): pgha pauses every node before etcd moves to TLS, and cannot pause this "
                        "one. Bring it back, then run `up` again") from err
                continue  # not running: nothing there can demote; it starts later with TLS
            running[node["name"]] = api
        if not running:
            return
        if gateway.get(key) is None:
            # A re-run finds the key of the first attempt, and the pause it set.
            already = any(api.patroni().get("pause") for api in running.values())
            gateway.put(key, PAUSED_BEFORE if already else PAUSED_BY_PGHA)
        first = next(iter(running.values()))
        first.patch_config({"pause": True})
        notify(scope, f"Patroni paused for the move to TLS (no automatic failover until the move ends): "
                      f"waiting until {', '.join(sorted(running))} say so")

        def paused() -> bool:
            waiting = [name for name, api in running.items() if not api.patroni().get("pause")]
            for name in waiting:
                running[name].wake()
            return not waiting

        wait_for(paused, timeout=120, interval=0.5, what="every Patroni node paused", host=scope)

    def _snapshot(self, props: dict[str, Any], gateway: EtcdGateway, members: list[dict[str, Any]]) -> str:
        """One snapshot of the plaintext cluster, taken on a member that answers, on every host."""
        source = next(m for m in members if _url("http", m, "client_port") == gateway.endpoint)
        path = _snapshot_path(source)
        with self.host_ssh(source, props) as ssh:
            # umask 077: the snapshot is the DCS's content (root's only, and removed after the move).
            ssh.run(f"umask 077; rm -f {shlex.quote(path)}.part && ETCDCTL_API=3 etcdctl --endpoints "
                    f"{shlex.quote(gateway.endpoint)} snapshot save {shlex.quote(path)}.part >/dev/null && "
                    f"mv {shlex.quote(path)}.part {shlex.quote(path)}",
                    step="take a snapshot of etcd for the move to TLS")
            encoded = ssh.run(f"base64 -w0 {shlex.quote(path)}", step="read etcd's snapshot").stdout.strip()
        digest = hashlib.sha256(base64.b64decode(encoded)).hexdigest()
        for member in members:
            if member is source:
                continue
            target = _snapshot_path(member)
            with self.host_ssh(member, props) as ssh:
                ssh.run(f"umask 077; base64 -d > {shlex.quote(target)}.part && mv {shlex.quote(target)}.part "
                        f"{shlex.quote(target)}", step="copy etcd's snapshot", stdin=encoded)
                got = ssh.run(f"sha256sum {shlex.quote(target)} | cut -c1-64", step="check etcd's snapshot")
                if got.stdout.strip() != digest:
                    raise SshError(member["address"], "copy etcd's snapshot",
                                   f"the copy's sha256 is {got.stdout.strip()}, not {digest}")
        notify(props["scope"], f"etcd snapshot taken on {source['name']} and copied to every member "
                               f"(sha256 {digest[:12]})")
        return digest

    def _restore(self, props: dict[str, Any], members: list[dict[str, Any]], digest: str) -> None:
        """Every member stops, keeps its plaintext data aside, restores the snapshot with https
        peer URLs and starts on https; then the old data and the snapshots go."""
        peers = {m["name"]: _url("https", m, "peer_port") for m in members}
        initial = initial_cluster(peers)
        stamp = int(time.time())
        for member in members:
            with self.host_ssh(member, props) as ssh:
                ssh.run("systemctl stop etcd", step="stop etcd for the move to TLS")
        for member in members:
            data, snap = shlex.quote(member["data_dir"]), shlex.quote(_snapshot_path(member))
            with self.host_ssh(member, props) as ssh:
                got = ssh.run(f"sha256sum {snap} | cut -c1-64", step="check etcd's snapshot").stdout.strip()
                if got != digest:
                    raise SshError(member["address"], "check etcd's snapshot",
                                   f"sha256 {got or '(missing)'}, not the {digest} every member restores")
                ssh.run(f"if [ -e {data} ]; then mv {data} {data}.plaintext-{stamp}; fi && "
                        f"ETCDCTL_API=3 etcdctl snapshot restore {snap} --name {shlex.quote(member['name'])} "
                        f"--data-dir {data} --initial-cluster {shlex.quote(initial)} "
                        f"--initial-cluster-token {shlex.quote(member['cluster_token'])} "
                        f"--initial-advertise-peer-urls {shlex.quote(peers[member['name']])} >/dev/null && "
                        f"chown -R etcd:etcd {data} && chmod 0700 {data}",
                        step="restore etcd's snapshot with https peer URLs")
                ssh.write_file(ENV_FILE, render.etcd_env(member, initial, "existing"),
                               step="write /etc/default/etcd for TLS")
                ssh.run("systemctl restart --no-block etcd", step="start etcd on https")
        for member in members:
            with self.host_ssh(member, props) as ssh:
                wait_for(EtcdGateway(_url("https", member, "client_port")).healthy, timeout=120,
                         interval=0.25,
                         what=f"etcd member {member['name']} healthy on https", host=member["address"],
                         blocked=etcd_unit_failed(ssh, member["name"]), blocked_every=2.0)
        if self._marker(props) is None:
            raise TlsMoveRefused(f"{props['scope']}: etcd on https does not hold pgha's {MARKER} key: the "
                                 "restored data is not the snapshot's. The plaintext data is kept aside "
                                 f"on each member ({members[0]['data_dir']}.plaintext-{stamp})")
        for member in members:
            data, snap = shlex.quote(member["data_dir"]), shlex.quote(_snapshot_path(member))
            with self.host_ssh(member, props) as ssh:
                ssh.run(f"rm -rf {data}.plaintext-* {snap}", step="remove the plaintext etcd data")
        notify(props["scope"], f"etcd runs on https ({', '.join(sorted(peers))}), restored from the snapshot")


# --- step 2: Patroni and HAProxy -------------------------------------------------------------


def _api(node: dict[str, Any], scheme: str) -> PatroniApi:
    return PatroniApi(f"{scheme}://{node['address']}:{node['restapi_port']}",
                      auth=(node["restapi_username"], node["secrets"]["restapi"]))


class PatroniTlsMoveProvider(_Steps):
    def create(self, props: dict[str, Any]) -> CreateResult:
        self._run(props)
        return CreateResult(id_=f"{props['scope']}-patroni-tls-move", outs=public(props))

    def _run(self, props: dict[str, Any]) -> None:
        if props.get("etcd_found") in (None, "new"):
            return  # a new cluster: every node starts with TLS
        nodes = {n["name"]: n for n in props["nodes"]}
        gateway = first_healthy([f"https://{e}" for e in next(iter(nodes.values()))["etcd_hosts"]])
        if gateway is None:
            raise RestError(f"{props['scope']}: the move to TLS: no etcd member answers on https")
        key = pgha_prefix(props["scope"]) + MARKER
        marker = gateway.get(key)
        if marker is None:
            return  # no move under way
        roles = {name: self._plaintext_role(node) for name, node in nodes.items()}
        moving = {name: role for name, role in roles.items() if role is not None}
        done: set[str] = {name for name in nodes if name not in moving}
        order = restart_order(moving)
        for name in order:
            self._restart(nodes[name], props, leader=name == order[0] and moving[name] == "primary")
            done.add(name)
            if done != set(nodes):
                self._balance(props, done)
        self._balance(props, None)
        self._end_pause(props, nodes, marker)
        gateway.delete_key(key)

    def _end_pause(self, props: dict[str, Any], nodes: dict[str, dict[str, Any]], marker: str) -> None:
        """End the pause pgha set for the move, and wait until every running node says so."""
        answering = {name: _api(node, "https") for name, node in nodes.items() if self._https_answers(node)}
        if not answering:
            raise RestError(f"{props['scope']}: the move to TLS: no node's REST API answers on https")
        if marker != PAUSED_BY_PGHA:
            notify(props["scope"], "every node runs with TLS; the cluster stays paused, as it was before "
                                   "the move", warning=True)
            return
        next(iter(answering.values())).patch_config({"pause": False})

        def resumed() -> bool:
            waiting = [name for name, api in answering.items() if api.patroni().get("pause")]
            for name in waiting:
                answering[name].wake()
            return not waiting

        wait_for(resumed, timeout=120, interval=0.5, what="every Patroni node out of the pause",
                 host=props["scope"])
        notify(props["scope"], "every node runs with TLS: the pause pgha set for the move has ended")

    @staticmethod
    def _https_answers(node: dict[str, Any]) -> bool:
        try:
            _api(node, "https").patroni()
        except RestError:
            return False
        return True

    def _plaintext_role(self, node: dict[str, Any]) -> str | None:
        """The node's role when its Patroni still serves plaintext (it has to restart with TLS);
        None when it serves https already, or does not run (it starts with TLS later)."""
        if self._https_answers(node):
            return None
        try:
            return str(_api(node, "http").patroni().get("role") or "replica")
        except RestError:
            return None

    def _restart(self, node: dict[str, Any], props: dict[str, Any], leader: bool) -> None:
        """Patroni restarts with TLS (paused, PostgreSQL keeps running); then PostgreSQL must
        serve TLS, applied by a reload if Patroni did not apply it at start. The leader is done
        once it holds the leader key again (its /primary answers 200: HAProxy's check)."""
        name, address = node["name"], node["address"]
        with self.host_ssh(node, props) as ssh:
            write_patroni_config(ssh, node)
            ssh.run("systemctl restart patroni", step="restart patroni with TLS")
            api = _api(node, "https")

            def running() -> bool:
                if api.patroni().get("state") != "running":
                    return False
                return not leader or api.health_status("/primary") == 200

            wait_for(running, timeout=120, interval=0.25, what=f"Patroni on {name} answering on https",
                     host=address)
            if not self._ssl_on(ssh, node):
                # A replica's Patroni joins a running PostgreSQL with a reload of pg_hba only.
                ssh.run("systemctl reload patroni", step="reload patroni for PostgreSQL's ssl")
                try:
                    api.wake()  # Patroni applies a reload at its next HA loop: now
                except RestError:
                    pass
                wait_for(lambda: self._ssl_on(ssh, node), timeout=60, interval=0.5,
                         what=f"PostgreSQL on {name} serving TLS", host=address)
        notify(address, f"Patroni on {name} restarted with TLS (PostgreSQL kept running, ssl on)")

    @staticmethod
    def _ssl_on(ssh: Ssh, node: dict[str, Any]) -> bool:
        psql = f"{shlex.quote(node['bin_dir'])}/psql"
        out = ssh.run(f"runuser -u postgres -- {psql} -X -At -h /var/run/postgresql "
                      f"-p {int(node['pg_port'])} -d postgres -c 'SHOW ssl'", step="check PostgreSQL's ssl",
                      check=False)
        return out.stdout.strip() == "on"

    def _balance(self, props: dict[str, Any], checked: set[str] | None) -> None:
        """Every HAProxy checks the nodes in `checked` over https and the others over http (None:
        all over https, the file HAProxyConfig writes)."""
        provider = HAProxyConfigProvider()
        for balancer in props["haproxy"]:
            spec = dict(balancer) if checked is None else {**balancer, "tls_checked": sorted(checked)}
            with self.host_ssh(balancer, props) as ssh:
                provider.apply_config(ssh, spec)


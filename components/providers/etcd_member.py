"""EtcdMember: one etcd cluster member on one host.

Follows etcd's runtime-reconfiguration order: a member joining an existing
cluster is first added through the v3 API (as a learner), then started with
initial-cluster-state=existing, and promoted to a voting member once it has
caught up. Members of a brand-new cluster start together with state=new.
Removal goes through the API from a surviving member, and is refused when it
would leave the cluster without quorum.
"""

from __future__ import annotations

import shlex
import time
from typing import Any, ClassVar
from urllib.parse import urlparse

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components import render
from components.providers.base import HostProvider, public
from components.transport.rest import EtcdGateway, RestError, etcd_peer_members
from components.transport.ssh import Ssh, SshError, wait_for

ENV_FILE = "/etc/default/etcd"


def _client_url(peer_url: str, client_port: int) -> str:
    return f"http://{urlparse(peer_url).hostname}:{client_port}"


def _peer_url(props: dict[str, Any]) -> str:
    return f"http://{props['address']}:{props['peer_port']}"


def _my_client(props: dict[str, Any]) -> str:
    return f"http://{props['address']}:{props['client_port']}"


def _other_gateways(props: dict[str, Any]) -> list[EtcdGateway]:
    """Client gateways of the other configured members that may be serving.

    A member whose peer port does not answer (not started, or still the distro's
    localhost-only etcd) or that is still founding a cluster (no member has published
    client URLs) is skipped without asking its client port, which would hang until
    the request times out: in a first deploy that cost 3-10 s per member.
    """
    mine = _peer_url(props)
    gateways = []
    for peer in props.get("bootstrap_cluster", {}).values():
        if peer == mine:
            continue
        members = etcd_peer_members(peer)
        if members is None or not any(m.get("clientURLs") for m in members):
            continue
        gateways.append(EtcdGateway(_client_url(peer, props["client_port"])))
    return gateways


def _find_cluster(props: dict[str, Any], extra_clients: list[str] | None = None) -> EtcdGateway | None:
    """A healthy member of the running cluster, other than this one, if any."""
    gateways = _other_gateways(props)
    gateways += [EtcdGateway(url) for url in extra_clients or [] if url != _my_client(props)]
    for gateway in gateways:
        if gateway.healthy():
            return gateway
    return None


def _member_by_peer(members: list[dict[str, Any]], peer_url: str) -> dict[str, Any] | None:
    return next((m for m in members if peer_url in m.get("peerURLs", [])), None)


class EtcdMemberProvider(HostProvider):
    CREATE_ONLY = frozenset({"bootstrap_cluster"})
    REPLACE_ON = frozenset({"name", "address", "peer_port", "client_port", "data_dir", "cluster_token"})
    OBSERVED: ClassVar[dict[str, Any]] = {"running": True, "in_cluster": True}
    OUTPUTS = frozenset({"member_id", "joined_as"})

    def _join_plan(self, ssh: Ssh, props: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
        """Decide (initial_cluster, state, learner) and register the member if joining."""
        peer = _peer_url(props)
        cluster = _find_cluster(props)
        if cluster is None:
            founding = ",".join(f"{n}={u}" for n, u in sorted(props["bootstrap_cluster"].items()))
            return founding, "new", None
        members = cluster.members()
        me = _member_by_peer(members, peer)
        if me is None:
            # A data dir left by an earlier incarnation of this member would make
            # etcd refuse to join; it holds nothing the cluster does not have.
            ssh.run(f"d={shlex.quote(props['data_dir'])}; if [ -d \"$d\" ]; then "
                    f"systemctl stop etcd; mv \"$d\" \"$d.stale-$(date +%s)\"; fi",
                    step="set aside a stale etcd data dir")
            added = wait_for(lambda: self._try_add(cluster, peer), timeout=90, interval=1,
                             what="etcd accepting the new member", host=props["address"])
            me = added["member"]
            members = added.get("members", [*members, me])
        named = [f"{m['name']}={m['peerURLs'][0]}" for m in members if m.get("name") and m is not me
                 and peer not in m.get("peerURLs", [])]
        initial = ",".join(sorted([*named, f"{props['name']}={peer}"]))
        return initial, "existing", me

    @staticmethod
    def _try_add(cluster: EtcdGateway, peer: str) -> dict[str, Any] | None:
        """etcd refuses a member while a previous one is not yet active long enough."""
        try:
            return cluster.add_member(peer, learner=True)
        except RestError as err:
            if "unhealthy cluster" in str(err) or "too many learner" in str(err):
                return None
            raise

    def _start(self, ssh: Ssh, props: dict[str, Any], initial: str, state: str) -> None:
        ssh.run("command -v etcd >/dev/null || "
                "{ echo 'etcd is not installed (Debian: etcd-server)'; exit 1; }",
                step="check etcd is installed")
        content = render.etcd_env(props, initial, state)
        changed = ssh.write_file(ENV_FILE, content, step="write /etc/default/etcd")
        active = ssh.run("systemctl is-active etcd", step="check etcd", check=False).stdout.strip()
        # Debian's unit waits for quorum, so never block on it.
        if changed or active != "active":
            ssh.run("systemctl enable etcd >/dev/null 2>&1; systemctl restart --no-block etcd",
                    step="start etcd")
        else:
            ssh.run("systemctl enable etcd >/dev/null 2>&1", step="enable etcd")

    def _wait_healthy(self, props: dict[str, Any], timeout: float = 180.0) -> None:
        me = EtcdGateway(_my_client(props))
        wait_for(me.healthy, timeout=timeout, interval=0.5, what="etcd member healthy", host=props["address"])

    def _promote(self, props: dict[str, Any], member: dict[str, Any]) -> None:
        """Promote a learner once etcd says it has caught up with the leader.

        A learner serves no cluster RPCs itself, so this goes through a voting member.
        """
        if not member.get("isLearner"):
            return

        def voting() -> bool:
            gateway = _find_cluster(props)
            if gateway is None:
                return False
            current = _member_by_peer(gateway.members(), _peer_url(props))
            if current is None:
                raise RestError(f"{props['name']} disappeared from the member list")
            if not current.get("isLearner"):
                return True
            try:
                gateway.promote_member(current["ID"])  # refused until the learner is in sync
            except RestError:
                return False
            return True

        wait_for(voting, timeout=120, interval=1, what="etcd learner promoted", host=props["address"])

    def _wait_started(self, ssh: Ssh, props: dict[str, Any]) -> None:
        """A founding member cannot be healthy before a quorum of its peers has started,
        and peers start one after another: wait for the process and its peer port."""
        port = int(props["peer_port"])

        def started() -> bool:
            state = ssh.run("systemctl is-active etcd", step="check etcd", check=False).stdout.strip()
            if state not in ("active", "activating"):
                raise SshError(props["address"], "start etcd", f"etcd is {state}: " + ssh.run(
                    "journalctl -u etcd -n 5 --no-pager -o cat", step="read etcd's journal",
                    check=False).stdout.strip()[-1000:])
            listening = ssh.run(f"ss -Htln 'sport = :{port}'", step="check etcd's peer port", check=False)
            return bool(listening.stdout.strip())

        wait_for(started, timeout=60, interval=1, what="etcd listening on its peer port",
                 host=props["address"])

    def create(self, props: dict[str, Any]) -> CreateResult:
        with self.ssh(props) as ssh:
            initial, state, me = self._join_plan(ssh, props)
            self._start(ssh, props, initial, state)
            if state == "new":
                self._wait_started(ssh, props)
            else:
                self._wait_healthy(props)
                if me is not None:
                    self._promote(props, me)
                    self._wait_healthy(props)
        member_id = ""
        if state != "new":  # a founding member serves no client request before its quorum
            try:
                mine = EtcdGateway(_my_client(props))
                member_id = (_member_by_peer(mine.members(), _peer_url(props)) or {}).get("ID", "")
            except RestError:
                pass
        outs = {**public(props), "member_id": member_id, "running": True,
                "in_cluster": True, "joined_as": state}
        return CreateResult(id_=f"{props['cluster_token']}/{props['name']}", outs=outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Only drift repair: everything identifying a member forces a replacement."""
        with self.ssh(news) as ssh:
            if not olds.get("in_cluster", True):
                initial, state, me = self._join_plan(ssh, news)
            else:
                initial, state, me = self._current_initial(news), "existing", None
            self._start(ssh, news, initial, state)
            self._wait_healthy(news)
            if me is not None:
                self._promote(news, me)
        member = _member_by_peer(EtcdGateway(_my_client(news)).members(), _peer_url(news)) or {}
        return UpdateResult(outs={**public(news), "member_id": member.get("ID", olds.get("member_id", "")),
                                  "running": True, "in_cluster": True,
                                  "joined_as": olds.get("joined_as", "new")})

    def _current_initial(self, props: dict[str, Any]) -> str:
        """An existing member ignores initial-cluster; keep what is on the host."""
        cluster = _find_cluster(props) or EtcdGateway(_my_client(props))
        try:
            members = cluster.members()
        except RestError:
            return ",".join(f"{n}={u}" for n, u in sorted(props["bootstrap_cluster"].items()))
        return ",".join(sorted(f"{m['name'] or props['name']}={m['peerURLs'][0]}" for m in members))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: is the member still in the cluster, and is its etcd running?"""
        outs = dict(props)
        cluster = _find_cluster(props, [_my_client(props)])
        if cluster is not None:
            try:
                outs["in_cluster"] = _member_by_peer(cluster.members(), _peer_url(props)) is not None
            except RestError:
                pass
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                active = ssh.run("systemctl is-active etcd", step="check etcd", check=False)
                outs["running"] = active.stdout.strip() == "active"
        except SshError:
            outs["running"] = False
        return ReadResult(id_=id_, outs=outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        removed_via_api = self._remove_from_cluster(props)
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                d = shlex.quote(props["data_dir"])
                ssh.run("systemctl disable --now etcd >/dev/null 2>&1 || true; "
                        f"if [ -d {d} ]; then mv {d} {d}.removed-$(date +%s); fi",
                        step="stop etcd and set its data dir aside")
        except SshError as err:
            if err.step != "connect over SSH" or not removed_via_api:
                raise
            # The host is gone (being replaced); the member is already out of the cluster.

    def _remove_from_cluster(self, props: dict[str, Any], patience: float = 90.0) -> bool:
        """Remove this member through a surviving one. True when the cluster no longer lists it.

        In a stack destroy every member is deleted at once, so the others may be
        leaving too: an unsafe-looking state is re-checked until `patience` runs out.
        """
        peer = _peer_url(props)
        deadline = time.monotonic() + patience
        known: list[str] = []
        while True:
            cluster = _find_cluster(props, known)
            if cluster is None:
                return False  # no other healthy member: the last one, or the cluster is down
            try:
                members = cluster.members()
                known = [m["clientURLs"][0] for m in members if m.get("clientURLs")]
                me = _member_by_peer(members, peer)
                if me is None:
                    return True
                others = [m for m in members if m is not me]
                if not others:
                    return False
                voters = [m for m in others if not m.get("isLearner")]
                healthy = [m for m in voters
                           if m.get("clientURLs") and EtcdGateway(m["clientURLs"][0]).healthy()]
                needed = len(voters) // 2 + 1
                if len(healthy) >= needed:
                    cluster.remove_member(me["ID"])
                    return True
                problem = (f"refused: after removing {props['name']} only {len(healthy)} of {len(voters)} "
                           f"remaining voting members are healthy; quorum needs {needed}")
            except RestError as err:
                problem = str(err)
            if time.monotonic() >= deadline:
                raise SshError(props["address"], "remove etcd member", problem)
            time.sleep(2)

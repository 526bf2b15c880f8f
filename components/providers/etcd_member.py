"""EtcdMember: one etcd cluster member on one host.

Follows etcd's runtime-reconfiguration order: a member joining an existing
cluster is first added through the v3 API (as a learner), then started with
initial-cluster-state=existing, and promoted to a voting member once it has
caught up. Members of a brand-new cluster start together with state=new.
Removal goes through the API from a surviving member, and is refused when it
would leave the cluster without quorum.

Membership changes one at a time: every decision about a cluster's membership (found,
join, repair, remove) holds that cluster's lock in the provider process, which serves
every EtcdMember of an `up`. A member that finds no member of its cluster answering
releases it at once: the members of a new cluster all decide to found it, with the same
initial cluster, and start together. The cluster then forms at once, and etcd decides its
cluster version at its first election instead of a version-monitor tick (4 s) later.

A refresh checks that the host's etcd is this member of OUR cluster (pgha's
/etc/default/etcd for it, its data directory, the unit active), not the distro's
default single-node etcd a fresh host runs, and whether any member of the cluster
answers at all. An `up` after a loss re-observes and follows `plan_repair`: a
member whose data is gone is removed and added again, a cluster of which every
member is lost is founded anew, and a cluster whose data survives only on members
that are down is never founded over (see plan_repair for each case).
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

from pulumi.dynamic import CreateResult, ReadResult, UpdateResult

from components import render
from components.providers.base import HostProvider, public
from components.transport.rest import EtcdGateway, RestError, etcd_peer_members
from components.transport.ssh import Ssh, SshError, SshTarget, UnitStopped, enable_unit, notify, wait_for

ENV_FILE = "/etc/default/etcd"
# pgha's drop-in for Debian's unit (templates/etcd-service-pgha.conf.j2).
DROP_IN = "/etc/systemd/system/etcd.service.d/pgha.conf"
# The settings in /etc/default/etcd that make a host's etcd this member of this cluster.
IDENTITY = ("ETCD_NAME", "ETCD_DATA_DIR", "ETCD_LISTEN_PEER_URLS", "ETCD_INITIAL_CLUSTER_TOKEN")

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def membership_lock(cluster_token: str) -> threading.Lock:
    """The lock every membership decision about one etcd cluster holds (see the module doc)."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(cluster_token, threading.Lock())


def _scheme(props: dict[str, Any]) -> str:
    """https when the member runs with pgha:tls (its spec has `tls`)."""
    return "https" if props.get("tls") else "http"


def _client_url(peer_url: str, client_port: int) -> str:
    url = urlparse(peer_url)
    return f"{url.scheme}://{url.hostname}:{client_port}"


def _peer_url(props: dict[str, Any]) -> str:
    return f"{_scheme(props)}://{props['address']}:{props['peer_port']}"


def _my_client(props: dict[str, Any]) -> str:
    return f"{_scheme(props)}://{props['address']}:{props['client_port']}"


def founding_peers(props: dict[str, Any]) -> dict[str, str]:
    """The founding members' peer URLs ({name: URL}) in this member's scheme: the state keeps the
    ones a cluster was founded with (bootstrap_cluster is create-only), which were http if it
    moved to TLS since (providers/tls_move.py)."""
    scheme = _scheme(props)
    return {name: f"{scheme}://{url.split('://', 1)[-1]}"
            for name, url in (props.get("bootstrap_cluster") or {}).items()}


def served_members(props: dict[str, Any], peer: str) -> list[dict[str, Any]] | None:
    """The member list the member at `peer` serves, or None if it does not answer.

    In plaintext, its peer port answers at once even before a quorum formed (see
    etcd_peer_members). With pgha:tls the peer port admits only etcd's peers (etcd checks that
    a peer's client certificate names the address it connects from, which pgha's does not), so
    pgha asks the member's client port, and only once it knows a leader (a status request is
    answered locally, without waiting): a founding member without quorum counts as silent.
    """
    if not props.get("tls"):
        return etcd_peer_members(peer)
    gateway = EtcdGateway(_client_url(peer, props["client_port"]), timeout=(1.0, 3.0))
    if not gateway.has_leader():
        return None
    try:
        return gateway.members()
    except RestError:
        return None


def _other_gateways(props: dict[str, Any]) -> list[EtcdGateway]:
    """Client gateways of the other configured members that may be serving.

    A member whose peer port does not answer (not started, or still the distro's
    localhost-only etcd) or that is still founding a cluster (no member has published
    client URLs) is skipped without asking its client port, which would hang until
    the request times out: in a first deploy that cost 3-10 s per member.
    """
    mine = _peer_url(props)
    gateways = []
    for peer in founding_peers(props).values():
        if peer == mine:
            continue
        members = served_members(props, peer)
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


def _our_peers(props: dict[str, Any]) -> set[str]:
    return {*founding_peers(props).values(), _peer_url(props)}


def _is_our_cluster(members: list[dict[str, Any]], props: dict[str, Any]) -> bool:
    """A member list is our cluster's when it names one of our peer URLs (a distro etcd
    answering on the same port lists only its own localhost peer)."""
    ours = _our_peers(props)
    return any(set(m.get("peerURLs", [])) & ours for m in members)


# --- what a host's etcd is (pure) -------------------------------------------------------


def env_settings(text: str) -> dict[str, str]:
    """KEY="value" lines of an environment file (comments and blank lines skipped)."""
    settings = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            settings[key] = value.strip().strip('"')
    return settings


def env_file_problem(text: str | None, props: dict[str, Any]) -> str:
    """Why /etc/default/etcd does not make this host's etcd this member ('' when it does)."""
    if text is None:
        return f"no {ENV_FILE}"
    have = env_settings(text)
    want = {"ETCD_NAME": props["name"], "ETCD_DATA_DIR": props["data_dir"],
            "ETCD_LISTEN_PEER_URLS": _peer_url(props), "ETCD_INITIAL_CLUSTER_TOKEN": props["cluster_token"]}
    if not any(key in have for key in IDENTITY):
        return f"{ENV_FILE} is not pgha's (the distro's default: a single-node etcd on localhost)"
    wrong = [f"{key}={have.get(key, '')!r}" for key, value in want.items() if have.get(key) != value]
    return f"{ENV_FILE} is for another member ({', '.join(wrong)})" if wrong else ""


@dataclass(frozen=True)
class HostEtcd:
    """One host's etcd as SSH sees it."""

    active: str  # `systemctl is-active etcd`
    config_problem: str  # env_file_problem: '' when the host runs this member's config
    has_data: bool  # <data_dir>/member exists

    @property
    def serves_member(self) -> bool:
        return self.active == "active" and not self.config_problem and self.has_data


def parse_host_probe(output: str, props: dict[str, Any]) -> HostEtcd:
    """HOST_PROBE's output: `<is-active> <yes|no>` on the first line, then the env file
    (or the single line `<no env file>`)."""
    first, _, rest = output.partition("\n")
    words = first.split()
    text = None if rest.strip() == "<no env file>" else rest
    return HostEtcd(active=words[0] if words else "unknown", config_problem=env_file_problem(text, props),
                    has_data=len(words) > 1 and words[1] == "yes")


ClusterAnswer = Literal["listed", "unstarted", "not listed", "silent"]


@dataclass(frozen=True)
class MemberView:
    """What a refresh records: the OBSERVED flags and, in words, what is wrong."""

    running: bool
    in_cluster: bool
    drift: str


def observe_member(props: dict[str, Any], cluster: ClusterAnswer, host: HostEtcd | None,
                   host_error: str = "") -> MemberView:
    problems = []
    if cluster == "silent":
        problems.append(f"no member of etcd cluster {props['cluster_token']} answers")
    elif cluster == "not listed":
        problems.append(f"etcd cluster {props['cluster_token']} does not list {props['name']}")
    if host is None:
        problems.append(f"the host is unreachable ({host_error})")
    else:
        if host.config_problem:
            problems.append(host.config_problem)
        if not host.has_data:
            problems.append(f"no etcd data ({props['data_dir']}/member)")
        if host.active != "active":
            problems.append(f"etcd is {host.active}")
    return MemberView(running=host is not None and host.serves_member,
                      in_cluster=cluster in ("listed", "unstarted"), drift="; ".join(problems))


# --- what `up` does about a member (pure) -----------------------------------------------

# What a repair found about another founding member, when no member answers:
PEER_LOST = "lost"  # reachable, and no etcd data of ours
PEER_HAS_DATA = "has data"  # holds etcd data of ours, does not serve it
PEER_NO_QUORUM = "serves without quorum"  # serves our cluster's data, but no quorum answers
# ... or "unknown: <why>" when its host cannot be checked.


@dataclass(frozen=True)
class Repair:
    action: Literal["restart", "rejoin", "join", "start_from_data", "found", "defer", "stop"]
    reason: str = ""


def plan_repair(props: dict[str, Any], cluster: ClusterAnswer, host: HostEtcd,
                peers: dict[str, str] | None = None) -> Repair:
    """How `up` brings this member back, from what it sees now.

    - the cluster answers and lists the member: restart it from its data, or, when its data
      is gone, remove it and add it again (a member restarted with an empty data dir makes
      etcd panic: its raft log no longer matches what the leader knows of it);
    - the cluster answers without it (or lists it as never started): join;
    - no member answers and this one has data: start from it (the others do the same);
    - no member answers and this one has no data: found the cluster anew only when every
      other founding member is confirmed lost; when others hold the data, they start from
      it in this `up` (if they are a quorum) and this member rejoins on the next one; with
      fewer than a quorum holding it, or hosts that cannot be checked, stop and say how on.
    """
    name, token, data = props["name"], props["cluster_token"], props["data_dir"]
    if cluster == "listed":
        if host.has_data:
            return Repair("restart")
        return Repair("rejoin", f"{name} lost its etcd data ({data}/member is gone): removing it from etcd "
                                f"cluster {token} and adding it again as a new member")
    if cluster == "unstarted":
        return Repair("join")
    if cluster == "not listed":
        return Repair("join", f"etcd cluster {token} does not list {name}: adding it")
    if host.has_data:
        return Repair("start_from_data", f"no member of etcd cluster {token} answers: starting {name} "
                                         f"from its data")
    peers = peers or {}
    unknown = {p: s for p, s in sorted(peers.items()) if s.startswith("unknown")}
    holding = sorted(p for p, s in peers.items() if s in (PEER_HAS_DATA, PEER_NO_QUORUM))
    silent = f"no member of etcd cluster {token} answers and {name} has no etcd data"
    if unknown:
        why = "; ".join(f"{p}: {s.removeprefix('unknown: ')}" for p, s in unknown.items())
        return Repair("stop", f"{silent}, and pgha cannot tell whether {', '.join(unknown)} still hold the "
                              f"cluster's data ({why}). Founding the cluster anew could discard it. Bring "
                              f"{', '.join(unknown)} back (or remove them from pgha:hosts) and run "
                              f"`pulumi up --refresh` again")
    if not holding:
        others = ", ".join(sorted(peers)) or "no other member"
        return Repair("found", f"every member of etcd cluster {token} is lost (none answers; no etcd data on "
                               f"{name}, {others}): founding the cluster anew on {name}, the others join it. "
                               f"The DCS content went with the old cluster; Patroni writes it again")
    quorum = (len(peers) + 1) // 2 + 1
    if len(holding) >= quorum:
        return Repair("defer", f"{silent}; {', '.join(holding)} still hold the cluster's data and start from "
                               f"it in this `up`. {name} joins them on the next `pulumi up --refresh`")
    return Repair("stop", f"{silent}; only {', '.join(holding)} of {len(peers) + 1} members still hold the "
                          f"cluster's data: not a quorum ({quorum}), so it cannot start from them. Either "
                          f"recover etcd from that data (etcd's disaster recovery: restart one of them with "
                          f"--force-new-cluster) and run `pulumi up --refresh`; or, if its content is not "
                          f"needed (Patroni writes its keys again), move it aside on {', '.join(holding)} "
                          f"(mv {data} {data}.old) and run `pulumi up --refresh` to found the cluster anew")


# --- transport ---------------------------------------------------------------------------

HOST_PROBE = ("a=$(systemctl is-active etcd 2>/dev/null); d=no; [ -d {data}/member ] && d=yes; "
              "echo \"${{a:-unknown}} $d\"; cat " + ENV_FILE + " 2>/dev/null || echo '<no env file>'")


def probe_host(ssh: Ssh, props: dict[str, Any]) -> HostEtcd:
    out = ssh.run(HOST_PROBE.format(data=shlex.quote(props["data_dir"])), step="check etcd", check=False)
    return parse_host_probe(out.stdout, props)


def _peer_target(props: dict[str, Any], address: str) -> SshTarget:
    """Another etcd host, reached with this member's SSH settings (stack-wide ones, unless
    a host overrides them: then it shows as 'unknown')."""
    return SshTarget.from_props({**props["connection"], "host": address}, props.get("ssh_private_key"))


def peer_states(props: dict[str, Any]) -> dict[str, str]:
    """What every other founding member holds, when no member of the cluster answers."""
    mine = _peer_url(props)
    states = {}
    for name, peer in sorted(founding_peers(props).items()):
        if peer == mine:
            continue
        members = served_members(props, peer)
        if members is not None and _is_our_cluster(members, props):
            states[name] = PEER_NO_QUORUM
            continue
        try:
            with Ssh(_peer_target(props, urlparse(peer).hostname or ""), connect_timeout=10) as ssh:
                found = ssh.run(f"[ -d {shlex.quote(props['data_dir'])}/member ] && echo yes || echo no",
                                step="check etcd data", check=False).stdout.strip()
            states[name] = PEER_HAS_DATA if found == "yes" else PEER_LOST
        except SshError as err:
            states[name] = f"unknown: {err}"
    return states


def etcd_unit_failed(ssh: Ssh, name: str) -> Callable[[], str | None]:
    """A check for a wait: the cause, once etcd's unit on member `name`'s host has stopped (its
    state and the end of its journal)."""
    stopped = UnitStopped()

    def check() -> str | None:
        # A failed start that systemd will try again (pgha's drop-in: Restart=on-failure) shows
        # as `activating` in the auto-restart sub-state: it failed, and its journal says why.
        out = ssh.run("systemctl show -p ActiveState -p SubState etcd", step="check etcd", check=False).stdout
        fields = dict(line.partition("=")[::2] for line in out.split())
        state = fields.get("ActiveState", "")
        if fields.get("SubState") == "auto-restart":
            state = "failed (systemd will start it again)"
        elif not stopped(state):
            return None
        journal = ssh.run("journalctl -u etcd -n 5 --no-pager -o cat", step="read etcd's journal",
                          check=False).stdout.strip()[-1000:]
        return f"etcd on {name} is {state}: {journal}"

    return check


class EtcdMemberProvider(HostProvider):
    CREATE_ONLY = frozenset({"bootstrap_cluster"})
    REPLACE_ON = frozenset({"name", "address", "peer_port", "client_port", "data_dir", "cluster_token"})
    OBSERVED: ClassVar[dict[str, Any]] = {"running": True, "in_cluster": True}
    # `drift`: what the last refresh found wrong, in words ('' when nothing).
    OUTPUTS = frozenset({"member_id", "joined_as", "drift"})

    def _join_plan(self, ssh: Ssh, props: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
        """Decide (initial_cluster, state, learner) and register the member if joining."""
        peer = _peer_url(props)
        cluster = _find_cluster(props)
        if cluster is None:
            founding = ",".join(f"{n}={u}" for n, u in sorted(founding_peers(props).items()))
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

    def _start(self, ssh: Ssh, props: dict[str, Any], initial: str, state: str,
               keep_config: bool = False) -> None:
        """Write this member's /etc/default/etcd and (re)start etcd if needed. keep_config:
        a host that already runs this member from its data keeps its file and its process."""
        ssh.run("command -v etcd >/dev/null || "
                "{ echo 'etcd is not installed (Debian: etcd-server)'; exit 1; }",
                step="check etcd is installed")
        changed = False
        self._write_drop_in(ssh, props)
        if not keep_config:
            content = render.etcd_env(props, initial, state)
            changed = ssh.write_file(ENV_FILE, content, step="write /etc/default/etcd")
        active = ssh.run("systemctl is-active etcd", step="check etcd", check=False).stdout.strip()
        # Debian's unit waits for quorum, so never block on it.
        if changed or active != "active":
            ssh.run(f"{enable_unit('etcd')}; systemctl restart --no-block etcd",
                    step="start etcd")
        else:
            ssh.run(enable_unit("etcd"), step="enable etcd")

    @staticmethod
    def _write_drop_in(ssh: Ssh, props: dict[str, Any]) -> None:
        """The unit waits for the network and retries a failed start (Debian's restarts only on
        a signal or a timeout): after a reboot that raced the network, the member comes back."""
        directory = shlex.quote(DROP_IN.rsplit("/", 1)[0])
        ssh.run(f"install -d -m 0755 {directory}", step="make etcd's drop-in dir")
        if ssh.write_file(DROP_IN, render.etcd_unit_drop_in(props), step=f"write {DROP_IN}"):
            ssh.run("systemctl daemon-reload", step="reload systemd for etcd's drop-in")

    @staticmethod
    def _unit_failed(ssh: Ssh | None, props: dict[str, Any]) -> Callable[[], str | None] | None:
        return None if ssh is None else etcd_unit_failed(ssh, props["name"])

    def _wait_healthy(self, props: dict[str, Any], timeout: float = 180.0, ssh: Ssh | None = None) -> None:
        me = EtcdGateway(_my_client(props))
        wait_for(me.healthy, timeout=timeout, interval=0.25, what=f"etcd member {props['name']} healthy",
                 host=props["address"], blocked=self._unit_failed(ssh, props), blocked_every=2.0)

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

        wait_for(voting, timeout=120, interval=1, what=f"etcd learner {props['name']} promoted",
                 host=props["address"])

    def _wait_started(self, ssh: Ssh, props: dict[str, Any]) -> None:
        """A founding member cannot be healthy before a quorum of its peers has started:
        wait for the process and its peer port (PatroniCluster waits for the quorum)."""
        port = int(props["peer_port"])

        def started() -> bool:
            listening = ssh.run(f"ss -Htln 'sport = :{port}'", step="check etcd's peer port", check=False)
            return bool(listening.stdout.strip())

        wait_for(started, timeout=60, interval=0.2,
                 what=f"etcd on {props['name']} listening on its peer port", host=props["address"],
                 blocked=self._unit_failed(ssh, props), blocked_every=2.0)

    def _member_id(self, props: dict[str, Any], default: str = "") -> str:
        """This member's ID from its own client port, if it serves (a founding member without
        quorum serves no client request: `has_leader` asks without waiting)."""
        mine = EtcdGateway(_my_client(props))
        if not mine.has_leader():
            return default
        try:
            return (_member_by_peer(mine.members(), _peer_url(props)) or {}).get("ID", default)
        except RestError:
            return default

    def create(self, props: dict[str, Any]) -> CreateResult:
        with self.ssh(props) as ssh:
            with membership_lock(props["cluster_token"]):
                initial, state, me = self._join_plan(ssh, props)
                if state != "new":
                    self._start(ssh, props, initial, state)
                    self._wait_healthy(props, ssh=ssh)
                    if me is not None:
                        self._promote(props, me)
                        self._wait_healthy(props, ssh=ssh)
            if state == "new":
                # Outside the lock: no member of the cluster answers, so every founding member
                # decides "new" with the same initial cluster, and they start together.
                self._start(ssh, props, initial, state)
                self._wait_started(ssh, props)
        # A founding member serves no client request before its quorum.
        member_id = self._member_id(props) if state != "new" else ""
        outs = {**public(props), "member_id": member_id, "running": True,
                "in_cluster": True, "joined_as": state, "drift": ""}
        return CreateResult(id_=f"{props['cluster_token']}/{props['name']}", outs=outs)

    def _cluster_answer(self, cluster: EtcdGateway | None, props: dict[str, Any]
                        ) -> tuple[ClusterAnswer, dict[str, Any] | None]:
        """Whether our cluster answers through `cluster`, and this member's entry in it."""
        if cluster is None:
            return "silent", None
        members = cluster.members()
        if not _is_our_cluster(members, props):
            return "silent", None
        me = _member_by_peer(members, _peer_url(props))
        if me is None:
            return "not listed", None
        return ("listed" if me.get("name") else "unstarted"), me

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Repair drift (everything identifying a member forces a replacement), from what
        the host and the cluster show now: see plan_repair."""
        address, joined_as = news["address"], olds.get("joined_as", "new")
        with self.ssh(news) as ssh, membership_lock(news["cluster_token"]):
            host = probe_host(ssh, news)
            cluster = _find_cluster(news)
            answer, me = self._cluster_answer(cluster, news)
            peers = peer_states(news) if answer == "silent" and not host.has_data else None
            repair = plan_repair(news, answer, host, peers)
            if repair.reason:
                notify(address, repair.reason, warning=repair.action in ("rejoin", "found", "defer", "stop"))
            if repair.action == "stop":
                raise SshError(address, "repair etcd member", repair.reason)
            if repair.action == "defer":
                return UpdateResult(outs={**public(news), "member_id": olds.get("member_id", ""),
                                          "running": False, "in_cluster": False, "joined_as": joined_as,
                                          "drift": repair.reason})
            if repair.action == "restart":
                self._start(ssh, news, self._current_initial(news), "existing")
                self._wait_healthy(news, ssh=ssh)
            elif repair.action == "start_from_data":
                self._start(ssh, news, self._current_initial(news), "existing",
                            keep_config=host.serves_member)
                self._wait_started(ssh, news)
            elif repair.action == "found":
                # A cluster of this member alone is healthy at once; the others join it one by
                # one as learners, whatever the membership has become since it was founded.
                self._start(ssh, news, f"{news['name']}={_peer_url(news)}", "new")
                self._wait_healthy(news, ssh=ssh)
                joined_as = "new"
            else:  # join, rejoin
                if repair.action == "rejoin" and me is not None:
                    self._remove_stale(news, me)
                initial, state, learner = self._join_plan(ssh, news)
                self._start(ssh, news, initial, state)
                self._wait_healthy(news, ssh=ssh)
                if learner is not None:
                    self._promote(news, learner)
                    self._wait_healthy(news, ssh=ssh)
        member_id = self._member_id(news, olds.get("member_id", ""))
        return UpdateResult(outs={**public(news), "member_id": member_id, "running": True, "in_cluster": True,
                                  "joined_as": joined_as, "drift": ""})

    def _remove_stale(self, props: dict[str, Any], me: dict[str, Any]) -> None:
        """Remove this member's entry, whose data is gone, before adding it again."""
        if not self._remove_from_cluster(props):
            raise SshError(props["address"], "remove the member whose data is gone",
                           f"no other member of etcd cluster {props['cluster_token']} can remove "
                           f"{props['name']} (ID {me.get('ID', '?')})")

    def _current_initial(self, props: dict[str, Any]) -> str:
        """An existing member ignores initial-cluster; keep what is on the host."""
        cluster = _find_cluster(props) or EtcdGateway(_my_client(props))
        try:
            members = cluster.members()
        except RestError:
            return ",".join(f"{n}={u}" for n, u in sorted(founding_peers(props).items()))
        return ",".join(sorted(f"{m['name'] or props['name']}={m['peerURLs'][0]}" for m in members))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Refresh: is this host's etcd this member of our cluster, and does the cluster
        (any member of it) answer and list it?"""
        outs = dict(props)
        answer: ClusterAnswer = "silent"
        try:
            answer, _ = self._cluster_answer(_find_cluster(props, [_my_client(props)]), props)
        except RestError:
            answer = "listed" if props.get("in_cluster", True) else "not listed"  # answered, then not
        host, host_error = None, ""
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                host = probe_host(ssh, props)
        except SshError as err:
            host_error = str(err)
        view = observe_member(props, answer, host, host_error)
        outs.update(running=view.running, in_cluster=view.in_cluster, drift=view.drift)
        if view.drift:
            notify(props["address"], f"etcd member {props['name']}: {view.drift}", warning=True)
        return ReadResult(id_=id_, outs=outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Leave the cluster, stop etcd and set its data aside. What cannot be reached (the
        cluster or the host is gone) is skipped and said; a distro etcd that is not this
        member (a re-imaged host) is left alone."""
        with membership_lock(props["cluster_token"]):
            self._leave(props)

    def _leave(self, props: dict[str, Any]) -> None:
        address = props["address"]
        removed_via_api = self._remove_from_cluster(props)
        try:
            with self.ssh(props, connect_timeout=10) as ssh:
                host = probe_host(ssh, props)
                if host.config_problem and not host.has_data:
                    notify(address, f"etcd there is not member {props['name']} ({host.config_problem}): "
                           f"left as it is", warning=True)
                    return
                d = shlex.quote(props["data_dir"])
                ssh.run("systemctl disable --now etcd >/dev/null 2>&1 || true; "
                        f"if [ -d {d} ]; then mv {d} {d}.removed-$(date +%s); fi; "
                        f"if [ -f {DROP_IN} ]; then rm -f {DROP_IN}; systemctl daemon-reload; fi",
                        step="stop etcd, set its data dir aside and remove pgha's drop-in")
        except SshError as err:
            if err.step != "connect over SSH":
                raise
            left = ("" if removed_via_api else
                    f"; no other member of etcd cluster {props['cluster_token']} answers to remove it from")
            notify(address, f"unreachable ({err}): skipped stopping etcd member {props['name']} and setting "
                   f"its data aside{left}", warning=True)
    def _remove_from_cluster(self, props: dict[str, Any], patience: float = 90.0) -> bool:
        """Remove this member through a surviving one. True when the cluster no longer lists it.

        Members leave one at a time (membership_lock), but a member that has just left may
        still count as unhealthy: an unsafe-looking state is re-checked until `patience` runs out.
        """
        peer = _peer_url(props)
        deadline = time.monotonic() + patience
        known: list[str] = []
        told = False
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
            if not told:
                notify(props["address"], f"waiting up to {patience:.0f}s to remove etcd member "
                       f"{props['name']} safely: {problem}")
                told = True
            time.sleep(2)

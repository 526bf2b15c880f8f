"""TlsTrust: the CA bundle every host trusts, changed everywhere before any new certificate is used.

A CA rotation (components/providers/tls_certificates.py) puts the new CA beside the old one and
issues every certificate again. If a host served a certificate of the new CA while another host
still trusted only the old one, that other host would refuse it: etcd peers would split, Patroni
would lose its DCS and HAProxy its checks. So a change of the trusted CAs is its own first step,
and every certificate file (TlsFiles) waits for it:

1. the files read at each use or on a reload get the new bundle (Patroni's, the repository
   host's), and HAProxy reloads;
2. then each etcd member, one at a time: its bundle, a restart (etcd 3.4 reads its trusted CAs
   only when it starts), and a wait until it is healthy again, before the next one. A restart
   is refused while the other members could not keep a quorum without it.

Every host still serves its old certificate during this step, and every host trusts the old CA,
so each restart keeps the cluster whole. pgha's own calls in it show the previous client
certificate (the one the state had). Only then do the new certificates go out.

Creating it touches no host: the files are written by TlsFiles before each service first
starts; this resource only records which CAs they hold.
"""

from __future__ import annotations

import shlex
from typing import Any, ClassVar

from pulumi.dynamic import CreateResult, DiffResult, UpdateResult

from components import tls
from components.providers.base import HostProvider, public
from components.providers.etcd_member import etcd_unit_failed
from components.providers.tls_files import RELOAD
from components.tls_plan import dropped_trust_problem
from components.transport.rest import EtcdGateway, RestError
from components.transport.ssh import Ssh, notify, wait_for
from components.transport.tls_client import client_tls


class TrustRolloutRefused(RuntimeError):
    """A restart for the new CA bundle that would cost etcd its quorum."""


def voting_members(listed: list[dict[str, Any]]) -> dict[str, str | None]:
    """etcd's member list as {name: client URL}, voting members only (a learner is not in the
    quorum); a member added but not started yet has no client URL and counts as not healthy."""
    return {str(m.get("name") or m.get("ID")): (m.get("clientURLs") or [None])[0]
            for m in listed if not m.get("isLearner")}


def leader_last(members: list[dict[str, Any]], leader: str | None) -> list[dict[str, Any]]:
    """The etcd members in the order they restart: the raft leader last, so that the cluster
    elects a leader once, not at every restart that happens to hit the newly elected one."""
    return sorted(members, key=lambda t: t["host"] == leader)


def quorum_problem(member: str, others: dict[str, bool]) -> str:
    """Why restarting `member` now would leave etcd without a quorum ('' when it would not):
    `others` is every other member and whether it is healthy."""
    size = len(others) + 1
    need = size // 2 + 1
    healthy = sum(others.values())
    if healthy >= need:
        return ""
    down = ", ".join(sorted(name for name, ok in others.items() if not ok))
    return (f"restarting etcd on {member} now would leave {healthy} of {size} members, below a quorum "
            f"of {need}: {down} not healthy. Bring them back (or remove them from the stack), then "
            "run `up` again; the new CA bundle is already on the hosts done so far")


class TlsTrustProvider(HostProvider):
    OUTPUTS: ClassVar[frozenset[str]] = frozenset()

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        old, new = olds.get("trust_pem"), news.get("trust_pem")
        # A CA being rotated is not known in a preview (an output of its update): it keeps the old one.
        if isinstance(old, str) and isinstance(new, str) and "BEGIN CERTIFICATE" in new:
            self._refuse_dropping_trust(olds, news)
        return super().diff(id_, olds, news)

    @staticmethod
    def _refuse_dropping_trust(olds: dict[str, Any], news: dict[str, Any]) -> None:
        problem = dropped_trust_problem(str(olds.get("trust_pem")), str(news["trust_pem"]), tls.utcnow(),
                                        str(news.get("source") or "generated"))
        if problem:
            raise TrustRolloutRefused(problem)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['scope']}-trust", outs=public(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if olds.get("trust_pem") == news["trust_pem"]:
            # Hosts came or went: their files are TlsFiles' to write or remove.
            return UpdateResult(outs=public(news))
        # Known only now when the CA is being replaced: checked before any host is touched.
        self._refuse_dropping_trust(olds, news)
        # The calls below find every host on its old certificate, and some not yet trusting the
        # new CA: pgha shows the client certificate the state had.
        with client_tls(olds.get("tls_client") or news.get("tls_client")):
            targets = list(news["targets"])
            for target in (t for t in targets if not t["restart"]):
                self._write(target, news)
            members = [t for t in targets if t["restart"]]
            for target in leader_last(members, self._leader(dict(news["etcd_members"]))):
                self._roll_etcd(target, news)
        return UpdateResult(outs=public(news))

    def _write(self, target: dict[str, Any], props: dict[str, Any], ssh: Ssh | None = None) -> bool:
        """The bundle into the target's file, where its directory exists (a host still being
        added gets it from its TlsFiles). True when the file changed."""
        path = target["path"]
        directory = path.rsplit("/", 1)[0] or "/"

        def write(ssh: Ssh) -> bool:
            exists = ssh.run(f"[ -d {shlex.quote(directory)} ] && echo yes || echo no",
                             step=f"look for {directory}", check=False).stdout.strip() == "yes"
            if not exists:
                return False
            changed = ssh.write_file(path, str(props["trust_pem"]), mode=target["mode"],
                                     owner=target["owner"], group=target["group"],
                                     step=f"write the CA bundle {path}")
            if changed and target["service"] == "haproxy":
                ssh.run(RELOAD["haproxy"], step="reload haproxy for the new CA bundle")
            return changed

        if ssh is not None:
            return write(ssh)
        with self.host_ssh(target, props) as own:
            changed = write(own)
        if changed:
            notify(target["connection"]["host"], f"{target['service']}: the new CA bundle is in place")
        return changed

    def _roll_etcd(self, target: dict[str, Any], props: dict[str, Any]) -> None:
        """One member: its bundle and a restart, with the others keeping a quorum meanwhile."""
        host = target["connection"]["host"]
        members: dict[str, str] = dict(props["etcd_members"])
        me = target["host"]
        with self.host_ssh(target, props) as ssh:
            # The file first: etcd reads it only when it starts.
            changed = self._write(target, props, ssh)
            active = ssh.run("systemctl is-active -q etcd && echo active || echo inactive",
                             step="check etcd", check=False).stdout.strip() == "active"
            # A re-run after a failure finds the file in place: etcd started before it was written
            # still trusts the old bundle only. A stopped etcd reads it when it starts.
            if not active or not (changed or self._started_before(ssh, target["path"])):
                return
            others = {name: bool(url) and EtcdGateway(url).healthy()
                      for name, url in self._voting(members).items() if name != me}
            problem = quorum_problem(me, others)
            if problem:
                raise TrustRolloutRefused(f"{host}: {problem}")
            ssh.run("systemctl restart --no-block etcd", step="restart etcd for the new CA bundle")
            wait_for(EtcdGateway(members[me]).healthy, timeout=120, interval=0.5,
                     what=f"etcd member {me} healthy again after its restart for the new CA bundle",
                     host=host, blocked=etcd_unit_failed(ssh, me), blocked_every=2.0)
        notify(host, "etcd restarted: it trusts the new CA bundle")

    @staticmethod
    def _leader(configured: dict[str, str]) -> str | None:
        """The name of etcd's raft leader now, if a member says."""
        for url in configured.values():
            gateway = EtcdGateway(url)
            try:
                leader = str(gateway.status().get("leader", ""))
                listed = gateway.members()
            except RestError:
                continue
            return next((str(m.get("name")) for m in listed if str(m.get("ID")) == leader), None)
        return None

    @staticmethod
    def _voting(configured: dict[str, str]) -> dict[str, str | None]:
        """The cluster's voting members as etcd lists them (a member this `up` adds is not one
        yet), or the configured ones when no member answers."""
        for url in configured.values():
            try:
                return voting_members(EtcdGateway(url).members())
            except RestError:
                continue
        return dict(configured)

    @staticmethod
    def _started_before(ssh: Ssh, path: str) -> bool:
        """Whether the running etcd started before `path` was last written."""
        out = ssh.run(f"echo $(stat -c %Y {shlex.quote(path)}) "
                      "$(date -d \"$(systemctl show -p ActiveEnterTimestamp --value etcd)\" +%s)",
                      step="compare etcd's start with its CA bundle", check=False).stdout.split()
        return len(out) == 2 and all(p.isdigit() for p in out) and int(out[0]) >= int(out[1])

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Nothing on the hosts: TlsFiles removes the files."""

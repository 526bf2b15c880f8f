"""The plan `pulumi up` will follow, in an operator's words, and what a reviewer must weigh.

Derived from the preview's steps only: a preview contacts no host, so the leader is the one
recorded in the state (the PatroniLeader's `current_leader`, else the nodes' `role` outputs),
"as of the last up/refresh". The order is `up`'s: etcd joins, the leader moved off a removed
host, installs, pg_hba reloads and new nodes, HAProxy, the dynamic configuration (and its
rolling restart), `pgha:leader`, roles; deletions come last, as the engine runs them.

Who takes over the leader role follows components/succession.py, with what a preview can
know: tags from the inputs, the synchronous mode from the dynamic configuration; replication
lag and which replica is the synchronous standby are known only when `up` runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from components.pg_params import RESTART_REQUIRED
from components.succession import Member, SyncMode
from components.transport.rest import LEADER_ROLES
from review.preview import CREATE, DELETE, REPLACE, UPDATE, Preview, Step
from review.properties import MISSING, Change, StepChanges, normalized_inputs, step_changes, text
from review.resources import (
    KINDS,
    describe,
    install_part,
    is_logical,
    role_words,
    scope_of,
    script_title,
    short_name,
)

AS_OF = "as of the last up/refresh"
TAG_MEANING = {
    "nofailover": ("can no longer become leader", "may become leader again"),
    "noloadbalance": ("leaves HAProxy's replica backend (Patroni's /replica answers 503)",
                      "joins HAProxy's replica backend again"),
    "nosync": ("is never chosen as synchronous standby", "may be chosen as synchronous standby again"),
    "clonefrom": ("is preferred as the source of new replicas", "is no longer preferred for cloning"),
    "failover_priority": ("changes its rank among failover candidates",) * 2,
}
CHECK_WORDS = {"inter_ms": ("inter", " ms"), "fastinter_ms": ("fastinter", " ms"), "fall": ("fall", ""),
               "rise": ("rise", "")}
BACKENDS = {"primary_servers": "primary", "replica_servers": "replica"}
PORT_WORDS = {"primary_port": "primary port", "replica_port": "replica port", "stats_port": "stats port"}
DCS_KEYS = ("ttl", "loop_wait", "retry_timeout", "maximum_lag_on_failover", "synchronous_mode",
            "use_pg_rewind", "use_slots")
# PatroniNode inputs that are not part of patroni.yml: a change to them reloads nothing.
NODE_STATE_ONLY = frozenset({"connection", "keep_data_on_destroy", "ssh_private_key"})
# A server of a backend: `primary_servers.pg5` (today), `servers[pg5]` (a stored older shape).
SERVER_PATH = re.compile(r'^(primary_servers|replica_servers)(?:\.|\[")([^"\]]+)(?:"\])?$'
                         r"|^servers\[([^\]]+)\]")
PARAM_PATH = re.compile(r"^(?:parameters_reload|parameters_restart|dcs\.postgresql\.parameters)\.(.+)$")


@dataclass(frozen=True)
class Concern:
    """Something a reviewer must weigh before merging."""

    topic: str
    text: str


@dataclass(frozen=True)
class Plan:
    lines: tuple[str, ...]
    concerns: tuple[Concern, ...]
    expect: str
    no_changes: bool = False
    destroy: bool = False


def quorum(members: int) -> int:
    return members // 2 + 1 if members else 0


def tolerated(members: int) -> int:
    return members - quorum(members) if members else 0


def _failures(n: int) -> str:
    return f"{n} failure" if n == 1 else f"{n} failures"


def etcd_shape(before: int, after: int) -> str:
    """`3 → 4 members, quorum 2 → 3, tolerates 1 → 1 failure` (one side when unchanged)."""
    if before == after:
        return f"{after} members, quorum {quorum(after)}, tolerates {_failures(tolerated(after))}"
    return (f"{before} → {after} members, quorum {quorum(before)} → {quorum(after)}, "
            f"tolerates {tolerated(before)} → {_failures(tolerated(after))}")


def names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _either(items: list[str]) -> str:
    return " or ".join(items) if items else "none"


def _arrow(old: Any, new: Any) -> str:
    if old is MISSING:
        return f"unset → {text(new)}"
    if new is MISSING:
        return f"{text(old)} → removed"
    return f"{text(old)} → {text(new)}"


@dataclass
class Topology:
    """The cluster before and after, as far as the preview's states tell."""

    etcd_before: list[str] | None = None
    etcd_after: list[str] | None = None
    nodes_before: list[str] | None = None
    nodes_after: list[str] | None = None
    leader: str | None = None  # as of the last up/refresh
    preferred: str | None = None  # pgha:leader after this change
    tags_before: dict[str, dict[str, Any]] = field(default_factory=dict)
    tags_after: dict[str, dict[str, Any]] = field(default_factory=dict)
    sync_before: SyncMode = SyncMode.OFF
    sync_after: SyncMode = SyncMode.OFF
    restart_policy: str = "rolling"


def _lists(step: Step | None, key: str) -> tuple[list[str] | None, list[str] | None]:
    if step is None:
        return None, None
    old = [str(x) for x in step.old_inputs.get(key) or []] if step.old_inputs is not None else []
    new = [str(x) for x in step.new_inputs.get(key) or []] if step.new_inputs is not None else []
    return old, new


def topology(preview: Preview, scope: str) -> Topology:
    top = Topology()
    guard = next(iter(preview.of_kind("MembershipGuard")), None)
    cluster = next((s for s in preview.of_kind("PatroniCluster") if s.custom), None)
    top.etcd_before, top.etcd_after = _lists(guard, "etcd_members")
    top.nodes_before, top.nodes_after = _lists(cluster, "members")
    members, nodes = preview.of_kind("EtcdMember"), preview.of_kind("PatroniNode")
    if top.etcd_before is None and preview.has_sames:
        top.etcd_before = [short_name(s, scope) for s in members if s.old_inputs is not None]
        top.etcd_after = [short_name(s, scope) for s in members if s.new_inputs is not None]
    if top.nodes_before is None and preview.has_sames:
        top.nodes_before = [short_name(s, scope) for s in nodes if s.old_inputs is not None]
        top.nodes_after = [short_name(s, scope) for s in nodes if s.new_inputs is not None]
    for node in nodes:
        name = short_name(node, scope)
        if node.old_inputs is not None:
            top.tags_before[name] = node.old_inputs.get("tags") or {}
        if node.new_inputs is not None:
            top.tags_after[name] = node.new_inputs.get("tags") or {}
    leader_step = next(iter(preview.of_kind("PatroniLeader")), None)
    if leader_step is not None:
        current = (leader_step.old_outputs or {}).get("current_leader")
        top.leader = current if isinstance(current, str) and current else None
        top.preferred = str((leader_step.new_inputs or {}).get("leader") or "") or None
    if top.leader is None:
        leading = [short_name(n, scope) for n in nodes if (n.old_outputs or {}).get("role") in LEADER_ROLES]
        top.leader = leading[0] if len(leading) == 1 else None
    config = next(iter(preview.of_kind("PatroniDynamicConfig")), None)
    if config is not None:
        old = normalized_inputs(config.kind, config.old_inputs or {})
        new = normalized_inputs(config.kind, config.new_inputs or {})
        top.sync_before = _sync_mode(old if config.old_inputs is not None else new)
        top.sync_after = _sync_mode(new if config.new_inputs is not None else old)
        top.restart_policy = str(config.inputs.get("restart_policy") or "rolling")
    return top


def _sync_mode(inputs: dict[str, Any]) -> SyncMode:
    dcs = inputs.get("dcs") or {}
    return SyncMode.from_setting(dcs.get("synchronous_mode", False))


def _member(name: str, tags: dict[str, Any]) -> Member:
    nofailover = tags.get("nofailover")
    priority = tags.get("failover_priority", 1)
    return Member(name=name, role="replica", state="streaming",
                  nofailover=None if nofailover is None else bool(nofailover),
                  failover_priority=int(priority) if isinstance(priority, (int, float)) else 1)


@dataclass
class _Planner:
    preview: Preview
    scope: str
    top: Topology
    lines: list[str] = field(default_factory=list)
    concerns: list[Concern] = field(default_factory=list)
    switchovers: int = 0
    maybe_switchovers: int = 0
    leader_now: str | None = None  # who leads at this point of the plan (None: not known)
    restart_in_place: str | None = None  # a lone leader restarted without a switchover
    replica_sessions_cut: bool = False
    tls_move: bool = False  # a running plaintext cluster moves to TLS (EtcdTlsMove does the host work)
    stepped_down: set[str] = field(default_factory=set)  # leaders switched away from in this plan
    grouped: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # per-host concerns

    def warn(self, topic: str, text_: str) -> None:
        self.concerns.append(Concern(topic, text_))

    def warn_for(self, host: str, topic: str, template: str) -> None:
        """A concern that reads the same for several hosts: one line naming them all (`{hosts}`)."""
        hosts = self.grouped.setdefault((topic, template), [])
        if not hosts:
            self.warn(topic, template)  # placeholder, filled in by finish()
        hosts.append(host)

    def finish(self) -> list[Concern]:
        return [Concern(c.topic, c.text.replace("{hosts}", names(self.grouped[(c.topic, c.text)])))
                if (c.topic, c.text) in self.grouped else c for c in self.concerns]

    def changed(self, kind: str, *ops: str) -> list[Step]:
        steps = [s for s in self.preview.of_kind(kind) if s.custom and s.op in ops]
        return sorted(steps, key=lambda s: self.preview.host_key(self.host(s)))

    def host(self, step: Step) -> str:
        return short_name(step, self.scope)

    def hosts(self, steps: list[Step]) -> list[str]:
        return [self.host(s) for s in steps]

    def leader_words(self) -> str:
        return f"the leader ({self.leader_now}, {AS_OF})" if self.leader_now else "the leader"

    def successor(self, pool: list[str], tags: dict[str, dict[str, Any]], sync: SyncMode,
                  preferred: str | None) -> tuple[str, bool]:
        """(who succession.py would pick, whether the preview can name them) among `pool`."""
        eligible = [n for n in pool if not _member(n, tags.get(n) or {}).promotion_barred]
        if not eligible:
            return "no replica that may lead", False
        if sync is not SyncMode.OFF:
            standby = "the synchronous standby" if sync is SyncMode.ON else "a quorum standby"
            hint = f"{preferred} if it is one" if preferred in eligible else _either(eligible)
            return f"{standby} ({hint})", False
        if preferred in eligible:
            return str(preferred), True
        if len(eligible) == 1:
            return eligible[0], True
        return f"the replica with the least lag ({_either(eligible)})", False

    def switchover(self, target: str, named: bool, why: str) -> str:
        source = self.leader_now or "the leader"
        if self.leader_now:
            self.stepped_down.add(self.leader_now)
        self.switchovers += 1
        self.warn("Switchover", f"{source} → {target}: {why}.")
        self.leader_now = target if named else None
        return f"switchover {source} → {target}"

    # --- etcd ---------------------------------------------------------------------------------

    def etcd(self) -> None:
        created = self.changed("EtcdMember", CREATE)
        replaced = self.changed("EtcdMember", REPLACE)
        updated = self.changed("EtcdMember", UPDATE)
        before, after = self.top.etcd_before, self.top.etcd_after
        if created and not before:
            founders = self.hosts(created)
            self.lines.append(f"etcd: {names(founders)} found a new cluster together "
                              f"({etcd_shape(len(founders), len(founders))})")
        elif created:
            joined = self.hosts(created)
            verb = "joins" if len(joined) == 1 else "join one at a time"
            shape = f": {etcd_shape(len(before or []), len(before or []) + len(joined))}" if before else ""
            self.lines.append(f"etcd: {names(joined)} {verb} (member add as a learner → start → "
                              f"promote){shape}")
        for step in replaced:
            why = ", ".join(step.replace_reasons) or "a replace-only input"
            self.lines.append(f"etcd: {self.host(step)} is replaced ({why} changes): removed through the "
                              f"v3 API, then added again as a learner and promoted")
            self.warn("Replaced", f"etcd member {self.host(step)} is deleted and created again ({why}); "
                                  f"quorum counts one member fewer meanwhile.")
        for step in updated:
            if self.moved_only(step):
                continue
            found = step_changes(step)
            if any(c.path.endswith("(refresh)") for c in found.changes):
                self.lines.append(f"etcd: the last refresh found {self.host(step)} stopped or out of the "
                                  f"member list; `up` starts it again (re-adding it as a learner if needed)")
            else:
                keys = ", ".join(sorted(found.tops)) or "no visible change"
                self.lines.append(f"etcd: {self.host(step)} updated ({keys})")
        leaving = self.hosts(self.changed("EtcdMember", DELETE))
        if leaving and not (created or replaced):
            self.lines.append(f"etcd: {names(leaving)} {'leaves' if len(leaving) == 1 else 'leave'} last, "
                              f"once nothing else needs {'it' if len(leaving) == 1 else 'them'} (below)")
        if not (created or replaced or updated or leaving):
            shape = f" ({etcd_shape(len(after), len(after))})" if after else ""
            self.lines.append(f"etcd: unchanged{shape}")
        self._etcd_concern(before, after, len(created))

    def _etcd_concern(self, before: list[str] | None, after: list[str] | None, joining: int) -> None:
        if before is None or after is None or (before and set(before) == set(after)):
            return
        b, a = len(before), len(after)
        middle = b + joining if before and joining and b + joining not in (b, a) else None
        path = f"{b} → {middle} → {a}" if middle else f"{b} → {a}"
        detail = (f"{path} members: quorum {quorum(b)} → {quorum(a)}, "
                  f"tolerates {tolerated(b)} → {_failures(tolerated(a))}")
        notes = []
        if a % 2 == 0:
            notes.append(f"an even count: {a} members tolerate no more failures than {a - 1}")
        if tolerated(a) < tolerated(b):
            notes.append(f"fault tolerance drops from {tolerated(b)} to {tolerated(a)}")
        if tolerated(a) == 0:
            notes.append("losing any one etcd member then stops the DCS, and Patroni demotes the leader")
        if middle:
            notes.append(f"while `up` runs the cluster has {middle} members (joins first, removals last)")
        if not before:
            if not notes:
                return
            detail = f"a new cluster of {a} members: quorum {quorum(a)}, tolerates {_failures(tolerated(a))}"
        self.warn("etcd membership", detail + "".join(f"; {n}" for n in notes) + ".")

    # --- Patroni ------------------------------------------------------------------------------

    def leader_off_removed(self) -> None:
        """PatroniCluster's update moves the leader off a removed member, before anything else."""
        before, after = self.top.nodes_before or [], self.top.nodes_after or []
        removed = [n for n in before if n not in after]
        cluster = next(iter(self.changed("PatroniCluster", UPDATE)), None)
        if not removed or cluster is None:
            return
        leader = self.leader_now
        if leader is not None and leader not in removed:
            return
        # Node updates come after this step: the live tags are the stored ones, and the new
        # members do not run yet.
        staying = [n for n in before if n in after]
        preferred = str((cluster.new_inputs or {}).get("leader") or "") or None
        target, named = self.successor(staying, self.top.tags_before, self.top.sync_before, preferred)
        if leader is None:
            self.maybe_switchovers += 1
            self.lines.append(f"Patroni: if {_either(removed)} leads when `up` runs, it first switches over "
                              f"to {target}")
            self.warn("Switchover", f"possible: the state records no leader; if {_either(removed)} leads, "
                                    f"one switchover to {target}.")
            return
        step = self.switchover(target, named, f"the leader's host {leader} is removed")
        self.lines.append(f"Patroni: {leader} leads ({AS_OF}) and is removed: {step} first")

    def installs(self) -> None:
        groups: dict[str, list[str]] = {}
        for step in self.changed("PatroniInstall", CREATE):
            i = step.inputs
            words = f"Patroni {text(i.get('version'))} installed ({text(i.get('method'))}) on {{hosts}}"
            groups.setdefault(words, []).append(self.host(step))
        for step in self.changed("PatroniInstall", UPDATE, REPLACE):
            groups.setdefault(self._install_update(step), []).append(self.host(step))
        self._host_installs(groups)
        for words, hosts in groups.items():
            self.lines.append(words.replace("{hosts}", names(hosts)))

    def install_steps(self, *ops: str) -> dict[str, dict[str, Step]]:
        """The install steps (components/host_install.py) of each host, by part, for these ops."""
        found: dict[str, dict[str, Step]] = {}
        for step in self.preview.steps:
            part = install_part(step, self.scope)
            if part and step.custom and step.op in ops:
                found.setdefault(part[0], {})[part[1]] = step
        return dict(sorted(found.items(), key=lambda item: self.preview.host_key(item[0])))

    def _host_installs(self, groups: dict[str, list[str]]) -> None:
        retired = {self.host(s) for s in self.changed("PatroniInstall", DELETE)}
        for host, parts in self.install_steps(CREATE).items():
            title = script_title((parts.get("patroni") or next(iter(parts.values()))).inputs.get("create"))
            # The plan says what and where; the table row has the whole title (venv, source).
            found = re.match(r"Patroni (\S+) in \S+, from the (wheelhouse|index)", title)
            words = (f"Patroni {found.group(1)} installed ({found.group(2)}) on {{hosts}}" if found else
                     f"{title or 'Patroni installed'} on {{hosts}}")
            if host in retired:
                words = (f"the install on {{hosts}} moves to pulumi-command steps ({title or 'Patroni'}): "
                         "each step checks what is there and changes nothing that is already right; "
                         "Patroni keeps running")
            groups.setdefault(words, []).append(host)
        for host, parts in self.install_steps(UPDATE, REPLACE).items():
            groups.setdefault(self._host_install_update(host, parts), []).append(host)

    def _host_install_update(self, host: str, parts: dict[str, Step]) -> str:
        found = {part: step_changes(step) for part, step in parts.items()}
        patroni = found.get("patroni")
        script = next((c for c in patroni.changes if c.top == "create"), None) if patroni else None
        if script is not None:
            old, new = script_title(script.old), script_title(script.new)
            versions = [re.search(r"Patroni (\S+)", t) for t in (old, new)]
            if all(versions) and versions[0].group(1) != versions[1].group(1):  # type: ignore[union-attr]
                before, after = versions[0].group(1), versions[1].group(1)  # type: ignore[union-attr]
                self.warn_for(host, "Patroni upgrade",
                              f"Patroni {before} → {after} on {{hosts}}: `up` reinstalls the virtualenv but "
                              f"does not restart Patroni, which runs {before} until its next restart.")
                venv = re.search(r"Patroni \S+ in (\S+?),", new)
                into = f" into {venv.group(1)}" if venv else ""
                return f"Patroni {before} → {after} reinstalled{into} on {{hosts}} (not restarted)"
        if any("connection" in f.tops for f in found.values()):
            return ("the install steps run again on {hosts}: its address or host key changed (each step "
                    "checks what is there first)")
        said = [_new_comments(f) or f"{part} ({', '.join(sorted(f.tops)) or 'no visible change'})"
                for part, f in found.items()]
        kept = re.search(r"Patroni (\S+) in", script_title(script.new)) if script is not None else None
        same = (f" (each checks for Patroni {kept.group(1)} first: no reinstall when it is there)"
                if kept else "")
        return f"install steps run again on {{hosts}}{same}: {'; '.join(said)}"

    def _install_update(self, step: Step) -> str:
        found = step_changes(step)
        version = next((c for c in found.changes if c.path == "version"), None)
        if version is not None:
            old, new = text(version.old), text(version.new)
            self.warn_for(self.host(step), "Patroni upgrade",
                          f"Patroni {old} → {new} on {{hosts}}: `up` reinstalls the virtualenv but does not "
                          f"restart Patroni, which runs {old} until its next restart.")
            venv = text(step.inputs.get("venv"))
            return f"Patroni {old} → {new} reinstalled into {venv} on {{hosts}} (not restarted)"
        if any(c.path.endswith("(refresh)") for c in found.changes):
            return "Patroni on {hosts} is not the declared version (last refresh): `up` installs it again"
        if "connection" in found.tops:
            return "Patroni installed on {hosts} at its new address (the install checks the version there)"
        keys = ", ".join(f"{c.path} {_arrow(c.old, c.new)}" for c in found.changes) or "no visible change"
        return f"Patroni install settings of {{hosts}}: {keys} (no reinstall while the version is unchanged)"

    def nodes(self) -> None:
        if self.changed("PatroniBootstrap", CREATE) and not self.top.nodes_before:
            self._new_cluster()
            return
        self._node_updates()
        joining: dict[str, list[str]] = {}
        for step in self.changed("PatroniNode", CREATE):
            joining.setdefault(self._clone_source(step), []).append(self.host(step))
        for source, hosts in joining.items():
            if len(hosts) == 1:
                words = "starts once the leader's pg_hba admits it, clones from {} and streams"
            else:
                words = "start once the leader's pg_hba admits them, clone from {} and stream"
            self.lines.append(f"Patroni: {names(hosts)} {words.format(source)}")
        for step in self.changed("PatroniNode", REPLACE):
            host = self.host(step)
            why = ", ".join(step.replace_reasons) or "a replace-only input"
            handover = ""
            if host == self.leader_now:
                staying = [n for n in self.top.nodes_after or [] if n != host]
                target, named = self.successor(staying, self.top.tags_before, self.top.sync_before, None)
                handover = f", after a {self.switchover(target, named, f'the leader {host} is replaced')}"
            self.lines.append(f"Patroni: {host} is replaced ({why} changes): it stops and leaves{handover}; "
                              f"{self._data_fate(step)}; then it starts at the new address and clones from "
                              f"{self._clone_source(step)}")
            self.replica_sessions_cut = True
            self.warn("Replaced", f"PatroniNode {host} is deleted and created again ({why}): a full base "
                                  f"backup.")

    def _new_cluster(self) -> None:
        first = next((self.host(s) for s in self.changed("PatroniBootstrap", CREATE)), "?")
        others = [self.host(s) for s in self.changed("PatroniNode", CREATE) if self.host(s) != first]
        boot = next((s for s in self.changed("PatroniBootstrap", CREATE)), None)
        restore = ((boot.inputs.get("bootstrap") or {}) if boot is not None else {}).get("restore")
        how = "restores another stanza's backup (pgha:restore)" if restore else "initdb"
        line = f"Patroni: {first} bootstraps a new cluster ({how}) and leads"
        if others:
            line += f"; {names(others)} then clone from it and stream"
        self.lines.append(line)
        self.leader_now = first

    def _clone_source(self, step: Step) -> str:
        """Where a new replica's data comes from: the latest backup when the node's inputs carry
        a pgBackRest replica method (`replica_from_backup`), a member tagged clonefrom, or the leader."""
        me = self.host(step)
        if step.inputs.get("replica_from_backup"):
            return f"the latest backup (pgBackRest, then archived WAL; {self.leader_words()} if none)"
        sources = [n for n, tags in self.top.tags_after.items()
                   if n != me and tags.get("clonefrom") is True and n in (self.top.nodes_before or [])]
        if sources:
            return f"{_either(sources)} (tagged clonefrom)"
        return self.leader_words()

    def _node_updates(self) -> None:
        groups: dict[str, list[str]] = {}
        for step in self.changed("PatroniNode", UPDATE):
            if self.moved_only(step):
                continue
            host = self.host(step)
            for words in self._node_reasons(host, step_changes(step)):
                groups.setdefault(words, []).append(host)
        for words, hosts in groups.items():
            self.lines.append(words.replace("{hosts}", names(hosts)))

    def _node_reasons(self, host: str, found: StepChanges) -> list[str]:
        reasons: list[str] = []
        tops = found.tops
        if "pg_hba" in tops:
            reasons.append(f"pg_hba reloaded on {{hosts}} ({self._hba_words(found.under('pg_hba'))})")
        if "etcd_hosts" in tops:
            reasons.append("patroni.yml lists the new etcd endpoints, reloaded on {hosts}")
        for change in found.under("tags"):
            tag = change.path.removeprefix("tags.")
            meanings = TAG_MEANING.get(tag, ("", ""))
            meaning = meanings[0] if change.new not in (False, MISSING) else meanings[1]
            reasons.append(f"{host}: tag {tag} {_arrow(change.old, change.new)}, patroni.yml reloaded"
                           + (f"; {host} {meaning}" if meaning else ""))
            if tag == "noloadbalance" and change.new is True:
                self.replica_sessions_cut = True
        secrets = [c for c in found.changes if c.secret]
        if secrets:
            reasons.append("patroni.yml rewritten with a changed secret and Patroni reloaded on {hosts}")
        drifted = [c for c in found.changes if c.path.endswith("(refresh)")]
        if drifted:
            reasons.append("{hosts}: Patroni was found stopped by the last refresh; `up` starts it")
        if "keep_data_on_destroy" in tops:
            change = found.under("keep_data_on_destroy")[0]
            reasons.append(f"keepDataOnDestroy {_arrow(change.old, change.new)} recorded for {{hosts}} "
                           f"(applies when a node is removed; nothing changes on the hosts)")
            if change.new is False:
                self.warn_for(host, "Data removal", "keepDataOnDestroy becomes false on {hosts}: a later "
                                                    "removal or destroy deletes the data directory.")
        handled = {"pg_hba", "etcd_hosts", "tags", "keep_data_on_destroy"}
        handled |= {c.top for c in secrets + drifted}
        other = sorted(tops - handled)
        reload_keys = [k for k in other if k not in NODE_STATE_ONLY]
        if reload_keys:
            reasons.append(f"patroni.yml rewritten ({', '.join(reload_keys)}) and reloaded on {{hosts}}")
        if any(k in NODE_STATE_ONLY for k in other):
            reasons.append("SSH connection settings of {hosts} updated (state only)")
        return reasons

    def _hba_words(self, changes: list[Change]) -> str:
        added = [c for c in changes if c.added]
        removed = [c for c in changes if c.removed]
        edited = [c for c in changes if not c.added and not c.removed]
        admits = self._hosts_in([c.new for c in added])
        drops = self._hosts_in([c.old for c in removed])
        words = []
        if added:
            words.append(f"admits {names(admits)}" if admits else f"{len(added)} line(s) added")
        if removed:
            words.append(f"drops {names(drops)}" if drops else f"{len(removed)} line(s) removed")
        if edited:
            moved = self._hosts_in([c.new for c in edited])
            words.append(f"{names(moved)}'s lines change" if moved else f"{len(edited)} line(s) changed")
        return ", ".join(words) or "lines reordered"

    def _hosts_in(self, lines: list[Any]) -> list[str]:
        """Patroni hosts whose address every one of these pg_hba lines names (else [])."""
        addresses = {str(s.inputs.get("address")): self.host(s) for s in self.preview.of_kind("PatroniNode")}
        found: list[str] = []
        for line in lines:
            words = [w.split("/")[0] for w in str(line).split()]
            host = next((addresses[w] for w in words if w in addresses), None)
            if host is None:
                return []
            if host not in found:
                found.append(host)
        return found

    # --- HAProxy ------------------------------------------------------------------------------

    def haproxy(self) -> None:
        groups: dict[str, list[str]] = {}
        for step in self.changed("HAProxyConfig", CREATE):
            groups.setdefault("HAProxy on {hosts}: haproxy.cfg written, checked (`haproxy -c`) and started; "
                              "`up` waits for exactly one primary UP", []).append(self.host(step))
        for step in self.changed("HAProxyConfig", UPDATE, REPLACE):
            if self.moved_only(step):
                continue
            groups.setdefault(self._haproxy_update(step), []).append(self.host(step))
        for words, hosts in groups.items():
            self.lines.append(words.replace("{hosts}", names(hosts)))

    def _haproxy_update(self, step: Step) -> str:
        found = step_changes(step)
        parts: list[str] = []
        servers: dict[str, dict[str, str]] = {}  # server -> backend -> joins/leaves/changes
        for change in found.changes:
            match = SERVER_PATH.match(change.path)
            if match is None:
                continue
            backend = BACKENDS.get(match.group(1) or "", "")
            name = match.group(2) or match.group(3)
            verb = "joins" if change.added else "leaves" if change.removed else "changes in"
            for b in ([backend] if backend else ["primary", "replica"]):
                servers.setdefault(name, {})[b] = verb
        by_move: dict[tuple[str, str], list[str]] = {}
        for name, backends in servers.items():
            verbs = set(backends.values())
            where = ("the primary and replica backends" if len(backends) == 2
                     else f"the {next(iter(backends))} backend")
            verb = next(iter(verbs)) if len(verbs) == 1 else "changes in"
            by_move.setdefault((verb, where), []).append(name)
        for (verb, where), who in by_move.items():
            if verb == "changes in":
                parts.append(f"the server line of {names(who)} changes in {where}")
                continue
            plural = {"joins": "join", "leaves": "leave"}[verb] if len(who) > 1 else verb
            parts.append(f"{' and '.join(who) if len(who) == 2 else names(who)} {plural} {where}")
        checks = [c for c in found.changes if c.path in CHECK_WORDS]
        if checks:
            parts.append("checks " + ", ".join(f"{CHECK_WORDS[c.path][0]} {text(c.old)} → {text(c.new)}"
                                               f"{CHECK_WORDS[c.path][1]}" for c in checks))
            old, new = normalized_inputs(step.kind, step.old_inputs or {}), step.inputs
            down = [_num(i.get("inter_ms")) + (_num(i.get("fall")) - 1) * _num(i.get("fastinter_ms"))
                    for i in (old, new)]
            back = [_num(i.get("rise")) * _num(i.get("fastinter_ms")) for i in (old, new)]
            if down[0] != down[1]:
                parts.append(f"a failed server is marked down within inter + (fall − 1) × fastinter = "
                             f"{down[0] / 1000:g} s → {down[1] / 1000:g} s")
            if back[0] != back[1]:
                parts.append(f"a recovered one is marked up after rise × fastinter = {back[0] / 1000:g} s → "
                             f"{back[1] / 1000:g} s")
            if down[1] > down[0] or back[1] > back[0]:
                slower = [f"{what} {a / 1000:g} s → {b / 1000:g} s" for what, (a, b) in
                          (("down within", down), ("up after", back)) if b > a]
                self.warn("Failover time", f"HAProxy on {self.host(step)} follows a switchover or a failure "
                                           f"more slowly ({', '.join(slower)}): writes pause that much "
                                           f"longer.")
        for change in found.changes:
            if change.path in PORT_WORDS:
                parts.append(f"{PORT_WORDS[change.path]} {text(change.old)} → {text(change.new)}")
                if change.path != "stats_port":
                    self.warn("Clients", f"HAProxy's {PORT_WORDS[change.path]} changes {text(change.old)} → "
                                         f"{text(change.new)}: clients must follow.")
            elif change.path in ("maxconn", "global_maxconn"):
                parts.append(f"{change.path} {text(change.old)} → {text(change.new)}")
        if any(c.path.endswith("(refresh)") for c in found.changes):
            parts.append("repairs drift found by the last refresh: haproxy.cfg edited or HAProxy stopped")
        if any(c.secret for c in found.changes):
            parts.append("a secret input changed")
        return f"HAProxy on {{hosts}} reloads after `haproxy -c` ({'; '.join(parts) or 'no visible change'})"

    # --- the dynamic configuration --------------------------------------------------------------

    def dynamic_config(self) -> None:
        step = next(iter(self.changed("PatroniDynamicConfig", UPDATE, REPLACE)), None)
        if step is None:
            return
        found = step_changes(step)
        settings, reloads, restarts, handed = [], [], [], []
        for change in found.changes:
            param = PARAM_PATH.match(change.path)
            if param is not None:
                name = param.group(1)
                entry = f"{name} {_arrow(change.old, change.new)}"
                if change.new is MISSING:
                    entry = f"{name} {text(change.old)} → PostgreSQL's default (removed)"
                restart = change.path.startswith("parameters_restart.") or name in RESTART_REQUIRED
                (restarts if restart else reloads).append(entry)
            elif change.path.removeprefix("dcs.").removeprefix("postgresql.") in DCS_KEYS:
                settings.append(f"{change.path.rsplit('.', 1)[-1]} {_arrow(change.old, change.new)}")
            elif change.top == "operator_parameters":
                handed.append(f"{text(change.new if change.added else change.old)} "
                              f"{'left to operators' if change.added else 'managed by the stack again'}")
        if settings or reloads or restarts or handed:
            parts = []
            if settings:
                parts.append(", ".join(settings))
            if reloads:
                parts.append(", ".join(reloads) + " (reload, no restart)")
            if restarts:
                parts.append(", ".join(restarts) + " (needs a restart)")
            if handed:
                parts.append(", ".join(handed))
            self.lines.append(f"Patroni dynamic configuration, one PATCH /config: {'; '.join(parts)}; every "
                              f"member applies it within loop_wait")
        if any(c.path.endswith("(refresh)") for c in found.changes):
            self.lines.append("Patroni dynamic configuration: the last refresh found it edited outside the "
                              "stack (`patronictl edit-config`); one PATCH /config puts the stack's settings "
                              "back")
        policy = next((c for c in found.changes if c.path == "restart_policy"), None)
        if policy is not None:
            self.lines.append(f"restartPolicy {_arrow(policy.old, policy.new)}")
        if any(s.startswith("synchronous_mode") for s in settings):
            change = f"synchronous_mode {self.top.sync_before.value} → {self.top.sync_after.value}"
            if self.top.sync_after is SyncMode.OFF:
                self.warn("Synchronous mode", f"{change}: commits no longer wait for a standby; a failover "
                                              f"may lose the last acknowledged commits.")
            else:
                self.warn("Synchronous mode", f"{change}: commits wait for a standby, and only a synchronous "
                                              f"standby may take over in a switchover.")
        pending = [str(n) for n in (step.old_outputs or {}).get("pending_restart") or []]
        if restarts:
            what = ", ".join(p.split(" ", 1)[0] for p in restarts)
            self._restart(what, self.top.nodes_after or [])
        elif pending and self.top.restart_policy == "rolling":
            self._restart(f"pending_restart on {names(pending)} ({AS_OF})", pending)

    def _restart(self, what: str, members: list[str]) -> None:
        members = sorted(members, key=self.preview.host_key)
        if self.top.restart_policy != "rolling":
            self.lines.append(f"{what} needs a restart: restartPolicy manual leaves {names(members)} "
                              f"pending_restart (restart the replicas one at a time, switch over, then the "
                              f"former leader, yourself)")
            self.warn("Restart", f"{what} takes effect only once every node restarts; restartPolicy manual: "
                                 f"`up` leaves them pending_restart.")
            return
        self.replica_sessions_cut = True
        leader = self.leader_now
        replicas = [m for m in members if m != leader]
        target, named = self.successor(replicas, self.top.tags_after, self.top.sync_after, self.top.preferred)
        if target == "no replica that may lead":
            self.restart_in_place = leader or "the leader"
            order = f"{names(replicas)} restart one at a time, then " if replicas else ""
            self.lines.append(f"{what} needs a restart: {order}{self.restart_in_place} restarts in place (no "
                              f"replica may lead): writes stop meanwhile")
            self.warn("Restart", f"{what}: {self.restart_in_place} restarts without a switchover; writes "
                                 f"stop until it is back.")
            return
        if leader is None:
            switch = self.switchover(target, named, f"rolling restart for {what}")
            self.lines.append(f"{what} needs a restart: the replicas restart one at a time, {switch}, then "
                              f"the former leader restarts")
        else:
            order = (f"{names(replicas)} restart one at a time" if len(replicas) > 1
                     else f"{replicas[0]} restarts")
            switch = self.switchover(target, named, f"rolling restart for {what}")
            self.lines.append(f"{what} needs a restart: {order}, {switch}, {leader} restarts (if its "
                              f"demotion did not already apply it)")
        self.warn("Restart", f"{what}: every node restarts ({names(members)}), replicas first, the leader "
                             f"after one switchover.")

    # --- pgha:leader --------------------------------------------------------------------------

    def leader(self) -> None:
        step = next(iter(self.changed("PatroniLeader", UPDATE, CREATE, REPLACE)), None)
        if step is None:
            return
        old = str((step.old_inputs or {}).get("leader") or "") or None
        new = str((step.new_inputs or {}).get("leader") or "") or None
        recorded = (step.old_outputs or {}).get("current_leader")
        if new is None:
            if step.op != CREATE and old is not None:
                self.lines.append(f"pgha:leader {old} → unset: no switchover; the leader stays where it is "
                                  f"and an automatic failover now stands")
            return
        if self.leader_now == new:
            if old != new:
                self.lines.append(f"pgha:leader {old or 'unset'} → {new}: {new} leads at this point: no "
                                  f"switchover")
            return
        if old == new and recorded and recorded != new:
            why = f"pgha:leader is {new} but {recorded} led at the last refresh"
        else:
            why = f"pgha:leader {old or 'unset'} → {new}"
        switch = self.switchover(new, True, why)
        if step.op == CREATE:
            self.lines.append(f"pgha:leader: {switch} once the cluster runs")
        else:
            self.lines.append(f"pgha:leader: planned {switch} (after checking that {new} may take over)")

    # --- roles --------------------------------------------------------------------------------

    def roles(self) -> None:
        generated = self.hosts(self.changed("GeneratedPassword", CREATE))
        if generated:
            self.lines.append(f"{'a password is' if len(generated) == 1 else 'passwords are'} generated for "
                              f"{names(generated)} (kept encrypted in the state)")
        for step in self.changed("DatabaseRole", CREATE):
            pw = " with its password (SCRAM verifier)" if "secrets" in step.inputs else ""
            self.lines.append(f"role {self.host(step)} created on the leader ({role_words(step.inputs)}){pw}")
        for step in self.changed("DatabaseRole", UPDATE, REPLACE):
            words = []
            for change in step_changes(step).changes:
                if change.secret:
                    words.append("password changed")
                elif change.top == "options":
                    value = change.new if change.added else change.old
                    words.append(f"{text(value)} {'added' if change.added else 'removed'}")
                else:
                    words.append(f"{change.path} {_arrow(change.old, change.new)}")
            verb = "dropped and created again" if step.op == REPLACE else "altered"
            detail = ", ".join(words) or "no visible change"
            self.lines.append(f"role {self.host(step)} {verb} on the leader ({detail})")

    def backups(self) -> None:
        """pgBackRest (components/backup.py): repository, archiving nodes, stanza, restore."""
        repo = self.changed("BackupRepository", CREATE, UPDATE, REPLACE)
        nodes = self.changed("BackupNode", CREATE, UPDATE, REPLACE)
        restore = self.changed("BackupRestore", CREATE, UPDATE, REPLACE)
        stanza = self.changed("BackupStanza", CREATE, UPDATE, REPLACE)
        for step in repo:
            i = step.inputs
            where = f"{text(i.get('repo_path'))} on {text((i.get('connection') or {}).get('host'))}"
            if i.get("layout") == "nodes":
                shared_by = names(sorted(i.get("nodes") or {}))
                where = (f"{text(i.get('repo_path'))}, shared storage on {shared_by} (checked: a marker "
                         "written on one node must be seen on every other)")
            if step.op == CREATE:
                self.lines.append(f"pgBackRest: repository for stanza {text(i.get('stanza'))} in {where} "
                                  f"({describe(step)})")
            else:
                self.lines.append(f"pgBackRest repository ({where}): {self._keys(step)}")
        created = [self.host(s) for s in nodes if s.op == CREATE]
        if created:
            self.lines.append(f"pgBackRest on {names(created)}: pgbackrest.conf written; archive_command "
                              f"sends WAL to the repository from the first segment")
        for step in nodes:
            if step.op != CREATE:
                self.lines.append(f"pgBackRest on {self.host(step)}: {self._keys(step)}")
        for step in restore:
            self.lines.append(f"restore check: {describe(step)} (the new cluster is restored, not "
                              f"initdb)")
        for step in stanza:
            if step.op == CREATE:
                self.lines.append(f"pgBackRest: stanza {text(step.inputs.get('stanza'))} created and checked "
                                  f"(stanza-create, check; a full backup when there is none); "
                                  f"{describe(step).split('; ', 1)[-1]}")
            else:
                self.lines.append(f"pgBackRest stanza {text(step.inputs.get('stanza'))}: {self._keys(step)}")
        removed = [s for s in self.preview.steps if s.custom and s.op == DELETE and s.kind in
                   ("BackupRepository", "BackupStanza")]
        if removed:
            self.warn("Backups", "pgBackRest is removed from this stack: timers stop and WAL is no longer "
                                 "archived; the repository's backups and archive stay (restorable with "
                                 "pgha:restore).")

    def _keys(self, step: Step) -> str:
        found = step_changes(step)
        return ", ".join(f"{c.path} {_arrow(c.old, c.new)}" for c in found.changes) or "no visible change"

    def unknown(self) -> None:
        """Resources this summary has no words for (a newer pgha's): named, with what changes."""
        steps = [s for s in self.preview.changes if not is_logical(s) and s.kind not in KINDS
                 and not install_part(s, self.scope)]
        for step in sorted(steps, key=lambda s: (s.kind, self.preview.host_key(self.host(s)))):
            keys = ", ".join(sorted(step_changes(step).tops)) if step.op in (UPDATE, REPLACE) else ""
            label = f"{step.kind} {self.host(step)}".strip()
            self.lines.append(f"{label}: {step.op}" + (f" ({keys})" if keys else "") +
                              " (no plan wording for this resource type: read its rows below)")

    # --- pgha:tls: the CA and the certificates (state only; their delivery is on the hosts) -----

    # Why a certificate is issued again, by the property its provider names (tls_certificates.py).
    RENEWAL_WORDS: ClassVar[dict[str, str]] = {
        "not_after": "it expires within pgha:tls.renewBeforeDays", "dns_names": "its names changed",
        "ip_addresses": "its addresses changed", "common_name": "its subject changed",
        "server": "its usage changed", "ca_cert_pem": "the CA changed"}

    def certificates(self) -> None:
        if self.changed("TlsCertificateAuthority", CREATE):
            # A running cluster's move to TLS has its own line (move_to_tls).
            self.lines.append("TLS: the stack makes its cluster CA (the key a secret in the state)")
        if self.changed("TlsCertificateAuthority", UPDATE):
            self.lines.append("TLS: the cluster CA rotates (it can no longer sign a certificate for a full "
                              "term, or pgha:tls.caGeneration changed): the new CA is trusted beside the old "
                              "one until that expires, and every certificate is issued again")
            self.warn("CA rotation", "etcd restarts each member once, one at a time with its quorum kept, to "
                                     "trust the new CA; only then do the hosts get their new certificates "
                                     "(Patroni and HAProxy reload; PostgreSQL does not restart).")
        created = self.hosts(self.changed("TlsCertificate", CREATE))
        if created:
            self.lines.append(f"TLS: {len(created)} certificate(s) issued: {', '.join(created)}")
        for step in self.changed("TlsCertificate", REPLACE):
            why = sorted({self.RENEWAL_WORDS.get(r, r) for r in step.replace_reasons}) or ["a new key"]
            self.lines.append(f"TLS: certificate {self.host(step)} issued again: {'; '.join(why)}")
        dropped = self.hosts(self.changed("TlsCertificate", DELETE))
        if self.changed("TlsCertificateAuthority", DELETE):  # not a destroy: TLS is turned off
            self.warn("TLS off", "the cluster CA and every certificate are deleted: traffic between the "
                                 "hosts goes back to plaintext.")
        if dropped:
            self.lines.append(f"TLS: certificate(s) no longer needed: {', '.join(dropped)}")
        self.trust()
        self.certificate_files()
        self.move_to_tls()

    def trust(self) -> None:
        """A change of the trusted CAs (TlsTrust; its create and delete touch no host)."""
        for step in self.changed("TlsTrust", UPDATE):
            if "trust_pem" not in step_changes(step).tops:
                continue
            etcd = [str(t.get("host")) for t in step.inputs.get("targets") or [] if t.get("restart")]
            self.lines.append("TLS: the trusted CAs change: every host gets the new CA bundle before any "
                              "new certificate is served" +
                              (f"; etcd restarts one member at a time ({', '.join(etcd)}; the raft leader "
                               "last): it reads its CAs only when it starts" if etcd else ""))

    # What a move to TLS changes in a member's, node's or balancer's inputs: the move applies it.
    MOVE_KEYS: ClassVar[frozenset[str]] = frozenset({"tls", "tls_client", "etcd_endpoints"})

    def moved_only(self, step: Step) -> bool:
        """Whether a step's changes are the move to TLS's alone (its pg_hba lines become hostssl):
        the move's own line says what happens on the host, and the step itself then finds nothing
        to do."""
        if not self.tls_move:
            return False
        found = step_changes(step)
        rest = set(found.tops) - self.MOVE_KEYS
        if "pg_hba" in rest and all(_to_hostssl(c) for c in found.under("pg_hba")):
            rest.discard("pg_hba")
        return not rest

    def moving_to_tls(self) -> bool:
        """Whether a running plaintext cluster moves to TLS (EtcdTlsMove, PatroniTlsMove: created
        with TLS, also for a stack already on TLS that upgrades pgha, where they touch no host):
        a move only when the members and nodes gain `tls` in this same preview."""
        gaining = [s for s in self.changed("EtcdMember", UPDATE) + self.changed("PatroniNode", UPDATE)
                   if "tls" in step_changes(s).tops]
        return bool(self.changed("EtcdTlsMove", CREATE) and self.top.nodes_before and gaining)

    def move_to_tls(self) -> None:
        """The move's line, after the certificates and their files it needs; the members', nodes'
        and balancer's updates it leaves with nothing to do have none (moved_only)."""
        if not self.tls_move:
            return
        nodes = ", ".join(self.top.nodes_before)
        self.lines.append(
            "TLS: the running cluster moves to TLS, with no switchover and no PostgreSQL restart: Patroni "
            "pauses; etcd is restored from one snapshot on every member with https peers (a listener serves "
            f"http or https, not both); each Patroni ({nodes}) restarts with TLS, the leader first, and "
            "HAProxy checks it over https as soon as it serves https; then the pause ends")
        self.warn("Move to TLS", "no automatic failover while Patroni is paused (until this `up` ends the "
                                 "move); HAProxy's check of the leader fails if its Patroni takes longer to "
                                 "restart than the check's fall count allows, and writes then pause until it "
                                 "serves https. Afterwards PostgreSQL admits other hosts only over TLS "
                                 "(hostssl): a client with sslmode=disable is refused.")

    # What TlsFiles does on its host, by operation.
    FILES_WORDS: ClassVar[tuple[tuple[str, str], ...]] = (
        (CREATE, "certificate files written before the service starts (keys 0600 of its user)"),
        (UPDATE, "certificate files rewritten, then the service reloads them"),
        (REPLACE, "certificate files rewritten, then the service reloads them"),
        (DELETE, "certificate files removed after the service"))

    def certificate_files(self) -> None:
        """One line per kind of change to the hosts' certificate files: which service on which hosts."""
        for op, words in self.FILES_WORDS:
            by_service: dict[str, list[str]] = {}
            for step in self.changed("TlsFiles", op):
                inputs = step.inputs
                by_service.setdefault(str(inputs.get("service", "?")), []).append(
                    str(inputs.get("host_name") or self.host(step)))
            if by_service:
                where = "; ".join(f"{service} on {', '.join(sorted(hosts, key=self.preview.host_key))}"
                                  for service, hosts in sorted(by_service.items()))
                self.lines.append(f"TLS: {words}: {where}")

    # --- deletions, last ----------------------------------------------------------------------

    def deletions(self, destroy: bool) -> None:
        for step in self.changed("HAProxyConfig", DELETE):
            self.lines.append(f"HAProxy on {self.host(step)} stops; the distro's original haproxy.cfg is "
                              f"restored")
        for step in self.changed("DatabaseRole", DELETE):
            self.lines.append(f"role {self.host(step)} dropped on the leader")
            if not destroy:
                self.warn("Role dropped", f"DROP ROLE {self.host(step)} fails while the role owns objects or "
                                          f"holds privileges.")
        nodes = self.changed("PatroniNode", DELETE)
        # A host's install is removed by its cleanup step (or, made by an older pgha, its
        # PatroniInstall); a PatroniInstall deleted beside new install steps leaves the host alone.
        installs = {h for h, parts in self.install_steps(DELETE).items() if "cleanup" in parts}
        retired = {self.host(s) for s in self.changed("PatroniInstall", DELETE)}
        installs |= retired - set(self.install_steps(CREATE))
        if destroy and nodes:
            self._destroy_nodes(nodes, installs)
        else:
            for step in nodes:
                host = self.host(step)
                role = ("no longer the leader" if host in self.stepped_down else
                        "a replica" if self.leader_now and host != self.leader_now else "a member")
                uninstall = "; its Patroni unit and virtualenv are removed" if host in installs else ""
                self.lines.append(f"Patroni: {host} ({role}) stops and leaves the cluster{uninstall}; "
                                  f"{self._data_fate(step)}")
                self.replica_sessions_cut = True
        for host in sorted(installs - set(self.hosts(nodes)), key=self.preview.host_key):
            self.lines.append(f"Patroni's unit and virtualenv removed from {host}")
        for step in self.changed("GeneratedPassword", DELETE):
            if not destroy:
                self.lines.append(f"the generated {self.host(step)} password is dropped from the state")
        if self.changed("PatroniCluster", DELETE):
            self.lines.append("the cluster's keys are removed from etcd (what `patronictl remove` does)")
        removed = self.hosts(self.changed("EtcdMember", DELETE))
        if removed:
            after = self.top.etcd_after
            shape = f": {etcd_shape(len(after) + len(removed), len(after))}" if after and not destroy else ""
            one = len(removed) == 1
            how = ("leave and stop" if destroy else "removed through the v3 API and stopped" if one else
                   "removed one at a time through the v3 API and stopped")
            where = "its data directory" if one else "data directories"
            self.lines.append(f"etcd: {names(removed)} {how} ({where} set aside as "
                              f"<dir>.removed-<time>){shape}")

    def _destroy_nodes(self, nodes: list[Step], installs: set[str]) -> None:
        hosts = self.hosts(nodes)
        leader = self.leader_now if self.leader_now in hosts else None
        others = [h for h in hosts if h != leader]
        last = f"{leader} (the leader, {AS_OF}) stops last" if leader else "the leader stops last"
        self.lines.append(f"Patroni: {names(others)} stop, then {last}, without a switchover (every member "
                          f"leaves)" + ("; units and virtualenvs removed" if installs else ""))
        for fate in sorted({self._data_fate(s) for s in nodes}):
            self.lines.append(f"PostgreSQL data: {fate.removeprefix('its ')}")

    def _data_fate(self, step: Step) -> str:
        """What a node's delete does with its data: the STORED keep_data_on_destroy decides."""
        inputs = step.old_inputs or {}
        data_dir = text(inputs.get("data_dir", "its data directory"))
        if inputs.get("keep_data_on_destroy", True) is False:
            self.warn_for(self.host(step), "Data removal", f"{data_dir} is deleted on {{hosts}} "
                                                           f"(keepDataOnDestroy: false).")
            return f"its data directory {data_dir} is DELETED (keepDataOnDestroy: false)"
        kept = f"its data directory {data_dir} is kept"
        if (step.new_inputs or {}).get("keep_data_on_destroy") is False:
            kept += " (the stored keepDataOnDestroy: true applies, not this change's false)"
        return kept

    def secrets(self) -> None:
        changed = [s for kind in KINDS for s in self.changed(kind, UPDATE, REPLACE)
                   if any(c.secret for c in step_changes(s).changes)]
        if not changed:
            return
        labels = [f"{s.kind} {self.host(s)}".strip() for s in changed]
        self.warn("Secret", f"a secret input changed on {names(labels)} (values hidden). A changed database "
                            f"password (superuser, replication, rewind) reaches patroni.yml and Patroni "
                            f"connects with it, but Patroni does not change the role's password in "
                            f"PostgreSQL.")


def _new_comments(found: StepChanges) -> str:
    """What a changed install script now does that it did not: its new comment lines."""
    words: list[str] = []
    for change in found.changes:
        if change.top not in ("create", "script") or not isinstance(change.new, str):
            continue
        old = set(change.old.splitlines()) if isinstance(change.old, str) else set()
        words += [line.strip().removeprefix("# ") for line in change.new.splitlines()
                  if line.strip().startswith("# ") and line not in old and not line.startswith("# pgha on ")]
    return "; ".join(words)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _expectation(p: _Planner, destroy: bool, new_cluster: bool) -> str:
    if destroy:
        return "Expect the cluster to go away: writes and reads stop for good."
    if new_cluster:
        return "Expect a new cluster: there is nothing to interrupt."
    parts = []
    if p.switchovers == 1:
        parts.append("one write interruption of about one switchover")
    elif p.switchovers > 1:
        parts.append(f"{p.switchovers} write interruptions, each about one switchover")
    if p.maybe_switchovers:
        parts.append(f"{'one more' if p.switchovers else 'one write interruption'} if a removed host leads "
                     f"when `up` runs")
    if p.restart_in_place:
        parts.append(f"writes stopped while {p.restart_in_place} restarts")
    if not parts:
        parts.append("no write interruption")
    out = "Expect " + ", ".join(parts)
    if p.replica_sessions_cut:
        out += "; sessions on a replica that restarts or leaves (replica port) are cut and reconnect"
    return out + "."


def _to_hostssl(change: Change) -> bool:
    """Whether a pg_hba line changes only from `host` to `hostssl` (its columns may be realigned)."""
    if not isinstance(change.old, str) or not isinstance(change.new, str):
        return False
    old, new = change.old.split(), change.new.split()
    return old[:1] == ["host"] and new[:1] == ["hostssl"] and old[1:] == new[1:]


def build_plan(preview: Preview) -> Plan:
    steps = [s for s in preview.steps if not is_logical(s)]
    changed = [s for s in steps if s.changed]
    if not changed:
        return Plan(lines=(), concerns=_diagnostic_concerns(preview),
                    expect="No changes: `pulumi up` touches no host.", no_changes=True)
    destroy = all(s.op == DELETE for s in steps)
    scope = scope_of(preview)
    top = topology(preview, scope)
    planner = _Planner(preview=preview, scope=scope, top=top, leader_now=top.leader)
    new_cluster = bool(planner.changed("PatroniBootstrap", CREATE)) and not top.nodes_before
    if not destroy:
        planner.tls_move = planner.moving_to_tls()
        planner.etcd()
        planner.leader_off_removed()
        planner.installs()
        planner.nodes()
        planner.haproxy()
        planner.dynamic_config()
        planner.leader()
        planner.roles()
        planner.backups()
        planner.certificates()
    planner.unknown()
    planner.deletions(destroy)
    planner.secrets()
    if destroy:
        planner.concerns.insert(0, Concern("Destroy", "every resource is deleted: HAProxy, Patroni and "
                                                      "PostgreSQL stop on every host and the etcd cluster is "
                                                      "dismantled."))
    if top.leader is None and not destroy and not new_cluster and (planner.switchovers or
                                                                   planner.maybe_switchovers):
        planner.warn("Leader unknown", "the state records no leader (no PatroniLeader `current_leader`, no "
                                       "node `role`): `pulumi refresh` records it, for a plan that names it.")
    if not preview.has_sames:
        planner.warn("Partial view", "the preview lists only changed resources (run it with `--show-sames`): "
                                     "counts and the leader may be missing.")
    return Plan(lines=tuple(planner.lines), concerns=tuple(planner.finish()) + _diagnostic_concerns(preview),
                expect=_expectation(planner, destroy, new_cluster), destroy=destroy)


def _diagnostic_concerns(preview: Preview) -> tuple[Concern, ...]:
    return tuple(Concern("Preview warning", d.message.splitlines()[0] if d.message else "")
                 for d in preview.warnings)

"""B1..B7: each measures pgha and a floor in the same run and returns a JSON-ready dict.

A result holds `figures` (measured ÷ floor, see timing.figure), `details` (the raw numbers
behind them), `series` (write recordings for the charts) and `error` when it failed part way;
figures measured before a failure are kept.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import requests

from bench import floors
from bench.archive import ArchiveSampler, lag_series, rate_since, segment_number, summarize_lag
from bench.deploy import (
    BACKUP,
    GROW,
    NINE,
    STANDARD,
    STANDARD_TLS,
    Deployment,
    Layout,
    Session,
    cluster_config,
    lab_base_config,
    request_ok,
    resources_summary,
    ssh_checked,
)
from bench.events import phases
from bench.recorder import summarize
from bench.timing import figure, log, median, ratio, timed
from components.config import HaproxySettings
from components.providers.haproxy_config import backend_status
from tests.cluster.conftest import ProjectCopy, host, wait_until

BASELINE_S = 3.0  # steady writes recorded before an event
TAIL_S = 5.0  # and after writes flow again

Result = dict[str, Any]
Scenario = Callable[[Session], Result]


def benchmark(ident: str, title: str, about: str) -> Callable[[Callable[[Session, Result], None]], Scenario]:
    """Give a scenario its result dict; on failure keep what it measured and record the error."""

    def wrap(fn: Callable[[Session, Result], None]) -> Scenario:
        @functools.wraps(fn)
        def run(session: Session) -> Result:
            result: Result = {"id": ident, "title": title, "about": about, "figures": [], "details": {},
                              "series": {}, "error": None}
            started = time.monotonic()
            log(f"{ident}: {title}")
            try:
                fn(session, result)
            except Exception as err:  # noqa: BLE001 - one failed benchmark must not stop the others
                log(f"{ident} failed: {type(err).__name__}: {err}")
                result["error"] = f"{type(err).__name__}: {str(err)[-1500:]}"
                result["details"]["traceback"] = traceback.format_exc()[-4000:]
                session.discard()
            result["duration_s"] = time.monotonic() - started
            return result

        return run

    return wrap


class Watch:
    """Polls a predicate in the background and remembers when (on `clock`) it first held."""

    def __init__(self, predicate: Callable[[], bool], clock: Callable[[], float], interval: float = 0.05):
        self.t: float | None = None
        self._predicate, self._clock, self._interval = predicate, clock, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.t is None:
            try:
                if self._predicate():
                    self.t = self._clock()
            except Exception:  # noqa: BLE001 - a node being down is what we wait through
                pass
            self._stop.wait(self._interval)

    def start(self) -> Watch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def predict_switchover(demote_promote_s: float, fall: int, fastinter_ms: int) -> float:
    """Patroni's own demote/promote, then HAProxy needs `fall` fast checks to drop the old primary."""
    return demote_promote_s + fall * fastinter_ms / 1000.0


def predict_crash(ttl: int, fall: int, fastinter_ms: int) -> float:
    """The leader key expires after ttl, then HAProxy needs `fall` fast checks."""
    return ttl + fall * fastinter_ms / 1000.0


# -- B1 ------------------------------------------------------------------------------------


def _timed_deploy(session: Session, layout: Layout, details: dict[str, Any]) -> Deployment:
    """Fresh hosts and a timed `pulumi up` of `layout` (B1, B8): `details` gets its seconds, its
    phases and every resource's span."""
    dep = session.deploy(layout)
    details["up_s"] = dep.up_seconds
    details["up_phases"] = phases(dep.up_spans)  # where the time went
    details["up_spans"] = dep.up_spans  # every resource: report.json only
    return dep


@benchmark("B1", "First deploy from bare hosts",
           "`pulumi up` of 3 etcd+Patroni hosts and 1 HAProxy host on fresh lab hosts, against a plain "
           "script over SSH doing only the unavoidable steps on other fresh hosts: wheelhouse upload + "
           "venv install on the 3 hosts in parallel, initdb + start on one, pg_basebackup on the two "
           "others in parallel (floor = sum of the three phases).")
def b1_first_deploy(session: Session, result: Result) -> None:
    cfg = cluster_config(STANDARD.config(lab_base_config()))
    floor_lab = session.fresh_lab(STANDARD.lab_hosts)
    floor = floors.initial_deploy_floor(floor_lab, cfg)
    result["details"]["floor"] = floor
    log(f"B1 floor: {floor['total_s']:.1f} s")
    dep = _timed_deploy(session, STANDARD, result["details"])
    result["figures"].append(figure(
        "pulumi up: 3 etcd+Patroni hosts + 1 HAProxy host, from bare hosts", dep.up_seconds,
        floor["total_s"], "wheelhouse + venv ∥3, initdb + start, pg_basebackup ∥2 (plain script over SSH)",
        goal=1.5))


# -- B2 ------------------------------------------------------------------------------------


@benchmark("B2", "No-change preview and up",
           "No-change `pulumi preview` and `pulumi up --skip-preview` of the deployed stack, against the "
           "same commands on bench/trivial with as many no-op dynamic resources (same total in "
           "`pulumi stack export`), median of 3 interleaved runs each, at 3 and at 9 Patroni nodes.")
def b2_no_change(session: Session, result: Result) -> None:
    ratios: dict[str, dict[int, float | None]] = {"preview": {}, "up": {}}
    for layout, nodes in ((STANDARD, 3), (NINE, 9)):
        dep = session.ensure(layout)
        trivial = floors.TrivialProject(session.scratch(f"trivial-{nodes}"))
        part = floors.noop_overhead(dep, trivial, runs=3)
        result["details"][f"{nodes}_nodes"] = part
        for kind in ("preview", "up"):
            real = median(part["runs_s"][f"real_{kind}"])
            floor = median(part["runs_s"][f"trivial_{kind}"])
            ratios[kind][nodes] = ratio(real, floor)
            result["figures"].append(figure(
                f"no-change pulumi {kind}, {nodes} Patroni nodes ({part['real_resources']} resources)",
                real, floor, f"same command on {part['trivial_resources']} no-op resources (median of 3)",
                goal=1.3))
    for kind, by_nodes in ratios.items():
        result["figures"].append(figure(
            f"{kind} ratio at 9 nodes vs at 3 nodes (flat = 1)", by_nodes.get(9), by_nodes.get(3),
            "the ratio at 3 nodes", unit="×"))


# -- B3 ------------------------------------------------------------------------------------


@benchmark("B3", "Adding a replica",
           "A 4th Patroni host added to the stack (`pulumi up`, timed until it streams), against a bare "
           "pg_basebackup of the same data from the leader to that host, timed on the host just before "
           "(into a scratch directory, then deleted), at pgbench scale 1 (pg5) and 50 (pg6, after pg5 "
           "left again). Both newcomers are bare hosts, so the add includes installing Patroni.")
def b3_add_replica(session: Session, result: Result) -> None:
    dep = session.ensure(GROW)
    for scale, newcomer in ((1, "pg5"), (50, "pg6")):
        log(f"B3: pgbench -i -s {scale}")
        where = dep.pgbench_init(scale)
        dep.sql("CHECKPOINT")
        caught_up = dep.wait_caught_up()
        size = int(dep.sql("SELECT pg_database_size('postgres')")[0][0])
        log(f"B3: bare pg_basebackup to {newcomer} ({size / 1e6:.0f} MB database)")
        floor = floors.basebackup_floor(dep, newcomer)
        dep.sql("CHECKPOINT")
        config = copy.deepcopy(dep.config)
        config["hosts"].append(host(newcomer, ["patroni"]))
        dep.write(config)
        log(f"B3: pulumi up adding {newcomer}")
        seconds, summary = dep.up()
        dep.wait_healthy()
        result["details"][f"scale_{scale}"] = {
            "host": newcomer, "database_bytes": size, "pgbench": where, "replicas_caught_up": caught_up,
            "basebackup": floor, "add_replica_s": seconds, "fixed_overhead_s": seconds - floor["seconds"],
            "up_summary": summary,
        }
        result["figures"].append(figure(
            f"add a replica ({newcomer}), pgbench scale {scale} ({size / 1e6:.0f} MB)", seconds,
            floor["seconds"], f"bare pg_basebackup from the leader ({floor['source']}) to {newcomer}"))
        if scale != 50:
            # Back to 3 nodes (untimed), so that the next newcomer is again the 4th.
            log(f"B3: pulumi up removing {newcomer}")
            config = copy.deepcopy(dep.config)
            config["hosts"] = [h for h in config["hosts"] if h["name"] != newcomer]
            dep.write(config)
            dep.up()
            dep.wait_healthy()


# -- B4 ------------------------------------------------------------------------------------


def _haproxy_primary(dep: Deployment, name: str) -> bool:
    address, _ = dep.haproxy()
    cfg = dep.model()
    return backend_status(address, cfg.haproxy.stats_port).get(f"{cfg.scope}_primary", {}).get(name) == "UP"


def _switchover(dep: Deployment, ha: HaproxySettings, chart: str = "switchover.png",
                what: str = "planned switchover") -> tuple[dict[str, Any], dict[str, Any]]:
    leader = dep.leader()
    candidates = sorted(n for n, m in dep.members().items() if m.get("state") == "streaming")
    if leader is None or not candidates:
        raise RuntimeError(f"no leader or no streaming replica: {dep.members()}")
    candidate = candidates[0]
    rec = dep.recorder().start()
    promoted = haproxy_up = None
    try:
        time.sleep(BASELINE_S)
        promoted = Watch(dep.rest_probe(candidate, "/primary", 1.0), rec.now).start()
        haproxy_up = Watch(lambda: _haproxy_primary(dep, candidate), rec.now, interval=0.1).start()
        t_event = rec.mark(f"POST /switchover {leader} -> {candidate}")
        resp = dep.api(leader).switchover(leader, candidate)
        if resp.status_code != 200:
            raise RuntimeError(f"POST /switchover: HTTP {resp.status_code} {resp.text[:200]}")
        wait_until(lambda: promoted.t is not None and rec.acknowledged_since(promoted.t), timeout=120,
                   what="writes acknowledged by the new primary", interval=0.1)
        time.sleep(TAIL_S)
    finally:
        rec.stop()
        for watch in (promoted, haproxy_up):
            if watch is not None:
                watch.stop()
    series = rec.series(f"{what} {leader} → {candidate}", t_event, chart)
    assert promoted.t is not None
    demote_promote = promoted.t - t_event
    facts = {"from": leader, "to": candidate, "demote_promote_s": demote_promote,
             "haproxy_marked_up_after_s": None if haproxy_up is None or haproxy_up.t is None
             else haproxy_up.t - t_event,
             "predicted_s": predict_switchover(demote_promote, ha.check_fall, ha.check_fastinter_ms)}
    return series, facts


def _crash(dep: Deployment, ttl: int, ha: HaproxySettings) -> tuple[dict[str, Any], dict[str, Any]]:
    leader = dep.leader()
    if leader is None:
        raise RuntimeError("no leader to crash")
    rec = dep.recorder().start()
    try:
        time.sleep(BASELINE_S)
        t_event = rec.mark(f"crash {leader}")
        dep.lab.crash(leader)

        def elected() -> str | None:
            name = dep.leader(avoid=leader)
            return name if name and name != leader else None

        new_leader = wait_until(elected, timeout=3 * ttl + 60, what="a new leader", interval=0.25)
        t_elected = rec.now()
        wait_until(lambda: rec.acknowledged_since(t_elected), timeout=120,
                   what="writes acknowledged by the new primary", interval=0.1)
        time.sleep(TAIL_S)
    finally:
        rec.stop()
    series = rec.series(f"leader crash ({leader}, power pulled)", t_event, "crash.png")
    facts = {"crashed": leader, "new_leader": new_leader, "elected_seen_after_s": t_elected - t_event,
             "predicted_s": predict_crash(ttl, ha.check_fall, ha.check_fastinter_ms)}
    return series, facts


@benchmark("B4", "Write unavailability: switchover and leader crash",
           "A client inserting every 20 ms through HAProxy's primary port: the longest stretch without an "
           "acknowledged write, for a planned switchover (POST /switchover) and for a leader crash "
           "(lab.crash), against what the settings predict (switchover: Patroni's measured demote/promote "
           "+ fall × fastinter; crash: ttl + fall × fastinter).")
def b4_unavailability(session: Session, result: Result) -> None:
    dep = session.ensure(STANDARD)
    ha = dep.model().haproxy
    live = dep.api(dep.leader() or next(iter(dep.nodes()))).config()
    ttl, loop_wait = int(live["ttl"]), int(live["loop_wait"])
    result["details"]["settings"] = {
        "ttl": ttl, "loop_wait": loop_wait, "inter_ms": ha.check_inter_ms,
        "fastinter_ms": ha.check_fastinter_ms, "fall": ha.check_fall, "rise": ha.check_rise}

    log("B4: planned switchover under writes")
    series, facts = _switchover(dep, ha)
    result["series"]["switchover"] = series
    result["details"]["switchover"] = facts
    result["figures"].append(figure(
        "write unavailability, planned switchover", series["longest_s"], facts["predicted_s"],
        f"predicted: demote/promote {facts['demote_promote_s']:.2f} s + fall {ha.check_fall} × fastinter "
        f"{ha.check_fastinter_ms} ms"))
    dep.wait_healthy(180)

    log("B4: leader crash under writes")
    series, facts = _crash(dep, ttl, ha)
    result["series"]["crash"] = series
    result["details"]["crash"] = facts
    result["figures"].append(figure(
        "write unavailability, leader crash", series["longest_s"], facts["predicted_s"],
        f"predicted: ttl {ttl} s + fall {ha.check_fall} × fastinter {ha.check_fastinter_ms} ms"))

    log(f"B4: booting {facts['crashed']} again")
    try:
        dep.lab.start(facts["crashed"])
        dep.wait_healthy(300)
        result["details"]["crash"]["rejoined"] = True
    except Exception as err:  # noqa: BLE001 - measured already; the next benchmark redeploys
        result["details"]["crash"]["rejoined"] = f"no: {err}"
        session.discard()


# -- B5 ------------------------------------------------------------------------------------


@benchmark("B5", "Rolling restart for a restart-only parameter",
           "`pulumi up` after changing shared_buffers (replicas one at a time, one switchover, then the "
           "former leader), total time and write unavailability, against restarting the same nodes by "
           "hand one after the other (POST /restart per node, waiting for it to stream again).")
def b5_rolling_restart(session: Session, result: Result) -> None:
    dep = session.ensure(STANDARD)

    log("B5 floor: POST /restart on each node by hand")
    rec = dep.recorder().start()
    try:
        time.sleep(BASELINE_S)
        t_floor = rec.mark("POST /restart, node by node")
        manual = floors.manual_restarts(dep)
        time.sleep(TAIL_S)
    finally:
        rec.stop()
    manual["writes"] = summarize(rec.samples, since=t_floor)
    result["details"]["by_hand"] = manual
    dep.wait_healthy(180)

    config = copy.deepcopy(dep.config)
    params = config.setdefault("postgresql", {}).setdefault("parameters", {})
    old = str(params.get("shared_buffers", "128MB"))
    new = "256MB" if old != "256MB" else "192MB"
    params["shared_buffers"] = new
    dep.write(config)
    log(f"B5: pulumi up with shared_buffers {old} -> {new}")
    leader_before = dep.leader()
    rec = dep.recorder().start()
    try:
        time.sleep(BASELINE_S)
        t_event = rec.mark(f"pulumi up: shared_buffers {old} → {new}")
        seconds, summary = dep.up()
        time.sleep(TAIL_S)
    finally:
        rec.stop()
    series = rec.series(f"rolling restart (shared_buffers {old} → {new})", t_event, "rolling_restart.png")
    result["series"]["rolling_restart"] = series
    members = dep.members()
    result["details"]["pulumi_up"] = {
        "seconds": seconds, "up_summary": summary, "leader_before": leader_before,
        "leader_after": dep.leader(), "shared_buffers_now": dep.sql("SHOW shared_buffers")[0][0],
        "pending_restart_after": sorted(n for n, m in members.items() if m.get("pending_restart")),
    }
    result["figures"].append(figure(
        f"rolling restart (shared_buffers {old} → {new}): pulumi up", seconds, manual["seconds"],
        "POST /restart on each node by hand, one after the other, each streaming again"))
    result["figures"].append(figure(
        "write unavailability of the rolling restart", series["longest_s"], manual["writes"]["longest_s"],
        "the same, restarting the leader in place by hand"))


# -- B6, B7: backups ---------------------------------------------------------------------------

RESTORE_SCALE = 30  # pgbench scale for B6: ~450 MB, the copy dominates, the run stays short
CLONE_SCOPE = "pgha-bench-clone"
# All boot bare in the BACKUP layout: the floor's host, the clone's, and the host of a second
# clone restored to a time, should the restore to `latest` fail.
FLOOR_HOST, CLONE_HOST, TIME_CLONE_HOST = "pg6", "pg7", "pg8"


def _repo_host(dep: Deployment) -> str:
    return dep.model().with_role("backup")[0].name


def _repo_info(dep: Deployment, stanza: str) -> dict[str, Any]:
    out = ssh_checked(dep.lab, _repo_host(dep), "cd / && sudo -u pgbackrest pgbackrest "
                      f"--stanza={stanza} --output=json info", what="pgbackrest info").stdout
    return json.loads(out)[0]


def _full_backup(dep: Deployment) -> dict[str, Any]:
    """A full backup by the documented command (the timer's unit on the repository host)."""
    cfg = dep.model()
    assert cfg.backup is not None
    stanza = cfg.backup.stanza
    _, seconds = timed(lambda: ssh_checked(
        dep.lab, _repo_host(dep), f"sudo systemctl start pgha-backup-{stanza}-full.service", timeout=1800,
        what="full backup (systemctl start)"))
    backup = [b for b in _repo_info(dep, stanza).get("backup", []) if b["type"] == "full"][-1]
    return {"label": backup["label"], "seconds": seconds, "database_bytes": backup["info"]["size"],
            "repository_bytes": backup["info"]["repository"]["delta"],
            "wal_start": backup["archive"]["start"], "wal_stop": backup["archive"]["stop"]}


def _time_target(dep: Deployment) -> str:
    """A recovery target time on the source, then a commit after it, archived (`pgbackrest
    check` switches and archives the segment): a PITR needs WAL past its target."""
    cfg = dep.model()
    assert cfg.backup is not None
    stamp = str(dep.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                        "'YYYY-MM-DD HH24:MI:SS.US') || '+00'")[0][0])
    time.sleep(1.0)
    dep.sql("CREATE TABLE IF NOT EXISTS pgha_bench_after_target (at timestamptz DEFAULT now())")
    dep.sql("INSERT INTO pgha_bench_after_target DEFAULT VALUES")
    ssh_checked(dep.lab, _repo_host(dep), "cd / && sudo -u pgbackrest pgbackrest "
                f"--stanza={cfg.backup.stanza} check", what="pgbackrest check")
    return stamp


def _writable(address: str, port: int, password: str) -> bool:
    import psycopg

    with psycopg.connect(host=address, port=port, user="postgres", dbname="postgres", password=password,
                         connect_timeout=3, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pgha_bench_clone_probe (id int)")
        conn.execute("INSERT INTO pgha_bench_clone_probe VALUES (1)")
    return True


def _clone_diagnosis(dep: Deployment, name: str, restapi_port: int, timeout: float = 120) -> dict[str, Any]:
    """After a failed clone `up`: how long until Patroni's GET /config answers 200 (the DCS
    holds the cluster's config once the bootstrap is over), what Patroni says, its journal."""
    base = f"http://{host(name, [])['address']}:{restapi_port}"
    started = time.monotonic()
    config_ok: float | None = None
    while time.monotonic() - started < timeout:
        if request_ok(f"{base}/config"):
            config_ok = time.monotonic() - started
            break
        time.sleep(0.5)
    facts: dict[str, Any] = {"config_200_after_s": config_ok if config_ok is not None
                             else f"not within {timeout:.0f} s"}
    for path in ("patroni", "cluster"):
        try:
            facts[path] = requests.get(f"{base}/{path}", timeout=5).json()
        except (requests.RequestException, ValueError) as err:
            facts[path] = f"{type(err).__name__}: {err}"
    facts["patroni_journal"] = dep.lab.ssh(
        name, "sudo journalctl -u patroni --no-pager -o short-precise | tail -n 60", check=False
    ).stdout.splitlines()
    return facts


def _up_errors(output: str) -> list[str]:
    """The `error:` lines of a failed `pulumi up` (Python tracebacks of the language host left out)."""
    found = [line.strip() for line in output.splitlines() if "error:" in line and "**" not in line]
    return list(dict.fromkeys(found))[:5]


def _clone_up(session: Session, dep: Deployment, name: str, scope: str, target: Any,
              record: dict[str, Any]) -> float:
    """`pulumi up` of a 1-node clone stack on the bare host `name`, restoring the source stanza to
    `target`, until its leader accepts a write: the seconds (a failed first `up` and a second
    one included, what an operator would do; the diagnosis in between left out). `record` gets
    the facts as they come."""
    cfg = dep.model()
    assert cfg.backup is not None
    clone = ProjectCopy.with_stack(session.scratch(scope), "clone")
    config = copy.deepcopy(clone.base_config)
    config["scope"] = scope
    config["hosts"] = [host(name, ["etcd", "patroni"]), host(_repo_host(dep), ["backup"])]
    config["backup"] = copy.deepcopy(dep.config["backup"])
    config["restore"] = {"fromStanza": cfg.backup.stanza, "target": target}
    clone.write_config(config)
    record.update(host=name, scope=scope, target=target, attempts=[])
    log(f"B6: pulumi up of the clone on {name} (target {target})")
    started = time.monotonic()
    for attempt in (1, 2):
        begun = time.monotonic()
        proc = clone.run("up", "--yes", "--skip-preview", check=False)
        record["attempts"].append({"seconds": time.monotonic() - begun, "exit": proc.returncode,
                                   "errors": _up_errors(proc.stdout + proc.stderr),
                                   "summary": resources_summary(proc.stdout)})
        if proc.returncode == 0:
            break
        log(f"B6: the clone's pulumi up failed: {'; '.join(record['attempts'][-1]['errors'])[:300]}")
        record["attempts"][-1]["diagnosis"] = _clone_diagnosis(dep, name, cfg.patroni.restapi_port)
        if attempt == 2:
            raise RuntimeError(f"the clone's pulumi up on {name} failed twice: "
                               f"{record['attempts'][-1]['errors'][:2]}")
        log(f"B6: running it again (GET /config answered 200 after "
            f"{record['attempts'][-1]['diagnosis']['config_200_after_s']})")
    # The `up` runs only: the diagnosis between two of them is the bench's, not an operator's.
    record["up_s"] = sum(a["seconds"] for a in record["attempts"])
    record["wall_s"] = time.monotonic() - started
    password = clone.run("stack", "output", "superuserPassword", "--show-secrets").stdout.strip()
    _, record["then_writable_after_s"] = timed(lambda: wait_until(
        lambda: _writable(host(name, [])["address"], cfg.postgresql.port, password), timeout=300,
        what=f"the clone's leader {name} accepting a write", interval=0.2))
    restore_log = dep.lab.ssh(name, f"sudo cat /var/log/pgbackrest/{cfg.backup.stanza}-restore.log",
                              check=False).stdout
    record["pgbackrest_restore_ms"] = floors.command_end_ms(restore_log, "restore")
    record["seconds"] = record["up_s"] + record["then_writable_after_s"]
    return float(record["seconds"])


@benchmark("B6", "Restore from the repository into a new cluster",
           "`pulumi up` of a clone stack (`pgha:restore` from the stanza, target latest, on one bare host "
           "with etcd + Patroni, same repository host) until its leader accepts a write, against a bare "
           "`pgbackrest restore` of the same full backup (default type: replay to the end of the archive) "
           "on another bare host, plus starting PostgreSQL from it until it accepts a write. The data "
           f"is pgbench scale {RESTORE_SCALE}, backed up by the documented command. One node on each "
           "side: a clone's other nodes are replicas made after the restore, which the bare restore "
           "has no counterpart for. Should the clone to `latest` fail (its `up` twice), a clone restored "
           "to a time just after the floor is measured instead, on a third bare host.")
def b6_restore(session: Session, result: Result) -> None:
    dep = session.ensure(BACKUP)
    log(f"B6: pgbench -i -s {RESTORE_SCALE}")
    dep.pgbench_init(RESTORE_SCALE)
    dep.sql("CHECKPOINT")
    dep.wait_caught_up()
    log("B6: full backup (systemctl start pgha-backup-...-full)")
    backup = _full_backup(dep)
    result["details"]["backup"] = backup
    size = f"{backup['database_bytes'] / 1e6:.0f} MB"
    log(f"B6: backup {backup['label']} ({size}) in {backup['seconds']:.1f} s")

    log(f"B6 floor: bare pgbackrest restore + start on {FLOOR_HOST}")
    floor = floors.restore_floor(dep, FLOOR_HOST, _repo_host(dep), backup["label"])
    result["details"]["floor"] = floor
    log(f"B6 floor: {floor.get('total_s', 0):.1f} s (restore {floor.get('restore_s', 0):.1f} s)")

    clone: dict[str, Any] = {}
    result["details"]["clone"] = clone
    try:
        measured = _clone_up(session, dep, CLONE_HOST, CLONE_SCOPE, "latest", clone)
        label = "latest"
    except RuntimeError as err:
        clone["error"] = str(err)
        log(f"B6: {err}; a clone restored to a time instead, on {TIME_CLONE_HOST}")
        stamp = _time_target(dep)
        clone = {}
        result["details"]["time_clone"] = clone
        measured = _clone_up(session, dep, TIME_CLONE_HOST, f"{CLONE_SCOPE}-time", {"time": stamp}, clone)
        label = "a time just after the floor (target latest failed, see details)"
    # What the clone costs beyond the bare restore: installs, etcd, the clone's own stanza.
    clone["fixed_overhead_s"] = measured - floor["total_s"] if "total_s" in floor else None
    retried = ", its first `up` failed and ran again (both counted)" if len(clone["attempts"]) > 1 else ""
    result["figures"].append(figure(
        f"restore into a new 1-node cluster (pulumi up of a clone to {label}), pgbench scale "
        f"{RESTORE_SCALE} ({size}){retried}", measured, floor.get("total_s"),
        f"bare pgbackrest restore of the same set + pg_ctl start until writable, on {FLOOR_HOST}"))
    if clone.get("pgbackrest_restore_ms") and floor.get("pgbackrest_restore_ms"):
        result["figures"].append(figure(
            "the pgbackrest restore inside the clone's bootstrap (pgBackRest's own duration)",
            clone["pgbackrest_restore_ms"] / 1000, floor["pgbackrest_restore_ms"] / 1000,
            "the bare restore's (pgBackRest's own duration, same set)"))


B7_PHASE_S = 60  # each phase samples this long after the warm-up
B7_WARMUP_S = 12.0  # one archive_timeout and a bit: history for the first samples' RPO
B7_BULK_TABLE = "pgha_bench_bulk"
# ~0.3 MB of WAL per transaction, 25 a second: ~7 MB/s, a 16 MB segment every ~2.5 s.
B7_BULK_SQL = f"INSERT INTO {B7_BULK_TABLE} SELECT g, repeat('x', 200) FROM generate_series(1, 1000) g;\n"
B7_BULK_RATE = 25


def _lag_phase(dep: Deployment, seconds: float, load: Callable[[], Any]
               ) -> tuple[dict[str, Any], list[list[float]], Any]:
    """Sample the archive lag while `load()` runs (it returns when its load is done): the
    summary, the points [t, rpo_s, segments behind] after the warm-up, and load()'s result."""
    address, port = dep.haproxy()
    sampler = ArchiveSampler(address, port, dep.superuser_password())
    segment = sampler.segment_bytes()
    sampler.start()
    try:
        time.sleep(B7_WARMUP_S)
        since = sampler.now()
        out = load()
        end = sampler.now()
        if end - since < seconds:
            time.sleep(seconds - (end - since))
    finally:
        sampler.stop()
    if not sampler.samples:
        raise RuntimeError(f"no archive sample taken ({sampler.errors} failed)")
    series = lag_series(sampler.samples, segment)
    summary = summarize_lag(series, since=since)
    kept = [s for s in sampler.samples if s[0] >= since] or sampler.samples
    switched = segment_number(kept[-1][2], segment) - segment_number(kept[0][2], segment)
    summary.update(segment_bytes=segment, sample_errors=sampler.errors,
                   wal_generated_bytes_per_s=rate_since(sampler.wal_bytes, since), segments_switched=switched,
                   archiver_failures=None if sampler.failed_count is None
                   else sampler.failed_count[1] - sampler.failed_count[0])
    points = [[round(s["t"] - since, 3), round(s["rpo_s"], 3), s["segments_behind"]]
              for s in series if s["t"] >= since and s["rpo_s"] is not None]
    return summary, points, out


def _lag_series(event: str, chart: str, points: list[list[float]], summary: dict[str, Any],
                timeout_s: float) -> dict[str, Any]:
    """A chartable recording of the archive lag (report.py draws kind `archive_lag`)."""
    return {"kind": "archive_lag", "event": event, "chart": chart, "points": points,
            "archive_timeout_s": timeout_s, "worst_rpo_s": summary["worst_rpo_s"],
            "worst_segments_behind": summary["worst_segments_behind"], "samples": summary["samples"]}


@benchmark("B7", "Archive lag under load (RPO)",
           "How much WAL the primary has written that is not yet in the repository, sampled every 0.25 s "
           "through HAProxy (pg_current_wal_lsn and pg_walfile_name against "
           "pg_stat_archiver.last_archived_wal): the RPO is the age of the oldest unarchived WAL byte (the "
           "first of the segment after the last archived one; an upper bound, at most one sample too "
           "high). Under a light load that fills no segment (one insert every 20 ms) it is bounded by "
           "archive_timeout; under a bulk load (pgbench running 1000-row inserts, 25 a second, ~7 MB/s "
           "of WAL) segments fill in seconds and archiving has to keep up. Figure: worst RPO ÷ "
           "archive_timeout, goal ≤ 1.5 (one timeout plus the push).")
def b7_archive_lag(session: Session, result: Result) -> None:
    dep = session.ensure(BACKUP)
    timeout_s = float(dep.sql("SELECT setting FROM pg_settings WHERE name = 'archive_timeout'")[0][0])
    backup = dep.model().backup
    result["details"]["settings"] = {"archive_timeout_s": timeout_s,
                                     "archive_async": backup.archive_async if backup else None,
                                     "process_max": backup.process_max if backup else None}
    if timeout_s <= 0:
        raise RuntimeError("archive_timeout is 0 on the cluster: B7 needs pgha:backup.archiveTimeout")

    log(f"B7: light load (an insert every 20 ms) for {B7_PHASE_S} s, archive_timeout {timeout_s:g} s")
    rec = dep.recorder().start()
    try:
        light, points, _ = _lag_phase(dep, B7_PHASE_S, lambda: None)
    finally:
        rec.stop()
    light["writes"] = summarize(rec.samples)
    result["details"]["light"] = light
    result["series"]["lag_light"] = _lag_series("archive lag, light load (an insert every 20 ms)",
                                                "archive_lag_light.png", points, light, timeout_s)
    result["figures"].append(figure(
        "worst RPO, light load (20 ms inserts, no segment filled)", light["worst_rpo_s"], timeout_s,
        "archive_timeout", goal=1.5))

    log(f"B7: bulk load (pgbench, {B7_BULK_RATE} × 1000-row inserts a second) for {B7_PHASE_S} s")
    dep.sql(f"CREATE TABLE IF NOT EXISTS {B7_BULK_TABLE} (id bigint, pad text)")
    try:
        bulk, points, output = _lag_phase(dep, B7_PHASE_S, lambda: dep.pgbench_run(
            2, B7_PHASE_S, script=B7_BULK_SQL, rate=B7_BULK_RATE))
    finally:
        dep.sql(f"DROP TABLE IF EXISTS {B7_BULK_TABLE}")
    bulk["pgbench"] = [line.strip() for line in output.splitlines()
                       if line.startswith(("tps", "number of transactions actually", "latency average"))]
    result["details"]["bulk"] = bulk
    result["series"]["lag_bulk"] = _lag_series("archive lag, bulk load (~7 MB/s of WAL)",
                                               "archive_lag_bulk.png", points, bulk, timeout_s)
    result["figures"].append(figure(
        "worst RPO, bulk load (segments filling)", bulk["worst_rpo_s"], timeout_s, "archive_timeout",
        goal=1.5))


# -- B8 ------------------------------------------------------------------------------------

# TLS off first, as B1 and B4 measure it; then the same hosts and roles with pgha:tls on.
TLS_VARIANTS: tuple[tuple[str, Layout], ...] = (("off", STANDARD), ("on", STANDARD_TLS))
TLS_SWITCHOVERS = 3  # per variant, back and forth: one write gap is too noisy to divide by
_TLS_OFF_LABEL = "the same with TLS off (pgha:tls.enabled false), same run, other fresh hosts"


def tls_cost_figures(details: dict[str, Any]) -> list[dict[str, Any]]:
    """B8's figures from its details (`tls_on` and `tls_off`, each as far as it was measured):
    TLS on ÷ TLS off for the first deploy, and the medians over the switchovers of the write gap
    and of Patroni's demote/promote within it."""
    on, off = details.get("tls_on", {}), details.get("tls_off", {})

    def switchovers(part: dict[str, Any], key: str) -> float | None:
        values = [s[key] for s in part.get("switchovers", []) if s.get(key) is not None]
        return median(values) if values else None

    def count(part: dict[str, Any]) -> int:
        return len(part.get("switchovers", []))

    runs = f"median of {count(on)} on, {count(off)} off"
    return [
        figure("pulumi up: 3 etcd+Patroni hosts + 1 HAProxy host from bare hosts, TLS on",
               on.get("up_s"), off.get("up_s"), _TLS_OFF_LABEL),
        figure(f"write unavailability, planned switchover, TLS on ({runs})", switchovers(on, "write_gap_s"),
               switchovers(off, "write_gap_s"), _TLS_OFF_LABEL),
        figure(f"Patroni's demote/promote in those switchovers (POST until the candidate's /primary "
               f"answers 200), TLS on ({runs})", switchovers(on, "demote_promote_s"),
               switchovers(off, "demote_promote_s"), _TLS_OFF_LABEL),
    ]


@benchmark("B8", "TLS cost: first deploy and planned switchover, TLS on ÷ TLS off",
           "B1's first deploy and B4's planned switchover, with pgha:tls off (the lab stack) and with it "
           "on (cluster CA and certificates issued, etcd, Patroni's REST API and PostgreSQL on TLS, "
           "HAProxy checking over https), each on 4 fresh hosts in the same run: `pulumi up` of 3 "
           "etcd+Patroni hosts + 1 HAProxy host, timed, then "
           f"{TLS_SWITCHOVERS} switchovers (back and forth, each once the cluster is healthy again) "
           "under the 20 ms write recorder, which with TLS on connects with sslmode=verify-full against "
           "the stack's CA, as the README tells clients to. Figures: TLS on ÷ TLS off (the "
           "switchovers' medians); no goal (issue #14 asks for the cost).")
def b8_tls_cost(session: Session, result: Result) -> None:
    try:
        for variant, layout in TLS_VARIANTS:
            part: dict[str, Any] = {"switchovers": []}
            result["details"][f"tls_{variant}"] = part
            log(f"B8: TLS {variant}: first deploy from bare hosts")
            dep = _timed_deploy(session, layout, part)
            part["writes_over_tls"] = bool(dep.libpq_tls())
            for n in range(1, TLS_SWITCHOVERS + 1):
                dep.wait_healthy(180)
                log(f"B8: TLS {variant}: planned switchover {n}/{TLS_SWITCHOVERS} under writes")
                series, facts = _switchover(dep, dep.model().haproxy,
                                            chart=f"switchover_tls_{variant}_{n}.png",
                                            what=f"planned switchover {n}, TLS {variant},")
                facts["write_gap_s"] = series["longest_s"]
                part["switchovers"].append(facts)
                result["series"][f"switchover_tls_{variant}_{n}"] = series
    finally:
        result["figures"].extend(tls_cost_figures(result["details"]))


SCENARIOS: dict[str, Scenario] = {
    "B1": b1_first_deploy,
    "B2": b2_no_change,
    "B3": b3_add_replica,
    "B4": b4_unavailability,
    "B5": b5_rolling_restart,
    "B6": b6_restore,
    "B7": b7_archive_lag,
    "B8": b8_tls_cost,
}
# B4 and B5 reuse B1's 3-node deployment and B2 its 3-node part, so that the run boots as few labs
# as possible (4 hosts, then 10 for B2's 9 nodes, then 6 for B3, then 7 for B7 and B6, which
# share a deployment with a repository host); the report still reads B1..B7.
# B8 boots its own two labs (TLS off, then on) and comes last: nothing after it could reuse them.
EXECUTION_ORDER = ("B1", "B4", "B5", "B2", "B3", "B7", "B6", "B8")

"""B1..B5: each measures pgha and a floor in the same run and returns a JSON-ready dict.

A result holds `figures` (measured ÷ floor, see timing.figure), `details` (the raw numbers
behind them), `series` (write recordings for the charts) and `error` when it failed part way;
figures measured before a failure are kept.
"""

from __future__ import annotations

import copy
import functools
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import floors
from bench.deploy import (
    GROW,
    NINE,
    STANDARD,
    Deployment,
    Session,
    cluster_config,
    lab_base_config,
    request_ok,
)
from bench.events import phases
from bench.recorder import WriteRecorder, summarize
from bench.timing import figure, log, median, ratio
from components.config import HaproxySettings
from components.providers.haproxy_config import backend_status
from tests.cluster.conftest import host, wait_until

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
    dep = session.deploy(STANDARD)
    result["details"]["up_s"] = dep.up_seconds
    result["details"]["up_phases"] = phases(dep.up_spans)  # where the time went
    result["details"]["up_spans"] = dep.up_spans  # every resource: report.json only
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


def _switchover(dep: Deployment, ha: HaproxySettings) -> tuple[dict[str, Any], dict[str, Any]]:
    leader = dep.leader()
    candidates = sorted(n for n, m in dep.members().items() if m.get("state") == "streaming")
    if leader is None or not candidates:
        raise RuntimeError(f"no leader or no streaming replica: {dep.members()}")
    candidate = candidates[0]
    primary_url = f"http://{dep.nodes()[candidate]}:{dep.model().patroni.restapi_port}/primary"
    address, port = dep.haproxy()
    rec = WriteRecorder(address, port, dep.superuser_password()).prepare().start()
    promoted = haproxy_up = None
    try:
        time.sleep(BASELINE_S)
        promoted = Watch(lambda: request_ok(primary_url, 1.0), rec.now).start()
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
    series = rec.series(f"planned switchover {leader} → {candidate}", t_event, "switchover.png")
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
    address, port = dep.haproxy()
    rec = WriteRecorder(address, port, dep.superuser_password()).prepare().start()
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
    address, port = dep.haproxy()
    password = dep.superuser_password()

    log("B5 floor: POST /restart on each node by hand")
    rec = WriteRecorder(address, port, password).prepare().start()
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
    rec = WriteRecorder(address, port, password).prepare().start()
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


SCENARIOS: dict[str, Scenario] = {
    "B1": b1_first_deploy,
    "B2": b2_no_change,
    "B3": b3_add_replica,
    "B4": b4_unavailability,
    "B5": b5_rolling_restart,
}
# B4 and B5 reuse B1's 3-node deployment and B2 its 3-node part, so that the run boots as few labs
# as possible (4 hosts, then 10 for B2's 9 nodes, then 6 for B3); the report still reads B1..B5.
EXECUTION_ORDER = ("B1", "B4", "B5", "B2", "B3")
